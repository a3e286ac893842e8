#!/bin/bash
# The reasoning ladder, gpu size, in one device call (NVIDIA H200): carry `.whl` (../shared/tools/device-wheels).
# Beside it, once the ladder's SFT model exists, every pipeline and scorer on that model
# (bench/pipelines_table.sh; issue 11), so the ladder's wall time is measured with that load on the GPU too.
# The run folder stays on the device; its report, manifest, logs and eval traces come back as one archive
# ($OUT/ladder-gpu.tgz; the device tool returns at most 8 files).
#   bash bench/h200_ladder.sh [seed] [limit_s] [pipelines: 1|0]
# CALIBRATE="250 325 400 475" first runs the plan's pretrain + SFT + greedy eval at each pretraining step
# count side by side (bench/h200_substrate_steps.py) and runs the ladder at the count whose SFT level-8
# greedy accuracy is nearest 45% (the students pretrain 4x as many steps: the teacher's compute).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; SEED=${1:-0}; LIMIT=${2:-540}; PIPES=${3:-1}
RUN=/tmp/ladder-gpu-seed$SEED; PIPE_DIR=$RUN-pipelines
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
SET=()
if [ -n "${CALIBRATE:-}" ]; then
  S=$(python3 bench/h200_substrate_steps.py --steps $CALIBRATE --out /tmp/calibrate) || exit 1
  echo "pretraining steps: $S"
  SET=(--set "pretrain_args=[--trainer.max_steps, \"$S\", --trainer.val_check_interval, \"$S\"]"
       --set "student_pretrain_args=[--trainer.max_steps, \"$((4 * S))\", --trainer.val_check_interval, \"$((4 * S))\"]")
fi
if [ "$PIPES" = 1 ]; then
  ( SFT=$RUN/sft/spine/final
    while [ ! -f "$SFT/manifest.json" ] && [ $SECONDS -lt "$LIMIT" ]; do sleep 3; done; sleep 3
    timeout $((LIMIT - SECONDS)) bash bench/pipelines_table.sh "$SFT" "$PIPE_DIR" \
      --problems "task:chain:levels=7-8,n=1000,seed=7,split=eval" --template synthetic \
      --sampling.max_new_tokens 96 --batch_size 512 --device cuda > "$PIPE_DIR.log" 2>&1 ) &
fi
timeout $((LIMIT - SECONDS)) python3 -m modules.cli ladder --size gpu --seed "$SEED" --out "$RUN" "${SET[@]}"; echo "ladder rc=$?"
python3 -m modules.cli ladder-report "$RUN" > /dev/null 2>&1 || true   # a partial run still gets its report
wait   # the pipelines stop by the same limit
cat "$PIPE_DIR.log" 2>/dev/null
tar czf "$OUT/ladder-gpu.tgz" --exclude='*.safetensors' --exclude='*.ckpt' --exclude='*.pt' -C /tmp \
  "$(basename "$RUN")" $([ -d "$PIPE_DIR" ] && basename "$PIPE_DIR") $([ -d /tmp/calibrate ] && echo calibrate) && ls -la "$OUT"
cat "$RUN/ladder.md" 2>/dev/null | head -60
