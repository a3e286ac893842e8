#!/bin/bash
# Every pipeline and scorer on one checkpoint, then `spine report` (table, frontier, accuracy vs k and
# vs round) -- the table of docs/pipelines.md (issue 11). Sampled pipelines share n, T and seed, so sc
# and every best-of-N scorer see the same samples.
#   bash bench/pipelines_table.sh CHECKPOINT OUT_DIR --problems SPEC --template synthetic \
#        --sampling.max_new_tokens 96 --device cuda [more spine eval flags]
# N (default 8) and T (default 0.7) set the sampled pipelines.
set -u
CK=$1; OUTD=$2; shift 2
mkdir -p "$OUTD"
S=(--sampling.temperature "${T:-0.7}" --sampling.n "${N:-8}" --sampling.seed 0)
# a `timeout` around this script stops the running eval too (bash defers a signal until a foreground child ends)
trap 'kill $(jobs -p) 2>/dev/null; exit 143' TERM INT
run() {  # name, then spine eval flags; one line of wall time per run
  local name=$1; shift; local t0=$SECONDS
  python3 -m modules.cli eval --checkpoint "$CK" "$@" --traces "$OUTD/$name.jsonl" > "$OUTD/$name.log" 2>&1 &
  wait $!
  echo "$name rc=$? wall $((SECONDS - t0)) s"
}
run greedy "$@"
run sc "$@" --pipeline sc "${S[@]}"
run sc-early "$@" --pipeline sc --early_stop true "${S[@]}"
for s in mean_logprob sum_logprob heuristic self_verify oracle; do
  run "bon-$s" "$@" --pipeline bestofn --scorer "$s" "${S[@]}"
done
run refine3 "$@" --pipeline refine --rounds 3
run refine3-sv "$@" --pipeline refine --rounds 3 --scorer self_verify
python3 -m modules.cli report "$OUTD"/greedy.jsonl "$OUTD"/sc*.jsonl "$OUTD"/bon-*.jsonl "$OUTD"/refine3*.jsonl \
  --frontier "$OUTD/frontier.png" --png "$OUTD/accuracy_vs_k.png" --rounds_png "$OUTD/accuracy_vs_round.png" \
  > "$OUTD/report.md" 2>&1
echo "report rc=$?"
