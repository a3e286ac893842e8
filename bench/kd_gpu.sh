#!/bin/bash
# Issue 13's GPU rows: bench/kd_probe.sh's stages on one GPU (DEVICE=cuda, deterministic kernels), every
# student seed x epoch count side by side: plain SFT and logit KD at once, the teacher's greedy traces on the
# students' N problems beside them, then trace-SFT, then greedy on the held-out level 5-6 problems.
# Run from the repo root on the device machine with `.whl` and the teacher carried; writes OUT/<basename of R>.tgz.
#   bash bench/kd_gpu.sh TEACHER "0 1 2" "2 3 4" [limit_s]
# STAGES (default "plain kd trace"; "" for none) picks the students; VARIANTS="t1=--model.init_args.temperature 1;a0=..." adds
# one KD student per entry (kd-t1-eE, ...); N (default 16000) is the students' problem count; R the work folder.
# TEACHER is a spine checkpoint folder (e.g. runs/kd-strong/teacher/spine/final, made on CPU by
# `OUT=runs/kd-strong TEACHER_CORPUS=students TEACHER_EPOCHS=4 bash bench/kd_probe.sh teacher`).
set -u -o pipefail
[ $# -ge 3 ] || { echo 'usage: bash bench/kd_gpu.sh TEACHER "SEEDS" "EPOCHS" [limit_s]'; exit 2; }
OUT=${OUT:-/tmp/out}; R=${R:-/tmp/kd-gpu}; STAGES=${STAGES-plain kd trace}; VARIANTS=${VARIANTS:-}; TEACHER=$1; SEEDS=$2; EPOCHS_LIST=$3; LIMIT=${4:-400}
[ -e "$TEACHER/manifest.json" ] || { echo "kd_gpu: no spine checkpoint at $TEACHER"; exit 2; }
rm -rf "$R"; mkdir -p "$R" "$OUT"
source bench/device_runs.sh   # wheels, PYTHONPATH, $SP, and the TERM trap that stops every run
export DEVICE=cuda SPINE="$SP" TEACHER
left() { local t=$((LIMIT - SECONDS - $1)); echo $((t > 1 ? t : 1)); }
stage() {  # seed epochs stage: one kd_probe stage in the seed's folder, cut so the archive still gets written
  local d=$R/s$1; mkdir -p "$d"
  OUT=$d SEED=$1 EPOCHS=$2 timeout "$(left 60)" bash bench/kd_probe.sh "$3" > "$d/$3${KD_TAG:-}-e$2.out" 2>&1
  local rc=$?; echo "rc=$rc s$1 $3${KD_TAG:-} e$2 ${SECONDS}s" >> "$R/rc.txt"; return $rc
}
has() { [[ " $STAGES " == *" $1 "* ]]; }
has trace && ( stage 0 0 traces && for s in $SEEDS; do mkdir -p "$R/s$s"; [ "$s" = 0 ] || cp "$R/s0/teacher-traces.jsonl" "$R/s$s/"; done &&
  for s in $SEEDS; do for e in $EPOCHS_LIST; do stage "$s" "$e" trace & done; done; wait ) &
for s in $SEEDS; do for e in $EPOCHS_LIST; do
  has plain && stage "$s" "$e" plain &
  has kd && stage "$s" "$e" kd &
  IFS=';' read -ra vs <<< "$VARIANTS"
  for v in ${vs[@]+"${vs[@]}"}; do v=${v#"${v%%[! ]*}"}; KD_TAG=-${v%%=*} KD_ARGS=${v#*=} stage "$s" "$e" kd & done
done; done
wait
# the teacher once per seed (the first epoch count's eval), so no two evals write its trace file at once
first=${EPOCHS_LIST%% *}
for s in $SEEDS; do for e in $EPOCHS_LIST; do
  EVAL_TEACHER=$([ "$e" = "$first" ] && echo 1 || echo 0) stage "$s" "$e" eval &
done; done; wait
(cd "$(dirname "$R")" && tar czf "$OUT/$(basename "$R").tgz" --exclude='*.safetensors' --exclude='*.ckpt' --exclude='teacher-traces.jsonl' "$(basename "$R")")
cat "$R/rc.txt"; for f in "$R"/s*/eval-e*.out; do echo "== $f"; grep -E "^==|all" "$f"; done
# summary: issue 13's student grid on one GPU (plain SFT, logit KD, trace-SFT over seeds x epochs)
# cpu: not for CPUs (bench/kd_probe.sh runs each stage there)
# gpu: see docs/distillation.md (H200)
# memory: not measured
