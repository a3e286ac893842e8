"""What a pipeline paid for an answer: prompt tokens, generated tokens, forward passes, wall time.

Counting rules (docs/pipelines.md):
- prompt tokens: each completion's prompt length (the n samples of one prompt count it n times, as an
  API bills it), plus every token of a sequence scored by teacher forcing (self-verification, rescoring);
- generated tokens: tokens decoded, `Completion.generated_tokens` (paid for, including any decoded past
  a stop string);
- forward passes: model calls a row needed as if decoded alone: one prefill per prompt per engine call
  (shared by that call's n samples, charged to its first sample) plus one decode step per generated
  token after the first, plus one per sequence scored by teacher forcing;
- seconds: wall time (a batch's time is shared evenly by its rows).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["Cost", "completion_costs"]


@dataclass(frozen=True)
class Cost:
    """Compute spent on one sample, one round or one problem (add them with `+` or `Cost.total`)."""

    prompt_tokens: int = 0
    generated_tokens: int = 0
    forward_passes: int = 0
    seconds: float = 0.0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.prompt_tokens + other.prompt_tokens, self.generated_tokens + other.generated_tokens,
                    self.forward_passes + other.forward_passes, self.seconds + other.seconds)

    @staticmethod
    def total(costs: Iterable["Cost"]) -> "Cost":
        out = Cost()
        for c in costs:
            out = out + c
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Cost":
        return cls(int(d.get("prompt_tokens", 0)), int(d.get("generated_tokens", 0)),
                   int(d.get("forward_passes", 0)), float(d.get("seconds", 0.0)))


def completion_costs(row: Sequence[Any]) -> list[Cost]:
    """Costs of the completions one engine call drew for one prompt (they share one prefill, charged to
    the first): completion j costs its prompt and generated tokens, `generated_tokens - 1` decode steps
    (the prefill yields the first token) and its seconds."""
    out = []
    for j, c in enumerate(row):
        steps = max(0, int(c.generated_tokens) - 1) + (1 if j == 0 else 0)
        out.append(Cost(int(c.prompt_tokens), int(c.generated_tokens), steps, float(c.seconds)))
    return out
