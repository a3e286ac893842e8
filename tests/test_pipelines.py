"""Reasoning pipelines: majority vote, self-consistency, single sample, costs, ProblemEngine errors.

`spine.reasoning.pipelines.Engine` (the one decode loop) is replaced by a scripted fake, so these
tests check the pipeline logic (how many samples, with which settings and keys, which answer wins)
without a model; tests/test_engine.py checks the engine itself.
"""
from __future__ import annotations

import pytest

from spine.engine import Completion, SamplingParams
from spine.reasoning import pipelines
from spine.reasoning.pipelines import ProblemEngine, SelfConsistency, SingleSample, make_pipeline, majority_vote
from spine.reasoning.problems import Problem
from spine.tokenizer import get_tokenizer

TOK = get_tokenizer("byte")


class ScriptedEngine:
    """Stands in for `spine.engine.Engine`: each prompt's samples are the next texts of its script."""

    def __init__(self, scripts: dict[str, list[str]]):
        self.scripts = {k: list(v) for k, v in scripts.items()}
        self.calls: list[dict] = []  # one entry per call: prompts, params, keys, kwargs

    def __call__(self, model, tokenizer, **kw):  # the constructor ProblemEngine calls
        self.engine_kwargs = kw
        return self

    def generate(self, prompts, params, *, keys=None, **kw):
        self.calls.append({"prompts": list(prompts), "params": params, "keys": list(keys), **kw})
        out = []
        for prompt in prompts:
            question = prompt.split("Question: ", 1)[1].split("\n", 1)[0]
            row = []
            for j in range(params.n):
                text = self.scripts[question].pop(0)
                ids = TOK.encode(text)
                row.append(Completion(text, ids, [0.0] * len(ids), "length", len(TOK.encode(prompt)), len(ids), j,
                                      0.25))
            out.append(row)
        return out


@pytest.fixture
def fake(monkeypatch):
    def install(scripts):
        gen = ScriptedEngine(scripts)
        monkeypatch.setattr(pipelines, "Engine", gen)
        return gen
    return install


def _engine(**kw) -> ProblemEngine:
    kw.setdefault("template", "synthetic")
    return ProblemEngine(None, TOK, **kw)


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
def test_self_consistency_draws_n_per_problem_in_one_call_keyed_by_problem_id(fake):
    gen = fake({
        "half of one?": ["\\boxed{0.5}", "\\boxed{3}", "\\boxed{\\frac12}", "no idea", "\\boxed{1/2}"],
        "two plus two?": ["\\boxed{5}", "\\boxed{5}", "\\boxed{4}", "\\boxed{4}", "\\boxed{3}"],  # tie 5 vs 4
        "three times three?": ["nothing", "still nothing", "no", "none", "hm"],
    })
    sc = make_pipeline("sc", n=5, temperature=0.7, top_k=20, seed=3)
    results = sc.run(_engine(batch_size=64), PROBLEMS)
    assert len(gen.calls) == 1
    call = gen.calls[0]
    # one prompt per problem; the engine draws the n samples from one prefill
    assert [r.split("Question: ")[1].split("\n")[0] for r in call["prompts"]] == \
        ["half of one?", "two plus two?", "three times three?"]
    assert call["params"] == SamplingParams(temperature=0.7, top_k=20, seed=3, n=5)
    assert call["keys"] == ["a", "b", "c"]  # noise keyed by problem id: chunks and resumes draw the same samples
    a, b, c = results
    assert [len(r.samples) for r in results] == [5, 5, 5]
    assert a.answer == "0.5" and a.final_index == 0 and a.correct and a.vote["winner_votes"] == 3
    assert a.vote["abstained"] == 1
    assert b.answer == "5" and not b.correct and b.vote["tie"] is True  # the tie goes to the first seen
    assert c.answer is None and not c.correct and c.rule == "no_answer"


def test_make_pipeline_sampling_defaults_and_overrides():
    shared = SamplingParams(max_new_tokens=40, stop=("\nQuestion:",))
    sc = make_pipeline("sc", sampling=shared)
    assert sc.sampling == SamplingParams(temperature=0.8, n=8, max_new_tokens=40, stop=("\nQuestion:",))
    sc = make_pipeline("self_consistency", sampling=shared, n=5, temperature=0.7)
    assert (sc.sampling.n, sc.sampling.temperature, sc.sampling.max_new_tokens) == (5, 0.7, 40)
    greedy = make_pipeline("greedy", sampling=shared)
    assert greedy.sampling == shared and isinstance(greedy, SingleSample)
    assert SelfConsistency().sampling == SamplingParams(temperature=0.8, n=8)


def test_single_sample_is_greedy_and_graded(fake):
    gen = fake({"half of one?": ["so \\boxed{\\dfrac{1}{2}}"], "two plus two?": ["it is 4"],
                "three times three?": ["\\boxed{6}"]})
    results = SingleSample().run(_engine(), PROBLEMS)
    assert len(gen.calls) == 1 and gen.calls[0]["params"].temperature == 0.0 and gen.calls[0]["params"].n == 1
    assert [r.answer for r in results] == ["\\dfrac{1}{2}", "4", "6"]
    assert [r.correct for r in results] == [True, True, False]
    assert [r.samples[0].method for r in results] == ["boxed", "last_number", "boxed"]
    assert all(r.final_index == 0 and len(r.samples) == 1 for r in results)


def test_costs_add_up(fake):
    texts = {"half of one?": ["\\boxed{1/2}", "ab"], "two plus two?": ["\\boxed{4}", "abcdef"],
             "three times three?": ["\\boxed{9}", ""]}
    fake(texts)
    results = make_pipeline("sc", n=2).run(_engine(batch_size=4), PROBLEMS)
    for r in results:
        assert r.tokens == sum(s.completion.generated_tokens for s in r.samples)
    assert [r.tokens for r in results] == [11 + 2, 9 + 6, 9 + 0]
    assert [r.seconds for r in results] == [0.5, 0.5, 0.5]
    assert results[0].prompt_tokens == 2 * len(TOK.encode("Question: half of one?\nAnswer:"))


# ----------------------------------------------------------------------------- ProblemEngine
def test_engine_errors():
    with pytest.raises(ValueError, match="needs a tokenizer"):
        ProblemEngine(None, None)
    with pytest.raises(ValueError, match=r"unknown prompt template 'nope'; known templates: math, math_cot, plain, "
                                         r"synthetic"):
        ProblemEngine(None, TOK, template="nope")
    with pytest.raises(ValueError, match="chat template"):
        ProblemEngine(None, TOK, chat=True)
    with pytest.raises(ValueError, match="batch_size"):
        ProblemEngine(None, TOK, batch_size=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        make_pipeline("greedy", max_new_tokens=0)
    with pytest.raises(ValueError, match="unknown pipeline 'beam'"):
        make_pipeline("beam")
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        make_pipeline("sc", n=0)


def test_engine_settings_and_prompt():
    eng = _engine()
    assert eng.prompt_for(PROBLEMS[1]) == "Question: two plus two?\nAnswer:"
    assert eng.settings() == {"template": "synthetic", "chat": False, "enable_thinking": False}
    assert SelfConsistency(SamplingParams(n=3, temperature=0.5)).config() == {
        "pipeline": "self_consistency", "sampling": SamplingParams(n=3, temperature=0.5).to_dict()}
