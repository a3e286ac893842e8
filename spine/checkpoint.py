"""The spine checkpoint: a directory that fully describes one model (and its tokenizer).

    model.safetensors   weights by the parameter names of `spine.model` (a tied head is stored once)
    config.json         `ModelConfig.to_json`
    spine_tokenizer.json + files   the tokenizer's own `save(directory)`, when one was given
    manifest.json       {format, version, files: {name: {sha256, bytes}}, metadata}

Writes are atomic: everything is built in a temporary sibling directory and swapped into place in
one step (`renameat2(RENAME_EXCHANGE)` on Linux), so the target path only ever holds a complete
checkpoint; where the swap is unsupported, a kill between the two renames is repaired on the next
read or write (the newest complete sibling is put back). Debris of killed writers is removed by the
next write. Replacing a checkpoint never deletes a file the checkpoint did not write. Loading verifies every file against
the manifest and reads weights only through safetensors (never pickle). The model is built on the
meta device and materialised once, so a large preset never exists twice in memory.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch

from .atomic import exchange_dirs, fsync_dir, remove_stale_siblings, stale_siblings, temp_sibling, write_error
from .config import ModelConfig
from .model import GPT

FORMAT = "spine-checkpoint"
VERSION = 1
MANIFEST = "manifest.json"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
# Fields that do not change the weights' meaning: a checkpoint loads into a model that differs only here.
NON_ARCH_FIELDS = frozenset({"name", "dropout", "extra", "family"})

__all__ = ["save_checkpoint", "load_checkpoint", "load_config", "checkpoint_sha256", "load_weights_into",
           "recover_checkpoint_dir", "confined", "check_finite", "check_tokenizer_covers",
           "empty_model", "read_safetensors", "FORMAT", "VERSION"]


# ---------------------------------------------------------------------------- helpers
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


_fsync_dir = fsync_dir


def _tree_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _state_to_save(model: GPT) -> dict[str, torch.Tensor]:
    """State dict without the tied head (safetensors refuses shared tensors), contiguous, on CPU."""
    sd = model.state_dict()
    if model.config.tie_embeddings:
        sd.pop("lm_head.weight", None)
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def empty_model(cfg: ModelConfig, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> GPT:
    """A `GPT` with uninitialised storage: built on meta, then `to_empty` (no double allocation).

    Non-persistent buffers (rope tables) are recomputed and a tied head is re-tied, both of which
    `to_empty` would otherwise break. The caller must fill every parameter.
    """
    with torch.device("meta"):
        model = GPT(cfg)
    if dtype is not None:
        model = model.to(dtype=dtype)
    model = model.to_empty(device=device)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.tok_emb.weight
    model.reset_buffers()
    return model


def read_safetensors(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield (name, lazy handle) for each tensor; errors name the file. Handle: `.get_tensor()`."""
    from safetensors import safe_open

    try:
        f = safe_open(str(path), framework="pt", device="cpu")
    except FileNotFoundError:
        raise FileNotFoundError(f"weights file not found: {path}") from None
    except Exception as e:  # SafetensorError, OSError, ...: all mean the file is unusable
        raise ValueError(f"{path} is truncated or not a safetensors file ({type(e).__name__}: {e})") from None
    # No `with`: the handles below keep `f` (and its mmap) alive until they are dropped.
    for name in f.keys():
        yield name, _Lazy(f, name, path)


class _Lazy:
    def __init__(self, f, name: str, path: Path):
        self.f, self.name, self.path = f, name, path

    def shape(self) -> tuple[int, ...]:
        return tuple(self.f.get_slice(self.name).get_shape())

    def get_tensor(self) -> torch.Tensor:
        try:
            return self.f.get_tensor(self.name)
        except Exception as e:
            raise ValueError(f"{self.path} is truncated or not a safetensors file: cannot read tensor "
                             f"{self.name!r} ({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------------------- save
def save_checkpoint(directory: str | Path, model: GPT, tokenizer: Any | None = None, *,
                    metadata: dict | None = None) -> Path:
    """Write `model` (and `tokenizer`) as a spine checkpoint directory, atomically. Returns the path."""
    from safetensors.torch import save_file

    target = Path(directory).expanduser().absolute()
    recover_checkpoint_dir(target)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"checkpoint target {target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()):
        if not _is_spine_checkpoint(target):
            # Replacing would delete the user's files: only ever replace a previous checkpoint.
            raise FileExistsError(f"checkpoint target {target} is a non-empty directory that is not a spine "
                                  "checkpoint; refusing to replace it")
        foreign = _foreign_files(target)
        if foreign:
            raise FileExistsError(f"checkpoint target {target} holds files the checkpoint did not write "
                                  f"({', '.join(foreign[:4])}{' …' if len(foreign) > 4 else ''}); replacing it would "
                                  "delete them: move them out or choose another path")
    if tokenizer is not None:
        from .tokenizer import check_vocab_fits

        check_vocab_fits(tokenizer, model.config.vocab_size, where=f"save_checkpoint({target})")
        check_tokenizer_covers(tokenizer, model.config.vocab_size, where=f"save_checkpoint({target})")
    meta = dict(metadata or {})
    try:
        json.dumps(meta)
    except TypeError as e:
        raise TypeError(f"save_checkpoint: metadata must be JSON-serialisable ({e})") from None

    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(target)
    tmp = temp_sibling(target)
    tmp.mkdir()
    try:
        try:
            save_file(_state_to_save(model), str(tmp / WEIGHTS), metadata={"format": "pt"})
        except OSError:
            raise
        except Exception as e:  # SafetensorError (e.g. a full disk) is not an OSError
            raise write_error(target / WEIGHTS, e, "weights") from e
        model.config.to_json(tmp / CONFIG)
        if tokenizer is not None:
            tokenizer.save(tmp)
        files = {}
        for p in _tree_files(tmp):
            _fsync_file(p)
            files[p.relative_to(tmp).as_posix()] = {"sha256": _sha256(p), "bytes": p.stat().st_size}
        manifest = {"format": FORMAT, "version": VERSION, "files": files, "metadata": meta}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        _fsync_file(tmp / MANIFEST)
        _fsync_dir(tmp)
        _replace_dir(tmp, target)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if str(target) in str(e):
            raise
        raise write_error(target, e, "checkpoint") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _is_spine_checkpoint(path: Path) -> bool:
    try:
        return json.loads((path / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _foreign_files(path: Path) -> list[str]:
    """Files under a spine checkpoint directory that its manifest does not list."""
    try:
        listed = set(json.loads((path / MANIFEST).read_text()).get("files", {})) | {MANIFEST}
    except (OSError, ValueError, AttributeError):
        return []
    return [p.relative_to(path).as_posix() for p in _tree_files(path) if p.relative_to(path).as_posix() not in listed]


def _replace_dir(tmp: Path, target: Path) -> None:
    """Put the complete directory `tmp` at `target` in one step; the previous target is deleted last.

    With RENAME_EXCHANGE the swap is atomic. Without it, the old target is renamed aside first; a
    kill between the two renames leaves no `target`, which `recover_checkpoint_dir` repairs."""
    if target.exists() and exchange_dirs(tmp, target):
        old = tmp  # after the swap, tmp's name holds the previous checkpoint
    else:
        old = None
        if target.exists():
            old = temp_sibling(target, "old")
            os.rename(target, old)
        try:
            os.rename(tmp, target)
        except BaseException:
            if old is not None:
                os.rename(old, target)  # put the previous checkpoint back
            raise
    _fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _complete(path: Path) -> bool:
    try:
        _verify(path, _read_manifest(path))
        return True
    except (OSError, ValueError):
        return False


def recover_checkpoint_dir(target: str | Path) -> Path | None:
    """If `target` is missing because a writer was killed between two renames, put back the newest
    complete checkpoint among its temporary siblings (verified against its manifest). Returns it."""
    target = Path(target).expanduser()
    if target.exists() or not target.parent.is_dir():
        return None
    candidates = [p for p in stale_siblings(target) if p.is_dir() and _complete(p)]
    if not candidates:
        return None
    best = max(candidates, key=lambda p: (p / MANIFEST).stat().st_mtime)
    os.rename(best, target)
    _fsync_dir(target.parent)
    return target


# ---------------------------------------------------------------------------- load
def _read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a spine checkpoint: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: not a spine checkpoint manifest (format must be {FORMAT!r})")
    if not isinstance(manifest.get("version"), int) or manifest["version"] > VERSION:
        raise ValueError(f"{path}: manifest version {manifest.get('version')!r} is not supported "
                         f"(this code reads version <= {VERSION})")
    if not isinstance(manifest.get("files"), dict):
        raise ValueError(f"{path}: manifest has no 'files' object")
    return manifest


def confined(directory: Path, name: Any, where: str) -> Path:
    """`directory / name` for a file name read from a manifest or spec; refused unless it is a
    relative path that stays inside `directory` (no absolute path, no `..`, no symlink out)."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ValueError(f"{where}: file name {name!r} is not a valid relative path")
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or rel.drive:
        raise ValueError(f"{where}: file name {name!r} points outside {directory}; refusing to read it")
    p = directory / rel
    root = directory.resolve()
    try:
        p.resolve().relative_to(root)
    except ValueError:
        raise ValueError(f"{where}: file {name!r} resolves outside {directory} (a symlink?); refusing to read it") from None
    return p


def _verify(directory: Path, manifest: dict) -> None:
    where = str(directory / MANIFEST)
    for name, entry in manifest["files"].items():
        p = confined(directory, name, where)
        if not p.is_file():
            raise FileNotFoundError(f"{directory}: {MANIFEST} lists {name!r} but the file is missing")
        expected = entry.get("sha256") if isinstance(entry, dict) else None
        size = entry.get("bytes") if isinstance(entry, dict) else None
        if isinstance(size, int) and p.stat().st_size != size:
            # checked before hashing: a truncated file is named at once, and a huge one is never read
            raise ValueError(f"{p}: {p.stat().st_size} bytes, but {MANIFEST} records {size} "
                             "(the file was truncated or replaced)")
        actual = _sha256(p)
        if actual != expected:
            raise ValueError(f"{p}: sha256 mismatch: manifest records {expected}, file has {actual} "
                             "(the file was modified or is corrupt)")


def _check_dir(directory: str | Path) -> Path:
    d = Path(directory).expanduser()
    if not d.is_dir():
        recover_checkpoint_dir(d)
    if not d.is_dir():
        if d.is_file() and d.suffix == ".ckpt":
            raise ValueError(f"{d} is a Lightning training checkpoint, not a spine checkpoint directory; "
                             f"convert it first: spine consolidate {d} OUT_DIR")
        raise FileNotFoundError(f"checkpoint directory not found: {d}")
    return d


def load_config(directory: str | Path) -> ModelConfig:
    """The `ModelConfig` stored in a checkpoint's config.json (errors name the file and field)."""
    d = _check_dir(directory)
    return ModelConfig.from_json(d / CONFIG)


def checkpoint_sha256(directory: str | Path) -> str:
    """sha256 of manifest.json: identifies the checkpoint (the manifest records every file's hash)."""
    d = _check_dir(directory)
    _read_manifest(d)
    return _sha256(d / MANIFEST)


def _file_tensors(path: Path) -> dict[str, Any]:
    return dict(read_safetensors(path))


@torch.no_grad()
def _fill(model: GPT, tensors: dict[str, Any], path: Path, *, strict: bool) -> None:
    """Copy lazily-read tensors into `model`'s parameters/buffers, checking names and shapes."""
    targets = dict(model.state_dict(keep_vars=True))
    if model.config.tie_embeddings:
        targets.pop("lm_head.weight", None)  # stored once, as tok_emb.weight
    missing = sorted(set(targets) - set(tensors))
    unexpected = sorted(set(tensors) - set(targets))
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing tensor(s) {missing[:8]}{' …' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected tensor(s) {unexpected[:8]}{' …' if len(unexpected) > 8 else ''}")
        raise ValueError(f"{path}: " + "; ".join(parts))
    for name, lazy in tensors.items():
        if name not in targets:
            continue
        dst = targets[name]
        shape = lazy.shape()
        if tuple(dst.shape) != shape:
            raise ValueError(f"{path}: tensor {name!r} has shape {list(shape)}, the model expects "
                             f"{list(dst.shape)}")
        dst.copy_(lazy.get_tensor())


def _dtype_of(lazy: _Lazy) -> torch.dtype:
    names = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
    dt = lazy.f.get_slice(lazy.name).get_dtype()
    return names.get(dt, torch.float32)


def load_checkpoint(directory: str | Path, *, map_location: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None, verify: bool = True) -> tuple[GPT, Any | None]:
    """Load (model, tokenizer or None) from a spine checkpoint directory; the model is in eval mode.

    `dtype` None keeps the stored dtype. `verify` checks every file's sha256 against the manifest.
    """
    d = _check_dir(directory)
    if verify:
        _verify(d, _read_manifest(d))
    cfg = ModelConfig.from_json(d / CONFIG)
    weights = d / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{d}: {WEIGHTS} is missing")
    tensors = _file_tensors(weights)
    if dtype is None and "tok_emb.weight" in tensors:
        dtype = _dtype_of(tensors["tok_emb.weight"])
    model = empty_model(cfg, device=map_location, dtype=dtype)
    _fill(model, tensors, weights, strict=True)
    check_finite(model, weights)
    model.eval()
    tokenizer = None
    from .tokenizer import TOKENIZER_SPEC_FILE, check_vocab_fits, load_tokenizer

    if (d / TOKENIZER_SPEC_FILE).is_file():
        tokenizer = load_tokenizer(d)
        check_vocab_fits(tokenizer, cfg.vocab_size, where=str(d))
        check_tokenizer_covers(tokenizer, cfg.vocab_size, where=str(d))
    return model, tokenizer


@torch.no_grad()
def check_finite(model: torch.nn.Module, where: Any) -> None:
    """Raise ValueError naming the first parameter holding NaN or Inf (a diverged or corrupt checkpoint)."""
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            n_bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"{where}: tensor {name!r} holds {n_bad} NaN/Inf value(s); the checkpoint is corrupt "
                             "or its run diverged — use an earlier checkpoint")


def check_tokenizer_covers(tokenizer: Any, model_vocab_size: int, where: str) -> None:
    """Refuse a tokenizer smaller than the model's vocabulary: the model would emit ids it cannot decode."""
    n = getattr(tokenizer, "vocab_size", None)
    if isinstance(n, int) and n < model_vocab_size:
        raise ValueError(f"{where}: tokenizer {getattr(tokenizer, 'name', '?')!r} has {n} ids but the model's "
                         f"vocab_size is {model_vocab_size}: generated ids >= {n} could not be decoded; "
                         "use the tokenizer the model was trained with")


def load_weights_into(model: GPT, directory: str | Path, *, strict: bool = True) -> None:
    """Copy a checkpoint's weights into an existing `model` (e.g. one a LightningModule built).

    The checkpoint's config must match the model's on every architectural field (dropout, name,
    family and extra may differ); the error lists the differing fields. With `strict=False` config
    differences and missing/unexpected tensors are tolerated, but shapes must still agree.
    """
    d = _check_dir(directory)
    cfg = load_config(d)
    ours, theirs = model.config.to_dict(), cfg.to_dict()
    diff = {k: (theirs[k], ours[k]) for k in ours if k not in NON_ARCH_FIELDS and ours[k] != theirs.get(k)}
    if diff and strict:
        listed = ", ".join(f"{k}: checkpoint={a!r} model={b!r}" for k, a, b in
                           ((k, *v) for k, v in sorted(diff.items())))
        raise ValueError(f"{d}: the checkpoint's config differs from the model's ({listed})")
    weights = d / WEIGHTS
    _fill(model, _file_tensors(weights), weights, strict=strict)
    if model.config.tie_embeddings and model.lm_head.weight is not model.tok_emb.weight:
        model.lm_head.weight = model.tok_emb.weight
