"""Shared by the benchmark scripts (run as scripts, so this folder is on sys.path)."""
from __future__ import annotations

import time

import lightning.pytorch as L
import torch


class StepTimer(L.Callback):
    """Wall time of each training batch, CUDA-synchronised on both ends (rank-local)."""

    def __init__(self):
        self.times: list[float] = []
        self.t0: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        torch.cuda.synchronize()
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self.t0)
