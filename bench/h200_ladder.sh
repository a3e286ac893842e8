#!/bin/bash
# The reasoning ladder, gpu size, in one device call (NVIDIA H200): carry `.whl` (../shared/tools/device-wheels).
#   bash bench/h200_ladder.sh [seed or seeds, e.g. 0 or 1,2] [limit_s] [pipelines: 1|0]
# Several seeds run one ladder each, side by side (`spine ladder-report RUN_A RUN_B --out DIR` folds their reports).
# STEPS="300 425" runs one ladder per pretraining step count side by side on the one GPU (each the gpu
# plan with that count; students pretrain 4x as many steps, the teacher's compute); the substrate's
# length sits on a cliff, so this measures two candidates in the time of one. With pipelines=1, every
# pipeline and scorer also runs on the (first) ladder's SFT model once it exists (bench/pipelines_table.sh).
# SWEEP="name:args;name:args" also runs configs/grpo-gpu.yaml from that SFT model once per entry, side by side
# (args are extra `spine fit` flags, e.g. "t5:--model.init_args.sampling.temperature 0.5"), each with its
# held-out curve in its metrics.csv: GRPO settings measured in the ladder's call.
# Run folders stay on the device; reports, manifests, logs and eval traces come back as one archive
# ($OUT/ladder-gpu.tgz; the device tool returns at most 8 files).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; SEED=${1:-0}; LIMIT=${2:-540}; PIPES=${3:-1}
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
runs=()
for SEED in ${SEED//,/ }; do
for S in ${STEPS:-plan}; do
  if [ "$S" = plan ]; then RUN=/tmp/ladder-gpu-seed$SEED; SET=()
  else RUN=/tmp/ladder-gpu-s$S-seed$SEED
    SET=(--set "pretrain_args=[--trainer.max_steps, \"$S\", --trainer.val_check_interval, \"$S\"]"
         --set "student_pretrain_args=[--trainer.max_steps, \"$((4 * S))\", --trainer.val_check_interval, \"$((4 * S))\"]")
  fi
  runs+=("$RUN")
  rm -rf "$RUN" "$RUN.log"   # a still-warm machine keeps /tmp: a previous call's run would be resumed, not rerun
  # 40 s of LIMIT stay for the report and the archive: on 2026-12-03 two ladders cut at LIMIT left no time for
  # either, and the device's own limit ended the call with nothing written (bench/RESULTS.md §20)
  ( timeout $((LIMIT - 40 - SECONDS > 5 ? LIMIT - 40 - SECONDS : 5)) python3 -m modules.cli ladder --size gpu --seed "$SEED" --out "$RUN" "${SET[@]}" \
      > "$RUN.log" 2>&1; echo "$RUN: ladder rc=$?"
    timeout 25 python3 -m modules.cli ladder-report "$RUN" > /dev/null 2>&1 ) &   # a partial run still gets its report
done; done
PIPE_DIR=${runs[0]}-pipelines; rm -rf "$PIPE_DIR" "$PIPE_DIR.log"
if [ "$PIPES" = 1 ]; then
  ( SFT=${runs[0]}/sft/spine/final
    while [ ! -f "$SFT/manifest.json" ] && [ $SECONDS -lt $((LIMIT - 10)) ]; do sleep 3; done; sleep 3
    left=$((LIMIT - SECONDS)); [ "$left" -gt 5 ] || exit 0   # `timeout 0` would mean no limit at all
    timeout "$left" bash bench/pipelines_table.sh "$SFT" "$PIPE_DIR" \
      --problems "task:chain:levels=7-8,n=1000,seed=7,split=eval" --template synthetic \
      --sampling.max_new_tokens 96 --batch_size 512 --device cuda > "$PIPE_DIR.log" 2>&1 ) &
fi
sweeps=()
IFS=';' read -ra SW <<< "${SWEEP:-}"
for entry in "${SW[@]}"; do
  [ -n "$entry" ] || continue
  name=${entry%%:*}
  [[ $entry == *:* && $name =~ ^[A-Za-z0-9_-]+$ ]] || { echo "SWEEP entry '$entry': want name:flags (name of letters, digits, _ or -)"; continue; }
  read -ra FLAGS <<< "${entry#*:}"   # split on blanks only (no globbing: a value may hold [ or *)
  D=/tmp/grpo-sweep-$name; sweeps+=("$D"); rm -rf "$D" "$D.log"
  ( SFT=${runs[0]}/sft/spine/final
    while [ ! -f "$SFT/manifest.json" ] && [ $SECONDS -lt $((LIMIT - 10)) ]; do sleep 3; done; sleep 3
    left=$((LIMIT - SECONDS)); [ "$left" -gt 5 ] || exit 0
    timeout "$left" python3 -m modules.cli fit --config configs/grpo-gpu.yaml --model.init_args.init_from "$SFT" \
      --trainer.default_root_dir "$D" --trainer.logger "{\"class_path\": \"lightning.pytorch.loggers.CSVLogger\", \"init_args\": {\"save_dir\": \"$D\", \"name\": \"logs\", \"version\": \"run\"}}" \
      "${FLAGS[@]}" > "$D.log" 2>&1; echo "$D: rc=$?" >> "$D.log" ) &
done
wait   # everything stops by the same limit
pkill -f "modules.cli" 2>/dev/null   # a killed runner leaves its running command behind (a dedicated machine)
cat "$PIPE_DIR.log" 2>/dev/null
cd /tmp && tar czf "$OUT/ladder-gpu.tgz" --ignore-failed-read --exclude='*.safetensors' --exclude='*.ckpt' \
  --exclude='*.pt' $(for r in "${runs[@]}" "$PIPE_DIR" "${sweeps[@]}"; do for p in "$r" "$r.log"; do [ -e "$p" ] && basename "$p"; done; done)
ls -la "$OUT"
for d in "${sweeps[@]}"; do  # each sweep's held-out curve: step, level-8 greedy accuracy
  [ -f "$d/logs/run/metrics.csv" ] || { echo "$d: no metrics (did not start)"; continue; }
  echo "$d: $(python3 - "$d" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(f"{sys.argv[1]}/logs/run/metrics.csv")))
print(" ".join(f"{r['step']}:{float(r['reasoning/greedy_acc']):.3f}" for r in rows if r.get("reasoning/greedy_acc")))
PY
)"; tail -n 1 "$d.log"; done
for r in "${runs[@]}"; do grep -E "^\| (pretrain|sft|grpo|student)[a-z-]*-greedy |^\| [a-z-]+-sc |^- \*\*" "$r/ladder.md" | cut -c1-220; done
