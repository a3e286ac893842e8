"""Run the real `spine fit` (or validate/test) in a subprocess group, as a user would, for multi-process tests."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def spine_fit(config: str, cwd_root: Path, *extra: str, timeout: float = 180,
              subcommand: str = "fit") -> subprocess.CompletedProcess:
    """`spine <subcommand> --config ...` in its own process group (all DDP ranks are killed on a timeout)."""
    cfg = cwd_root / "config.yaml"
    cfg.write_text(config)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests" / "support"), str(REPO), env.get("PYTHONPATH", "")])
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore::DeprecationWarning")
    for var in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK"):
        env.pop(var, None)  # a fresh, self-launched process group
    # the `spine` console script itself when installed (Lightning's DDP launcher re-runs sys.argv[0]
    # for each extra rank; that path differs from `python -m`), else the same entry point as a module
    script = Path(sys.executable).with_name("spine")
    launcher = [str(script)] if script.is_file() else [sys.executable, "-m", "modules.cli"]
    cmd = [*launcher, subcommand, "--config", str(cfg), *extra]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"spine fit timed out after {timeout}s (a DDP hang?)\n{err[-4000:]}")
    finally:
        try:  # never leave a rank behind (e.g. rank 1 after rank 0 died)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def run_in_process(args: list[str]) -> tuple[int | None, str]:
    """`spine ARGS` in this process (fast: imports are shared); returns (exit code, stdout)."""
    import contextlib
    import io
    from unittest import mock

    from modules.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), mock.patch.object(sys, "argv", ["spine"]):
        try:
            code = main(args)
        except SystemExit as e:  # --print_config exits after printing
            code = e.code
    return code, buf.getvalue()


# A tiny `spine fit` used by the multi-process tests: gpt2-tiny (d_model 32, 2 layers), byte tokenizer,
# synthetic corpus of 40 problems (150 train windows of 32 tokens, 16 val windows), AdamW, clipping,
# validation + Lightning and spine checkpoints every EVERY steps, and the RankRecorder probe.
STEPS, EVERY = 20, 4
# `SPINE_TEST_ACCELERATOR=gpu` runs the same multi-process tests on GPUs (NCCL), one rank per GPU
ACCELERATOR = os.environ.get("SPINE_TEST_ACCELERATOR", "cpu")
CONFIG = """
seed_everything: 3
trainer:
  accelerator: {accelerator}
  devices: {devices}
  strategy: {strategy}
  max_steps: {steps}
  val_check_interval: {every}
  check_val_every_n_epoch: null
  num_sanity_val_steps: -1
  log_every_n_steps: 1
  gradient_clip_val: 1.0
  enable_progress_bar: false
  enable_model_summary: false
  use_distributed_sampler: false
  default_root_dir: {root}
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args: {{save_dir: {root}, name: logs}}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: {root}/ckpt, save_last: true, every_n_train_steps: {every}, save_top_k: -1}}
    - class_path: callbacks.SpineCheckpoint
    - class_path: callbacks.LossCurvePlot
    - class_path: callbacks.TokenThroughputMonitor
    - class_path: callbacks.SampleGeneration
      init_args: {{prompts: ["12 + 7 ="], every_n_steps: {every}, sampling: {{max_new_tokens: 4}}}}
    - class_path: ddp_probe.RankRecorder
      init_args: {{dirpath: {probe}, watch: {root}}}{callbacks}
model:
  class_path: modules.PretrainModule
  init_args:
    model: gpt2-tiny
    model_overrides: {{d_model: 32, n_layer: 2, n_head: 2, dropout: {dropout}}}
    lr: 3.0e-3
    warmup_steps: 2
data:
  class_path: ddp_probe.IndexedPretrainData
  init_args:
    source: synthetic
    tokenizer: byte
    context_length: 32
    batch_size: {batch}
    synthetic_problems: 40
    seed: 5
    cache_dir: {cache}
"""


def run(base: Path, name: str, *extra: str, devices: int, batch: int, strategy: str, steps: int = STEPS,
        dropout: float = 0.0, callbacks: str = "") -> tuple[subprocess.CompletedProcess, Path, Path]:
    """One `spine fit` of CONFIG under `base/name`; returns (process, run root, probe dir).

    `callbacks`: extra YAML list items (each starting with a newline and 4 spaces of indent)."""
    root, probe = base / name, base / f"{name}-probe"
    root.mkdir(parents=True)
    cfg = CONFIG.format(accelerator=ACCELERATOR, devices=devices, strategy=strategy, steps=steps, batch=batch, root=root, probe=probe,
                        cache=base / "cache", dropout=dropout, every=EVERY, callbacks=callbacks)
    return spine_fit(cfg, root, *extra), root, probe


def records(probe: Path, world: int) -> list[dict]:
    """The RankRecorder files of every rank."""
    return [json.loads((probe / f"rank{r}.json").read_text()) for r in range(world)]


def final_weights(root: Path) -> dict:
    """The weights of the spine checkpoint written at the end of fit."""
    from safetensors.torch import load_file

    (path,) = root.glob("logs/version_*/spine/final/model.safetensors")
    return load_file(path)
