"""Countdown: reach a target from given numbers with + - * /, each number used at most once.

    question: "Use 7, 3, 4 to make 40 (+ - * /, each number at most once)."
    solution: "7 + 3 = 10. 10 * 4 = 40. The answer is \\boxed{(7 + 3) * 4}."

The answer is an *expression*, checked by the project's safe parser (`spine.reasoning.mathparse`:
tokenised and parsed into a tuple AST, never evaluated as code). Only numbers, + - * / (also
\\times \\cdot \\div) and brackets are allowed; every number must be one of the given ones, used at
most as often as it is given; the exact rational value must equal the target. Bad answers are
rejected with a reason before any arithmetic: unknown or reused numbers, powers, negation,
variables; division by zero is caught. "expr = target" is read as its left side.

Levels (count of numbers, their range, operators; the generated solution uses all of them):
1: two numbers 1-9, + -; 2: three 1-9, + -; 3: three 1-12, + - *; 4: four 1-12, + - *;
5: four 1-25, + - * / (exact division). Intermediate values are positive integers.
"""
from __future__ import annotations

import random
from collections import Counter
from fractions import Fraction

from spine.reasoning import mathparse
from spine.reasoning.problems import Problem

from .base import MAX_ANSWER_CHARS, Drawn, Task, VerifyResult

_LEVELS = {1: (2, 9, "+-"), 2: (3, 9, "+-"), 3: (3, 12, "+-*"), 4: (4, 12, "+-*"), 5: (4, 25, "+-*/")}
_MAX_TARGET = 1000
_PARSE_SECONDS = 0.2


class _Bad(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


def _numbers(node: tuple, out: list[Fraction]) -> None:
    """Collect the literals of an allowed AST, rejecting anything but numbers and + - * /."""
    kind = node[0]
    if kind == "num":
        out.append(node[1])
    elif kind == "sum":
        for _, t in node[1]:
            _numbers(t, out)
    elif kind == "prod":
        for t in node[1] + node[2]:
            _numbers(t, out)
    else:
        raise _Bad("bad_operation")


def _value(node: tuple) -> Fraction:
    kind = node[0]
    if kind == "num":
        return node[1]
    if kind == "sum":
        return sum((s * _value(t) for s, t in node[1]), Fraction(0))
    num = Fraction(1)
    for t in node[1]:
        num *= _value(t)
    for t in node[2]:
        d = _value(t)
        if d == 0:
            raise _Bad("division_by_zero")
        num /= d
    return num


def check_expression(expr: str, numbers: list[int], target: int) -> str:
    """"correct" or why `expr` does not reach `target` from `numbers` (never raises)."""
    left = expr.split("=", 1)[0].strip()
    if not left:
        return "no_answer"
    if len(left) > MAX_ANSWER_CHARS:
        return "too_long"
    try:
        tree = mathparse.parse(left, mathparse.Deadline(_PARSE_SECONDS))
        used: list[Fraction] = []
        _numbers(tree, used)  # bounded by the text length; no arithmetic yet
        given = Counter(Fraction(n) for n in numbers)
        for value, count in Counter(used).items():
            if value not in given:
                return "unknown_number"
            if count > given[value]:
                return "reused_number"
        # at most len(numbers) literals, each given: the value is small and quick to compute
        return "correct" if _value(tree) == target else "wrong_value"
    except _Bad as bad:
        return bad.reason
    except (mathparse.MathParseError, mathparse.GradeTimeout, ValueError):  # ValueError: a 5,000-digit literal
        return "parse_error"
    except (mathparse.TooLarge, RecursionError):
        return "too_large"


def _fmt(node: tuple[str, str | None, int]) -> str:
    return node[0] if node[1] is None else f"({node[0]})"


class Countdown(Task):
    name = "countdown"
    levels = tuple(_LEVELS)
    fallback_number = False  # the answer is an expression, boxed
    description = "reach a target from given numbers with + - * /, each at most once"

    def _draw(self, rng: random.Random, level: int) -> Drawn:
        k, hi, ops = _LEVELS[level]
        while True:
            nums = [rng.randint(1, hi) for _ in range(k)]
            # pool of (expression text, top-level operator or None, value); combine two at a time
            pool = [(str(n), None, n) for n in nums]
            lines = []
            ok = True
            while len(pool) > 1:
                a = pool.pop(rng.randrange(len(pool)))
                b = pool.pop(rng.randrange(len(pool)))
                choices = [o for o in ops if (o != "-" or a[2] > b[2]) and (o != "/" or (b[2] > 1 and a[2] % b[2] == 0))
                           and (o != "*" or (a[2] > 1 and b[2] > 1))]
                if not choices:
                    ok = False
                    break
                op = rng.choice(choices)
                v = {"+": a[2] + b[2], "-": a[2] - b[2], "*": a[2] * b[2], "/": a[2] // max(b[2], 1)}[op]
                lines.append(f"{a[2]} {op} {b[2]} = {v}.")
                pool.append((f"{_fmt(a)} {op} {_fmt(b)}", op, v))
            if ok and 0 < pool[0][2] <= _MAX_TARGET:
                break
        expr, target = pool[0][0], pool[0][2]
        shown = ", ".join(map(str, nums))
        solution = " ".join(lines) + f" The answer is \\boxed{{{expr}}}."
        canonical = f"{sorted(nums)}->{target}"
        return Drawn(canonical=canonical, question=f"Use {shown} to make {target} (+ - * /, each number at most once).",
                     solution=solution, answer=expr, meta={"numbers": nums, "target": target})

    def check(self, problem: Problem, answer: str) -> VerifyResult:
        reason = check_expression(answer, list(problem.metadata["numbers"]), int(problem.metadata["target"]))
        return VerifyResult(reason == "correct", answer, reason)
