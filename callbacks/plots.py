"""A loss-curve PNG at the end of fit (train loss per step, validation loss per validation run)."""
from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L


class LossCurvePlot(L.Callback):
    def __init__(self, filename: str = "loss_curve.png", dirpath: str | None = None):
        self.filename = filename
        self.dirpath = dirpath
        self.train: list[tuple[int, float]] = []
        self.val: list[tuple[int, float]] = []
        self.path: Path | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        value = trainer.callback_metrics.get("train_loss")
        if value is not None:
            # keep the device tensor: float() here would wait for the GPU on every step; the values
            # are read once, in state_dict / at fit end
            self.train.append((trainer.global_step, value.detach().clone() if hasattr(value, "detach") else value))

    def _train_floats(self) -> list[tuple[int, float]]:
        self.train = [(s, float(v)) for s, v in self.train]
        return self.train

    def on_validation_end(self, trainer, pl_module):
        # Not on_validation_epoch_end: Lightning runs callbacks' epoch-end hooks *before* the module's
        # (which logs val_loss), so there callback_metrics still held the previous validation's value
        # and every point was one validation late. on_validation_end runs after the epoch's metrics
        # are collected.
        value = trainer.callback_metrics.get("val_loss")
        if value is not None and not trainer.sanity_checking:
            self.val.append((trainer.global_step, float(value)))

    def state_dict(self):
        return {"train": self._train_floats(), "val": self.val}

    def load_state_dict(self, state):
        self.train, self.val = list(state.get("train", [])), list(state.get("val", []))

    def on_fit_end(self, trainer, pl_module):
        # `trainer.log_dir` is a collective (a broadcast) under DDP: every rank must call it, so the
        # directory is resolved before the rank-0 check.
        out_dir = Path(self.dirpath or trainer.log_dir or trainer.default_root_dir)
        self._train_floats()
        if not trainer.is_global_zero or not (self.train or self.val):
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        if self.train:
            ax.plot(*zip(*self.train), label="train", alpha=0.8)
        if self.val:
            ax.plot(*zip(*self.val), marker="o", label="val")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (nats/token)")
        ax.legend()
        ax.grid(alpha=0.3)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / self.filename
        fig.tight_layout()
        fig.savefig(self.path, dpi=100)
        plt.close(fig)
