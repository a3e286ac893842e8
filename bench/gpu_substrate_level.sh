#!/bin/bash
# The GPU substrate at a level, over seeds: configs/substrate-gpu-level.yaml (the CPU substrate's recipe on CUDA,
# keeping the weights closest to 30% on 1,000 training-split level-6 problems) -> `spine consolidate` -> greedy
# on the CPU substrate's held-out levels 4-6 (2,000 each), one run per seed side by side on one GPU.
# Run from the repo root on the device machine with `.whl` carried; writes OUT/substrate-level.tgz.
#   bash bench/gpu_substrate_level.sh "0 1 2" [limit_s]
set -u -o pipefail
[ $# -ge 1 ] || { echo 'usage: bash bench/gpu_substrate_level.sh "SEED ..." [limit_s]'; exit 2; }
OUT=${OUT:-/tmp/out}; R=/tmp/substrate-level; REPO=$PWD; LIMIT=${2:-400}
CONFIG=${CONFIG:-configs/substrate-gpu-level.yaml}; [[ $CONFIG == /* ]] || CONFIG=$REPO/$CONFIG
NAME=$(basename "$CONFIG" .yaml)   # the config's own paths must be runs/<its name>/... (as substrate-gpu-level.yaml's are)
rm -rf "$R"; mkdir -p "$R" "$OUT"
source bench/device_runs.sh   # wheels, PYTHONPATH, $SP, and the TERM trap that stops every run
one() {  # seed
  local D=$R/seed$1; mkdir -p "$D"
  { (cd "$D" && timeout $((LIMIT - SECONDS - 60 > 1 ? LIMIT - SECONDS - 60 : 1)) $SP fit --config "$CONFIG" --seed_everything "$1") &&
    $SP consolidate "$D/runs/$NAME/ckpt/closest.ckpt" "$D/final" &&
    timeout $((LIMIT - SECONDS - 15 > 1 ? LIMIT - SECONDS - 15 : 1)) $SP eval --checkpoint "$D/final" \
      --problems "task:chain:levels=4-6,n=6000,seed=7,split=eval" --template synthetic \
      --sampling.max_new_tokens 80 --batch_size 1000 --device cuda --traces "$D/heldout-greedy.jsonl" | tail -n 6; } > "$R/seed$1.log" 2>&1
  echo "rc=$? seed$1 ${SECONDS}s" >> "$R/rc.txt"
}
for s in $1; do one "$s" & done; wait
(cd /tmp && tar czf "$OUT/substrate-level.tgz" --exclude='*.safetensors' --exclude='*.ckpt' --exclude='traces' substrate-level)
cat "$R/rc.txt"
for s in $1; do echo "== seed$s"; grep -E "level=" "$R/seed$s.log" | tail -3
  python3 - "$R/seed$s/runs/$NAME/logs/version_0/metrics.csv" <<'PY'
import csv, os, sys
if not os.path.isfile(sys.argv[1]):
    sys.exit(f"no metrics at {sys.argv[1]}")
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r.get("reasoning/level/greedy_acc")]
if not rows:
    sys.exit("no level check ran")
best = min(rows, key=lambda r: (float(r["reasoning/level/greedy_gap"]), int(r["step"])))
print("checks:", " ".join(f"{r['step']}:{100 * float(r['reasoning/level/greedy_acc']):.1f}" for r in rows))
print(f"kept: step {best['step']} at {100 * float(best['reasoning/level/greedy_acc']):.1f}%")
PY
done
# summary: the level-selected GPU substrate over seeds, side by side on one GPU
# cpu: not measured (a GPU recipe)
# gpu: H200, 2026-12-03, seeds "0 1 2": 290 s; held-out level 6 31.9 / 25.3 / 31.3% (bench/RESULTS.md section 18)
# memory: not measured
