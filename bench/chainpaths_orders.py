"""Which order did each sample of a `task:chainpaths` model take, did it follow it, was it right?

Reads `spine eval` trace files of chain problems (bench/chainpaths_probe.sh writes them) and prints, per
file and order tag (Left / Adds / Back), the share of samples, their accuracy, and the share that wrote
exactly the steps of the order they named (spine.reasoning.tasks.chainpaths.solve); and how many distinct
orders the samples of one problem took.

    python bench/chainpaths_orders.py runs/chainpaths-probe/seed0/sft-e2-*.jsonl --level 6
"""
from __future__ import annotations

import argparse
import collections

from spine.reasoning.tasks.chainpaths import ORDERS, solve, terms_of
from spine.traces import read_traces


def order_stats(path: str, level: int | None) -> tuple[dict[str, tuple[int, float, float]], collections.Counter]:
    """Per order tag: (samples, accuracy, share that wrote that order's exact steps); and a count of
    problems by how many distinct tags their samples used."""
    n, right, faithful = collections.Counter(), collections.Counter(), collections.Counter()
    per_problem: dict[str, set[str]] = collections.defaultdict(set)
    _, records = read_traces(path)
    for r in records:
        meta = r.metadata
        if level is not None and meta.get("level") != level:
            continue
        text = r.completion.strip()
        tag = text.split(":", 1)[0] if ":" in text[:6] else "?"
        n[tag] += 1
        right[tag] += bool(r.correct)
        if tag in ORDERS:
            lines, _ = solve(terms_of(meta["canonical"]), tag)
            faithful[tag] += text.startswith(f"{tag}: " + " ".join(lines))
        per_problem[r.problem_id].add(tag)
    stats = {t: (n[t], right[t] / n[t], faithful[t] / n[t]) for t in n}
    return stats, collections.Counter(len(v) for v in per_problem.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("traces", nargs="+")
    ap.add_argument("--level", type=int, default=None, help="only problems of this level")
    a = ap.parse_args()
    for path in a.traces:
        stats, distinct = order_stats(path, a.level)
        total = sum(s[0] for s in stats.values())
        print(f"{path}: {total} samples; distinct orders per problem {dict(sorted(distinct.items()))}")
        for tag, (k, acc, faith) in sorted(stats.items()):
            print(f"  {tag:5s} {k / total:6.1%} of samples   correct {acc:6.1%}   followed the order {faith:6.1%}")


if __name__ == "__main__":
    main()
