"""Callback behaviour without a Trainer: LossCurvePlot keeps train losses as tensors during fit (no
per-step host sync) and floats in its state; the weight-reading callbacks refuse FSDP1."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
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


def test_loss_curve_figure_log_axis_lr_panel_and_run_name(tmp_path):
    from callbacks.plots import draw_loss_curve, smooth

    train = [(s, 5.0 * 0.97 ** s + 0.1) for s in range(1, 201)]
    val = [(50, 1.3), (100, 0.5), (200, 0.2)]
    lr = [(s, 1e-3 * min(1.0, s / 20)) for s in range(1, 201)]
    fig = draw_loss_curve(train, val, lr, title="quickstart/logs/version_0: loss")
    loss_ax, lr_ax = fig.axes
    assert loss_ax.get_yscale() == "log" and "version_0" in loss_ax.get_title()
    assert [tuple(line.get_ydata()) for line in lr_ax.get_lines()] == [tuple(v for _, v in lr)]
    assert any(tuple(line.get_ydata()) == (1.3, 0.5, 0.2) for line in loss_ax.get_lines())  # val points
    # smoothing is a bias-corrected EMA: a constant series stays constant, a step moves 10% per point
    assert smooth([2.0] * 5) == pytest.approx([2.0] * 5)
    assert smooth([0.0, 1.0])[1] == pytest.approx(0.1 / (1 - 0.9 ** 2))
    fig2 = draw_loss_curve(train[:5], [], [], title="t")
    assert len(fig2.axes) == 1


def test_voting_plot_has_ci_bars_baseline_and_full_y_axis(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from spine.reasoning import report as rep

    saved = {}
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: saved.setdefault("fig", self))
    rep.plot_curves({"sc8": {1: (143, 200), 2: (143, 200), 4: (163, 200), 8: (169, 200)}}, tmp_path / "p.png",
                    title="t", xlabel="k", log2=True, baselines={"greedy": (174, 200)})
    ax = saved["fig"].axes[0]
    assert ax.get_ylim() == (0.0, 100.0)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("greedy (87.0%" in t for t in labels) and "95%" in ax.get_ylabel()
    from spine.traces import wilson_interval

    lo, hi = wilson_interval(169, 200)
    segs = [c for c in ax.collections if hasattr(c, "get_segments")]
    ys = sorted(round(float(y), 4) for c in segs for seg in c.get_segments() for y in (seg[0][1], seg[-1][1]))
    assert round(100 * lo, 4) in ys and round(100 * hi, 4) in ys
