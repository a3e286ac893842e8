#!/bin/bash
# GRPO and its random-reward control, 3 seeds, configs/grpo-quick.yaml (docs/grpo.md, "Measurements").
# Each run: one thread (OMP_NUM_THREADS=1); a GRPO run and its control run side by side (2 cores).
# Then each run's final model (last.ckpt, not the best) on 400 fresh level-6 problems (seed 8; the runs
# evaluate seed 7 during training and pick their best checkpoint on it), and the substrate on the same.
#   bash bench/grpo_seeds.sh [OUT_DIR]
set -u
out=${1:-runs/grpo-seeds}
FRESH="task:chain:levels=6,n=400,seed=8,split=eval"
mkdir -p "$out"
fresh() {  # name, spine checkpoint dir
  OMP_NUM_THREADS=1 spine eval --checkpoint "$2" --problems "$FRESH" --template synthetic \
    --sampling.max_new_tokens 84 --batch_size 200 --device cpu --traces "$out/fresh-$1.jsonl" > "$out/fresh-$1.log" 2>&1
}
for s in 0 1 2; do
  for arm in grpo random; do
    (
      extra=()
      [ "$arm" = random ] && extra=(--model.init_args.random_reward=true)
      dir="$out/$arm-seed$s"
      /usr/bin/time -f "$arm seed $s: %e s wall, %U s user" -o "$out/$arm-seed$s.time" \
        env OMP_NUM_THREADS=1 spine fit --config configs/grpo-quick.yaml --seed_everything "$s" \
        --model.init_args.sampling.seed "$s" --data.init_args.seed "$s" \
        --trainer.default_root_dir "$dir" --trainer.logger.init_args.save_dir "$dir" \
        --trainer.logger.init_args.version run "${extra[@]}" > "$out/$arm-seed$s.log" 2>&1
      # a fixed logger version: a rerun into the same OUT_DIR must not evaluate an older run's model
      OMP_NUM_THREADS=1 spine consolidate "$dir"/logs/run/checkpoints/last.ckpt "$dir/final" --overwrite true \
        > "$out/$arm-seed$s.consolidate.log" 2>&1
      fresh "$arm-seed$s" "$dir/final"
    ) &
  done
  wait
  cat "$out"/*-seed$s.time
done
fresh substrate runs/substrate-cpu/final
grep -H "reasoning eval" "$out"/*.log
grep -H "^| level=6 " "$out"/fresh-*.log
