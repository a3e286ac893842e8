"""Synthetic, verifiable multi-step arithmetic word problems with worked solutions.

One generator serves two purposes: it is the quickstart's pretraining corpus (short, regular text
that a tiny model learns on a laptop CPU in minutes) and an evaluation set with exact answers.

    question: "Tom has 12 apples. He buys 5 more, then gives away 3. How many apples does he have?"
    solution: "12 + 5 = 17. 17 - 3 = 14. The answer is \\boxed{14}."
    document: "Question: <question>\\nAnswer: <solution>"      (format_document)
    prompt:   "Question: <question>\\nAnswer:"                  (format_prompt, = the document's prefix)

Conventions (kept so the text stays learnable and the answers exact):
- every number is a non-negative integer; "-" never takes away more than there is;
- operands of "+" and "-" and the starting amount have 1..max_digits digits; the factor of "*"
  is 2..9 whatever max_digits is, and "*" is only chosen while the running value has at most
  max_digits digits, so intermediate values stay small (best effort when ops leave no choice);
- each step is one solution line "a op b = c." and the last line is "The answer is \\boxed{c}.".

Splits: the RNG seed is derived from (seed, difficulty, split), and on top of that a question
belongs to split "eval" iff sha256(question) % HOLDOUT_MODULUS == 0 (else "train"); the generator
rejects questions of the other split, so the two splits can never share a question text. They may
share the underlying arithmetic with different names/objects/verbs (at level 1 there are only
~130 distinct calculations).
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Iterator, Sequence

from spine.reasoning.problems import Problem

__all__ = [
    "Difficulty",
    "DIFFICULTY_LEVELS",
    "SPLITS",
    "HOLDOUT_MODULUS",
    "SyntheticProblem",
    "ArithmeticProblems",
    "split_of",
    "format_document",
    "format_prompt",
    "make_documents",
    "make_corpus",
    "to_problem",
]

OPS = ("+", "-", "*")
SPLITS = ("train", "eval")
HOLDOUT_MODULUS = 10  # ~1 question in 10 is held out for "eval"
_MAX_FACTOR = 9

# Small fixed vocabularies: a tiny model should spend its capacity on the arithmetic.
_NAMES = (("Tom", "he"), ("Anna", "she"), ("Ben", "he"), ("Mia", "she"),
          ("Sam", "he"), ("Lily", "she"), ("Max", "he"), ("Emma", "she"))
_OBJECTS = (("apple", "apples"), ("marble", "marbles"), ("coin", "coins"),
            ("book", "books"), ("sticker", "stickers"), ("pencil", "pencils"))
_VERBS = {
    "+": ("buys {b} more", "finds {b} more", "gets {b} more"),
    "-": ("gives away {b}", "loses {b}", "sells {b}"),
    "*": ("makes them {b} times as many",),
}


@dataclass(frozen=True)
class Difficulty:
    """How hard a problem is: number of operations, operand digits, allowed operators."""

    steps: int = 2
    max_digits: int = 2
    ops: tuple[str, ...] = ("+", "-", "*")

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))  # accept lists (e.g. from YAML)
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"Difficulty.steps must be an integer >= 1, got {self.steps!r}")
        if not isinstance(self.max_digits, int) or self.max_digits < 1:
            raise ValueError(f"Difficulty.max_digits must be an integer >= 1, got {self.max_digits!r}")
        bad = [o for o in self.ops if o not in OPS]
        if not self.ops or bad:
            raise ValueError(f"Difficulty.ops must be a non-empty subset of {OPS}, got {self.ops!r}")


DIFFICULTY_LEVELS: dict[int, Difficulty] = {
    1: Difficulty(steps=1, max_digits=1, ops=("+", "-")),
    2: Difficulty(steps=2, max_digits=1, ops=("+", "-")),
    3: Difficulty(steps=2, max_digits=2, ops=("+", "-", "*")),
    4: Difficulty(steps=3, max_digits=2, ops=("+", "-", "*")),
    5: Difficulty(steps=4, max_digits=3, ops=("+", "-", "*")),
}


@dataclass(frozen=True)
class SyntheticProblem:
    """One generated problem. `level` is 0 for a custom `Difficulty` that is not a preset."""

    id: str
    question: str
    solution: str
    answer: str
    level: int
    split: str = "train"


def _stable_int(text: str) -> int:
    # sha256, not hash(): Python salts str hashes per process, and splits must be reproducible.
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def split_of(question: str) -> str:
    """The only split a question text may appear in ("train" or "eval")."""
    return "eval" if _stable_int("spine-holdout|" + question) % HOLDOUT_MODULUS == 0 else "train"


def _resolve_level(level: int | Difficulty) -> tuple[Difficulty, int]:
    if isinstance(level, Difficulty):
        number = next((k for k, v in DIFFICULTY_LEVELS.items() if v == level), 0)
        return level, number
    if isinstance(level, bool) or not isinstance(level, int) or level not in DIFFICULTY_LEVELS:
        raise ValueError(f"unknown difficulty level {level!r}; known levels: "
                         f"{', '.join(map(str, DIFFICULTY_LEVELS))} (or pass a Difficulty)")
    return DIFFICULTY_LEVELS[level], level


class ArithmeticProblems:
    """Unlimited, deterministic stream of problems for one (seed, level, split)."""

    def __init__(self, seed: int = 0, level: int | Difficulty = 1, split: str = "train") -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; known splits: {', '.join(SPLITS)}")
        self.difficulty, self.level = _resolve_level(level)
        self.seed, self.split = int(seed), split
        d = self.difficulty
        tag = f"L{self.level}" if self.level else "D" + hashlib.sha256(repr(d).encode()).hexdigest()[:6]
        self._id_prefix = f"arith-{split}-{tag}-s{self.seed}"
        # The split is part of the seed so the two streams differ even before rejection.
        self._rng = random.Random(_stable_int(f"spine-arith|{self.seed}|{d.steps}|{d.max_digits}|"
                                              f"{''.join(d.ops)}|{split}"))
        self._count = 0

    def _operand(self, op: str, current: int) -> int:
        hi = 10 ** self.difficulty.max_digits - 1
        if op == "+":
            return self._rng.randint(1, hi)
        if op == "-":
            return self._rng.randint(min(1, current), min(current, hi))
        return self._rng.randint(2, _MAX_FACTOR)

    def _draw(self) -> tuple[str, str, int]:
        """One candidate (question, solution, answer), before the split filter."""
        d, rng = self.difficulty, self._rng
        limit = 10 ** d.max_digits
        name, pronoun = rng.choice(_NAMES)
        singular, plural = rng.choice(_OBJECTS)
        value = rng.randint(1, limit - 1)
        start = value
        clauses, lines = [], []
        for _ in range(d.steps):
            allowed = [o for o in d.ops if not (o == "-" and value == 0) and not (o == "*" and value >= limit)]
            op = rng.choice(allowed or list(d.ops))
            b = self._operand(op, value)
            new = value + b if op == "+" else value - b if op == "-" else value * b
            lines.append(f"{value} {op} {b} = {new}.")
            clauses.append(rng.choice(_VERBS[op]).format(b=b))
            value = new
        noun = singular if start == 1 else plural
        question = (f"{name} has {start} {noun}. {pronoun.capitalize()} {', then '.join(clauses)}. "
                    f"How many {plural} does {pronoun} have?")
        solution = " ".join(lines) + f" The answer is \\boxed{{{value}}}."
        return question, solution, value

    def sample(self) -> SyntheticProblem:
        """A fresh problem of this stream's split (rejection-sampled against the hash split)."""
        while True:
            question, solution, value = self._draw()
            if split_of(question) == self.split:
                break
        pid = f"{self._id_prefix}-{self._count}"
        self._count += 1
        return SyntheticProblem(id=pid, question=question, solution=solution, answer=str(value),
                                level=self.level, split=self.split)

    def take(self, n: int, *, unique: bool = False) -> list[SyntheticProblem]:
        """The next `n` problems; `unique=True` skips repeated questions (errors if too few exist)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if not unique:
            return [self.sample() for _ in range(n)]
        out: list[SyntheticProblem] = []
        seen: set[str] = set()
        misses = 0
        while len(out) < n:
            sp = self.sample()
            if sp.question in seen:
                misses += 1
                if misses > 100 * n + 10_000:
                    raise ValueError(f"could not find {n} distinct problems at {self.difficulty} "
                                     f"(found {len(out)}); ask for fewer or a harder level")
                continue
            seen.add(sp.question)
            out.append(sp)
        return out

    def __iter__(self) -> Iterator[SyntheticProblem]:
        while True:
            yield self.sample()


def format_prompt(problem: SyntheticProblem | str) -> str:
    """The evaluation prompt: the document up to and including "Answer:"."""
    q = problem.question if isinstance(problem, SyntheticProblem) else problem
    return f"Question: {q}\nAnswer:"


def format_document(sp: SyntheticProblem) -> str:
    """The pretraining document: "Question: ...\\nAnswer: <worked solution>"."""
    return f"{format_prompt(sp)} {sp.solution}"


def make_documents(n_problems: int, seed: int = 0, levels: Sequence[int | Difficulty] = (1, 2),
                   split: str = "train") -> list[str]:
    """`n_problems` documents cycling through `levels` (document i uses levels[i % len(levels)]).

    Returned separately so the data module can put end-of-text between documents.
    """
    if not levels:
        raise ValueError("levels must not be empty")
    gens = [ArithmeticProblems(seed=seed, level=lv, split=split) for lv in levels]
    return [format_document(gens[i % len(gens)].sample()) for i in range(n_problems)]


def make_corpus(n_problems: int, seed: int = 0, levels: Sequence[int | Difficulty] = (1, 2),
                split: str = "train", sep: str = "\n\n") -> str:
    """`make_documents(...)` joined with `sep` into one text."""
    return sep.join(make_documents(n_problems, seed=seed, levels=levels, split=split))


def to_problem(sp: SyntheticProblem) -> Problem:
    """A `Problem` whose prompt is the bare question (render it with the "synthetic" template)."""
    return Problem(id=sp.id, prompt=sp.question, answer=sp.answer,
                   metadata={"level": sp.level, "solution": sp.solution, "split": sp.split,
                             "source": "synthetic"})
