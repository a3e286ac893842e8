"""Exact resume: a fit killed with SIGKILL mid-epoch and resumed with `--ckpt_path last` ends with
weights bitwise identical to an uninterrupted run (CPU; data order, RNG incl. dropout, scheduler and
optimizer state all restored). Runs the real `spine fit` in subprocesses."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.support.fit_runner import callback, fit_yaml, synthetic_data, tiny_pretrain_model

REPO = Path(__file__).resolve().parents[1]



def _config(root: Path) -> str:
    """14 steps with dropout and clipping, a last.ckpt every 4 steps, the final spine checkpoint only."""
    callbacks = [callback("lightning.pytorch.callbacks.ModelCheckpoint", dirpath=root / "ckpt", save_last=True,
                          every_n_train_steps=4, save_top_k=-1),
                 callback("callbacks.SpineCheckpoint", dirpath=root / "spine", on_save=False)]
    return fit_yaml(root, tiny_pretrain_model({"dropout": 0.1}, warmup_steps=3),
                    synthetic_data(root / "cache", synthetic_problems=60), logger=False, max_steps=14,
                    limit_val_batches=0, log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False,
                    use_distributed_sampler=False, gradient_clip_val=1.0, callbacks=callbacks)


def _fit(root: Path, *extra: str, env_extra=None) -> subprocess.CompletedProcess:
    cfg = root / "config.yaml"
    cfg.write_text(_config(root))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests" / "support"), str(REPO), env.get("PYTHONPATH", "")])
    env.update(env_extra or {})
    cmd = [sys.executable, "-m", "modules.cli", "fit", "--config", str(cfg), *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    ref.mkdir(), run.mkdir()
    done = _fit(ref)
    assert done.returncode == 0, done.stderr[-3000:]

    killer = ["--trainer.callbacks+=killer.KillAtStep", "--trainer.callbacks.step=6"]
    killed = _fit(run, *killer)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-3000:])
    assert (run / "ckpt" / "last.ckpt").exists()
    assert not (run / "spine" / "final").exists()

    resumed = _fit(run, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a = load_file(ref / "spine" / "final" / "model.safetensors")
    b = load_file(run / "spine" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    # the weights really moved during training (else the comparison proves nothing)
    init = load_file(ref / "spine" / "final" / "model.safetensors")
    assert any(v.abs().sum() > 0 for v in init.values())
