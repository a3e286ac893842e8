"""The one majority vote: self-consistency in the pipelines and accuracy@k in reports use it alike.

Answers are grouped with a group's first answer when their normalized text is equal (`normalize_vote`)
or `equivalent(first, answer)` holds — by default the grader's `answers_equivalent`, so "1/2", "0.5"
and "\\frac12" vote together. `None` (no answer) never votes. Ties go to the group seen first and
are reported.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from .grade import answers_equivalent

Equivalent = Callable[[str, str], bool]

__all__ = ["Equivalent", "majority_vote", "normalize_vote"]


def normalize_vote(answer: str) -> str:
    """The exact-match key used to pool votes (all whitespace removed, surrounding "$" and a trailing
    "." stripped): the cheap test before the grader's."""
    s = "".join(answer.split())
    s = s.strip("$")
    return s[:-1] if s.endswith(".") else s


def majority_vote(answers: Sequence[str | None],
                  equivalent: Equivalent | None = answers_equivalent) -> tuple[int | None, dict[str, Any]]:
    """Index of the first sample of the winning answer group (None if nobody answered), and the
    vote's details: groups (answer, votes) in order of first appearance, tie, winner_votes, abstained.
    `equivalent=None` pools by normalized text only."""
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
    if not groups:
        return None, {"groups": [], "tie": False, "winner_votes": 0, "abstained": len(answers)}
    best = max(len(g) for g in groups)
    leaders = [g for g in groups if len(g) == best]
    info = {"groups": [{"answer": answers[g[0]], "votes": len(g)} for g in groups], "tie": len(leaders) > 1,
            "winner_votes": best, "abstained": sum(a is None for a in answers)}
    return leaders[0][0], info
