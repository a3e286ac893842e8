"""Exact resume: a fit killed with SIGKILL mid-epoch and resumed with `--ckpt_path last` ends with
weights bitwise identical to an uninterrupted run (CPU; data order, RNG incl. dropout, scheduler and
optimizer state all restored). Runs the real `spine fit` in subprocesses."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]

CONFIG = """
seed_everything: 3
trainer:
  accelerator: cpu
  devices: 1
  max_steps: 14
  default_root_dir: {root}
  limit_val_batches: 0
  log_every_n_steps: 1
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  use_distributed_sampler: false
  gradient_clip_val: 1.0
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args:
        dirpath: {root}/ckpt
        save_last: true
        every_n_train_steps: 4
        save_top_k: -1
    - class_path: callbacks.SpineCheckpoint
      init_args:
        dirpath: {root}/spine
        on_save: false
model:
  class_path: modules.PretrainModule
  init_args:
    model: gpt2-tiny
    model_overrides: {{d_model: 32, n_layer: 2, n_head: 2, dropout: 0.1}}
    lr: 3.0e-3
    warmup_steps: 3
data:
  class_path: datamodules.PretrainDataModule
  init_args:
    source: synthetic
    tokenizer: byte
    context_length: 32
    batch_size: 4
    synthetic_problems: 60
    seed: 5
    cache_dir: {root}/cache
"""


def _fit(root: Path, *extra: str, env_extra=None) -> subprocess.CompletedProcess:
    cfg = root / "config.yaml"
    cfg.write_text(CONFIG.format(root=root))
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
