#!/bin/bash
# Issue 13's student table on the CPU: three students with a quarter of the teacher's parameters (d=64 x 4,
# 225K), each first pretrained on the teacher's corpus, then trained on 1,000 training problems three ways:
# the task's worked solutions (plain SFT), the teacher's correct sampled traces (trace-SFT), and the worked
# solutions with the teacher's logits (KD). Teacher: a ladder run's GRPO model and its traces, from the plan of
# commit 9b4fbda (task chain, trace-SFT student: `git show 9b4fbda:configs/ladder/cpu.yaml > /tmp/cpu-chain.yaml;
# spine ladder --plan /tmp/cpu-chain.yaml`); today's plan writes no teacher traces.
#   bash bench/distill_students.sh runs/ladder/cpu/seed0 runs/students-seed0
#   PRETRAIN_STEPS=2400 bash bench/distill_students.sh runs/ladder/cpu/seed0 runs/students-seed0-2400
# LR=1e-4 sets the fine-tuning lr (default: the stage configs', 3e-3 / distill-kd.yaml's). A student already
# pretrained in OUT/pretrain is reused, so one pretraining serves several fine-tuning settings.
set -eu
LADDER=${1:-runs/ladder/cpu/seed0}; OUT=${2:-runs/students}; SEED=${SEED:-0}
STEPS=${PRETRAIN_STEPS:-600}  # 2400 = the teacher's pretraining compute (a quarter of the FLOPs per step)
TEACHER=$LADDER/grpo/spine/final; TRACES=$LADDER/student/teacher-traces.jsonl
[ -f "$TRACES" ] || { echo "distill_students: no teacher traces at $TRACES (a ladder run of the 9b4fbda plan writes them)"; exit 2; }
STUDENT='{"d_model": 64, "n_layer": 4, "n_head": 4, "context_length": 128}'
PROBLEMS="task:chain:levels=1-6,n=1000,seed=11,split=train"
HELD="task:chain:levels=5-6,n=400,seed=7,split=eval"
THREADS='--trainer.callbacks+={"class_path": "callbacks.TorchThreads", "init_args": {"num_threads": 1}}'
ckpt() { echo "--trainer.callbacks+={\"class_path\": \"callbacks.SpineCheckpoint\", \"init_args\": {\"dirpath\": \"$1\", \"on_save\": false}}"; }
fit() { local name=$1; shift; /usr/bin/time -f "$name %e s wall %U s user" -a -o "$OUT/times.txt" \
  spine fit "$@" --seed_everything "$SEED" --trainer.default_root_dir "$OUT/$name" --trainer.logger false \
  --trainer.enable_checkpointing false --trainer.callbacks '[]' "$THREADS" "$(ckpt "$OUT/$name/spine")" > "$OUT/$name.log" 2>&1; }
ev() { OMP_NUM_THREADS=1 spine eval --checkpoint "$2" --problems "$HELD" --template synthetic \
  --sampling.max_new_tokens 80 --batch_size 64 --device cpu --traces "$OUT/eval-$1.jsonl" > "$OUT/eval-$1.log" 2>&1; }
mkdir -p "$OUT"
INIT="$OUT/pretrain/spine/final"
[ -f "$INIT/manifest.json" ] || fit pretrain --config configs/substrate-cpu.yaml \
  --model.init_args.model_overrides "$STUDENT" --trainer.max_steps "$STEPS" --trainer.val_check_interval "$STEPS"
LRARG=(); [ -n "${LR:-}" ] && LRARG=(--model.init_args.lr "$LR")
common=(--config configs/trace-sft.yaml --model.init_args.init_from "$INIT" --model.init_args.export_dir null
        --trainer.max_epochs 3 "${LRARG[@]}")
fit sft "${common[@]}" --data.init_args.traces null --data.init_args.problems "$PROBLEMS" &
fit trace-sft "${common[@]}" --data.init_args.traces "[\"$TRACES\"]" --data.init_args.problems null &
wait
fit kd --config configs/distill-kd.yaml --model.init_args.teacher "$TEACHER" --model.init_args.init_from "$INIT" \
  --model.init_args.model_overrides "$STUDENT" --model.init_args.export_dir null --trainer.max_epochs 3 \
  --data.init_args.traces null --data.init_args.problems "$PROBLEMS" "${LRARG[@]}"
ev teacher "$TEACHER" & ev pretrain "$INIT" & wait
ev sft "$OUT/sft/spine/final" & ev trace-sft "$OUT/trace-sft/spine/final" & wait
ev kd "$OUT/kd/spine/final"
grep -H "^| all\|level=6 |" "$OUT"/eval-*.log
cat "$OUT/times.txt"
