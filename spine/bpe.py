"""Byte-level BPE written from scratch (no tiktoken inside).

Text is cut into words by the GPT-2 regex, each word is turned into its UTF-8 bytes (256 base
tokens), and learned merges are applied lowest rank first. Loaded from GPT-2's `encoder.json` +
`vocab.bpe` it gives ids identical to tiktoken's "gpt2"; trained with `BPETokenizer.train` it
learns its own merges from pair counts over a word-frequency table.
"""
from __future__ import annotations

import heapq
import json
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import regex

from spine.tokenizer import (
    ENDOFTEXT,
    GPT2_PATTERN,
    TOKENIZER_SPEC_FILE,
    AllowedSpecial,
    atomic_write_bytes,
    bytes_to_unicode,
    common_spec,
    fix_surrogates,
    read_gpt2_files,
    read_json,
    resolve_allowed_special,
    sha256_file,
    split_on_specials,
    write_spec,
)

BPE_FILE = "bpe.json"
_CACHE_MAX = 200_000  # words; bounded so encoding a huge corpus cannot grow memory without limit


def _merge_word(word: list[int], a: int, b: int, new: int) -> list[int]:
    """Replace every non-overlapping (a, b), left to right, by `new`."""
    out, i, n = [], 0, len(word)
    while i < n:
        if i < n - 1 and word[i] == a and word[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


class BPETokenizer:
    """Byte-level BPE tokenizer (Tokenizer protocol; name "bpe").

    State: the id of each of the 256 bytes, merges `(left_id, right_id) -> new_id` in rank order,
    special tokens, and the pre-tokenization regex.
    """

    def __init__(
        self,
        byte_ids: Sequence[int],
        merges: Sequence[tuple[int, int, int]],
        special_tokens: dict[str, int],
        pattern: str = GPT2_PATTERN,
        eos_token: str | None = None,
    ) -> None:
        if len(byte_ids) != 256 or len(set(byte_ids)) != 256:
            raise ValueError(f"byte_ids must list 256 distinct ids (one per byte), got {len(byte_ids)} "
                             f"({len(set(byte_ids))} distinct)")
        self.name = "bpe"
        self.pattern = pattern
        self._pat = regex.compile(pattern)
        self._byte_ids = [int(i) for i in byte_ids]
        self._id_to_bytes: dict[int, bytes] = {i: bytes([b]) for b, i in enumerate(self._byte_ids)}
        self._merges: list[tuple[int, int, int]] = []
        self._ranks: dict[tuple[int, int], int] = {}
        self._merge_to: dict[tuple[int, int], int] = {}
        for rank, (a, b, new) in enumerate(merges):
            a, b, new = int(a), int(b), int(new)
            if a not in self._id_to_bytes or b not in self._id_to_bytes:
                raise ValueError(f"merge {rank} ({a}, {b}) uses an id not defined by the bytes or earlier merges")
            if new in self._id_to_bytes:
                raise ValueError(f"merge {rank} ({a}, {b}) -> {new}: id {new} is already taken")
            if (a, b) in self._ranks:
                raise ValueError(f"merge {rank} ({a}, {b}) appears twice")
            self._merges.append((a, b, new))
            self._ranks[(a, b)] = rank
            self._merge_to[(a, b)] = new
            self._id_to_bytes[new] = self._id_to_bytes[a] + self._id_to_bytes[b]
        for s, i in special_tokens.items():
            if not s or int(i) in self._id_to_bytes or list(special_tokens.values()).count(i) > 1:
                raise ValueError(f"special token {s!r} -> {i}: empty, or its id is already taken")
        self.special_tokens = {s: int(i) for s, i in special_tokens.items()}
        self._id_to_special = {i: s for s, i in self.special_tokens.items()}
        if not self.special_tokens:
            raise ValueError("a BPETokenizer needs at least one special token to serve as end-of-text")
        eos_token = eos_token or (ENDOFTEXT if ENDOFTEXT in self.special_tokens else next(iter(self.special_tokens)))
        if eos_token not in self.special_tokens:
            raise ValueError(f"eos_token {eos_token!r} is not one of the special tokens {sorted(self.special_tokens)}")
        self.eos_token = eos_token
        self.eos_id = self.pad_id = self.special_tokens[eos_token]
        self.bos_id = None
        self.vocab_size = max([*self._id_to_bytes, *self.special_tokens.values()]) + 1
        self.training_stats: dict[str, Any] = {}
        self._cache: dict[str, list[int]] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_gpt2_files(cls, encoder_json: str | Path, vocab_bpe: str | Path, *,
                        verify_sha256: bool = True) -> "BPETokenizer":
        """Load GPT-2's merges and ids; encode() then matches tiktoken's "gpt2" id for id."""
        encoder, merge_strs = read_gpt2_files(encoder_json, vocab_bpe, verify_sha256=verify_sha256)
        byte_enc = bytes_to_unicode()

        def tid(tok: str, what: str) -> int:
            if tok not in encoder:
                raise ValueError(f"{encoder_json}: {what} {tok!r} is missing from encoder.json")
            return encoder[tok]

        byte_ids = [tid(byte_enc[b], f"byte {b}") for b in range(256)]
        merges = [(tid(a, "token"), tid(b, "token"), tid(a + b, f"merge {r} result"))
                  for r, (a, b) in enumerate(merge_strs)]
        used = set(byte_ids) | {m[2] for m in merges}
        specials = {t: i for t, i in encoder.items() if i not in used}
        return cls(byte_ids, merges, specials, GPT2_PATTERN, ENDOFTEXT if ENDOFTEXT in specials else None)

    @classmethod
    def train(
        cls,
        text_or_iterable: str | Iterable[str],
        vocab_size: int,
        special_tokens: Sequence[str] = (ENDOFTEXT,),
        pattern: str = GPT2_PATTERN,
        *,
        min_frequency: int = 2,
    ) -> "BPETokenizer":
        """Learn merges until `vocab_size` ids (256 bytes + merges + specials) exist.

        Each step merges the most frequent adjacent pair (counted over the word-frequency table,
        so a word seen 1000 times costs one entry); ties go to the pair whose (left bytes, right
        bytes) sorts first. Counts are updated incrementally: only words that contain the merged
        pair are touched. Stops early, with a warning and `training_stats["stopped_early"]`,
        when no pair occurs `min_frequency` times. Special tokens in the text are cut out and
        never learned; they get the last ids.
        """
        specials = list(dict.fromkeys(special_tokens))
        if not isinstance(vocab_size, int) or vocab_size < 256 + len(specials):
            raise ValueError(f"vocab_size must be at least 256 (bytes) + {len(specials)} (special tokens) = "
                             f"{256 + len(specials)}, got {vocab_size!r}")
        if min_frequency < 1:
            raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
        pat = regex.compile(pattern)
        word_counts: Counter[str] = Counter()
        docs = [text_or_iterable] if isinstance(text_or_iterable, str) else text_or_iterable
        for doc in docs:
            if not isinstance(doc, str):
                raise ValueError(f"training data must be a str or an iterable of str, got an item of type {type(doc).__name__}")
            for piece, special in split_on_specials(fix_surrogates(doc), set(specials)):
                if not special:
                    word_counts.update(pat.findall(piece))

        words = [list(w.encode("utf-8")) for w in word_counts]
        freqs = list(word_counts.values())
        tok_bytes = [bytes([b]) for b in range(256)]  # id -> bytes, grows with each merge
        counts: dict[tuple[int, int], int] = {}
        where: dict[tuple[int, int], set[int]] = {}  # pair -> words that contained it (may be stale)
        for wi, (w, f) in enumerate(zip(words, freqs)):
            for p in zip(w, w[1:]):
                counts[p] = counts.get(p, 0) + f
                where.setdefault(p, set()).add(wi)
        # Max-heap via negated counts; entries go stale when counts change and are skipped on pop.
        heap = [(-c, tok_bytes[a], tok_bytes[b], a, b) for (a, b), c in counts.items()]
        heapq.heapify(heap)

        n_merges = vocab_size - 256 - len(specials)
        merges: list[tuple[int, int, int]] = []
        while len(merges) < n_merges:
            best = None
            while heap:
                negc, _, _, a, b = heapq.heappop(heap)
                if counts.get((a, b), 0) == -negc:
                    best = (a, b, -negc)
                    break
            if best is None or best[2] < min_frequency:
                break
            a, b, _ = best
            new = 256 + len(merges)
            merges.append((a, b, new))
            tok_bytes.append(tok_bytes[a] + tok_bytes[b])
            changed = set()
            for wi in where.pop((a, b), ()):
                w = words[wi]
                nw = _merge_word(w, a, b, new)
                if len(nw) == len(w):
                    continue  # stale index entry: the pair left this word in an earlier merge
                f = freqs[wi]
                for p in zip(w, w[1:]):
                    counts[p] -= f
                    changed.add(p)
                for p in zip(nw, nw[1:]):
                    counts[p] = counts.get(p, 0) + f
                    changed.add(p)
                    where.setdefault(p, set()).add(wi)
                words[wi] = nw
            for p in changed:
                c = counts[p]
                if c > 0:
                    heapq.heappush(heap, (-c, tok_bytes[p[0]], tok_bytes[p[1]], p[0], p[1]))
                else:
                    del counts[p]

        special_ids = {s: 256 + len(merges) + i for i, s in enumerate(specials)}
        tok = cls(list(range(256)), merges, special_ids, pattern)
        stopped = len(merges) < n_merges
        tok.training_stats = {"requested_vocab_size": vocab_size, "vocab_size": tok.vocab_size,
                              "merges": len(merges), "stopped_early": stopped, "min_frequency": min_frequency,
                              "unique_words": len(words), "words": sum(freqs)}
        if stopped:
            warnings.warn(f"BPE training stopped early at vocab_size {tok.vocab_size} (requested {vocab_size}): "
                          f"no pair occurs {min_frequency}+ times in the training text", UserWarning, stacklevel=2)
        return tok

    # ------------------------------------------------------------------ encode / decode
    def _bpe(self, word: str) -> list[int]:
        """Ids of one pre-tokenized word: merge the lowest-rank adjacent pair until none applies."""
        ids = [self._byte_ids[b] for b in word.encode("utf-8")]
        ranks = self._ranks
        while len(ids) > 1:
            best_rank, best_i = None, -1
            for i in range(len(ids) - 1):
                r = ranks.get((ids[i], ids[i + 1]))
                if r is not None and (best_rank is None or r < best_rank):
                    best_rank, best_i = r, i
            if best_rank is None:
                break
            a, b = ids[best_i], ids[best_i + 1]
            ids = ids[:best_i] + _merge_word(ids[best_i:], a, b, self._merge_to[(a, b)])
        return ids

    def _encode_ordinary(self, text: str, out: list[int]) -> None:
        cache = self._cache
        for word in self._pat.findall(text):
            ids = cache.get(word)
            if ids is None:
                ids = self._bpe(word)
                if len(cache) >= _CACHE_MAX:
                    cache.clear()
                cache[word] = ids
            out.extend(ids)

    def encode(self, text: str, *, allowed_special: AllowedSpecial = frozenset()) -> list[int]:
        """Token ids of `text`; special tokens count only if `allowed_special` permits them."""
        allowed = resolve_allowed_special(allowed_special, self.special_tokens)
        out: list[int] = []
        for piece, special in split_on_specials(fix_surrogates(text), allowed):
            if special:
                out.append(self.special_tokens[piece])
            else:
                self._encode_ordinary(piece, out)
        return out

    def encode_batch(self, texts: Sequence[str], *, allowed_special: AllowedSpecial = frozenset()) -> list[list[int]]:
        return [self.encode(t, allowed_special=allowed_special) for t in texts]

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        parts = []
        for i in ids:
            i = int(i)
            b = self._id_to_bytes.get(i)
            if b is None:
                if i not in self._id_to_special:
                    raise ValueError(f"token id {i} is not in this BPE vocabulary (size {self.vocab_size})")
                b = self._id_to_special[i].encode("utf-8")
            parts.append(b)
        return b"".join(parts)

    def decode(self, ids: Sequence[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one id stands for (a special token's text for special ids)."""
        return self.decode_bytes([token_id])

    @property
    def merges(self) -> list[tuple[int, int, int]]:
        """(left id, right id, new id) in rank order."""
        return list(self._merges)

    # ------------------------------------------------------------------ save / load
    def save(self, directory: str | Path) -> None:
        """Write bpe.json (vocab as id -> hex bytes, merges, pattern, specials) + spine_tokenizer.json."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        data = {
            "format": "spine-bpe", "version": 1, "pattern": self.pattern, "eos_token": self.eos_token,
            "byte_ids": self._byte_ids,
            "merges": [list(m) for m in self._merges],
            "special_tokens": self.special_tokens,
            "vocab": {str(i): self._id_to_bytes[i].hex() for i in sorted(self._id_to_bytes)},
            "training_stats": self.training_stats,
        }
        atomic_write_bytes(directory / BPE_FILE, json.dumps(data, indent=1, sort_keys=True).encode())
        write_spec(directory, {"kind": "bpe", **common_spec(self), "files": {BPE_FILE: sha256_file(directory / BPE_FILE)}})

    @classmethod
    def load(cls, directory: str | Path) -> "BPETokenizer":
        """Read directory/bpe.json (written by `save`), checking it is consistent."""
        path = Path(directory) / BPE_FILE
        data = read_json(path, "BPE tokenizer file")
        if not isinstance(data, dict) or data.get("format") != "spine-bpe":
            raise ValueError(f"{path}: not a spine BPE file (expected field format='spine-bpe')")
        for key, typ in (("pattern", str), ("byte_ids", list), ("merges", list), ("special_tokens", dict), ("vocab", dict)):
            if not isinstance(data.get(key), typ):
                raise ValueError(f"{path}: field {key!r} missing or not a {typ.__name__}")
        try:
            merges = [(int(a), int(b), int(n)) for a, b, n in data["merges"]]
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: field 'merges' must be a list of [left, right, new] ids: {e}") from e
        tok = cls(data["byte_ids"], merges, data["special_tokens"], data["pattern"], data.get("eos_token"))
        vocab = {int(i): bytes.fromhex(h) for i, h in data["vocab"].items()}
        if vocab != tok._id_to_bytes:
            bad = sorted(set(vocab.items()) ^ set(tok._id_to_bytes.items()))[:3]
            raise ValueError(f"{path}: field 'vocab' disagrees with byte_ids + merges (first differences: {bad})")
        tok.training_stats = data.get("training_stats") or {}
        return tok

    @classmethod
    def from_spec(cls, directory: Path, spec: dict) -> "BPETokenizer":
        if BPE_FILE not in spec["files"]:
            raise ValueError(f"{directory / TOKENIZER_SPEC_FILE}: kind 'bpe' needs {BPE_FILE} in 'files'")
        return cls.load(directory)

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self._merges)}, specials={list(self.special_tokens)})"
