"""Direct Preference Optimization (Rafailov et al. 2023) as pure functions (Raschka ch.7 bonus).

For a pair (chosen c, rejected r) of responses to one prompt, with sequence log-probs under the
policy pi and a frozen reference pi_ref:

    margin_logits = (log pi(c) - log pi_ref(c)) - (log pi(r) - log pi_ref(r))
    loss          = -log sigmoid(beta * margin_logits)

At the start pi = pi_ref, so every pair's loss is log 2 = 0.6931.

Sequence log-probs: `"mean"` (the default) averages the per-token log-probs over the response
tokens, as the book's `compute_logprobs` does; `"sum"` adds them, as the DPO paper does. We default
to the mean because (1) it reproduces the book's numbers (0.693 -> 0.610 val loss, beta 0.1) and (2)
with a mean, beta has the same meaning for short and long responses: a summed log-ratio grows with
length, so under "sum" long pairs dominate the loss and beta must shrink with the typical length.
Use "sum" to match the paper/TRL.

Logged quantities follow the book: the chosen/rejected "rewards" are the log-ratios
`log pi(x) - log pi_ref(x)` (not multiplied by beta; TRL's `rewards/chosen` is beta times ours), the
margin is chosen - rejected, and the preference accuracy is the fraction of pairs with
chosen reward > rejected reward.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

Reduction = Literal["mean", "sum"]
REDUCTIONS = ("mean", "sum")

__all__ = ["DPOOutput", "REDUCTIONS", "dpo_loss", "reduce_logprobs", "sequence_scores"]


@dataclass
class DPOOutput:
    """loss_sum / count is the mean loss over pairs; the rest are summed over pairs (divide by count)."""

    loss_sum: torch.Tensor
    count: torch.Tensor
    chosen_reward_sum: torch.Tensor
    rejected_reward_sum: torch.Tensor
    correct: torch.Tensor  # number of pairs with chosen reward > rejected reward

    @property
    def margin_sum(self) -> torch.Tensor:
        return self.chosen_reward_sum - self.rejected_reward_sum

    def means(self) -> dict[str, float]:
        """Per-pair means as floats (for logging)."""
        n = max(int(self.count), 1)
        return {"loss": float(self.loss_sum) / n, "chosen_reward": float(self.chosen_reward_sum) / n,
                "rejected_reward": float(self.rejected_reward_sum) / n, "margin": float(self.margin_sum) / n,
                "accuracy": float(self.correct) / n}


def check_beta(beta: float) -> None:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0 or beta != beta:
        raise ValueError(f"DPO beta must be a number > 0, got {beta!r}")


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, *, beta: float = 0.1) -> DPOOutput:
    """Sigmoid DPO loss over pairs from sequence log-probs (each (B,)); see the module docstring.

    Returns sums over the B pairs and count = B, per the project's `(sum, count)` loss contract.
    """
    check_beta(beta)
    shapes = {tuple(t.shape) for t in (policy_chosen, policy_rejected, ref_chosen, ref_rejected)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"dpo_loss: expected four (B,) tensors of one shape, got shapes {sorted(shapes)}")
    ref_chosen, ref_rejected = ref_chosen.detach(), ref_rejected.detach()
    chosen_lr = policy_chosen.float() - ref_chosen.float()
    rejected_lr = policy_rejected.float() - ref_rejected.float()
    losses = -F.logsigmoid(beta * (chosen_lr - rejected_lr))
    c, r = chosen_lr.detach(), rejected_lr.detach()
    n = torch.tensor(policy_chosen.shape[0], device=policy_chosen.device)
    return DPOOutput(losses.sum(), n, c.sum(), r.sum(), (c > r).sum())


def reduce_logprobs(token_logprobs: torch.Tensor, mask: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """(B, T-1) per-token log-probs (0 where not scored) and the (B, T) score mask -> (B,) sequence scores."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"DPO reduction must be one of {REDUCTIONS}, got {reduction!r}")
    total = token_logprobs.sum(-1)
    if reduction == "sum":
        return total
    n = mask[:, 1:].sum(-1).clamp_min(1).to(total.dtype)
    return total / n


def sequence_scores(model, input_ids: torch.Tensor, mask: torch.Tensor, reduction: Reduction = "mean"
                    ) -> torch.Tensor:
    """(B,) summed or mean log-prob of the masked tokens of right-padded `input_ids` (differentiable)."""
    from .engine import sequence_logprobs

    return reduce_logprobs(sequence_logprobs(model, input_ids, mask), mask, reduction)
