#!/bin/bash
# Does logit KD from a strong teacher beat plain SFT at equal student compute? (issue 13's "beats the same
# student trained on the task's own worked solutions", in the regime where the teacher knows more than the
# student can learn alone in its budget.) CPU, one pinned thread per command; stages:
#   teacher   the cpu ladder's pretrained 0.85M model (PRETRAINED=...) fine-tuned 6 epochs on 4,000 worked solutions
#   plain     a quarter-size student (d=64 x 4) from scratch: prompt-masked SFT on N problems' worked solutions
#   kd        the same student, data, steps and lr, loss 0.5 CE + 0.5 tau^2 KL(teacher || student), tau = 2
# then greedy on the ladder's held-out level 5-6 chain problems.
#   bash bench/kd_probe.sh teacher|plain|kd|eval   (OUT=runs/kd-probe, PRETRAINED, SEED=0, N=16000, EPOCHS=2)
# Students land in OUT/plain-eEPOCHS and OUT/kd-eEPOCHS; eval reports the teacher and that EPOCHS's pair.
set -eu
OUT=${OUT:-runs/kd-probe}; SEED=${SEED:-0}; N=${N:-16000}; EPOCHS=${EPOCHS:-2}; SP=${SPINE:-spine}
PRETRAINED=${PRETRAINED:-runs/ladder/cpu-2400/seed0/pretrain/spine/final}
export SPINE_NUM_THREADS=1
TH='--trainer.callbacks+={"class_path": "callbacks.TorchThreads", "init_args": {"num_threads": 1}}'
ck() { echo '--trainer.callbacks+={"class_path": "callbacks.SpineCheckpoint", "init_args": {"dirpath": "'"$1"'", "on_save": false}}'; }
COMMON=(--seed_everything "$SEED" --trainer.logger false --trainer.enable_checkpointing false --trainer.callbacks '[]' "$TH"
        --data.init_args.traces null --model.init_args.export_dir null)
STUDENT=(--model.init_args.model gpt2-tiny --model.init_args.model_overrides '{"d_model": 64, "n_layer": 4, "n_head": 4, "context_length": 128}'
         --data.init_args.problems "task:chain:levels=1-6,n=$N,seed=21,split=train" --trainer.max_epochs "$EPOCHS")
mkdir -p "$OUT"
case $1 in
teacher) $SP fit --config configs/trace-sft.yaml "${COMMON[@]}" --model.init_args.init_from "$PRETRAINED" \
           --data.init_args.problems "task:chain:levels=1-6,n=4000,seed=1,split=train" --trainer.max_epochs 6 \
           --trainer.default_root_dir "$OUT/teacher" "$(ck "$OUT/teacher/spine")" > "$OUT/teacher.log" 2>&1 ;;
plain)   $SP fit --config configs/trace-sft.yaml "${COMMON[@]}" "${STUDENT[@]}" \
           --trainer.default_root_dir "$OUT/plain-e$EPOCHS" "$(ck "$OUT/plain-e$EPOCHS/spine")" > "$OUT/plain-e$EPOCHS.log" 2>&1 ;;
kd)      $SP fit --config configs/distill-kd.yaml "${COMMON[@]}" "${STUDENT[@]}" --model.init_args.teacher "$OUT/teacher/spine/final" \
           --trainer.default_root_dir "$OUT/kd-e$EPOCHS" "$(ck "$OUT/kd-e$EPOCHS/spine")" > "$OUT/kd-e$EPOCHS.log" 2>&1 ;;
eval)    for m in teacher plain-e$EPOCHS kd-e$EPOCHS; do
           echo "== $m"; $SP eval --checkpoint "$OUT/$m/spine/final" --problems "task:chain:levels=5-6,n=400,seed=7,split=eval" \
             --template synthetic --sampling.max_new_tokens 80 --batch_size 64 --device cpu --traces "$OUT/$m-greedy.jsonl" | grep "level=\|all"
         done ;;
*) echo "usage: bash bench/kd_probe.sh teacher|plain|kd|eval"; exit 2 ;;
esac
