#!/bin/bash
# Does logit KD from a strong teacher beat plain SFT at equal student compute? (issue 13's "beats the same
# student trained on the task's own worked solutions", in the regime where the teacher knows more than the
# student can learn alone in its budget.) CPU, one pinned thread per command; stages:
#   teacher   the cpu substrate's pretrained 0.85M model (PRETRAINED) fine-tuned 6 epochs on 4,000 worked solutions
#   plain     a quarter-size student (d=64 x 4) from scratch: prompt-masked SFT on N problems' worked solutions
#   kd        the same student, data, steps and lr, loss 0.5 CE + 0.5 tau^2 KL(teacher || student), tau = 2
#   traces    the teacher's greedy completions on the same N problems (trace-SFT keeps the correct ones)
#   trace     the same student, epochs and lr, SFT on those traces instead of the worked solutions (duplicates kept,
#             as the worked-solution corpus keeps the easy levels' repeated problems; the wrong ones dropped)
# then greedy on the ladder's held-out level 5-6 chain problems.
#   bash bench/kd_probe.sh teacher|plain|kd|traces|trace|eval   (OUT=runs/kd-probe, PRETRAINED, SEED=0, N=16000, EPOCHS=2)
# TASK=chainpaths trains on chainpaths instead of chain (the same questions; worked solutions in three tagged orders,
# docs/tasks.md): with a GRPO teacher that writes one order, its traces teach one path where the solutions teach three.
# Other student seeds reuse one teacher: OUT=runs/kd-probe-s1 SEED=1 TEACHER=runs/kd-probe/teacher/spine/final.
# Students land in OUT/plain-eEPOCHS and OUT/kd-eEPOCHS; eval reports the teacher and every student of that EPOCHS.
# KD variants: KD_TAG=-t1 KD_ARGS='--model.init_args.temperature 1' -> OUT/kd-t1-eEPOCHS (KD_ARGS is word-split).
# EVAL_TEACHER=0 leaves the teacher out of `eval` (bench/kd_gpu.sh evaluates it once per seed).
set -eu
OUT=${OUT:-runs/kd-probe}; SEED=${SEED:-0}; N=${N:-16000}; EPOCHS=${EPOCHS:-2}; SP=${SPINE:-spine}; TASK=${TASK:-chain}
case $TASK in chain) TOKENS=80 ;; chainpaths) TOKENS=88 ;;   # a chainpaths solution starts with its order's tag
  *) echo "kd_probe: TASK must be chain or chainpaths, got $TASK"; exit 2 ;; esac
# the teacher's SFT corpus: by default 4,000 other problems for 6 epochs (the measured 85.0% teacher);
# TEACHER_CORPUS=students with TEACHER_EPOCHS=4 trains it on the students' own N problems instead (a stronger one)
TEACHER_CORPUS=${TEACHER_CORPUS:-own}; TEACHER_EPOCHS=${TEACHER_EPOCHS:-6}; KD_TAG=${KD_TAG:-}; KD_ARGS=${KD_ARGS:-}
TEACHER=${TEACHER:-$OUT/teacher/spine/final}
# the cpu substrate (`spine fit --config configs/substrate-cpu.yaml`: the cpu ladder's seed-0 pretraining; the
# measured run used the ladder's own copy, runs/ladder/cpu-2400/seed0/pretrain/spine/final)
PRETRAINED=${PRETRAINED:-runs/substrate-cpu/final}
# DEVICE=cuda runs every stage on the GPU (deterministic kernels; bench/kd_gpu.sh runs the grid side by side)
DEVICE=${DEVICE:-cpu}
case $DEVICE in
cpu)  export SPINE_NUM_THREADS=1; EB=64
      TH='--trainer.callbacks+={"class_path": "callbacks.TorchThreads", "init_args": {"num_threads": 1}}' ;;
cuda) EB=400; TH='--trainer.accelerator=gpu'; TH2=(--trainer.deterministic true) ;;
*) echo "kd_probe: DEVICE must be cpu or cuda, got $DEVICE"; exit 2 ;; esac
ck() { echo '--trainer.callbacks+={"class_path": "callbacks.SpineCheckpoint", "init_args": {"dirpath": "'"$1"'", "on_save": false}}'; }
COMMON=(--seed_everything "$SEED" --trainer.logger false --trainer.enable_checkpointing false --trainer.callbacks '[]' "$TH"
        ${TH2[@]+"${TH2[@]}"} --model.init_args.export_dir null)
SHAPE=(--model.init_args.model gpt2-tiny --model.init_args.model_overrides '{"d_model": 64, "n_layer": 4, "n_head": 4, "context_length": 128}'
       --trainer.max_epochs "$EPOCHS")
SOLUTIONS=(--data.init_args.traces null --data.init_args.problems "task:$TASK:levels=1-6,n=$N,seed=21,split=train")
case $TEACHER_CORPUS in own) TPROBLEMS="task:$TASK:levels=1-6,n=4000,seed=1,split=train" ;;
  students) TPROBLEMS="task:$TASK:levels=1-6,n=$N,seed=21,split=train" ;;
  *) echo "kd_probe: TEACHER_CORPUS must be own or students, got $TEACHER_CORPUS"; exit 2 ;; esac
mkdir -p "$OUT"
case $1 in
teacher) [ -e "$PRETRAINED/manifest.json" ] || { echo "kd_probe: no pretrained model at $PRETRAINED (make it with: spine fit --config configs/substrate-cpu.yaml, or set PRETRAINED)"; exit 2; }
         $SP fit --config configs/trace-sft.yaml "${COMMON[@]}" --data.init_args.traces null --model.init_args.init_from "$PRETRAINED" \
           --data.init_args.problems "$TPROBLEMS" --trainer.max_epochs "$TEACHER_EPOCHS" \
           --trainer.default_root_dir "$OUT/teacher" "$(ck "$OUT/teacher/spine")" > "$OUT/teacher.log" 2>&1 ;;
plain)   $SP fit --config configs/trace-sft.yaml "${COMMON[@]}" "${SHAPE[@]}" "${SOLUTIONS[@]}" \
           --trainer.default_root_dir "$OUT/plain-e$EPOCHS" "$(ck "$OUT/plain-e$EPOCHS/spine")" > "$OUT/plain-e$EPOCHS.log" 2>&1 ;;
kd)      K=kd$KD_TAG-e$EPOCHS
         $SP fit --config configs/distill-kd.yaml "${COMMON[@]}" "${SHAPE[@]}" "${SOLUTIONS[@]}" --model.init_args.teacher "$TEACHER" \
           $KD_ARGS --trainer.default_root_dir "$OUT/$K" "$(ck "$OUT/$K/spine")" > "$OUT/$K.log" 2>&1 ;;
traces)  $SP eval --checkpoint "$TEACHER" --problems "task:$TASK:levels=1-6,n=$N,seed=21,split=train" \
           --template synthetic --sampling.max_new_tokens $TOKENS --batch_size "$EB" --device "$DEVICE" --traces "$OUT/teacher-traces.jsonl" \
           > "$OUT/traces.log" 2>&1 ;;
trace)   $SP fit --config configs/trace-sft.yaml "${COMMON[@]}" "${SHAPE[@]}" \
           --data.init_args.problems null --data.init_args.traces "[\"$OUT/teacher-traces.jsonl\"]" --data.init_args.dedupe false \
           --trainer.default_root_dir "$OUT/trace-e$EPOCHS" "$(ck "$OUT/trace-e$EPOCHS/spine")" > "$OUT/trace-e$EPOCHS.log" 2>&1 ;;
eval)    for m in $([ "${EVAL_TEACHER:-1}" = 1 ] && echo teacher) $(cd "$OUT" && ls -d *-e"$EPOCHS" 2>/dev/null); do
           ck=$OUT/$m/spine/final; [ "$m" = teacher ] && ck=$TEACHER
           [ -e "$ck/manifest.json" ] || continue
           echo "== $m"; $SP eval --checkpoint "$ck" --problems "task:chain:levels=5-6,n=400,seed=7,split=eval" \
             --template synthetic --sampling.max_new_tokens $TOKENS --batch_size "$EB" --device "$DEVICE" --traces "$OUT/$m-greedy.jsonl" | grep "level=\|all"
         done ;;
*) echo "usage: bash bench/kd_probe.sh teacher|plain|kd|traces|trace|eval"; exit 2 ;;
esac
