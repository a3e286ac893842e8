"""The `chain` problems with worked solutions that take one of three orders: self-consistency's task.

    question: "Compute 3+4+2-5+1."
    solutions (one per problem, the order drawn uniformly):
      "Left: 3+4=7. 7+2=9. 9-5=4. 4+1=5. The answer is \\boxed{5}."     left to right (chain's)
      "Adds: 3+4=7. 7+2=9. 9+1=10. 10-5=5. The answer is \\boxed{5}."    the adds first, then the rest
      "Back: 1+2=3. 3+4=7. 7+3=10. 10-5=5. The answer is \\boxed{5}."    both groups right to left

Why: on `chain` a greedy slip is the model's top choice at one step, so samples repeat it and voting
cannot beat greedy (docs/tasks.md). Here the right answer is reached by paths that use different
facts (other running values), so a fact a model gets wrong on one path is not visited on another; and
the training data draws the order uniformly, so that sampling can explore the first word even at a low
temperature while each step's fact stays about as sharp as greedy's (the intent; what models learn:
docs/tasks.md).
"Adds" sums the start and every added term left to right, then subtracts the others; "Back" does both
groups right to left. Both stay in 0-81 (the sum of the adds is at least the answer), every path has
`level` steps, and the tags are short so that a level-6 problem and its longest solution (84 bytes,
85 tokens with the space after "Answer:"; generate with max_new_tokens >= 85) fit a 128-token context.

Problems are `chain`'s (same levels, same question text) and so is the train/eval split: a problem's
split is decided by `chain`'s hash of the expression, so no held-out `chain` problem is ever a
`chainpaths` training problem.
"""
from __future__ import annotations

import random

from .base import Drawn, split_of_canonical
from .chain import Chain

ORDERS = ("Left", "Adds", "Back")


def _steps(start: int, terms: list[tuple[str, int]]) -> tuple[list[str], int]:
    value, lines = start, []
    for op, b in terms:
        new = value + b if op == "+" else value - b
        lines.append(f"{value}{op}{b}={new}.")
        value = new
    return lines, value


def terms_of(expr: str) -> list[tuple[str, int]]:
    """A chain expression as signed terms: "3+4-2" -> [("+", 3), ("+", 4), ("-", 2)] (one-digit operands)."""
    return [("+", int(expr[0]))] + [(expr[i], int(expr[i + 1])) for i in range(1, len(expr), 2)]


def solve(expr_terms: list[tuple[str, int]], order: str) -> tuple[list[str], int]:
    """The step lines and answer of `order` for the chain `expr_terms` = [("+", start), (op, b), ...]."""
    if order == "Left":
        return _steps(expr_terms[0][1], expr_terms[1:])
    adds = [b for op, b in expr_terms if op == "+"]
    subs = [b for op, b in expr_terms if op == "-"]
    if order == "Back":
        adds, subs = adds[::-1], subs[::-1]
    elif order != "Adds":
        raise ValueError(f"unknown order {order!r}; known: {', '.join(ORDERS)}")
    return _steps(adds[0], [("+", b) for b in adds[1:]] + [("-", b) for b in subs])


class ChainPaths(Chain):
    name = "chainpaths"
    description = "chain problems, worked solutions in one of three term orders (for voting)"

    def split_of(self, canonical: str) -> str:
        return split_of_canonical(Chain.name, canonical)

    def _draw(self, rng: random.Random, level: int) -> Drawn:
        d = super()._draw(rng, level)
        order = rng.choice(ORDERS)
        lines, value = solve(terms_of(d.canonical), order)
        assert str(value) == d.answer  # every order reaches chain's answer
        return Drawn(canonical=d.canonical, question=d.question, answer=d.answer,
                     solution=f"{order}: " + " ".join(lines) + f" The answer is \\boxed{{{value}}}.",
                     meta={**d.meta, "order": order})
