"""Text classification data (Raschka ch.6): a CSV/TSV of (text, label) → balanced, split, padded batches.

File formats
- `format="tsv"` (also chosen by `auto` for any suffix but .csv): tab-separated, no quoting, so a
  message may contain quote characters as-is — the UCI SMS Spam Collection as shipped
  (`label<TAB>text`, no header) reads with the defaults.
- `format="csv"`: comma-separated with standard double-quote quoting.
Columns: `text_column` / `label_column` are header names or 0-based indices. Left at None: a header
row with columns named "text" and "label" (any case) when the first row has them, else a two-column
headerless file laid out as `label<TAB>text` (the SMS layout).

Labels: `label_map` ({"ham": 0, "spam": 1}) maps label strings to class ids 0..C-1. Without it, labels
that are all integers are class ids (checked against `num_classes` when given), otherwise the sorted
unique label strings are numbered (ham → 0, spam → 1).

Balance and split mirror the book's pandas calls with numpy's legacy `RandomState(seed)` (what
`DataFrame.sample(random_state=seed)` uses): each larger class is undersampled to the minority count
(`sample(n, random_state=seed)`), classes are concatenated in class-id order, the result is shuffled
(`sample(frac=1, random_state=seed)`) and cut 70/10/20 with `int()` (1494 → 1045 / 149 / 300).

Tokens and padding: texts are encoded once, in memory (a few thousand short texts take well under a
second; no disk cache needed). `max_length` defaults to the longest *training* text (the book's
120 GPT-2 tokens for SMS), capped by the model's context when it is known (`max_context`, or the
config.json of a spine checkpoint given as the tokenizer). Truncation policy: a longer text keeps
its first `max_length` tokens. Rows are right-padded with the tokenizer's pad id (50256 for GPT-2)
to the longest row of the batch — or to `max_length` with `pad_to_max_length` (the book). Under
causal attention with last-real-token pooling both give the same logits. Batches:
{"input_ids" (B, T) long, "labels" (B,) long, "lengths" (B,) long = real tokens per row}.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

import lightning.pytorch as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from spine.tokenizer import get_tokenizer

from .splits import SplitLoaders

TEXT_NAMES = ("text",)
LABEL_NAMES = ("label",)


# ----------------------------------------------------------------------------- pure helpers
def read_table(path: str | Path, format: str = "auto") -> list[list[str]]:
    """Rows of a CSV/TSV file (see the module docstring); errors name the file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"classification data file not found: {p}")
    if format == "auto":
        format = "csv" if p.suffix.lower() == ".csv" else "tsv"
    if format not in ("csv", "tsv"):
        raise ValueError(f"format must be 'auto', 'csv' or 'tsv', got {format!r}")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ValueError(f"{p}: not UTF-8 text (byte {raw[e.start:e.start + 1]!r} at offset {e.start}, line {line}); "
                         "save the file as UTF-8") from None
    if not text.strip():
        raise ValueError(f"{p}: the file is empty")
    if format == "tsv":
        reader = csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(io.StringIO(text))
    rows = [r for r in reader if any(c.strip() for c in r)]  # blank lines (e.g. a trailing newline) skipped
    if not rows:
        raise ValueError(f"{p}: the file has no rows")
    return rows


def _lower(row: Sequence[str]) -> list[str]:
    return [c.strip().lower() for c in row]


def resolve_columns(rows: list[list[str]], text_column: str | int | None, label_column: str | int | None,
                    source: str = "data") -> tuple[int, int, list[list[str]]]:
    """(text index, label index, data rows without a header) — see the module docstring for the defaults."""
    if text_column is None and label_column is None:
        head = _lower(rows[0])
        t = next((head.index(n) for n in TEXT_NAMES if n in head), None)
        lab = next((head.index(n) for n in LABEL_NAMES if n in head), None)
        if t is not None and lab is not None:
            return t, lab, rows[1:]
        if len(rows[0]) == 2:
            return 1, 0, rows  # label<TAB>text, as the SMS Spam Collection ships
        raise ValueError(f"{source}: cannot tell which columns hold the text and the label: the first row "
                         f"{rows[0][:6]} has no 'text'/'label' header and {len(rows[0])} columns; set "
                         "text_column and label_column (names or 0-based indices)")
    if text_column is None or label_column is None:
        raise ValueError(f"{source}: set both text_column and label_column (got text_column={text_column!r}, "
                         f"label_column={label_column!r})")
    if isinstance(text_column, int) and isinstance(label_column, int):
        width = len(rows[0])
        for what, idx in (("text_column", text_column), ("label_column", label_column)):
            if not 0 <= idx < width:
                raise ValueError(f"{source}: {what}={idx} is out of range: the rows have {width} columns")
        return text_column, label_column, rows
    head = [c.strip() for c in rows[0]]
    missing = [str(c) for c in (text_column, label_column) if str(c) not in head]
    if missing:
        raise ValueError(f"{source}: column(s) {missing} not found; the header row has columns {head}")
    return head.index(str(text_column)), head.index(str(label_column)), rows[1:]


def map_labels(raw: Sequence[str], label_map: dict[str, int] | None = None, num_classes: int | None = None,
               source: str = "data", first_row: int = 1) -> tuple[list[int], list[str]]:
    """Class ids for label strings and the class names (index = id). Errors name the row (1-based)."""
    raw = [r.strip() for r in raw]
    if label_map:
        label_map = {str(k): v for k, v in label_map.items()}
        ids = sorted(label_map.values())
        if ids != list(range(len(ids))):
            raise ValueError(f"label_map must map to the ids 0..{len(ids) - 1} exactly once each, got {label_map}")
        if num_classes is not None and num_classes != len(ids):
            raise ValueError(f"num_classes={num_classes} but label_map has {len(ids)} classes")
        names = [None] * len(ids)
        for k, v in label_map.items():
            names[v] = k
        out = []
        for i, lab in enumerate(raw):
            if lab not in label_map:
                raise ValueError(f"{source}: row {i + first_row} has label {lab!r}, which is not in label_map "
                                 f"(known labels: {sorted(label_map)})")
            out.append(label_map[lab])
        return out, names
    if raw and all(r.lstrip("-").isdigit() for r in raw):
        ints = [int(r) for r in raw]
        n = num_classes if num_classes is not None else max(ints) + 1
        for i, v in enumerate(ints):
            if not 0 <= v < n:
                raise ValueError(f"{source}: row {i + first_row} has label {v}, outside [0, {n}) "
                                 f"(num_classes={n})")
        return ints, [str(i) for i in range(n)]
    names = sorted(set(raw))
    if num_classes is not None and num_classes != len(names):
        raise ValueError(f"{source}: found {len(names)} distinct labels {names[:10]} but num_classes={num_classes}; "
                         "pass a label_map to fix the mapping")
    index = {n: i for i, n in enumerate(names)}
    return [index[r] for r in raw], names


def balance_indices(labels: Sequence[int], num_classes: int, seed: int = 123,
                    names: Sequence[str] | None = None) -> list[int]:
    """Undersample every class to the minority count, as the book's `create_balanced_dataset`.

    Class c's rows are `RandomState(seed).choice(count_c, minority, replace=False)` (= pandas
    `sample(minority, random_state=seed)`), or all of them for a minority class; classes concatenated by id.
    """
    labels = np.asarray(labels)
    per_class = [np.flatnonzero(labels == c) for c in range(num_classes)]
    counts = [len(ix) for ix in per_class]
    if min(counts) == 0:
        empty = [(names[c] if names else str(c)) for c in range(num_classes) if counts[c] == 0]
        raise ValueError(f"cannot balance: class(es) {empty} have no examples (counts per class: {counts})")
    m = min(counts)
    out: list[int] = []
    for ix in per_class:
        if len(ix) > m:
            ix = ix[np.random.RandomState(seed).choice(len(ix), m, replace=False)]
        out.extend(int(i) for i in ix)
    return out


def split_indices(n: int, train_frac: float = 0.7, val_frac: float = 0.1, seed: int = 123
                  ) -> tuple[list[int], list[int], list[int]]:
    """Shuffle (pandas `sample(frac=1, random_state=seed)`) and cut: int(n*train), int(n*val), the rest."""
    if not (0 < train_frac < 1 and 0 <= val_frac < 1 and train_frac + val_frac < 1):
        raise ValueError(f"need 0 < train_frac, 0 <= val_frac and train_frac + val_frac < 1, got "
                         f"{train_frac}, {val_frac}")
    order = np.random.RandomState(seed).choice(n, n, replace=False).tolist()
    a = int(n * train_frac)
    b = a + int(n * val_frac)
    return order[:a], order[a:b], order[b:]


def pad_batch(items: Sequence[tuple[list[int], int]], pad_id: int, pad_to: int | None = None
              ) -> dict[str, torch.Tensor]:
    """Right-pad token lists to the longest (or `pad_to`) → {"input_ids", "labels", "lengths"}."""
    lengths = [len(ids) for ids, _ in items]
    T = max(max(lengths), pad_to or 0)
    x = torch.full((len(items), T), pad_id, dtype=torch.long)
    for b, (ids, _) in enumerate(items):
        x[b, :len(ids)] = torch.as_tensor(ids, dtype=torch.long)
    return {"input_ids": x, "labels": torch.tensor([lab for _, lab in items], dtype=torch.long),
            "lengths": torch.tensor(lengths, dtype=torch.long)}


def _context_cap(tokenizer: str, max_context: int | None) -> int | None:
    if max_context is not None:
        return max_context
    d = Path(str(tokenizer)).expanduser()
    if d.is_dir() and (d / "config.json").is_file() and (d / "manifest.json").is_file():
        from spine.checkpoint import load_config

        return load_config(d).context_length  # a spine checkpoint given as the tokenizer
    return None


# ----------------------------------------------------------------------------- the data module
class ClassificationDataModule(SplitLoaders, L.LightningDataModule):
    """(text, label) file → balanced 70/10/20 split → right-padded batches (see the module docstring)."""

    def __init__(
        self,
        path: str,
        format: str = "auto",
        text_column: str | int | None = None,
        label_column: str | int | None = None,
        label_map: dict[str, int] | None = None,
        num_classes: int | None = None,
        balance: bool = True,
        train_frac: float = 0.7,
        val_frac: float = 0.1,
        seed: int = 123,
        tokenizer: str = "gpt2",
        vocab_dir: str | None = None,
        max_length: int | None = None,
        max_context: int | None = None,
        pad_to_max_length: bool = False,
        batch_size: int = 8,
        num_workers: int = 0,
        drop_last: bool = True,
    ):
        super().__init__()
        # num_classes is kept out of the data module's hparams: the classifier stores the head size it
        # resolved in its own hparams, and LightningCLI passes a checkpoint's hparams back to the model on
        # `validate/test --ckpt_path`, so (model 2, data None) would fail Lightning's hparams merge check
        self.save_hyperparameters(ignore=["num_classes"])
        self._num_classes_arg = num_classes
        self.tokenizer = get_tokenizer(tokenizer, vocab_dir)
        self.vocab_size: int = self.tokenizer.vocab_size
        self.pad_id: int = self.tokenizer.pad_id
        self._cap = _context_cap(tokenizer, max_context)
        self._splits: dict[str, list[tuple[list[int], int]]] | None = None
        self._max_length: int | None = None

    # attributes LightningCLI links into the model (computed on first access: they need the data)
    @property
    def context_length(self) -> int:
        self._load()
        return self._max_length

    @property
    def max_length(self) -> int:
        return self.context_length

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def label_names(self) -> list[str]:
        """Class names by id (e.g. ["ham", "spam"])."""
        self._load()
        return self._label_names

    @property
    def class_counts(self) -> dict[str, list[int]]:
        """Examples per class in each split."""
        self._load()
        return self._class_counts

    def _load(self) -> None:
        if self._splits is not None:
            return
        h = self.hparams
        src = str(h.path)
        rows = read_table(h.path, h.format)
        t_idx, l_idx, data = resolve_columns(rows, h.text_column, h.label_column, src)
        if not data:
            raise ValueError(f"{src}: the file has a header but no data rows")
        width = max(t_idx, l_idx) + 1
        first = len(rows) - len(data) + 1  # 1-based row number of data[0] in the file (blank lines aside)
        for i, r in enumerate(data):
            if len(r) < width:
                raise ValueError(f"{src}: row {i + first} has {len(r)} column(s), expected at least {width}: {r[:3]}")
        texts = [r[t_idx] for r in data]
        if h.text_column is None and h.label_column is None and data is rows and not h.label_map and len(data) > 2:
            # the headerless label<TAB>text default: a header row with other names would become a class
            first_label, rest = data[0][l_idx].strip(), [r[l_idx].strip() for r in data[1:]]
            is_int = [x.lstrip("-").isdigit() for x in rest]
            header_like = first_label not in rest and (
                (all(is_int) and not first_label.lstrip("-").isdigit())  # "label_id" over integer labels
                or min(rest.count(x) for x in set(rest)) >= 2)           # a one-off name among real classes
            if header_like:
                raise ValueError(f"{src}: row 1 {data[0][:2]} looks like a header (its label {first_label!r} occurs "
                                 "nowhere else) but has no 'text'/'label' columns; name them with text_column and "
                                 "label_column, or pass label_map")
        labels, names = map_labels([r[l_idx] for r in data], h.label_map, self._num_classes_arg, src, first)
        C = len(names)
        if C < 2:
            raise ValueError(f"{src}: only one class {names} — classification needs at least two")
        keep = balance_indices(labels, C, h.seed, names) if h.balance else list(range(len(texts)))
        parts = split_indices(len(keep), h.train_frac, h.val_frac, h.seed)
        eos = self.tokenizer.eos_id
        # an empty text still is an example: it is given one end-of-text token so it has a last token
        encoded = [self.tokenizer.encode(t) or [eos] for t in texts]
        train_ids = [keep[i] for i in parts[0]]
        if not train_ids:
            raise ValueError(f"{src}: the training split is empty ({len(keep)} examples after balancing)")
        longest = max(len(encoded[i]) for i in train_ids)
        L_ = h.max_length if h.max_length is not None else longest
        if self._cap is not None and L_ > self._cap:
            if h.max_length is not None:
                raise ValueError(f"max_length={h.max_length} exceeds the model's context length {self._cap}")
            L_ = self._cap
        if L_ < 1:
            raise ValueError(f"max_length must be >= 1, got {L_}")
        self._max_length = L_
        if h.drop_last and len(train_ids) < h.batch_size:
            raise ValueError(f"{src}: {len(train_ids)} training example(s) (of {len(texts)} rows, {len(keep)} after "
                             f"balancing) make no full batch of batch_size={h.batch_size}; lower batch_size or set "
                             "drop_last: false")
        # truncation policy: keep the first max_length tokens
        self._splits = {name: [(encoded[keep[i]][:L_], labels[keep[i]]) for i in idx]
                        for name, idx in zip(("train", "val", "test"), parts)}
        self._label_names = names
        self._class_counts = {name: np.bincount([lab for _, lab in s], minlength=C).tolist()
                             for name, s in self._splits.items()}

    def setup(self, stage: str | None = None) -> None:
        self._load()

    def split(self, name: str) -> list[tuple[list[int], int]]:
        """(token ids, label) pairs of "train", "val" or "test"."""
        self._load()
        return self._splits[name]

    def _collate(self, items):
        return pad_batch(items, self.pad_id, self._max_length if self.hparams.pad_to_max_length else None)

    def _loader(self, name: str, train: bool) -> DataLoader:
        h = self.hparams
        return DataLoader(self.split(name), batch_size=h.batch_size, shuffle=train, drop_last=train and h.drop_last,
                          num_workers=h.num_workers, collate_fn=self._collate)

