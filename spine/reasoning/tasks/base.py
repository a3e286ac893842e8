"""What every task family shares: the `Task` base (seeded streams, the hash split), `VerifyResult`,
and answer extraction from a completion.

A family implements `_draw(rng, level)` (one candidate problem: its canonical form, question,
worked solution, gold answer and metadata) and `check(problem, answer)` (is an extracted answer
right?). The base turns that into unlimited deterministic streams whose train/eval split is decided
by a hash of the canonical problem alone, so a problem can never appear in both splits.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, Iterator

from spine.reasoning.extract import extract, last_boxed, strip_think
from spine.reasoning.problems import Problem

SPLITS = ("train", "eval")
HOLDOUT_MODULUS = 10          # ~1 problem in 10 belongs to "eval"
DOCUMENT_SEPARATOR = "\nQuestion:"  # a completion that runs on into a new question is cut here
MAX_ANSWER_CHARS = 400        # longer "answers" are rejected before any parsing


@dataclass(frozen=True)
class VerifyResult:
    """The verdict on one completion: `extracted` is the answer read from it (None: none found);
    `reason` is "correct" or names why not (e.g. "no_answer", "wrong_value", "reused_number")."""

    correct: bool
    extracted: str | None
    reason: str

    def __bool__(self) -> bool:  # a reward function may write `float(bool(verify(...)))`
        return self.correct


@dataclass(frozen=True)
class Drawn:
    """One candidate problem before the split filter."""

    canonical: str
    question: str
    solution: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)


def stable_int(text: str) -> int:
    """A process-independent 64-bit hash (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def split_of_canonical(family: str, canonical: str) -> str:
    """The only split the problem with this canonical form may appear in."""
    return "eval" if stable_int(f"spine-task-holdout|{family}|{canonical}") % HOLDOUT_MODULUS == 0 else "train"


def visible_text(completion: str) -> str:
    """The part of a completion that counts: thinking removed, cut before a new "Question:"."""
    text = strip_think(completion)
    cut = text.find(DOCUMENT_SEPARATOR)
    return text if cut < 0 else text[:cut]


def extract_for_task(completion: str, *, fallback_number: bool) -> str | None:
    """The last boxed answer of the visible text; else (numeric families only) its last number."""
    text = visible_text(completion)
    if fallback_number:
        return extract(text).answer
    boxed = last_boxed(text)
    return None if boxed is None else boxed[0]


def check_level(family: str, level: Any, levels: tuple[int, ...]) -> int:
    if isinstance(level, bool) or not isinstance(level, int) or level not in levels:
        raise ValueError(f"task {family!r}: unknown level {level!r}; known levels: {', '.join(map(str, levels))}")
    return level


def check_split(split: Any) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known splits: {', '.join(SPLITS)}")
    return split


class Task:
    """A family of verifiable problems with a difficulty dial `level` (see the module docstring)."""

    name: str = ""
    levels: tuple[int, ...] = ()
    fallback_number: bool = True   # numeric families accept the last number when nothing is boxed
    description: str = ""

    # -- what a family implements ------------------------------------------------------------
    def _draw(self, rng: random.Random, level: int) -> Drawn:
        raise NotImplementedError

    def check(self, problem: Problem, answer: str) -> VerifyResult:
        """Whether the extracted `answer` solves `problem` (never raises for bad answer text)."""
        raise NotImplementedError

    # -- shared machinery --------------------------------------------------------------------
    def split_of(self, canonical: str) -> str:
        return split_of_canonical(self.name, canonical)

    def stream(self, level: int, seed: int = 0, split: str = "train") -> Iterator[Problem]:
        """Unlimited problems of one (level, seed, split), deterministic and split-filtered."""
        level = check_level(self.name, level, self.levels)
        split = check_split(split)
        rng = random.Random(stable_int(f"spine-task|{self.name}|{level}|{int(seed)}|{split}"))
        i = 0
        while True:
            d = self._draw(rng, level)
            if self.split_of(d.canonical) != split:
                continue
            meta = {"task": self.name, "level": level, "split": split, "solution": d.solution,
                    "canonical": d.canonical, "source": f"task:{self.name}", **d.meta}
            yield Problem(id=f"{self.name}-{split}-L{level}-s{int(seed)}-{i}", prompt=d.question,
                          answer=d.answer, metadata=meta)
            i += 1

    def generate(self, level: int, n: int, seed: int = 0, split: str = "train") -> list[Problem]:
        """The first `n` problems of the (level, seed, split) stream."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an integer >= 0, got {n!r}")
        it = self.stream(level, seed, split)
        return [next(it) for _ in range(n)]

    def verify(self, problem: Problem, completion: str) -> VerifyResult:
        """Extract the answer from a completion and check it (the reward and the grade)."""
        if not isinstance(completion, str):
            raise TypeError(f"verify() needs the completion text (str), got {type(completion).__name__}")
        answer = extract_for_task(completion, fallback_number=self.fallback_number)
        if answer is None or not answer.strip():
            return VerifyResult(False, None, "no_answer")
        if len(answer) > MAX_ANSWER_CHARS:
            return VerifyResult(False, answer[:MAX_ANSWER_CHARS], "too_long")
        try:
            return self.check(problem, answer.strip())
        except Exception as exc:  # noqa: BLE001 - a checker bug must not abort training or evaluation
            return VerifyResult(False, answer, f"error: {type(exc).__name__}")
