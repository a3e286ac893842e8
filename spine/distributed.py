"""Sharded training of a `GPT` with FSDP2, and getting whole weights back out of it.

- `shard_fsdp2` applies `torch.distributed.fsdp.fully_shard` per block and at the root (torchtitan's
  layout): each block's parameters are all-gathered just before its forward and freed after.
- `full_state_dict` / `unsharded_copy` gather the full weights (a collective: every rank calls it).
- `read_lightning_checkpoint` / `consolidate` turn a Lightning training checkpoint — a `.ckpt` file
  or the directory a sharded strategy writes (torch.distributed.checkpoint shards + `meta.pt`) —
  into a spine checkpoint, offline, in one process, without the ranks that wrote it.

Only torch is used here (spine never imports Lightning); the Lightning side lives in `modules/`.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import ModelConfig
from .model import GPT

__all__ = ["is_sharded", "shard_fsdp2", "full_state_dict", "unsharded_copy", "compute_dtype", "build_from_state",
           "read_lightning_checkpoint", "consolidate", "tokenizer_files", "MODEL_CONFIG_KEY", "TOKENIZER_FILES_KEY"]

# keys the training modules add to every Lightning checkpoint so it can be consolidated on its own
MODEL_CONFIG_KEY = "spine_model_config"
TOKENIZER_FILES_KEY = "spine_tokenizer_files"
DCP_METADATA = ".metadata"  # written by torch.distributed.checkpoint
LIGHTNING_META = "meta.pt"  # written by Lightning's sharded strategies next to the shards


def is_sharded(module: nn.Module) -> bool:
    """True when any parameter is a DTensor (FSDP2 / tensor parallel)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def shard_fsdp2(model: GPT, mesh: Any, *, param_dtype: torch.dtype | None = None,
                reduce_dtype: torch.dtype | None = torch.float32, reshard_after_forward: bool = True) -> GPT:
    """Shard `model` in place over the 1-D device mesh `mesh`: one FSDP unit per block plus the root.

    `param_dtype` (e.g. bf16): the dtype parameters are all-gathered and computed in; the sharded
    master weights and the optimizer stay float32 and gradients are reduced in `reduce_dtype`.
    The embeddings, final norm and head (tied or not) belong to the root unit.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if getattr(mesh, "ndim", 1) != 1:
        raise ValueError(f"shard_fsdp2 needs a 1-D device mesh (data parallel), got {mesh}")
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    model._spine_param_dtype = param_dtype  # what the forward computes in (see `compute_dtype`)
    return model


def compute_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the model's forward sees its weights in (FSDP2's `param_dtype` when one was set)."""
    dt = getattr(model, "_spine_param_dtype", None)
    return dt if dt is not None else next(model.parameters()).dtype


def full_state_dict(model: nn.Module, *, rank0_only: bool = True) -> dict[str, torch.Tensor]:
    """The whole (unsharded) state dict. A collective when `model` is sharded: call on every rank.

    With `rank0_only`, rank 0 gets it on CPU and the other ranks an empty dict (and no memory for it);
    without, every rank gets it on the model's device (for an on-device copy, no trip through the
    host). A model that is not sharded just returns its own state dict on CPU.
    """
    if not is_sharded(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=rank0_only)
    return {k: v.detach() for k, v in get_model_state_dict(model, options=opts).items()}


def build_from_state(cfg: ModelConfig, state: dict[str, torch.Tensor], *, device: str | torch.device = "cpu",
           dtype: torch.dtype | None = None, where: str = "state dict") -> GPT:
    """A plain `GPT` (eval mode) holding `state` (names as `GPT.state_dict()`); errors name `where`."""
    from .checkpoint import empty_model

    state = dict(state)
    ref = state.get("tok_emb.weight")
    net = empty_model(cfg, device=device, dtype=dtype or (ref.dtype if ref is not None else None))
    expected = dict(net.state_dict(keep_vars=True))
    if cfg.tie_embeddings:
        expected.pop("lm_head.weight", None)
        state.pop("lm_head.weight", None)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{where}: does not match the model config: missing {missing[:6]}, unexpected "
                         f"{unexpected[:6]}")
    with torch.no_grad():
        for name, dst in expected.items():
            src = state[name]
            if tuple(src.shape) != tuple(dst.shape):
                raise ValueError(f"{where}: tensor {name!r} has shape {list(src.shape)}, the config expects "
                                 f"{list(dst.shape)}")
            dst.copy_(src)
    return net.eval()


def unsharded_copy(model: GPT, *, device: str | torch.device | None = None) -> GPT:
    """A plain single-device `GPT` with `model`'s current weights (every rank gets one; a collective).

    For work that must not run in lock-step across ranks (generation, evaluation on a rank's own
    share of problems): a sharded model would all-gather inside every forward and deadlock as soon as
    the ranks' numbers of forwards differ. Returns `model` itself when it is not sharded.
    """
    if not is_sharded(model):
        return model
    state = full_state_dict(model, rank0_only=False)
    if device is None:
        device = next(model.parameters()).device
    return build_from_state(model.config, state, device=device, dtype=compute_dtype(model), where="gathered weights")


# ---------------------------------------------------------------------------- offline consolidation
def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _load_meta(path: Path) -> dict:
    """weights_only load with one-line errors and the content checksum checked (spine.atomic)."""
    from .atomic import load_training_checkpoint

    return load_training_checkpoint(path, map_location="cpu")


def _config_from(meta: dict, where: Path) -> ModelConfig:
    data = meta.get(MODEL_CONFIG_KEY)
    if not isinstance(data, dict):
        raise ValueError(f"{where}: has no {MODEL_CONFIG_KEY!r} entry; it was not written by a spine training "
                         "module (spine >= this version adds the model config to every training checkpoint)")
    return ModelConfig.from_dict(data, source=f"{where} [{MODEL_CONFIG_KEY}]")


def read_lightning_checkpoint(path: str | Path, *, prefix: str = "model."
                              ) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, bytes], dict]:
    """(model config, model state dict, tokenizer files, metadata) from a Lightning training checkpoint.

    `path` is a `.ckpt` file, or a sharded checkpoint directory (`.metadata` + shard files + `meta.pt`),
    read in this one process at any world size (torch.distributed.checkpoint re-shards on load).
    Only the model's tensors are read, not the optimizer's. `prefix` is the module attribute that
    holds the `GPT` (`SpineModule.model`).
    """
    p = Path(path).expanduser()
    if p.is_dir():
        if not (p / DCP_METADATA).is_file() or not (p / LIGHTNING_META).is_file():
            raise ValueError(f"{p}: a sharded checkpoint directory needs {DCP_METADATA} (the shards' index) and "
                             f"{LIGHTNING_META} (Lightning's metadata); found {sorted(x.name for x in p.iterdir())[:8]}")
        meta = _load_meta(p / LIGHTNING_META)
        cfg = _config_from(meta, p / LIGHTNING_META)
        state = _read_dcp_model(p, cfg, prefix)
    elif p.is_file():
        meta = _load_meta(p)
        cfg = _config_from(meta, p)
        if not isinstance(meta.get("state_dict"), dict):
            raise ValueError(f"{p}: has no 'state_dict' entry")
        state = _strip(meta.pop("state_dict"), prefix)
        meta.pop("optimizer_states", None)
    else:
        raise FileNotFoundError(f"checkpoint not found: {p}")
    files = {name: bytes(t.numpy().tobytes()) for name, t in (meta.get(TOKENIZER_FILES_KEY) or {}).items()}
    return cfg, state, files, meta


def _read_dcp_model(directory: Path, cfg: ModelConfig, prefix: str) -> dict[str, torch.Tensor]:
    import torch.distributed.checkpoint as dcp

    reader = dcp.FileSystemReader(str(directory))
    stored = reader.read_metadata().state_dict_metadata
    # Lightning saves {"state_dict": module state dict, "optimizer_0": ...}; DCP flattens the nesting
    names = {k[len("state_dict.") + len(prefix):] for k in stored if k.startswith("state_dict." + prefix)}
    if not names:
        raise ValueError(f"{directory}: no tensors under 'state_dict.{prefix}' (found e.g. {sorted(stored)[:4]})")
    with torch.device("meta"):
        shapes = {k: (v.shape, v.dtype) for k, v in GPT(cfg).state_dict().items()}
    unknown = sorted(names - set(shapes))
    if unknown:
        raise ValueError(f"{directory}: tensors {unknown[:6]} are not in the model described by its config")
    targets = {}
    for name in sorted(names):
        md = stored["state_dict." + prefix + name]
        size = tuple(getattr(md, "size", shapes[name][0]))
        dtype = getattr(getattr(md, "properties", None), "dtype", shapes[name][1])
        targets[name] = torch.empty(size, dtype=dtype)
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        dcp.load({"state_dict": {prefix + k: v for k, v in targets.items()}}, storage_reader=reader, no_dist=True)
    return targets


def consolidate(path: str | Path, out: str | Path, *, tokenizer: Any | None = None,
                dtype: torch.dtype | None = None) -> Path:
    """Write the model inside Lightning training checkpoint `path` as a spine checkpoint at `out`.

    The tokenizer is the one the training module stored in the checkpoint, unless `tokenizer` is given.
    """
    import tempfile

    from .checkpoint import save_checkpoint
    from .tokenizer import load_tokenizer

    cfg, state, files, meta = read_lightning_checkpoint(path)
    net = build_from_state(cfg, state, dtype=dtype, where=str(path))
    # the tokenizer is rebuilt from its files in a temporary directory, which must outlive the save
    with tempfile.TemporaryDirectory() as tmp:
        if tokenizer is None and files:
            for name, data in files.items():
                if Path(name).name != name:
                    raise ValueError(f"{path}: tokenizer file name {name!r} must be a plain file name")
                (Path(tmp) / name).write_bytes(data)
            tokenizer = load_tokenizer(tmp)
        return save_checkpoint(out, net, tokenizer, metadata=_provenance(path, meta))


def tokenizer_files(tokenizer: Any) -> dict[str, torch.Tensor]:
    """The files `tokenizer.save` writes, as uint8 tensors (storable in a `weights_only` checkpoint)."""
    import tempfile

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(tmp)
        for f in sorted(Path(tmp).iterdir()):
            if f.is_file():
                out[f.name] = torch.frombuffer(bytearray(f.read_bytes()), dtype=torch.uint8).clone()
    return out


def _provenance(path: str | Path, meta: dict) -> dict:
    out = {"consolidated_from": str(Path(path).expanduser().absolute())}
    for key in ("global_step", "epoch"):
        if isinstance(meta.get(key), int):
            out[key] = meta[key]
    return out
