"""Instruction fine-tuning data as pure functions (Raschka ch.7): records, prompt templates, splits, collate.

Templates
- "alpaca" (the book's `format_input`)::

      Below is an instruction that describes a task. Write a response that appropriately completes the request.

      ### Instruction:
      {instruction}

      ### Input:            <- only when the record's input is non-empty
      {input}

      ### Response:
      {output}

- "phi3" (the book's exercise 7.1)::

      <|user|>
      {instruction}
      {input}               <- only when non-empty
      <|assistant|>
      {output}

`prompt_text(record)` is everything before `{output}`: what a model is given at inference time.
Special-looking strings such as "<|user|>" are ordinary text for the GPT-2 tokenizer.

Tokenisation: the full text `prompt + output` is encoded in one go (as the book does), so the ids are
identical to the book's. The prompt length used for prompt masking is the longest common prefix of
`encode(prompt)` and `encode(full)`: robust even if BPE merged across the prompt/output boundary.

Collate (the book's `custom_collate_fn`): append one end-of-text, pad with end-of-text to the longest
row + 1, inputs = row[:-1], targets = row[1:]; the first end-of-text in the targets (the model must
learn to stop) is kept and all later padding targets are -100. We locate that end-of-text by
position rather than by value, so an end-of-text id inside a record would not be masked by mistake.
With `mask_prompt`, targets that predict prompt tokens are -100 too (the book's exercise 7.2).

Truncation policy (`max_length` = the longest model input): a record of n tokens needs an input of n
positions. With `truncate=True` a longer record keeps its first `max_length` tokens as inputs, and
its targets are tokens 2..max_length+1 — the rest of the record and its end-of-text target are lost
(the book's `allowed_max_length` cuts the same way: encode keeps max_length + 1 ids, collate cuts
inputs and targets to max_length). With `truncate=False` it is an error naming the record's index
and length.
A prompt that alone fills the cut leaves a record with no unmasked target under `mask_prompt`: it
adds nothing to the loss (the targets are never prompt tokens).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import torch

from .training import IGNORE_INDEX

Template = Literal["alpaca", "phi3"]
TEMPLATES = ("alpaca", "phi3")
REQUIRED_FIELDS = ("instruction", "input", "output")

ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")


# ----------------------------------------------------------------------------- records
def validate_records(records: Any, source: str = "data") -> list[dict]:
    """Check `records` is a non-empty list of dicts with string instruction/input/output; return it.

    A missing "input" is an error like any other field: the book's data always carries it (often "").
    """
    if not isinstance(records, list):
        raise ValueError(f"{source}: expected a JSON list of records, got a JSON {type(records).__name__}")
    if not records:
        raise ValueError(f"{source}: the list of records is empty")
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise ValueError(f"{source}: record {i} is a {type(r).__name__}, expected an object with fields "
                             f"{list(REQUIRED_FIELDS)}")
        for f in REQUIRED_FIELDS:
            if f not in r:
                raise ValueError(f"{source}: record {i} is missing field {f!r}; fields present: {sorted(r)}")
            if not isinstance(r[f], str):
                raise ValueError(f"{source}: record {i} field {f!r} must be a string, got {type(r[f]).__name__}")
    return records


def load_records(path: str | Path) -> list[dict]:
    """Read and validate an Alpaca-style JSON file (a list of {instruction, input, output})."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"instruction data file not found: {p}")
    text = p.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"{p}: the file is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON ({e})") from None
    return validate_records(data, str(p))


def split_records(records: Sequence[dict], train_frac: float = 0.85, test_frac: float = 0.10
                  ) -> tuple[list[dict], list[dict], list[dict]]:
    """The book's split, in file order: (train, val, test) = first 85%, last 5%, the 10% in between.

    Sizes: train = int(n*train_frac), test = int(n*test_frac), val = the rest (1100 → 935 / 55 / 110).
    """
    if not (0 < train_frac < 1 and 0 <= test_frac < 1 and train_frac + test_frac <= 1):
        raise ValueError(f"need 0 < train_frac < 1, 0 <= test_frac and train_frac + test_frac <= 1, got "
                         f"{train_frac}, {test_frac}")
    n = len(records)
    n_train, n_test = int(n * train_frac), int(n * test_frac)
    train = list(records[:n_train])
    test = list(records[n_train:n_train + n_test])
    val = list(records[n_train + n_test:])
    return train, val, test


# ----------------------------------------------------------------------------- templates
def _check_template(template: str) -> None:
    if template not in TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}; choose one of {TEMPLATES}")


def format_input(record: dict, template: Template = "alpaca") -> str:
    """The book's `format_input`: instruction (+ input) without the response header."""
    _check_template(template)
    if template == "alpaca":
        text = f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{record['instruction']}"
        return text + (f"\n\n### Input:\n{record['input']}" if record["input"] else "")
    return f"<|user|>\n{record['instruction']}" + (f"\n{record['input']}" if record["input"] else "")


def response_header(template: Template = "alpaca") -> str:
    _check_template(template)
    return "\n\n### Response:\n" if template == "alpaca" else "\n<|assistant|>\n"


def prompt_text(record: dict, template: Template = "alpaca") -> str:
    """What the model is given at inference: `format_input` + the response header."""
    return format_input(record, template) + response_header(template)


def full_text(record: dict, template: Template = "alpaca") -> str:
    """Prompt + the reference output: one training example."""
    return prompt_text(record, template) + record["output"]


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclass
class Encoded:
    ids: list[int]
    prompt_len: int  # leading ids that belong to the prompt


def encode_records(records: Sequence[dict], tokenizer: Any, template: Template = "alpaca",
                   max_length: int | None = None, truncate: bool = False, offset: int = 0) -> list[Encoded]:
    """Tokenise records (see the module docstring for the truncation policy). `offset` numbers records in errors."""
    out = []
    for i, r in enumerate(records):
        ids = tokenizer.encode(full_text(r, template))
        plen = _common_prefix(tokenizer.encode(prompt_text(r, template)), ids)
        if max_length is not None and len(ids) > max_length:
            if not truncate:
                raise ValueError(f"record {offset + i} has {len(ids)} tokens, more than max_length={max_length}; "
                                 "raise max_length or set truncate: true (keeps the first max_length tokens)")
            ids = ids[:max_length + 1]  # +1: the last kept input still gets its true next token as target
            # Not min(plen, max_length): with a prompt past the cut, the last target (token
            # max_length) is a prompt token too and must stay masked.
            plen = min(plen, len(ids))
        out.append(Encoded(ids, plen))
    return out


# ----------------------------------------------------------------------------- collate
def collate(batch: Sequence[Sequence[int]], pad_id: int = 50256, ignore_index: int = IGNORE_INDEX,
            prompt_lens: Sequence[int] | None = None, max_length: int | None = None) -> dict[str, torch.Tensor]:
    """The book's `custom_collate_fn` → {"input_ids", "targets"} (B, T); see the module docstring.

    `prompt_lens` (one per row) masks the targets that predict prompt tokens. `max_length` cuts
    inputs and targets to at most that many columns (as the book's `allowed_max_length`).
    """
    if len(batch) == 0:
        raise ValueError("collate: empty batch")
    T = max(len(item) for item in batch) + 1  # +1: the appended end-of-text
    inputs = torch.full((len(batch), T), pad_id, dtype=torch.long)
    for b, item in enumerate(batch):
        inputs[b, :len(item)] = torch.as_tensor(list(item), dtype=torch.long)
    x, y = inputs[:, :-1].clone(), inputs[:, 1:].clone()
    for b, item in enumerate(batch):
        n = len(item)  # y[b, n-1] is the appended end-of-text: kept; later columns are padding
        y[b, n:] = ignore_index
        if prompt_lens is not None and prompt_lens[b] > 1:
            # y[j] predicts token j+1; tokens 1..p-1 are prompt → y[0..p-2] ignored (y[p-1] = first answer token)
            y[b, :prompt_lens[b] - 1] = ignore_index
    if max_length is not None:
        x, y = x[:, :max_length], y[:, :max_length]
    return {"input_ids": x, "targets": y}
