"""Sorting a list of integers ascending: "Sort in ascending order: 42, 7, 19." -> 7, 19, 42.

Not arithmetic: the model has to compare and copy numbers, never compute one. Levels: list length
3/4/5/6/8 with 1/2/2/3/3-digit numbers (repeats allowed). Worked solution: the numbers taken one
at a time, smallest first, then the boxed list. The verifier compares the integer lists exactly.
"""
from __future__ import annotations

import random
import re

from spine.reasoning.problems import Problem

from .base import Drawn, Task, VerifyResult

_LEVELS = {1: (3, 1), 2: (4, 2), 3: (5, 2), 4: (6, 3), 5: (8, 3)}
_ITEM_RE = re.compile(r"-?\d{1,12}")
_SEP_RE = re.compile(r"^[\s,;]*$")


def parse_int_list(text: str) -> list[int] | None:
    """"7, 19, 42" (commas, semicolons or spaces; optional [ ] or ( )) -> [7, 19, 42]; else None."""
    t = text.strip()
    if t[:1] in "[(" and t[-1:] in "])":
        t = t[1:-1]
    t = t.replace("\\,", ",").replace("\\ ", " ")
    items, pos = [], 0
    for m in _ITEM_RE.finditer(t):
        if not _SEP_RE.match(t[pos:m.start()]) or (items and t[pos:m.start()] == ""):
            return None
        items.append(int(m.group()))
        pos = m.end()
    if not items or not _SEP_RE.match(t[pos:]):
        return None
    return items


class Sorting(Task):
    name = "sort"
    levels = tuple(_LEVELS)
    fallback_number = False  # the last number of a list is not the answer
    description = "sort a list of integers ascending"

    def _draw(self, rng: random.Random, level: int) -> Drawn:
        k, digits = _LEVELS[level]
        nums = [rng.randint(0, 10 ** digits - 1) for _ in range(k)]
        shown = ", ".join(map(str, nums))
        out = sorted(nums)
        answer = ", ".join(map(str, out))
        solution = f"Smallest first: {' < '.join(map(str, out)) if len(set(out)) == len(out) else answer}. " \
                   f"The answer is \\boxed{{{answer}}}."
        return Drawn(canonical=shown, question=f"Sort in ascending order: {shown}.", solution=solution,
                     answer=answer, meta={"numbers": nums})

    def check(self, problem: Problem, answer: str) -> VerifyResult:
        got = parse_int_list(answer)
        if got is None:
            return VerifyResult(False, answer, "parse_error")
        want = sorted(problem.metadata["numbers"])
        if got == want:
            return VerifyResult(True, answer, "correct")
        return VerifyResult(False, answer, "wrong_order" if sorted(got) == want else "wrong_items")
