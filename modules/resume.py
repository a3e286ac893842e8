"""Checks `spine fit|validate|test|predict` runs on the parsed config, before anything is built.

`preflight(cli)` replaces LightningCLI's `_parse_ckpt_path`, which
- resolved `--ckpt_path last` only inside the *new* run folder (each run logs to a new
  `version_N`), so the README's resume command silently restarted from step 0;
- unpickled the checkpoint with torch's own errors (a truncated, empty or text file gave a deep
  trace advising `weights_only=False`);
- merged the checkpoint's hyperparameters *over* the command line, silently replacing an explicit
  `--model.init_args.model_overrides`.

Here: `last` is resolved to the newest `last*.ckpt` of this run's checkpoint folders (every
`version_*` of its logger, or a ModelCheckpoint's `dirpath`), or refused in one line; the file is
loaded and checksum-verified by `spine.atomic.load_training_checkpoint` (one line on any failure);
the checkpoint's model settings are compared with the command's and a difference is refused, not
applied; Trainer settings that would train nothing or crash deep inside Lightning are refused.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from spine.atomic import load_training_checkpoint, remove_stale_siblings

# settings that decide the model's shape or identity: a resumed run must agree with its checkpoint
ARCH_KEYS = ("model", "model_overrides", "init")
_LAST = re.compile(r"^last(-v?\d+)?\.ckpt$")
_LIGHTNING_KEYWORDS = ("best", "hpc", "registry")


def _plain(value: Any) -> Any:
    """Namespaces, tuples and Paths as plain JSON values, for comparison and messages."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    return json.loads(json.dumps(value, default=str))


def _get(ns: Any, key: str, default: Any = None) -> Any:
    try:
        value = ns.get(key, default) if hasattr(ns, "get") else getattr(ns, key, default)
    except (KeyError, AttributeError):
        return default
    return default if value is None else value


def _entries(value: Any) -> list[Any]:
    if value is None or isinstance(value, bool):
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def checkpoint_dirs(trainer_cfg: Any, cwd: Path | None = None) -> list[Path]:
    """Where this config's ModelCheckpoint callbacks write, across all runs (every logger version)."""
    cwd = cwd or Path.cwd()
    root = Path(_get(trainer_cfg, "default_root_dir") or cwd)
    root = root if root.is_absolute() else cwd / root
    logger = _get(trainer_cfg, "logger", True)
    loggers = _entries(logger)
    if logger is True or logger is None:
        log_root: Path | None = root / "lightning_logs"
    elif loggers:
        args = _get(loggers[0], "init_args", {})
        save_dir = Path(_get(args, "save_dir") or root)
        save_dir = save_dir if save_dir.is_absolute() else cwd / save_dir
        name = _get(args, "name", "lightning_logs")
        log_root = save_dir / name if name else save_dir
    else:
        log_root = None
    dirs: list[Path] = []
    callbacks = [c for c in _entries(_get(trainer_cfg, "callbacks"))
                 if str(_get(c, "class_path", "")).endswith("ModelCheckpoint")]
    for cb in callbacks or [None]:
        dirpath = _get(_get(cb, "init_args", {}), "dirpath") if cb is not None else None
        if dirpath:
            p = Path(dirpath)
            dirs.append(p if p.is_absolute() else cwd / p)
        elif log_root is not None:
            dirs.extend(sorted(log_root.glob("*/checkpoints")))
            if not dirs:
                dirs.append(log_root / "version_*" / "checkpoints")  # for the message only
        else:
            dirs.append(root / "checkpoints")
    return dirs


def _stamp(p: Path) -> float:
    meta = p / "meta.pt"  # a sharded checkpoint directory: Lightning writes meta.pt last
    return (meta if p.is_dir() and meta.is_file() else p).stat().st_mtime


def find_last_checkpoint(trainer_cfg: Any, cwd: Path | None = None) -> Path:
    """The newest `last*.ckpt` among `checkpoint_dirs`; ValueError naming the folders searched if none."""
    dirs = checkpoint_dirs(trainer_cfg, cwd)
    found = [p for d in dirs if d.is_dir() for p in d.iterdir() if _LAST.match(p.name)]
    if not found:
        searched = ", ".join(str(d) for d in dirs) or "(no ModelCheckpoint and no logger)"
        raise ValueError(f"--ckpt_path last: no last*.ckpt to resume from in {searched}; run without "
                         "--ckpt_path to start afresh, or pass the checkpoint file")
    return max(found, key=_stamp)


def check_trainer_settings(subcommand: str, trainer_cfg: Any) -> None:
    """Trainer values that Lightning would accept and then train nothing with, or crash on deep inside."""
    max_steps = _get(trainer_cfg, "max_steps", -1)
    max_epochs = _get(trainer_cfg, "max_epochs")
    accumulate = _get(trainer_cfg, "accumulate_grad_batches", 1)
    if not isinstance(accumulate, int) or isinstance(accumulate, bool) or accumulate < 1:
        raise ValueError(f"--trainer.accumulate_grad_batches must be an integer >= 1, got {accumulate!r}")
    if subcommand != "fit":
        return
    if max_steps == 0 or max_steps < -1:
        raise ValueError(f"--trainer.max_steps must be a positive number of optimizer steps (or -1: no limit), "
                         f"got {max_steps}; 0 would write an untrained model")
    if max_epochs is not None and (max_epochs == 0 or max_epochs < -1):
        raise ValueError(f"--trainer.max_epochs must be a positive number (or -1: no limit), got {max_epochs}")


def check_same_model(hparams: dict, model_cfg: Any, ckpt: Path) -> None:
    """Refuse a command whose model settings differ from those the checkpoint was trained with."""
    args = _get(model_cfg, "init_args", {})
    class_path = hparams.get("_class_path")
    if class_path and _get(model_cfg, "class_path") and class_path != _get(model_cfg, "class_path"):
        raise ValueError(f"--ckpt_path {ckpt} was written by {class_path}, but the config's model is "
                         f"{_get(model_cfg, 'class_path')}")
    for key in ARCH_KEYS:
        if key not in hparams:
            continue
        theirs, ours = _plain(hparams[key]), _plain(_get(args, key))
        if (theirs or None) != (ours or None):
            raise ValueError(f"--ckpt_path {ckpt} was trained with {key}={theirs!r}, but this command sets "
                             f"{key}={ours!r}; a resumed run keeps its checkpoint's model: drop the change or "
                             "start a new run")


def preflight(cli: Any) -> None:
    """Stands in for `LightningCLI._parse_ckpt_path` (see the module docstring)."""
    subcommand = cli.config.get("subcommand")
    if not subcommand:
        return
    cfg = cli.config[subcommand]
    check_trainer_settings(subcommand, cfg.get("trainer"))
    ckpt_path = cfg.get("ckpt_path")
    if not ckpt_path or ckpt_path in _LIGHTNING_KEYWORDS or "://" in str(ckpt_path):
        return
    path = find_last_checkpoint(cfg.get("trainer")) if ckpt_path == "last" else Path(ckpt_path).expanduser()
    if ckpt_path == "last":
        print(f"spine {subcommand}: resuming from {path}", file=sys.stderr)
        remove_stale_siblings(path)  # what a writer killed mid-save left beside it (a new run saves elsewhere)
    if path.is_dir():  # a sharded checkpoint (FSDP2): its metadata file holds the hyperparameters
        if (path / "manifest.json").is_file():
            raise ValueError(f"--ckpt_path {path} is a spine checkpoint (weights only); start from it with "
                             "--model.init_args.init_from instead")
        if not (path / "meta.pt").is_file() or not (path / ".metadata").is_file():
            raise ValueError(f"--ckpt_path {path} is a directory but not a sharded checkpoint "
                             "(it needs meta.pt and .metadata)")
        checkpoint = load_training_checkpoint(path / "meta.pt")
    else:
        if not path.exists():
            raise FileNotFoundError(f"--ckpt_path: checkpoint not found: {path}")
        checkpoint = load_training_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters") or {}
    if isinstance(hparams, dict):
        check_same_model(hparams, cfg.get("model"), path)
    cfg.ckpt_path = str(path)


def config_file_error(argv: list[str]) -> str | None:
    """One line naming a `--config` file that is missing or not valid YAML (jsonargparse would print
    its usage text and a parser error about `<unicode string>`), else None."""
    import yaml

    paths = []
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            paths.append(argv[i + 1])
        elif arg.startswith("--config="):
            paths.append(arg.split("=", 1)[1])
    for name in paths:
        p = Path(name).expanduser()
        if not p.is_file():
            return f"config file not found: {p}"
        raw = p.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return f"{p}: not UTF-8 text (byte offset {e.start}); a config file is YAML text"
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            return f"{p}: invalid YAML{where}: {problem}"
        if data is not None and not isinstance(data, dict):
            return f"{p}: expected a YAML mapping of options (key: value), got a {type(data).__name__}"
    return None


def error_line(e: BaseException) -> str:
    """`e` as one line. jsonargparse wraps an error raised inside a model's or data module's `__init__`
    into a multi-line "Does not validate against any of the Union subtypes" report that also dumps
    the whole config; the line a user needs is the one error that is not "Expected a NoneType"."""
    text = str(e)
    if "Does not validate against any of the Union subtypes" in text and "Errors:" in text:
        items = [line.strip()[2:] for line in text.split("Errors:", 1)[1].splitlines()
                 if line.strip().startswith("- ")]
        real = [i for i in items if not i.startswith("Expected a <class 'NoneType'>")]
        if real:
            text = real[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines) if lines else type(e).__name__
