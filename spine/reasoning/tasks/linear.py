"""Linear equations in one unknown, integer solution: "Solve for x: 4x + 7 = 31."

Levels: 1 x + a = b (one digit, x >= 0); 2 ax + b = c; 3 ax ± b = c with negative x and two-digit
b; 4 x on both sides ax + b = cx + d; 5 the same with two-digit coefficients and |x| <= 30.
Worked solution: move the constant, then the x terms, then divide, one line each.
"""
from __future__ import annotations

import random

from spine.reasoning.problems import Problem

from .arith import check_number
from .base import Drawn, Task, VerifyResult


def _term(coef: int, first: bool) -> str:
    """`coef`·x as it is written at the start of a side (first) or after it (" + 3x", " - x")."""
    mag = "x" if abs(coef) == 1 else f"{abs(coef)}x"
    if first:
        return ("-" if coef < 0 else "") + mag
    return (" - " if coef < 0 else " + ") + mag


def _const(c: int, first: bool) -> str:
    if first:
        return str(c)
    return f" - {-c}" if c < 0 else f" + {c}"


def _side(a: int, b: int) -> str:
    """a x + b with the usual signs (a != 0; b == 0 is left out)."""
    return _term(a, True) + (_const(b, False) if b else "")


def _sub(x: int, y: int) -> str:
    """'x - y' written with a parenthesised negative: "7 - (-3)"."""
    return f"{x} - ({y})" if y < 0 else f"{x} - {y}"


class Linear(Task):
    name = "linear"
    levels = (1, 2, 3, 4, 5)
    description = "linear equations in one unknown with an integer solution"

    def _draw(self, rng: random.Random, level: int) -> Drawn:
        if level == 1:
            x, b = rng.randint(0, 9), rng.randint(1, 9)
            a, c = 1, 0
        elif level == 2:
            x, a, b = rng.randint(0, 9), rng.randint(2, 9), rng.randint(1, 9)
            c = 0
        elif level == 3:
            x, a, b = rng.randint(-9, 9), rng.choice([-1, 1]) * rng.randint(2, 9), rng.choice([-1, 1]) * rng.randint(1, 30)
            c = 0
        else:
            hi, xr = (9, 12) if level == 4 else (19, 30)
            x = rng.randint(-xr, xr)
            a = rng.choice([-1, 1]) * rng.randint(1, hi)
            c = rng.choice([-1, 1]) * rng.randint(1, hi)
            while c == a:
                c = rng.choice([-1, 1]) * rng.randint(1, hi)
            b = rng.choice([-1, 1]) * rng.randint(1, 9 if level == 4 else 50)
        if c == 0:
            rhs = a * x + b
            eq = f"{_side(a, b)} = {rhs}"
            lines = [f"{eq}."]
            if a == 1:
                lines.append(f"x = {_sub(rhs, b)} = {x}.")
            else:
                lines.append(f"{_term(a, True)} = {_sub(rhs, b)} = {rhs - b}.")
                lines.append(f"x = {rhs - b} / {a} = {x}." if a > 0 else f"x = {rhs - b} / ({a}) = {x}.")
        else:
            d = a * x + b - c * x
            eq = f"{_side(a, b)} = {_side(c, d)}"
            k, r = a - c, d - b
            lines = [f"{eq}.", f"{_term(a, True)}{_term(-c, False)} = {_sub(d, b)}.", f"{_term(k, True)} = {r}."]
            if k == 1:
                lines.append(f"x = {x}.")
            else:
                lines.append(f"x = {r} / {k} = {x}." if k > 0 else f"x = {r} / ({k}) = {x}.")
        solution = " ".join(lines) + f" The answer is \\boxed{{{x}}}."
        return Drawn(canonical=eq, question=f"Solve for x: {eq}.", solution=solution, answer=str(x),
                     meta={"equation": eq})

    def check(self, problem: Problem, answer: str) -> VerifyResult:
        a = answer.replace(" ", "")
        if a.startswith("x="):  # "\boxed{x = 5}" names the unknown: the value is what counts
            a = a[2:]
        return check_number(problem, a)
