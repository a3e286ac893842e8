"""LightningDataModules: they own tokenization, caching and batching."""
from .classification import ClassificationDataModule
from .instruction import InstructionDataModule
from .pretrain import PretrainDataModule
from .prompts import PromptDataModule
from .reasoning import ReasoningDataModule

__all__ = ["ClassificationDataModule", "InstructionDataModule", "PretrainDataModule", "PromptDataModule", "ReasoningDataModule"]
