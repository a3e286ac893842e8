"""Reasoning pipelines: generate → select (→ refine → verify), each result carrying its cost.

A `ProblemEngine` turns problems into prompts (template, chat template) and hands them to the one
decode loop, `spine.engine.Engine`, with the problem ids as sample keys: a sample's noise depends on
(seed, problem id, sample index) only, so a resumed or re-chunked sampled run reproduces its samples.
A `Pipeline` decides how many samples to draw (its `SamplingParams`) and how to pick an answer:

- `SingleSample`: one completion per problem (greedy by default, or sampled);
- `SelfConsistency`: n sampled completions per problem sharing one prefill, majority vote over
  *graded-equivalent* answers (`spine.reasoning.vote`); ties are reported and go to the answer seen first.

New pipelines register with `@register("name", "alias", ...)` and implement `config()` and `run()`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

from ..engine import Completion, Engine, SamplingParams
from .extract import extract
from .grade import Verdict, grade
from .problems import Problem
from .prompts import render_chat_prompt, render_prompt
from .vote import majority_vote

__all__ = ["Completion", "PIPELINES", "Pipeline", "ProblemEngine", "ProblemResult", "SampleResult",
           "SelfConsistency", "SingleSample", "make_pipeline", "majority_vote", "register", "sampling_with"]


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

    def sample(self, problems: Sequence[Problem], params: SamplingParams) -> list[list[Completion]]:
        """`params.n` completions per problem, keyed by problem id; long prompts keep their last tokens."""
        return self.engine.generate([self.prompt_for(p) for p in problems], params, keys=[p.id for p in problems],
                                    on_overflow="truncate", allowed_special="all" if self.chat else frozenset())


@dataclass
class SampleResult:
    completion: Completion
    answer: str | None
    method: str
    verdict: Verdict


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

    @property
    def tokens(self) -> int:
        return sum(s.completion.generated_tokens for s in self.samples)

    @property
    def prompt_tokens(self) -> int:
        return sum(s.completion.prompt_tokens for s in self.samples)

    @property
    def seconds(self) -> float:
        return sum(s.completion.seconds for s in self.samples)


class Pipeline(Protocol):
    name: str

    def config(self) -> dict[str, Any]: ...

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


@register("greedy", "single")
class SingleSample(_Sampled):
    """One completion per problem; greedy unless the sampling temperature is > 0 (`n` is ignored)."""

    name = "single"

    def run(self, engine: ProblemEngine, problems: Sequence[Problem]) -> list[ProblemResult]:
        params = dataclasses.replace(self.sampling, n=1)
        results = []
        for p, row in zip(problems, engine.sample(problems, params)):
            s = graded(p, row[0], self.grade_timeout_s)
            results.append(ProblemResult(p, engine.prompt_for(p), [s], 0, s.answer, s.verdict.correct,
                                         s.verdict.rule))
        return results


@register("sc", "self_consistency")
class SelfConsistency(_Sampled):
    """n sampled completions per problem (one shared prefill each), majority vote over equivalent answers."""

    name = "self_consistency"
    default_sampling = SamplingParams(temperature=0.8, n=8)

    def run(self, engine: ProblemEngine, problems: Sequence[Problem]) -> list[ProblemResult]:
        results = []
        for p, row in zip(problems, engine.sample(problems, self.sampling)):
            samples = [graded(p, c, self.grade_timeout_s) for c in row]
            idx, vote = majority_vote([s.answer for s in samples])
            prompt = engine.prompt_for(p)
            if idx is None:
                results.append(ProblemResult(p, prompt, samples, 0, None, False, "no_answer", vote))
            else:
                v = samples[idx].verdict
                results.append(ProblemResult(p, prompt, samples, idx, samples[idx].answer, v.correct, v.rule, vote))
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


def make_pipeline(name: str, *, sampling: SamplingParams | Mapping[str, Any] | None = None,
                  **kwargs: Any) -> Pipeline:
    """A registered pipeline by name; `sampling` (shared settings, e.g. max_new_tokens and stop strings)
    overridden by any SamplingParams field in `kwargs` (e.g. n=5, temperature=0.7); the rest of
    `kwargs` go to the pipeline's constructor."""
    if name not in PIPELINES:
        raise ValueError(f"unknown pipeline {name!r}; known: {', '.join(sorted(PIPELINES))}")
    cls = PIPELINES[name]
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in _FIELDS}
    return cls(sampling=sampling_with(sampling, cls.default_sampling, **overrides), **kwargs)
