"""DPO curves as one PNG (and the numbers as JSON): loss, chosen/rejected rewards, margin, preference accuracy.

Train values per optimizer step, validation values per validation run. The starting point (step 0)
comes from the sanity check when the module exposes `last_val` (`DPOModule` does) and the sanity
check scores the split (trainer.num_sanity_val_steps: -1).
"""
from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as L

PANELS = (("loss", ("loss",)), ("rewards (log-ratio)", ("chosen_reward", "rejected_reward")),
          ("reward margin", ("margin",)), ("preference accuracy", ("accuracy",)))


class DPOPlot(L.Callback):
    def __init__(self, filename: str = "dpo_curves.png", dirpath: str | None = None):
        self.filename, self.dirpath = filename, dirpath
        self.train: dict[str, list[tuple[int, float]]] = {}
        self.val: dict[str, list[tuple[int, float]]] = {}
        self.path: Path | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return
        for _, keys in PANELS:
            for k in keys:
                v = trainer.callback_metrics.get(f"train_{k}")
                if v is not None:
                    self.train.setdefault(k, []).append((trainer.global_step, float(v)))

    def on_validation_end(self, trainer, pl_module):
        last = getattr(pl_module, "last_val", None)
        if trainer.sanity_checking and not last:
            return
        for k, v in (last or {}).items():
            self.val.setdefault(k, []).append((0 if trainer.sanity_checking else trainer.global_step, float(v)))

    def state_dict(self):
        return {"train": self.train, "val": self.val}

    def load_state_dict(self, state):
        self.train, self.val = dict(state.get("train", {})), dict(state.get("val", {}))

    def on_fit_end(self, trainer, pl_module):
        out_dir = Path(self.dirpath or trainer.log_dir or trainer.default_root_dir)
        if not trainer.is_global_zero or not (self.train or self.val):
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(2, 2, figsize=(10, 7))
        for ax, (title, keys) in zip(axes.flat, PANELS):
            for k in keys:
                if self.train.get(k):
                    ax.plot(*zip(*self.train[k]), alpha=0.5, label=f"train {k}")
                if self.val.get(k):
                    ax.plot(*zip(*self.val[k]), marker="o", label=f"val {k}")
            ax.set_title(title)
            ax.set_xlabel("optimizer step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / self.filename
        fig.tight_layout()
        fig.savefig(self.path, dpi=100)
        plt.close(fig)
        self.path.with_suffix(".json").write_text(json.dumps({"train": self.train, "val": self.val}, indent=1))
