"""LoRA adapters for the core's linear layers (Raschka appendix E; Hu et al. 2021).

`LoRALinear` wraps an `nn.Linear` and adds a low-rank update:

    y = base(x) + scale * dropout(x) @ A^T @ B^T,     A: (rank, in), B: (out, rank), scale = alpha / rank

A is Kaiming-uniform (as `nn.Linear` and PEFT initialise it) and B is zero, so a freshly wrapped
model computes exactly what the base model computes. The update as a weight is `scale * B @ A`
(out, in), which is what `merge_lora` adds to the base weight and `unmerge_lora` subtracts.

Scaling: we use the paper's `alpha / rank` (PEFT, litgpt). The book's appendix E multiplies by
`alpha` alone, so its rank 16 / alpha 16 run corresponds to our rank 16 / alpha 256.

Parameter names: a wrapped layer `blocks.0.attn.qkv` holds `blocks.0.attn.qkv.base.weight` (frozen)
plus `blocks.0.attn.qkv.lora_A` / `lora_B`. `merged_copy` returns a plain `GPT` with the original
names, so `spine.checkpoint.save_checkpoint` / `load_checkpoint` work on it unchanged.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["LoRALinear", "DEFAULT_TARGETS", "apply_lora", "merge_lora", "unmerge_lora", "lora_state_dict",
           "save_lora", "load_lora", "merged_copy", "lora_modules", "trainable_parameter_names", "lora_disabled"]

# every linear layer inside the transformer blocks (GELU and SwiGLU MLPs); the LM/classifier head is opt-in
DEFAULT_TARGETS: tuple[str, ...] = ("qkv", "proj", "fc", "gate", "up")
# "head" is the name users reach for; in `GPT` the output layer (LM or classifier head) is `lm_head`
_ALIASES = {"head": "lm_head"}
_MLP_KIND_NAMES = {"fc", "gate", "up", "mlp.fc", "mlp.gate", "mlp.up"}


class LoRALinear(nn.Module):
    """`base(x) + (alpha/rank) * B(A(dropout(x)))` with A Kaiming-uniform and B zero (output unchanged at start)."""

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
        self.base = base
        self.rank, self.alpha = rank, float(alpha)
        self.scale = self.alpha / rank
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.disabled = False  # see `lora_disabled`

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The base weight (code that reads `.weight`, e.g. shape checks, keeps working)."""
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def delta_weight(self) -> torch.Tensor:
        """The adapter as a weight update (out, in)."""
        return (self.lora_B @ self.lora_A) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged or self.disabled:
            return y
        # two thin matmuls, never the full (out, in) update: cheap in memory and FLOPs
        return y + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scale

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base.weight.add_(self.delta_weight().to(self.base.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight.sub_(self.delta_weight().to(self.base.weight.dtype))
            self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, merged={self.merged}"


def _matches(name: str, target: str) -> bool:
    """`target`'s dotted parts appear as consecutive parts of `name` ("proj" ~ blocks.0.attn.proj, "mlp" ~ blocks.0.mlp.fc)."""
    parts, want = name.split("."), target.split(".")
    return any(parts[i:i + len(want)] == want for i in range(len(parts) - len(want) + 1))


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """All `LoRALinear` layers of `model` by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def apply_lora(
    model: nn.Module,
    targets: Sequence[str] | str | None = None,
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    trainable: Sequence[str] = (),
) -> list[str]:
    """Wrap matching `nn.Linear` layers in `LoRALinear`, freeze every other parameter; return the wrapped names.

    targets: dotted name parts matched against module names — e.g. "qkv", "proj", "fc", "gate", "up",
      "attn.qkv", "mlp" (every linear in the MLP), "lm_head"/"head" (the output layer). Default: `DEFAULT_TARGETS`.
    trainable: module names (same matching) whose own parameters stay trainable, e.g. ["lm_head"] for a
      freshly initialised classification head that has nothing to adapt from.
    A tied LM head (sharing `tok_emb.weight`) cannot be a target: merging would change the embeddings too.
    """
    if lora_modules(model):
        raise ValueError("apply_lora: the model already has LoRA adapters; apply once (or merged_copy first)")
    if isinstance(targets, str):
        targets = [targets]
    targets = [_ALIASES.get(t, t) for t in (targets if targets is not None else DEFAULT_TARGETS)]
    trainable = [_ALIASES.get(t, t) for t in trainable]
    if not targets:
        raise ValueError("apply_lora: targets is empty; name at least one linear layer (e.g. 'qkv')")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    # one target list serves both MLP kinds (GELU fc vs SwiGLU gate/up): those names may match nothing
    unmatched = [t for t in targets if t not in _MLP_KIND_NAMES and not any(_matches(n, t) for n in linears)]
    if unmatched:
        kinds = sorted({n.split(".")[-1] for n in linears} | {".".join(n.split(".")[-2:]) for n in linears})
        raise ValueError(f"apply_lora: target(s) {unmatched} match no linear layer; linear layers are named "
                         f"like {kinds} (e.g. {sorted(linears)[:3]})")
    chosen = [n for n in linears if any(_matches(n, t) for t in targets)]
    if not chosen:
        raise ValueError(f"apply_lora: no linear layer matches {targets}")
    tok_emb = getattr(model, "tok_emb", None)
    for n in chosen:
        if tok_emb is not None and linears[n].weight is tok_emb.weight:
            raise ValueError(f"apply_lora: {n!r} shares its weight with tok_emb (tied embeddings); an adapter on it "
                             "would change the input embeddings when merged. Leave it out of targets.")
    for p in model.parameters():
        p.requires_grad_(False)
    for n in chosen:
        _set_submodule(model, n, LoRALinear(linears[n], rank=rank, alpha=alpha, dropout=dropout))
    for t in trainable:
        mods = [m for n, m in model.named_modules() if _matches(n, t)]
        if not mods:
            raise ValueError(f"apply_lora: trainable module {t!r} not found in the model")
        for m in mods:
            for p in m.parameters():
                p.requires_grad_(True)
    for m in lora_modules(model).values():
        m.lora_A.requires_grad_(True)
        m.lora_B.requires_grad_(True)
    return chosen


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weight in place (forward then skips the adapter path)."""
    for m in lora_modules(model).values():
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo `merge_lora`: subtract each adapter's update from its base weight."""
    for m in lora_modules(model).values():
        m.unmerge()


@contextlib.contextmanager
def lora_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block `model` computes what its base model computes (every adapter skipped).

    This is DPO's "reference = the same model with LoRA disabled": no second copy of the weights.
    Merged adapters are unmerged for the block and merged back after it. Nesting is allowed.
    """
    mods = list(lora_modules(model).values())
    if not mods:
        raise ValueError("lora_disabled: the model has no LoRA adapters (call apply_lora first)")
    state = [(m, m.disabled, m.merged) for m in mods]
    try:
        for m in mods:
            m.unmerge()
            m.disabled = True
        yield model
    finally:
        for m, was_disabled, was_merged in state:
            m.disabled = was_disabled
            if was_merged:
                m.merge()


def trainable_parameter_names(model: nn.Module) -> list[str]:
    """Names of parameters with requires_grad (shared parameters once)."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def lora_state_dict(model: nn.Module, include_trainable: bool = True) -> dict[str, torch.Tensor]:
    """Adapter tensors (`*.lora_A`, `*.lora_B`), plus other trainable parameters (e.g. a classifier head).

    The frozen base weights are left out: they are whatever checkpoint the adapters were trained on.
    """
    out = {}
    for n, p in model.named_parameters():
        is_adapter = n.endswith(".lora_A") or n.endswith(".lora_B")
        if is_adapter or (include_trainable and p.requires_grad):
            out[n] = p.detach().cpu().contiguous()
    return out


def _lora_meta(model: nn.Module) -> dict[str, str]:
    mods = lora_modules(model)
    if not mods:
        raise ValueError("the model has no LoRA adapters (call apply_lora first)")
    first = next(iter(mods.values()))
    drop = first.dropout.p if isinstance(first.dropout, nn.Dropout) else 0.0
    return {"format": "spine-lora/1", "rank": str(first.rank), "alpha": repr(first.alpha), "dropout": repr(drop),
            "targets": json.dumps(sorted(mods)),
            "trainable": json.dumps([n for n, p in model.named_parameters()
                                     if p.requires_grad and not n.endswith((".lora_A", ".lora_B"))])}


def save_lora(model: nn.Module, path: str | Path) -> Path:
    """Write the adapters (and other trainable tensors) to a `.safetensors` file with rank/alpha/targets metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    meta = _lora_meta(model)
    if any(m.merged for m in lora_modules(model).values()):
        raise ValueError("save_lora: adapters are merged into the base weights; unmerge_lora first")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(lora_state_dict(model), str(tmp), metadata=meta)
    tmp.replace(path)  # atomic: a reader never sees half a file
    return path


def load_lora(model: nn.Module, path: str | Path) -> list[str]:
    """Load adapters saved by `save_lora` into `model` (applying LoRA first if it has none). Returns tensor names.

    Names and shapes must match the model; errors list what is missing/unexpected.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA adapter file not found: {path}")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("format") != "spine-lora/1":
        raise ValueError(f"{path}: not a spine LoRA file (metadata format={meta.get('format')!r})")
    if not lora_modules(model):
        apply_lora(model, targets=json.loads(meta["targets"]), rank=int(meta["rank"]), alpha=float(meta["alpha"]),
                   dropout=float(meta.get("dropout", "0.0")), trainable=[])
        # the extra trainable tensors (e.g. head) are parameters by full name; unfreeze them as saved
        saved_trainable = set(json.loads(meta.get("trainable", "[]")))
        for n, p in model.named_parameters():
            if n in saved_trainable:
                p.requires_grad_(True)
    params = dict(model.named_parameters())
    missing = sorted(n for n in params if n.endswith((".lora_A", ".lora_B")) and n not in tensors)
    unexpected = sorted(n for n in tensors if n not in params)
    if missing or unexpected:
        raise ValueError(f"{path}: adapter names do not match the model: missing {missing[:6]}, "
                         f"unexpected {unexpected[:6]}")
    with torch.no_grad():
        for n, t in tensors.items():
            if tuple(params[n].shape) != tuple(t.shape):
                raise ValueError(f"{path}: tensor {n!r} has shape {list(t.shape)}, the model expects "
                                 f"{list(params[n].shape)} (different rank or base model?)")
            params[n].copy_(t)
    return sorted(tensors)


def merged_copy(model: nn.Module) -> nn.Module:
    """A deep copy with every adapter folded in and each `LoRALinear` replaced by a plain `nn.Linear`.

    The copy has the base model's parameter names (e.g. `blocks.0.attn.qkv.weight`), so it can be
    saved with `save_checkpoint` and read back with `load_checkpoint`. `model` itself is unchanged.
    """
    out = copy.deepcopy(model)
    for name, m in lora_modules(out).items():
        m.merge()
        _set_submodule(out, name, m.base)
    for p in out.parameters():
        p.requires_grad_(True)
    return out

