#!/usr/bin/env bash
# The multi-GPU checks of docs/multi-gpu.md in one command, on however many GPUs this machine has.
#
#   bash bench/multi_gpu_check.sh OUT_DIR [GPUS]      (GPUS defaults to all visible GPUs)
#
# 1. Real `spine fit` runs, GPT-2 124M and Qwen3-0.6B shapes, bf16-mixed, torch.compile, under DDP and
#    under FSDP2 (ModelParallelStrategy): 40 steps, Lightning checkpoints every 20 steps, SpineCheckpoint
#    (gathers the shards, reloads on one device, requires bitwise-identical logits to the live model),
#    then `spine consolidate` of the last Lightning checkpoint (a sharded directory under FSDP2) must
#    give the same weights as SpineCheckpoint's export, bit for bit.
# 2. Throughput: bench/ddp_scaling.py for each shape at 1 GPU and at GPUS with ddp and fsdp2.
# 3. With 2+ GPUs: the CPU multi-process tests on NCCL (tests/test_ddp.py, tests/test_fsdp.py with
#    SPINE_TEST_ACCELERATOR=gpu), and the fine-tuning stages + ReasoningEval under DDP.
# Needs .devdata/gpt2-bpe (GPT-2 encoder.json + vocab.bpe) and, for the fine-tuning stages,
# .devdata/sms-spam and .devdata/instruction-data.json (copies of ../shared/data; git-ignored).
set -uo pipefail
OUT=${1:?usage: bench/multi_gpu_check.sh OUT_DIR [GPUS]}
GPUS=${2:-$(python3 -c "import torch; print(torch.cuda.device_count())")}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
mkdir -p "$OUT"
SPINE=${SPINE:-"python3 -m modules.cli"}
STEPS=${STEPS:-40}
PARTS=${PARTS:-"fit bench tests finetune"}  # run a subset, e.g. PARTS=bench
want() { [[ " $PARTS " == *" $1 "* ]]; }
FITS=${FITS:-"gpt2-ddp gpt2-fsdp2 qwen3-ddp qwen3-fsdp2"}          # or a subset
BENCH=${BENCH:-"gpt2-124m:32 qwen3-0.6b:16"}                       # model:per-GPU batch
FSDP2="--trainer.strategy=lightning.pytorch.strategies.ModelParallelStrategy \
 --trainer.strategy.data_parallel_size=$GPUS --trainer.strategy.tensor_parallel_size=1"
status=0
log() { echo "[multi_gpu_check $(date +%H:%M:%S)] $*" | tee -a "$OUT/summary.txt"; }

fit_and_consolidate() {  # name model batch strategy-args...
  local name=$1 model=$2 batch=$3; shift 3
  [[ " $FITS " == *" $name "* ]] || return 0
  local run="$OUT/$name"
  log "fit $name: $model, $GPUS GPU(s), batch $batch/GPU, $*"
  if ! $SPINE fit --config configs/gpt2-124m.yaml --trainer.devices="$GPUS" "$@" \
      --model.init_args.model="$model" --data.init_args.vocab_dir=.devdata/gpt2-bpe \
      --data.init_args.batch_size="$batch" --data.init_args.num_workers=2 \
      --trainer.max_steps="$STEPS" --trainer.val_check_interval=20 --trainer.limit_val_batches=4 \
      --trainer.log_every_n_steps=10 --trainer.default_root_dir="$run" \
      --trainer.callbacks='[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                             "init_args": {"dirpath": "'"$run"'/ckpt", "save_last": true, "every_n_train_steps": 20}},
                            {"class_path": "callbacks.SpineCheckpoint"},
                            {"class_path": "callbacks.TokenThroughputMonitor"}]' \
      > "$run.log" 2>&1; then
    log "FAIL fit $name (see $run.log)"; tail -30 "$run.log"; status=1; return
  fi
  grep -E "spine checkpoint written" "$run.log" | tail -1 | tee -a "$OUT/summary.txt"
  grep -oE "val_loss: [0-9.]+" "$run.log" | tail -1 | tee -a "$OUT/summary.txt"
  if ! $SPINE consolidate "$run/ckpt/last.ckpt" "$run/consolidated" >> "$run.log" 2>&1; then
    log "FAIL consolidate $name"; tail -20 "$run.log"; status=1; return
  fi
  python3 - "$run" <<'EOF' 2>&1 | tee -a "$OUT/summary.txt"
import sys, glob, torch
from safetensors.torch import load_file
run = sys.argv[1]
(final,) = glob.glob(f"{run}/**/spine/final/model.safetensors", recursive=True)
a, b = load_file(final), load_file(f"{run}/consolidated/model.safetensors")
same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
kind = "sharded dir" if __import__("os").path.isdir(f"{run}/ckpt/last.ckpt") else "file"
print(f"consolidated {kind} == SpineCheckpoint export: {same} ({len(a)} tensors)")
sys.exit(0 if same else 1)
EOF
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
}

log "GPUs: $GPUS x $(python3 -c 'import torch; print(torch.cuda.get_device_name())')"
DDP="--trainer.strategy=ddp"
[ "$GPUS" = 1 ] && DDP="--trainer.strategy=auto"
if want fit; then
  fit_and_consolidate gpt2-ddp gpt2-124m 16 $DDP
  fit_and_consolidate gpt2-fsdp2 gpt2-124m 16 $FSDP2
  # Qwen3-0.6B blocks with the data's GPT-2 vocabulary (the CLI links the tokenizer's vocab size)
  fit_and_consolidate qwen3-ddp qwen3-0.6b 8 $DDP
  fit_and_consolidate qwen3-fsdp2 qwen3-0.6b 8 $FSDP2
fi

want bench && for spec in $BENCH; do
  set -- ${spec/:/ }
  python3 bench/ddp_scaling.py --model "$1" --batch "$2" --devices 1 2>&1 | grep RESULT | tee -a "$OUT/summary.txt"
  python3 bench/ddp_scaling.py --model "$1" --batch "$2" --devices 1 --strategy fsdp2 2>&1 | grep RESULT | tee -a "$OUT/summary.txt"
  if [ "$GPUS" -ge 2 ]; then
    for s in ddp fsdp2; do
      python3 bench/ddp_scaling.py --model "$1" --batch "$2" --devices "$GPUS" --strategy $s 2>&1 | grep RESULT | tee -a "$OUT/summary.txt"
    done
  fi
done

if [ "$GPUS" -ge 2 ] && want tests; then
  log "multi-process tests on NCCL"
  SPINE_TEST_ACCELERATOR=gpu python3 -m pytest -q -p no:cacheprovider tests/test_ddp.py tests/test_fsdp.py \
    > "$OUT/pytest-gpu.log" 2>&1 || status=1
  tail -15 "$OUT/pytest-gpu.log" | tee -a "$OUT/summary.txt"
fi
if [ "$GPUS" -ge 2 ] && want finetune; then
  log "fine-tuning stages and ReasoningEval under DDP"
  for cfg in spam-scratch instruct-small quickstart; do
    extra=()
    case $cfg in
      spam-scratch) extra=(--data.init_args.path=.devdata/sms-spam/SMSSpamCollection --data.init_args.vocab_dir=.devdata/gpt2-bpe) ;;
      instruct-small) extra=(--data.init_args.path=.devdata/instruction-data.json --data.init_args.vocab_dir=.devdata/gpt2-bpe) ;;
    esac
    if $SPINE fit --config configs/$cfg.yaml --trainer.accelerator=gpu --trainer.devices="$GPUS" \
        --trainer.strategy=ddp --trainer.default_root_dir="$OUT/$cfg" "${extra[@]}" > "$OUT/$cfg.log" 2>&1; then
      grep -E "val_loss|val_acc|reasoning eval|accuracy" "$OUT/$cfg.log" | tail -4 | tee -a "$OUT/summary.txt"
    else
      log "FAIL $cfg (see $cfg.log)"; tail -30 "$OUT/$cfg.log"; status=1
    fi
  done
fi
log "done, status $status"
exit $status
