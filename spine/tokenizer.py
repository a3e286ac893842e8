"""Tokenizers behind one small protocol.

Implementations:
- `TiktokenTokenizer` — GPT-2 BPE through tiktoken, built offline from GPT-2's
  `encoder.json` + `vocab.bpe` (or a `.tiktoken` rank file), or downloaded by tiktoken.
- `ByteTokenizer` — 256 byte ids plus `<|endoftext|>` (tiny models, tests).
- `spine.bpe.BPETokenizer` — byte-level BPE written from scratch (train / save / load).
- `spine.qwen_tokenizer.Qwen3Tokenizer` — Qwen3 through HF `tokenizers` + chat template.

Every tokenizer can `save(directory)`; the directory then holds `spine_tokenizer.json` plus the
files it needs, so a checkpoint is self-contained and `load_tokenizer(directory)` rebuilds it.
Special tokens are encoded as *plain text* unless `allowed_special` permits them (tiktoken's
default is to raise; we never raise, so arbitrary user text is always encodable).
"""
from __future__ import annotations

import base64
import hashlib
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import AbstractSet, Any, Literal, Protocol, Union, runtime_checkable

# the spec-file helpers live in tokenizer_files; re-exported because the tokenizers import them from here
from .tokenizer_files import (SPEC_FORMAT_VERSION, TOKENIZER_SPEC_FILE, atomic_write_bytes,  # noqa: F401
                              copy_into, read_json, sha256_file, spec_field, verify_spec_files, write_spec)

ENDOFTEXT = "<|endoftext|>"

# tiktoken pins these for its "gpt2" encoding (tiktoken_ext/openai_public.py); SOURCES.md agrees.
GPT2_FILE_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    # GPT-2's ranks in tiktoken's format == tiktoken's pinned r50k_base.tiktoken, byte for byte.
    "gpt2.tiktoken": "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
}
# tiktoken's GPT-2 (r50k) pattern: equivalent to GPT-2's original regex, but possessive (faster).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT2_EOS_ID = 50256
GPT2_TIKTOKEN_FILE = "gpt2.tiktoken"
KNOWN_TOKENIZERS = ("gpt2", "byte", "bpe", "qwen3")

AllowedSpecial = Union[AbstractSet[str], Literal["all"]]


@runtime_checkable
class Tokenizer(Protocol):
    """What models, datamodules and generation rely on."""

    name: str
    vocab_size: int  # ids the model must embed (max id + 1)
    eos_id: int
    pad_id: int
    bos_id: int | None
    special_tokens: dict[str, int]

    def encode(self, text: str, *, allowed_special: AllowedSpecial = frozenset()) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def encode_batch(
        self, texts: Sequence[str], *, allowed_special: AllowedSpecial = frozenset()
    ) -> list[list[int]]: ...

    def save(self, directory: str | Path) -> None: ...


# ----------------------------------------------------------------------------- helpers
def resolve_allowed_special(allowed_special: AllowedSpecial, special_tokens: dict[str, int]) -> set[str]:
    """Turn `allowed_special` into a set, rejecting names the tokenizer does not have."""
    if allowed_special == "all":
        return set(special_tokens)
    if isinstance(allowed_special, str):
        raise ValueError(f"allowed_special must be 'all' or a set of token strings, got the string {allowed_special!r}")
    allowed = set(allowed_special)
    unknown = allowed - set(special_tokens)
    if unknown:
        raise ValueError(
            f"allowed_special contains {sorted(unknown)}, which are not special tokens of this tokenizer "
            f"(it has {sorted(special_tokens)})"
        )
    return allowed


def split_on_specials(text: str, allowed: AbstractSet[str]) -> list[tuple[str, bool]]:
    """Split `text` into (piece, is_special) around occurrences of the allowed special tokens."""
    if not allowed:
        return [(text, False)]
    # Longest first so that a token that is a prefix of another never wins.
    pat = "(" + "|".join(re.escape(s) for s in sorted(allowed, key=len, reverse=True)) + ")"
    out = []
    for i, piece in enumerate(re.split(pat, text)):
        if piece:
            out.append((piece, i % 2 == 1))
    return out


def fix_surrogates(text: str) -> str:
    """Replace lone surrogates by U+FFFD (what tiktoken does) so the text is valid UTF-8."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def check_vocab_fits(tokenizer: Tokenizer, model_vocab_size: int, where: str = "") -> None:
    """Raise ValueError if the tokenizer can produce ids the model cannot embed."""
    if tokenizer.vocab_size > model_vocab_size:
        prefix = f"{where}: " if where else ""
        raise ValueError(
            f"{prefix}tokenizer {tokenizer.name!r} has vocab_size {tokenizer.vocab_size}, but the model's "
            f"vocab_size is {model_vocab_size}; the model must embed at least {tokenizer.vocab_size} ids"
        )


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """sha256 identifying the tokenizer (its saved spec, which records the sha256 of its files)."""
    with tempfile.TemporaryDirectory() as d:
        tokenizer.save(d)
        return hashlib.sha256((Path(d) / TOKENIZER_SPEC_FILE).read_bytes()).hexdigest()


def common_spec(tok: Tokenizer) -> dict[str, Any]:
    return {"name": tok.name, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id, "pad_id": tok.pad_id,
            "bos_id": tok.bos_id, "special_tokens": dict(tok.special_tokens)}


# ----------------------------------------------------------------------------- GPT-2 files
def read_gpt2_files(
    encoder_json: str | Path, vocab_bpe: str | Path, *, verify_sha256: bool = True
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Read GPT-2's `encoder.json` (token→id) and `vocab.bpe` (merges in rank order), with checks."""
    encoder_json, vocab_bpe = Path(encoder_json), Path(vocab_bpe)
    for p in (encoder_json, vocab_bpe):
        if not p.is_file():
            raise FileNotFoundError(f"GPT-2 BPE file not found: {p} (need encoder.json and vocab.bpe)")
    if verify_sha256:
        for p, key in ((encoder_json, "encoder.json"), (vocab_bpe, "vocab.bpe")):
            actual = sha256_file(p)
            if actual != GPT2_FILE_SHA256[key]:
                raise ValueError(
                    f"{p}: sha256 {actual} does not match GPT-2's {key} ({GPT2_FILE_SHA256[key]}); "
                    f"the file is corrupt or not GPT-2's"
                )
    encoder = read_json(encoder_json, "GPT-2 encoder.json")
    if not isinstance(encoder, dict) or not all(isinstance(v, int) for v in encoder.values()):
        raise ValueError(f"{encoder_json}: expected a JSON object mapping token strings to integer ids")
    merges = []
    lines = vocab_bpe.read_text(encoding="utf-8").split("\n")
    for lineno, line in enumerate(lines, 1):
        if not line or (lineno == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise ValueError(f"{vocab_bpe}:{lineno}: expected a merge 'A B', got {line!r}")
        merges.append((parts[0], parts[1]))
    return encoder, merges


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte→printable-character map used in encoder.json / vocab.bpe."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def gpt2_mergeable_ranks(encoder: dict[str, int], merges: list[tuple[str, str]], source: str = "") -> dict[bytes, int]:
    """tiktoken's mergeable ranks (token bytes → id) from GPT-2's files, checking they agree."""
    byte_decoder = {c: b for b, c in bytes_to_unicode().items()}

    def to_bytes(s: str) -> bytes:
        try:
            return bytes(byte_decoder[c] for c in s)
        except KeyError as e:
            raise ValueError(f"{source}: token {s!r} has a character outside GPT-2's byte alphabet") from e

    ranks: dict[bytes, int] = {}
    for tok, i in encoder.items():
        if tok in (ENDOFTEXT, "<|startoftext|>"):
            continue
        ranks[to_bytes(tok)] = i
    # tiktoken ranks tokens by id and merges by concatenated bytes, so merge r must create id 256 + r.
    for r, (a, b) in enumerate(merges):
        got = ranks.get(to_bytes(a) + to_bytes(b))
        if got != 256 + r:
            raise ValueError(f"{source}: merge {r} ({a!r} {b!r}) gives id {got} in encoder.json, expected {256 + r}")
    if len(ranks) != 256 + len(merges):
        raise ValueError(f"{source}: encoder.json has {len(ranks)} non-special tokens, expected 256 + {len(merges)} merges")
    return ranks


# ----------------------------------------------------------------------------- tiktoken GPT-2
class TiktokenTokenizer:
    """GPT-2 BPE via tiktoken. Build with `from_gpt2_files`, `from_tiktoken_file` or `from_download`."""

    def __init__(self, encoding: Any, *, source_files: dict[str, Path] | None = None) -> None:
        self._enc = encoding
        # Files this tokenizer was built from; save() copies them (else dumps the ranks).
        self._source_files = dict(source_files or {})
        self.name = "gpt2"
        self.special_tokens = {s: encoding.encode_single_token(s) for s in encoding.special_tokens_set}
        if ENDOFTEXT not in self.special_tokens:
            raise ValueError(f"tiktoken encoding {encoding.name!r} has no {ENDOFTEXT} token")
        self.eos_id = self.special_tokens[ENDOFTEXT]
        self.pad_id = self.eos_id  # the book pads with <|endoftext|>
        self.bos_id = None
        self.vocab_size = encoding.n_vocab

    @property
    def encoding(self) -> Any:
        """The underlying `tiktoken.Encoding`."""
        return self._enc

    @classmethod
    def _build(cls, ranks: dict[bytes, int], source_files: dict[str, Path]) -> "TiktokenTokenizer":
        import tiktoken

        enc = tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                special_tokens={ENDOFTEXT: GPT2_EOS_ID}, explicit_n_vocab=GPT2_EOS_ID + 1)
        return cls(enc, source_files=source_files)

    @classmethod
    def from_gpt2_files(cls, encoder_json: str | Path, vocab_bpe: str | Path, *,
                        verify_sha256: bool = True) -> "TiktokenTokenizer":
        """Offline GPT-2 from `encoder.json` + `vocab.bpe` (sha256-checked against tiktoken's pins)."""
        encoder, merges = read_gpt2_files(encoder_json, vocab_bpe, verify_sha256=verify_sha256)
        ranks = gpt2_mergeable_ranks(encoder, merges, source=str(encoder_json))
        if encoder.get(ENDOFTEXT, GPT2_EOS_ID) != GPT2_EOS_ID or len(ranks) != GPT2_EOS_ID:
            raise ValueError(f"{encoder_json}: not GPT-2's vocabulary (expected 50,256 tokens + {ENDOFTEXT}=50256)")
        return cls._build(ranks, {"encoder.json": Path(encoder_json), "vocab.bpe": Path(vocab_bpe)})

    @classmethod
    def from_tiktoken_file(cls, path: str | Path, *, verify_sha256: bool = True) -> "TiktokenTokenizer":
        """Offline GPT-2 from a `.tiktoken` rank file (base64 token, space, rank per line)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tiktoken rank file not found: {path}")
        if verify_sha256 and (actual := sha256_file(path)) != GPT2_FILE_SHA256[GPT2_TIKTOKEN_FILE]:
            raise ValueError(f"{path}: sha256 {actual} does not match GPT-2's ranks in tiktoken format "
                             f"({GPT2_FILE_SHA256[GPT2_TIKTOKEN_FILE]}); the file is corrupt or not GPT-2's")
        ranks: dict[bytes, int] = {}
        for lineno, line in enumerate(path.read_bytes().splitlines(), 1):
            if not line.strip():
                continue
            try:
                tok, rank = line.split()
                ranks[base64.b64decode(tok, validate=True)] = int(rank)
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: expected '<base64 token> <rank>', got {line[:80]!r}") from e
        if sorted(ranks.values()) != list(range(GPT2_EOS_ID)):
            raise ValueError(f"{path}: expected GPT-2's ranks 0..{GPT2_EOS_ID - 1}, got {len(ranks)} tokens")
        return cls._build(ranks, {GPT2_TIKTOKEN_FILE: path})

    @classmethod
    def from_download(cls) -> "TiktokenTokenizer":
        """`tiktoken.get_encoding("gpt2")` (downloads once, then uses tiktoken's cache)."""
        import tiktoken

        try:
            enc = tiktoken.get_encoding("gpt2")
        except Exception as e:  # requests/ConnectionError/hash errors: all mean "cannot get the files"
            raise RuntimeError(
                "could not get the GPT-2 encoding from tiktoken (no network and no tiktoken cache?): "
                f"{type(e).__name__}: {e}. Pass the folder holding encoder.json + vocab.bpe (or gpt2.tiktoken): "
                "get_tokenizer('gpt2', vocab_dir=...) or set SPINE_GPT2_VOCAB_DIR."
            ) from e
        return cls(enc)

    def encode(self, text: str, *, allowed_special: AllowedSpecial = frozenset()) -> list[int]:
        allowed = resolve_allowed_special(allowed_special, self.special_tokens)
        if not allowed:
            # same ids as disallowed_special=() (specials as plain text), without scanning for them
            return self._enc.encode_ordinary(text)
        # disallowed_special=(): a special token that is not allowed is encoded as plain text.
        return self._enc.encode(text, allowed_special=allowed, disallowed_special=())

    def encode_batch(self, texts: Sequence[str], *, allowed_special: AllowedSpecial = frozenset()) -> list[list[int]]:
        allowed = resolve_allowed_special(allowed_special, self.special_tokens)
        if not allowed:
            return self._enc.encode_ordinary_batch(list(texts))
        return self._enc.encode_batch(list(texts), allowed_special=allowed, disallowed_special=())

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside the GPT-2 vocabulary 0..{self.vocab_size - 1}")
        return self._enc.decode(ids, errors="replace")

    def save(self, directory: str | Path) -> None:
        """Copy the source files (or dump the ranks as gpt2.tiktoken) and write the spec."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self._source_files:
            files = {fname: copy_into(src, directory, fname) for fname, src in self._source_files.items()}
        else:
            ranks = self._enc._mergeable_ranks  # tiktoken keeps them; no public accessor
            lines = [base64.b64encode(t) + b" " + str(r).encode() for t, r in sorted(ranks.items(), key=lambda x: x[1])]
            atomic_write_bytes(directory / GPT2_TIKTOKEN_FILE, b"\n".join(lines) + b"\n")
            files = {GPT2_TIKTOKEN_FILE: sha256_file(directory / GPT2_TIKTOKEN_FILE)}
        write_spec(directory, {"kind": "gpt2", **common_spec(self), "pattern": GPT2_PATTERN, "files": files})

    @classmethod
    def from_spec(cls, directory: Path, spec: dict) -> "TiktokenTokenizer":
        files = spec["files"]
        if "encoder.json" in files and "vocab.bpe" in files:
            return cls.from_gpt2_files(directory / "encoder.json", directory / "vocab.bpe")
        if GPT2_TIKTOKEN_FILE in files:
            return cls.from_tiktoken_file(directory / GPT2_TIKTOKEN_FILE)
        raise ValueError(f"{directory / TOKENIZER_SPEC_FILE}: kind 'gpt2' needs files encoder.json+vocab.bpe "
                         f"or {GPT2_TIKTOKEN_FILE}, got {sorted(files)}")

    def __repr__(self) -> str:
        return f"TiktokenTokenizer(name='gpt2', vocab_size={self.vocab_size}, files={sorted(self._source_files)})"


# ----------------------------------------------------------------------------- bytes
class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, plus `<|endoftext|>` = 256 (eos and pad)."""

    def __init__(self) -> None:
        self.name = "byte"
        self.eos_id = self.pad_id = 256
        self.bos_id = None
        self.special_tokens = {ENDOFTEXT: 256}
        self.vocab_size = 257

    def encode(self, text: str, *, allowed_special: AllowedSpecial = frozenset()) -> list[int]:
        allowed = resolve_allowed_special(allowed_special, self.special_tokens)
        ids: list[int] = []
        for piece, special in split_on_specials(fix_surrogates(text), allowed):
            ids.extend([self.special_tokens[piece]] if special else piece.encode("utf-8"))
        return ids

    def encode_batch(self, texts: Sequence[str], *, allowed_special: AllowedSpecial = frozenset()) -> list[list[int]]:
        return [self.encode(t, allowed_special=allowed_special) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        out, buf = [], bytearray()
        for i in ids:
            i = int(i)
            if 0 <= i < 256:
                buf.append(i)
            elif i == 256:
                # Decode the bytes so far on their own: a special token is never part of a character.
                out.append(buf.decode("utf-8", errors="replace"))
                buf = bytearray()
                out.append(ENDOFTEXT)
            else:
                raise ValueError(f"token id {i} is outside the byte tokenizer's vocabulary 0..256")
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)

    def save(self, directory: str | Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        write_spec(directory, {"kind": "byte", **common_spec(self), "files": {}})

    @classmethod
    def from_spec(cls, directory: Path, spec: dict) -> "ByteTokenizer":
        return cls()

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=257)"


# ----------------------------------------------------------------------------- factory / loading
def _kind_loaders() -> dict[str, Any]:
    from spine.bpe import BPETokenizer  # imported here: bpe.py imports this module
    from spine.qwen_tokenizer import Qwen3Tokenizer

    return {"gpt2": TiktokenTokenizer, "byte": ByteTokenizer, "bpe": BPETokenizer, "qwen3": Qwen3Tokenizer}


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Rebuild a tokenizer saved with `.save(directory)` (reads directory/spine_tokenizer.json)."""
    directory = Path(directory)
    spec_path = directory / TOKENIZER_SPEC_FILE
    if not spec_path.is_file():
        hint = ""
        if directory.is_dir():
            present = sorted(p.name for p in directory.iterdir())[:20]
            hint = f"; the directory holds {present}"
            if "tokenizer.json" in present or "encoder.json" in present:
                hint += " (use get_tokenizer(directory) to build from those files)"
        raise FileNotFoundError(f"no {TOKENIZER_SPEC_FILE} in {directory}{hint}")
    spec = read_json(spec_path, "tokenizer spec")
    if not isinstance(spec, dict):
        raise ValueError(f"{spec_path}: expected a JSON object, got {type(spec).__name__}")
    version = spec_field(spec, "format_version", int, spec_path)
    if version > SPEC_FORMAT_VERSION:
        raise ValueError(f"{spec_path}: format_version {version} is newer than this code ({SPEC_FORMAT_VERSION})")
    kind = spec_field(spec, "kind", str, spec_path)
    loaders = _kind_loaders()
    if kind not in loaders:
        raise ValueError(f"{spec_path}: unknown tokenizer kind {kind!r}; known kinds: {sorted(loaders)}")
    verify_spec_files(directory, spec)
    tok = loaders[kind].from_spec(directory, spec)
    for key in ("vocab_size", "eos_id", "pad_id"):
        if key in spec and spec[key] != getattr(tok, key):
            raise ValueError(f"{spec_path}: {key} is {spec[key]} but the rebuilt tokenizer has {getattr(tok, key)}")
    return tok


def _gpt2_from_location(loc: Path) -> TiktokenTokenizer:
    if loc.is_file():
        if loc.suffix == ".tiktoken":
            return TiktokenTokenizer.from_tiktoken_file(loc)
        raise ValueError(f"GPT-2 vocab path {loc} is a file but not a .tiktoken rank file")
    if not loc.is_dir():
        raise FileNotFoundError(f"GPT-2 vocab directory not found: {loc}")
    if (loc / "encoder.json").is_file() or (loc / "vocab.bpe").is_file():
        return TiktokenTokenizer.from_gpt2_files(loc / "encoder.json", loc / "vocab.bpe")
    if (loc / GPT2_TIKTOKEN_FILE).is_file():
        return TiktokenTokenizer.from_tiktoken_file(loc / GPT2_TIKTOKEN_FILE)
    raise FileNotFoundError(f"{loc} has neither encoder.json + vocab.bpe nor {GPT2_TIKTOKEN_FILE}")


def _from_directory(d: Path) -> Tokenizer:
    if (d / TOKENIZER_SPEC_FILE).is_file():
        return load_tokenizer(d)
    if (d / "tokenizer.json").is_file():
        from spine.qwen_tokenizer import Qwen3Tokenizer

        return Qwen3Tokenizer(d / "tokenizer.json")
    if (d / "encoder.json").is_file() or (d / "vocab.bpe").is_file() or (d / GPT2_TIKTOKEN_FILE).is_file():
        return _gpt2_from_location(d)
    raise FileNotFoundError(
        f"{d} holds no tokenizer: expected {TOKENIZER_SPEC_FILE}, tokenizer.json (Qwen3), "
        f"encoder.json + vocab.bpe or {GPT2_TIKTOKEN_FILE} (GPT-2)"
    )


def get_tokenizer(name: str | Path = "gpt2", vocab_dir: str | Path | None = None) -> Tokenizer:
    """Build a tokenizer by name ("gpt2", "byte", "bpe", "qwen3") or from a directory/file path.

    - "gpt2": from `vocab_dir` (or $SPINE_GPT2_VOCAB_DIR) holding encoder.json + vocab.bpe or
      gpt2.tiktoken (or a path to a .tiktoken file); with neither, tiktoken's download.
    - "byte": `ByteTokenizer`.
    - "bpe": a trained `BPETokenizer` saved in `vocab_dir`.
    - "qwen3": `Qwen3Tokenizer` from vocab_dir/tokenizer.json (or the HF hub when vocab_dir is None).
    - a directory: spine_tokenizer.json → `load_tokenizer`; tokenizer.json → Qwen3;
      encoder.json + vocab.bpe → GPT-2.
    """
    key = str(name)
    if key not in KNOWN_TOKENIZERS:
        p = Path(key).expanduser()
        if p.is_dir():
            return _from_directory(p)
        if p.is_file() and p.suffix == ".tiktoken":
            return TiktokenTokenizer.from_tiktoken_file(p)
        if p.is_file() and p.name.endswith(".json"):
            if p.name == TOKENIZER_SPEC_FILE:
                return load_tokenizer(p.parent)
            from spine.qwen_tokenizer import Qwen3Tokenizer

            return Qwen3Tokenizer(p)
        raise ValueError(f"unknown tokenizer {key!r}: expected one of {list(KNOWN_TOKENIZERS)} "
                         "or a directory holding a saved tokenizer")
    if key == "byte":
        return ByteTokenizer()
    if key == "gpt2":
        loc = vocab_dir if vocab_dir is not None else os.environ.get("SPINE_GPT2_VOCAB_DIR") or None
        return _gpt2_from_location(Path(loc).expanduser()) if loc else TiktokenTokenizer.from_download()
    if key == "bpe":
        if vocab_dir is None:
            raise ValueError("get_tokenizer('bpe') needs vocab_dir: a directory where a trained BPETokenizer "
                             "was saved (train one with spine.bpe.BPETokenizer.train)")
        from spine.bpe import BPETokenizer

        d = Path(vocab_dir)
        return load_tokenizer(d) if (d / TOKENIZER_SPEC_FILE).is_file() else BPETokenizer.load(d)
    # qwen3
    from spine.qwen_tokenizer import Qwen3Tokenizer

    if vocab_dir is None:
        return Qwen3Tokenizer.from_hub()
    d = Path(vocab_dir)
    if (d / TOKENIZER_SPEC_FILE).is_file():  # a saved one keeps its vocab_size / eos choice
        tok = load_tokenizer(d)
        if not isinstance(tok, Qwen3Tokenizer):
            raise ValueError(f"{d / TOKENIZER_SPEC_FILE} describes a {tok.name!r} tokenizer, not qwen3")
        return tok
    return Qwen3Tokenizer(d / "tokenizer.json" if d.is_dir() else d)
