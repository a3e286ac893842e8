"""Verifiable task families with a difficulty dial (docs/tasks.md).

    task = get_task("countdown")
    problems = task.generate(level=3, n=200, seed=1, split="eval")   # list[Problem]
    verify(problems[0], completion_text)                              # VerifyResult(correct, extracted, reason)

Every family: unlimited problems, deterministic by seed, train/eval disjoint by construction (a hash
of the canonical problem decides its split), worked solutions ending in `\\boxed{answer}`
(`problem.metadata["solution"]`), and one verifier used for evaluation and as the RL reward.
Specs (`task:countdown:level=3,n=200,seed=1,split=eval`) are parsed in `spine.reasoning.tasks.spec`.
"""
from __future__ import annotations

from spine.reasoning.problems import Problem

from .arith import Arithmetic
from .chain import Chain
from .chainpaths import ChainPaths
from .countdown import Countdown
from .linear import Linear
from .radix import Radix
from .sorting import Sorting
from .base import SPLITS, Task, VerifyResult, split_of_canonical

TASKS: dict[str, Task] = {t.name: t for t in (Arithmetic(), Linear(), Countdown(), Sorting(), Radix(), Chain(),
                                           ChainPaths())}

__all__ = ["TASKS", "SPLITS", "Task", "VerifyResult", "get_task", "verify", "split_of_canonical"]


def get_task(name: str) -> Task:
    """The task family called `name` (unknown name -> ValueError listing the known ones)."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None


def verify(problem: Problem, completion: str) -> VerifyResult:
    """Grade one completion of a task problem: the evaluation verdict and the RL reward.

    Dispatches on `problem.metadata["task"]`; never raises for bad completion text (hostile,
    huge or malformed answers give `correct=False` with a reason). A completion that runs on into
    a new "\\nQuestion:" is cut there first, so rollouts without stop strings grade the same.
    """
    family = problem.metadata.get("task") if isinstance(problem.metadata, dict) else None
    if family is None:
        raise ValueError(f"problem {problem.id!r} is not a task problem (metadata has no 'task'); "
                         "grade it with spine.reasoning.grade instead")
    return get_task(family).verify(problem, completion)
