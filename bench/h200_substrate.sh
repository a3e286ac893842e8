#!/bin/bash
# The GPU substrate's pretraining length, measured (issue 12): for each step count S the chain the gpu
# ladder runs -- pretrain configs/substrate-gpu.yaml for S steps, SFT on 4,000 worked solutions -- then,
# side by side from that SFT model: GRPO (configs/grpo-gpu.yaml), its random-reward control, and every
# pipeline and scorer (bench/pipelines_table.sh). The lanes share one GPU (small models: launch-bound).
# One device call (NVIDIA H200; carry .whl from ../shared/tools/device-wheels):
#   bash bench/h200_substrate.sh "250 400 600 900" 560
# Results: $OUT/substrate.tgz (logs, metrics, traces, reports; no weights).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; STEPS=${1:-"250 400 600 900"}; LIMIT=${2:-560}
UPDATES=${UPDATES:-200}; ROOT=/tmp/substrate
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2  # 12 processes on 16 cores
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
spine() { python3 -m modules.cli "$@"; }
NOCB=(--trainer.logger false --trainer.enable_checkpointing false --trainer.callbacks '[]')
ckpt() { echo "--trainer.callbacks+={\"class_path\": \"callbacks.SpineCheckpoint\", \"init_args\": {\"dirpath\": \"$1\", \"on_save\": false}}"; }
EVAL=(--problems "task:chain:levels=7-8,n=1000,seed=7,split=eval" --template synthetic
      --sampling.max_new_tokens 96 --batch_size 512 --device cuda)

lane() {  # one step count: pretrain -> SFT -> greedy eval -> (GRPO | control | pipelines)
  local S=$1 D=$ROOT/s$1; mkdir -p "$D"
  local t0=$SECONDS
  spine fit --config configs/substrate-gpu.yaml --trainer.max_steps "$S" --trainer.val_check_interval "$S" \
    "${NOCB[@]}" "$(ckpt "$D/pre")" > "$D/pretrain.log" 2>&1 || { echo "s$S pretrain failed"; return; }
  local t1=$SECONDS
  spine fit --config configs/trace-sft.yaml --model.init_args.init_from "$D/pre/final" \
    --data.init_args.traces null --data.init_args.problems "task:chain:levels=1-8,n=4000,seed=1,split=train" \
    --model.init_args.export_dir null --trainer.max_epochs 2 --trainer.accelerator gpu \
    --trainer.precision bf16-mixed --data.init_args.batch_size 64 --data.init_args.max_length 160 \
    "${NOCB[@]}" "$(ckpt "$D/sft")" > "$D/sft.log" 2>&1 || { echo "s$S sft failed"; return; }
  local t2=$SECONDS
  spine eval --checkpoint "$D/sft/final" "${EVAL[@]}" --traces "$D/sft-greedy.jsonl" > "$D/sft-greedy.log" 2>&1
  echo "s$S: pretrain $((t1-t0)) s, sft $((t2-t1)) s, greedy eval $((SECONDS-t2)) s"
  grep -E "^\| (level=7|level=8|all) " "$D/sft-greedy.log" | sed "s/^/s$S sft /"
  for arm in grpo random; do
    extra=(); [ "$arm" = random ] && extra=(--model.init_args.random_reward true)
    spine fit --config configs/grpo-gpu.yaml --model.init_args.init_from "$D/sft/final" \
      --trainer.max_steps "$UPDATES" --trainer.default_root_dir "$D/$arm" \
      --trainer.logger.init_args.save_dir "$D/$arm" "${extra[@]}" > "$D/$arm.log" 2>&1 &
  done
  bash bench/pipelines_table.sh "$D/sft/final" "$D/pipelines" "${EVAL[@]}" > "$D/pipelines.log" 2>&1 &
  wait
  echo "s$S: done after $((SECONDS-t0)) s"
  grep -h "reasoning eval" "$D/grpo.log" "$D/random.log" | sed "s/^/s$S /" | tail -30
}

for S in $STEPS; do lane "$S" & done
( sleep "$LIMIT"; echo "time limit: stopping the lanes"; pkill -f modules.cli ) & killer=$!
wait $(jobs -p | grep -v "^$killer$") 2>/dev/null
kill $killer 2>/dev/null
for S in $STEPS; do tail -4 "$ROOT/s$S/pipelines.log" 2>/dev/null | sed "s/^/s$S /"; done
cd "$ROOT" && tar czf "$OUT/substrate.tgz" --exclude='*.safetensors' --exclude='*.ckpt' --exclude='*.pt' . && ls -la "$OUT"
