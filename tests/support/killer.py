"""A test-only callback: SIGKILL this process right after a given optimizer step (no cleanup, no flush)."""
import os
import signal

import lightning.pytorch as L


class KillAtStep(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
