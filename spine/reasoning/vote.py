"""The one majority vote: self-consistency in the pipelines and accuracy@k in reports use it alike.

Answers are grouped with a group's first answer when their normalized text is equal (`normalize_vote`)
or `equivalent(first, answer)` holds — by default the grader's `answers_equivalent`, so "1/2", "0.5"
and "\\frac12" vote together. `None` (no answer) never votes. Ties go to the group with the higher
mean tie-break score when scores are given (e.g. each sample's mean token log-prob), else, and on equal
scores, to the group seen first; either way they are reported.

`vote_settled` says when drawing more samples can no longer change the winner (early stopping).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from .grade import answers_equivalent

Equivalent = Callable[[str, str], bool]

__all__ = ["Equivalent", "majority_vote", "normalize_vote", "vote_settled"]


def normalize_vote(answer: str) -> str:
    """The exact-match key used to pool votes (all whitespace removed, surrounding "$" and a trailing
    "." stripped): the cheap test before the grader's."""
    s = "".join(answer.split())
    s = s.strip("$")
    return s[:-1] if s.endswith(".") else s


def _groups(answers: Sequence[str | None], equivalent: Equivalent | None) -> list[list[int]]:
    """Sample indices of each answer group, in order of first appearance. A sample joins the first group
    whose first answer it matches, so adding samples never moves an earlier one to another group."""
    groups: list[list[int]] = []
    keys: list[str] = []
    for i, a in enumerate(answers):
        if a is None:
            continue
        key = normalize_vote(a)
        for g, gkey in zip(groups, keys):
            if key == gkey or (equivalent is not None and equivalent(answers[g[0]], a)):
                g.append(i)
                break
        else:
            groups.append([i])
            keys.append(key)
    return groups


def majority_vote(answers: Sequence[str | None], equivalent: Equivalent | None = answers_equivalent,
                  tiebreak: Sequence[float] | None = None) -> tuple[int | None, dict[str, Any]]:
    """Index of the first sample of the winning answer group (None if nobody answered), and the
    vote's details: groups (answer, votes) in order of first appearance, tie, winner_votes, abstained.
    `equivalent=None` pools by normalized text only. `tiebreak`: one score per sample; tied groups go to
    the higher mean score of their members (then to the first seen)."""
    if tiebreak is not None and len(tiebreak) != len(answers):
        raise ValueError(f"majority_vote: {len(tiebreak)} tie-break scores for {len(answers)} answers")
    groups = _groups(answers, equivalent)
    if not groups:
        return None, {"groups": [], "tie": False, "winner_votes": 0, "abstained": len(answers)}
    best = max(len(g) for g in groups)
    leaders = [g for g in groups if len(g) == best]
    info = {"groups": [{"answer": answers[g[0]], "votes": len(g)} for g in groups], "tie": len(leaders) > 1,
            "winner_votes": best, "abstained": sum(a is None for a in answers)}
    winner = leaders[0]
    if len(leaders) > 1 and tiebreak is not None:
        means = [sum(float(tiebreak[i]) for i in g) / len(g) for g in leaders]
        winner = leaders[max(range(len(leaders)), key=lambda j: (means[j], -j))]
        info["tiebreak"] = {"scores": [round(m, 6) for m in means], "by": "mean score"}
    return winner[0], info


def vote_settled(answers: Sequence[str | None], n: int, equivalent: Equivalent | None = answers_equivalent) -> bool:
    """True when the first len(answers) of n samples already decide the vote over all n: the leading
    group holds more votes than any other group (or a group not yet seen) could reach with the
    n - len(answers) samples still to draw. Group counts only grow as samples arrive, so the leader
    then wins the full vote outright, whatever the tie-break."""
    remaining = n - len(answers)
    if remaining < 0:
        raise ValueError(f"vote_settled: {len(answers)} answers for a vote over n={n}")
    counts = sorted((len(g) for g in _groups(answers, equivalent)), reverse=True)
    if not counts:
        return remaining == 0
    runner_up = counts[1] if len(counts) > 1 else 0
    return counts[0] > runner_up + remaining
