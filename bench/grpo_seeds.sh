#!/bin/bash
# GRPO and its random-reward control, each seed in SEEDS (default 0 1 2), configs/grpo-quick.yaml (docs/grpo.md, "Measurements").
# Each run pins the config's threads (grpo-quick.yaml: 2, the whole 2-core machine), so runs go one after another.
# CONFIG names another config; for one pinned to one thread, THREADS=1 SIDE_BY_SIDE=1 runs a GRPO run and its control
# together (as the earlier configs were measured: git show bfca194:configs/grpo-quick.yaml > /tmp/grpo-200.yaml).
# THREADS: torch threads of the consolidation and evaluation steps.
# Then each run's final model (last.ckpt, not the best) on 400 fresh level-6 problems (seed 8; the runs
# evaluate seed 7 during training and pick their best checkpoint on it), and the substrate on the same.
#   bash bench/grpo_seeds.sh [OUT_DIR]
#   SUBSTRATE='runs/substrate-level/seed{seed}/final' bash bench/grpo_seeds.sh OUT_DIR   # seed s starts from substrate seed s
set -u
out=${1:-runs/grpo-seeds}
SUBSTRATE=${SUBSTRATE:-runs/substrate-cpu-level/final}   # "{seed}" in it becomes the run's seed
FRESH="task:chain:levels=6,n=${FRESH_N:-400},seed=8,split=eval"   # FRESH_N=2000: a 95% interval of +-2 instead of +-4.5
THREADS=${THREADS:-2}
CONFIG=${CONFIG:-configs/grpo-quick.yaml}
SEEDS=${SEEDS:-0 1 2}
mkdir -p "$out"
fresh() {  # name, spine checkpoint dir
  OMP_NUM_THREADS=$THREADS spine eval --checkpoint "$2" --problems "$FRESH" --template synthetic \
    --sampling.max_new_tokens 84 --batch_size 200 --device cpu --traces "$out/fresh-$1.jsonl" > "$out/fresh-$1.log" 2>&1
}
for s in $SEEDS; do
  for arm in grpo random; do
    (
      extra=()
      [ "$arm" = random ] && extra=(--model.init_args.random_reward=true)
      dir="$out/$arm-seed$s"
      /usr/bin/time -f "$arm seed $s: %e s wall, %U s user" -o "$out/$arm-seed$s.time" \
        env OMP_NUM_THREADS=$THREADS spine fit --config "$CONFIG" --seed_everything "$s" \
        --model.init_args.sampling.seed "$s" --data.init_args.seed "$s" \
        --trainer.default_root_dir "$dir" --trainer.logger.init_args.save_dir "$dir" \
        --trainer.logger.init_args.version run --model.init_args.init_from "${SUBSTRATE//\{seed\}/$s}" \
        "${extra[@]}" > "$out/$arm-seed$s.log" 2>&1 || { echo "$arm seed $s: spine fit failed, see $out/$arm-seed$s.log"; exit 1; }
      # a fixed logger version: a rerun into the same OUT_DIR must not evaluate an older run's model
      OMP_NUM_THREADS=$THREADS spine consolidate "$dir"/logs/run/checkpoints/last.ckpt "$dir/final" --overwrite true \
        > "$out/$arm-seed$s.consolidate.log" 2>&1
      fresh "$arm-seed$s" "$dir/final"
    ) &
    [ "${SIDE_BY_SIDE:-0}" = 1 ] || wait
  done
  wait
  cat "$out"/*-seed$s.time
done
if [[ $SUBSTRATE == *"{seed}"* ]]; then
  for s in $SEEDS; do THREADS=1 fresh "substrate-seed$s" "${SUBSTRATE//\{seed\}/$s}" & done; wait   # 1 thread each
else
  fresh substrate "$SUBSTRATE"
fi
grep -H "reasoning eval" "$out"/*.log
grep -H "^| level=6 " "$out"/fresh-*.log
