#!/bin/bash
# GRPO settings side by side on the device machine, to choose what to measure on 2 CPU cores and to repeat a
# measurement on other hardware: configs/grpo-quick.yaml from runs/cpulevel/s{seed}/final (carried), each variant
# over the given seeds; then each run's last checkpoint on FRESH_N fresh level-6 problems (seed 8), as
# bench/grpo_seeds.sh does on the CPU. ACCEL=cpu runs on the machine's cores, each fit on the config's pinned threads
# (grpo-quick.yaml: 2, so at most nproc/2 runs at once); ACCEL=gpu puts every run on the one GPU.
# Run from the repo root on the device machine with `.whl` and the substrates carried; writes OUT/grpo-sweep.tgz.
#   bash bench/device_grpo_sweep.sh "0 1 2" LIMIT_S "base|" "t07|--model.init_args.sampling.temperature=0.7" ...
set -u -o pipefail
[ $# -ge 3 ] || { echo 'usage: bash bench/device_grpo_sweep.sh "SEEDS" LIMIT_S "NAME|FLAGS" ...'; exit 2; }
OUT=${OUT:-/tmp/out}; R=/tmp/grpo-sweep; SEEDS=$1; LIMIT=$2; shift 2
SUBSTRATE=${SUBSTRATE:-'runs/cpulevel/s{seed}/final'}; ACCEL=${ACCEL:-cpu}; DEV=$ACCEL; [ "$ACCEL" = gpu ] && DEV=cuda
FRESH="task:chain:levels=6,n=${FRESH_N:-2000},seed=8,split=eval"
rm -rf "$R"; mkdir -p "$R" "$OUT"
source bench/device_runs.sh
nproc; lscpu | grep -E "Model name|^CPU\(s\)|Thread" || true; nvidia-smi -L 2>/dev/null || true
fresh() {  # NAME CHECKPOINT_DIR
  OMP_NUM_THREADS=1 timeout $((LIMIT - SECONDS - 10 > 1 ? LIMIT - SECONDS - 10 : 1)) $SP eval --checkpoint "$2" --problems "$FRESH" \
    --template synthetic --sampling.max_new_tokens 84 --batch_size 500 --device "$DEV" > "$R/fresh-$1.log" 2>&1
}
for s in $SEEDS; do fresh "substrate-s$s" "${SUBSTRATE//\{seed\}/$s}" & done
for v in "$@"; do
  name=${v%%|*}; flags=${v#*|}
  for s in $SEEDS; do
    D=$R/$name-s$s
    ( timeout $((LIMIT - 90)) $SP fit --config configs/grpo-quick.yaml --trainer.accelerator "$ACCEL" \
        --seed_everything "$s" --model.init_args.sampling.seed "$s" --data.init_args.seed "$s" \
        --trainer.default_root_dir "$D" --trainer.logger.init_args.save_dir "$D" \
        --trainer.logger.init_args.version run --trainer.logger.init_args.flush_logs_every_n_steps 10 \
        --model.init_args.init_from "${SUBSTRATE//\{seed\}/$s}" $flags > "$D.log" 2>&1
      echo "rc=$? $name s$s ${SECONDS}s" >> "$R/rc.txt"
      $SP consolidate "$D/logs/run/checkpoints/last.ckpt" "$D/final" > /dev/null 2>&1 && fresh "$name-s$s" "$D/final" ) &
  done
done
wait
(cd /tmp && tar czf "$OUT/grpo-sweep.tgz" --exclude='*.ckpt' --exclude='*.safetensors' --exclude='traces' --exclude='*.png' grpo-sweep)
cat "$R/rc.txt"
python3 - "$R" "$SEEDS" "$@" <<'PY'
import csv, os, re, statistics as st, sys
root, seeds, variants = sys.argv[1], sys.argv[2].split(), [v.split("|")[0] for v in sys.argv[3:]]
def fresh(name):
    path = f"{root}/fresh-{name}.log"
    m = re.search(r"^\| level=6 \|[^|]*\|[^|]*\|\s*([\d.]+)%", open(path).read(), re.M) if os.path.isfile(path) else None
    return float(m.group(1)) if m else None
for name in variants:
    gains, fgains = [], []
    for s in seeds:
        path = f"{root}/{name}-s{s}/logs/run/metrics.csv"
        if not os.path.isfile(path):
            print(name, s, "no metrics"); continue
        rows = list(csv.DictReader(open(path)))
        g = [(r["step"], float(r["reasoning/greedy_acc"])) for r in rows if r.get("reasoning/greedy_acc")]
        f, f0 = fresh(f"{name}-s{s}"), fresh(f"substrate-s{s}")
        print(name, f"s{s}", " ".join(f"{st_}:{100 * x:.1f}" for st_, x in g), f"| fresh {f0} -> {f}")
        if len(g) > 1:
            gains.append(100 * (g[-1][1] - g[0][1]))
        if f is not None and f0 is not None:
            fgains.append(f - f0)
    if gains:
        print(f"== {name}: in-training last - first {st.mean(gains):+.1f} ({min(gains):+.1f} .. {max(gains):+.1f})"
              + (f"; fresh {st.mean(fgains):+.1f} ({min(fgains):+.1f} .. {max(fgains):+.1f})" if fgains else ""))
PY
