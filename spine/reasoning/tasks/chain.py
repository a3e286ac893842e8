"""Chains of one-digit additions and subtractions, solved one step per line: the substrate's task.

    question: "Compute 3+4+2-5+1."
    solution: "3+4=7. 7+2=9. 9-5=4. 4+1=5. The answer is \\boxed{5}."

Level k is k operations (levels 1-8). Every operand and the start are 1-9 and the running value
never goes below 0 (a "-" takes at most the current value; at 0 the step is a "+"), so it stays
in 0-81 and every step is a fact of a small table that a tiny model learns in minutes. What makes a
level hard is only the length of the chain: a model that slips on a step with a small, independent
probability p gets (1-p)^k of level k right, so the dial moves accuracy smoothly and the slips of
independent samples disagree (what self-consistency and RL need). Compact on purpose (no spaces,
no words): with a byte tokenizer each step is ~7 tokens and operand i sits at a fixed offset of
the question. The canonical problem is the expression; the answer is checked as a number.
"""
from __future__ import annotations

import random

from spine.reasoning.problems import Problem

from .arith import check_number
from .base import Drawn, Task, VerifyResult

MAX_STEPS = 8


class Chain(Task):
    name = "chain"
    levels = tuple(range(1, MAX_STEPS + 1))
    description = "one-digit + - chains, one step per line (level = number of operations)"

    def _draw(self, rng: random.Random, level: int) -> Drawn:
        value = rng.randint(1, 9)
        expr, lines = str(value), []
        for _ in range(level):
            op = "+" if value == 0 else rng.choice("+-")
            b = rng.randint(1, 9) if op == "+" else rng.randint(1, min(9, value))
            new = value + b if op == "+" else value - b
            expr += f"{op}{b}"
            lines.append(f"{value}{op}{b}={new}.")
            value = new
        return Drawn(canonical=expr, question=f"Compute {expr}.",
                     solution=" ".join(lines) + f" The answer is \\boxed{{{value}}}.", answer=str(value),
                     meta={"steps": level})

    def check(self, problem: Problem, answer: str) -> VerifyResult:
        return check_number(problem, answer)
