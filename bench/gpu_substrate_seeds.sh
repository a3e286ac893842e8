#!/bin/bash
# Does the GPU substrate reproduce? configs/substrate-gpu.yaml -> a fixed 2-epoch SFT at lr 1e-4 (the gpu ladder's
# SFT before it stopped at a level) -> greedy on
# the ladder's held-out level 7-8 problems, for several runs side by side on one GPU, with Lightning's
# `deterministic` mode on (CUBLAS_WORKSPACE_CONFIG set, deterministic kernels) or off. Run from the repo root
# on the device machine with `.whl` carried (jsonargparse, datasets); writes OUT/substrate-seeds/*.
#   bash bench/gpu_substrate_seeds.sh "det0a:0:true det0b:0:true det1:1:true det2:2:true"
# Each entry is NAME:SEED:DETERMINISTIC (true, false or warn).
set -u -o pipefail
OUT=${OUT:-/tmp/out}; R=/tmp/substrate-seeds; rm -rf "$R"; mkdir -p "$R" "$OUT/substrate-seeds"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD CUBLAS_WORKSPACE_CONFIG=:4096:8
SP="python3 -m modules.cli"
one() {  # name seed deterministic
  local D=$R/$1 S=$2 det=$3; mkdir -p "$D"
  { $SP fit --config configs/substrate-gpu.yaml --seed_everything "$S" --trainer.default_root_dir "$D/pretrain" \
      --trainer.logger false --trainer.enable_checkpointing false --trainer.callbacks '[]' --trainer.deterministic "$det" \
      --trainer.callbacks+='{"class_path": "callbacks.SpineCheckpoint", "init_args": {"dirpath": "'"$D"'/pretrain/spine", "on_save": false}}' &&
    $SP fit --config configs/trace-sft.yaml --seed_everything "$S" --model.init_args.init_from "$D/pretrain/spine/final" \
      --data.init_args.traces null --data.init_args.problems "task:chain:levels=1-8,n=4000,seed=1,split=train" --model.init_args.export_dir null \
      --trainer.default_root_dir "$D/sft" --trainer.logger false --trainer.enable_checkpointing false --trainer.callbacks '[]' --trainer.max_epochs 2 \
      --trainer.accelerator gpu --trainer.precision bf16-mixed --data.init_args.batch_size 64 --data.init_args.max_length 160 \
      --model.init_args.lr 1e-4 --trainer.deterministic "$det" \
      --trainer.callbacks+='{"class_path": "callbacks.SpineCheckpoint", "init_args": {"dirpath": "'"$D"'/sft/spine", "on_save": false}}' &&
    for m in pretrain sft; do
      $SP eval --checkpoint "$D/$m/spine/final" --problems "task:chain:levels=7-8,n=1000,seed=7,split=eval" --template synthetic \
        --sampling.max_new_tokens 96 --batch_size 512 --device cuda --traces "$D/$m-greedy.jsonl" | tail -n 8
      sha256sum "$D/$m/spine/final/model.safetensors"
    done; } > "$OUT/substrate-seeds/$1.log" 2>&1
  echo "rc=$? $1" | tee -a "$OUT/substrate-seeds/rc.txt"
}
start=$(date +%s)
for spec in $1; do IFS=: read -r name seed det <<< "$spec"; one "$name" "$seed" "$det" & done; wait
echo "wall $(( $(date +%s) - start )) s" | tee -a "$OUT/substrate-seeds/rc.txt"
for d in "$R"/*/; do n=$(basename "$d"); for f in "$d"*.jsonl; do cp "$f" "$OUT/substrate-seeds/$n-$(basename "$f")"; done; done 2>/dev/null
for f in "$OUT"/substrate-seeds/*.log; do echo "== $f"; grep -E "level=8|level=7|safetensors" "$f"; done
