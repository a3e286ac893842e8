"""Classification on top of the core `GPT` (Raschka ch.6), as pure functions.

- `replace_head(model, num_classes)`: the LM head (d_model → vocab) becomes a d_model → num_classes
  linear layer, still called `lm_head`, so the model's forward is unchanged and only its output width
  differs. A tied head is untied in the process (the embeddings keep their weights).
- `pool_hidden(hidden, lengths, mode)`: one vector per sequence. Batches are *right*-padded, so
  under causal attention the real tokens never see the padding: the last real token (index
  `length - 1`) or the mean over the real tokens is exactly what the unpadded sequence gives.
  (The book reads the last *position*, which for a padded row is an <|endoftext|> pad token; we read
  the last real token, so the result does not depend on how much padding a batch has.)
- `classify(model, input_ids, lengths, mode)`: logits (B, num_classes). Pooling happens before
  the head, which is equivalent to pooling logits (the head is linear) but cheaper.
- `freeze_for_classification(model, trainable_blocks)`: the book's recipe — train the last N blocks,
  the final norm and the head; freeze the rest.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn

from .model import GPT

Pooling = Literal["last", "mean"]
POOLINGS = ("last", "mean")


def replace_head(model: GPT, num_classes: int, *, seed: int | None = None) -> nn.Linear:
    """Replace `model.lm_head` with a fresh `nn.Linear(d_model, num_classes)` (with bias, as the book's out_head).

    `seed` makes the head's initialisation independent of the global RNG. Returns the new head.
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    ref = model.tok_emb.weight
    head = nn.Linear(model.config.d_model, num_classes, bias=True)
    if seed is not None:
        g = torch.Generator().manual_seed(seed)
        bound = 1.0 / model.config.d_model ** 0.5  # nn.Linear's default init, drawn from our generator
        with torch.no_grad():
            head.weight.uniform_(-bound, bound, generator=g)
            head.bias.uniform_(-bound, bound, generator=g)
    model.lm_head = head.to(device=ref.device, dtype=ref.dtype)
    return model.lm_head


def check_lengths(lengths: torch.Tensor, T: int) -> None:
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be 1-D (B,), got shape {tuple(lengths.shape)}")
    if lengths.numel() and (int(lengths.min()) < 1 or int(lengths.max()) > T):
        raise ValueError(f"lengths must lie in [1, {T}] (real tokens per row), got min {int(lengths.min())} "
                         f"max {int(lengths.max())}")


def pool_hidden(hidden: torch.Tensor, lengths: torch.Tensor | None, mode: Pooling = "last") -> torch.Tensor:
    """(B, T, D) → (B, D): the last real token or the mean over real tokens of right-padded rows.

    `lengths` (B,) counts real tokens; None means no padding (every row has T tokens).
    """
    B, T, _ = hidden.shape
    if mode not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {mode!r}")
    if lengths is None:
        lengths = torch.full((B,), T, dtype=torch.long, device=hidden.device)
    lengths = lengths.to(hidden.device)
    check_lengths(lengths, T)
    if mode == "last":
        return hidden[torch.arange(B, device=hidden.device), lengths - 1]
    real = (torch.arange(T, device=hidden.device)[None, :] < lengths[:, None]).to(hidden.dtype)
    return (hidden * real[..., None]).sum(1) / lengths[:, None].to(hidden.dtype)


def classify(model: GPT, input_ids: torch.Tensor, lengths: torch.Tensor | None = None,
             pooling: Pooling = "last") -> torch.Tensor:
    """Class logits (B, num_classes) of right-padded `input_ids` (B, T) after `replace_head`."""
    hidden = model(input_ids, return_hidden=True)
    return model.lm_head(pool_hidden(hidden, lengths, pooling))


def freeze_for_classification(model: GPT, trainable_blocks: int = 1) -> list[str]:
    """Freeze all but the last `trainable_blocks` blocks, `final_norm` and `lm_head` (-1: train everything).

    Returns the names of the trainable parameters.
    """
    n_layer = len(model.blocks)
    if not isinstance(trainable_blocks, int) or trainable_blocks < -1 or trainable_blocks > n_layer:
        raise ValueError(f"trainable_blocks must be -1 (all) or in [0, {n_layer}] for this {n_layer}-block model, "
                         f"got {trainable_blocks!r}")
    if trainable_blocks == -1:
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        for p in model.parameters():
            p.requires_grad_(False)
        keep = [model.final_norm, model.lm_head]
        keep += list(model.blocks[n_layer - trainable_blocks:]) if trainable_blocks > 0 else []
        for m in keep:
            for p in m.parameters():
                p.requires_grad_(True)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def head_size_of(state_dict: dict[str, torch.Tensor], prefix: str = "model.") -> int | None:
    """Number of classes of the head stored in a (Lightning) state dict, or None when absent.

    Looks at `lm_head.weight`, or `lm_head.base.weight` when the head was wrapped by LoRA.
    """
    for key in (f"{prefix}lm_head.weight", f"{prefix}lm_head.base.weight"):
        if key in state_dict:
            return int(state_dict[key].shape[0])
    return None


def check_tokenizers_agree(data_tok, model_tok, where: str = "",
                           probe: str = "Hello world! 123 <|endoftext|> \u00e9t\u00e9 \n\n### Response:") -> None:
    """Raise when the data's tokenizer is not the one the checkpoint was trained with.

    Compared by behaviour (vocab size, end-of-text id, the ids of a probe text), not by file hashes:
    the same GPT-2 vocabulary imported from HF files and from encoder.json/vocab.bpe must agree.
    """
    if data_tok is None or model_tok is None:
        return
    a = (data_tok.vocab_size, data_tok.eos_id, list(data_tok.encode(probe)))
    b = (model_tok.vocab_size, model_tok.eos_id, list(model_tok.encode(probe)))
    if a != b:
        raise ValueError(
            f"{where}the data module's tokenizer ({getattr(data_tok, 'name', type(data_tok).__name__)}, vocab "
            f"{a[0]}, eos {a[1]}) is not the checkpoint's ({getattr(model_tok, 'name', type(model_tok).__name__)}, "
            f"vocab {b[0]}, eos {b[1]}): they encode a probe text differently. Point the data's tokenizer at the "
            "checkpoint directory (data.tokenizer: <checkpoint dir>).")
