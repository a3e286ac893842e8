#!/bin/bash
# Do the cpu ladder's numbers depend on the host CPU? The cpu plan's pretraining (configs/substrate-cpu.yaml on
# task:chainpaths, seed 0, one torch thread) for STEPS steps under three CPU-kernel settings; prints the sha256 of
# the weights for each, and the CPU and torch it ran on. Same hash on two hosts = the same bits.
#   bash bench/cpu_bits.sh [steps=60] [out=/tmp/cpu-bits] [settings, default "default avx2 compat"]
#   default      torch picks its kernels for this CPU (AVX-512 where there is one)
#   avx2         ATen, MKL and oneDNN capped at AVX2 (ATEN_CPU_CAPABILITY, MKL_CBWR, ONEDNN_MAX_CPU_ISA)
#   avx2strict   the same with MKL's strict reproducibility mode (MKL_CBWR=AVX2,STRICT)
#   mklcompat    ATen at AVX2, MKL on its compatible (SSE2) path
#   atenscalar   ATen without vector kernels, MKL at AVX2
#   compat       ATen without vector kernels, MKL's compatible path, oneDNN at SSE4.1 (slow; the widest reach)
set -u
STEPS=${1:-60}; OUT=${2:-/tmp/cpu-bits}; SETTINGS=${3:-default avx2 compat}; mkdir -p "$OUT"
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
for name in $SETTINGS; do
  case $name in
    default)    probe default X=1 & ;;
    avx2)       probe avx2 ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 & ;;
    avx2strict) probe avx2strict ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2,STRICT ONEDNN_MAX_CPU_ISA=AVX2 & ;;
    mklcompat)  probe mklcompat ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=COMPATIBLE ONEDNN_MAX_CPU_ISA=AVX2 & ;;
    atenscalar) probe atenscalar ATEN_CPU_CAPABILITY=default MKL_CBWR=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 & ;;
    compat)     probe compat ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE ONEDNN_MAX_CPU_ISA=SSE41 & ;;
    *) echo "cpu_bits: unknown setting $name" ;;
  esac
done
wait
