"""Preference pairs for DPO: the book's data (Raschka ch.7 bonus) or correct-vs-incorrect eval traces.

Batches: {"chosen_ids", "chosen_mask", "rejected_ids", "rejected_mask"}, each (B, T) with one T for
both sides (right-padded with end-of-text, as the book's collate); a mask is True on the response
tokens that are scored (the prompt and the padding are not).

Book source (`path`): records {instruction, input, output, chosen, rejected}; the prompt is the
Alpaca template up to and including "### Response:\\n" and the full text prompt + response is
encoded in one go (as the book does). The book's collate masks the prompt plus two tokens, which
leaves " Response:\\n" scored; we mask the whole prompt (the response header is the same for both
sides, so it cancels in the margin either way). No end-of-text is appended (as the book).
Split in file order as ch.7: train 85%, test 10%, val 5% (1,100 -> 935 / 110 / 55).

Trace source (`traces`): `spine.trace_data.preference_pairs` (a problem's correct sample is chosen,
an incorrect one rejected); prompt = the prompt the model saw, responses end with end-of-text;
split by problem id (`val_frac`).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning.pytorch as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from spine.instruct import load_records, prompt_text, split_records
from spine.tokenizer import get_tokenizer
from spine.instruct import _common_prefix
from spine.trace_data import preference_pairs, split_by_key
from spine.traces import read_traces

from .splits import SplitLoaders

PREFERENCE_FIELDS = ("chosen", "rejected")


def collate_pairs(batch: list[dict], pad_id: int, max_length: int | None = None) -> dict[str, torch.Tensor]:
    """[{chosen, rejected, prompt_len}] -> padded ids and score masks (True = a response token)."""
    T = max(len(item[k]) for item in batch for k in PREFERENCE_FIELDS)
    if max_length is not None:
        T = min(T, max_length)
    out: dict[str, torch.Tensor] = {}
    for k in PREFERENCE_FIELDS:
        ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), T), dtype=torch.bool)
        for b, item in enumerate(batch):
            seq = item[k][:T]
            ids[b, :len(seq)] = torch.as_tensor(seq, dtype=torch.long)
            mask[b, item["prompt_len"]:len(seq)] = True
        out[f"{k}_ids"], out[f"{k}_mask"] = ids, mask
    return out


class PreferenceDataModule(SplitLoaders, L.LightningDataModule):
    """DPO pairs from `path` (the book's JSON) or `traces` (correct vs incorrect samples); see the module docstring.

    max_length: cut sequences to this many tokens (the book's allowed_max_length); None = the longest.
    max_pairs_per_problem: for traces, pairs taken from one problem.
    """

    def __init__(
        self,
        path: str | None = None,
        traces: list[str] | str | None = None,
        tokenizer: str = "gpt2",
        vocab_dir: str | None = None,
        max_length: int | None = None,
        train_frac: float = 0.85,
        test_frac: float = 0.10,
        val_frac: float = 0.1,
        max_pairs_per_problem: int = 1,
        limit: int | None = None,
        batch_size: int = 8,
        seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        if (path is None) == (traces is None):
            raise ValueError("PreferenceDataModule: give exactly one of path (the book's preference JSON) or traces")
        if max_length is not None and max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        self.tokenizer = get_tokenizer(tokenizer, vocab_dir)
        self.vocab_size: int = self.tokenizer.vocab_size
        self.pad_id: int = int(self.tokenizer.eos_id)
        enc = self.tokenizer.encode
        self._data: dict[str, list[dict]] = {}
        if path is not None:
            records = load_records(path)
            for i, r in enumerate(records):
                for f in PREFERENCE_FIELDS:
                    if not isinstance(r.get(f), str):
                        raise ValueError(f"{path}: record {i} needs a string field {f!r} (preference data has "
                                         f"instruction, input, chosen, rejected); fields present: {sorted(r)}")
            if limit is not None:
                records = records[:limit]
            train, val, test = split_records(records, train_frac, test_frac)

            def encode(r: dict) -> dict:
                prompt = prompt_text(r, "alpaca")
                p = enc(prompt)
                c, j = enc(prompt + r["chosen"]), enc(prompt + r["rejected"])
                return {"chosen": c, "rejected": j, "prompt_len": min(_common_prefix(p, c), _common_prefix(p, j))}

            for name, recs in (("train", train), ("val", val), ("test", test)):
                self._data[name] = [encode(r) for r in recs]
        else:
            paths = [traces] if isinstance(traces, str) else list(traces)
            records = [r for p in paths for r in read_traces(Path(p).expanduser())[1]]
            pairs, stats = preference_pairs(records, max_pairs_per_problem=max_pairs_per_problem)
            rank_zero_info(f"preference pairs: {len(pairs)} from {stats['with_pairs']} of {stats['problems']} problems "
                           f"({stats['all_correct']} all correct, {stats['all_incorrect']} all incorrect: no pair)")
            if limit is not None:
                pairs = pairs[:limit]
            eos = [int(self.tokenizer.eos_id)]
            encoded = []
            for pr in pairs:
                p = enc(pr["prompt"])
                encoded.append({"chosen": p + enc(pr["chosen"]) + eos, "rejected": p + enc(pr["rejected"]) + eos,
                                "prompt_len": len(p), "key": pr["problem_id"]})
            splits = split_by_key([e["key"] for e in encoded], val_frac, seed)
            self._data["train"] = [e for e, s in zip(encoded, splits) if s == "train"]
            self._data["val"] = self._data["test"] = [e for e, s in zip(encoded, splits) if s == "val"]
        if not self._data["train"]:
            raise ValueError(f"PreferenceDataModule: no training pairs from {path or traces}")
        longest = max(len(e[k]) for d in self._data.values() for e in d for k in PREFERENCE_FIELDS)
        self.context_length: int = max_length if max_length is not None else longest
        rank_zero_info("preference splits: " + " / ".join(f"{len(self._data[s])} {s}" for s in ("train", "val", "test")))

    def pairs(self, split: str) -> list[dict]:
        return self._data[split]

    def _loader(self, split: str, train: bool) -> DataLoader:
        h = self.hparams
        fn = partial(collate_pairs, pad_id=self.pad_id, max_length=h.max_length)
        return DataLoader(self._data[split], batch_size=h.batch_size, shuffle=train, num_workers=h.num_workers,
                          collate_fn=fn)
