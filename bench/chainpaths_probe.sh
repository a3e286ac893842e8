#!/bin/bash
# Does voting beat greedy when worked solutions take several orders? The CPU substrate recipe
# (configs/substrate-cpu.yaml) and the cpu ladder's SFT, both on `task:chainpaths` instead of `task:chain`,
# then greedy and self-consistency@8 at T = 0.7 and 0.3 on the ladder's held-out chain problems (levels 5-6).
# One pinned torch thread per command (bitwise repeatable on one machine); run two seeds side by side on 2 cores.
#   bash bench/chainpaths_probe.sh SEED [SFT_EPOCHS=2]
#     -> runs/chainpaths-probe/seedS/{pretrain.log, sft-eE.log, sft-eE-greedy.jsonl, sft-eE-sc0.7.jsonl, sft-eE-sc0.3.jsonl}
# Analysis of the traces (which order each sample took, and whether it followed it): docs/tasks.md.
set -eu
S=$1; E=${2:-2}; D=runs/chainpaths-probe/seed$S; SP=${SPINE:-spine}
export SPINE_NUM_THREADS=1
TH='--trainer.callbacks+={"class_path": "callbacks.TorchThreads", "init_args": {"num_threads": 1}}'
ck() { echo '--trainer.callbacks+={"class_path": "callbacks.SpineCheckpoint", "init_args": {"dirpath": "'"$1"'", "on_save": false}}'; }
mkdir -p "$D"
[ -e "$D/pretrain/spine/final/manifest.json" ] || $SP fit --config configs/substrate-cpu.yaml --seed_everything "$S" \
  --trainer.default_root_dir "$D/pretrain" --trainer.logger false --trainer.enable_checkpointing false --trainer.callbacks '[]' "$TH" \
  --data.init_args.source "task:chainpaths:levels=1-6,n=40000,seed=0,split=train" "$(ck "$D/pretrain/spine")" > "$D/pretrain.log" 2>&1
M=$D/sft-e$E
[ -e "$M/spine/final/manifest.json" ] || $SP fit --config configs/trace-sft.yaml --seed_everything "$S" \
  --model.init_args.init_from "$D/pretrain/spine/final" --data.init_args.traces null \
  --data.init_args.problems "task:chainpaths:levels=1-6,n=4000,seed=1,split=train" --model.init_args.export_dir null \
  --trainer.default_root_dir "$M" --trainer.logger false --trainer.enable_checkpointing false --trainer.callbacks '[]' \
  --trainer.max_epochs "$E" "$TH" "$(ck "$M/spine")" > "$M.log" 2>&1
# the longest level-6 solution is 85 tokens (tag and leading space included), so 88 new tokens never truncate
EV=(--problems "task:chain:levels=5-6,n=400,seed=7,split=eval" --template synthetic --sampling.max_new_tokens 88 --batch_size 64 --device cpu)
$SP eval --checkpoint "$M/spine/final" "${EV[@]}" --traces "$M-greedy.jsonl" | grep "level="
for T in 0.7 0.3; do
  $SP eval --checkpoint "$M/spine/final" "${EV[@]}" --pipeline sc --sampling.n 8 --sampling.temperature $T --sampling.seed "$S" \
    --traces "$M-sc$T.jsonl" | grep "level="
done
