"""Problems for evaluation: a MATH-500/GSM8K/JSON(L) file, an HF dataset name, or synthetic problems."""
from __future__ import annotations

from typing import Any

import lightning.pytorch as L
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from spine.reasoning.problems import Problem, load_problems


def _as_list(batch: list[Problem]) -> list[Problem]:
    return batch


class ReasoningDataModule(L.LightningDataModule):
    """Serves batches of `Problem`s (lists, not tensors): the pipeline tokenizes with the model's tokenizer.

    `source`: a path (MATH-500-style JSON, GSM8K-style JSONL, generic JSON/JSONL with `field_map`),
    an HF dataset name, or a synthetic spec such as "synthetic:level=2,n=200,seed=1,split=eval".
    Under DDP each rank gets a disjoint share of the problems, none repeated (see `_loader`).
    """

    vocab_size = None  # the model comes from a checkpoint; nothing to link
    pad_id = None
    context_length = None

    def __init__(self, source: str = "synthetic:level=1,n=200,seed=1,split=eval", format: str = "auto",
                 field_map: dict[str, Any] | None = None, limit: int | None = None, batch_size: int = 32):
        super().__init__()
        self.source, self.format, self.field_map = source, format, dict(field_map or {})
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1 (or None for all problems), got {limit}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.limit, self.batch_size = limit, batch_size
        self.problems: list[Problem] = []

    def setup(self, stage: str | None = None) -> None:
        if not self.problems:
            problems = load_problems(self.source, format=self.format, **self.field_map)
            self.problems = problems[: self.limit] if self.limit else problems

    def _loader(self) -> DataLoader:
        self.setup()
        sampler = None
        trainer = self.trainer  # set by Lightning when the data module is attached
        if trainer is not None and trainer.world_size > 1:
            # Lightning's default DistributedSampler pads shards with repeats, which would grade some
            # problems twice; this one gives rank r problems r, r+W, ... with none repeated.
            sampler = UnrepeatedDistributedSampler(self.problems, num_replicas=trainer.world_size,
                                                   rank=trainer.global_rank, shuffle=False)
        return DataLoader(self.problems, batch_size=self.batch_size, shuffle=False, sampler=sampler,
                          collate_fn=_as_list)

    def transfer_batch_to_device(self, batch: Any, device: Any, dataloader_idx: int) -> Any:
        # Problems are text (frozen dataclasses, which Lightning refuses to traverse); the Engine
        # tokenizes them with the model's tokenizer, so there is nothing to move.
        return batch

    def val_dataloader(self) -> DataLoader:
        return self._loader()

    def test_dataloader(self) -> DataLoader:
        return self._loader()

    def predict_dataloader(self) -> DataLoader:
        return self._loader()
