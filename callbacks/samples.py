"""Sample generation from fixed prompts during training (deterministic: greedy or seeded)."""
from __future__ import annotations

import lightning.pytorch as L

from spine.distributed import unsharded_copy
from spine.engine import Engine
from spine.params import SamplingParams

from .checkpoint import require_gatherable_weights
from .progress import emit


class SampleGeneration(L.Callback):
    """Every `every_n_steps` optimizer steps (and at fit end) continue each prompt and log the text.

    Samples are printed on rank 0, sent to the logger when it supports text (TensorBoard), and kept
    in `self.history` as (step, prompt, completion) for tests and notebooks. `sampling` is greedy by
    default; sampled with a seed, each step's samples are drawn with the same noise.
    """

    def __init__(self, prompts: list[str], every_n_steps: int = 500,
                 sampling: SamplingParams = SamplingParams(max_new_tokens=40, seed=0), at_fit_end: bool = True):
        if not prompts:
            raise ValueError("SampleGeneration: give at least one prompt")
        self.prompts = list(prompts)
        self.every_n_steps = every_n_steps
        self.sampling = sampling
        self.at_fit_end = at_fit_end
        self.history: list[tuple[int, str, str]] = []
        self._last_step = -1

    def _sample(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tok = getattr(pl_module, "tokenizer", None)
        if tok is None or trainer.global_step == self._last_step:
            return
        self._last_step = trainer.global_step
        # a sharded (FSDP2) model is gathered into a plain copy first: generation stops at EOS, so ranks
        # could run different numbers of forwards, which a sharded forward would turn into a deadlock
        out = Engine(unsharded_copy(pl_module.model), tok).generate(self.prompts, self.sampling, on_overflow="truncate")
        lines = []
        for prompt, row in zip(self.prompts, out):
            for c in row:
                self.history.append((trainer.global_step, prompt, c.text))
                lines.append(f"{prompt!r} -> {c.text!r}")
        if trainer.is_global_zero:
            emit(trainer, f"[samples @ step {trainer.global_step}]\n  " + "\n  ".join(lines))
            exp = getattr(trainer.logger, "experiment", None)
            if exp is not None and hasattr(exp, "add_text"):
                exp.add_text("samples", "\n\n".join(lines), trainer.global_step)

    def setup(self, trainer, pl_module, stage):
        require_gatherable_weights(trainer, "SampleGeneration")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.every_n_steps > 0 and trainer.global_step > 0 and trainer.global_step % self.every_n_steps == 0:
            self._sample(trainer, pl_module)

    def on_fit_end(self, trainer, pl_module):
        if self.at_fit_end:
            self._sample(trainer, pl_module)
