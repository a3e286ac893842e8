"""A PNG of the RL run: per-step rollout/update metrics (`rl/*`) and held-out accuracy (`reasoning/*`)."""
from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L

SMOOTH = 10  # rollout batches in the running mean drawn over each per-step series

# (panel title, metric names drawn in it)
PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("reward (rollouts)", ("rl/reward_mean", "rl/reward_std")),
    ("accuracy: rollouts (sampled) and held-out", ("rl/accuracy",)),  # + every reasoning/*_acc
    ("zero-variance groups / truncated", ("rl/zero_variance_frac", "rl/truncated_frac")),
    ("entropy (nats/token)", ("rl/entropy",)),
    ("completion length (tokens)", ("rl/completion_len_mean", "rl/completion_len_max")),
    ("clip fractions", ("rl/clip_low_frac", "rl/clip_high_frac")),
    ("KL to reference (k3)", ("rl/kl",)),
    ("throughput (tokens/s)", ("rl/rollout_tokens_per_s", "rl/update_tokens_per_s")),
)


class RLCurvePlot(L.Callback):
    """Records every `rl/*` value after each training batch (x = rollout batch, `rl/rollouts`) and the
    results of `ReasoningEval` callbacks, and writes `filename` at the end of fit (and every
    `every_n_steps` rollout batches when > 0). List it after `ReasoningEval` so the evaluation at the
    end of fit is drawn. Its history is saved in checkpoints: a resumed run plots the whole curve."""

    def __init__(self, filename: str = "rl_curves.png", dirpath: str | None = None, every_n_steps: int = 0):
        self.filename, self.dirpath, self.every_n_steps = filename, dirpath, every_n_steps
        self.history: dict[str, list[tuple[float, float]]] = {}
        self.x_of_step: dict[int, float] = {0: 0.0}
        self._seen_evals: set[tuple[int, str]] = set()
        self.path: Path | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        metrics = trainer.callback_metrics
        x = metrics.get("rl/rollouts")
        if x is None:
            return
        x = float(x)
        self.x_of_step[int(trainer.global_step)] = x
        for key, value in metrics.items():
            if key.startswith("rl/"):
                self.history.setdefault(key, []).append((x, float(value)))
        self._collect_evals(trainer)
        if self.every_n_steps > 0 and int(x) % self.every_n_steps == 0:
            self.plot(trainer)

    def _collect_evals(self, trainer) -> None:
        """New results of the ReasoningEval callbacks (listed before this one), placed at the rollout
        batch their global step belongs to."""
        from .reasoning_eval import ReasoningEval

        for cb in trainer.callbacks:
            if not isinstance(cb, ReasoningEval):
                continue
            for r in cb.results:
                # a named eval's label carries its name, as its logged metric does (reasoning/<name>/<label>_acc)
                label = f"{r['name']}/{r['pipeline']}" if r.get("name") else r["pipeline"]
                tag = (int(r["step"]), label)
                if tag in self._seen_evals:
                    continue
                self._seen_evals.add(tag)
                x = self.x_of_step.get(tag[0], 0.0)
                self.history.setdefault(f"reasoning/{label}_acc", []).append((x, float(r["accuracy"])))

    def state_dict(self):
        return {"history": {k: list(v) for k, v in self.history.items()},
                "x_of_step": dict(self.x_of_step), "seen_evals": sorted(self._seen_evals)}

    def load_state_dict(self, state):
        self.history = {k: [tuple(p) for p in v] for k, v in state.get("history", {}).items()}
        self.x_of_step = {int(k): float(v) for k, v in state.get("x_of_step", {0: 0.0}).items()}
        self._seen_evals = {(int(s), str(p)) for s, p in state.get("seen_evals", [])}

    def on_fit_end(self, trainer, pl_module):
        self._collect_evals(trainer)
        self.plot(trainer)

    def plot(self, trainer) -> Path | None:
        out_dir = Path(self.dirpath or trainer.log_dir or trainer.default_root_dir)
        if not trainer.is_global_zero or not self.history:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(2, 4, figsize=(16, 7))
        for ax, (title, keys) in zip(axes.flat, PANELS):
            if "rl/accuracy" in keys:
                keys = keys + tuple(k for k in sorted(self.history) if k.startswith("reasoning/"))
            for key in keys:
                pts = self.history.get(key)
                if not pts:
                    continue
                label = key.split("/", 1)[1]
                if key.startswith("rl/") and len(pts) > 2 * SMOOTH:
                    # per-step values are noisy: the raw series faint, a running mean over SMOOTH batches on top
                    xs, ys = zip(*pts)
                    (line,) = ax.plot(xs, ys, alpha=0.3, linewidth=0.8)
                    means = [sum(ys[max(0, i - SMOOTH + 1):i + 1]) / len(ys[max(0, i - SMOOTH + 1):i + 1])
                             for i in range(len(ys))]
                    ax.plot(xs, means, color=line.get_color(), label=f"{label} (mean of {SMOOTH})")
                else:
                    ax.plot(*zip(*pts), marker="o" if len(pts) < 30 else None, label=label)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("rollout batch")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
            else:
                ax.text(0.5, 0.5, "not logged in this run", ha="center", va="center", transform=ax.transAxes)
        fig.tight_layout()
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / self.filename
        fig.savefig(self.path, dpi=90)
        plt.close(fig)
        return self.path
