"""The four dataloader hooks of a data module whose splits are in-memory lists (fine-tuning stages)."""
from __future__ import annotations

from torch.utils.data import DataLoader


class SplitLoaders:
    """Mixin: `train/val/test/predict_dataloader` from `self._loader(split, train)`.

    Under DDP these loaders are wrapped by Lightning's DistributedSampler (`use_distributed_sampler`
    stays true for the fine-tuning stages): shuffled disjoint train shards, and val/test shards that
    pad by repeating up to world_size - 1 samples (so metrics are exact when the split size divides).
    Prediction uses the test split.
    """

    def _loader(self, split: str, train: bool) -> DataLoader:  # pragma: no cover - implemented by the module
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", False)
