"""Tokenizers beside Hugging Face checkpoints: read one on import, write transformers' files on export.

Import (`import_hf_tokenizer`) prefers spine's own tokenizer spec; otherwise it rebuilds GPT-2's BPE
from vocab.json + merges.txt, encoder.json + vocab.bpe or tokenizer.json, and Qwen3's from
tokenizer.json. Export writes what `transformers.AutoTokenizer` loads: vocab.json + merges.txt for
GPT-2 (merges recovered from tiktoken's ranks), a merge-free byte-level tokenizer.json for the byte
tokenizer. `spine.hf` re-exports the public names.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["import_hf_tokenizer", "gpt2_from_tokenizer_json", "check_hf_tokenizer", "write_hf_tokenizer"]


def import_hf_tokenizer(path: str | Path) -> Any | None:
    """The tokenizer stored beside a HF checkpoint, or None when there is none.

    A spine tokenizer spec (written by `export_hf`) wins. Otherwise the family comes from config.json's
    `model_type`: GPT-2 from vocab.json + merges.txt, encoder.json + vocab.bpe, or tokenizer.json alone
    (what current transformers writes); Qwen3 from tokenizer.json. `path` may be a hub name.
    """
    from . import tokenizer as tk
    from .hf import _read_json, resolve_hf_dir  # spine.hf imports this module: import it late

    src = resolve_hf_dir(path)
    if (src / tk.TOKENIZER_SPEC_FILE).is_file():
        return tk.load_tokenizer(src)
    hf_cfg = _read_json(src / "config.json", "HF config.json") if (src / "config.json").is_file() else {}
    model_type = hf_cfg.get("model_type") if isinstance(hf_cfg, dict) else None
    gpt2_files = [(src / "vocab.json", src / "merges.txt"), (src / "encoder.json", src / "vocab.bpe")]
    pair = next(((a, b) for a, b in gpt2_files if a.is_file() and b.is_file()), None)
    has_json = (src / "tokenizer.json").is_file()
    if model_type == "gpt2" or (model_type is None and pair is not None):
        if pair is not None:
            # HF's vocab.json/merges.txt hold GPT-2's encoder.json/vocab.bpe contents but not their exact
            # bytes (so not the sha256 pins); rebuilding from the encoding alone makes save() write a
            # self-contained rank file instead of copying the HF files under pinned names.
            tok = tk.TiktokenTokenizer.from_gpt2_files(pair[0], pair[1], verify_sha256=False)
            return tk.TiktokenTokenizer(tok.encoding)
        return gpt2_from_tokenizer_json(src / "tokenizer.json") if has_json else None
    if has_json:
        if model_type not in (None, "qwen3"):
            raise ValueError(f"{src}: tokenizer.json of a {model_type!r} model; spine reads GPT-2 and Qwen3 "
                             "tokenizers only")
        from .qwen_tokenizer import Qwen3Tokenizer

        tok = Qwen3Tokenizer(src / "tokenizer.json")
        rows = hf_cfg.get("vocab_size") if isinstance(hf_cfg, dict) else None
        if isinstance(rows, int) and rows > tok.vocab_size:
            # Qwen3 embeds more rows than the tokenizer defines; ids in the gap decode to ''
            tok = Qwen3Tokenizer(src / "tokenizer.json", vocab_size=rows)
        return tok
    return None


def gpt2_from_tokenizer_json(path: str | Path) -> Any:
    """GPT-2's tiktoken tokenizer from a HF `tokenizer.json` (a byte-level BPE model: vocab + merges)."""
    from . import tokenizer as tk
    from .hf import _read_json  # spine.hf imports this module: import it late

    path = Path(path)
    data = _read_json(path, "tokenizer.json")
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise ValueError(f"{path}: expected a byte-level BPE model (model.type 'BPE' with a vocab) for GPT-2")
    merges = []
    for i, m in enumerate(model.get("merges") or []):
        pair = m.split(" ") if isinstance(m, str) else m  # tokenizers < 0.20 wrote "a b", newer ["a", "b"]
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"{path}: merge {i} is {m!r}, expected two tokens")
        merges.append((pair[0], pair[1]))
    ranks = tk.gpt2_mergeable_ranks(model["vocab"], merges, source=str(path))
    if len(ranks) != tk.GPT2_EOS_ID or model["vocab"].get(tk.ENDOFTEXT, tk.GPT2_EOS_ID) != tk.GPT2_EOS_ID:
        raise ValueError(f"{path}: not GPT-2's vocabulary ({len(ranks)} tokens + {tk.ENDOFTEXT}; expected "
                         f"{tk.GPT2_EOS_ID} + {tk.ENDOFTEXT}={tk.GPT2_EOS_ID})")
    return tk.TiktokenTokenizer._build(ranks, {})


def check_hf_tokenizer(tokenizer: Any | None) -> None:
    """Refuse (before anything is written) a tokenizer that transformers' AutoTokenizer could not load."""
    name = getattr(tokenizer, "name", None)
    if tokenizer is not None and name not in ("gpt2", "byte", "qwen3"):
        raise ValueError(f"cannot export the {name!r} tokenizer in a form transformers loads (supported: gpt2, "
                         "byte, qwen3); AutoTokenizer would load an empty tokenizer, so nothing was written")


def write_hf_tokenizer(tokenizer: Any, dst: Path, family: str, max_len: int) -> None:
    """Save `tokenizer`'s spine files into `dst` (so `import_hf_tokenizer` restores it exactly) plus, for
    GPT-2's tokenizer on a GPT-2 model or the byte tokenizer, the files transformers' AutoTokenizer reads."""
    tokenizer.save(dst)
    if family == "gpt2" and getattr(tokenizer, "name", None) == "gpt2" and hasattr(tokenizer, "encoding"):
        _write_hf_gpt2_tokenizer(tokenizer, dst, max_len)
    elif getattr(tokenizer, "name", None) == "byte":
        _write_hf_byte_tokenizer(tokenizer, dst, max_len)


def _write_hf_byte_tokenizer(tokenizer: Any, dst: Path, max_len: int) -> None:
    """tokenizer.json + tokenizer_config.json: a byte-level BPE without merges, so token i is byte i
    (in GPT-2's printable byte alphabet) and <|endoftext|> is 256, exactly as `ByteTokenizer`."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    from .tokenizer import ENDOFTEXT, bytes_to_unicode

    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    vocab[ENDOFTEXT] = tokenizer.eos_id
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(ENDOFTEXT, special=True, normalized=False)])
    tk.save(str(dst / "tokenizer.json"))
    (dst / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len, "eos_token": ENDOFTEXT,
         "pad_token": ENDOFTEXT, "bos_token": None, "unk_token": None, "add_prefix_space": False}, indent=2) + "\n")


def _write_hf_gpt2_tokenizer(tokenizer: Any, dst: Path, max_len: int) -> None:
    """vocab.json + merges.txt (HF GPT2Tokenizer format), recovered from the tiktoken ranks."""
    from .tokenizer import bytes_to_unicode

    enc = tokenizer.encoding
    n = tokenizer.eos_id  # GPT-2: ids below <|endoftext|> are the mergeable ranks
    ranks = {enc.decode_single_token_bytes(i): i for i in range(n)}
    b2u = bytes_to_unicode()

    def show(b: bytes) -> str:
        return "".join(b2u[x] for x in b)

    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        merges.append(" ".join(show(p) for p in _split_by_rank(token, rank, ranks)))
    vocab = {show(t): r for t, r in ranks.items()}
    vocab.update(tokenizer.special_tokens)
    (dst / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (dst / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    eot = next(iter(tokenizer.special_tokens))
    (dst / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPT2Tokenizer", "model_max_length": max_len, "bos_token": eot,
         "eos_token": eot, "unk_token": eot, "add_prefix_space": False}, indent=2) + "\n")


def _split_by_rank(token: bytes, rank: int, ranks: dict[bytes, int]) -> list[bytes]:
    """The two parts whose merge made `token`: apply BPE with merges of lower rank only."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best, best_rank = None, None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < rank and (best_rank is None or r < best_rank):
                best, best_rank = i, r
        if best is None:
            break
        parts = parts[:best] + [parts[best] + parts[best + 1]] + parts[best + 2:]
    if len(parts) != 2:
        raise ValueError(f"cannot recover the merge that produced token {token!r} (rank {rank})")
    return parts
