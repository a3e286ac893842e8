"""GRPO mathematics, free of Lightning: group advantages, the clipped surrogate, the k3 KL, entropy,
loss aggregation under the project's `(sum, count)` contract, and packing rollouts into tensors.

Conventions (all functions here share them):
- A step has P prompts with G completions each, flattened prompt-major: row i*G + j is sample j of
  prompt i (`group_advantages` reshapes to (P, G)).
- Token tensors are aligned with `spine.engine.sequence_logprobs`: shape (B, T-1), position t holds
  the log-prob of token t+1 of the right-padded sequence.
- Log-probs on both sides of the PPO ratio are those of the raw model (temperature 1), as the engine
  returns them and `sequence_logprobs` computes them: the rollout temperature changes which samples
  are drawn, never the distribution the ratio, the KL and the entropy are measured on.
- `pack_rollouts` returns the token mask (B, T), true on completion tokens, as `sequence_logprobs`
  takes it; the per-token functions take it shifted, `mask[:, 1:]` (B, T-1).

Loss aggregations (`aggregate`), each a `(sum, count)` whose ratio is the loss; under accumulation
`TokenNormalizer` divides the summed gradients by the summed counts, so every mode stays exact:
- "sequence_sum" (the reasoning book, ch. 6): sum over a completion's tokens, mean over completions;
- "sequence_mean" (DeepSeekMath GRPO): mean over a completion's tokens, mean over completions;
- "token" (DAPO): mean over all completion tokens of the batch;
- "constant" (Dr. GRPO): sum over tokens divided by (completions x max_new_tokens), a constant.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .generation import sequence_logprobs

__all__ = ["AGGREGATIONS", "group_advantages", "zero_variance_groups", "kl_k3", "entropy_from_logits",
           "policy_token_loss", "TokenLoss", "aggregate", "pack_rollouts", "logprobs_and_entropy"]

AGGREGATIONS = ("sequence_sum", "sequence_mean", "token", "constant")


def _groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 (a group baseline needs two samples), got {group_size}")
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be a flat tensor of P*G values (G={group_size}), got shape "
                         f"{tuple(rewards.shape)}")
    return rewards.float().view(-1, group_size)


def group_advantages(rewards: torch.Tensor, group_size: int, *, scale: bool = True, eps: float = 1e-4
                     ) -> torch.Tensor:
    """A_ij = r_ij - mean_j(r_i), divided by (std_j(r_i) + eps) when `scale` (GRPO); `scale=False` is
    Dr. GRPO's unscaled baseline. std is the unbiased sample std (torch's default, as the book and
    TRL). Returns a flat (P*G,) float32 tensor."""
    r = _groups(rewards, group_size)
    adv = r - r.mean(dim=1, keepdim=True)
    if scale:
        adv = adv / (r.std(dim=1, keepdim=True) + eps)
    return adv.reshape(-1)


def zero_variance_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(P,) bool: true for groups whose G rewards are all equal (zero advantage: no learning signal)."""
    r = _groups(rewards, group_size)
    return (r == r[:, :1]).all(dim=1)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || ref) (Schulman): exp(ref - logp) - (ref - logp) - 1 >= 0,
    zero where the policy equals the reference; unbiased for tokens sampled from the policy."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of softmax(logits) over the last dim, computed in float32."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    return -(lp.exp() * lp).sum(dim=-1)


def logprobs_and_entropy(model, input_ids: torch.Tensor, mask: torch.Tensor | None = None, *,
                         with_entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`spine.engine.sequence_logprobs` plus the per-position entropy from the same forward.

    Same alignment and values as `sequence_logprobs` (a test checks it); the entropy is detached
    (a metric only). One forward serves both, so logging entropy costs no second pass.
    """
    if not with_entropy:
        return sequence_logprobs(model, input_ids, mask), None
    return sequence_logprobs(model, input_ids, mask, return_entropy=True)


@dataclass
class TokenLoss:
    """Per-token policy loss and what the step logs about it (all (B, T-1), zero off the mask)."""

    loss: torch.Tensor
    ratio: torch.Tensor
    clipped_low: torch.Tensor   # bool: A < 0 and ratio < 1 - eps_low (the clip bound is active)
    clipped_high: torch.Tensor  # bool: A > 0 and ratio > 1 + eps_high
    kl: torch.Tensor | None


def policy_token_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                      *, eps_low: float = 0.2, eps_high: float = 0.2, ref_logp: torch.Tensor | None = None,
                      kl_coef: float = 0.0) -> TokenLoss:
    """PPO/GRPO clipped surrogate per token: -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A) with
    r = exp(logp - old_logp), plus `kl_coef * k3(logp, ref_logp)` when a reference is given.

    advantages: (B,) one per completion, broadcast over its tokens. `mask` (B, T-1) selects the
    completion tokens. With old_logp = logp.detach() (one update per rollout) the ratio is 1 and the
    gradient is the plain policy gradient A * grad(logp).
    """
    if eps_low < 0 or eps_high < 0:
        raise ValueError(f"clip epsilons must be >= 0, got eps_low={eps_low}, eps_high={eps_high}")
    m = mask.to(logp.dtype)
    a = advantages.to(logp.dtype)[:, None]
    ratio = torch.exp((logp - old_logp) * m)
    unclipped = ratio * a
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * a
    loss = -torch.minimum(unclipped, clipped)
    kl = None
    if ref_logp is not None:
        kl = kl_k3(logp, ref_logp) * m
        if kl_coef:
            loss = loss + kl_coef * kl
    on = mask.bool()
    low = on & (a < 0) & (ratio < 1.0 - eps_low)
    high = on & (a > 0) & (ratio > 1.0 + eps_high)
    return TokenLoss(loss * m, ratio.detach(), low, high, None if kl is None else kl.detach())


def aggregate(token_loss: torch.Tensor, mask: torch.Tensor, mode: str, *, max_new_tokens: int | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, count) of a (B, T-1) per-token loss under `mode` (see the module docstring).

    Rows whose mask is empty (e.g. masked-out truncated completions) count for nothing in any mode.
    """
    m = mask.to(token_loss.dtype)
    per_row_tokens = m.sum(dim=1)
    rows = (per_row_tokens > 0).sum()
    masked = token_loss * m
    if mode == "sequence_sum":
        return masked.sum(), rows
    if mode == "sequence_mean":
        return (masked.sum(dim=1) / per_row_tokens.clamp_min(1.0)).sum(), rows
    if mode == "token":
        return masked.sum(), per_row_tokens.sum().to(torch.long)
    if mode == "constant":
        if not max_new_tokens or max_new_tokens < 1:
            raise ValueError("aggregation 'constant' (Dr. GRPO) needs max_new_tokens >= 1 as its normaliser")
        return masked.sum(), rows * int(max_new_tokens)
    raise ValueError(f"unknown loss aggregation {mode!r}; known: {', '.join(AGGREGATIONS)}")


def pack_rollouts(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                  logprobs: Sequence[Sequence[float]] | None, *, pad_id: int,
                  device: torch.device | str | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Right-padded (B, T) ids of prompt + completion, the (B, T) mask of completion tokens (as
    `sequence_logprobs` takes it), and the rollout's per-token log-probs aligned with
    `sequence_logprobs`' output (B, T-1) (or None).

    Completion token k of row b sits at position len(prompt_b) + k; its log-prob (predicted from the
    position before) lands at index len(prompt_b) + k - 1 of the (B, T-1) tensors.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"pack_rollouts: {len(prompts)} prompts for {len(completions)} completions")
    lens = [len(p) + len(c) for p, c in zip(prompts, completions)]
    T = max(lens)
    B = len(prompts)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.bool)
    old = torch.zeros((B, T - 1), dtype=torch.float32) if logprobs is not None else None
    for b, (p, c) in enumerate(zip(prompts, completions)):
        if not p:
            raise ValueError("pack_rollouts: an empty prompt has no position to predict its first token from")
        n, k = len(p), len(c)
        ids[b, :n] = torch.tensor(list(p), dtype=torch.long)
        if k:
            ids[b, n:n + k] = torch.tensor(list(c), dtype=torch.long)
            mask[b, n:n + k] = True
            if old is not None:
                if len(logprobs[b]) != k:
                    raise ValueError(f"pack_rollouts: row {b} has {k} tokens but {len(logprobs[b])} log-probs")
                old[b, n - 1:n - 1 + k] = torch.tensor(list(logprobs[b]), dtype=torch.float32)
    if device is not None:
        ids, mask = ids.to(device), mask.to(device)
        old = old.to(device) if old is not None else None
    return ids, mask, old


def trim_at_stop_string(decode, token_ids: Sequence[int], stop: str) -> int:
    """The length of the shortest prefix of `token_ids` whose decoded text contains `stop` (the tokens
    a completion cut at a stop string really chose; the engine may have decoded a few more before
    it noticed). `len(token_ids)` when no prefix does. Binary search: containment is monotone in
    the prefix length."""
    lo, hi = 1, len(token_ids)
    if hi == 0 or stop not in decode(list(token_ids)):
        return len(token_ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if stop in decode(list(token_ids[:mid])):
            hi = mid
        else:
            lo = mid + 1
    return lo
