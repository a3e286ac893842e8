#!/bin/bash
# One device call for issue 15/16/11's GPU benches (NVIDIA H200). Run from the repo root on the device
# machine with `.whl` (../shared/tools/device-wheels trl accelerate psutil pandas jinja2 fastapi uvicorn
# starlette pydantic pydantic-core openai httpx anyio sniffio h11 httpcore jiter distro annotated-types
# typing-inspection click rich torchao) and `.devdata` (copies of ../shared/anchors and ../shared/data/gpt2-bpe)
# carried. Each bench has its own time limit and writes its log and JSON under $OUT, so one failure or
# overrun does not cost the others. Usage: bash bench/h200_benches.sh [section ...]
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
run() {  # name limit_s command...
  local name=$1 limit=$2; shift 2
  echo "=== $name ($(date -u +%H:%M:%S))"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; echo "rc=$? $name" | tee -a "$OUT/rc.txt"
  tail -n 14 "$OUT/$name.log"
}
[ $# -eq 0 ] && set -- grpo decode serve train
for s in "$@"; do case $s in
grpo)
  run grpo-gpt2 170 python3 bench/grpo_throughput.py --preset gpt2-124m --device cuda --steps 3 --warmup 1 --out "$OUT/grpo-gpt2-124m.json"
  run grpo-qwen3 200 python3 bench/grpo_throughput.py --preset qwen3-0.6b --device cuda --steps 3 --warmup 1 --out "$OUT/grpo-qwen3-0.6b.json" ;;
grpoc)  # eager and compiled rollouts beside TRL, GPT-2 124M only (fits a short call)
  run grpoc-gpt2 230 python3 bench/grpo_throughput.py --preset gpt2-124m --device cuda --steps 3 --warmup 1 --variants spine,spine_compiled,trl --out "$OUT/grpoc-gpt2-124m.json" ;;
grpob)  # compiled rollouts from fp32 weights under autocast vs from a bf16 copy, beside TRL, both shapes
  run grpob-gpt2 170 python3 bench/grpo_throughput.py --preset gpt2-124m --device cuda --steps 3 --warmup 1 --variants spine_compiled,spine_bf16,trl --out "$OUT/grpob-gpt2-124m.json"
  run grpob-qwen3 230 python3 bench/grpo_throughput.py --preset qwen3-0.6b --device cuda --steps 3 --warmup 1 --variants spine_compiled,spine_bf16,trl --out "$OUT/grpob-qwen3-0.6b.json" ;;
grpobq)  # the Qwen3-0.6B shape alone: a bf16 copy for rollouts beside TRL (fits a short call)
  run grpob-qwen3 300 python3 bench/grpo_throughput.py --preset qwen3-0.6b --device cuda --steps 3 --warmup 1 --variants spine_bf16,trl --out "$OUT/grpob-qwen3-0.6b.json" ;;
decode)
  run decode-nsamples 110 python3 bench/decode_nsamples.py --preset gpt2-124m --prompts 8 --n 16 --prompt_len 512 --new_tokens 256 --variants shared,replicated,hf --compile --profile --reps 3 --warmup 1
  run decode-b64 90 python3 bench/decode_throughput.py --model gpt2-124m --batches 64 --variants spine,hf --reps 3 --warmup 2 ;;
serve)
  run serve-load 110 python3 bench/serve_load.py --device cuda --preset gpt2-124m --tokenizer gpt2 --vocab_dir .devdata/gpt2-bpe --max_batch_size 32 --requests_per_client 25 --deadline_s 100 ;;
train)
  run train 150 python3 bench/train_throughput.py --model gpt2-124m --batch 32 --steps 15 --warmup 6 --variants trainer,plain,nanogpt --anchors .devdata/anchors --out "$OUT/train.json" ;;
fast)  # issue 15's training fast paths, GPT-2 124M B 32 x 1024: one process per variant (a failing path costs only itself);
       # FAST_GPT2 / FAST_QWEN3 name other variants (bench/train_throughput.py: plain+fp8+cdt, plain+autotune, plain+graphs, ...)
  for v in ${FAST_GPT2:-plain nanogpt plain+fp8 plain+fp8head}; do
    run "fast-gpt2-${v//+/_}" ${FAST_LIMIT:-130} python3 bench/train_throughput.py --model gpt2-124m --batch 32 --steps 12 --warmup 5 --variants "$v" --anchors .devdata/anchors --out "$OUT/fast-gpt2-${v//+/_}.json"
  done ;;
fastq)  # the same for the Qwen3-0.6B shape, B 16 x 1024
  for v in ${FAST_QWEN3:-plain plain+fp8}; do
    run "fast-qwen3-${v//+/_}" ${FAST_LIMIT:-130} python3 bench/train_throughput.py --model qwen3-0.6b --batch 16 --steps 10 --warmup 4 --variants "$v" --out "$OUT/fast-qwen3-${v//+/_}.json"
  done ;;
decodeab)  # GPT-2's unaligned 50,257-row head padded to a multiple of 8 vs as a plain linear, beside HF (decode, batch 64)
  run decode-ab ${DECODE_LIMIT:-180} python3 bench/decode_throughput.py --model gpt2-124m --batches 64 --variants spine,spine_plainhead,hf --reps 3 --warmup 2 --profile --out "$OUT/decode-ab.json" ;;
headtrain)  # the same in training: GPT-2 124M with its vocabulary unpadded (an imported HF GPT-2), padded head vs plain linear
  run head-train ${HEAD_LIMIT:-200} python3 bench/train_throughput.py --model gpt2-124m --batch 32 --steps 12 --warmup 5 --pad_vocab_to 1 --variants plain,plain+plainhead --out "$OUT/head-train.json" ;;
bw)  # the bytes of every Triton kernel of the GPT-2 124M step, beside the copy bandwidth (issue 15's "profile that shows why")
  run bw-gpt2 ${BW_LIMIT:-180} python3 bench/profile_train.py --model gpt2-124m --batch 32 --bandwidth ;;
bwq)  # the same for the Qwen3-0.6B shape, 8 of its 28 blocks by default (all 28 did not finish in 280 s; then raise BW_LIMIT)
  run bw-qwen3 ${BW_LIMIT:-240} python3 bench/profile_train.py --model qwen3-0.6b --batch 16 --bandwidth --n_layer ${BW_LAYERS:-8} ;;
prof)  # where the GPT-2 124M step spends GPU time (torch.profiler: the per-kernel times beside bw's bytes)
  run prof-gpt2 ${PROF_LIMIT:-110} python3 bench/profile_train.py --model gpt2-124m --batch 32 ;;
profq)  # where the Qwen3-0.6B shape's step spends GPU time (issue 15's 55% MFU target)
  run prof-qwen3 ${PROF_LIMIT:-110} python3 bench/profile_train.py --model qwen3-0.6b --batch 16 ${PROF_LAYERS:+--n_layer $PROF_LAYERS} ;;
esac; done
