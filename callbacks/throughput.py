"""Lightning's ThroughputMonitor for token batches, with an explicit peak FLOP/s for MFU."""
from __future__ import annotations

from lightning.pytorch.callbacks import ThroughputMonitor


def _batch_size(batch) -> int:
    return int(batch["input_ids"].shape[0])


def _length(batch) -> int:
    return int(batch["input_ids"].numel())


class TokenThroughputMonitor(ThroughputMonitor):
    """Logs samples/s, tokens/s (`items_per_sec`) and MFU (`flops_per_batch` comes from the module).

    `peak_flops` overrides Lightning's table (e.g. 989e12 for an H100 SXM in bf16); without it and
    without a table entry (CPUs), MFU is not logged.
    """

    def __init__(self, peak_flops: float | None = None, **kwargs):
        super().__init__(batch_size_fn=_batch_size, length_fn=_length, **kwargs)
        self.peak_flops = peak_flops

    def setup(self, trainer, pl_module, stage):
        super().setup(trainer, pl_module, stage)
        if self.peak_flops:
            self.available_flops = int(self.peak_flops)
            for t in self._throughputs.values():
                t.available_flops = int(self.peak_flops)
