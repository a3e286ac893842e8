"""Multi-step arithmetic word problems: the quickstart's generator (`spine.reasoning.synthetic`)
as a task family. Level k is `synthetic.DIFFICULTY_LEVELS[k]` (operations, operand digits,
operators; more digits means more carries), so `task:arith:level=1` and `synthetic:level=1` give
the same problems. The split is the generator's own hash of the question text.
"""
from __future__ import annotations

from typing import Iterator

from spine.reasoning import synthetic
from spine.reasoning.grade import grade
from spine.reasoning.problems import Problem

from .base import Task, VerifyResult, check_level, check_split


def check_number(problem: Problem, answer: str) -> VerifyResult:
    """A numeric answer against the gold number, through the project's grader (\"14.0\" = \"14\")."""
    v = grade(answer, problem.answer, timeout_s=1.0)
    return VerifyResult(v.correct, answer, "correct" if v.correct else
                        ("wrong_value" if v.rule == "mismatch" or v.rule.startswith("numeric") else v.rule))


class Arithmetic(Task):
    name = "arith"
    levels = tuple(synthetic.DIFFICULTY_LEVELS)
    description = "multi-step arithmetic word problems (steps, digits, + - *)"

    def split_of(self, canonical: str) -> str:
        return synthetic.split_of(canonical)

    def stream(self, level: int, seed: int = 0, split: str = "train") -> Iterator[Problem]:
        level = check_level(self.name, level, self.levels)
        gen = synthetic.ArithmeticProblems(seed=seed, level=level, split=check_split(split))
        for sp in gen:
            p = synthetic.to_problem(sp)
            yield Problem(id=p.id, prompt=p.prompt, answer=p.answer,
                          metadata={**p.metadata, "task": self.name, "canonical": sp.question,
                                    "source": f"task:{self.name}"})

    def check(self, problem: Problem, answer: str) -> VerifyResult:
        return check_number(problem, answer)
