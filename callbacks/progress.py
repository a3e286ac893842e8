"""Progress a person can read, on a terminal and in a log file.

- `TextProgress`: when stdout is not a terminal (redirected, `tee`, nohup, SLURM), one line every
  `every_n_steps` optimizer steps: `step N/M  loss …  lr …  tok/s …  ETA …`, and one line per validation.
- `SpineRichProgressBar`: Lightning's Rich bar counting optimizer steps to `max_steps` (no
  `Epoch 0/-2`), with the time remaining, and without the logger's `v_num`.
- `SpineModelSummary`: the parameter table without the FLOPs column Lightning leaves at 0 (it needs
  an example input); the training FLOPs per token from the model's config instead.
- `default_progress_bar()`: the text lines when stdout is not a TTY, the Rich bar otherwise.
- `emit(trainer, text)`: print a block of text (samples, eval tables) on its own lines, above a live bar.
"""
from __future__ import annotations

import sys
import time
from typing import IO, Any

import lightning.pytorch as L
from lightning.pytorch.callbacks import ModelSummary, ProgressBar, RichProgressBar
from lightning.pytorch.utilities import rank_zero_info


def _fmt_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _fmt_num(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1e-2 or abs(x) >= 1e4 else f"{x:.4f}".rstrip("0").rstrip(".")


def _batch_tokens(batch: Any) -> int:
    """Tokens in a batch dict (`input_ids`), 0 when the batch is something else."""
    ids = batch.get("input_ids") if isinstance(batch, dict) else None
    return int(ids.numel()) if hasattr(ids, "numel") else 0


def total_steps(trainer: L.Trainer) -> int | None:
    """The run's number of optimizer steps: max_steps, else Lightning's estimate (None if unknown)."""
    if trainer.max_steps and trainer.max_steps > 0:
        return int(trainer.max_steps)
    try:
        est = trainer.estimated_stepping_batches
    except Exception:  # no dataloader yet, or an iterable without a length
        return None
    return int(est) if est not in (None, float("inf")) else None


def _lr(trainer: L.Trainer) -> float | None:
    try:
        return float(trainer.optimizers[0].param_groups[0]["lr"])
    except (IndexError, KeyError, AttributeError):
        return None


def _scalar(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        return None


class TextProgress(ProgressBar):
    """Plain text progress: one line every `every_n_steps` optimizer steps, and after each validation.

    `every_n_steps` None: about 20 lines a run (at least every 10 steps, at least every step for
    short runs). Lines go to `stream` (default: stdout), flushed, so `tail -f` shows them at once.
    """

    def __init__(self, every_n_steps: int | None = None, stream: IO[str] | None = None):
        super().__init__()
        self.every_n_steps = every_n_steps
        self.stream = stream
        self._enabled = True
        self._t0: float | None = None
        self._step0 = 0
        self._last_t: float | None = None
        self._tokens = 0
        self._last_printed = -1
        self.lines: list[str] = []

    # the ProgressBar interface
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def print(self, *args: Any, sep: str = " ", **kwargs: Any) -> None:
        self._write(sep.join(map(str, args)))

    def _write(self, line: str) -> None:
        if not self._enabled:
            return
        self.lines.append(line)
        stream = self.stream or sys.stdout
        print(line, file=stream, flush=True)

    def _interval(self, trainer: L.Trainer) -> int:
        if self.every_n_steps:
            return max(1, int(self.every_n_steps))
        total = total_steps(trainer)
        return max(1, min(10, (total or 200) // 20)) if total and total < 200 else max(1, (total or 200) // 20)

    def on_train_start(self, trainer, pl_module):
        self._t0 = self._last_t = time.perf_counter()
        self._step0 = trainer.global_step  # a resumed run: the ETA counts only this run's steps
        self._tokens = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._tokens += _batch_tokens(batch)
        step = trainer.global_step
        total = total_steps(trainer)
        if step == self._last_printed or step == 0:
            return
        if step % self._interval(trainer) and step != total:
            return
        self._last_printed = step
        now = time.perf_counter()
        parts = [f"step {step}/{total}" if total else f"step {step}"]
        loss = _scalar(trainer.callback_metrics.get("train_loss"))
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        lr = _lr(trainer)
        if lr is not None:
            parts.append(f"lr {lr:.3g}")
        dt = now - (self._last_t or now)
        if self._tokens and dt > 0:
            parts.append(f"tok/s {self._tokens / dt:,.0f}")
        done = step - self._step0
        if self._t0 is not None and done > 0:
            elapsed = now - self._t0
            parts.append(f"elapsed {_fmt_duration(elapsed)}")
            if total:
                parts.append(f"ETA {_fmt_duration(elapsed / done * max(0, total - step))}")
        self._last_t, self._tokens = now, 0
        self._write("  ".join(parts))

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        metrics = {k: _scalar(v) for k, v in trainer.callback_metrics.items() if k.startswith("val")}
        shown = "  ".join(f"{k} {_fmt_num(v)}" for k, v in sorted(metrics.items()) if v is not None)
        if shown:
            self._write(f"validation @ step {trainer.global_step}: {shown}")

    def on_test_end(self, trainer, pl_module):
        metrics = {k: _scalar(v) for k, v in trainer.callback_metrics.items() if k.startswith("test")}
        shown = "  ".join(f"{k} {_fmt_num(v)}" for k, v in sorted(metrics.items()) if v is not None)
        if shown:
            self._write(f"test: {shown}")

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        total = self.total_predict_batches_current_dataloader
        every = max(1, int(total) // 10) if total and total != float("inf") else 10
        if (batch_idx + 1) % every == 0 or batch_idx + 1 == total:
            self._write(f"predict batch {batch_idx + 1}/{total}")


class SpineRichProgressBar(RichProgressBar):
    """Rich bar over optimizer steps when `max_steps` is set (else Lightning's epochs), with ETA, no v_num."""

    def _by_steps(self) -> bool:
        return bool(self.trainer.max_steps and self.trainer.max_steps > 0)

    def _get_train_description(self, current_epoch: int) -> str:
        if self._by_steps():
            return "train"
        max_epochs = self.trainer.max_epochs
        return f"Epoch {current_epoch + 1}/{max_epochs}" if max_epochs and max_epochs > 0 else f"Epoch {current_epoch + 1}"

    @property
    def total_train_batches(self):
        return self.trainer.max_steps if self._by_steps() else super().total_train_batches

    def on_train_epoch_start(self, trainer, pl_module):
        super().on_train_epoch_start(trainer, pl_module)
        if self._by_steps() and self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id, completed=trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self._by_steps():
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()

    def on_train_end(self, trainer, pl_module):
        # what fit-end callbacks print (samples, checkpoint paths, eval tables) goes below the
        # finished bar instead of being glued to its last line
        self._stop_progress()

    def configure_columns(self, trainer):
        from rich.progress import TimeRemainingColumn

        return super().configure_columns(trainer) + [TimeRemainingColumn()]

    def get_metrics(self, trainer, pl_module):
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


def default_progress_bar(stream: IO[str] | None = None) -> ProgressBar:
    """Text lines when `stream` (stdout) is not a terminal; the Rich bar otherwise."""
    stream = stream or sys.stdout
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return SpineRichProgressBar()
    return TextProgress()


def emit(trainer: L.Trainer, text: str) -> None:
    """Print `text` on rank 0 on lines of its own: through the progress bar when one is live."""
    if not trainer.is_global_zero:
        return
    bar = trainer.progress_bar_callback
    if isinstance(bar, RichProgressBar) and bar.progress is not None and bar.is_enabled:
        bar.progress.console.print(text, markup=False, highlight=False)
    elif isinstance(bar, TextProgress) and bar.is_enabled:
        bar.print(text)
    else:
        rank_zero_info(text)


class SpineModelSummary(ModelSummary):
    """Lightning's summary as plain text, without the FLOPs column that is 0 without an example input.

    Adds the model's training FLOPs per token (6N + attention, from `ModelConfig.flops_per_token`).
    """

    def on_fit_start(self, trainer, pl_module):
        if not self._max_depth or not trainer.is_global_zero:
            return
        s = self._summary(trainer, pl_module)
        from lightning.pytorch.utilities.model_summary import get_human_readable_count

        rows = [(name, type_, get_human_readable_count(int(n)))
                for name, type_, n in zip(s.layer_names, s.layer_types, s.param_nums)]
        width = max((len(r[0]) for r in rows), default=4)
        wtype = max((len(r[1]) for r in rows), default=4)
        lines = [f"{'name':<{width}}  {'type':<{wtype}}  params"]
        lines += [f"{n:<{width}}  {t:<{wtype}}  {p:>6}" for n, t, p in rows]
        total, trainable = s.total_parameters, s.trainable_parameters
        lines.append(f"params: {get_human_readable_count(total)} total, {get_human_readable_count(trainable)} "
                     f"trainable ({s.model_size:.1f} MB)")
        cfg = getattr(getattr(pl_module, "model", None), "config", None)
        if cfg is not None and hasattr(cfg, "flops_per_token"):
            try:
                fpt = cfg.flops_per_token()
                lines.append(f"training FLOPs per token: {get_human_readable_count(int(fpt))} "
                             f"(forward + backward at context {cfg.context_length})")
            except Exception:  # an exotic config without the fields the estimate needs
                pass
        rank_zero_info("\n".join(lines))
