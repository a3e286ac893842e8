"""The files behind a saved tokenizer: `spine_tokenizer.json` (the spec) and the files it lists,
each recorded with its sha256 and written atomically. Shared by every tokenizer's `save`/`load`."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

TOKENIZER_SPEC_FILE = "spine_tokenizer.json"
SPEC_FORMAT_VERSION = 1


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temp file + rename, so a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def copy_into(src: str | Path, directory: str | Path, filename: str) -> str:
    """Copy `src` to directory/filename (atomically, skipped if it is the same file); return its sha256."""
    src, dst = Path(src), Path(directory) / filename
    if not (dst.exists() and dst.resolve() == src.resolve()):
        atomic_write_bytes(dst, src.read_bytes())
    return sha256_file(dst)


def write_spec(directory: str | Path, spec: dict[str, Any]) -> None:
    """Write `spine_tokenizer.json`. Keys sorted and no timestamps: equal tokenizers, equal bytes."""
    spec = {"format_version": SPEC_FORMAT_VERSION, **spec}
    atomic_write_bytes(Path(directory) / TOKENIZER_SPEC_FILE, (json.dumps(spec, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path, what: str) -> Any:
    """json.load with errors that name the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} {path} is not valid JSON: {e}") from e


def spec_field(spec: dict, key: str, typ: type | tuple, path: Path) -> Any:
    if key not in spec:
        raise ValueError(f"{path}: missing field {key!r}")
    if not isinstance(spec[key], typ) or isinstance(spec[key], bool) and typ is int:
        raise ValueError(f"{path}: field {key!r} must be {typ}, got {spec[key]!r}")
    return spec[key]


def verify_spec_files(directory: Path, spec: dict) -> None:
    """Check that every file listed in the spec exists with the recorded sha256."""
    files = spec_field(spec, "files", dict, directory / TOKENIZER_SPEC_FILE)
    for fname, expected in files.items():
        if Path(fname).name != fname or fname in ("", ".", ".."):
            raise ValueError(f"{directory / TOKENIZER_SPEC_FILE}: file name {fname!r} must be a plain name in the directory")
        p = directory / fname
        if not p.is_file():
            raise FileNotFoundError(f"{directory / TOKENIZER_SPEC_FILE} lists {fname!r}, but {p} does not exist")
        actual = sha256_file(p)
        if actual != expected:
            raise ValueError(f"{p}: sha256 {actual} does not match {expected} recorded in {TOKENIZER_SPEC_FILE}")
