"""Progress a person can read: text lines when stdout is not a terminal (redirected, tee, SLURM), the
Rich bar's description by steps, and the `latest` run link after `spine fit`."""
from __future__ import annotations

import csv
import io
import re
from types import SimpleNamespace

import pytest

from callbacks.progress import SpineRichProgressBar, TextProgress, default_progress_bar
from tests.support.fit_runner import fit_yaml, run_in_process, synthetic_data, tiny_pretrain_model



def _config(root) -> str:
    """Six steps of a one-layer tiny model, validation at steps 3 and 6, progress bar left on."""
    return fit_yaml(root, tiny_pretrain_model({"n_layer": 1}), synthetic_data(root / "cache", seed=0),
                    max_steps=6, val_check_interval=3, check_val_every_n_epoch=None, num_sanity_val_steps=0,
                    limit_val_batches=2, log_every_n_steps=1, use_distributed_sampler=False,
                    enable_checkpointing=False)


LINE = re.compile(r"^step (\d+)/6  loss ([\d.]+)  lr ([\d.e-]+)  tok/s [\d,]+  elapsed \d+:\d\d  ETA \d+:\d\d$")


def test_text_progress_lines_when_stdout_is_not_a_terminal(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(_config(tmp_path))
    code, out = run_in_process(["fit", "--config", str(cfg)])  # stdout is a StringIO: not a TTY
    assert code == 0, out
    steps = [LINE.match(line) for line in out.splitlines() if line.startswith("step ")]
    assert all(steps), out
    assert [int(m.group(1)) for m in steps] == [1, 2, 3, 4, 5, 6]  # short run: one line per step
    # the printed loss is the logged one (metrics.csv, written by the CSV logger independently)
    rows = list(csv.DictReader(open(tmp_path / "logs" / "version_0" / "metrics.csv")))
    logged = {int(r["step"]) + 1: float(r["train_loss"]) for r in rows if r.get("train_loss")}
    for m in steps:
        assert float(m.group(2)) == pytest.approx(logged[int(m.group(1))], abs=5e-5)
    vals = [line for line in out.splitlines() if line.startswith("validation @ step")]
    assert [v.split()[3].rstrip(":") for v in vals] == ["3", "6"] and all("val_loss" in v for v in vals)
    assert "Epoch 0/-2" not in out and "v_num" not in out
    # the run folder is reachable as logs/latest
    assert (tmp_path / "logs" / "latest").resolve() == (tmp_path / "logs" / "version_0").resolve()
    assert f"run folder: {tmp_path / 'logs' / 'version_0'}" in out


def test_default_bar_follows_the_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert isinstance(default_progress_bar(io.StringIO()), TextProgress)
    assert isinstance(default_progress_bar(Tty()), SpineRichProgressBar)


@pytest.mark.parametrize("max_steps, max_epochs, expected", [(800, -1, "train"), (-1, 10, "Epoch 1/10"),
                                                             (-1, None, "Epoch 1")])
def test_rich_description_never_shows_negative_epochs(max_steps, max_epochs, expected):
    bar = SpineRichProgressBar()
    bar._trainer = SimpleNamespace(max_steps=max_steps, max_epochs=max_epochs)
    assert bar._get_train_description(0) == expected


def test_text_progress_interval():
    bar = TextProgress()
    for total, every in ((6, 1), (100, 5), (800, 40), (None, 10)):
        trainer = SimpleNamespace(max_steps=total or -1, estimated_stepping_batches=float("inf"))
        assert bar._interval(trainer) == every
    assert TextProgress(every_n_steps=7)._interval(None) == 7


def _fake_clock(step=2.0):
    t = [0.0]

    def clock():
        t[0] += step
        return t[0]
    return clock


def test_eval_progress_is_ten_lines_when_redirected():
    from spine.progress import ProgressLine

    buf = io.StringIO()
    p = ProgressLine("[spine eval]", unit="problems", stream=buf, clock=_fake_clock())
    for done in range(8, 201, 8):  # 25 chunks, as `spine eval` on 200 problems
        p(done, 200)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 11 and lines[-1].startswith("[spine eval]  200/200 problems")
    assert "ETA 0:00" in lines[-1] and "\r" not in buf.getvalue()
    # rate and ETA from the fake clock: 8 problems per 2 s = 4/s after the first call; 176 left = 44 s
    assert re.search(r"24/200 problems  4\.00 problems/s  ETA 0:44  elapsed 0:04", buf.getvalue())


def test_eval_progress_is_one_line_on_a_terminal():
    from spine.progress import ProgressLine

    buf = io.StringIO()
    p = ProgressLine("[spine eval]", unit="problems", stream=buf, tty=True, clock=_fake_clock())
    for done in range(8, 201, 8):
        p(done, 200)
    out = buf.getvalue()
    assert out.count("\n") == 1 and out.endswith("\n") and out.count("\r") == 25
