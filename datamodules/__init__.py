"""LightningDataModules: they own tokenization, caching and batching."""
from .pretrain import PretrainDataModule
from .reasoning import ReasoningDataModule

__all__ = ["PretrainDataModule", "ReasoningDataModule"]
