"""The seeded tiny byte-level pretraining setup the ReasoningEval fit tests share."""
from __future__ import annotations

import torch

from datamodules import PretrainDataModule
from modules import PretrainModule


def tiny_lm(tmp_path):
    """A seeded tiny byte-level GPT and its synthetic level-1 data: the fits the ReasoningEval tests run."""
    torch.manual_seed(0)
    dm = PretrainDataModule(source="synthetic", tokenizer="byte", context_length=128, batch_size=4,
                            synthetic_problems=200, synthetic_levels=[1], cache_dir=str(tmp_path / "cache"))
    module = PretrainModule(model="gpt2-tiny", vocab_size=dm.vocab_size, context_length=128, pad_id=dm.pad_id)
    return dm, module
