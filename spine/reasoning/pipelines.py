"""Reasoning pipelines: generate → select (→ refine → verify), each result carrying its cost.

A `ProblemEngine` turns problems into prompts (template, chat template) and hands them to the one
decode loop, `spine.engine.Engine`, with the problem ids as sample keys: a sample's noise depends on
(seed, problem id, sample index) only, so a resumed or re-chunked sampled run reproduces its samples.
A `Pipeline` decides how many samples to draw (its `SamplingParams`) and how to pick an answer:

- `SingleSample` ("greedy"): one completion per problem (greedy by default, or sampled);
- `SelfConsistency` ("sc"): n sampled completions per problem sharing one prefill, majority vote over
  *graded-equivalent* answers (`spine.reasoning.vote`), ties to the higher mean token log-prob; with
  `early_stop` it draws in rounds and stops once the leading answer can no longer be overtaken;
- `BestOfN` ("bestofn"): n samples, the one a scorer (`spine.reasoning.scoring`) rates highest;
- `SelfRefine` ("refine", in `spine.reasoning.refine`): draft → critique → revise with a keep rule and a
  stopping rule.

Every sample carries its `Cost` (`spine.reasoning.cost`: prompt tokens, generated tokens, forward passes,
seconds); a problem's cost is their sum. New pipelines register with `@register("name", "alias", ...)`
and implement `config()`, `label()` and `run()`.
"""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Protocol, Sequence

from ..engine import Completion, Engine, SamplingParams
from .cost import Cost, completion_costs
from .extract import extract
from .grade import Verdict, grade
from .problems import Problem
from .prompts import STEP_TEMPLATES, fill, render_chat_prompt, render_prompt
from .scoring import ScoreItem, make_scorer
from .vote import majority_vote, vote_settled

__all__ = ["BestOfN", "Completion", "Cost", "PIPELINES", "Pipeline", "ProblemEngine", "ProblemResult", "SampleResult",
           "SelfConsistency", "SingleSample", "graded", "graded_row", "make_pipeline", "majority_vote", "pipeline_options", "register",
           "sampling_with"]


class ProblemEngine:
    """Problems -> prompts -> completions through `spine.engine.Engine`.

    `chat=True` formats prompts with the tokenizer's chat template (Qwen3), with thinking on or off.
    What to sample (length, stop strings, temperature, n) is the pipeline's `SamplingParams`.
    """

    def __init__(self, model, tokenizer, *, template: str = "math", chat: bool = False,
                 enable_thinking: bool = False, batch_size: int = 16, compile: bool = False):
        if tokenizer is None:
            raise ValueError("ProblemEngine needs a tokenizer: the checkpoint has none (save it with its "
                             "tokenizer, or pass one explicitly)")
        if chat and not callable(getattr(tokenizer, "apply_chat_template", None)):
            raise ValueError(f"chat=True needs a tokenizer with a chat template; {type(tokenizer).__name__} has "
                             "none (use chat=False for base models)")
        render_prompt("x", template)  # fail now, with the list of templates, on an unknown name
        self.engine = Engine(model, tokenizer, batch_size=batch_size, compile=compile)
        self.tokenizer = tokenizer
        self.template, self.chat, self.enable_thinking = template, chat, enable_thinking

    def prompt_for(self, problem: Problem) -> str:
        """The model input for `problem`: the template, wrapped in the chat template when `chat`."""
        if self.chat:
            return render_chat_prompt(problem, self.tokenizer, self.template, enable_thinking=self.enable_thinking)
        return render_prompt(problem, self.template)

    def settings(self) -> dict[str, Any]:
        """What changes the completions besides the sampling settings (goes into the run config hash).
        The batch size is not part of it: it changes speed only."""
        return {"template": self.template, "chat": self.chat, "enable_thinking": self.enable_thinking}

    def step_prompt(self, problem: Problem, step: str, **values: str) -> str:
        """The model input of a later step (`STEP_TEMPLATES`: verify, critique, revise) for `problem`:
        the template filled with the problem's prompt and `values`; with `chat`, one user turn."""
        if step not in STEP_TEMPLATES:
            raise ValueError(f"unknown step template {step!r}; known: {', '.join(sorted(STEP_TEMPLATES))}")
        if not self.chat:
            return fill(STEP_TEMPLATES[step], prompt=self.prompt_for(problem), **values)
        text = fill(STEP_TEMPLATES[step], prompt=render_prompt(problem, self.template) + "\n", **values)
        return render_chat_prompt(text, self.tokenizer, "plain", enable_thinking=self.enable_thinking)

    def sample(self, problems: Sequence[Problem], params: SamplingParams, *,
               first_index: int = 0) -> list[list[Completion]]:
        """`params.n` completions per problem (sample indices `first_index`, ...), keyed by problem id;
        long prompts keep their last tokens."""
        return self.complete([self.prompt_for(p) for p in problems], params, keys=[p.id for p in problems],
                             first_index=first_index)

    def complete(self, prompts: Sequence[str], params: SamplingParams, *, keys: Sequence[str],
                 first_index: int = 0) -> list[list[Completion]]:
        """Completions of arbitrary prompts (critiques, revisions) with stable noise keys."""
        kw = {"first_index": first_index} if first_index else {}
        return self.engine.generate(list(prompts), params, keys=list(keys), on_overflow="truncate",
                                    allowed_special="all" if self.chat else frozenset(), **kw)


@dataclass
class SampleResult:
    """One graded candidate. `cost` is what it took (None: its completion alone, prefill included);
    `score` a scorer's value; `round`/`parent` place a refinement round in its chain; `details` go to
    the trace record's metadata."""

    completion: Completion
    answer: str | None
    method: str
    verdict: Verdict
    cost: Cost | None = None
    score: float | None = None
    round: int | None = None
    parent: int | None = None
    details: dict = field(default_factory=dict)

    @property
    def spent(self) -> Cost:
        return self.cost if self.cost is not None else completion_costs([self.completion])[0]


@dataclass
class ProblemResult:
    problem: Problem
    prompt: str
    samples: list[SampleResult]
    final_index: int           # which sample carries the chosen answer
    answer: str | None
    correct: bool
    rule: str
    vote: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # e.g. a refinement's stop reason

    @property
    def cost(self) -> Cost:
        """Everything spent on this problem: the sum of its samples' costs."""
        return Cost.total(s.spent for s in self.samples)

    @property
    def tokens(self) -> int:
        return self.cost.generated_tokens

    @property
    def prompt_tokens(self) -> int:
        return self.cost.prompt_tokens

    @property
    def seconds(self) -> float:
        return self.cost.seconds


class Pipeline(Protocol):
    name: str

    def config(self) -> dict[str, Any]: ...

    def label(self) -> str: ...

    def run(self, engine: ProblemEngine, problems: Sequence[Problem]) -> list[ProblemResult]: ...


PIPELINES: dict[str, type] = {}


def register(*names: str) -> Callable[[type], type]:
    """Class decorator: make a pipeline available to `make_pipeline` (and so to `spine eval`,
    `ReasoningEval`, `ReasoningEvalModule`) under each of `names`."""
    def deco(cls: type) -> type:
        for n in names:
            PIPELINES[n] = cls
        return cls
    return deco


def graded(problem: Problem, completion: Completion, timeout_s: float) -> SampleResult:
    """Extract the answer of one completion and grade it against the problem's gold answer."""
    if "task" in problem.metadata:  # task families grade with their own verifier (the RL reward)
        from .tasks import verify  # lazy: tasks import this package

        r = verify(problem, completion.text)
        return SampleResult(completion, r.extracted, "task" if r.extracted is not None else "none",
                            Verdict(r.correct, r.reason, r.extracted, problem.answer))
    ex = extract(completion.text)
    verdict = grade(ex.answer, problem.answer, timeout_s=timeout_s)
    return SampleResult(completion, ex.answer, ex.method, verdict)


def graded_row(problem: Problem, row: Sequence[Completion], timeout_s: float) -> list[SampleResult]:
    """`graded` for the completions one engine call drew for `problem`, each with its cost (the shared
    prefill charged to the first; `spine.reasoning.cost`)."""
    out = []
    for c, cost in zip(row, completion_costs(row)):
        s = graded(problem, c, timeout_s)
        s.cost = cost
        out.append(s)
    return out


class _Sampled:
    """Shared by pipelines: a `SamplingParams`, a grading time limit, and a config that names both."""

    name = ""
    default_sampling = SamplingParams()

    def __init__(self, sampling: SamplingParams | None = None, grade_timeout_s: float = 2.0):
        self.sampling = sampling if sampling is not None else self.default_sampling
        if not isinstance(self.sampling, SamplingParams):
            raise TypeError(f"{type(self).__name__}: sampling must be a SamplingParams, got {self.sampling!r}")
        self.grade_timeout_s = grade_timeout_s

    def config(self) -> dict[str, Any]:
        return {"pipeline": self.name, "sampling": self.sampling.to_dict()}

    def label(self) -> str:
        """Short name of the run for file names and plots (e.g. "sc8", "bestofn8-heuristic")."""
        short = next((k for k, v in PIPELINES.items() if v is type(self)), self.name)
        return f"{short}{self.sampling.n}" if self.sampling.n > 1 else short


@register("greedy", "single")
class SingleSample(_Sampled):
    """One completion per problem; greedy unless the sampling temperature is > 0 (`n` is ignored)."""

    name = "single"

    def label(self) -> str:
        return "greedy" if self.sampling.greedy else f"sample-t{self.sampling.temperature:g}"

    def run(self, engine: ProblemEngine, problems: Sequence[Problem]) -> list[ProblemResult]:
        params = dataclasses.replace(self.sampling, n=1)
        results = []
        for p, row in zip(problems, engine.sample(problems, params)):
            s = graded_row(p, row, self.grade_timeout_s)[0]
            results.append(ProblemResult(p, engine.prompt_for(p), [s], 0, s.answer, s.verdict.correct,
                                         s.verdict.rule))
        return results


@register("sc", "self_consistency")
class SelfConsistency(_Sampled):
    """n sampled completions per problem (one shared prefill each), majority vote over equivalent answers.

    tiebreak: "logprob" gives a tie to the group with the higher mean token log-prob, "first" to the group
    seen first. early_stop: draw n // 2 + 1 samples, then `round_size` more at a time, and stop as soon as
    the leading answer can no longer be overtaken (`vote_settled`); the samples drawn are the first ones a
    full run would draw (same noise), so the answer equals the full vote's whenever it stops early.
    """

    name = "self_consistency"
    default_sampling = SamplingParams(temperature=0.8, n=8)

    def __init__(self, sampling: SamplingParams | None = None, grade_timeout_s: float = 2.0,
                 early_stop: bool = False, round_size: int = 1, tiebreak: Literal["logprob", "first"] = "logprob"):
        super().__init__(sampling, grade_timeout_s)
        if isinstance(round_size, bool) or not isinstance(round_size, int) or round_size < 1:
            raise ValueError(f"self-consistency: round_size must be an integer >= 1, got {round_size!r}")
        if tiebreak not in ("logprob", "first"):
            raise ValueError(f"self-consistency: tiebreak must be 'logprob' or 'first', got {tiebreak!r}")
        self.early_stop, self.round_size, self.tiebreak = bool(early_stop), round_size, tiebreak

    def config(self) -> dict[str, Any]:
        cfg = {**super().config(), "tiebreak": self.tiebreak}
        if self.early_stop:
            cfg.update(early_stop=True, round_size=self.round_size)
        return cfg

    def label(self) -> str:
        return super().label() + ("-early" if self.early_stop else "")

    def run(self, engine: ProblemEngine, problems: Sequence[Problem]) -> list[ProblemResult]:
        n = self.sampling.n
        drawn: dict[str, list[SampleResult]] = {p.id: [] for p in problems}
        todo, k = list(problems), 0
        while todo:
            take = n if not self.early_stop else (n // 2 + 1 if k == 0 else min(self.round_size, n - k))
            more = {"first_index": k} if k else {}  # engines written before rounds take (problems, params)
            rows = engine.sample(todo, dataclasses.replace(self.sampling, n=take), **more)
            for p, row in zip(todo, rows):
                drawn[p.id] += graded_row(p, row, self.grade_timeout_s)
            k += take
            todo = [p for p in todo if k < n and not vote_settled([s.answer for s in drawn[p.id]], n)]
        results = []
        for p in problems:
            samples = drawn[p.id]
            tiebreak = [s.completion.mean_logprob for s in samples] if self.tiebreak == "logprob" else None
            idx, vote = majority_vote([s.answer for s in samples], tiebreak=tiebreak)
            if self.early_stop:
                vote["drawn"] = len(samples)
            prompt = engine.prompt_for(p)
            if idx is None:
                results.append(ProblemResult(p, prompt, samples, 0, None, False, "no_answer", vote))
            else:
                v = samples[idx].verdict
                results.append(ProblemResult(p, prompt, samples, idx, samples[idx].answer, v.correct, v.rule, vote))
        return results


@register("bestofn", "best_of_n")
class BestOfN(_Sampled):
    """n sampled completions per problem; the answer is the one `scorer` rates highest (the first on ties).

    scorer: mean_logprob, sum_logprob, heuristic, self_verify, or oracle (reads the gold answer: an upper
    bound, labelled so, never a method); `scorer_args` go to its constructor.
    """

    name = "best_of_n"
    default_sampling = SamplingParams(temperature=0.8, n=8)

    def __init__(self, sampling: SamplingParams | None = None, grade_timeout_s: float = 2.0,
                 scorer: str = "mean_logprob", scorer_args: Mapping[str, Any] | None = None):
        super().__init__(sampling, grade_timeout_s)
        self.scorer = make_scorer(scorer, **dict(scorer_args or {}))

    def config(self) -> dict[str, Any]:
        return {**super().config(), "scorer": self.scorer.config()}

    def label(self) -> str:
        return f"{super().label()}-{self.scorer.name}" + ("-upper-bound" if self.scorer.upper_bound else "")

    def run(self, engine: ProblemEngine, problems: Sequence[Problem]) -> list[ProblemResult]:
        rows = engine.sample(problems, self.sampling)
        per = [graded_row(p, row, self.grade_timeout_s) for p, row in zip(problems, rows)]
        prompts = [engine.prompt_for(p) for p in problems]
        items = [ScoreItem(p, prompt, s) for p, prompt, samples in zip(problems, prompts, per) for s in samples]
        scores, costs = self.scorer.score(engine, items)
        for it, sc, cost in zip(items, scores, costs):
            it.sample.score = sc
            it.sample.cost = it.sample.spent + cost
        results = []
        for p, prompt, samples in zip(problems, prompts, per):
            best = max(range(len(samples)), key=lambda i: (samples[i].score, -i))
            s = samples[best]
            details = {"scorer": self.scorer.name, "upper_bound": self.scorer.upper_bound}
            results.append(ProblemResult(p, prompt, samples, best, s.answer, s.verdict.correct, s.verdict.rule,
                                         details=details))
        return results


_FIELDS = {f.name for f in dataclasses.fields(SamplingParams)}


def sampling_with(base: SamplingParams | Mapping[str, Any] | None, default: SamplingParams,
                  **overrides: Any) -> SamplingParams:
    """`base` (or `default`) with `overrides`; a field `base` leaves at SamplingParams' own default
    takes `default`'s value (so a self-consistency run samples at 0.8 with n=8 unless told otherwise)."""
    if base is None:
        base = default
    if isinstance(base, Mapping):
        base = SamplingParams(**base)
    plain = SamplingParams()
    inherited = {f: getattr(default, f) for f in _FIELDS
                 if getattr(base, f) == getattr(plain, f) and getattr(default, f) != getattr(plain, f)}
    return dataclasses.replace(base, **{**inherited, **overrides})


def pipeline_options(name: str) -> list[str]:
    """The constructor options of a registered pipeline besides `sampling` (e.g. scorer, rounds)."""
    if name not in PIPELINES:
        raise ValueError(f"unknown pipeline {name!r}; known: {', '.join(sorted(PIPELINES))}")
    return [k for k in inspect.signature(PIPELINES[name].__init__).parameters if k not in ("self", "sampling")]


def make_pipeline(name: str, *, sampling: SamplingParams | Mapping[str, Any] | None = None,
                  **kwargs: Any) -> Pipeline:
    """A registered pipeline by name; `sampling` (shared settings, e.g. max_new_tokens and stop strings)
    overridden by any SamplingParams field in `kwargs` (e.g. n=5, temperature=0.7); the rest of
    `kwargs` go to the pipeline's constructor."""
    if name not in PIPELINES:
        raise ValueError(f"unknown pipeline {name!r}; known: {', '.join(sorted(PIPELINES))}")
    cls = PIPELINES[name]
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in _FIELDS}
    takes = pipeline_options(name)
    bad = sorted(set(kwargs) - set(takes))
    if bad:
        raise ValueError(f"pipeline {name!r} takes no option {', '.join(bad)} (its options: {', '.join(takes)}, "
                         "and the sampling fields)")
    return cls(sampling=sampling_with(sampling, cls.default_sampling, **overrides), **kwargs)


from . import refine as _refine  # noqa: E402,F401  (registers "refine"; it builds on the classes above)
