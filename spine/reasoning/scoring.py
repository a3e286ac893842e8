"""Scorers: a number for each candidate answer, for best-of-N selection and for self-refinement's keep rule.

- `mean_logprob` / `sum_logprob`: the model's mean / summed token log-prob of the completion given the
  problem's prompt. For a completion sampled from that prompt this is `Completion.logprobs` (free: the
  engine returns them, equal to `spine.engine.sequence_logprobs`); for text written under another prompt
  (a revision) it is one teacher-forced forward over prompt + completion.
- `heuristic`: the reasoning book's heuristic (ch. 5): a bonus for a final `\\boxed{}` answer (a smaller
  one for a bare number), plus a brevity bonus that decays with the text's length in characters.
- `self_verify`: the model is asked whether the answer is right (`STEP_TEMPLATES["verify"]`); the score is
  P(yes) / (P(yes) + P(no)) with P summed over the spellings " yes"/" Yes" and " no"/" No", read off one
  batched teacher-forced forward (`sequence_logprobs`), no decoding.
- `oracle`: 1 when the answer is graded correct against the gold answer, else 0. It reads the gold answer,
  so it is an upper bound on what any scorer could pick, never a method (`upper_bound = True`; pipelines
  label their runs "oracle-upper-bound").

- `judge`: a judge model behind an OpenAI-compatible endpoint (`spine.serve.judge.JudgeScorer`, e.g. one
  started by `spine serve`), scoring each candidate on its rubric; an unparsable reply ranks last. Its
  compute happens elsewhere: the cost records only the wall time waited.

A scorer is `score(engine, items) -> (scores, costs)`: one float and one `Cost` per `ScoreItem`. More
scorers register with `@register_scorer("name")`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .cost import Cost
from .extract import extract
from .problems import Problem

if TYPE_CHECKING:  # pipelines imports this module
    from .pipelines import ProblemEngine, SampleResult

__all__ = ["SCORERS", "HeuristicScore", "JudgeScore", "LogprobScore", "OracleScore", "ScoreItem", "Scorer", "SelfVerifyScore",
           "heuristic_score", "make_scorer", "register_scorer", "teacher_forced_logprobs"]


@dataclass
class ScoreItem:
    """One candidate to score: `sample` answers `problem`, whose model input is `prompt`.
    `from_prompt`: the completion was sampled from `prompt` (so its log-probs are the model's under it);
    False for text written under another prompt (a revision), which the log-prob scorers rescore."""

    problem: Problem
    prompt: str
    sample: "SampleResult"
    from_prompt: bool = True


class Scorer:
    """Base class: `name`, `upper_bound` (reads the gold answer), `score`, `config`."""

    name = ""
    upper_bound = False

    def score(self, engine: "ProblemEngine", items: Sequence[ScoreItem]) -> tuple[list[float], list[Cost]]:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {"name": self.name}


SCORERS: dict[str, Callable[..., Scorer]] = {}


def register_scorer(*names: str) -> Callable[[type], type]:
    """Class decorator: make a scorer available to `make_scorer` (and `--scorer`) under each of `names`."""
    def deco(cls: type) -> type:
        for n in names:
            SCORERS[n] = cls
        return cls
    return deco


def make_scorer(name: str | Scorer, **kwargs: Any) -> Scorer:
    """A registered scorer by name (a `Scorer` instance is returned as is)."""
    if isinstance(name, Scorer):
        return name
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; known: {', '.join(sorted(SCORERS))}")
    try:
        return SCORERS[name](**kwargs)
    except TypeError as e:  # an option the scorer does not take
        raise ValueError(f"scorer {name!r}: {e}") from None


# ----------------------------------------------------------------------------- teacher forcing
def teacher_forced_logprobs(model, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                            batch_size: int = 16) -> tuple[list[list[float]], list[Cost]]:
    """Per-token log-probs of each continuation given its context (`spine.generation.score`, i.e.
    `sequence_logprobs`, batched), and each row's cost (its tokens, one forward pass, an even share of the
    time). A context too long for the model keeps its last tokens."""
    from ..generation import score

    ctx_len = model.config.context_length
    rows = []
    for i, (context, cont) in enumerate(pairs):
        cont = list(cont)
        if not cont or len(cont) >= ctx_len:
            raise ValueError(f"teacher_forced_logprobs: continuation {i} has {len(cont)} tokens; need 1 to "
                             f"{ctx_len - 1} (the model's context is {ctx_len})")
        context = list(context)[-(ctx_len - len(cont)):]
        if not context:
            raise ValueError(f"teacher_forced_logprobs: context {i} is empty")
        rows.append((context, cont))
    if not rows:
        return [], []
    t0 = time.perf_counter()
    scored = score(model, [c for c, _ in rows], [k for _, k in rows], batch_size=batch_size)
    seconds = (time.perf_counter() - t0) / len(rows)
    return ([list(s.token_logprobs) for s in scored],
            [Cost(prompt_tokens=len(c) + len(k), forward_passes=1, seconds=seconds) for c, k in rows])


# ----------------------------------------------------------------------------- scorers
@register_scorer("mean_logprob", "sum_logprob")
class LogprobScore(Scorer):
    """Mean (`mean_logprob`) or summed (`sum_logprob`) token log-prob of the completion under the problem's
    prompt. The sum favours short answers; the mean does not."""

    def __init__(self, reduce: str = "mean", batch_size: int = 16):
        if reduce not in ("mean", "sum"):
            raise ValueError(f"LogprobScore: reduce must be 'mean' or 'sum', got {reduce!r}")
        self.reduce, self.batch_size = reduce, batch_size
        self.name = f"{reduce}_logprob"

    def _value(self, lps: Sequence[float]) -> float:
        total = float(sum(lps))
        return total / max(1, len(lps)) if self.reduce == "mean" else total

    def score(self, engine, items):
        scores: list[float | None] = [None] * len(items)
        costs = [Cost()] * len(items)
        redo = []
        for i, it in enumerate(items):
            c = it.sample.completion
            if it.from_prompt or not c.token_ids:
                scores[i] = self._value(c.logprobs)
            else:
                redo.append(i)
        if redo:
            e = engine.engine
            pairs = [(e.encode(items[i].prompt, allowed_special="all" if engine.chat else frozenset()),
                      items[i].sample.completion.token_ids) for i in redo]
            lps, rcosts = teacher_forced_logprobs(e.model, pairs, batch_size=self.batch_size)
            for i, lp, rc in zip(redo, lps, rcosts):
                scores[i], costs[i] = self._value(lp), rc
        return [float(s) for s in scores], costs  # type: ignore[arg-type]

    def config(self):
        return {"name": self.name}


# make_scorer("sum_logprob") must build the summing variant
SCORERS["sum_logprob"] = lambda **kw: LogprobScore(reduce="sum", **kw)


def heuristic_score(text: str, *, boxed_bonus: float = 2.0, number_bonus: float = 1.0,
                    brevity_weight: float = 1.5, brevity_chars: float = 500.0) -> float:
    """The book's heuristic: `boxed_bonus` if the text ends in a `\\boxed{}`/`\\fbox{}` answer, else
    `number_bonus` if a bare number can be extracted, plus `brevity_weight * exp(-len(text) / brevity_chars)`."""
    method = extract(text).method
    bonus = boxed_bonus if method in ("boxed", "fbox") else number_bonus if method == "last_number" else 0.0
    return bonus + brevity_weight * math.exp(-len(text) / brevity_chars)


@register_scorer("heuristic")
class HeuristicScore(Scorer):
    """`heuristic_score` of the completion text (no model call)."""

    name = "heuristic"

    def __init__(self, boxed_bonus: float = 2.0, number_bonus: float = 1.0, brevity_weight: float = 1.5,
                 brevity_chars: float = 500.0):
        if brevity_chars <= 0:
            raise ValueError(f"heuristic scorer: brevity_chars must be > 0, got {brevity_chars}")
        self.kw = {"boxed_bonus": boxed_bonus, "number_bonus": number_bonus, "brevity_weight": brevity_weight,
                   "brevity_chars": brevity_chars}

    def score(self, engine, items):
        return [heuristic_score(it.sample.completion.text, **self.kw) for it in items], [Cost()] * len(items)

    def config(self):
        return {"name": self.name, **self.kw}


@register_scorer("self_verify")
class SelfVerifyScore(Scorer):
    """P(yes) / (P(yes) + P(no)) after the model is asked whether the answer is right: one teacher-forced
    forward per (candidate, spelling) row, batched; no decoding."""

    name = "self_verify"

    def __init__(self, yes: Sequence[str] = (" yes", " Yes"), no: Sequence[str] = (" no", " No"),
                 batch_size: int = 16):
        if not yes or not no:
            raise ValueError("self_verify scorer: needs at least one 'yes' and one 'no' spelling")
        self.yes, self.no, self.batch_size = tuple(yes), tuple(no), batch_size

    def score(self, engine, items):
        e = engine.engine
        special = "all" if engine.chat else frozenset()
        words = [e.encode(w, allowed_special=special) for w in self.yes + self.no]
        pairs = []
        for it in items:
            ctx = e.encode(engine.step_prompt(it.problem, "verify", answer=it.sample.completion.text),
                           allowed_special=special)
            pairs += [(ctx, w) for w in words]
        lps, rcosts = teacher_forced_logprobs(e.model, pairs, batch_size=self.batch_size)
        k, ny = len(words), len(self.yes)
        scores, costs = [], []
        for i in range(len(items)):
            seq = [sum(lp) for lp in lps[i * k:(i + 1) * k]]
            log_yes, log_no = _logsumexp(seq[:ny]), _logsumexp(seq[ny:])
            scores.append(_sigmoid(log_yes - log_no))
            costs.append(Cost.total(rcosts[i * k:(i + 1) * k]))
        return scores, costs

    def config(self):
        return {"name": self.name, "yes": list(self.yes), "no": list(self.no)}


def _sigmoid(d: float) -> float:
    if d >= 0:
        return 1.0 / (1.0 + math.exp(-d))
    z = math.exp(d)
    return z / (1.0 + z)


def _logsumexp(xs: Sequence[float]) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


@register_scorer("oracle")
class OracleScore(Scorer):
    """1.0 for an answer graded correct, else 0.0: reads the gold answer, so an upper bound, not a method."""

    name = "oracle"
    upper_bound = True

    def score(self, engine, items):
        return [1.0 if it.sample.verdict.correct else 0.0 for it in items], [Cost()] * len(items)


@register_scorer("judge")
class JudgeScore(Scorer):
    """Scores from a judge endpoint (`spine.serve.judge.JudgeScorer`, imported when built): the rubric's
    score of each candidate for the problem's question; an unparsable reply scores -inf (ranks last)."""

    name = "judge"

    def __init__(self, endpoint: str | None = None, model: str | None = None, rubric: str = "rfs-1-5",
                 concurrency: int = 4, **client_kwargs: Any):
        if not endpoint or not model:
            raise ValueError("judge scorer: needs scorer_args {endpoint: URL, model: NAME} (a judge served by "
                             "`spine serve` or any OpenAI-compatible server)")
        from ..serve.judge import JudgeScorer  # lazy: the serving stack is optional here

        self.endpoint, self.model, self.rubric = endpoint, model, rubric
        self.judge = JudgeScorer(endpoint, model, rubric, concurrency=concurrency, **client_kwargs)

    def score(self, engine, items):
        scores: list[float] = [0.0] * len(items)
        costs: list[Cost] = [Cost()] * len(items)
        by_problem: dict[str, list[int]] = {}
        for i, it in enumerate(items):
            by_problem.setdefault(it.problem.id, []).append(i)
        for idx in by_problem.values():
            t0 = time.perf_counter()
            got = self.judge(items[idx[0]].problem.prompt, [items[i].sample.completion.text for i in idx])
            share = (time.perf_counter() - t0) / len(idx)
            for i, g in zip(idx, got):
                scores[i] = float(g) if g is not None else float("-inf")
                costs[i] = Cost(seconds=share)
        return scores, costs

    def config(self):
        return {"name": self.name, "model": self.model, "rubric": self.rubric}
