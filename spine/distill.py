"""Logit knowledge distillation (Hinton et al. 2015) as pure functions returning `(sum, count)`.

Per target token t (targets != -100), with student logits s, teacher logits z, target y:

    loss_t = alpha * CE(s, y) + (1 - alpha) * tau^2 * D(p_z^tau, p_s^tau),     p^tau = softmax(logits / tau)

D is one of
- "forward_kl": KL(teacher || student) = sum_v p_z (log p_z - log p_s)  (Hinton's; mode-covering),
- "reverse_kl": KL(student || teacher) = sum_v p_s (log p_s - log p_z)  (mode-seeking; MiniLLM),
- "jsd": 1/2 KL(p_z || m) + 1/2 KL(p_s || m), m = (p_z + p_s) / 2  (symmetric, at most log 2).

alpha = 1 is plain next-token cross-entropy (the teacher is not needed); alpha = 0 is pure KD.
The tau^2 factor keeps the KD gradient's magnitude roughly independent of tau (the soft-target
gradients scale as 1/tau^2), as in Hinton et al.; the CE term always uses tau = 1.

`kd_loss_sum` never holds the (B, T, V) logits of either model: it keeps only the target
positions, and for each chunk of them projects both models' final hidden states through their
heads inside activation checkpointing, so peak memory holds one chunk of logits of each model.
The teacher's logits are recomputed in the backward pass (a second teacher-head matmul per chunk)
rather than saved: saving them would keep all chunks' teacher logits alive until backward.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F

from .training import IGNORE_INDEX

Divergence = Literal["forward_kl", "reverse_kl", "jsd"]
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")

__all__ = ["DIVERGENCES", "check_kd_args", "divergence", "kd_token_losses", "kd_loss_from_logits", "kd_loss_sum",
           "check_same_tokenizer"]


def check_kd_args(alpha: float, temperature: float, divergence: str) -> None:
    """ValueError naming the bad value (alpha in [0, 1], temperature > 0, a known divergence)."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"KD alpha must be a number in [0, 1] (1 = plain cross-entropy), got {alpha!r}")
    if (isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature)
            or temperature <= 0):
        raise ValueError(f"KD temperature must be a finite number > 0, got {temperature!r}")
    if divergence not in DIVERGENCES:
        raise ValueError(f"KD divergence must be one of {DIVERGENCES}, got {divergence!r}")


def divergence(student_logp: torch.Tensor, teacher_logp: torch.Tensor, kind: Divergence = "forward_kl"
               ) -> torch.Tensor:
    """Per-row divergence between two log-distributions over the last dim (float32): shape (N,)."""
    if kind == "forward_kl":
        return (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1)
    if kind == "reverse_kl":
        return (student_logp.exp() * (student_logp - teacher_logp)).sum(-1)
    if kind == "jsd":
        log_m = torch.logaddexp(student_logp, teacher_logp) - math.log(2.0)
        kl_t = (teacher_logp.exp() * (teacher_logp - log_m)).sum(-1)
        kl_s = (student_logp.exp() * (student_logp - log_m)).sum(-1)
        return 0.5 * (kl_t + kl_s)
    raise ValueError(f"KD divergence must be one of {DIVERGENCES}, got {kind!r}")


def _f32(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (bf16 logits lose the small differences KD is made of; float64 stays)."""
    return x if x.dtype == torch.float64 else x.float()


def kd_token_losses(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, targets: torch.Tensor, *,
                    alpha: float = 0.5, temperature: float = 1.0, divergence_kind: Divergence = "forward_kl"
                    ) -> torch.Tensor:
    """The per-token loss (N,) for rows of logits (N, V) and targets (N,) (no ignored rows here).

    `teacher_logits` may be None only when alpha == 1.
    """
    s = _f32(student_logits)
    loss = F.cross_entropy(s, targets, reduction="none") if alpha > 0 else s.new_zeros(s.shape[0])
    if alpha < 1:
        if teacher_logits is None:
            raise ValueError("KD with alpha < 1 needs the teacher's logits")
        s_lp = torch.log_softmax(s / temperature, dim=-1)
        t_lp = torch.log_softmax(_f32(teacher_logits) / temperature, dim=-1)
        d = divergence(s_lp, t_lp, divergence_kind)
        loss = alpha * loss + (1.0 - alpha) * temperature ** 2 * d
    return loss


def kd_loss_from_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, targets: torch.Tensor, *,
                        alpha: float = 0.5, temperature: float = 1.0, divergence: Divergence = "forward_kl",
                        vocab_size: int | None = None, ignore_index: int = IGNORE_INDEX
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Unchunked reference: (sum of per-token KD losses over counted targets, count). Logits (B, T, V)."""
    check_kd_args(alpha, temperature, divergence)
    V = vocab_size or student_logits.shape[-1]
    valid = targets != ignore_index
    s = student_logits[valid][..., :V]
    t = teacher_logits[valid][..., :V] if teacher_logits is not None else None
    losses = kd_token_losses(s, t, targets[valid], alpha=alpha, temperature=temperature, divergence_kind=divergence)
    return losses.sum(), valid.sum()


def kd_loss_sum(student_hidden: torch.Tensor, student_head: Callable[[torch.Tensor], torch.Tensor],
                teacher_hidden: torch.Tensor | None, teacher_head: Callable[[torch.Tensor], torch.Tensor] | None,
                targets: torch.Tensor, *, alpha: float = 0.5, temperature: float = 1.0,
                divergence: Divergence = "forward_kl", vocab_size: int | None = None, chunk_size: int = 1024,
                ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """Same value as `kd_loss_from_logits(student_head(hs), teacher_head(ht), targets)`, chunked.

    student_hidden / teacher_hidden: (B, T, D_s) / (B, T, D_t) final hidden states (the models may
    differ in width; they share the vocabulary). The teacher side is computed without gradients.
    `vocab_size` cuts padded vocabulary rows off both heads' outputs (as generation does).
    Returns (sum over counted target tokens, number of counted target tokens).
    """
    from torch.utils.checkpoint import checkpoint

    check_kd_args(alpha, temperature, divergence)
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"KD chunk_size must be an integer >= 1, got {chunk_size!r}")
    need_teacher = alpha < 1
    if need_teacher and (teacher_hidden is None or teacher_head is None):
        raise ValueError("KD with alpha < 1 needs the teacher's hidden states and head")
    valid = targets != ignore_index
    hs = student_hidden[valid]
    ht = teacher_hidden[valid].detach() if need_teacher else None
    y = targets[valid]
    V = vocab_size

    def chunk_loss(hs_c: torch.Tensor, ht_c: torch.Tensor | None, y_c: torch.Tensor) -> torch.Tensor:
        s = student_head(hs_c)
        t = None
        if ht_c is not None:
            with torch.no_grad():
                t = teacher_head(ht_c)
            t = t[..., :V] if V else t
        s = s[..., :V] if V else s
        return kd_token_losses(s, t, y_c, alpha=alpha, temperature=temperature, divergence_kind=divergence).sum()

    total = hs.new_zeros((), dtype=torch.float32)
    for start in range(0, hs.shape[0], chunk_size):
        sl = slice(start, start + chunk_size)
        ht_c = ht[sl] if ht is not None else None
        if torch.is_grad_enabled() and hs.requires_grad:
            total = total + checkpoint(chunk_loss, hs[sl], ht_c, y[sl], use_reentrant=False)
        else:
            total = total + chunk_loss(hs[sl], ht_c, y[sl])
    return total, valid.sum()


def _tok_name(tok: Any) -> str:
    return str(getattr(tok, "name", type(tok).__name__))


def check_same_tokenizer(student_tok: Any, teacher_tok: Any, where: str = "teacher") -> None:
    """Raise a one-line ValueError unless the two tokenizers are the same (logit KD compares
    distributions over ids, so id i must mean the same token on both sides).

    Compared by behaviour: name, vocabulary size, end-of-text id, special tokens, and the ids of a
    probe text; files may differ (GPT-2 from encoder.json or from a .tiktoken file is the same).
    """
    if student_tok is None or teacher_tok is None:
        raise ValueError(f"{where}: cannot check tokenizers: the "
                         f"{'student' if student_tok is None else 'teacher'} has no tokenizer")
    probe = "Hello world! 123 \u00e9t\u00e9 \n\n### Response:\n\\boxed{42} <think>x</think>"

    def key(t: Any) -> tuple:
        return (t.vocab_size, t.eos_id, dict(getattr(t, "special_tokens", {}) or {}), list(t.encode(probe)))

    a, b = key(student_tok), key(teacher_tok)
    if a != b:
        what = ("vocabulary size" if a[0] != b[0] else "end-of-text id" if a[1] != b[1]
                else "special tokens" if a[2] != b[2] else "ids of a probe text")
        raise ValueError(f"{where}: its tokenizer ({_tok_name(teacher_tok)}, vocab {b[0]}) differs from the student's "
                         f"({_tok_name(student_tok)}, vocab {a[0]}) in its {what}; logit KD needs one shared "
                         "tokenizer (use trace-SFT for a teacher with another tokenizer)")
