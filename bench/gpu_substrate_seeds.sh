#!/bin/bash
# Does the GPU substrate reproduce over seeds? CONFIG (default configs/substrate-gpu.yaml) as it stands, its own
# callbacks included (each run in its own folder, where the config's relative paths land: runs/<config>/final)
# -> SFT on 4,000 worked solutions for SFT_EPOCHS (default 2) at lr 1e-4 -> greedy on the gpu ladder's held-out
# level 7-8 problems, for several runs side by side on one GPU with Lightning's `deterministic` on (true), off
# (false) or `warn`. A TERM (e.g. `timeout`) stops every run, then what finished is archived.
# Run from the repo root on the device machine with `.whl` carried (jsonargparse, datasets); writes
# OUT/substrate-seeds.tgz (logs, curves, traces; the device tool returns at most 8 files).
#   bash bench/gpu_substrate_seeds.sh "s0:0:true s1:1:true s2:2:true"
# Each entry is NAME:SEED:DETERMINISTIC.
set -u -o pipefail
[ $# -ge 1 ] || { echo 'usage: bash bench/gpu_substrate_seeds.sh "NAME:SEED:DETERMINISTIC ..."'; exit 2; }
OUT=${OUT:-/tmp/out}; R=/tmp/substrate-seeds; REPO=$PWD; EPOCHS=${SFT_EPOCHS:-2}
CONFIG=${CONFIG:-configs/substrate-gpu.yaml}; [[ $CONFIG == /* ]] || CONFIG=$REPO/$CONFIG
CK=${CK:-runs/$(basename "$CONFIG" .yaml)}   # where the config's SpineCheckpoint writes, relative to the run folder
grep -q "dirpath: $CK\s*\(#.*\)\?$" "$CONFIG" || { echo "gpu_substrate_seeds: $CONFIG has no SpineCheckpoint dirpath $CK (set CK=...)"; exit 2; }
rm -rf "$R"; mkdir -p "$R" "$OUT"
source bench/device_runs.sh   # wheels, PYTHONPATH, $SP, and the TERM trap that stops every run
one() {  # name seed deterministic
  local D=$R/$1 S=$2 det=$3; mkdir -p "$D"
  { (cd "$D" && $SP fit --config "$CONFIG" --seed_everything "$S" --trainer.deterministic "$det") &&
    (cd "$REPO" && $SP fit --config configs/trace-sft.yaml --seed_everything "$S" --model.init_args.init_from "$D/$CK/final" \
      --data.init_args.traces null --data.init_args.problems "task:chain:levels=1-8,n=4000,seed=1,split=train" --model.init_args.export_dir null \
      --trainer.default_root_dir "$D/sft" --trainer.logger false --trainer.enable_checkpointing false --trainer.callbacks '[]' \
      --trainer.max_epochs "$EPOCHS" --trainer.accelerator gpu --trainer.precision bf16-mixed --data.init_args.batch_size 64 \
      --data.init_args.max_length 160 --model.init_args.lr 1e-4 --trainer.deterministic "$det" \
      --trainer.callbacks+='{"class_path": "callbacks.SpineCheckpoint", "init_args": {"dirpath": "'"$D"'/sft/spine", "on_save": false}}') &&
    for m in "$CK" sft/spine; do
      $SP eval --checkpoint "$D/$m/final" --problems "task:chain:levels=7-8,n=1000,seed=7,split=eval" --template synthetic \
        --sampling.max_new_tokens 96 --batch_size 512 --device cuda --traces "$D/$(basename "$m")-greedy.jsonl" | tail -n 8
      sha256sum "$D/$m/final/model.safetensors"
    done; } > "$R/$1.log" 2>&1
  echo "rc=$? $1 ${SECONDS}s" | tee -a "$R/rc.txt"
}
for spec in $1; do IFS=: read -r name seed det <<< "$spec"; one "$name" "$seed" "$det" & done; wait
(cd /tmp && tar czf "$OUT/substrate-seeds.tgz" --exclude='*.safetensors' --exclude='*.ckpt' substrate-seeds)
for f in "$R"/*.log; do echo "== $f"; grep -E "check greedy: accuracy|level=8|level=7|safetensors" "$f" | tail -8; done
# summary: the GPU substrate and its SFT over seeds, side by side on one GPU, level-7/8 greedy
# cpu: not measured (a GPU recipe)
# gpu: see docs/tasks.md, "The GPU substrate" (H200)
# memory: not measured
