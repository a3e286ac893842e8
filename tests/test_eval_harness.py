"""The evaluation harness `spine.reasoning.evaluate`: accuracy, groups, Wilson CI, traces, resume.

Most tests use a scripted engine (its `sample` returns fixed texts), so accuracies are exact; the
last ones run a real tiny GPT with the byte tokenizer: the records' shape, and sampled runs that are
re-chunked or resumed drawing exactly the samples of one uninterrupted run.
"""
from __future__ import annotations

import json

import pytest
import torch

from spine.config import ModelConfig
from spine.model import GPT
from spine.reasoning.evaluate import evaluate
from spine.reasoning.grade import answers_equivalent
from spine.engine import Completion, SamplingParams
from spine.reasoning.pipelines import ProblemEngine, SelfConsistency, SingleSample, make_pipeline
from spine.reasoning.problems import Problem, load_problems
from spine.reasoning.report import accuracy_at_k
from spine.tokenizer import get_tokenizer
from spine.traces import read_traces

TOK = get_tokenizer("byte")


class ScriptedEngine(ProblemEngine):
    """A ProblemEngine whose completions come from a script: prompt text -> texts, used in order."""

    def __init__(self, scripts: dict[str, list[str]], **kw):
        super().__init__(None, TOK, template="plain", **kw)
        self.scripts = {k: list(v) for k, v in scripts.items()}
        self.prompts_seen: list[str] = []

    def sample(self, problems, params):
        prompts = [self.prompt_for(p) for p in problems]
        self.prompts_seen.extend(prompts)
        return [[Completion(self.scripts[p].pop(0), [1] * 10, [0.0] * 10, "stop", 3, 10, j, 0.5)
                 for j in range(params.n)] for p in prompts]


# five problems over two levels; greedy answers: three right (two at level 1, one at level 2)
PROBLEMS = [
    Problem("p1", "one plus one", "2", {"level": 1}),
    Problem("p2", "half", "1/2", {"level": 1}),
    Problem("p3", "ten", "10", {"level": 1}),
    Problem("p4", "a root", "\\sqrt{2}", {"level": 2}),
    Problem("p5", "pi", "\\pi", {"level": 2}),
]
GREEDY = {"one plus one": ["\\boxed{2}"], "half": ["\\boxed{0.5}"], "ten": ["\\boxed{11}"],
          "a root": ["\\boxed{2^{1/2}}"], "pi": ["the answer is 3"]}
# three samples each; majority: p1 2 (ok), p2 1/2 via equivalent forms (ok), p3 none (wrong),
# p4 tie 3 vs 2 -> 3 first (wrong), p5 \pi (ok)
SC = {"one plus one": ["\\boxed{2}", "\\boxed{3}", "\\boxed{2.0}"],
      "half": ["\\boxed{7}", "\\boxed{\\frac12}", "\\boxed{0.5}"],
      "ten": ["nothing", "no", "none"],
      "a root": ["\\boxed{3}", "\\boxed{2}", "nothing"],
      "pi": ["\\boxed{\\pi}", "\\boxed{\\pi}", "\\boxed{3.14}"]}


def test_accuracy_groups_and_wilson_interval(tmp_path):
    rep = evaluate(PROBLEMS, ScriptedEngine(GREEDY), SingleSample(), trace_path=tmp_path / "t.jsonl")
    s = rep.summary
    assert (s.n, s.n_correct, s.accuracy) == (5, 3, 0.6)
    # Wilson 95% interval for 3/5, computed by hand: 0.2307 .. 0.8824
    assert s.ci95 == pytest.approx((0.2307, 0.8824), abs=1e-4)
    levels = s.by_group["level"]
    assert sorted(levels) == ["1", "2"]
    assert (levels["1"].n, levels["1"].n_correct) == (3, 2)
    assert (levels["2"].n, levels["2"].n_correct) == (2, 1)
    assert s.total_tokens == 50 and s.mean_seconds == 0.5
    assert [r.correct for r in rep.results] == [True, True, False, True, False]


def test_trace_lines_are_samples_with_one_final_per_problem(tmp_path):
    path = tmp_path / "sc.jsonl"
    rep = evaluate(PROBLEMS, ScriptedEngine(SC), make_pipeline("sc", n=3), trace_path=path, source="hand-made")
    lines = [json.loads(line) for line in path.read_text().split("\n") if line]
    assert lines[0]["type"] == "header" and lines[0]["config"]["source"] == "hand-made"
    records = lines[1:]
    assert len(records) == 5 * 3
    finals = [r for r in records if r["metadata"]["final"]]
    assert sorted(r["problem_id"] for r in finals) == ["p1", "p2", "p3", "p4", "p5"]
    assert all(r["metadata"]["n_samples"] == 3 for r in records)
    by_pid = {r["problem_id"]: r for r in finals}
    assert [by_pid[p]["correct"] for p in ["p1", "p2", "p3", "p4", "p5"]] == [True, True, False, False, True]
    assert by_pid["p2"]["extracted"] == "\\frac12" and by_pid["p2"]["sample_index"] == 1
    assert by_pid["p4"]["metadata"]["vote"]["tie"] is True
    assert by_pid["p3"]["rule"] == "no_answer"
    assert rep.summary.accuracy == 0.6
    # the report's vote over all n samples reproduces the pipeline's accuracy
    _, recs = read_traces(path)
    assert accuracy_at_k(recs, ks=[3], equivalent=answers_equivalent) == {3: 0.6}


def test_in_memory_summary_equals_the_traced_one(tmp_path):
    traced = evaluate(PROBLEMS, ScriptedEngine(SC), make_pipeline("sc", n=3), trace_path=tmp_path / "a.jsonl")
    memory = evaluate(PROBLEMS, ScriptedEngine(SC), make_pipeline("sc", n=3))
    assert memory.trace_path is None
    assert memory.summary.to_dict() == traced.summary.to_dict()


def test_resume_skips_done_problems(tmp_path):
    path = tmp_path / "r.jsonl"
    first = ScriptedEngine(GREEDY)
    evaluate(PROBLEMS[:3], first, SingleSample(), trace_path=path, chunk_size=2)
    assert len(first.prompts_seen) == 3
    second = ScriptedEngine(GREEDY)
    rep = evaluate(PROBLEMS, second, SingleSample(), trace_path=path)
    assert second.prompts_seen == ["a root", "pi"]  # only the two new problems ran
    assert rep.skipped == 3 and len(rep.results) == 2
    assert (rep.summary.n, rep.summary.n_correct) == (5, 3)  # resumed verdicts count
    third = ScriptedEngine(GREEDY)
    rep = evaluate(PROBLEMS, third, SingleSample(), trace_path=path)
    assert third.prompts_seen == [] and rep.skipped == 5 and rep.summary.n_correct == 3
    assert len(path.read_text().splitlines()) == 1 + 5


def test_resume_refuses_another_config(tmp_path):
    path = tmp_path / "r.jsonl"
    evaluate(PROBLEMS, ScriptedEngine(GREEDY), SingleSample(), trace_path=path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=f"trace file {path} was written by another run config"):
        evaluate(PROBLEMS, ScriptedEngine(GREEDY), SingleSample(SamplingParams(temperature=0.5)), trace_path=path)
    with pytest.raises(ValueError, match="another run config"):
        evaluate(PROBLEMS, ScriptedEngine(GREEDY), SingleSample(SamplingParams(max_new_tokens=9)), trace_path=path)
    with pytest.raises(ValueError, match="another run config"):
        evaluate(PROBLEMS, ScriptedEngine(GREEDY), SingleSample(), trace_path=path, checkpoint_sha256="ab" * 32)
    assert path.read_bytes() == before  # nothing was appended


def test_bad_problem_lists():
    with pytest.raises(ValueError, match="no problems"):
        evaluate([], ScriptedEngine({}), SingleSample())
    with pytest.raises(ValueError, match="duplicate problem ids"):
        evaluate([PROBLEMS[0], PROBLEMS[0]], ScriptedEngine(GREEDY), SingleSample())


def _tiny():
    torch.manual_seed(0)
    return GPT(ModelConfig.from_preset("gpt2-tiny", vocab_size=257, context_length=256)).eval()


SYNTH = "synthetic:level=1,n=6,seed=7,split=eval"
SAMPLED = make_pipeline("sc", n=3, temperature=1.0, seed=1, max_new_tokens=8, stop=("\nQuestion:",))


def test_real_tiny_gpt_writes_well_formed_records(tmp_path):
    problems = load_problems(SYNTH)[:4]
    engine = ProblemEngine(_tiny(), TOK, template="synthetic", batch_size=8)
    path = tmp_path / "real.jsonl"
    pipe = make_pipeline("sc", n=2, temperature=1.0, seed=1, max_new_tokens=8, stop=("\nQuestion:",))
    rep = evaluate(problems, engine, pipe, trace_path=path, source=SYNTH)
    header, records = read_traces(path)
    assert header["config"]["engine"]["template"] == "synthetic"
    assert len(records) == 8 and rep.summary.n == 4 and 0.0 <= rep.summary.accuracy <= 1.0
    gold = {p.id: p.answer for p in problems}
    for r in records:
        assert r.prompt.startswith("Question: ") and r.prompt.endswith("\nAnswer:")
        assert r.gold == gold[r.problem_id]
        assert 1 <= r.tokens <= 8 and r.seconds >= 0
        assert r.extraction_method in {"boxed", "fbox", "last_number", "none"}
        assert (r.extracted is None) == (r.extraction_method == "none")
        assert r.metadata["n_samples"] == 2 and r.metadata["level"] == 1
        assert r.metadata["finish_reason"] in {"stop", "length"}
        assert "solution" not in r.metadata
    assert sum(r.metadata["final"] for r in records) == 4


def _samples(path):
    return {(r.problem_id, r.sample_index): (r.completion, r.tokens) for r in read_traces(path)[1]}


def test_rechunked_and_resumed_sampled_runs_draw_identical_samples(tmp_path):
    problems = load_problems(SYNTH)
    model = _tiny()
    whole = tmp_path / "whole.jsonl"
    evaluate(problems, ProblemEngine(model, TOK, template="synthetic", batch_size=16), SAMPLED, trace_path=whole,
             chunk_size=64)
    # another batch size, chunks of one problem, and an interrupted run resumed in another order
    part = tmp_path / "part.jsonl"
    evaluate(problems[:2], ProblemEngine(model, TOK, template="synthetic", batch_size=2), SAMPLED, trace_path=part,
             chunk_size=1)
    rep = evaluate(problems[::-1], ProblemEngine(model, TOK, template="synthetic", batch_size=5), SAMPLED,
                   trace_path=part, chunk_size=3)
    assert rep.skipped == 2
    assert _samples(part) == _samples(whole)
    assert len(_samples(whole)) == 18 and len({c for c, _ in _samples(whole).values()}) > 6  # they really vary
