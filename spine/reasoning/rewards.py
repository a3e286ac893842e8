"""Rewards for RL with verifiable rewards: correctness from the verifier, an optional format reward,
user reward functions, and the random-reward control.

A reward function is `fn(problem, text) -> number` (text: the completion as decoded, cut at any stop
string). Whatever it returns is checked: anything but a finite real number stops the run with one
line naming the function, the problem and the value.
"""
from __future__ import annotations

import importlib
import math
import numbers
from typing import Callable, Sequence

import torch

from .extract import extract
from .grade import grade
from .problems import Problem

__all__ = ["RewardFn", "verify", "correctness_reward", "boxed_correctness_reward", "format_reward", "make_reward", "score",
           "shuffle_rewards", "resolve_function"]

RewardFn = Callable[[Problem, str], float]
_BOXES = ("boxed", "fbox")


def verify(problem: Problem, text: str, *, timeout_s: float = 2.0) -> bool:
    """Is `text`'s final answer correct for `problem`? The same verdict as the evaluation harness
    (`spine.reasoning.pipelines.graded`): a task-family problem by its family's verifier
    (`spine.reasoning.tasks.verify`), any other by extract + grade (time-limited)."""
    if isinstance(problem.metadata, dict) and "task" in problem.metadata:
        from .tasks import verify as task_verify  # lazy: the task families import this package

        return bool(task_verify(problem, text).correct)
    return grade(extract(text).answer, problem.answer, timeout_s=timeout_s).correct


def correctness_reward(problem: Problem, text: str) -> float:
    """1.0 when the verifier accepts the answer, else 0.0."""
    return 1.0 if verify(problem, text) else 0.0


def boxed_correctness_reward(problem: Problem, text: str) -> float:
    """1.0 when the answer is given in \\boxed{} and is correct (the reasoning book's ch. 6 reward:
    no last-number fallback), else 0.0."""
    return 1.0 if extract(text).method in _BOXES and verify(problem, text) else 0.0


def format_reward(problem: Problem, text: str) -> float:
    """1.0 when the completion states its answer as \\boxed{...} (the templates ask for it), else 0.0."""
    return 1.0 if extract(text).method in _BOXES else 0.0


def resolve_function(path: str) -> Callable:
    """The callable named by "package.module.name" (or "package.module:name")."""
    module, sep, name = path.partition(":")
    if not sep:
        module, _, name = path.rpartition(".")
    if not module or not name:
        raise ValueError(f"reward function {path!r}: expected 'package.module.function'")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"reward function {path!r} cannot be imported: {e}") from None
    if not callable(fn):
        raise ValueError(f"reward function {path!r} is a {type(fn).__name__}, not a callable")
    return fn


_BUILTIN: dict[str, RewardFn] = {"correctness": correctness_reward, "boxed_correctness": boxed_correctness_reward,
                                 "format": format_reward}


def make_reward(reward: str = "correctness", *, format_weight: float = 0.0,
                format_only_when_correct: bool = False) -> RewardFn:
    """The step's reward: `reward` ("correctness", "boxed_correctness", "format" or an import path) plus
    `format_weight * format_reward`, the format part paid only to correct answers when
    `format_only_when_correct` (so the model cannot farm it with wrong boxed answers)."""
    base = _BUILTIN.get(reward) or resolve_function(reward)
    name = reward
    if not isinstance(format_weight, numbers.Real) or not math.isfinite(format_weight):
        raise ValueError(f"format_weight must be a finite number, got {format_weight!r}")
    if not format_weight:
        fn = base
    else:
        def fn(problem: Problem, text: str) -> float:
            r = _checked(base(problem, text), name, problem)
            fmt = format_reward(problem, text)
            if format_only_when_correct and not verify(problem, text):
                fmt = 0.0
            return r + format_weight * fmt
    fn.reward_name = name  # type: ignore[attr-defined]
    return fn


def _checked(value, name: str, problem: Problem) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    # bools pass (True is 1.0: a verifier's verdict is a fine reward); strings, None, NaN do not
    if not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"reward function {name!r} returned {value!r} ({type(value).__name__}) for problem "
                         f"{problem.id!r}; a reward must be a finite real number")
    return float(value)


def score(fn: RewardFn, problems: Sequence[Problem], texts: Sequence[str]) -> list[float]:
    """`fn` over (problem, text) pairs, each value checked to be a finite real number."""
    name = getattr(fn, "reward_name", getattr(fn, "__name__", repr(fn)))
    return [_checked(fn(p, t), name, p) for p, t in zip(problems, texts)]


def shuffle_rewards(rewards: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The random-reward control: the step's rewards permuted across all its completions, so the
    reward distribution is kept and its link to what was written is cut."""
    return rewards[torch.randperm(rewards.numel(), generator=generator)]
