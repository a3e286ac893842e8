"""Self-refinement: draft → critique → revise, a keep rule, and a stopping rule (the reasoning book, ch. 5).

Each round the model critiques the current answer (`STEP_TEMPLATES["critique"]`) and writes a revision
(`STEP_TEMPLATES["revise"]`, which ends with the problem's own prompt so a base model answers in its own
format). A scorer (`spine.reasoning.scoring`) rates the revision as an answer to the *original* prompt:

- keep rule: the revision replaces the current answer when its score is not lower (the book's rule);
- stopping rule: stop after a round whose revised answer repeats the current one ("answer_repeated"),
  or whose score is not higher than the current score ("no_improvement"), or after `rounds` rounds
  ("round_cap"). So the loop cannot spiral: every extra round needs a new answer with a higher score.

Every round is one sample of the problem's result (and so one trace record): round r's `parent` is the
index of the answer it revised; its cost is the critique's, the revision's and the scoring's.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from .cost import completion_costs
from .grade import answers_equivalent
from .pipelines import ProblemEngine, ProblemResult, SampleResult, _Sampled, graded_row, register
from .problems import Problem
from .scoring import ScoreItem, make_scorer
from .vote import normalize_vote

__all__ = ["SelfRefine", "same_answer"]


def same_answer(a: str | None, b: str | None) -> bool:
    """Whether a revision repeats an answer: both absent, equal as vote keys, or graded equivalent."""
    if a is None or b is None:
        return a is None and b is None
    return normalize_vote(a) == normalize_vote(b) or answers_equivalent(a, b)


@register("refine", "self_refine")
class SelfRefine(_Sampled):
    """Draft (the pipeline's sampling, n=1), then up to `rounds` critique → revise rounds.

    scorer: decides whether a revision is kept (see the module docstring); default mean_logprob, the
    model's mean token log-prob of the revision as an answer to the original prompt. `oracle` keeps a
    revision only when it is correct (an upper bound). critique_tokens: length cap of a critique
    (default: the sampling's max_new_tokens).
    """

    name = "self_refine"

    def __init__(self, sampling=None, grade_timeout_s: float = 2.0, rounds: int = 3, scorer: str = "mean_logprob",
                 scorer_args: Mapping[str, Any] | None = None, critique_tokens: int | None = None):
        super().__init__(sampling, grade_timeout_s)
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
            raise ValueError(f"refine: rounds must be an integer >= 0, got {rounds!r}")
        if critique_tokens is not None and (isinstance(critique_tokens, bool) or not isinstance(critique_tokens, int)
                                            or critique_tokens < 1):
            raise ValueError(f"refine: critique_tokens must be an integer >= 1, got {critique_tokens!r}")
        self.rounds, self.critique_tokens = rounds, critique_tokens
        self.scorer = make_scorer(scorer, **dict(scorer_args or {}))

    def config(self) -> dict[str, Any]:
        return {**super().config(), "rounds": self.rounds, "scorer": self.scorer.config(),
                "critique_tokens": self.critique_tokens}

    def label(self) -> str:
        return f"refine{self.rounds}-{self.scorer.name}" + ("-upper-bound" if self.scorer.upper_bound else "")

    def run(self, engine: ProblemEngine, problems: Sequence[Problem]) -> list[ProblemResult]:
        params = dataclasses.replace(self.sampling, n=1)
        crit_params = params if self.critique_tokens is None else dataclasses.replace(
            params, max_new_tokens=self.critique_tokens)
        prompts = [engine.prompt_for(p) for p in problems]
        chains: list[list[SampleResult]] = [graded_row(p, row, self.grade_timeout_s)
                                            for p, row in zip(problems, engine.sample(problems, params))]
        for chain in chains:
            chain[0].round = 0
        self._score(engine, [(p, pr, c[0], True) for p, pr, c in zip(problems, prompts, chains)])
        current = [0] * len(problems)
        stop: list[str | None] = [None] * len(problems)
        if self.rounds == 0:
            stop = ["round_cap"] * len(problems)
        for r in range(1, self.rounds + 1):
            todo = [i for i in range(len(problems)) if stop[i] is None]
            if not todo:
                break
            cur = {i: chains[i][current[i]] for i in todo}
            crit = engine.complete([engine.step_prompt(problems[i], "critique", answer=cur[i].completion.text)
                                    for i in todo], crit_params, keys=[f"{problems[i].id}/critique{r}" for i in todo])
            rev_prompts = [engine.step_prompt(problems[i], "revise", answer=cur[i].completion.text,
                                              critique=c[0].text) for i, c in zip(todo, crit)]
            revs = engine.complete(rev_prompts, params, keys=[f"{problems[i].id}/revise{r}" for i in todo])
            new = []
            for i, c, row in zip(todo, crit, revs):
                s = graded_row(problems[i], row, self.grade_timeout_s)[0]
                crit_cost = completion_costs(c)[0]
                s.cost = s.spent + crit_cost
                s.round, s.parent = r, current[i]
                s.details = {"critique": c[0].text, "critique_tokens": c[0].generated_tokens}
                new.append((problems[i], prompts[i], s, False))
            self._score(engine, new)
            for i, (_, _, s, _) in zip(todo, new):
                before = chains[i][current[i]]
                chains[i].append(s)
                kept = s.score >= before.score
                s.details["kept"] = kept
                if kept:
                    current[i] = len(chains[i]) - 1
                if same_answer(s.answer, before.answer):
                    stop[i] = "answer_repeated"
                elif not s.score > before.score:
                    stop[i] = "no_improvement"
                elif r == self.rounds:
                    stop[i] = "round_cap"
        results = []
        for i, (p, prompt, chain) in enumerate(zip(problems, prompts, chains)):
            s = chain[current[i]]
            details = {"scorer": self.scorer.name, "upper_bound": self.scorer.upper_bound, "refine_stop": stop[i],
                       "rounds": len(chain) - 1}
            results.append(ProblemResult(p, prompt, chain, current[i], s.answer, s.verdict.correct, s.verdict.rule,
                                         details=details))
        return results

    def _score(self, engine: ProblemEngine, items: Sequence[tuple[Problem, str, SampleResult, bool]]) -> None:
        """Score each sample as an answer to its problem's prompt; the scorer's cost joins the sample's."""
        if not items:
            return
        scores, costs = self.scorer.score(engine, [ScoreItem(p, pr, s, from_prompt) for p, pr, s, from_prompt in items])
        for (_, _, s, _), sc, cost in zip(items, scores, costs):
            s.score, s.cost = sc, s.spent + cost
