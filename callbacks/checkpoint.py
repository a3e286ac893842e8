"""Export spine checkpoints during fit and prove each one reloads to identical logits."""
from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from spine.checkpoint import load_checkpoint, save_checkpoint


class CheckpointParityError(RuntimeError):
    """A saved checkpoint did not reproduce the live model's logits."""


def probe_batch(model, n_tokens: int = 32, seed: int = 1234) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = min(n_tokens, model.config.context_length)
    return torch.randint(0, model.config.vocab_size, (2, n), generator=g)


@torch.no_grad()
def check_parity(model, directory: str | Path) -> None:
    """Reload `directory` into a fresh model; raise unless its logits equal `model`'s bitwise."""
    fresh, _ = load_checkpoint(directory, map_location="cpu")
    was_training = model.training
    model.eval()
    try:
        ref_param = next(model.parameters())
        probe = probe_batch(model).to(ref_param.device)
        # .forward skips an in-place torch.compile wrapper: we compare weights, not kernels
        with torch.autocast(device_type=ref_param.device.type, enabled=False):
            expected = model.forward(probe).float().cpu()
        fresh = fresh.to(device=ref_param.device, dtype=ref_param.dtype).eval()
        got = fresh.forward(probe).float().cpu()
    finally:
        model.train(was_training)
    if not torch.equal(expected, got):
        diff = (expected - got).abs().max().item()
        raise CheckpointParityError(f"checkpoint {directory} does not reproduce the model: max |logit diff| = {diff:g}")



class SpineCheckpoint(L.Callback):
    """Writes the spine checkpoint format (safetensors + config + tokenizer + manifest).

    - whenever Lightning saves a training checkpoint: `<dirpath>/last` (replaced atomically), then
      reloaded into a fresh model and checked for bitwise-identical logits (`verify=True`);
    - at the end of fit: `<dirpath>/final`, verified the same way.
    `dirpath` defaults to `<trainer.log_dir or default_root_dir>/spine`.
    """

    def __init__(self, dirpath: str | None = None, on_save: bool = True, on_fit_end: bool = True, verify: bool = True):
        self.dirpath = dirpath
        self.on_save = on_save
        self.at_fit_end = on_fit_end
        self.verify = verify
        self.exported: list[Path] = []

    def _dir(self, trainer) -> Path:
        if self.dirpath:
            return Path(self.dirpath)
        return Path(trainer.log_dir or trainer.default_root_dir) / "spine"

    def _export(self, trainer, pl_module, name: str) -> Path | None:
        # Resolve the directory on every rank *before* the rank-0 check: `trainer.log_dir` is a
        # collective (a broadcast) under DDP, and calling it on rank 0 alone deadlocks.
        target = self._dir(trainer) / name
        if not trainer.is_global_zero:
            return None
        save_checkpoint(target, pl_module.model, getattr(pl_module, "tokenizer", None),
                        metadata={"global_step": trainer.global_step, "epoch": trainer.current_epoch})
        if self.verify:
            check_parity(pl_module.model, target)
        self.exported.append(target)
        return target

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if self.on_save:
            self._export(trainer, pl_module, "last")

    def on_fit_end(self, trainer, pl_module):
        if self.at_fit_end:
            path = self._export(trainer, pl_module, "final")
            if path is not None:
                rank_zero_info(f"spine checkpoint written to {path}")
