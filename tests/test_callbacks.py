"""Callback behaviour without a Trainer: LossCurvePlot keeps train losses as tensors during fit (no
per-step host sync) and floats in its state; the weight-reading callbacks refuse FSDP1."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from callbacks import LossCurvePlot


def test_loss_curve_records_without_reading_tensors_and_checkpoints_floats(tmp_path):
    cb = LossCurvePlot(dirpath=str(tmp_path))
    trainer = SimpleNamespace(callback_metrics={}, global_step=0, sanity_checking=False, is_global_zero=True,
                              log_dir=str(tmp_path), default_root_dir=str(tmp_path))
    losses = [2.5, 2.0, 1.25]
    for step, loss in enumerate(losses):
        trainer.global_step = step
        trainer.callback_metrics["train_loss"] = torch.tensor(loss)
        cb.on_train_batch_end(trainer, None, None, None, step)
        assert isinstance(cb.train[-1][1], torch.Tensor)  # not converted (no sync) while training
    trainer.callback_metrics["train_loss"].fill_(99.0)  # the metric object is reused by Lightning ...
    assert cb.state_dict()["train"] == list(enumerate(losses))  # ... the recorded values are copies
    trainer.callback_metrics["val_loss"] = torch.tensor(1.5)
    cb.on_validation_end(trainer, None)
    cb.on_fit_end(trainer, None)
    assert cb.val == [(2, 1.5)] and cb.path == tmp_path / "loss_curve.png" and cb.path.stat().st_size > 0
    restored = LossCurvePlot()
    restored.load_state_dict(cb.state_dict())
    assert restored.train == list(enumerate(losses))


def test_callbacks_that_read_whole_weights_refuse_fsdp1():
    import pytest
    from lightning.pytorch.strategies import FSDPStrategy

    from callbacks import ReasoningEval, SampleGeneration, SpineCheckpoint

    trainer = SimpleNamespace(strategy=FSDPStrategy())
    for cb in (SpineCheckpoint(), SampleGeneration(prompts=["x"]), ReasoningEval()):
        with pytest.raises(ValueError, match=r"does not support --trainer.strategy=fsdp \(FSDP1\).*ModelParallelStrategy"):
            cb.setup(trainer, None, "fit")
