"""Where pretraining text comes from: a spec (path, glob, directory, URL#sha256, `hf:NAME[:CONFIG]`,
`hf-disk:PATH`, `synthetic`) resolved into documents plus a stable content fingerprint. The text
policy (UTF-8, BOM, errors) is described in `spine.data`, which re-exports these names.
"""
from __future__ import annotations

import glob as _glob
import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .tokenizer import sha256_file

_URL_SCHEMES = ("http://", "https://", "file://")


def default_cache_dir() -> Path:
    """$SPINE_CACHE_DIR, else ~/.cache/spine."""
    return Path(os.environ.get("SPINE_CACHE_DIR") or Path.home() / ".cache" / "spine").expanduser()


def sha256_json(obj: Any) -> str:
    """sha256 of the canonical JSON of `obj` (sorted keys): the fingerprint/key primitive."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ============================================================================ sources
@dataclass
class ResolvedSource:
    """Documents (a re-iterable of str, read lazily) plus a stable content fingerprint."""

    documents: Iterable[str]
    fingerprint: str
    description: str


def decode_text(data: bytes, name: str, encoding_errors: str = "strict") -> str:
    """UTF-8 decode with the module's policy; strict errors name `name` and the byte offset."""
    try:
        text = data.decode("utf-8", errors=encoding_errors)
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{name}: not valid UTF-8 at byte offset {e.start} (byte 0x{data[e.start]:02x}); fix the file or "
            f"pass encoding_errors='replace' to substitute U+FFFD for undecodable bytes"
        ) from None
    return text[1:] if text.startswith("\ufeff") else text


class FileDocuments:
    """Lazily read files, one document each (re-iterable, so files are never all in memory)."""

    def __init__(self, paths: Sequence[Path], encoding_errors: str = "strict", names: Sequence[str] | None = None):
        self.paths, self.encoding_errors = list(paths), encoding_errors
        self.names = list(names) if names is not None else [str(p) for p in self.paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[str]:
        for p, name in zip(self.paths, self.names):
            yield decode_text(Path(p).read_bytes(), name, self.encoding_errors)


def _expand_local(spec: str) -> list[Path]:
    """A file, a directory (all *.txt below it, sorted) or a glob (sorted files)."""
    if any(c in spec for c in "*?["):
        files = sorted(Path(p) for p in _glob.glob(os.path.expanduser(spec), recursive=True) if Path(p).is_file())
        if not files:
            raise FileNotFoundError(f"glob matched no files: {spec}")
        return files
    p = Path(spec).expanduser()
    if p.is_dir():
        files = sorted(q for q in p.rglob("*.txt") if q.is_file())
        if not files:
            raise FileNotFoundError(f"directory {p} contains no *.txt files")
        return files
    if not p.is_file():
        raise FileNotFoundError(f"data source not found: {spec} (expected a file, directory, glob, URL with "
                                f"#sha256=..., hf:NAME[:CONFIG], hf-disk:PATH, 'synthetic' or task:FAMILY:...)")
    return [p]


def split_url(spec: str, sha256: str | None = None) -> tuple[str, str]:
    """`URL#sha256=HEX` (or URL + `sha256`) → (url, sha256). The hash is required: downloads are pinned."""
    url, _, frag = spec.partition("#")
    frag_sha = frag[len("sha256="):] if frag.startswith("sha256=") else None
    if frag and frag_sha is None:
        raise ValueError(f"URL fragment must be '#sha256=<hex>', got {spec!r}")
    if frag_sha and sha256 and frag_sha.lower() != sha256.lower():
        raise ValueError(f"{url}: sha256 given twice and they differ ({frag_sha} vs {sha256})")
    digest = (frag_sha or sha256 or "").lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"URL source {url} needs its sha256 (64 hex digits): write '{url}#sha256=<hex>' or pass "
                         f"sha256=...; got {digest or 'none'!r}")
    return url, digest


def download(url: str, sha256: str, cache_dir: str | Path | None = None) -> Path:
    """Fetch `url` into cache_dir/downloads (once), verifying its sha256; return the local path."""
    out_dir = Path(cache_dir or default_cache_dir()) / "downloads"
    name = Path(urllib.parse.urlparse(url).path).name or "download"
    dst = out_dir / f"{sha256[:16]}-{name}"
    if dst.is_file() and sha256_file(dst) == sha256:
        return dst
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".part")
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as r:  # noqa: S310 (pinned by sha256)
            for chunk in iter(lambda: r.read(1 << 20), b""):
                h.update(chunk)
                f.write(chunk)
        if h.hexdigest() != sha256:
            raise ValueError(f"sha256 mismatch for {url}: expected {sha256}, got {h.hexdigest()}")
        os.replace(tmp, dst)
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        Path(tmp).unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise ValueError(f"could not download {url} ({reason}); offline? fetch the file elsewhere and give its "
                         "local path as the source") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dst


def _hf_documents(ds: Any, text_column: str, what: str) -> Iterator[str]:
    cols = getattr(ds, "column_names", None)
    if cols is not None and text_column not in cols:
        raise ValueError(f"{what} has no column {text_column!r}; its columns are {cols}")
    for row in ds:
        if text_column not in row:  # streams may not know their columns up front
            raise ValueError(f"{what} has no column {text_column!r}; a row has {sorted(row)}")
        yield row[text_column]


def _resolve_one(spec: str, *, sha256: str | None, encoding_errors: str, cache_dir: str | Path | None,
                 hf_split: str, hf_text_column: str, hf_streaming: bool, synthetic_problems: int,
                 synthetic_levels: Sequence[int], synthetic_seed: int) -> ResolvedSource:
    if spec == "synthetic":
        from spine.reasoning import synthetic

        levels = [int(x) for x in synthetic_levels]
        docs = _ListOnce(lambda: synthetic.make_documents(synthetic_problems, seed=synthetic_seed, levels=levels))
        # The generator's source is part of the identity: change the generator, get a fresh cache.
        code = sha256_file(Path(synthetic.__file__))
        fp = sha256_json({"synthetic": [synthetic_problems, levels, synthetic_seed], "code": code})
        return ResolvedSource(docs, fp, f"synthetic(n_problems={synthetic_problems}, levels={levels}, seed={synthetic_seed})")
    if spec.startswith("task:"):
        from spine.reasoning import synthetic, tasks
        from spine.reasoning.tasks.spec import parse_task_spec, task_documents

        parse_task_spec(spec)  # a typo fails here, before any data work
        docs = _ListOnce(lambda: task_documents(spec))
        code = [sha256_file(p) for p in sorted(Path(tasks.__file__).parent.glob("*.py"))]
        fp = sha256_json({"task": spec, "code": code + [sha256_file(Path(synthetic.__file__))]})
        return ResolvedSource(docs, fp, spec)
    if spec.startswith("hf-disk:"):
        path = spec[len("hf-disk:"):]
        import datasets  # lazy: heavy, and only these sources need it

        ds = datasets.load_from_disk(path)
        if isinstance(ds, datasets.DatasetDict):
            if hf_split not in ds:
                raise ValueError(f"{path}: no split {hf_split!r}; splits are {list(ds.keys())}")
            ds = ds[hf_split]
        fp = sha256_json({"hf-disk": ds._fingerprint, "column": hf_text_column})
        return ResolvedSource(_ListOnce(lambda: _hf_documents(ds, hf_text_column, spec)), fp, spec)
    if spec.startswith("hf:"):
        import datasets

        name, _, config = spec[len("hf:"):].partition(":")
        try:
            ds = datasets.load_dataset(name, config or None, split=hf_split, streaming=hf_streaming)
        except Exception as e:  # network, auth, unknown name: one clear message keeps the cause
            raise RuntimeError(f"could not load Hugging Face dataset {name!r} (config={config or None!r}, "
                               f"split={hf_split!r}, streaming={hf_streaming}): {type(e).__name__}: {e}") from e
        # Non-streaming datasets carry a content fingerprint; a stream only has its name (so a
        # dataset changed on the hub under the same name reuses the old cache: clear it by hand).
        content = None if hf_streaming else getattr(ds, "_fingerprint", None)
        fp = sha256_json({"hf": [name, config, hf_split, hf_text_column], "content": content})
        return ResolvedSource(_ListOnce(lambda: _hf_documents(ds, hf_text_column, spec)), fp, f"{spec} split={hf_split}")
    if spec.startswith(_URL_SCHEMES):
        url, digest = split_url(spec, sha256)
        local = download(url, digest, cache_dir)
        fp = sha256_json({"files": [digest], "errors": encoding_errors})
        return ResolvedSource(FileDocuments([local], encoding_errors, names=[f"{url} ({local})"]), fp, url)
    files = _expand_local(spec)
    fp = sha256_json({"files": [sha256_file(p) for p in files], "errors": encoding_errors})
    return ResolvedSource(FileDocuments(files, encoding_errors), fp, spec if len(files) == 1 else f"{spec} ({len(files)} files)")


class _ListOnce:
    """Re-iterable wrapper around a generator factory."""

    def __init__(self, make: Any):
        self.make = make

    def __iter__(self) -> Iterator[str]:
        return iter(self.make())


def resolve_source(
    spec: str | Sequence[str], *, sha256: str | None = None, encoding_errors: str = "strict",
    cache_dir: str | Path | None = None, hf_split: str = "train", hf_text_column: str = "text",
    hf_streaming: bool = False, synthetic_problems: int = 2000, synthetic_levels: Sequence[int] = (1, 2),
    synthetic_seed: int = 0,
) -> ResolvedSource:
    """Resolve one spec or a list of specs (concatenated in order) into documents + fingerprint.

    Specs: a file (one document), a directory (every *.txt below it, sorted), a glob (sorted),
    `http(s)://…` or `file://…` with `#sha256=HEX` (or `sha256=`), `hf:NAME[:CONFIG]`,
    `hf-disk:PATH` (a `datasets` dataset saved with `save_to_disk`), `synthetic`, or a task corpus
    `task:arith+linear:levels=1-5,n=20000,seed=0,split=train` (worked solutions, spine.reasoning.tasks).
    """
    if encoding_errors not in ("strict", "replace"):
        raise ValueError(f"encoding_errors must be 'strict' or 'replace', got {encoding_errors!r}")
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    if not specs:
        raise ValueError("no data source given (empty list)")
    kw = dict(sha256=sha256, encoding_errors=encoding_errors, cache_dir=cache_dir, hf_split=hf_split,
              hf_text_column=hf_text_column, hf_streaming=hf_streaming, synthetic_problems=synthetic_problems,
              synthetic_levels=synthetic_levels, synthetic_seed=synthetic_seed)
    parts = [_resolve_one(str(s), **kw) for s in specs]
    if len(parts) == 1:
        return parts[0]
    return ResolvedSource(_ListOnce(lambda: (d for p in parts for d in p.documents)),
                          sha256_json([p.fingerprint for p in parts]), " + ".join(p.description for p in parts))


def source_fingerprint(spec: str | Sequence[str], **kwargs: Any) -> str:
    """The stable content fingerprint of a source (see `resolve_source` for the arguments)."""
    return resolve_source(spec, **kwargs).fingerprint


# ============================================================================ token cache
