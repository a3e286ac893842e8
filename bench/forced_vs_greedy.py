"""How close teacher-forced exact match is to greedy accuracy, problem by problem.

    python bench/forced_vs_greedy.py CHECKPOINT GREEDY_TRACES.jsonl PROBLEMS_SPEC [--level 6] [--device cpu]

Reads a greedy evaluation's traces (`spine eval ... --traces`), scores the same problems with
`spine.reasoning.forced.forced_matches` on the same checkpoint, and prints both rates and the
disagreements: greedy right without writing the worked solution (another path to the answer), and
forced match with greedy wrong (a near tie that decoding resolved another way; should be ~0).
"""
from __future__ import annotations

import argparse

import torch

from spine.engine import load_model
from spine.reasoning.forced import forced_matches
from spine.reasoning.problems import load_problems
from spine.traces import read_traces


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint"), ap.add_argument("traces"), ap.add_argument("problems")
    ap.add_argument("--level", type=int, default=None, help="only problems of this level")
    ap.add_argument("--device", default="cpu"), ap.add_argument("--template", default="synthetic")
    a = ap.parse_args()
    model, tok = load_model(a.checkpoint, device=a.device)
    _, records = read_traces(a.traces)
    right = {r.problem_id: r.correct for r in records}
    probs = [p for p in load_problems(a.problems) if p.id in right
             and (a.level is None or p.metadata.get("level") == a.level)]
    with torch.inference_mode():
        forced = forced_matches(model, tok, probs, template=a.template, batch_size=500)
    g = [right[p.id] for p in probs]
    n = len(probs)
    other_path = sum(1 for f, r in zip(forced, g) if r and not f)
    tie = sum(1 for f, r in zip(forced, g) if f and not r)
    print(f"{n} problems{'' if a.level is None else f' (level {a.level})'}: greedy {100 * sum(g) / n:.1f}%, "
          f"forced {100 * sum(forced) / n:.1f}%; greedy right by another path {other_path}, forced match but greedy "
          f"wrong {tie}")


if __name__ == "__main__":
    main()
