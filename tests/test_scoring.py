"""Scorers and best-of-N: values against hand computations and independent forwards; costs exact.

The log-prob scorers are checked against `sequence_logprobs` over prompt + completion (and, for rescored
text, against a plain full-logits forward); self-verification against P(yes)/(P(yes)+P(no)) computed from
the model's full logits by hand; the heuristic against the book's formula with hand-picked texts.
"""
from __future__ import annotations

import math

import pytest
import torch

from spine.engine import Completion, SamplingParams, sequence_logprobs
from spine.model import GPT
from spine.reasoning import pipelines
from spine.reasoning.cost import Cost
from spine.reasoning.pipelines import BestOfN, ProblemEngine, graded, make_pipeline
from spine.reasoning.problems import Problem
from spine.reasoning.scoring import ScoreItem, heuristic_score, make_scorer
from spine.tokenizer import get_tokenizer

TOK = get_tokenizer("byte")
PROBLEMS = [Problem("a", "two plus two?", "4"), Problem("b", "three times three?", "9")]


def _model() -> GPT:
    torch.manual_seed(0)
    return GPT.from_preset("gpt2-tiny", vocab_size=257).eval()


def _full_logprobs(model: GPT, ids: list[int]) -> torch.Tensor:
    """log-softmax of the model's logits at every position: an independent route to the log-probs."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids]))[0].float(), dim=-1)


# ----------------------------------------------------------------------------- heuristic
def test_heuristic_equals_the_books_formula_by_hand():
    assert heuristic_score("so \\boxed{4}") == pytest.approx(2.0 + 1.5 * math.exp(-12 / 500))
    assert heuristic_score("it is 4") == pytest.approx(1.0 + 1.5 * math.exp(-7 / 500))
    assert heuristic_score("no idea") == pytest.approx(1.5 * math.exp(-7 / 500))
    long = "x" * 1000 + " \\boxed{4}"
    assert heuristic_score(long) == pytest.approx(2.0 + 1.5 * math.exp(-len(long) / 500))
    assert heuristic_score("7", brevity_chars=10, brevity_weight=2.0, number_bonus=0.5) == \
        pytest.approx(0.5 + 2.0 * math.exp(-0.1))


# ----------------------------------------------------------------------------- log-prob scorers
def test_logprob_scorers_equal_sequence_logprobs_of_the_engines_completions():
    model = _model()
    engine = ProblemEngine(model, TOK, template="synthetic")
    rows = engine.sample(PROBLEMS, SamplingParams(temperature=1.0, n=3, seed=4, max_new_tokens=12))
    items = [ScoreItem(p, engine.prompt_for(p), graded(p, c, 2.0)) for p, row in zip(PROBLEMS, rows) for c in row]
    means, mcost = make_scorer("mean_logprob").score(engine, items)
    sums, scost = make_scorer("sum_logprob").score(engine, items)
    for it, m, s in zip(items, means, sums):
        prompt, comp = TOK.encode(it.prompt), it.sample.completion.token_ids
        ids = torch.tensor([prompt + comp])
        mask = torch.zeros_like(ids, dtype=torch.bool)
        mask[0, len(prompt):] = True
        with torch.no_grad():
            ref = sequence_logprobs(model, ids, mask)[0, len(prompt) - 1:].tolist()
        assert s == pytest.approx(sum(ref), abs=1e-4)
        assert m == pytest.approx(sum(ref) / len(ref), abs=1e-5)
    # read off the completions: no forward pass, no cost
    assert mcost == scost == [Cost()] * len(items)


def test_rescoring_text_written_under_another_prompt_is_one_teacher_forced_forward():
    model = _model()
    engine = ProblemEngine(model, TOK, template="synthetic")
    ids = TOK.encode(" 2 + 2 = 4. \\boxed{4}")
    c = Completion(TOK.decode(ids), ids, [0.0] * len(ids), "length", 99, len(ids))  # log-probs of another prompt
    item = ScoreItem(PROBLEMS[0], engine.prompt_for(PROBLEMS[0]), graded(PROBLEMS[0], c, 2.0), from_prompt=False)
    (score,), (cost,) = make_scorer("mean_logprob").score(engine, [item])
    prompt = TOK.encode(item.prompt)
    lp = _full_logprobs(model, prompt + ids)
    ref = [lp[len(prompt) - 1 + t, tok].item() for t, tok in enumerate(ids)]
    assert score == pytest.approx(sum(ref) / len(ref), abs=1e-5)
    assert (cost.prompt_tokens, cost.generated_tokens, cost.forward_passes) == (len(prompt) + len(ids), 0, 1)


# ----------------------------------------------------------------------------- self-verification
def test_self_verify_is_p_yes_over_p_yes_plus_no_from_the_full_logits():
    model = _model()
    engine = ProblemEngine(model, TOK, template="synthetic")
    texts = [" 4. \\boxed{4}", " 5"]
    items = [ScoreItem(PROBLEMS[0], engine.prompt_for(PROBLEMS[0]),
                       graded(PROBLEMS[0], Completion(t, TOK.encode(t), [], "stop", 1, 1), 2.0)) for t in texts]
    scores, costs = make_scorer("self_verify").score(engine, items)
    for it, score, cost in zip(items, scores, costs):
        ctx_text = ("Question: two plus two?\nAnswer:" + it.sample.completion.text +
                    "\n\nQuestion: Is the answer above correct? Answer yes or no.\nAnswer:")
        assert engine.step_prompt(it.problem, "verify", answer=it.sample.completion.text) == ctx_text
        ctx = TOK.encode(ctx_text)
        probs = {}
        for word in (" yes", " Yes", " no", " No"):
            w = TOK.encode(word)
            lp = _full_logprobs(model, ctx + w)
            probs[word] = math.exp(sum(lp[len(ctx) - 1 + t, tok].item() for t, tok in enumerate(w)))
        p_yes, p_no = probs[" yes"] + probs[" Yes"], probs[" no"] + probs[" No"]
        assert score == pytest.approx(p_yes / (p_yes + p_no), rel=1e-4)
        # four rows (one per spelling), each one forward over the context and the word
        assert cost.forward_passes == 4 and cost.generated_tokens == 0
        assert cost.prompt_tokens == 4 * len(ctx) + sum(len(TOK.encode(w)) for w in (" yes", " Yes", " no", " No"))


def test_self_verify_keeps_the_end_of_a_context_longer_than_the_model():
    model = _model()
    L = model.config.context_length  # 128
    engine = ProblemEngine(model, TOK, template="synthetic")
    text = " " + "1 + " * 40 + "1 = 41"
    item = ScoreItem(PROBLEMS[0], "", graded(PROBLEMS[0], Completion(text, TOK.encode(text), [], "stop", 1, 1), 2.0))
    (score,), (cost,) = make_scorer("self_verify").score(engine, [item])
    ctx = TOK.encode(engine.step_prompt(PROBLEMS[0], "verify", answer=text))
    assert len(ctx) > L
    p = {}
    for word in (" yes", " Yes", " no", " No"):
        w = TOK.encode(word)
        kept = ctx[-(L - len(w)):]  # each row is exactly the model's context long
        lp = _full_logprobs(model, kept + w)
        p[word] = math.exp(sum(lp[len(kept) - 1 + t, tok].item() for t, tok in enumerate(w)))
    assert score == pytest.approx((p[" yes"] + p[" Yes"]) / sum(p.values()), rel=1e-4)
    assert cost.prompt_tokens == 4 * L and cost.forward_passes == 4


# ----------------------------------------------------------------------------- oracle and registry
def test_oracle_reads_the_gold_answer_and_is_marked_an_upper_bound():
    oracle = make_scorer("oracle")
    items = [ScoreItem(PROBLEMS[0], "", graded(PROBLEMS[0], Completion(t, [1], [0.0], "stop", 1, 1), 2.0))
             for t in ("\\boxed{4}", "\\boxed{5}")]
    assert oracle.score(None, items)[0] == [1.0, 0.0]
    assert oracle.upper_bound and not make_scorer("heuristic").upper_bound
    assert make_pipeline("bestofn", scorer="oracle").label() == "bestofn8-oracle-upper-bound"
    assert make_pipeline("bestofn", scorer="heuristic", n=4).label() == "bestofn4-heuristic"


def test_bad_scorer_and_options_are_one_line_errors():
    with pytest.raises(ValueError, match=r"^unknown scorer 'prm'; known: heuristic, judge, mean_logprob, oracle, "
                                         r"self_verify, sum_logprob$"):
        make_pipeline("bestofn", scorer="prm")
    with pytest.raises(ValueError, match="scorer 'heuristic': .*unexpected keyword argument 'nope'"):
        make_pipeline("bestofn", scorer="heuristic", scorer_args={"nope": 1})
    with pytest.raises(ValueError, match="judge scorer: needs scorer_args"):
        make_pipeline("bestofn", scorer="judge")
    with pytest.raises(ValueError, match=r"pipeline 'sc' takes no option scorer \(its options: grade_timeout_s, "
                                         r"early_stop, round_size, tiebreak"):
        make_pipeline("sc", scorer="heuristic")
    with pytest.raises(ValueError, match="brevity_chars must be > 0"):
        make_pipeline("bestofn", scorer="heuristic", scorer_args={"brevity_chars": 0})


# ----------------------------------------------------------------------------- best-of-N
class FixedEngine:
    """Stands in for `spine.engine.Engine`: prompt -> fixed completions (texts), with known costs."""

    def __init__(self, texts: dict[str, list[str]]):
        self.texts, self.calls = texts, []

    def __call__(self, model, tokenizer, **kw):
        return self

    def generate(self, prompts, params, *, keys=None, **kw):
        self.calls.append((list(prompts), params, kw))
        out = []
        for prompt in prompts:
            q = prompt.split("Question: ", 1)[1].split("\n", 1)[0]
            out.append([Completion(t, TOK.encode(t) or [0], [-0.5 * (j + 1)] * max(1, len(t)), "stop",
                                   len(TOK.encode(prompt)), max(1, len(t)), j, 0.125)
                        for j, t in enumerate(self.texts[q][:params.n])])
        return out


def test_best_of_n_picks_the_highest_score_first_on_ties_and_counts_cost(monkeypatch):
    fake = FixedEngine({"two plus two?": ["long text then 5", "\\boxed{4}", "\\boxed{7}"],
                        "three times three?": ["9", "nine", "9"]})
    monkeypatch.setattr(pipelines, "Engine", fake)
    engine = ProblemEngine(None, TOK, template="synthetic")
    res = BestOfN(SamplingParams(temperature=0.8, n=3), scorer="heuristic").run(engine, PROBLEMS)
    a, b = res
    # "\\boxed{4}" and "\\boxed{7}" both have the boxed bonus and equal length: the first wins the tie
    assert a.final_index == 1 and a.answer == "4" and a.correct
    assert [s.score for s in a.samples] == pytest.approx([heuristic_score(t) for t in
                                                          ["long text then 5", "\\boxed{4}", "\\boxed{7}"]])
    assert b.final_index == 0 and b.correct  # "9" beats "nine" (no number) and ties the later "9"
    prompt_len = len(TOK.encode("Question: two plus two?\nAnswer:"))
    gen = [len("long text then 5"), len("\\boxed{4}"), len("\\boxed{7}")]
    # one prefill shared by the three samples + one decode step per token after the first
    assert a.cost == Cost(3 * prompt_len, sum(gen), 1 + sum(g - 1 for g in gen), 3 * 0.125)
    assert a.details == {"scorer": "heuristic", "upper_bound": False}


def test_best_of_n_by_mean_logprob_and_oracle(monkeypatch):
    fake = FixedEngine({"two plus two?": ["\\boxed{5}", "\\boxed{4}"], "three times three?": ["\\boxed{9}", "8"]})
    monkeypatch.setattr(pipelines, "Engine", fake)
    engine = ProblemEngine(None, TOK, template="synthetic")
    res = make_pipeline("bestofn", n=2, scorer="mean_logprob").run(engine, PROBLEMS)
    assert [r.final_index for r in res] == [0, 0]  # sample j has mean log-prob -0.5 (j + 1)
    assert [r.correct for r in res] == [False, True]
    res = make_pipeline("bestofn", n=2, scorer="oracle").run(engine, PROBLEMS)
    assert [r.final_index for r in res] == [1, 0] and all(r.correct for r in res)
    assert res[0].details["upper_bound"] is True


def test_judge_scorer_asks_the_judge_per_problem_and_ranks_unparsable_replies_last(monkeypatch):
    from spine.serve import judge

    asked = []

    class FakeJudge:
        def __init__(self, endpoint, model, rubric, **kw):
            assert (endpoint, model, rubric) == ("http://judge", "j", "rfs-1-5")

        def __call__(self, prompt, candidates, reference=None):
            asked.append((prompt, list(candidates)))
            return [None if c == "??" else float(len(c)) for c in candidates]

    monkeypatch.setattr(judge, "JudgeScorer", FakeJudge)
    scorer = make_scorer("judge", endpoint="http://judge", model="j")
    mk = lambda p, t: ScoreItem(p, "", graded(p, Completion(t, [1], [0.0], "stop", 1, 1), 2.0))  # noqa: E731
    items = [mk(PROBLEMS[0], "\\boxed{4}"), mk(PROBLEMS[1], "??"), mk(PROBLEMS[0], "4")]
    scores, costs = scorer.score(None, items)
    assert scores == [9.0, float("-inf"), 1.0]
    assert asked == [("two plus two?", ["\\boxed{4}", "4"]), ("three times three?", ["??"])]
    assert all(c.forward_passes == 0 and c.seconds >= 0 for c in costs)
