"""Instruction fine-tuning data (Raschka ch.7): Alpaca-style JSON → templated, tokenised, book-collated batches.

The templates, split, truncation policy and collate are in `spine.instruct` (pure functions); this
module wires them into Lightning. Splits follow the book in file order: train = first 85%, test =
next 10%, val = last 5% (1,100 records → 935 / 110 / 55). Records are tokenised once in memory
(about a thousand short records: well under a second with tiktoken). Batches are
{"input_ids" (B, T), "targets" (B, T)} with -100 where no loss is taken.
"""
from __future__ import annotations

from functools import partial
import lightning.pytorch as L
from torch.utils.data import DataLoader

from spine.instruct import (TEMPLATES, Encoded, collate, encode_records, format_input, load_records, prompt_text,
                            split_records)
from spine.tokenizer import get_tokenizer

from .splits import SplitLoaders


# without max_length the context is the longest record, up to this many tokens (more is refused)
MAX_AUTO_CONTEXT = 8192


def _collate(batch: list[Encoded], pad_id: int, mask_prompt: bool, max_length: int | None):
    return collate([e.ids for e in batch], pad_id=pad_id,
                   prompt_lens=[e.prompt_len for e in batch] if mask_prompt else None, max_length=max_length)


class InstructionDataModule(SplitLoaders, L.LightningDataModule):
    """Alpaca-style records {instruction, input, output} → {"input_ids", "targets"} batches.

    template: "alpaca" (book) or "phi3". mask_prompt: no loss on the prompt tokens (book exercise 7.2).
    max_length: the longest model input (None: the longest record, so nothing is cut); longer records
    raise unless `truncate` (then they keep their first max_length tokens; see `spine.instruct`).
    The tokenizer spec is as elsewhere: "gpt2" (+ vocab_dir), "byte", or a directory (e.g. the spine
    checkpoint being fine-tuned, whose tokenizer must be used).
    """

    def __init__(
        self,
        path: str,
        template: str = "alpaca",
        mask_prompt: bool = False,
        tokenizer: str = "gpt2",
        vocab_dir: str | None = None,
        max_length: int | None = None,
        truncate: bool = False,
        train_frac: float = 0.85,
        test_frac: float = 0.10,
        limit: int | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        drop_last: bool = True,
    ):
        super().__init__()
        if template not in TEMPLATES:
            raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}")
        if max_length is not None and max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        self.save_hyperparameters()
        self.tokenizer = get_tokenizer(tokenizer, vocab_dir)
        self.vocab_size: int = self.tokenizer.vocab_size
        # the book pads with <|endoftext|>; the collate keeps the first one as the stop target
        self.pad_id: int = self.tokenizer.eos_id
        self.template = template
        records = load_records(path)
        if limit is not None:
            records = records[:limit]
        self.train_data, self.val_data, self.test_data = split_records(records, train_frac, test_frac)
        if not self.train_data:
            raise ValueError(f"{path}: no training records ({len(records)} records, train_frac={train_frac})")
        self._encoded: dict[str, list[Encoded]] = {}
        offsets = {"train": 0, "test": len(self.train_data), "val": len(self.train_data) + len(self.test_data)}
        for name, recs in (("train", self.train_data), ("val", self.val_data), ("test", self.test_data)):
            self._encoded[name] = encode_records(recs, self.tokenizer, template, max_length, truncate,
                                                 offset=offsets[name])
        if max_length is None:
            self._check_lengths(path, tokenizer, offsets)
        longest = max(len(e.ids) for enc in self._encoded.values() for e in enc)
        # what LightningCLI links into the model's context_length
        self.context_length: int = max_length if max_length is not None else longest
        if drop_last and len(self.train_data) < batch_size:
            raise ValueError(f"{path}: {len(self.train_data)} training record(s) (of {len(records)}, train_frac="
                             f"{train_frac}) make no full batch of batch_size={batch_size}; lower batch_size, add "
                             "records or set drop_last: false")

    def _check_lengths(self, path: str, tokenizer: str, offsets: dict[str, int]) -> None:
        """Without max_length the context is the longest record: refuse one that no model could take
        (a single huge record would otherwise size the model's positions and run out of memory)."""
        from .classification import _context_cap

        cap = _context_cap(tokenizer, None) or MAX_AUTO_CONTEXT
        for name, enc in self._encoded.items():
            for i, e in enumerate(enc):
                if len(e.ids) > cap:
                    raise ValueError(
                        f"{path}: record {offsets[name] + i} has {len(e.ids)} tokens, more than {cap} (the "
                        f"{'checkpoint' if cap != MAX_AUTO_CONTEXT else 'automatic'} context limit); set max_length "
                        "(and truncate: true to cut long records) or remove the record")

    def prompt(self, record: dict) -> str:
        """The inference prompt of a record (instruction + input + response header)."""
        return prompt_text(record, self.template)

    def format_input(self, record: dict) -> str:
        return format_input(record, self.template)

    def encoded(self, split: str) -> list[Encoded]:
        return self._encoded[split]

    def _loader(self, split: str, train: bool) -> DataLoader:
        h = self.hparams
        fn = partial(_collate, pad_id=self.pad_id, mask_prompt=h.mask_prompt, max_length=h.max_length)
        return DataLoader(self._encoded[split], batch_size=h.batch_size, shuffle=train,
                          drop_last=train and h.drop_last, num_workers=h.num_workers, collate_fn=fn)

