"""Run the real `spine fit` (or validate/test) in a subprocess group, as a user would, for multi-process tests;
and build the tiny `spine fit` configs (YAML) that the tests share."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

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


# ---------------------------------------------------------------------------- tiny fit configs
# The pieces of the tiny `spine fit` configs the tests write: one gpt2-tiny shrunk to d_model 32 with
# 2 heads, the byte-tokenized synthetic corpus in windows of 32 tokens, a CSV logger under the run root.
TINY_MODEL = {"d_model": 32, "n_layer": 2, "n_head": 2}


def tiny_pretrain_model(overrides: dict | None = None, **init_args: Any) -> dict:
    """`modules.PretrainModule` on gpt2-tiny (TINY_MODEL updated with `overrides`), lr 3e-3, 2 warmup
    steps; `init_args` add or replace init arguments."""
    return {"class_path": "modules.PretrainModule",
            "init_args": {"model": "gpt2-tiny", "model_overrides": {**TINY_MODEL, **(overrides or {})},
                          "lr": 3.0e-3, "warmup_steps": 2, **init_args}}


def synthetic_data(cache: Path | str, class_path: str = "datamodules.PretrainDataModule", **init_args: Any) -> dict:
    """The synthetic corpus (40 problems, seed 5), byte tokenizer, windows of 32, batches of 4, token
    cache under `cache`; `init_args` add or replace init arguments."""
    return {"class_path": class_path,
            "init_args": {"source": "synthetic", "tokenizer": "byte", "context_length": 32, "batch_size": 4,
                          "synthetic_problems": 40, "seed": 5, "cache_dir": str(cache), **init_args}}


def csv_logger(root: Path | str) -> dict:
    """Lightning's CSVLogger writing `root`/logs/version_N/metrics.csv."""
    return {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(root), "name": "logs"}}


def callback(class_path: str, **init_args: Any) -> dict:
    """One `trainer.callbacks` item (paths in `init_args` become strings)."""
    item: dict[str, Any] = {"class_path": class_path}
    if init_args:
        item["init_args"] = {k: str(v) if isinstance(v, Path) else v for k, v in init_args.items()}
    return item


def fit_yaml(root: Path | str, model: dict, data: dict, *, seed: int = 3, logger: bool = True,
             callbacks: list[dict] | None = None, **trainer: Any) -> str:
    """A `spine fit` config as YAML: `seed_everything: seed`; a trainer on one CPU device (the `trainer`
    keywords add or replace Trainer arguments) with default_root_dir `root`, a CSV logger there unless
    `logger=False`, and `callbacks`; then `model` and `data`."""
    t: dict[str, Any] = {"accelerator": "cpu", "devices": 1, **trainer, "default_root_dir": str(root),
                         "logger": csv_logger(root) if logger else False}
    if callbacks:
        t["callbacks"] = callbacks
    return yaml.safe_dump({"seed_everything": seed, "trainer": t, "model": model, "data": data}, sort_keys=False)


# A tiny `spine fit` used by the multi-process tests: gpt2-tiny (d_model 32, 2 layers), byte tokenizer,
# synthetic corpus of 40 problems (150 train windows of 32 tokens, 16 val windows), AdamW, clipping,
# validation + Lightning and spine checkpoints every EVERY steps, and the RankRecorder probe.
STEPS, EVERY = 20, 4
# `SPINE_TEST_ACCELERATOR=gpu` runs the same multi-process tests on GPUs (NCCL), one rank per GPU
ACCELERATOR = os.environ.get("SPINE_TEST_ACCELERATOR", "cpu")


def run(base: Path, name: str, *extra: str, devices: int, batch: int, strategy: str | dict, steps: int = STEPS,
        dropout: float = 0.0, callbacks: Sequence[dict] = (),
        model_overrides: dict | None = None) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """One tiny multi-process `spine fit` under `base/name`; returns (process, run root, probe dir).

    `strategy`: a Trainer strategy name or a {class_path, init_args} dict; `callbacks`: extra
    `trainer.callbacks` items after the standard ones; `model_overrides` update TINY_MODEL."""
    root, probe = base / name, base / f"{name}-probe"
    root.mkdir(parents=True)
    ckpt = callback("lightning.pytorch.callbacks.ModelCheckpoint", dirpath=root / "ckpt", save_last=True,
                    every_n_train_steps=EVERY, save_top_k=-1)
    cfg = fit_yaml(
        root, tiny_pretrain_model({"dropout": dropout, **(model_overrides or {})}),
        synthetic_data(base / "cache", "ddp_probe.IndexedPretrainData", batch_size=batch),
        accelerator=ACCELERATOR, devices=devices, strategy=strategy, max_steps=steps, val_check_interval=EVERY,
        check_val_every_n_epoch=None, num_sanity_val_steps=-1, log_every_n_steps=1, gradient_clip_val=1.0,
        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
        callbacks=[ckpt, callback("callbacks.SpineCheckpoint"), callback("callbacks.LossCurvePlot"),
                   callback("callbacks.TokenThroughputMonitor"),
                   callback("callbacks.SampleGeneration", prompts=["12 + 7 ="], every_n_steps=EVERY,
                            sampling={"max_new_tokens": 4}),
                   callback("ddp_probe.RankRecorder", dirpath=probe, watch=root), *callbacks])
    return spine_fit(cfg, root, *extra), root, probe


def records(probe: Path, world: int) -> list[dict]:
    """The RankRecorder files of every rank."""
    return [json.loads((probe / f"rank{r}.json").read_text()) for r in range(world)]


def final_weights(root: Path) -> dict:
    """The weights of the spine checkpoint written at the end of fit."""
    from safetensors.torch import load_file

    (path,) = root.glob("logs/version_*/spine/final/model.safetensors")
    return load_file(path)
