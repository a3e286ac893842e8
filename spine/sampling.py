"""Sampling one token per row from logits, with counter-based noise (used by `spine.generation`'s decode loop).

The uniform for vocabulary column `c` at generated position `t` of a row is a pure integer hash of
(row seed, t, c) (`uniform_noise`: splitmix64 in counter mode), so a row draws the same tokens whatever
batch, chunk or position it is decoded in, and sampling compiles into the decode step's static-shape
graph. A token is drawn by Gumbel-max over the temperature/top-k/top-p filtered logits
(`sample_with_noise`); its log-probability is the model's (log-softmax of the raw logits, `_select`).
"""
from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F

__all__ = ["sample_seed", "uniform_noise", "filter_logits", "sample_with_noise", "sample_next"]


# ---------------------------------------------------------------------------- counter-based noise
def sample_seed(seed: int, key: str | int, index: int) -> int:
    """The 63-bit seed of sample `index` of prompt `key`: a pure function of the three."""
    h = hashlib.sha256(f"{seed}\x1f{key}\x1f{index}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def _i64(x: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits (torch has no uint64 arithmetic)."""
    return x - (1 << 64) if x >= 1 << 63 else x


_GOLDEN, _MIX1, _MIX2 = _i64(0x9E3779B97F4A7C15), _i64(0xBF58476D1CE4E5B9), _i64(0x94D049BB133111EB)


def _srl(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bits (`>>` is arithmetic: mask off the copied sign bits)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _splitmix64(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's output function (Steele et al. 2014) on int64 tensors; multiplication wraps mod 2^64."""
    z = (z ^ _srl(z, 30)) * _MIX1
    z = (z ^ _srl(z, 27)) * _MIX2
    return z ^ _srl(z, 31)


def uniform_noise(row_seeds: torch.Tensor, step: torch.Tensor | int, n_cols: int) -> torch.Tensor:
    """Uniforms (B, n_cols) in (0, 1), float32: splitmix64 in counter mode, stream `row_seeds[b]`,
    counter `step * 2^32 + column`. A pure function of (seed, step, column): no state, no batch effect.

    23 bits per value, as (k + 0.5) / 2^23, so 0 and 1 (which would make Gumbel noise infinite) never occur.
    """
    cols = torch.arange(n_cols, device=row_seeds.device, dtype=torch.int64)
    counter = (step * (1 << 32) + cols) * _GOLDEN  # (n_cols,) or broadcast with a tensor step
    z = _splitmix64(row_seeds.to(torch.int64)[:, None] + counter)
    return (_srl(z, 41).to(torch.float32) + 0.5) * (2.0 ** -23)


# ---------------------------------------------------------------------------- sampling
def filter_logits(logits: torch.Tensor, *, temperature: float, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """Temperature-scaled logits with everything outside top-k / the top-p nucleus set to -inf.

    top-k keeps every token tied with the k-th largest logit (bf16 logits tie often; one setting is
    one distribution). The nucleus is built in (logit descending, id ascending) order, so a tie at
    its edge resolves the same way every time.
    """
    logits = logits.float() / temperature
    if top_k is not None and top_k > 0:
        k = min(top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1, stable=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the mass *before* it already reaches top_p (the top token always stays)
        drop = probs.cumsum(dim=-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def sample_with_noise(logits: torch.Tensor, uniform: torch.Tensor | None, *, temperature: float = 0.0,
                      top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Pick one id per row: argmax at temperature 0, else Gumbel-max over the filtered logits.

    argmax(z + G) with G = -log(-log(U)) draws exactly from softmax(z). `uniform` (B, V) is an input
    (see `uniform_noise`), so sampling is reproducible and compiles into the decode step's graph.
    """
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    gumbel = -torch.log(-torch.log(uniform))
    z = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    return (z + gumbel).argmax(dim=-1)


def sample_next(logits: torch.Tensor, *, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, row_seeds: torch.Tensor | None = None, step: int = 0) -> torch.Tensor:
    """Pick one id per row from logits (B, V): greedy at temperature 0, else filtered sampling with the
    counter-based noise of `row_seeds` (B,) at position `step` (default seeds 0..B-1)."""
    noise = None
    if temperature > 0.0:
        if row_seeds is None:
            row_seeds = torch.arange(logits.shape[0], device=logits.device)
        noise = uniform_noise(row_seeds, step, logits.shape[-1])
    return sample_with_noise(logits, noise, temperature=temperature, top_k=top_k, top_p=top_p)


def _select(logits: torch.Tensor, row_seeds: torch.Tensor, step, vocab_size: int, temperature: float,
            top_k: int | None, top_p: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(next ids, their model log-probs) from last-position logits (B, V_padded)."""
    last = logits.float()
    if last.shape[-1] > vocab_size:
        last = last.masked_fill(torch.arange(last.shape[-1], device=last.device) >= vocab_size, float("-inf"))
    noise = uniform_noise(row_seeds, step, last.shape[-1]) if temperature > 0.0 else None
    nxt = sample_with_noise(last, noise, temperature=temperature, top_k=top_k, top_p=top_p)
    lp = F.log_softmax(last, dim=-1).gather(-1, nxt[:, None]).squeeze(-1)
    return nxt, lp
