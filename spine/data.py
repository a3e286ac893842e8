"""Pretraining data in pure PyTorch/numpy: sources → cached token stream → windows → sampling.

Pipeline (Raschka ch.2, made cacheable and resumable):
1. `resolve_source(spec)` (spine/sources.py, re-exported here) turns a spec (path, glob, directory, URL#sha256, `hf:NAME[:CONFIG]`,
   `hf-disk:PATH`, `synthetic`) into documents plus a stable content fingerprint.
2. `tokenize_to_cache(...)` encodes the documents once, joins them with the tokenizer's
   end-of-text id *between* non-empty documents, and writes a flat uint16/uint32 file + JSON meta
   under a key from `cache_key(fingerprint, tokenizer)`; `load_tokens` memory-maps it.
3. `split_point` cuts the stream at floor(n * (1 - val_fraction)); `TokenWindows` (book-style
   sliding windows) and `RandomWindows` (nanoGPT-style random offsets) are built inside one part,
   so no window and no target ever crosses the cut.
4. `ResumableSampler` (spine/sampler.py, re-exported here) gives a (seed, epoch)-deterministic order, per-rank slices for DDP, and a
   `state_dict` / `skip` mechanism so an interrupted epoch resumes at exactly the next sample.

Text policy: files are read as bytes and decoded as UTF-8 (a leading BOM is dropped, newlines are
kept as they are). `encoding_errors="strict"` (default) raises naming the file and the byte
offset of the first bad byte; `"replace"` substitutes U+FFFD. Text that *looks* like a special
token (e.g. a literal "<|endoftext|>") is encoded as plain text: only the separators this module
inserts are real end-of-text ids. Each file is read whole as one document: shard a corpus that
does not fit in memory into several files (encoding is then streamed in ~8 MB groups).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .sampler import ResumableSampler  # noqa: F401  (re-exported: spine.data.ResumableSampler)
from .sources import (FileDocuments, ResolvedSource, decode_text, default_cache_dir, download,  # noqa: F401
                      resolve_source, sha256_json, source_fingerprint, split_url)

from spine.tokenizer import Tokenizer, atomic_write_bytes, tokenizer_fingerprint

CACHE_FORMAT = 1
# Long documents are cut into pieces of about this many characters before encoding (bounded
# memory, and parallel work for one huge file). Cuts are only made where the cut is invisible
# to a GPT-2-style pre-tokenizer (see `_split_long`), so ids are identical to encoding whole.
MAX_CHUNK_CHARS = 1 << 20
def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab ≤ 65536), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def tokenizer_identity(tokenizer: Tokenizer) -> dict[str, Any]:
    """What makes two tokenizers produce the same ids: name, sizes and the hash of its saved spec."""
    return {"name": tokenizer.name, "vocab_size": int(tokenizer.vocab_size), "eos_id": int(tokenizer.eos_id),
            "spec_sha256": tokenizer_fingerprint(tokenizer)}


def cache_key(fingerprint: str, tokenizer: Tokenizer) -> str:
    """sha256 of (cache format, source fingerprint, tokenizer identity)."""
    return sha256_json({"format": CACHE_FORMAT, "source": fingerprint, "tokenizer": tokenizer_identity(tokenizer)})


def _is_cut(text: str, j: int) -> bool:
    """A single space between two printable non-space characters."""
    return (text[j] == " " and 0 < j < len(text) - 1 and text[j - 1].isprintable() and not text[j - 1].isspace()
            and text[j + 1].isprintable() and not text[j + 1].isspace())


def _split_long(text: str, max_chars: int | None = None) -> list[str]:
    """Cut `text` into pieces of about max_chars just before single spaces between words ("x| y").

    GPT-2-style pre-tokenizers (GPT-2's and Qwen's regex) end a pre-token at such a point and
    start the next one with the space, and BPE never merges across pre-tokens, so encoding the
    pieces gives the same ids as encoding the whole (tested). A text with no such point stays whole.
    """
    max_chars = max_chars or MAX_CHUNK_CHARS
    out, start = [], 0
    while len(text) - start > max_chars:
        j = text.rfind(" ", start + 1, start + max_chars)
        while j > start and not _is_cut(text, j):
            j = text.rfind(" ", start + 1, j)
        if j <= start:  # no cut point in this stretch: take the first one after it
            j = text.find(" ", start + max_chars)
            while j != -1 and not _is_cut(text, j):
                j = text.find(" ", j + 1)
            if j == -1:
                break
        out.append(text[start:j])
        start = j
    out.append(text[start:])
    return out


def _encode_groups(docs: Iterable[str], tokenizer: Tokenizer) -> Iterator[list[np.ndarray]]:
    """Yield, per group of ~8 MB of documents, one int64 array per document.

    Parallelism comes from `encode_batch`: tiktoken's (GPT-2) and HF's run on Rust threads.
    A process pool for the pure-python BPE was measured on the 2-core dev box and dropped: each
    worker rebuilds BPE's word cache, so the pool spent ~1.5x the CPU of one process and was
    slower in wall time (11.8 MB: 3.6 s serial vs 9.5 s with 2 workers).
    """
    group: list[str] = []
    size = 0
    for doc in docs:
        if not isinstance(doc, str):
            raise ValueError(f"documents must be str, got {type(doc).__name__}")
        group.append(doc)
        size += len(doc)
        if size >= 8 * MAX_CHUNK_CHARS:
            yield _encode_group(group, tokenizer)
            group, size = [], 0
    if group:
        yield _encode_group(group, tokenizer)


def _encode_group(group: list[str], tokenizer: Tokenizer) -> list[np.ndarray]:
    pieces, owner = [], []
    for i, doc in enumerate(group):
        for p in _split_long(doc):
            pieces.append(p)
            owner.append(i)
    per_doc: list[list[np.ndarray]] = [[] for _ in group]
    for i, ids in zip(owner, tokenizer.encode_batch(pieces)):
        per_doc[i].append(np.asarray(ids, dtype=np.int64))
    return [np.concatenate(a) if len(a) > 1 else a[0] for a in per_doc]


def _meta_path(bin_path: Path) -> Path:
    return bin_path.with_suffix(".json")


def _cached(bin_path: Path) -> dict[str, Any] | None:
    """The meta of a complete cache entry, or None."""
    meta_p = _meta_path(bin_path)
    if not (bin_path.is_file() and meta_p.is_file()):
        return None
    try:
        meta = json.loads(meta_p.read_text())
        ok = meta["format"] == CACHE_FORMAT and bin_path.stat().st_size == meta["n_tokens"] * np.dtype(meta["dtype"]).itemsize
    except (ValueError, KeyError, TypeError):
        return None
    return meta if ok else None


def tokenize_to_cache(
    documents: Iterable[str], tokenizer: Tokenizer, cache_dir: str | Path, key: str, *,
    source_fingerprint: str = "", description: str = "",
) -> Path:
    """Encode `documents` once into cache_dir/tokens/<key>.bin (+ .json meta); return the .bin path.

    Documents are joined with `tokenizer.eos_id` between non-empty documents (empty ones are
    skipped). A complete entry for `key` is reused without touching `documents`. Writes go to a
    temp file that is renamed at the end, so a crash never leaves a half-written cache.
    """
    bin_path = Path(cache_dir) / "tokens" / f"{key}.bin"
    if _cached(bin_path) is not None:
        return bin_path
    bin_path.parent.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    t0 = time.perf_counter()
    n_tokens = n_docs = 0
    eos = np.array([tokenizer.eos_id], dtype=dtype)
    fd, tmp = tempfile.mkstemp(dir=bin_path.parent, prefix=f".{key}.", suffix=".tmp")
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as raw:
            f = _Hashing(raw, digest)
            for arrays in _encode_groups(documents, tokenizer):
                for arr in arrays:
                    if arr.size == 0:
                        continue
                    if arr.min() < 0 or arr.max() >= tokenizer.vocab_size:
                        raise ValueError(f"tokenizer {tokenizer.name!r} produced ids outside 0..{tokenizer.vocab_size - 1}")
                    if n_docs:
                        f.write(eos.tobytes())
                        n_tokens += 1
                    f.write(arr.astype(dtype).tobytes())
                    n_tokens += int(arr.size)
                    n_docs += 1
        meta = {"format": CACHE_FORMAT, "n_tokens": n_tokens, "n_documents": n_docs, "dtype": dtype.name,
                "tokenizer": tokenizer_identity(tokenizer), "source_fingerprint": source_fingerprint,
                "source": description, "seconds": round(time.perf_counter() - t0, 3), "sha256": digest.hexdigest()}
        # meta first, then the data: `_cached` needs both and checks the size against the meta.
        atomic_write_bytes(_meta_path(bin_path), (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
        os.replace(tmp, bin_path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and str(bin_path.parent) not in str(e):
            from .atomic import write_error

            raise write_error(bin_path, e, "token cache") from e
        raise
    return bin_path


class _Hashing:
    """A file wrapper that hashes what is written through it."""

    def __init__(self, f, digest):
        self.f, self.digest = f, digest

    def write(self, data: bytes) -> None:
        self.digest.update(data)
        self.f.write(data)


def load_tokens(bin_path: str | Path, *, verify: bool = True) -> np.ndarray:
    """Memory-map a cache written by `tokenize_to_cache` (read-only).

    `verify`: check the bytes against the sha256 in the meta (a same-size corruption would
    otherwise feed wrong or out-of-vocabulary ids to the model); about 1 s per GB.
    """
    bin_path = Path(bin_path)
    meta = _cached(bin_path)
    if meta is None:
        raise FileNotFoundError(f"no complete token cache at {bin_path} (run prepare_data / tokenize_to_cache first)")
    expected = meta.get("sha256")
    if verify and expected is not None:
        digest = hashlib.sha256()
        with open(bin_path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
        if digest.hexdigest() != expected:
            raise ValueError(f"token cache {bin_path} is corrupt (its sha256 does not match {_meta_path(bin_path).name}); "
                             f"delete {bin_path} and {_meta_path(bin_path)} and rerun to rebuild it")
    if meta["n_tokens"] == 0:
        return np.zeros(0, dtype=meta["dtype"])
    return np.memmap(bin_path, dtype=meta["dtype"], mode="r", shape=(meta["n_tokens"],))


# ============================================================================ windows
def num_windows(n_tokens: int, context_length: int, stride: int) -> int:
    """len(range(0, n - ctx, stride)): the book's window count (each needs ctx + 1 tokens)."""
    return len(range(0, n_tokens - context_length, stride))


def split_point(n_tokens: int, val_fraction: float) -> int:
    """floor(n * (1 - val_fraction)), computed exactly for decimal fractions such as 0.1."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    return math.floor(n_tokens * (1 - Fraction(str(val_fraction))))


def check_enough_tokens(n_tokens: int, context_length: int, what: str = "corpus") -> None:
    """Raise if fewer than context_length + 1 tokens (one input window plus its shifted target)."""
    if n_tokens < context_length + 1:
        raise ValueError(f"{what} has {n_tokens} tokens, but one window needs context_length + 1 = "
                         f"{context_length + 1}; use more text or a smaller context_length")


class _TokenView:
    """A 1-D token array that pickles as its file path when memory-mapped (cheap for workers)."""

    def __init__(self, tokens: np.ndarray):
        self.tokens = tokens
        self._arr = np.asarray(tokens)  # plain ndarray view of the same pages: slicing is ~4x cheaper

    def __getstate__(self) -> dict[str, Any]:
        t = self.tokens
        if isinstance(t, np.memmap) and t.filename:
            return {"memmap": (t.filename, t.dtype.str, t.offset, t.shape)}
        return {"tokens": np.asarray(t)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "memmap" in state:
            fn, dt, off, shape = state["memmap"]
            self.__init__(np.memmap(fn, dtype=np.dtype(dt), mode="r", offset=off, shape=shape))
        else:
            self.__init__(state["tokens"])

    def window(self, offset: int, context_length: int) -> dict[str, torch.Tensor]:
        x = torch.from_numpy(self._arr[offset:offset + context_length + 1].astype(np.int64))
        return {"input_ids": x[:-1], "targets": x[1:]}


def _check_range(tokens: np.ndarray, start: int, end: int | None, context_length: int) -> tuple[int, int]:
    end = len(tokens) if end is None else end
    if not 0 <= start <= end <= len(tokens):
        raise ValueError(f"bad token range [{start}, {end}) for {len(tokens)} tokens")
    if context_length < 1:
        raise ValueError(f"context_length must be >= 1, got {context_length}")
    return start, end


class TokenWindows(Dataset):
    """Book-style sliding windows over tokens[start:end]: input ids[i:i+ctx], target ids[i+1:i+ctx+1].

    i runs over range(0, (end - start) - ctx, stride) relative to `start`, so every target lies
    inside [start, end).
    """

    def __init__(self, tokens: np.ndarray, context_length: int, stride: int | None = None,
                 start: int = 0, end: int | None = None):
        self.start, self.end = _check_range(tokens, start, end, context_length)
        self.context_length = context_length
        self.stride = context_length if stride is None else stride
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        self._view = _TokenView(tokens)
        self._n = num_windows(self.end - self.start, context_length, self.stride)

    def __len__(self) -> int:
        return self._n

    def offset(self, index: int) -> int:
        """Absolute token offset of window `index`."""
        if not 0 <= index < self._n:
            raise IndexError(f"window {index} out of range ({self._n} windows)")
        return self.start + index * self.stride

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self._view.window(self.offset(int(index)), self.context_length)


class RandomWindows(Dataset):
    """nanoGPT-style windows at random offsets in tokens[start:end], `num_samples` per epoch.

    The offset of sample `index` in epoch `epoch` is a pure function of (seed, epoch, index), so
    it needs no shared RNG state (DataLoader workers, resume). Index either with an int (uses
    the epoch set by `set_epoch`) or with the `(epoch, index)` pairs that
    `ResumableSampler(with_epoch=True)` yields, which also works with persistent workers.
    """

    def __init__(self, tokens: np.ndarray, context_length: int, num_samples: int, seed: int = 0,
                 start: int = 0, end: int | None = None):
        self.start, self.end = _check_range(tokens, start, end, context_length)
        check_enough_tokens(self.end - self.start, context_length, "token range")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.context_length, self.num_samples, self.seed, self.epoch = context_length, num_samples, seed, 0
        self._view = _TokenView(tokens)
        self._block_key: tuple[int, int] | None = None
        self._block = np.zeros(0, dtype=np.int64)

    _BLOCK = 4096

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def offset(self, epoch: int, index: int) -> int:
        """Absolute offset of sample `index` of `epoch`: uniform over all full windows of the range."""
        # Offsets come in blocks drawn from PCG64(seed, epoch, block): still a pure function of
        # (seed, epoch, index), but one generator per 4096 samples instead of one per sample.
        block, j = divmod(index, self._BLOCK)
        if self._block_key != (epoch, block):
            rng = np.random.Generator(np.random.PCG64([self.seed, epoch, block]))
            self._block = rng.integers(0, self.end - self.start - self.context_length, size=self._BLOCK)
            self._block_key = (epoch, block)
        return self.start + int(self._block[j])

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, i = index if isinstance(index, tuple) else (self.epoch, index)
        if not 0 <= i < self.num_samples:
            raise IndexError(f"sample {i} out of range ({self.num_samples} per epoch)")
        return self._view.window(self.offset(int(epoch), int(i)), self.context_length)

