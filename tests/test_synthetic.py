"""Synthetic arithmetic problems: exact answers, determinism, disjoint splits, difficulty controls."""
from __future__ import annotations

import operator
import re

import pytest

from spine.reasoning.problems import Problem
from spine.reasoning.synthetic import (
    DIFFICULTY_LEVELS,
    ArithmeticProblems,
    Difficulty,
    SyntheticProblem,
    format_document,
    format_prompt,
    make_corpus,
    make_documents,
    split_of,
    to_problem,
)

STEP = re.compile(r"(\d+) ([+\-*]) (\d+) = (\d+)\.")
BOXED = re.compile(r"The answer is \\boxed\{(\d+)\}\.$")
APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def parse(sp: SyntheticProblem) -> list[tuple[int, str, int, int]]:
    """The solution's "a op b = c." steps, checked to be the whole solution text."""
    steps = [(int(a), op, int(b), int(c)) for a, op, b, c in STEP.findall(sp.solution)]
    rebuilt = " ".join(f"{a} {op} {b} = {c}." for a, op, b, c in steps) + f" The answer is \\boxed{{{sp.answer}}}."
    assert rebuilt == sp.solution
    return steps


@pytest.mark.parametrize("level", sorted(DIFFICULTY_LEVELS))
def test_answers_recompute_from_steps(level):
    d = DIFFICULTY_LEVELS[level]
    for sp in ArithmeticProblems(seed=3, level=level).take(300):
        steps = parse(sp)
        assert len(steps) == d.steps
        value = steps[0][0]
        for a, op, b, c in steps:
            assert a == value, "each step starts from the previous result"
            assert APPLY[op](a, b) == c and c >= 0
            value = c
        assert BOXED.search(sp.solution).group(1) == sp.answer == str(value)
        # The question states exactly the starting amount and the operands, in order.
        assert [int(x) for x in re.findall(r"\d+", sp.question)] == [steps[0][0]] + [b for _, _, b, _ in steps]
        assert sp.level == level


def test_difficulty_controls_digits_and_ops():
    for level, d in DIFFICULTY_LEVELS.items():
        starts, ops_used = [], set()
        for sp in ArithmeticProblems(seed=1, level=level).take(400):
            steps = parse(sp)
            starts.append(steps[0][0])
            for a, op, b, _ in steps:
                ops_used.add(op)
                if op == "*":
                    assert 2 <= b <= 9 and a < 10 ** d.max_digits
                else:
                    assert 1 <= b < 10 ** d.max_digits or (op == "-" and a == 0 and b == 0)
        assert all(1 <= s < 10 ** d.max_digits for s in starts)
        assert max(len(str(s)) for s in starts) == d.max_digits  # the digit budget is actually used
        assert ops_used == set(d.ops), (level, ops_used)


def test_custom_difficulty():
    d = Difficulty(steps=6, max_digits=1, ops=["+"])  # a list is accepted and frozen to a tuple
    assert d.ops == ("+",)
    sps = ArithmeticProblems(seed=0, level=d).take(20)
    for sp in sps:
        steps = parse(sp)
        assert len(steps) == 6 and {op for _, op, _, _ in steps} == {"+"}
        assert sp.level == 0
    assert len({sp.id for sp in sps}) == 20
    # A Difficulty equal to a preset reports that preset's level.
    assert ArithmeticProblems(level=Difficulty(steps=2, max_digits=1, ops=("+", "-"))).sample().level == 2


def test_deterministic_and_seed_sensitive():
    a = ArithmeticProblems(seed=7, level=3, split="eval").take(50)
    b = ArithmeticProblems(seed=7, level=3, split="eval").take(50)
    assert a == b
    assert [p.question for p in ArithmeticProblems(seed=8, level=3, split="eval").take(50)] != [p.question for p in a]
    g = ArithmeticProblems(seed=7, level=3, split="eval")
    assert [g.sample() for _ in range(50)] == a
    it = iter(ArithmeticProblems(seed=7, level=3, split="eval"))
    assert [next(it) for _ in range(5)] == a[:5]


def test_splits_are_disjoint():
    # Level 1 has the smallest question space, so it is where collisions would show up.
    train = [p.question for p in ArithmeticProblems(seed=0, level=1, split="train").take(4000)]
    held = [p.question for p in ArithmeticProblems(seed=0, level=1, split="eval").take(2000)]
    assert len(set(train)) < len(train), "space small enough that unfiltered splits would collide"
    assert not set(train) & set(held)
    assert all(split_of(q) == "train" for q in train) and all(split_of(q) == "eval" for q in held)
    # Same seed, other split: a different stream, not a filtered copy of the same draws.
    assert ArithmeticProblems(seed=0, level=2, split="eval").sample().id.startswith("arith-eval-L2-s0-")


def test_level_and_split_validation():
    for bad in (0, 6, "2", True, 2.0):
        with pytest.raises(ValueError, match="known levels: 1, 2, 3, 4, 5"):
            ArithmeticProblems(level=bad)
    with pytest.raises(ValueError, match="known splits: train, eval"):
        ArithmeticProblems(split="test")
    for kwargs in ({"steps": 0}, {"max_digits": 0}, {"ops": ()}, {"ops": ("+", "/")}):
        with pytest.raises(ValueError, match="Difficulty"):
            Difficulty(**kwargs)


def test_take_unique_and_negative():
    sps = ArithmeticProblems(seed=0, level=1, split="eval").take(300, unique=True)
    assert len({p.question for p in sps}) == 300
    with pytest.raises(ValueError):
        ArithmeticProblems().take(-1)


def test_document_prompt_and_corpus():
    sp = ArithmeticProblems(seed=2, level=2).sample()
    doc, prompt = format_document(sp), format_prompt(sp)
    assert prompt == f"Question: {sp.question}\nAnswer:"
    assert doc == prompt + " " + sp.solution
    assert format_prompt(sp.question) == prompt

    docs = make_documents(10, seed=4, levels=(1, 3))
    assert len(docs) == 10
    assert [len(STEP.findall(d)) for d in docs] == [1, 2] * 5  # levels cycle 1, 3, 1, 3, ...
    assert make_corpus(10, seed=4, levels=(1, 3)) == "\n\n".join(docs)
    assert make_documents(10, seed=4, levels=(1, 3)) == docs
    with pytest.raises(ValueError):
        make_documents(3, levels=())


def test_to_problem():
    sp = ArithmeticProblems(seed=0, level=4, split="eval").sample()
    p = to_problem(sp)
    assert isinstance(p, Problem)
    assert (p.id, p.prompt, p.answer) == (sp.id, sp.question, sp.answer)
    assert p.metadata == {"level": 4, "solution": sp.solution, "split": "eval", "source": "synthetic"}
