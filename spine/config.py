"""Model configuration: one dataclass for both the GPT-2 and the Qwen3 family.

A config is plain data. It round-trips through JSON (`config.json` in a checkpoint) and
validates itself so that a typo in a YAML file fails with the field's name, not with a shape
error deep inside torch.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

PosEmb = Literal["learned", "rope"]
NormKind = Literal["layernorm", "rmsnorm"]
MLPKind = Literal["gelu", "swiglu"]


@dataclass
class ModelConfig:
    """Shape and switches of a `GPT`.

    `head_dim` defaults to `d_model // n_head`; Qwen3 sets it explicitly (128 with d_model 1024
    and 16 heads). `n_kv_head` defaults to `n_head` (plain multi-head attention); fewer heads
    give grouped-query attention. `pad_vocab_to` rounds the embedding and head rows up to a
    multiple (64 is fast on GPUs); rows past `vocab_size` are never produced by the tokenizer
    and generation masks them out.
    """

    vocab_size: int = 50257
    context_length: int = 1024
    d_model: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None
    head_dim: int | None = None
    d_ff: int | None = None
    pos_emb: PosEmb = "learned"
    rope_theta: float = 10000.0
    norm: NormKind = "layernorm"
    norm_eps: float = 1e-5
    mlp: MLPKind = "gelu"
    qk_norm: bool = False
    qkv_bias: bool = True
    bias: bool = True
    tie_embeddings: bool = True
    dropout: float = 0.0
    pad_vocab_to: int = 1
    name: str = "custom"
    family: str = "gpt2"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "d_model", "n_layer", "n_head", "n_kv_head", "head_dim", "d_ff",
                     "pad_vocab_to"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r} "
                                 f"({type(value).__name__})")
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.head_dim is None:
            if self.n_head > 0 and self.d_model % self.n_head != 0:
                raise ValueError(
                    f"ModelConfig: d_model={self.d_model} is not divisible by n_head={self.n_head}; "
                    "set head_dim explicitly"
                )
            self.head_dim = self.d_model // max(self.n_head, 1)
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ValueError naming the offending field when the config cannot build a model."""
        # types first: "false" (a string) would be truthy, "0.1" or null would fail deep inside torch
        for name in ("qk_norm", "qkv_bias", "bias", "tie_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"ModelConfig.{name} must be true or false, got {value!r} "
                                 f"({type(value).__name__})")
        for name in ("rope_theta", "norm_eps", "dropout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"ModelConfig.{name} must be a number, got {value!r} ({type(value).__name__})")
        for name in ("name", "family"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"ModelConfig.{name} must be a string, got {getattr(self, name)!r}")
        if not isinstance(self.extra, dict):
            raise ValueError(f"ModelConfig.extra must be an object, got {self.extra!r}")
        if self.rope_theta <= 0:
            raise ValueError(f"ModelConfig.rope_theta must be > 0, got {self.rope_theta}")
        positive = ["vocab_size", "context_length", "d_model", "n_layer", "n_head", "n_kv_head",
                    "head_dim", "d_ff", "pad_vocab_to"]
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        choices = {"pos_emb": ("learned", "rope"), "norm": ("layernorm", "rmsnorm"),
                   "mlp": ("gelu", "swiglu")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"ModelConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.n_head % self.n_kv_head != 0:
            raise ValueError(
                f"ModelConfig: n_head={self.n_head} must be a multiple of n_kv_head={self.n_kv_head} "
                "(grouped-query attention shares each key/value head among n_head/n_kv_head query heads)"
            )
        if self.pos_emb == "rope" and self.head_dim % 2:
            raise ValueError(f"ModelConfig.head_dim must be even for rotary positions, got {self.head_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.norm_eps <= 0:
            raise ValueError(f"ModelConfig.norm_eps must be > 0, got {self.norm_eps}")

    # ------------------------------------------------------------------ derived
    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_to
        return ((self.vocab_size + m - 1) // m) * m

    @property
    def q_dim(self) -> int:
        return self.n_head * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_head * self.head_dim

    def num_params(self, include_embeddings: bool = True) -> int:
        """Parameter count computed from the shape (no model needed; used for FLOPs/MFU)."""
        d, L = self.d_model, self.n_layer
        attn = d * (self.q_dim + 2 * self.kv_dim) + self.q_dim * d
        if self.qkv_bias:
            attn += self.q_dim + 2 * self.kv_dim
        if self.bias:
            attn += d
        if self.qk_norm:
            attn += 2 * self.head_dim
        n_mats = 3 if self.mlp == "swiglu" else 2
        mlp = n_mats * d * self.d_ff + ((self.d_ff + d) if self.bias else 0)
        norm = d * (2 if self.norm == "layernorm" else 1)
        total = L * (attn + mlp + 2 * norm) + norm
        emb = self.padded_vocab_size * d
        if self.pos_emb == "learned":
            emb += self.context_length * d
        head = 0 if self.tie_embeddings else self.padded_vocab_size * d
        return total + (emb + head if include_embeddings else 0)

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward = 6N plus attention), as in PaLM/nanoGPT."""
        T = seq_len or self.context_length
        n = self.num_params(include_embeddings=False) + self.padded_vocab_size * self.d_model
        attn = 12 * self.n_layer * self.n_head * self.head_dim * T
        # causal attention does half the score/value work
        return 6 * n + attn / 2

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> "ModelConfig":
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object of ModelConfig fields, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown ModelConfig field(s) {unknown}; known fields: {sorted(known)}")
        required = {"vocab_size", "context_length", "d_model", "n_layer", "n_head"}
        missing = sorted(required - set(data))
        if missing:
            raise ValueError(f"{source}: missing required ModelConfig field(s) {missing}")
        try:
            return cls(**data)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, path_or_text: str | Path) -> "ModelConfig":
        p = Path(path_or_text) if not str(path_or_text).lstrip().startswith("{") else None
        if p is not None:
            if not p.is_file():
                raise FileNotFoundError(f"model config not found: {p}")
            text, source = p.read_text(), str(p)
        else:
            text, source = str(path_or_text), "config JSON"
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}: not valid JSON ({e})") from None
        return cls.from_dict(data, source=source)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "ModelConfig":
        """A named preset (see `PRESETS`), optionally with fields overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
        data = dict(PRESETS[name])
        data.update(overrides)
        data["name"] = overrides.get("name", name)
        return cls.from_dict(data, source=f"preset {name!r}")

    def replace(self, **changes: Any) -> "ModelConfig":
        data = self.to_dict()
        data.update(changes)
        return type(self).from_dict(data, source="ModelConfig.replace")


def _gpt2(d: int, layers: int, heads: int) -> dict[str, Any]:
    return dict(vocab_size=50257, context_length=1024, d_model=d, n_layer=layers, n_head=heads,
                pos_emb="learned", norm="layernorm", norm_eps=1e-5, mlp="gelu", qk_norm=False,
                qkv_bias=True, bias=True, tie_embeddings=True, family="gpt2")


def _qwen3(d: int, layers: int, heads: int, kv: int, ff: int, tie: bool) -> dict[str, Any]:
    return dict(vocab_size=151936, context_length=40960, d_model=d, n_layer=layers, n_head=heads,
                n_kv_head=kv, head_dim=128, d_ff=ff, pos_emb="rope", rope_theta=1_000_000.0,
                norm="rmsnorm", norm_eps=1e-6, mlp="swiglu", qk_norm=True, qkv_bias=False,
                bias=False, tie_embeddings=tie, family="qwen3")


# Shapes as in the public checkpoints (openai-community/gpt2*, Qwen/Qwen3-*).
PRESETS: dict[str, dict[str, Any]] = {
    "gpt2-124m": _gpt2(768, 12, 12),
    "gpt2-355m": _gpt2(1024, 24, 16),
    "gpt2-774m": _gpt2(1280, 36, 20),
    "gpt2-1558m": _gpt2(1600, 48, 25),
    "qwen3-0.6b": _qwen3(1024, 28, 16, 8, 3072, True),
    "qwen3-1.7b": _qwen3(2048, 28, 16, 8, 6144, True),
    "qwen3-4b": _qwen3(2560, 36, 32, 8, 9728, True),
    "qwen3-8b": _qwen3(4096, 36, 32, 8, 12288, False),
    # tiny shapes for tests and CPU runs
    "gpt2-tiny": dict(_gpt2(64, 2, 4), context_length=128),
    "qwen3-tiny": dict(_qwen3(64, 2, 4, 2, 128, True), head_dim=16, context_length=256, vocab_size=1024,
                       rope_theta=10000.0),
}
