"""One decoder-only transformer for the GPT-2 and Qwen3 families, switched by `ModelConfig`.

Parameter names (the checkpoint format and the HF import/export rely on them):

    tok_emb.weight, pos_emb.weight (learned positions only)
    blocks.{i}.norm1.{weight,bias}, blocks.{i}.attn.qkv.{weight,bias}, blocks.{i}.attn.proj.{weight,bias}
    blocks.{i}.attn.q_norm.weight, blocks.{i}.attn.k_norm.weight (QK-norm only)
    blocks.{i}.norm2.*, blocks.{i}.mlp.fc.*, blocks.{i}.mlp.proj.*          (GELU MLP)
                        blocks.{i}.mlp.gate.*, blocks.{i}.mlp.up.*, blocks.{i}.mlp.proj.*  (SwiGLU)
    final_norm.*, lm_head.weight (absent from the state dict when tied to tok_emb)

`qkv` packs queries, keys and values as [q (n_head*head_dim) | k (n_kv*head_dim) | v (n_kv*head_dim)]
so one matmul computes all three (GPT-2's c_attn has exactly this layout).

Batched decoding of prompts of different lengths uses *left padding*: every row shares the
same cache columns, and `pad_lens[b]` says how many leading columns of row b are padding.
Positions are `column - pad_lens[b]`, and keys in padding columns are masked out, so a padded
row computes exactly what it would alone.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig

_HAS_ENABLE_GQA = "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 and cast back, as Qwen3 does (needed for bf16 parity)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def make_norm(cfg: ModelConfig, dim: int | None = None) -> nn.Module:
    dim = dim or cfg.d_model
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps)


def rope_tables(cfg: ModelConfig, length: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (length, head_dim) in float32, 'rotate-half' layout as in HF Qwen3/Llama."""
    hd = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, device=device, dtype=torch.float32) / hd))
    t = torch.arange(length, device=device, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, hd); cos/sin: (B or 1, 1, T, hd)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class KVCache(nn.Module):
    """Pre-allocated keys/values (B, n_kv, S, hd); static shapes so decoding can be graph-captured."""

    def __init__(self, batch_size: int, n_kv: int, max_seq_len: int, head_dim: int, *, dtype, device):
        super().__init__()
        shape = (batch_size, n_kv, max_seq_len, head_dim)
        # non-persistent: the cache never ends up in a state dict or checkpoint
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        self.k.index_copy_(2, input_pos, k.to(self.k.dtype))
        self.v.index_copy_(2, input_pos, v.to(self.v.dtype))
        return self.k, self.v


def pads_head(head: nn.Module, device_type: str) -> bool:
    """Whether `GPT.forward` computes the output layer with `head_logits`: a plain `nn.Linear` on CUDA whose
    rows are not a multiple of 8. The exact type, not isinstance: float8, LoRA and FSDP-wrapped heads run their
    own forward. (The chunked loss and KD call the head directly: at training sizes the padding measured neutral.)"""
    return device_type == "cuda" and type(head) is nn.Linear and head.weight.shape[0] % 8 != 0


def head_logits(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for an output layer whose row count (the vocabulary) is not a multiple of 8.

    Such logits have an unaligned row stride, and cuBLAS then falls back to an old unaligned kernel (GPT-2's
    50,257-row head at 64 decode rows: 155 µs on an H200, the largest kernel of the decode step). The weight is
    padded with zero rows to a multiple of 8 and the padding columns sliced off the logits: one copy of the
    weight per call (35 µs there), then aligned kernels forward and backward (the gradient of the padding is
    dropped). A padded copy kept between calls would save the 35 µs but go stale when training updates the weight.
    """
    rows = weight.shape[0]
    pad = -rows % 8
    if bias is not None:
        bias = F.pad(bias, (0, pad))
    return F.linear(x, F.pad(weight, (0, 0, 0, pad)), bias)[..., :rows]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.n_head, self.n_kv, self.hd = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, cfg.q_dim + 2 * cfg.kv_dim, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.q_dim, cfg.d_model, bias=cfg.bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
        self.kv_cache: KVCache | None = None

    def forward(self, x, cos, sin, mask, input_pos):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split([self.cfg.q_dim, self.cfg.kv_dim, self.cfg.kv_dim], dim=-1)
        q = q.view(B, T, self.n_head, self.hd)
        k = k.view(B, T, self.n_kv, self.hd)
        v = v.view(B, T, self.n_kv, self.hd)
        if self.cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if cos is not None:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.kv_cache is not None:
            k, v = self.kv_cache.update(input_pos, k, v)
        dropout = self.cfg.dropout if self.training else 0.0
        is_causal = mask is None and self.kv_cache is None and T > 1
        if self.n_kv != self.n_head:
            if _HAS_ENABLE_GQA:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                   is_causal=is_causal, enable_gqa=True)
            else:  # torch < 2.5
                rep = self.n_head // self.n_kv
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal)
        y = y.transpose(1, 2).reshape(B, T, self.cfg.q_dim)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.mlp
        if cfg.mlp == "swiglu":
            self.gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
            self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        else:
            self.fc = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)

    def forward(self, x):
        if self.kind == "swiglu":
            return self.proj(F.silu(self.gate(x)) * self.up(x))
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = make_norm(cfg)
        self.attn = Attention(cfg)
        self.norm2 = make_norm(cfg)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, mask, input_pos):
        x = x + self.drop(self.attn(self.norm1(x), cos, sin, mask, input_pos))
        return x + self.drop(self.mlp(self.norm2(x)))


class GPT(nn.Module):
    """GPT-2 / Qwen3-style decoder. `GPT(config)(idx)` returns logits (B, T, padded_vocab)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"GPT expects a ModelConfig, got {type(config).__name__}")
        self.config = cfg = config
        self.tok_emb = nn.Embedding(cfg.padded_vocab_size, cfg.d_model)
        if cfg.pos_emb == "learned":
            self.pos_emb = nn.Embedding(cfg.context_length, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.final_norm = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.padded_vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        if cfg.pos_emb == "rope":
            cos, sin = rope_tables(cfg, cfg.context_length)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def init_weights(self, std: float = 0.02, scheme: str = "gpt2") -> None:
        """Re-initialise all weights.

        "gpt2": N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer), norms = 1 (nanoGPT/HF).
        "torch": PyTorch's defaults (Linear: Kaiming-uniform; Embedding: N(0, 1)) — what the book's
        from-scratch GPTModel gets, which memorises a small corpus much faster in few steps.
        """
        if scheme == "torch":
            for module in self.modules():
                if module is not self and hasattr(module, "reset_parameters"):
                    module.reset_parameters()
            for module in self.modules():
                if isinstance(module, RMSNorm):
                    nn.init.ones_(module.weight)
            self.reset_buffers()
            return
        if scheme != "gpt2":
            raise ValueError(f"init scheme must be 'gpt2' or 'torch', got {scheme!r}")
        resid_std = std / math.sqrt(2 * self.config.n_layer)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, resid_std if name.endswith(".proj") else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, std)
            elif isinstance(module, (nn.LayerNorm, RMSNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        self.reset_buffers()

    def reset_buffers(self) -> None:
        """Recompute non-persistent buffers (after `to_empty` from the meta device)."""
        if self.config.pos_emb == "rope":
            device = self.tok_emb.weight.device
            cos, sin = rope_tables(self.config, self.config.context_length, device=device)
            self.rope_cos, self.rope_sin = cos, sin

    def _apply(self, fn, recurse=True):
        # `.to(bfloat16)`/`.half()` would also cast the rope tables; keep them float32 (recomputed),
        # so a cast model computes exactly what a checkpoint loaded in that dtype computes.
        super()._apply(fn, recurse)
        self.reset_buffers()
        return self

    # ------------------------------------------------------------------ KV cache
    def setup_kv_cache(self, batch_size: int, max_seq_len: int | None = None, *, dtype=None, device=None) -> None:
        """Allocate a static cache for `batch_size` rows of up to `max_seq_len` columns."""
        max_seq_len = max_seq_len or self.config.context_length
        if max_seq_len > self.config.context_length:
            raise ValueError(f"KV cache length {max_seq_len} exceeds the model's context_length "
                             f"{self.config.context_length}")
        ref = self.tok_emb.weight
        dtype = dtype or ref.dtype
        device = device or ref.device
        for block in self.blocks:
            block.attn.kv_cache = KVCache(batch_size, self.config.n_kv_head, max_seq_len, self.config.head_dim,
                                          dtype=dtype, device=device)

    def reset_kv_cache(self) -> None:
        for block in self.blocks:
            block.attn.kv_cache = None

    @property
    def kv_cache_shape(self) -> tuple[int, int] | None:
        """(batch_size, max_seq_len) of the allocated cache, or None."""
        c = self.blocks[0].attn.kv_cache if len(self.blocks) else None
        return None if c is None else (c.k.shape[0], c.k.shape[2])

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        idx: torch.Tensor,
        *,
        input_pos: torch.Tensor | None = None,
        pad_lens: torch.Tensor | None = None,
        last_only: bool = False,
        return_hidden: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, padded_vocab) for token ids `idx` (B, T).

        input_pos: the cache columns `idx` occupies (T,), required when a KV cache is set up.
        pad_lens: (B,) number of left-padding columns per row; positions start at 0 after them.
        last_only: return only the last position's logits (B, 1, V), as decoding needs.
        return_hidden: return the final-normed hidden states (B, T, d_model) instead of logits.
        """
        B, T = idx.shape
        cached = self.blocks[0].attn.kv_cache is not None if len(self.blocks) else False
        if cached:
            if input_pos is None:
                raise ValueError("a KV cache is set up: pass input_pos (the cache columns of idx)")
            cols = input_pos
        else:
            if T > self.config.context_length:
                raise ValueError(f"sequence length {T} exceeds context_length {self.config.context_length}")
            cols = input_pos if input_pos is not None else torch.arange(T, device=idx.device)
        if pad_lens is not None:
            positions = (cols[None, :] - pad_lens[:, None]).clamp_min(0)
        else:
            positions = cols[None, :]

        x = self.tok_emb(idx)
        if self.config.pos_emb == "learned":
            x = x + self.pos_emb(positions)
        cos = sin = None
        if self.config.pos_emb == "rope":
            cos = self.rope_cos[positions].unsqueeze(1)
            sin = self.rope_sin[positions].unsqueeze(1)
        x = self.drop(x)
        mask = self._attention_mask(cols, pad_lens, cached, idx.device)
        for block in self.blocks:
            x = block(x, cos, sin, mask, cols)
        if last_only:
            x = x[:, -1:, :]
        x = self.final_norm(x)
        if return_hidden:
            return x
        head = self.lm_head
        if pads_head(head, x.device.type):
            return head_logits(x, head.weight, head.bias)
        return head(x)

    def _attention_mask(self, cols, pad_lens, cached, device):
        """Boolean mask (B|1, 1, T, S), True = may attend; None when plain causal attention applies."""
        if not cached and pad_lens is None:
            return None
        if cached:
            S = self.blocks[0].attn.kv_cache.k.shape[2]
            key_cols = torch.arange(S, device=device)
        else:
            key_cols = cols
        allowed = key_cols[None, :] <= cols[:, None]  # (T, S) causal over columns
        if pad_lens is not None:
            not_pad = key_cols[None, None, :] >= pad_lens[:, None, None]  # (B, 1, S)
            # a padding query attends to itself only, so its (ignored) output stays finite
            self_key = key_cols[None, :] == cols[:, None]
            allowed = (allowed[None] & not_pad) | self_key[None]
            return allowed[:, None]
        return allowed[None, None]

    # ------------------------------------------------------------------ helpers
    def num_params(self, trainable_only: bool = False) -> int:
        seen, total = set(), 0
        for p in self.parameters():
            if id(p) in seen or (trainable_only and not p.requires_grad):
                continue
            seen.add(id(p))
            total += p.numel()
        return total

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GPT":
        return cls(ModelConfig.from_preset(name, **overrides))
