"""Base conversion: "Write 37 in base 2." -> 100101.

Levels: 1 base 2, n < 16; 2 base 2, n < 64; 3 bases 3-9, n < 100; 4 bases 2-9, n < 1000;
5 bases 11-16 (digits a-f), n < 4096. Worked solution: repeated division, remainders read upward.
The verifier reads the digits in the asked base (a trailing "_2" / "_{2}" subscript is allowed).
"""
from __future__ import annotations

import random
import re

from spine.reasoning.problems import Problem

from .base import Drawn, Task, VerifyResult

_DIGITS = "0123456789abcdef"
_SUBSCRIPT_RE = re.compile(r"_\{?(\d{1,2})\}?$")


def to_base(n: int, base: int) -> str:
    if n == 0:
        return "0"
    out = []
    while n:
        n, r = divmod(n, base)
        out.append(_DIGITS[r])
    return "".join(reversed(out))


class Radix(Task):
    name = "base"
    levels = (1, 2, 3, 4, 5)
    fallback_number = False  # "100101" must be read as digits of the asked base, boxed
    description = "write a number in another base"

    def _draw(self, rng: random.Random, level: int) -> Drawn:
        base, hi = {1: (2, 15), 2: (2, 63), 3: (rng.randint(3, 9), 99), 4: (rng.randint(2, 9), 999),
                    5: (rng.randint(11, 16), 4095)}[level]
        n = rng.randint(1, hi)
        lines, m = [], n
        while m:
            q, r = divmod(m, base)
            lines.append(f"{m} = {base} * {q} + {r}.")
            m = q
        digits = to_base(n, base)
        solution = " ".join(lines) + f" Remainders from the last: {digits}. The answer is \\boxed{{{digits}}}."
        return Drawn(canonical=f"{n}|{base}", question=f"Write {n} in base {base}.", solution=solution,
                     answer=digits, meta={"number": n, "base": base})

    def check(self, problem: Problem, answer: str) -> VerifyResult:
        base, n = int(problem.metadata["base"]), int(problem.metadata["number"])
        a = answer.replace(" ", "").replace("\\text{", "").replace("}", "").lower() if "\\text" in answer \
            else answer.replace(" ", "").lower()
        m = _SUBSCRIPT_RE.search(a)
        if m:
            if int(m.group(1)) != base:
                return VerifyResult(False, answer, "wrong_base")
            a = a[:m.start()]
        if not a or len(a) > 64 or any(ch not in _DIGITS[:base] for ch in a):
            return VerifyResult(False, answer, "parse_error")
        ok = int(a, base) == n
        return VerifyResult(ok, answer, "correct" if ok else "wrong_value")
