"""Test-only pieces for tests/test_ddp.py (imported by `spine fit` subprocesses via PYTHONPATH).

- `IndexedPretrainData`: the real `PretrainDataModule` (same sampler, loaders, sharding) whose
  windows also carry their dataset index, so a callback can see which samples each rank got.
- `RankRecorder`: per rank, writes `<dirpath>/rank<r>.json` at fit end: the sample ids of every
  train/val batch, the (summed loss, target tokens) of every train batch at the pre-step weights,
  val_loss after every validation, the live model's logits on `probe_batch` at fit end, and (on
  ranks > 0) every file write under `watch` seen by a Python audit hook.
- `KillGroupAtStep`: SIGKILL the whole process group (all ranks) right after a given step.
- `RaggedData` + `GradProbeModule`: batches whose target-token counts differ a lot between ranks,
  and a module that dumps its initial weights and its post-normalisation gradients.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import lightning.pytorch as L
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset

from datamodules import PretrainDataModule
from modules import PretrainModule
from spine.data import ResumableSampler
from spine.training import IGNORE_INDEX, cross_entropy_sum


class _Indexed(Dataset):
    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        item = dict(self.ds[i])
        item["index"] = torch.tensor(int(i))
        return item


class IndexedPretrainData(PretrainDataModule):
    def setup(self, stage=None):
        super().setup(stage)
        self.train_dataset = _Indexed(self.train_dataset)
        if self.val_dataset is not None:
            self.val_dataset = _Indexed(self.val_dataset)


_WRITE_EVENTS = {"os.rename", "os.remove", "os.unlink", "os.mkdir", "os.rmdir", "os.truncate", "shutil.rmtree",
                 "shutil.copyfile", "shutil.move"}


class RankRecorder(L.Callback):
    def __init__(self, dirpath: str, watch: str | None = None):
        self.dirpath = Path(dirpath)
        self.watch = str(Path(watch).resolve()) if watch else None
        self.train: list[dict] = []
        self.val_batches: list[list[int]] = []
        self.val: list[dict] = []
        self.writes: list[list[str]] = []
        self._hooked = False

    def setup(self, trainer, pl_module, stage):
        if self.watch and trainer.global_rank != 0 and not self._hooked:
            self._hooked = True
            watch, writes = self.watch, self.writes

            def under(p) -> bool:
                try:
                    return isinstance(p, (str, bytes, os.PathLike)) and \
                        (os.path.abspath(os.fsdecode(p)) + os.sep).startswith(watch + os.sep)
                except Exception:  # noqa: BLE001 - an audit hook must never raise
                    return False

            def hook(event, args):
                if event == "open":
                    path, mode, flags = args
                    writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                        (mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
                    if writing and under(path):
                        writes.append([event, os.fsdecode(path)])
                elif event in _WRITE_EVENTS and args and any(under(a) for a in args[:2]):
                    writes.append([event, *[os.fsdecode(a) for a in args[:2] if isinstance(a, (str, bytes))]])

            sys.addaudithook(hook)

    @torch.no_grad()
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        model = pl_module.model
        was_training = model.training
        model.eval()  # no dropout, so no draw from the RNG that training uses
        try:
            loss_sum, n = cross_entropy_sum(model(batch["input_ids"]), batch["targets"])
        finally:
            model.train(was_training)
        self.train.append({"step": trainer.global_step, "batch_idx": batch_idx,
                           "idx": batch["index"].tolist(), "loss_sum": float(loss_sum), "n": int(n)})

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self.val_batches.append(batch["index"].tolist())

    def on_validation_end(self, trainer, pl_module):
        value = trainer.callback_metrics.get("val_loss")
        self.val.append({"step": trainer.global_step, "sanity": bool(trainer.sanity_checking),
                         "val_loss": None if value is None else float(value)})

    def on_fit_end(self, trainer, pl_module):
        from callbacks.checkpoint import probe_logits

        logits = probe_logits(pl_module.model)  # the live model's own forward (sharded: every rank together)
        self.dirpath.mkdir(parents=True, exist_ok=True)
        out = {"rank": trainer.global_rank, "world_size": trainer.world_size, "train": self.train,
               "val_batches": self.val_batches, "val": self.val, "writes": self.writes,
               "probe_logits": logits.tolist(), "probe_device": str(next(pl_module.model.parameters()).device)}
        (self.dirpath / f"rank{trainer.global_rank}.json").write_text(json.dumps(out))


class KillGroupAtStep(L.Callback):
    """Rank 0 SIGKILLs its whole process group (every DDP rank) right after optimizer step `step`."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step and trainer.is_global_zero:
            os.killpg(os.getpgid(0), signal.SIGKILL)


# ---------------------------------------------------------------------- ragged target counts
RAGGED_VALID = [16, 1, 14, 3, 12, 2, 10, 4]  # valid targets of sample i (T = 16): even ids >> odd ids
RAGGED_T, RAGGED_VOCAB = 16, 64


def ragged_samples() -> list[dict[str, torch.Tensor]]:
    """Sample i: random tokens; only its last RAGGED_VALID[i] targets count (the rest is -100)."""
    g = torch.Generator().manual_seed(11)
    out = []
    for valid in RAGGED_VALID:
        ids = torch.randint(0, RAGGED_VOCAB, (RAGGED_T + 1,), generator=g)
        targets = ids[1:].clone()
        targets[: RAGGED_T - valid] = IGNORE_INDEX
        out.append({"input_ids": ids[:-1], "targets": targets})
    return out


class RaggedData(L.LightningDataModule):
    """8 samples in order; under DDP rank r takes samples r, r + W, ... (ResumableSampler, no shuffle)."""

    vocab_size, pad_id, context_length = RAGGED_VOCAB, 0, RAGGED_T

    def __init__(self, batch_size: int = 2):
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self):
        trainer = self.trainer
        sampler = ResumableSampler(len(RAGGED_VALID), shuffle=False, num_replicas=trainer.world_size,
                                   rank=trainer.global_rank)
        return DataLoader(ragged_samples(), batch_size=self.batch_size, sampler=sampler)


def _full(t: torch.Tensor) -> torch.Tensor:
    """A tensor whole on this rank: FSDP2 parameters and gradients are DTensor shards (a collective)."""
    from torch.distributed.tensor import DTensor

    return (t.full_tensor() if isinstance(t, DTensor) else t).detach().clone().contiguous()


class GradProbeModule(PretrainModule):
    """PretrainModule that saves its initial weights and, after token normalisation, its first step's grads.

    `pass_reference=False` calls `backward_loss(loss_sum, n)` without a fixed reference, as the
    instruction and classifier stages do (each rank's first token count would be its reference).
    """

    def __init__(self, *args, probe_dir: str = "", pass_reference: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.probe_dir, self.pass_reference = Path(probe_dir), pass_reference
        self._dumped = False

    def training_step(self, batch, batch_idx):
        loss_sum, n = self._loss(batch)
        return self.backward_loss(loss_sum, n, reference=batch["targets"].numel() if self.pass_reference else None)

    def on_train_start(self):
        state = {k: _full(v) for k, v in self.model.state_dict().items()}  # every rank: a collective
        if self.trainer.is_global_zero:
            self.probe_dir.mkdir(parents=True, exist_ok=True)
            save_file(state, str(self.probe_dir / "init.safetensors"))

    def on_before_optimizer_step(self, optimizer):
        super().on_before_optimizer_step(optimizer)  # the rescale under test
        if not self._dumped:
            self._dumped = True
            grads = {n: _full(p.grad) for n, p in self.model.named_parameters() if p.grad is not None}
            self.probe_dir.mkdir(parents=True, exist_ok=True)
            save_file(grads, str(self.probe_dir / f"grads.rank{self.global_rank}.safetensors"))


class FinalWeights(L.Callback):
    """Every rank saves its model's weights at fit end (`<dirpath>/rank<r>.safetensors`)."""

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)

    def on_fit_end(self, trainer, pl_module):
        state = {k: _full(v) for k, v in pl_module.model.state_dict().items()}
        # a tied head shares storage with the embedding; safetensors stores each tensor once
        state = {k: v.clone() for k, v in state.items()}
        self.dirpath.mkdir(parents=True, exist_ok=True)
        save_file(state, str(self.dirpath / f"rank{trainer.global_rank}.safetensors"))
