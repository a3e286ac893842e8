"""Self-refinement: the stopping rule, the keep rule, parent links, costs, traces and accuracy by round.

The engine is a scripted fake keyed by the noise keys the pipeline passes ("<id>" for drafts,
"<id>/critique<r>" and "<id>/revise<r>" for rounds), and the scorer a table text -> score, so every
decision of the loop is known in advance.
"""
from __future__ import annotations

import json

import pytest

from spine.engine import Completion, SamplingParams
from spine.reasoning import pipelines
from spine.reasoning.cost import Cost
from spine.reasoning.evaluate import evaluate
from spine.reasoning.pipelines import ProblemEngine, make_pipeline
from spine.reasoning.problems import Problem
from spine.reasoning.refine import SelfRefine, same_answer
from spine.reasoning.report import accuracy_by_round, report
from spine.reasoning.scoring import Scorer
from spine.tokenizer import get_tokenizer
from spine.traces import read_traces

TOK = get_tokenizer("byte")


class KeyedEngine:
    """Stands in for `spine.engine.Engine`: the completion of a prompt is script[key]."""

    def __init__(self, script: dict[str, str]):
        self.script, self.calls = script, []

    def __call__(self, model, tokenizer, **kw):
        return self

    def generate(self, prompts, params, *, keys=None, **kw):
        self.calls.append({"prompts": list(prompts), "keys": list(keys), "params": params})
        return [[Completion(self.script[k], TOK.encode(self.script[k]), [-1.0] * len(self.script[k]), "stop",
                            len(TOK.encode(p)), len(self.script[k]), 0, 0.5)] for p, k in zip(prompts, keys)]


class TableScorer(Scorer):
    """score = table[text]; each call costs one forward per item (so costs can be checked)."""

    name = "table"

    def __init__(self, table: dict[str, float]):
        self.table = table
        self.seen: list[tuple[str, bool]] = []

    def score(self, engine, items):
        self.seen += [(it.sample.completion.text, it.from_prompt) for it in items]
        return [self.table[it.sample.completion.text] for it in items], [Cost(forward_passes=1)] * len(items)


P = Problem("p", "two plus two?", "4")


def _run(script, table, rounds=3, problems=(P,)):
    eng = KeyedEngine(script)
    pipelines_engine = pipelines.Engine
    pipelines.Engine = eng
    try:
        engine = ProblemEngine(None, TOK, template="synthetic")
    finally:
        pipelines.Engine = pipelines_engine
    scorer = TableScorer(table)
    res = SelfRefine(rounds=rounds, scorer=scorer).run(engine, list(problems))
    return res, eng, scorer


def test_stops_when_the_answer_repeats():
    script = {"p": " \\boxed{5}", "p/critique1": " looks fine", "p/revise1": " so \\boxed{5}"}
    (r,), eng, scorer = _run(script, {" \\boxed{5}": -1.0, " so \\boxed{5}": -0.5})
    assert r.details["refine_stop"] == "answer_repeated" and r.details["rounds"] == 1
    assert len(r.samples) == 2 and len(eng.calls) == 3  # draft, critique, revision: no second round
    assert r.final_index == 1 and r.answer == "5" and not r.correct  # kept (higher score), same answer


def test_keeps_an_improvement_then_stops_when_the_score_does_not_improve():
    script = {"p": " \\boxed{5}", "p/critique1": " 2+2 is not 5", "p/revise1": " 2 + 2 = 4. \\boxed{4}",
              "p/critique2": " fine", "p/revise2": " \\boxed{3}"}
    (r,), eng, scorer = _run(script, {" \\boxed{5}": -2.0, " 2 + 2 = 4. \\boxed{4}": -1.0, " \\boxed{3}": -1.5})
    assert r.details["refine_stop"] == "no_improvement" and r.details["rounds"] == 2
    assert [s.round for s in r.samples] == [0, 1, 2] and [s.parent for s in r.samples] == [None, 0, 1]
    assert [s.details.get("kept") for s in r.samples] == [None, True, False]
    assert r.final_index == 1 and r.answer == "4" and r.correct
    assert r.samples[1].details["critique"] == " 2+2 is not 5"
    # round 2 critiques round 1's (kept) answer
    assert eng.calls[3]["keys"] == ["p/critique2"] and " 2 + 2 = 4. \\boxed{4}" in eng.calls[3]["prompts"][0]
    # drafts are scored as sampled; revisions are rescored as answers to the original prompt
    assert scorer.seen == [(" \\boxed{5}", True), (" 2 + 2 = 4. \\boxed{4}", False), (" \\boxed{3}", False)]


def test_equal_score_with_a_new_answer_is_kept_but_stops():
    script = {"p": " \\boxed{5}", "p/critique1": " hm", "p/revise1": " \\boxed{4}"}
    (r,), _, _ = _run(script, {" \\boxed{5}": -1.0, " \\boxed{4}": -1.0})
    assert r.details["refine_stop"] == "no_improvement" and r.final_index == 1 and r.correct


def test_round_cap_and_zero_rounds():
    script = {"p": " \\boxed{1}"}
    table = {" \\boxed{1}": -5.0}
    for k in (1, 2):
        script |= {f"p/critique{k}": " no", f"p/revise{k}": f" \\boxed{{{k + 1}}}"}
        table[f" \\boxed{{{k + 1}}}"] = -5.0 + k
    (r,), eng, _ = _run(script, table, rounds=2)
    assert r.details["refine_stop"] == "round_cap" and len(r.samples) == 3 and r.final_index == 2
    assert len(eng.calls) == 5
    (r,), eng, _ = _run(script, table, rounds=0)
    assert r.details["refine_stop"] == "round_cap" and len(r.samples) == 1 and len(eng.calls) == 1


def test_problems_stop_independently_and_cost_adds_up():
    q = Problem("q", "three times three?", "9")
    script = {"p": " \\boxed{5}", "p/critique1": " ok", "p/revise1": " \\boxed{5}",
              "q": " \\boxed{8}", "q/critique1": " no", "q/revise1": " \\boxed{9}",
              "q/critique2": " ok", "q/revise2": " \\boxed{9}"}
    res, eng, _ = _run(script, {" \\boxed{5}": -1.0, " \\boxed{8}": -1.0, " \\boxed{9}": 0.0}, problems=(P, q))
    assert [r.details["refine_stop"] for r in res] == ["answer_repeated", "answer_repeated"]
    assert [len(r.samples) for r in res] == [2, 3]
    assert eng.calls[3]["keys"] == ["q/critique2"]  # p had stopped: round 2 decodes q alone
    r = res[1]
    prompt = len(TOK.encode("Question: three times three?\nAnswer:"))
    crit1_prompt = len(TOK.encode(eng.calls[1]["prompts"][1]))
    rev1_prompt = len(TOK.encode(eng.calls[2]["prompts"][1]))
    # round 1 = its critique + its revision (one prefill each) + one scoring forward
    g_c, g_r = len(" no"), len(" \\boxed{9}")
    assert r.samples[1].spent == Cost(crit1_prompt + rev1_prompt, g_c + g_r, (1 + g_c - 1) + (1 + g_r - 1) + 1, 1.0)
    assert r.samples[0].spent == Cost(prompt, len(" \\boxed{8}"), len(" \\boxed{8}") + 1, 0.5)
    assert r.cost == Cost.total(s.spent for s in r.samples)


def test_same_answer():
    assert same_answer("0.5", "1/2") and same_answer(" 4", "4.") and same_answer(None, None)
    assert not same_answer("4", None) and not same_answer("4", "5")


def test_refine_traces_link_rounds_and_report_accuracy_by_round(tmp_path, monkeypatch):
    q = Problem("q", "three times three?", "9")
    script = {"p": " \\boxed{5}", "p/critique1": " no", "p/revise1": " \\boxed{4}",
              "p/critique2": " ok", "p/revise2": " \\boxed{4}",
              "q": " \\boxed{9}", "q/critique1": " ok", "q/revise1": " \\boxed{8}"}
    monkeypatch.setattr(pipelines, "Engine", KeyedEngine(script))
    engine = ProblemEngine(None, TOK, template="synthetic")
    table = {" \\boxed{5}": -2.0, " \\boxed{4}": -1.0, " \\boxed{9}": -1.0, " \\boxed{8}": -3.0}
    pipe = SelfRefine(rounds=3, scorer=TableScorer(table))
    path = tmp_path / "refine.jsonl"
    rep = evaluate([P, q], engine, pipe, trace_path=path)
    assert (rep.summary.n, rep.summary.n_correct) == (2, 2)
    _, records = read_traces(path)
    by = {(r.problem_id, r.sample_index): r for r in records}
    assert [(by["p", i].round, by["p", i].parent) for i in range(3)] == [(0, None), (1, 0), (2, 1)]
    # round 2 repeats round 1's answer with an equal score: kept (not worse), and the loop stops
    assert by["p", 2].metadata["final"] and not by["p", 1].metadata["final"] and by["p", 2].metadata["kept"]
    assert by["p", 2].metadata["refine_stop"] == "answer_repeated"
    assert by["q", 0].metadata["final"] and by["q", 0].metadata["refine_stop"] == "no_improvement"
    assert by["p", 1].tokens == len(" no") + len(" \\boxed{4}")
    assert by["p", 1].metadata["cost"]["forward_passes"] == len(" no") + len(" \\boxed{4}") + 1
    assert accuracy_by_round(records) == {0: (1, 2), 1: (2, 2), 2: (2, 2)}
    text = report([path], rounds_png=tmp_path / "rounds.png", print_it=False)
    assert "| round | 0 | 1 | 2 |" in text and "| accuracy | 50.0% | 100.0% | 100.0% |" in text
    assert (tmp_path / "rounds.png").read_bytes()[:4] == b"\x89PNG"
    # a rerun resumes: nothing is redone
    assert evaluate([P, q], engine, pipe, trace_path=path).skipped == 2
    assert json.loads(path.read_text().splitlines()[0])["config"]["pipeline"]["rounds"] == 3


def test_refine_options():
    assert make_pipeline("refine").label() == "refine3-mean_logprob"
    assert make_pipeline("refine", rounds=1, scorer="oracle").label() == "refine1-oracle-upper-bound"
    assert make_pipeline("refine").sampling == SamplingParams()  # greedy drafts, critiques, revisions
    with pytest.raises(ValueError, match="rounds must be an integer >= 0"):
        make_pipeline("refine", rounds=-1)
    with pytest.raises(ValueError, match="takes no option early_stop"):
        make_pipeline("refine", early_stop=True)
