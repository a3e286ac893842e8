"""Qwen3 tokenizer through HF `tokenizers` (`tokenizer.json`), with Qwen3's chat template.

Chat format (Qwen3's official template, and rasbt's reasoning-from-scratch `Qwen3Tokenizer`):

    <|im_start|>system\n{content}<|im_end|>\n        (optional)
    <|im_start|>user\n{content}<|im_end|>\n
    <|im_start|>assistant\n                          (generation prompt)
    <think>\n\n</think>\n\n                          (only when thinking is disabled)

Message contents are rendered verbatim. Qwen3's official Jinja template additionally rewrites
assistant turns (drops `<think>` blocks from turns before the last user message and inserts an
empty think block into the final assistant turn); we do not, so that training text is exactly
the text given. For system/user turns and the generation prompt the two agree.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spine.tokenizer import (
    ENDOFTEXT,
    TOKENIZER_SPEC_FILE,
    AllowedSpecial,
    common_spec,
    copy_into,
    fix_surrogates,
    resolve_allowed_special,
    split_on_specials,
    write_spec,
)

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
THINK_START, THINK_END = "<think>", "</think>"
REQUIRED_TOKENS = (ENDOFTEXT, IM_START, IM_END, THINK_START, THINK_END)
CHAT_ROLES = ("system", "user", "assistant")
NO_THINKING_SUFFIX = f"{THINK_START}\n\n{THINK_END}\n\n"
QWEN3_HUB_REPO = "Qwen/Qwen3-0.6B"
QWEN3_EMBEDDING_ROWS = 151936  # Qwen3 models embed more ids than the tokenizer defines


class Qwen3Tokenizer:
    """Qwen3's byte-level BPE plus chat template (Tokenizer protocol; name "qwen3").

    `special_tokens` holds every added token of tokenizer.json (incl. `<think>`/`</think>`).
    `eos_id` is `<|im_end|>` by default (chat models end a turn with it; pass
    `eos_token="<|endoftext|>"` for base-model document streams); `pad_id` is `<|endoftext|>`.
    `vocab_size` defaults to the tokenizer's max id + 1; pass the model's embedding size
    (151936 for Qwen3) to have the tokenizer report that instead.
    """

    def __init__(self, tokenizer_file: str | Path, *, vocab_size: int | None = None,
                 eos_token: str = IM_END) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(tokenizer_file)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"Qwen3 tokenizer file not found: {path}")
        raw = path.read_text(encoding="utf-8")
        try:
            self._tok = HFTokenizer.from_str(raw)
            data = json.loads(raw)
            # Same tokenizer without its added tokens: encodes `<|im_start|>` etc. as plain text,
            # which is what "not in allowed_special" means (`tokenizers` always matches added tokens).
            data["added_tokens"] = []
            self._plain = HFTokenizer.from_str(json.dumps(data))
        except Exception as e:  # tokenizers raises a bare Exception on malformed files
            raise ValueError(f"{path} is not a valid HF tokenizers tokenizer.json: {e}") from e
        self.tokenizer_file = path
        self.name = "qwen3"
        self.special_tokens = {t.content: int(i) for i, t in sorted(self._tok.get_added_tokens_decoder().items())}
        missing = [t for t in REQUIRED_TOKENS if t not in self.special_tokens]
        if missing:
            raise ValueError(f"{path}: Qwen3 tokenizer lacks added tokens {missing} "
                             f"(it has {sorted(self.special_tokens)[:10]})")
        if eos_token not in self.special_tokens:
            raise ValueError(f"eos_token {eos_token!r} is not a special token of {path}")
        self.eos_token = eos_token
        self.eos_id = self.special_tokens[eos_token]
        self.pad_id = self.endoftext_id = self.special_tokens[ENDOFTEXT]
        self.im_start_id = self.special_tokens[IM_START]
        self.im_end_id = self.special_tokens[IM_END]
        self.think_ids = (self.special_tokens[THINK_START], self.special_tokens[THINK_END])
        self.bos_id = None  # Qwen3 prepends nothing
        self._n_ids = max(self._tok.get_vocab(with_added_tokens=True).values()) + 1
        if vocab_size is not None and vocab_size < self._n_ids:
            raise ValueError(f"vocab_size {vocab_size} is smaller than the {self._n_ids} ids defined by {path}")
        self.vocab_size = vocab_size if vocab_size is not None else self._n_ids
        self._explicit_vocab_size = vocab_size

    @classmethod
    def from_hub(cls, repo_id: str = QWEN3_HUB_REPO, **kwargs: Any) -> "Qwen3Tokenizer":
        """Download tokenizer.json from the Hugging Face hub (needs network or the HF cache)."""
        try:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(repo_id=repo_id, filename="tokenizer.json")
        except Exception as e:
            offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0") else ""
            raise RuntimeError(
                f"could not download tokenizer.json of {repo_id} from the Hugging Face hub{offline}: "
                f"{type(e).__name__}: {e}. Pass a local folder: get_tokenizer('qwen3', vocab_dir=...)"
            ) from e
        return cls(path, vocab_size=kwargs.pop("vocab_size", QWEN3_EMBEDDING_ROWS), **kwargs)

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """Ids that end generation: eos, `<|im_end|>` and `<|endoftext|>` (like HF's Qwen3 config)."""
        return tuple(dict.fromkeys((self.eos_id, self.im_end_id, self.endoftext_id)))

    # ------------------------------------------------------------------ encode / decode
    def encode(self, text: str, *, allowed_special: AllowedSpecial = frozenset()) -> list[int]:
        allowed = resolve_allowed_special(allowed_special, self.special_tokens)
        text = fix_surrogates(text)
        if allowed == set(self.special_tokens):
            return self._tok.encode(text, add_special_tokens=False).ids
        ids: list[int] = []
        for piece, special in split_on_specials(text, allowed):
            ids.extend([self.special_tokens[piece]] if special else self._plain.encode(piece, add_special_tokens=False).ids)
        return ids

    def encode_batch(self, texts: Sequence[str], *, allowed_special: AllowedSpecial = frozenset()) -> list[list[int]]:
        allowed = resolve_allowed_special(allowed_special, self.special_tokens)
        texts = [fix_surrogates(t) for t in texts]
        if allowed == set(self.special_tokens):
            return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]
        if not allowed:
            return [e.ids for e in self._plain.encode_batch(texts, add_special_tokens=False)]
        return [self.encode(t, allowed_special=allowed) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; ids past the tokenizer but inside vocab_size (embedding padding) decode to ''."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside the vocabulary 0..{self.vocab_size - 1}")
        return self._tok.decode([i for i in ids if i < self._n_ids], skip_special_tokens=False)

    # ------------------------------------------------------------------ chat
    def apply_chat_template(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True,
                            enable_thinking: bool = True) -> str:
        """Render messages ({"role", "content"}) in Qwen3's ChatML format (see module docstring)."""
        if isinstance(messages, (str, dict)):
            raise ValueError("messages must be a list of {'role': ..., 'content': ...} dicts")
        parts = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise ValueError(f"messages[{i}] must be a dict with str 'role' and 'content', got {m!r}"[:300])
            if m["role"] not in CHAT_ROLES:
                raise ValueError(f"messages[{i}] has role {m['role']!r}; expected one of {list(CHAT_ROLES)}")
            parts.append(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n")
        if add_generation_prompt:
            parts.append(f"{IM_START}assistant\n")
            if not enable_thinking:
                parts.append(NO_THINKING_SUFFIX)
        return "".join(parts)

    def encode_chat(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True,
                    enable_thinking: bool = True) -> list[int]:
        """Ids of `apply_chat_template(...)`, with all special tokens recognised."""
        return self.encode(self.apply_chat_template(messages, add_generation_prompt, enable_thinking),
                           allowed_special="all")

    # ------------------------------------------------------------------ save / load
    def save(self, directory: str | Path) -> None:
        """Copy tokenizer.json into `directory` and write spine_tokenizer.json (kind "qwen3")."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        sha = copy_into(self.tokenizer_file, directory, "tokenizer.json")
        write_spec(directory, {"kind": "qwen3", **common_spec(self), "eos_token": self.eos_token,
                               "explicit_vocab_size": self._explicit_vocab_size,
                               "files": {"tokenizer.json": sha}})

    @classmethod
    def from_spec(cls, directory: Path, spec: dict) -> "Qwen3Tokenizer":
        if "tokenizer.json" not in spec["files"]:
            raise ValueError(f"{directory / TOKENIZER_SPEC_FILE}: kind 'qwen3' needs tokenizer.json in 'files'")
        return cls(directory / "tokenizer.json", vocab_size=spec.get("explicit_vocab_size"),
                   eos_token=spec.get("eos_token", IM_END))

    def __repr__(self) -> str:
        return f"Qwen3Tokenizer({str(self.tokenizer_file)!r}, vocab_size={self.vocab_size}, eos={self.eos_token!r})"
