"""Reasoning pipelines: generate → select (→ refine → verify), each result carrying its cost.

An `Engine` turns problems into prompts and prompts into text completions (batched `generate`).
A `Pipeline` decides how many samples to draw and how to pick an answer. This module ships:

- `SingleSample`: one completion per problem (greedy by default, or sampled);
- `SelfConsistency`: N sampled completions per problem drawn in one batched call, majority vote
  over *graded-equivalent* answers (so "1/2" and "0.5" vote together); ties are reported and broken
  in favour of the answer that appeared first.

Later levers (best-of-N by `score`, self-refinement, GRPO rewards) implement the same `Pipeline.run`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from ..generation import generate
from .extract import extract
from .grade import Verdict, answers_equivalent, grade
from .problems import Problem
from .prompts import render_chat_prompt, render_prompt
from .report import normalize_vote


@dataclass
class Completion:
    """One generated sample: its text (cut at a stop string), cost and why it ended.

    `tokens` counts every generated token, also those after a stop string (they were paid for);
    `finish_reason` is "stop" (eos/stop token), "stop_string" (cut at a stop string) or "length".
    """

    text: str
    tokens: int
    seconds: float
    finish_reason: str


class Engine:
    """Model + tokenizer + prompt template → completions.

    `chat=True` formats prompts with the tokenizer's chat template (Qwen3), with thinking on or off.
    `stop_strings` cut a completion at the first occurrence (e.g. "\\nQuestion:" for models
    pretrained on concatenated problems). Generation stops at the tokenizer's eos id.
    Seconds are wall time of the batched call, shared equally by the samples it produced.
    """

    def __init__(self, model, tokenizer, *, template: str = "math", chat: bool = False,
                 enable_thinking: bool = False, max_new_tokens: int = 256, batch_size: int = 16,
                 stop_strings: Sequence[str] = (), stop_token_ids: Sequence[int] = ()):
        if tokenizer is None:
            raise ValueError("Engine needs a tokenizer: the checkpoint has none (save it with its tokenizer, "
                             "or pass one explicitly)")
        if max_new_tokens < 1 or batch_size < 1:
            raise ValueError(f"Engine: max_new_tokens and batch_size must be >= 1, got {max_new_tokens} and "
                             f"{batch_size}")
        if chat and not callable(getattr(tokenizer, "apply_chat_template", None)):
            raise ValueError(f"chat=True needs a tokenizer with a chat template; {type(tokenizer).__name__} has "
                             "none (use chat=False for base models)")
        self.model, self.tokenizer = model, tokenizer
        self.template, self.chat, self.enable_thinking = template, chat, enable_thinking
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.stop_strings = list(stop_strings)
        self.stop_token_ids = list(stop_token_ids)
        render_prompt("x", template)  # fail now, with the list of templates, on an unknown name

    def prompt_for(self, problem: Problem) -> str:
        """The model input for `problem`: the template, wrapped in the chat template when `chat`."""
        if self.chat:
            return render_chat_prompt(problem, self.tokenizer, self.template, enable_thinking=self.enable_thinking)
        return render_prompt(problem, self.template)

    def settings(self) -> dict[str, Any]:
        """What changes the completions (goes into the run config hash).

        The batch size is part of it: sampled completions are seeded per generation batch, so another
        batch size draws other samples (and greedy ones can round differently with other padding).
        """
        out = {"template": self.template, "chat": self.chat, "enable_thinking": self.enable_thinking,
               "max_new_tokens": self.max_new_tokens, "stop_strings": self.stop_strings,
               "batch_size": self.batch_size}
        if self.stop_token_ids:  # only when set, so older run configs keep their hash
            out["stop_token_ids"] = self.stop_token_ids
        return out

    def complete(self, prompts: Sequence[str], *, temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None) -> list[Completion]:
        """One completion per prompt, in order, generated `batch_size` prompts at a time.

        Batch `b` is seeded with `seed + b * batch_size`, so batches draw different noise. A row stops
        at EOS, at a stop token, or (checked every few tokens) once its text contains a stop string;
        the text is cut before the stop string, and `tokens` counts what was generated.
        """
        tok = self.tokenizer
        special = "all" if self.chat else frozenset()
        ids = [tok.encode(p, allowed_special=special) for p in prompts]
        out: list[Completion] = []
        for start in range(0, len(ids), self.batch_size):
            chunk = ids[start:start + self.batch_size]
            t0 = time.perf_counter()
            res = generate(self.model, chunk, max_new_tokens=self.max_new_tokens, temperature=temperature,
                           top_k=top_k, top_p=top_p, seed=None if seed is None else seed + start,
                           eos_id=tok.eos_id, stop_tokens=self.stop_token_ids or None, pad_id=tok.pad_id,
                           on_overflow="truncate", stop_when=self._stopped if self.stop_strings else None)
            dt = (time.perf_counter() - t0) / len(chunk)
            for toks, text, reason in zip(res.tokens, res.texts(tok), res.finish_reasons):
                cut = self._cut(text)
                out.append(Completion(cut, len(toks), dt, "stop_string" if cut != text else reason))
        return out

    def _stopped(self, tokens: list[int]) -> bool:
        """Whether generated `tokens` already contain a stop string (decoding of the row can end)."""
        text = self.tokenizer.decode(tokens)
        return self._cut(text) != text

    def _cut(self, text: str) -> str:
        """`text` up to the earliest occurrence of any stop string."""
        hits = [i for i in (text.find(s) for s in self.stop_strings if s) if i >= 0]
        return text[:min(hits)] if hits else text


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
        return sum(s.completion.tokens for s in self.samples)

    @property
    def seconds(self) -> float:
        return sum(s.completion.seconds for s in self.samples)


class Pipeline(Protocol):
    name: str

    def config(self) -> dict[str, Any]: ...

    def run(self, engine: Engine, problems: Sequence[Problem]) -> list[ProblemResult]: ...


def _graded(problem: Problem, completion: Completion, timeout_s: float) -> SampleResult:
    if "task" in problem.metadata:  # task families grade with their own verifier (the RL reward)
        from .tasks import verify  # lazy: tasks import this package

        r = verify(problem, completion.text)
        return SampleResult(completion, r.extracted, "task" if r.extracted is not None else "none",
                            Verdict(r.correct, r.reason, r.extracted, problem.answer))
    ex = extract(completion.text)
    verdict = grade(ex.answer, problem.answer, timeout_s=timeout_s)
    return SampleResult(completion, ex.answer, ex.method, verdict)


class SingleSample:
    """One completion per problem; greedy unless temperature > 0."""

    name = "single"

    def __init__(self, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                 seed: int = 0, grade_timeout_s: float = 2.0):
        self.temperature, self.top_k, self.top_p, self.seed = temperature, top_k, top_p, seed
        self.grade_timeout_s = grade_timeout_s

    def config(self) -> dict[str, Any]:
        return {"pipeline": self.name, "temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p,
                "seed": self.seed}

    def run(self, engine: Engine, problems: Sequence[Problem]) -> list[ProblemResult]:
        prompts = [engine.prompt_for(p) for p in problems]
        comps = engine.complete(prompts, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                                seed=self.seed)
        results = []
        for p, prompt, c in zip(problems, prompts, comps):
            s = _graded(p, c, self.grade_timeout_s)
            results.append(ProblemResult(p, prompt, [s], 0, s.answer, s.verdict.correct, s.verdict.rule))
        return results


def majority_vote(answers: Sequence[str | None]) -> tuple[int | None, dict[str, Any]]:
    """Index of the first sample of the winning answer group, and the vote's details.

    Answers are grouped with the group's first answer when their normalized text is equal (the
    same key as `spine.reasoning.report`) or the grader finds them equivalent ("1/2", "0.5",
    "\\frac12"); `None` (no answer) never votes. Ties go to the group seen first and are
    reported (`tie=True`), so `report.accuracy_at_k` at k = n reproduces the pipeline's accuracy.
    """
    groups: list[list[int]] = []
    keys: list[str] = []  # normalized text of each group's first answer: the cheap test before grading
    for i, a in enumerate(answers):
        if a is None:
            continue
        key = normalize_vote(a)
        for g, gkey in zip(groups, keys):
            if key == gkey or answers_equivalent(answers[g[0]], a):
                g.append(i)
                break
        else:
            groups.append([i])
            keys.append(key)
    if not groups:
        return None, {"groups": [], "tie": False, "winner_votes": 0, "abstained": len(answers)}
    best = max(len(g) for g in groups)
    leaders = [g for g in groups if len(g) == best]
    winner = leaders[0]
    info = {"groups": [{"answer": answers[g[0]], "votes": len(g)} for g in groups], "tie": len(leaders) > 1,
            "winner_votes": best, "abstained": sum(a is None for a in answers)}
    return winner[0], info


class SelfConsistency:
    """N sampled completions per problem (one batched call), majority vote over equivalent answers."""

    name = "self_consistency"

    def __init__(self, n: int = 8, temperature: float = 0.8, top_k: int | None = None, top_p: float | None = None,
                 seed: int = 0, grade_timeout_s: float = 2.0):
        if n < 1:
            raise ValueError(f"SelfConsistency: n must be >= 1, got {n}")
        self.n, self.temperature, self.top_k, self.top_p, self.seed = n, temperature, top_k, top_p, seed
        self.grade_timeout_s = grade_timeout_s

    def config(self) -> dict[str, Any]:
        return {"pipeline": self.name, "n": self.n, "temperature": self.temperature, "top_k": self.top_k,
                "top_p": self.top_p, "seed": self.seed}

    def run(self, engine: Engine, problems: Sequence[Problem]) -> list[ProblemResult]:
        prompts = [engine.prompt_for(p) for p in problems]
        flat = [pr for pr in prompts for _ in range(self.n)]
        comps = engine.complete(flat, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                                seed=self.seed)
        results = []
        for j, (p, prompt) in enumerate(zip(problems, prompts)):
            samples = [_graded(p, c, self.grade_timeout_s) for c in comps[j * self.n:(j + 1) * self.n]]
            idx, vote = majority_vote([s.answer for s in samples])
            if idx is None:
                results.append(ProblemResult(p, prompt, samples, 0, None, False, "no_answer", vote))
            else:
                v = samples[idx].verdict
                results.append(ProblemResult(p, prompt, samples, idx, samples[idx].answer, v.correct, v.rule, vote))
        return results


PIPELINES = {"single": SingleSample, "greedy": SingleSample, "self_consistency": SelfConsistency,
             "sc": SelfConsistency}


def make_pipeline(name: str, **kwargs: Any) -> Pipeline:
    """A pipeline by name: "single"/"greedy" or "self_consistency"/"sc"."""
    if name not in PIPELINES:
        raise ValueError(f"unknown pipeline {name!r}; known: {', '.join(sorted(PIPELINES))}")
    return PIPELINES[name](**kwargs)
