"""Training math shared by every stage (no Lightning here): losses, optimizer groups, schedules,
and exact token normalisation under gradient accumulation.

Why token normalisation needs care: with gradient accumulation, averaging each micro-batch's mean
loss weights a micro-batch of 10 target tokens like one of 1,000. The correct objective is the sum
of token losses over the whole accumulation window divided by the window's token count, which is
not known until the window ends. `TokenNormalizer` makes that exact: each micro-batch backpropagates
its *sum* loss (divided by a fixed reference so magnitudes stay ordinary), counts its target tokens,
and just before the optimizer step the accumulated gradients are rescaled by reference / tokens
(all-reduced across ranks under DDP). Gradients are linear in the loss, so the result equals one big
batch with token-mean loss.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

IGNORE_INDEX = -100


def cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy and the number of counted target tokens.

    logits (B, T, V), targets (B, T) with `ignore_index` where no loss is taken.
    """
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=ignore_index, reduction="sum")
    count = (targets != ignore_index).sum()
    return loss, count


def chunked_cross_entropy_sum(hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor, *,
                              chunk_size: int = 4096, ignore_index: int = IGNORE_INDEX
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Same value as `cross_entropy_sum(head(hidden), targets)` without materialising all logits.

    Each chunk of tokens is projected and reduced under activation checkpointing, so peak memory
    holds one chunk of float32 logits instead of B*T*V.
    """
    from torch.utils.checkpoint import checkpoint

    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1)
    total = h.new_zeros((), dtype=torch.float32)

    def chunk_loss(hc, tc):
        return F.cross_entropy(head(hc).float(), tc, ignore_index=ignore_index, reduction="sum")

    for start in range(0, h.shape[0], chunk_size):
        hc, tc = h[start:start + chunk_size], t[start:start + chunk_size]
        total = total + checkpoint(chunk_loss, hc, tc, use_reentrant=False)
    return total, (t != ignore_index).sum()


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on matrices only; no decay on norms, biases and embeddings (as in nanoGPT/litgpt).

    Only trainable parameters are included, so frozen layers and LoRA bases cost no optimizer state.
    """
    decay, no_decay, seen = [], [], set()
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            is_embedding = isinstance(module, nn.Embedding)
            if p.dim() < 2 or is_embedding:
                no_decay.append(p)
            else:
                decay.append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if not groups:
        raise ValueError("no trainable parameters: every parameter has requires_grad=False")
    return groups


def warmup_cosine(warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1) -> Callable[[int], float]:
    """LR multiplier: linear warmup from ~0 to 1, then cosine decay to `min_lr_ratio` at `total_steps`."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warmup_steps = max(0, min(warmup_steps, total_steps))

    def fn(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if total_steps <= warmup_steps:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return fn


@dataclass
class TokenNormalizer:
    """Accumulates target-token counts over an accumulation window and rescales gradients once.

    Usage per micro-batch: `loss_for_backward = normalizer.micro_batch(loss_sum, n_tokens, reference)`;
    before the optimizer step: `normalizer.rescale_(params, accumulate, world_size, all_reduce)`.
    Counts stay on the device: nothing here waits for the GPU. The summed loss rides along in the
    same all-reduce, so `step_loss` is the optimizer step's global token-mean loss (all micro-batches,
    all ranks) at no extra collective.
    """

    reference: float | None = None
    tokens: torch.Tensor | float = 0.0
    loss: torch.Tensor | float = 0.0
    step_loss: torch.Tensor | None = None

    def micro_batch(self, loss_sum: torch.Tensor, n_tokens: torch.Tensor | int,
                    reference: int | None = None) -> torch.Tensor:
        """`reference` (e.g. targets.numel()) fixes the divisor on the first call without a host sync."""
        if self.reference is None:
            # a fixed divisor keeps backward magnitudes ordinary; its value cancels in rescale_
            self.reference = float(reference) if reference else max(float(n_tokens), 1.0)
        n = n_tokens.detach().to(torch.float64) if isinstance(n_tokens, torch.Tensor) else float(n_tokens)
        self.tokens = self.tokens + n
        self.loss = self.loss + loss_sum.detach().to(torch.float64)
        return loss_sum / self.reference

    @torch.no_grad()
    def rescale_(self, params: Iterable[torch.Tensor], accumulate: int, world_size: int = 1,
                 all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 device: torch.device | None = None) -> torch.Tensor:
        """Scale grads so the step equals token-mean loss over the window (all ranks). Returns the factor.

        The trainer divided each micro-batch loss by `accumulate` and DDP averaged over
        `world_size`; both are undone here and replaced by the global token count.
        """
        both = torch.stack([torch.as_tensor(self.tokens, dtype=torch.float64, device=device),
                            torch.as_tensor(self.loss, dtype=torch.float64, device=device)])
        if all_reduce is not None and world_size > 1:
            both = all_reduce(both)
        tokens = both[0]
        self.step_loss = (both[1] / tokens.clamp_min(1.0)).to(torch.float32)
        self.tokens, self.loss = 0.0, 0.0
        if self.reference is None:
            return torch.ones((), device=device)
        factor = (self.reference * accumulate * world_size / tokens.clamp_min(1.0)).to(torch.float32)
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, factor.to(grads[0].device))
        return factor

    def state_dict(self) -> dict:
        return {"reference": self.reference, "tokens": float(self.tokens), "loss": float(self.loss)}

    def load_state_dict(self, state: dict) -> None:
        self.reference = state.get("reference")
        self.tokens = float(state.get("tokens", 0.0))
        self.loss = float(state.get("loss", 0.0))


def lm_loss_sum(model: nn.Module, input_ids: torch.Tensor, targets: torch.Tensor, *, chunked: bool = False,
                chunk_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token loss of a `GPT` on (input_ids, targets) and the number of target tokens.

    `chunked=True` never materialises the full (B, T, V) logits (see `chunked_cross_entropy_sum`).
    """
    if chunked:
        hidden = model(input_ids, return_hidden=True)
        return chunked_cross_entropy_sum(hidden, model.lm_head, targets, chunk_size=chunk_size)
    return cross_entropy_sum(model(input_ids), targets)


def make_loss_fn(model: nn.Module, *, chunked: bool = False, compile: bool | str = False,
                 chunk_size: int = 4096, compile_mode: str | None = None) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """`fn(input_ids, targets) -> (loss_sum, n_tokens)` for a `GPT`, optionally torch.compile'd whole.

    Compiling the model *and* the cross-entropy as one graph lets the compiler fuse the float32
    log-softmax into the head's output instead of materialising (B, T, V) float32 logits.
    Parameter names are untouched (the model itself is not wrapped), so checkpoints are unchanged.
    `compile="loss"` compiles only the cross-entropy on the model's logits (for a model whose
    forward cannot be one graph, e.g. FSDP2-sharded with blocks compiled one by one). `compile_mode`
    is torch.compile's `mode` (None: the default).
    """
    if compile == "loss" and not chunked:
        ce = torch.compile(cross_entropy_sum, mode=compile_mode)
        return lambda input_ids, targets: ce(model(input_ids), targets)

    def fn(input_ids: torch.Tensor, targets: torch.Tensor):
        return lm_loss_sum(model, input_ids, targets, chunked=chunked, chunk_size=chunk_size)

    return torch.compile(fn, mode=compile_mode) if compile else fn
