"""Reasoning pipelines: majority vote, self-consistency, single sample, costs, ProblemEngine errors.

`spine.reasoning.pipelines.Engine` (the one decode loop) is replaced by a scripted fake, so these
tests check the pipeline logic (how many samples, with which settings and keys, which answer wins)
without a model; tests/test_engine.py checks the engine itself.
"""
from __future__ import annotations

import dataclasses

import pytest

from spine.engine import Completion, SamplingParams
from spine.reasoning.cost import Cost
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
        "pipeline": "self_consistency", "sampling": SamplingParams(n=3, temperature=0.5).to_dict(),
        "tiebreak": "logprob"}


# ----------------------------------------------------------------------------- early-stopped self-consistency
def _random_votes(rng, n):
    alphabet = ["1", "2", "3", "0.5", "1/2", "\\frac12", None]
    weights = rng.choice([[1, 1, 1, 1, 1, 1, 1], [6, 1, 1, 0, 0, 0, 1], [1, 0, 0, 3, 3, 3, 1], [2, 2, 0, 0, 0, 0, 3]])
    answers = rng.choices(alphabet, weights=weights, k=n)
    return answers, [rng.uniform(-3.0, 0.0) for _ in range(n)]


def test_early_stopped_vote_picks_the_full_votes_answer_whenever_it_stops():
    """Property: for many random sample sets, any prefix at which `vote_settled` says stop has the same
    winner (the same first sample of the same group) as the vote over all n, log-prob tie-break included."""
    import functools
    import random

    from spine.reasoning.grade import answers_equivalent
    from spine.reasoning.vote import vote_settled

    eq = functools.lru_cache(maxsize=None)(answers_equivalent)
    rng = random.Random(0)
    stops = early = 0
    for _ in range(600):
        n = rng.randint(1, 12)
        answers, lps = _random_votes(rng, n)
        full, _ = majority_vote(answers, eq, tiebreak=lps)
        for m in range(1, n + 1):
            if vote_settled(answers[:m], n, eq):
                stops += 1
                early += m < n
                assert majority_vote(answers[:m], eq, tiebreak=lps[:m])[0] == full, (answers, m)
                # once settled, it stays settled
                assert all(vote_settled(answers[:k], n, eq) for k in range(m, n + 1))
    assert early > 500  # the rule really stops early, often


def test_vote_settled_by_hand():
    from spine.reasoning.vote import vote_settled

    assert vote_settled(["4", "4", "4", "4", "4"], 8)          # 5 > 0 + 3
    assert not vote_settled(["4", "4", "4", "4"], 8)           # 4 = 0 + 4: a new answer could tie
    assert vote_settled(["4", "4", "4", "5"], 5)               # 3 > 1 + 1
    assert not vote_settled(["4", "4", "5"], 5)                # 2 < 1 + 2
    assert vote_settled(["0.5", "1/2", "\\frac12", "3"], 5)    # one group of 3 > 1 + 1
    assert not vote_settled(["0.5", "1/2", "\\frac12", "3"], 5, equivalent=None)  # by text: 1 each
    assert not vote_settled([None, None], 3) and vote_settled([None, None], 2)
    with pytest.raises(ValueError, match="3 answers for a vote over n=2"):
        vote_settled(["1", "1", "1"], 2)


def test_logprob_tiebreak():
    idx, info = majority_vote(["3", "4", "4", "3"], tiebreak=[-1.0, -0.2, -0.4, -1.2])
    assert idx == 1 and info["tie"] and info["tiebreak"]["scores"] == [-1.1, -0.3]
    assert majority_vote(["3", "4"], tiebreak=[-1.0, -1.0])[0] == 0  # equal means: the first seen
    assert majority_vote(["3", "4", "4"], tiebreak=[0.0, -9.0, -9.0])[0] == 1  # no tie: votes decide
    with pytest.raises(ValueError, match="2 tie-break scores for 3 answers"):
        majority_vote(["3", "4", "4"], tiebreak=[0.0, 1.0])


class IndexedEngine:
    """Stands in for `spine.engine.Engine`: sample j of a prompt is texts[question][j], whatever the
    chunking, so a run that draws in rounds sees exactly the samples of a full run."""

    def __init__(self, texts):
        self.texts, self.calls = texts, []

    def __call__(self, model, tokenizer, **kw):
        return self

    def generate(self, prompts, params, *, keys=None, first_index=0, **kw):
        self.calls.append((list(keys), params.n, first_index))
        out = []
        for prompt in prompts:
            q = prompt.split("Question: ", 1)[1].split("\n", 1)[0]
            row = []
            for j in range(first_index, first_index + params.n):
                t = self.texts[q][j]
                row.append(Completion(t, TOK.encode(t), [-0.1 * (8 - j)] * len(t), "stop", 7, len(t), j, 0.5))
            out.append(row)
        return out


def test_early_stopped_sc_draws_fewer_samples_on_easy_problems_and_agrees_with_the_full_vote(monkeypatch):
    texts = {"half of one?": ["\\boxed{1/2}"] * 3 + ["\\boxed{0.5}"] * 2 + ["\\boxed{3}"] * 3,    # easy: 5 of 8
             "two plus two?": ["\\boxed{4}", "\\boxed{5}"] * 4,                                   # hard: all 8
             "three times three?": ["\\boxed{9}"] * 4 + ["\\boxed{8}", "\\boxed{9}", "x", "y"]}     # 6 of 8
    full_engine = IndexedEngine(texts)
    monkeypatch.setattr(pipelines, "Engine", full_engine)
    full = make_pipeline("sc", n=8, seed=1).run(_engine(), PROBLEMS)
    early_engine = IndexedEngine(texts)
    monkeypatch.setattr(pipelines, "Engine", early_engine)
    early = make_pipeline("sc", n=8, seed=1, early_stop=True).run(_engine(), PROBLEMS)
    assert [len(r.samples) for r in early] == [5, 8, 6] and [len(r.samples) for r in full] == [8, 8, 8]
    assert [(r.answer, r.final_index, r.correct) for r in early] == [(r.answer, r.final_index, r.correct)
                                                                     for r in full]
    # b's 4-4 tie goes to "5", seen second: its samples 1, 3, 5, 7 have the higher mean log-prob (-0.4 vs -0.5)
    assert full[1].answer == "5" and full[1].vote["tie"] and full[1].vote["tiebreak"]["scores"] == [-0.5, -0.4]
    # rounds: 5 samples for all, then one more for the two open problems, then one for b alone, ...
    assert early_engine.calls == [(["a", "b", "c"], 5, 0), (["b", "c"], 1, 5), (["b"], 1, 6), (["b"], 1, 7)]
    assert early[0].vote["drawn"] == 5
    # each round is one prefill: a's 5 samples from one call cost one prefill + (g - 1) steps each
    g = [len(t) for t in texts["half of one?"][:5]]
    assert early[0].cost == Cost(5 * 7, sum(g), 1 + sum(x - 1 for x in g), 2.5)
    gb = [len(t) for t in texts["two plus two?"]]
    assert early[1].cost.forward_passes == 4 + sum(x - 1 for x in gb)  # four calls, four prefills
    assert make_pipeline("sc", early_stop=True).label() == "sc8-early"


def test_first_index_draws_the_samples_a_larger_n_would_draw():
    import torch

    from spine.engine import Engine
    from spine.model import GPT

    torch.manual_seed(0)
    model = GPT.from_preset("gpt2-tiny", vocab_size=257).eval()
    eng = Engine(model, TOK, batch_size=3)
    params = SamplingParams(temperature=1.0, seed=5, max_new_tokens=6)
    whole = eng.generate(["ab", "cde"], dataclasses.replace(params, n=5), keys=["x", "y"])
    head = eng.generate(["ab", "cde"], dataclasses.replace(params, n=2), keys=["x", "y"])
    tail = eng.generate(["ab", "cde"], dataclasses.replace(params, n=3), keys=["x", "y"], first_index=2)
    for w, h, t in zip(whole, head, tail):
        assert [c.token_ids for c in w] == [c.token_ids for c in h + t]
        assert [c.index for c in h + t] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="first_index must be an integer >= 0"):
        eng.generate(["ab"], params, first_index=-1)


def test_sc_cost_with_the_real_engine_equals_the_completions():
    import torch

    from spine.model import GPT

    torch.manual_seed(0)
    model = GPT.from_preset("gpt2-tiny", vocab_size=257).eval()
    engine = ProblemEngine(model, TOK, template="synthetic", batch_size=4)
    sc = make_pipeline("sc", n=6, seed=2, max_new_tokens=10, early_stop=True, round_size=2)
    for r in sc.run(engine, PROBLEMS):
        comps = [s.completion for s in r.samples]
        calls = 1 + (len(comps) - 4 + 1) // 2  # 4 = 6 // 2 + 1 first, then rounds of 2
        prompt = len(TOK.encode(engine.prompt_for(r.problem)))
        assert r.cost.generated_tokens == sum(c.generated_tokens for c in comps) == r.tokens
        assert r.cost.prompt_tokens == len(comps) * prompt == sum(c.prompt_tokens for c in comps)
        assert r.cost.forward_passes == calls + sum(c.generated_tokens - 1 for c in comps)
        assert [c.index for c in comps] == list(range(len(comps)))


# ----------------------------------------------------------------------------- spine eval / spine report
@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    import torch

    from spine.checkpoint import save_checkpoint
    from spine.config import ModelConfig
    from spine.model import GPT

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(d, GPT(ModelConfig.from_preset("gpt2-tiny", vocab_size=257, context_length=256)), TOK)
    return d


def _cli(capsys, *args):
    from spine.commands import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_spine_eval_runs_every_pipeline_and_report_draws_the_frontier(capsys, tiny_ckpt, tmp_path):
    from spine.traces import read_traces

    base = ["eval", "--checkpoint", tiny_ckpt, "--problems", "synthetic:level=1,n=3,seed=7,split=eval",
            "--template", "synthetic", "--sampling.max_new_tokens", 6, "--device", "cpu"]
    runs = {"greedy": [], "sc-early": ["--pipeline", "sc", "--early_stop", "true", "--sampling.n", 4],
            "bon-verify": ["--pipeline", "bestofn", "--scorer", "self_verify", "--sampling.n", 3],
            "bon-oracle": ["--pipeline", "bestofn", "--scorer", "oracle", "--sampling.n", 3],
            "refine": ["--pipeline", "refine", "--rounds", 2, "--scorer", "heuristic"]}
    paths = []
    for name, extra in runs.items():
        path = tmp_path / f"{name}.jsonl"
        code, out, err = _cli(capsys, *base, *extra, "--traces", path)
        assert code == 0, err
        assert "cost per problem:" in out
        paths.append(path)
        _, records = read_traces(path)
        for r in records:  # every record's cost is its completion's: tokens = generated tokens
            assert r.tokens == r.metadata["cost"]["generated_tokens"] and r.tokens >= 1
    assert "(oracle: an upper bound, not a method)" in _cli(capsys, *base, *runs["bon-oracle"], "--traces",
                                                            paths[3])[1]
    _, refine = read_traces(paths[4])
    assert {r.round for r in refine} >= {0} and all(r.parent is None for r in refine if r.round == 0)
    _, bon = read_traces(paths[2])
    assert all(0.0 <= r.metadata["score"] <= 1.0 for r in bon)
    # self-verification is charged: 4 teacher-forced rows per sample
    assert all(r.metadata["cost"]["forward_passes"] >= 4 for r in bon)
    png = {k: tmp_path / f"{k}.png" for k in ("frontier", "k", "rounds")}
    code, out, err = _cli(capsys, "report", *paths, "--frontier", png["frontier"], "--png", png["k"],
                          "--rounds_png", png["rounds"])
    assert code == 0, err
    assert "## compute/quality frontier" in out and "bestofn3-oracle-upper-bound (upper bound)" in out
    assert "| round |" in out and "best by score" in out
    for p in png.values():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, message", [
    (["--pipeline", "sc", "--scorer", "heuristic"], "--scorer does not apply to --pipeline sc"),
    (["--pipeline", "greedy", "--rounds", 2], "--rounds does not apply to --pipeline greedy"),
    (["--pipeline", "bestofn", "--scorer", "prm"], "unknown scorer 'prm'; known: heuristic, judge, mean_logprob"),
    (["--pipeline", "bestofn", "--scorer", "judge"], "judge scorer: needs scorer_args {endpoint: URL, model: NAME}"),
    (["--pipeline", "refine", "--rounds", -1], "refine: rounds must be an integer >= 0, got -1"),
    (["--pipeline", "sc", "--early_stop", "true", "--round_size", 0], "round_size must be an integer >= 1"),
    (["--pipeline", "beam"], "unknown pipeline 'beam'"),
])
def test_bad_pipeline_flags_are_one_line(capsys, tiny_ckpt, tmp_path, args, message):
    code, out, err = _cli(capsys, "eval", "--checkpoint", tiny_ckpt, "--problems", "synthetic:level=1,n=2,seed=7",
                          "--device", "cpu", "--traces", tmp_path / "t.jsonl", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "t.jsonl").exists()


def test_bad_report_flags_are_one_line(capsys, tmp_path):
    code, _, err = _cli(capsys, "report", tmp_path / "x.jsonl", "--frontier", tmp_path / "f.txt")
    assert code == 2 and "--frontier" in err and "expected a .png file name" in err
    assert len(err.strip().splitlines()) == 1


def test_report_vote_at_n_reproduces_sc_with_its_logprob_tiebreak(monkeypatch, tmp_path):
    from spine.reasoning.evaluate import evaluate
    from spine.reasoning.report import accuracy_at_k
    from spine.traces import read_traces

    texts = {"half of one?": ["\\boxed{3}", "\\boxed{1/2}"] * 4,   # 4-4 tie: 1/2 (odd samples) has the higher log-prob
             "two plus two?": ["\\boxed{4}", "\\boxed{5}"] * 4,    # 4-4 tie: 5 wins, wrong
             "three times three?": ["\\boxed{9}"] * 8}
    monkeypatch.setattr(pipelines, "Engine", IndexedEngine(texts))
    rep = evaluate(PROBLEMS, _engine(), make_pipeline("sc", n=8), trace_path=tmp_path / "sc.jsonl")
    assert [r.answer for r in rep.results] == ["1/2", "5", "9"] and rep.summary.n_correct == 2
    _, records = read_traces(tmp_path / "sc.jsonl")
    assert accuracy_at_k(records, ks=[8]) == {8: pytest.approx(2 / 3)}
    # the first-seen rule would have picked 3 and 4 (one right of three)
    first = make_pipeline("sc", n=8, tiebreak="first")
    monkeypatch.setattr(pipelines, "Engine", IndexedEngine(texts))
    assert [r.answer for r in first.run(_engine(), PROBLEMS)] == ["3", "4", "9"]
