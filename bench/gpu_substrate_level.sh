#!/bin/bash
# The GPU substrate at a level, over seeds: configs/substrate-gpu-level.yaml (the CPU substrate's recipe on CUDA, checked on level 6 alone,
# keeping the weights closest to 30% on 1,000 training-split level-6 problems) -> `spine consolidate` -> greedy
# on the CPU substrate's held-out levels 4-6 (2,000 each), one run per seed side by side on one GPU.
# Run from the repo root on the device machine with `.whl` carried; writes OUT/substrate-level.tgz.
#   bash bench/gpu_substrate_level.sh "0 1 2" [limit_s]
#   bash bench/gpu_substrate_level.sh "a0:0:900:3e-3 b0:0:1200:3e-3 ..." [limit_s]   # NAME:SEED:MAX_STEPS:LR variants
# Each run also reports the teacher-forced match rate beside greedy on its held-out level 6 (bench/forced_vs_greedy.py).
set -u -o pipefail
[ $# -ge 1 ] || { echo 'usage: bash bench/gpu_substrate_level.sh "SEED|NAME:SEED:MAX_STEPS:LR ..." [limit_s]'; exit 2; }
OUT=${OUT:-/tmp/out}; R=/tmp/substrate-level; REPO=$PWD; LIMIT=${2:-400}
CONFIG=${CONFIG:-configs/substrate-gpu-level.yaml}; [[ $CONFIG == /* ]] || CONFIG=$REPO/$CONFIG
NAME=$(basename "$CONFIG" .yaml)   # the config's own paths must be runs/<its name>/... (as substrate-gpu-level.yaml's are)
rm -rf "$R"; mkdir -p "$R" "$OUT"
source bench/device_runs.sh   # wheels, PYTHONPATH, $SP, and the TERM trap that stops every run
HELD="task:chain:levels=4-6,n=6000,seed=7,split=eval"
one() {  # NAME SEED [MAX_STEPS LR]
  local D=$R/$1 C=$CONFIG; mkdir -p "$D"
  if [ -n "${3:-}" ]; then C=$D/$NAME.yaml
    sed -e "s/^  max_steps: .*/  max_steps: $3/" -e "s/^  val_check_interval: .*/  val_check_interval: $3/" \
        -e "s/^    lr: .*/    lr: $4/" "$CONFIG" > "$C"; fi
  { (cd "$D" && timeout $((LIMIT - SECONDS - 60 > 1 ? LIMIT - SECONDS - 60 : 1)) $SP fit --config "$C" --seed_everything "$2") &&
    $SP consolidate "$D/runs/$NAME/ckpt/closest.ckpt" "$D/final" &&
    timeout $((LIMIT - SECONDS - 15 > 1 ? LIMIT - SECONDS - 15 : 1)) $SP eval --checkpoint "$D/final" \
      --problems "$HELD" --template synthetic \
      --sampling.max_new_tokens 80 --batch_size 1000 --device cuda --traces "$D/heldout-greedy.jsonl" | tail -n 6 &&
    python3 bench/forced_vs_greedy.py "$D/final" "$D/heldout-greedy.jsonl" "$HELD" --level 6 --device cuda; } > "$R/$1.log" 2>&1
  echo "rc=$? $1 ${SECONDS}s" >> "$R/rc.txt"
}
RUNS=""
for item in $1; do IFS=: read -r n s m l <<< "$item"; [ -z "${s:-}" ] && { s=$n; n=seed$n; }; RUNS="$RUNS $n"
  one "$n" "$s" "${m:-}" "${l:-}" & done; wait
(cd /tmp && tar czf "$OUT/substrate-level.tgz" --exclude='*.safetensors' --exclude='*.ckpt' --exclude='traces' substrate-level)
cat "$R/rc.txt"
for n in $RUNS; do echo "== $n"; grep -E "level=|forced" "$R/$n.log" | tail -4
  python3 - "$R/$n/runs/$NAME/logs/version_0/metrics.csv" <<'PY'
import csv, os, sys
if not os.path.isfile(sys.argv[1]):
    sys.exit(f"no metrics at {sys.argv[1]}")
rows = list(csv.DictReader(open(sys.argv[1])))
kind = next((k for k in ("forced", "greedy") if any(r.get(f"reasoning/level/{k}_acc") for r in rows)), None)
if kind is None:
    sys.exit("no level check ran")
rows = [r for r in rows if r.get(f"reasoning/level/{kind}_acc")]
best = min(rows, key=lambda r: (float(r[f"reasoning/level/{kind}_gap"]), int(r["step"])))
print(f"{kind} checks:", " ".join(f"{r['step']}:{100 * float(r[f'reasoning/level/{kind}_acc']):.1f}" for r in rows))
print(f"kept: step {best['step']} at {100 * float(best[f'reasoning/level/{kind}_acc']):.1f}%")
PY
done
# summary: the level-selected GPU substrate over seeds, side by side on one GPU
# cpu: not measured (a GPU recipe)
# gpu: H200, 2026-12-03, seeds "0 1 2": 290 s; held-out level 6 31.9 / 25.3 / 31.3% (bench/RESULTS.md section 18)
# memory: not measured
