#!/bin/bash
# GRPO and its random-reward control, 3 seeds, configs/grpo-quick.yaml (docs/grpo.md, "Measurements").
# Each run: one thread (OMP_NUM_THREADS=1); a GRPO run and its control run side by side (2 cores).
#   bash bench/grpo_seeds.sh [OUT_DIR]
set -u
out=${1:-runs/grpo-seeds}
mkdir -p "$out"
for s in 0 1 2; do
  for arm in grpo random; do
    extra=()
    [ "$arm" = random ] && extra=(--model.init_args.random_reward=true)
    dir="$out/$arm-seed$s"
    /usr/bin/time -f "$arm seed $s: %e s wall, %U s user" -o "$out/$arm-seed$s.time" \
      env OMP_NUM_THREADS=1 spine fit --config configs/grpo-quick.yaml --seed_everything "$s" \
      --model.init_args.sampling.seed "$s" --data.init_args.seed "$s" \
      --trainer.default_root_dir "$dir" --trainer.logger.init_args.save_dir "$dir" "${extra[@]}" \
      > "$out/$arm-seed$s.log" 2>&1 &
  done
  wait
  cat "$out"/*-seed$s.time
done
grep -H "reasoning eval" "$out"/*.log
