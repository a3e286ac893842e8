"""What kind of slip makes a chain answer wrong? Reads a `spine eval` trace of `task:chain` problems and
classifies each wrong completion by its first faulty step: an arithmetic slip (a+b=c with c wrong for the a, b
it wrote), an operand misread (the op or number is not the question's next one), a carried value that is not
the previous result, or a wrong step count; and counts the faulty steps per wrong completion.
    python bench/chain_errors.py TRACE.jsonl [TRACE.jsonl ...]
"""
from __future__ import annotations

import re
import sys
from collections import Counter

sys.path.insert(0, ".")
from spine.traces import final_records, read_traces  # noqa: E402

STEP = re.compile(r"(\d+)([+-])(\d+)=(\d+)\.")
EXPR = re.compile(r"Compute (\d+(?:[+-]\d+)+)\.")


def classify(question: str, completion: str) -> tuple[str, int]:
    """(kind of the first faulty step, number of faulty steps) of one chain completion."""
    m = EXPR.search(question)
    if not m:
        raise ValueError(f"not a chain question: {question[-80:]!r}")
    start, rest = re.match(r"(\d+)(.*)", m.group(1)).groups()
    ops, value = re.findall(r"([+-])(\d+)", rest), int(start)
    steps = STEP.findall(completion.split("The answer")[0])
    first, faults = None, 0
    for i, (a, op, b, c) in enumerate(steps):
        a, b, c = int(a), int(b), int(c)
        kind = None
        if i >= len(ops):
            kind = "extra step"
        elif a != value:
            kind = "carried value"
        elif (op, b) != (ops[i][0], int(ops[i][1])):
            kind = "operand misread"
        elif c != (a + b if op == "+" else a - b):
            kind = "arithmetic slip"
        if kind:
            faults += 1
            first = first or kind
        value = c
    if len(steps) < len(ops):
        faults += 1
        first = first or "missing step"
    return first or "steps right, answer wrong", faults


def main(paths: list[str]) -> None:
    for path in paths:
        _, records = read_traces(path)
        wrong = [r for r in final_records(records).values() if not r.correct]
        kinds, counts = Counter(), Counter()
        for r in wrong:
            kind, n = classify(r.prompt, r.completion)
            kinds[kind] += 1
            counts["one faulty step" if n == 1 else "two or more"] += 1
        n = max(len(wrong), 1)
        print(f"{path}: {len(wrong)} wrong completions")
        for k, v in kinds.most_common():
            print(f"  first fault: {k:28s} {v:4d}  {100 * v / n:5.1f}%")
        for k, v in counts.most_common():
            print(f"  {k:41s} {v:4d}  {100 * v / n:5.1f}%")


if __name__ == "__main__":
    main(sys.argv[1:] or sys.exit(__doc__))
