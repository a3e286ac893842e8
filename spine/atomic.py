"""Writes that never leave a half-written file under its final name, and reads that refuse one.

- `atomic_torch_save`: write a file *beside* its target (same directory, so the same filesystem),
  flush + fsync, rename over the target, fsync the directory. A kill or a full disk at any point
  leaves the previous file intact (or no file), never a truncated one under the final name. This is
  what Lightning's own save lacks: it writes to `$TMPDIR` and moves, and across filesystems the move
  is an in-place copy.
- `save_training_checkpoint` / `load_training_checkpoint`: a training checkpoint (a dict that
  `torch.load(weights_only=True)` can read) carries a sha256 over its content, checked on load, so
  bytes corrupted inside a tensor are refused instead of trained on. Every failure is one
  `ValueError` line naming the file.
- `temp_sibling` / `remove_stale_siblings`: temporary names carry the writer's pid, so the debris of
  a killed writer is recognised and cleaned by the next write, and a live writer's is left alone.
- `exchange_dirs`: the atomic swap of two directories (Linux `renameat2(RENAME_EXCHANGE)`).

Pure torch/stdlib; the Lightning plugin that routes `.ckpt` writes here is `modules/checkpoint_io.py`.
"""
from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import re
import shutil
import uuid
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = ["fsync_file", "fsync_dir", "temp_sibling", "remove_stale_siblings", "atomic_torch_save",
           "content_checksum", "save_training_checkpoint", "load_training_checkpoint", "exchange_dirs",
           "CHECKSUM_KEY", "write_error"]

# the key under which a training checkpoint stores the sha256 of the rest of its content
CHECKSUM_KEY = "spine_checksum"
CHECKSUM_ALGORITHM = "sha256-content/1"


# ---------------------------------------------------------------------------- durability
def fsync_file(path: str | Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: str | Path) -> None:
    """Make a rename inside `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_error(path: str | Path, e: BaseException, what: str = "file") -> OSError:
    """An OSError whose one line names `path` and says the previous version is untouched."""
    reason = "the disk is full" if getattr(e, "errno", None) == errno.ENOSPC or "No space left" in str(e) \
        else f"{type(e).__name__}: {e}"
    err = OSError(getattr(e, "errno", None) or errno.EIO,
                  f"could not write {what} {path} ({reason}); any previous version at that path is unchanged")
    return err


# ---------------------------------------------------------------------------- temporary siblings
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?:(?P<pid>\d+)-)?[0-9a-f]{8}$")


def temp_sibling(target: str | Path, kind: str = "tmp") -> Path:
    """`.<name>.<kind>-<pid>-<random>` beside `target`: same filesystem, so the rename is atomic."""
    target = Path(target)
    return target.parent / f".{target.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_siblings(target: str | Path) -> list[Path]:
    """Temporary siblings of `target` left by writers that no longer run (names without a pid, from
    older versions, count as stale)."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    out = []
    for p in target.parent.iterdir():
        m = _TMP_RE.match(p.name)
        if not m or m["name"] != target.name:
            continue
        pid = m["pid"]
        if pid is None or (int(pid) != os.getpid() and not _alive(int(pid))):
            out.append(p)
    return sorted(out)


def remove_stale_siblings(target: str | Path) -> list[Path]:
    """Delete what killed writers left beside `target` (only names this module makes); returns them."""
    removed = []
    for p in stale_siblings(target):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


# ---------------------------------------------------------------------------- atomic file write
def atomic_write(path: str | Path, write: Callable[[Any], None], what: str = "file") -> Path:
    """Call `write(fh)` on a file beside `path`, fsync it and rename it over `path`.

    Any failure (a full disk, a serialiser error) removes the temporary file and raises an OSError
    naming `path`; what was at `path` before is unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(path)
    tmp = temp_sibling(path)
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, Exception):
            raise write_error(path, e, what) from e
        raise
    fsync_dir(path.parent)
    return path


def atomic_torch_save(obj: Any, path: str | Path, what: str = "checkpoint") -> Path:
    """`torch.save(obj)` to `path` through `atomic_write`."""
    return atomic_write(path, lambda fh: torch.save(obj, fh), what)


# ---------------------------------------------------------------------------- content checksum
def _feed(h: "hashlib._Hash", obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)};".encode())
        for k in sorted(obj, key=repr):
            _feed(h, k)
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)};".encode())
        for v in obj:
            _feed(h, v)
    elif obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.dtype, torch.device)):
        h.update(f"S{type(obj).__name__}:{obj!r};".encode())
    else:  # other plain types a weights_only checkpoint can hold (enums, OrderedDict handled above)
        h.update(f"O{type(obj).__qualname__}:{obj!r};".encode())


def content_checksum(obj: Any) -> str:
    """sha256 over the content of a nested checkpoint (tensor bytes, dtypes, shapes, keys, values);
    equal for the object saved and the object `torch.load` returns, independent of zip layout."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def save_training_checkpoint(checkpoint: dict, path: str | Path) -> Path:
    """Write a training checkpoint dict atomically with its content checksum (see the module doc)."""
    payload = {k: v for k, v in checkpoint.items() if k != CHECKSUM_KEY}
    payload[CHECKSUM_KEY] = {"algorithm": CHECKSUM_ALGORITHM, "sha256": content_checksum(payload)}
    return atomic_torch_save(payload, path, "checkpoint")


def _unpickle_reason(e: Exception) -> str:
    text = str(e)
    for line in text.splitlines():
        if "Unsupported global" in line or "Unsupported operand" in line:
            return line.strip()
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return first[:200]


def load_training_checkpoint(path: str | Path, *, map_location: Any = "cpu", verify: bool = True) -> dict:
    """Load a training checkpoint with `weights_only=True`; every failure is one ValueError naming `path`.

    Refused: a missing, empty, truncated or non-PyTorch file, one that needs arbitrary unpickling, one
    that is not a dict, and (`verify`) one whose content does not match the checksum it was saved with.
    A checkpoint without a checksum (written before spine added one, or by plain Lightning) loads.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    if p.is_dir():
        raise IsADirectoryError(f"{p} is a directory, not a checkpoint file")
    size = p.stat().st_size
    if size == 0:
        raise ValueError(f"{p} is empty (0 bytes): an interrupted save or a wrong path; use an earlier checkpoint")
    if not zipfile.is_zipfile(p):
        with open(p, "rb") as f:
            head = f.read(2)
        kind = "a legacy pickle, which spine does not load" if head[:1] == b"\x80" else \
            "truncated or not a PyTorch checkpoint"
        raise ValueError(f"{p} ({size} bytes) is {kind} (expected a torch.save zip archive)")
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means "this file is not a usable checkpoint"
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise ValueError(f"{p} holds Python objects that spine never unpickles ({_unpickle_reason(e)})") from None
        raise ValueError(f"{p} is corrupt or truncated ({type(e).__name__}: {_unpickle_reason(e)})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{p} holds a {type(obj).__name__}, not a training checkpoint dict")
    stamp = obj.pop(CHECKSUM_KEY, None)
    if verify and stamp is not None:
        expected = stamp.get("sha256") if isinstance(stamp, dict) else None
        if not isinstance(stamp, dict) or stamp.get("algorithm") != CHECKSUM_ALGORITHM:
            raise ValueError(f"{p}: unknown checksum format {stamp!r}")
        actual = content_checksum(obj)
        if actual != expected:
            raise ValueError(f"{p} is corrupt: its content sha256 {actual[:16]}… does not match the {expected[:16]}… "
                             "recorded when it was saved; resume from an earlier checkpoint")
    return obj


# ---------------------------------------------------------------------------- atomic directory swap
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def exchange_dirs(a: str | Path, b: str | Path) -> bool:
    """Atomically swap two existing paths (Linux renameat2 RENAME_EXCHANGE). False where unsupported
    (other OS, old kernel, filesystem without it): the caller falls back to two renames."""
    fn = _renameat2()
    if fn is None:
        return False
    rc = fn(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")
