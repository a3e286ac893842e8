#!/bin/bash
# The reasoning ladder, gpu size, in one device call (NVIDIA H200): carry `.whl` (../shared/tools/device-wheels).
# The run folder stays on the device; its report, manifest, logs and eval traces come back as one archive
# ($OUT/ladder-gpu.tgz; the device tool returns at most 8 files). Usage: bash bench/h200_ladder.sh [seed] [limit_s]
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; SEED=${1:-0}; LIMIT=${2:-540}; RUN=/tmp/ladder-gpu-seed$SEED
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
timeout "$LIMIT" python3 -m modules.cli ladder --size gpu --seed "$SEED" --out "$RUN"; echo "ladder rc=$?"
python3 -m modules.cli ladder-report "$RUN" > /dev/null 2>&1 || true   # a partial run still gets its report
cd "$RUN" && tar czf "$OUT/ladder-gpu.tgz" --exclude='*.safetensors' --exclude='*.ckpt' --exclude='*.pt' . && ls -la "$OUT"
cat "$RUN/ladder.md" 2>/dev/null | head -60
