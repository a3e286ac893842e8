"""A loss-curve PNG at the end of fit a person can read: train loss per step (raw and smoothed) and
validation loss on a log axis, so the late part of the run is not flattened; the learning rate below;
the run's name in the title."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import lightning.pytorch as L


def smooth(values: Sequence[float], alpha: float = 0.1) -> list[float]:
    """Exponential moving average with bias correction (as TensorBoard's smoothing)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = (1 - alpha) * avg + alpha * v
        out.append(avg / (1 - (1 - alpha) ** i))
    return out


def draw_loss_curve(train: list[tuple[int, float]], val: list[tuple[int, float]], lr: list[tuple[int, float]],
                    title: str = "", ylabel: str = "loss (nats/token)"):
    """The figure (matplotlib `Figure`, no pyplot state): loss panel (log y) over an lr panel when `lr`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 5.5 if lr else 4), dpi=100)
    FigureCanvasAgg(fig)
    if lr:
        ax, ax_lr = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    else:
        ax, ax_lr = fig.add_subplot(1, 1, 1), None
    if train:
        steps, losses = zip(*train)
        ax.plot(steps, losses, alpha=0.3, linewidth=0.8, color="C0", label="train")
        if len(losses) > 10:
            ax.plot(steps, smooth(losses), color="C0", label="train (smoothed)")
    if val:
        ax.plot(*zip(*val), marker="o", color="C1", label="val")
        best = min(val, key=lambda sv: sv[1])
        ax.annotate(f"min val {best[1]:.3f} @ {best[0]}", best, textcoords="offset points", xytext=(5, 8), fontsize=8)
    positive = [v for _, v in train + val if v > 0]
    if positive:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel + (" (log)" if positive else ""))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    ax.set_title(title or "loss")
    if ax_lr is not None:
        ax_lr.plot(*zip(*lr), color="C2")
        ax_lr.set_ylabel("learning rate")
        ax_lr.grid(alpha=0.3)
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        ax_lr.set_xlabel("optimizer step")
    else:
        ax.set_xlabel("optimizer step")
    fig.tight_layout()
    return fig


def run_name(trainer: L.Trainer) -> str:
    """`<logger name>/<version>` (e.g. logs/version_3), else the default root dir."""
    logger = getattr(trainer, "logger", None)
    if logger is not None and getattr(logger, "name", None) is not None:
        version = getattr(logger, "version", None)
        version = f"version_{version}" if isinstance(version, int) else version
        return "/".join(str(p) for p in (Path(trainer.default_root_dir).name, logger.name, version) if p not in (None, ""))
    return Path(trainer.default_root_dir).name


class LossCurvePlot(L.Callback):
    """Writes `<log_dir>/loss_curve.png` at the end of fit (rank 0); the points survive a resume."""

    def __init__(self, filename: str = "loss_curve.png", dirpath: str | None = None):
        self.filename = filename
        self.dirpath = dirpath
        self.train: list[tuple[int, float]] = []
        self.val: list[tuple[int, float]] = []
        self.lr: list[tuple[int, float]] = []
        self.path: Path | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        value = trainer.callback_metrics.get("train_loss")
        if value is not None:
            # keep the device tensor: float() here would wait for the GPU on every step; the values
            # are read once, in state_dict / at fit end
            self.train.append((trainer.global_step, value.detach().clone() if hasattr(value, "detach") else value))
        optimizers = getattr(trainer, "optimizers", None)
        if optimizers:
            lr = optimizers[0].param_groups[0].get("lr")
            if lr is not None and (not self.lr or self.lr[-1][0] != trainer.global_step):
                self.lr.append((trainer.global_step, float(lr)))

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
        return {"train": self._train_floats(), "val": self.val, "lr": self.lr}

    def load_state_dict(self, state):
        self.train, self.val = list(state.get("train", [])), list(state.get("val", []))
        self.lr = list(state.get("lr", []))

    def on_fit_end(self, trainer, pl_module):
        # `trainer.log_dir` is a collective (a broadcast) under DDP: every rank must call it, so the
        # directory is resolved before the rank-0 check.
        out_dir = Path(self.dirpath or trainer.log_dir or trainer.default_root_dir)
        self._train_floats()
        if not trainer.is_global_zero or not (self.train or self.val):
            return
        fig = draw_loss_curve(self.train, self.val, self.lr, title=f"{run_name(trainer)}: loss")
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / self.filename
        fig.savefig(self.path)
