"""Reasoning pipelines: majority vote, self-consistency batching, single sample, costs, Engine errors.

`spine.reasoning.pipelines.generate` is replaced by a scripted fake, so these tests check the
pipeline logic (how many samples, in how many calls, which answer wins) without a model.
"""
from __future__ import annotations

import types
import pytest

from spine.generation import GenerationOutput
from spine.reasoning import pipelines
from spine.reasoning.pipelines import Engine, SelfConsistency, SingleSample, make_pipeline, majority_vote
from spine.reasoning.problems import Problem
from spine.tokenizer import get_tokenizer

TOK = get_tokenizer("byte")


class ScriptedGenerate:
    """Stands in for `spine.generation.generate`: each prompt gets the next text of its script."""

    def __init__(self, scripts: dict[str, list[str]]):
        self.scripts = {k: list(v) for k, v in scripts.items()}
        self.calls: list[dict] = []  # one entry per call: rows, kwargs

    def __call__(self, model, prompts, **kw):
        texts = []
        for ids in prompts:
            prompt = TOK.decode(ids)
            question = prompt.split("Question: ", 1)[1].split("\n", 1)[0]
            texts.append(self.scripts[question].pop(0))
        self.calls.append({"rows": [TOK.decode(p) for p in prompts], **kw})
        tokens = [TOK.encode(t) for t in texts]
        return GenerationOutput(tokens, [[0.0] * len(t) for t in tokens], ["length"] * len(tokens),
                                [list(p) for p in prompts], [{TOK.eos_id}] * len(tokens))


@pytest.fixture
def fake(monkeypatch):
    def install(scripts):
        gen = ScriptedGenerate(scripts)
        monkeypatch.setattr(pipelines, "generate", gen)
        return gen
    return install


@pytest.fixture
def clock(monkeypatch):
    """A clock that advances exactly 1 s per reading pair: every generate call "takes" 1 s."""
    state = {"t": 0.0, "reads": 0}

    def perf_counter():
        state["reads"] += 1
        if state["reads"] % 2 == 0:
            state["t"] += 1.0
        return state["t"]

    monkeypatch.setattr(pipelines, "time", types.SimpleNamespace(perf_counter=perf_counter))
    return state


def _engine(**kw) -> Engine:
    kw.setdefault("template", "synthetic")
    return Engine(None, TOK, **kw)


PROBLEMS = [Problem("a", "half of one?", "1/2"), Problem("b", "two plus two?", "4"),
            Problem("c", "three times three?", "9")]


# ----------------------------------------------------------------------------- majority_vote
def test_majority_vote_pools_equivalent_answers():
    idx, info = majority_vote(["3", "1/2", "0.5", "\\frac12", "3"])
    assert idx == 1  # the "1/2" group (3 votes) beats "3" (2 votes); its first member is sample 1
    assert info["tie"] is False and info["winner_votes"] == 3
    assert info["groups"] == [{"answer": "3", "votes": 2}, {"answer": "1/2", "votes": 3}]


def test_majority_vote_normalized_text_votes_together():
    idx, info = majority_vote(["$7$", "7.", " 7", "8"])
    assert idx == 0 and info["winner_votes"] == 3


def test_none_abstains():
    idx, info = majority_vote([None, "5", None, "6", "5"])
    assert idx == 1 and info["abstained"] == 2 and info["winner_votes"] == 2
    idx, info = majority_vote([None, None])
    assert idx is None and info == {"groups": [], "tie": False, "winner_votes": 0, "abstained": 2}


def test_ties_are_reported_and_go_to_the_first_seen_group():
    idx, info = majority_vote(["3", "0.5", "1/2", "3"])
    assert idx == 0 and info["tie"] is True and info["winner_votes"] == 2
    idx, info = majority_vote(["0.5", "3", "3", "\\frac{1}{2}"])
    assert idx == 0 and info["tie"] is True  # "0.5" was seen first
    idx, info = majority_vote([None, "4", "5"])
    assert idx == 1 and info["tie"] is True


# ----------------------------------------------------------------------------- self-consistency
def test_self_consistency_draws_n_per_problem_in_one_batched_call(fake):
    gen = fake({
        "half of one?": ["\\boxed{0.5}", "\\boxed{3}", "\\boxed{\\frac12}", "no idea", "\\boxed{1/2}"],
        "two plus two?": ["\\boxed{5}", "\\boxed{5}", "\\boxed{4}", "\\boxed{4}", "\\boxed{3}"],  # tie 5 vs 4
        "three times three?": ["nothing", "still nothing", "no", "none", "hm"],
    })
    sc = SelfConsistency(n=5, temperature=0.7, top_k=20, seed=3)
    results = sc.run(_engine(batch_size=64), PROBLEMS)
    assert len(gen.calls) == 1
    call = gen.calls[0]
    assert len(call["rows"]) == 15
    # rows are grouped per problem: five copies of problem a's prompt, then b's, then c's
    assert [r.split("Question: ")[1].split("\n")[0] for r in call["rows"]] == \
        ["half of one?"] * 5 + ["two plus two?"] * 5 + ["three times three?"] * 5
    assert call["temperature"] == 0.7 and call["top_k"] == 20 and call["seed"] == 3
    a, b, c = results
    assert [len(r.samples) for r in results] == [5, 5, 5]
    assert a.answer == "0.5" and a.final_index == 0 and a.correct and a.vote["winner_votes"] == 3
    assert a.vote["abstained"] == 1
    assert b.answer == "5" and not b.correct and b.vote["tie"] is True  # the tie goes to the first seen
    assert c.answer is None and not c.correct and c.rule == "no_answer"


def test_self_consistency_splits_into_batches_but_keeps_n(fake):
    gen = fake({p.prompt: [f"\\boxed{{{p.answer}}}"] * 4 for p in PROBLEMS})
    results = SelfConsistency(n=4, seed=0).run(_engine(batch_size=5), PROBLEMS)
    assert [len(c["rows"]) for c in gen.calls] == [5, 5, 2]
    assert [c["seed"] for c in gen.calls] == [0, 5, 10]  # batches draw different noise
    assert all(r.correct and len(r.samples) == 4 for r in results)


def test_single_sample_is_greedy_and_graded(fake):
    gen = fake({"half of one?": ["so \\boxed{\\dfrac{1}{2}}"], "two plus two?": ["it is 4"],
                "three times three?": ["\\boxed{6}"]})
    results = SingleSample().run(_engine(), PROBLEMS)
    assert len(gen.calls) == 1 and gen.calls[0]["temperature"] == 0.0
    assert [r.answer for r in results] == ["\\dfrac{1}{2}", "4", "6"]
    assert [r.correct for r in results] == [True, True, False]
    assert [r.samples[0].method for r in results] == ["boxed", "last_number", "boxed"]
    assert all(r.final_index == 0 and len(r.samples) == 1 for r in results)


def test_costs_add_up(fake, clock):
    texts = {"half of one?": ["\\boxed{1/2}", "ab"], "two plus two?": ["\\boxed{4}", "abcdef"],
             "three times three?": ["\\boxed{9}", ""]}
    fake(texts)
    results = SelfConsistency(n=2).run(_engine(batch_size=4), PROBLEMS)  # 6 samples: calls of 4 and 2
    for r in results:
        assert r.tokens == sum(s.completion.tokens for s in r.samples)
    assert [r.tokens for r in results] == [11 + 2, 9 + 6, 9 + 0]
    # each call "took" 1 s, shared by its rows: 4 rows at 0.25 s, then 2 rows at 0.5 s
    assert [s.completion.seconds for r in results for s in r.samples] == [0.25, 0.25, 0.25, 0.25, 0.5, 0.5]
    assert sum(r.seconds for r in results) == pytest.approx(2.0)


# ----------------------------------------------------------------------------- Engine
def test_engine_errors():
    with pytest.raises(ValueError, match="needs a tokenizer"):
        Engine(None, None)
    with pytest.raises(ValueError, match=r"unknown prompt template 'nope'; known templates: math, math_cot, plain, "
                                         r"synthetic"):
        Engine(None, TOK, template="nope")
    with pytest.raises(ValueError, match="chat template"):
        Engine(None, TOK, chat=True)
    with pytest.raises(ValueError, match="max_new_tokens"):
        Engine(None, TOK, max_new_tokens=0)
    with pytest.raises(ValueError, match="unknown pipeline 'beam'"):
        make_pipeline("beam")
    with pytest.raises(ValueError, match="n must be >= 1"):
        SelfConsistency(n=0)


def test_stop_strings_cut_at_the_earliest(fake):
    gen = fake({"half of one?": ["\\boxed{1/2}\nQuestion: more\n\nAnswer: 7"], "two plus two?": ["4 and 5"],
                "three times three?": ["Answer: \\boxed{9}"]})
    eng = _engine(stop_strings=["\n\n", "\nQuestion:"])
    comps = eng.complete([eng.prompt_for(p) for p in PROBLEMS])
    assert [c.text for c in comps] == ["\\boxed{1/2}", "4 and 5", "Answer: \\boxed{9}"]
    assert [c.finish_reason for c in comps] == ["stop_string", "length", "length"]
    assert comps[0].tokens == len(TOK.encode("\\boxed{1/2}\nQuestion: more\n\nAnswer: 7"))  # the fake's tokens
    # the engine hands generate a host-side test that ends a row once its text holds a stop string
    stop_when = gen.calls[-1]["stop_when"]
    assert stop_when(TOK.encode("\\boxed{1/2}\nQuestion")) is False
    assert stop_when(TOK.encode("\\boxed{1/2}\nQuestion:")) is True
    assert stop_when(TOK.encode("4 and 5\n\n")) is True


def test_engine_settings_and_prompt():
    eng = _engine(max_new_tokens=12, stop_strings=["\nQuestion:"])
    assert eng.prompt_for(PROBLEMS[1]) == "Question: two plus two?\nAnswer:"
    assert eng.settings() == {"template": "synthetic", "chat": False, "enable_thinking": False,
                              "max_new_tokens": 12, "stop_strings": ["\nQuestion:"],
                              "batch_size": eng.batch_size}
    assert SelfConsistency(n=3, temperature=0.5).config() == {
        "pipeline": "self_consistency", "n": 3, "temperature": 0.5, "top_k": None, "top_p": None, "seed": 0}
