#!/bin/bash
# Do the cpu ladder's numbers depend on the host CPU? The cpu plan's pretraining (configs/substrate-cpu.yaml on
# task:chainpaths, seed 0, one torch thread) for STEPS steps under three CPU-kernel settings; prints the sha256 of
# the weights for each, and the CPU and torch it ran on. Same hash on two hosts = the same bits.
#   bash bench/cpu_bits.sh [steps=60] [out=/tmp/cpu-bits]
#   default  torch picks its kernels for this CPU (AVX-512 where there is one)
#   avx2     ATen, MKL and oneDNN capped at AVX2 (ATEN_CPU_CAPABILITY, MKL_CBWR, ONEDNN_MAX_CPU_ISA)
#   compat   no vector kernels in ATen, MKL's compatible path (slow; the widest reach)
set -u
STEPS=${1:-60}; OUT=${2:-/tmp/cpu-bits}; mkdir -p "$OUT"
SPINE=${SPINE:-spine}
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); flags: $(grep -m1 flags /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512_bf16|amx_tile)$' | tr '\n' ' ')"
python3 -c "import torch; print('torch', torch.__version__, 'capability', torch.backends.cpu.get_cpu_capability())"
probe() {  # name, then env assignments
  local name=$1; shift
  local d=$OUT/$name; rm -rf "$d"
  local t0=$SECONDS
  env "$@" $SPINE fit --config configs/substrate-cpu.yaml --seed_everything 0 --trainer.default_root_dir "$d" \
    --trainer.logger false --trainer.enable_checkpointing false --trainer.enable_progress_bar false \
    --trainer.max_steps "$STEPS" --trainer.val_check_interval "$STEPS" --trainer.callbacks '[]' \
    '--trainer.callbacks+={"class_path": "callbacks.TorchThreads", "init_args": {"num_threads": 1}}' \
    "--trainer.callbacks+={\"class_path\": \"callbacks.SpineCheckpoint\", \"init_args\": {\"dirpath\": \"$d/spine\", \"on_save\": false}}" \
    --data.init_args.source "task:chainpaths:levels=1-6,n=40000,seed=0,split=train" > "$d.log" 2>&1 \
    || { echo "$name: failed, $d.log:"; tail -3 "$d.log"; return; }
  echo "$name: $(cat "$d"/spine/final/*.safetensors | sha256sum | cut -c1-16)  ($((SECONDS - t0)) s, $STEPS steps)"
}
probe default X=1 &
probe avx2 ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 &
probe compat ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE ONEDNN_MAX_CPU_ISA=SSE41 &
wait
