"""The `spine` command: LightningCLI for fit/validate/test/predict, jsonargparse subcommands for the rest.

What this layer adds to LightningCLI, for a person at a terminal:
- `spine` / `spine --help` lists every command (Trainer stages and tools) and `spine configs` the recipes;
- option errors are one line with a "did you mean" (no Union noise), and option prefixes are refused
  (`--trainer.max_step 2` is not `--trainer.max_steps 2`);
- progress lines when stdout is not a terminal, the Rich bar otherwise (callbacks/progress.py);
- after a successful `fit`, `<logger dir>/latest` points at the run's version folder.
"""
from __future__ import annotations

import difflib
import logging
import os
import re
import sys
import warnings
from pathlib import Path

# Errors that mean "your input is wrong" (a missing file, a bad value): one line, not a traceback.
USER_ERRORS = (ValueError, OSError)  # OSError: FileNotFoundError, a full disk, ... (named by the raiser)

TRAINER_COMMANDS = ("fit", "validate", "test", "predict")
_TRAINER_HELP = {
    "fit": "Train a model (a recipe: --config configs/NAME.yaml; `spine configs` lists them).",
    "validate": "Run one validation pass (e.g. configs/eval/*.yaml: reasoning accuracy of a checkpoint).",
    "test": "Run the test split of a recipe (e.g. --ckpt_path runs/…/last.ckpt).",
    "predict": "Run predictions and write them (a prediction writer, e.g. callbacks.PredictionWriter).",
}
# commands that live outside spine.commands' registry (imported for their @command side effect)
_EXTRA_COMMAND_MODULES = ("spine.recipes", "modules.classify_cli")


# ---------------------------------------------------------------------------- quiet Lightning
class _DropTips(logging.Filter):
    """Lightning's advertisement for its cloud logger is not information about this run."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.getMessage())
        return not msg.startswith(("💡 Tip", "Trainer already configured with model summary callbacks"))


def quiet_lightning() -> None:
    """Silence noise a user cannot act on: Lightning's tips and torch's LeafSpec deprecation."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in log.filters):
            log.addFilter(_DropTips())
    # raised inside lightning/pytorch/utilities/_pytree.py by torch >= 2.10, fixed upstream
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)


def default_threads() -> int | None:
    """Torch CPU threads when neither OMP_NUM_THREADS nor SPINE_NUM_THREADS is set: the CPUs this
    process may run on (taskset / cgroup affinity), never more than torch's own default.

    torch counts the machine's cores even when the process is pinned to fewer, and oversubscribed
    threads run several times slower. Returns the number set, or None when nothing changed.
    """
    import torch

    want = os.environ.get("SPINE_NUM_THREADS")
    if want:
        if not want.isdigit() or int(want) < 1:
            raise ValueError(f"SPINE_NUM_THREADS must be a positive integer, got {want!r}")
        torch.set_num_threads(int(want))
        return int(want)
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return None
    if 0 < allowed < torch.get_num_threads():
        torch.set_num_threads(allowed)
        return allowed
    return None


# ---------------------------------------------------------------------------- option errors
def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _class_options(class_path: str) -> list[str]:
    """Init parameter names of `class_path` as jsonargparse sees them (it follows *args/**kwargs)."""
    try:
        from jsonargparse import ArgumentParser
        from jsonargparse._typehints import import_object  # noqa: PLC2701 (the resolver LightningCLI uses)

        cls = import_object(class_path)
        p = ArgumentParser(exit_on_error=False)
        p.add_class_arguments(cls, "x", fail_untyped=False)
        return [k[2:] for k in p.get_defaults().keys() if k.startswith("x.")]
    except Exception:
        return []


def short_error(message: str, option_strings) -> str:
    """One line for a jsonargparse/LightningCLI error message, with a "did you mean" where one fits."""
    m = re.search(r"unrecognized arguments: (\S+)", message)
    if m:
        key = m.group(1).split("=", 1)[0]
        names = [s for s in option_strings if s.startswith("--")]
        hint = _suggest(key, names)
        if not hint and key.count(".") >= 1 and key.split(".")[0] in ("--model", "--data"):
            group = key.split(".")[0]
            hint = f" (class options go under {group}.init_args.NAME or {group}.NAME; {group}.help CLASS lists them)"
        return f"unknown option {key}{hint}"
    m = re.search(r"Parser key \"([^\"]+)\".*?Problem with given class_path '([^']+)':\n(.*?)(?:\n\s*- |\n\s*Given value|$)",
                  message, re.S)
    if m:
        section, class_path = m.group(1), m.group(2)
        detail = " ".join(line.strip() for line in m.group(3).splitlines() if line.strip())
        opt = re.search(r"Option '([^']+)' is not accepted", detail)
        if opt:
            return (f"--{section}: {class_path} has no option {opt.group(1)!r}"
                    f"{_suggest(opt.group(1), _class_options(class_path))}")
        inner = re.match(r"Parser key \"([^\"]+)\":\s*(.*)", detail)
        if inner:
            return f"--{section}.init_args.{inner.group(1)} ({class_path}): {inner.group(2)}"
        attr = re.search(r"module '([\w.]+)' has no attribute '(\w+)'", detail)
        if attr:
            import importlib

            names = [f"{attr.group(1)}.{n}" for n in dir(importlib.import_module(attr.group(1))) if not n.startswith("_")]
            return f"--{section}: no class {class_path!r}{_suggest(class_path, names)}"
        return f"--{section} ({class_path}): {detail}"
    m = re.search(r"Parser key \"([^\"]+)\":\s*(.+)", message, re.S)
    if m:
        detail = " ".join(line.strip() for line in m.group(2).strip().splitlines()[:2])
        return f"--{m.group(1)}: {detail}"
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return " ".join(lines[:2]) if lines else message


def _parser_class():
    from lightning.pytorch.cli import LightningArgumentParser

    class SpineArgumentParser(LightningArgumentParser):
        """LightningCLI's parser without option prefixes and with one-line errors."""

        def __init__(self, *args, **kwargs):
            kwargs.setdefault("allow_abbrev", False)
            super().__init__(*args, **kwargs)

        def error(self, message, ex=None):
            if os.environ.get("SPINE_DEBUG") or not getattr(self, "exit_on_error", True):
                return super().error(message, ex)  # an inner parser: the outer one reports it
            # "spine fit", whatever the script was called (python -m modules.cli, pytest, ...)
            prog = " ".join(["spine", *re.sub(r"\s*\[options\]", "", self.prog or "").split()[1:]])
            line = short_error(str(message), list(self._option_string_actions))
            print(f"{prog}: error: {line}", file=sys.stderr)
            sys.exit(2)

    return SpineArgumentParser


# ---------------------------------------------------------------------------- runs
def link_latest(log_dir: str | os.PathLike | None) -> Path | None:
    """Point `<parent of log_dir>/latest` at `log_dir` (a relative symlink; a `latest.txt` where links fail).

    Called only after a fit returns, so a failed or interrupted fit never moves it.
    """
    if not log_dir:
        return None
    run = Path(log_dir)
    if not run.is_dir() or run.name == "latest":
        return None
    link = run.parent / "latest"
    try:
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            return None  # a real file or folder named latest: the user's, never replaced
        link.symlink_to(run.name, target_is_directory=True)
    except OSError:
        note = run.parent / "latest.txt"
        # only a note this function wrote (one line naming a sibling run folder) is replaced
        if note.exists() and not (run.parent / note.read_text(errors="replace").strip()).is_dir():
            return None
        note.write_text(run.name + "\n")
    return link


# ---------------------------------------------------------------------------- LightningCLI
def _lightning_cli(args: list[str] | None) -> int:
    import lightning.pytorch as L
    from lightning.pytorch.callbacks import BasePredictionWriter, ModelSummary, ProgressBar
    from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

    import datamodules  # noqa: F401  (registers the data modules: `--data.help PretrainDataModule`, help listings)

    from .base import SpineModule

    quiet_lightning()

    class RunFolderConfig(SaveConfigCallback):
        """The resolved config goes into the run's folder, never into the working directory: with no
        logger and no `default_root_dir`, Lightning's log_dir is the cwd, where a user's own config.yaml
        may live (and saving overwrites, so reruns into one run folder work)."""

        def setup(self, trainer, pl_module, stage: str) -> None:
            if os.path.abspath(trainer.log_dir or os.getcwd()) == os.path.abspath(os.getcwd()):
                self.save_to_log_dir = False
            super().setup(trainer, pl_module, stage)

    class SpineCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            # the data module owns the tokenizer and the windows; the model takes its shape from them
            parser.link_arguments("data.vocab_size", "model.init_args.vocab_size", apply_on="instantiate")
            parser.link_arguments("data.pad_id", "model.init_args.pad_id", apply_on="instantiate")
            parser.link_arguments("data.context_length", "model.init_args.context_length", apply_on="instantiate")

        def _instantiate_trainer(self, config, callbacks):
            from callbacks.progress import SpineModelSummary, default_progress_bar

            given = list(config.get("callbacks") or []) + list(callbacks)
            if config.get("enable_progress_bar", True) is not False and not any(isinstance(c, ProgressBar) for c in given):
                callbacks = [*callbacks, default_progress_bar()]
            if config.get("enable_model_summary", True) is not False and not any(isinstance(c, ModelSummary) for c in given):
                callbacks = [*callbacks, SpineModelSummary()]
            if self.subcommand == "predict" and not any(isinstance(c, BasePredictionWriter) for c in given):
                from callbacks.predictions import PredictionWriter

                callbacks = [*callbacks, PredictionWriter()]  # predictions are written, not thrown away
            return super()._instantiate_trainer(config, callbacks)

        def _parse_ckpt_path(self) -> None:  # resolve `last`, verify the file, refuse a changed model
            from .resume import preflight
            preflight(self)

    try:
        default_threads()
        cli = SpineCLI(
            SpineModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=RunFolderConfig,
            save_config_kwargs={"overwrite": True},
            parser_class=_parser_class(),
            args=args,
            auto_configure_optimizers=False,
        )
    except USER_ERRORS as e:
        if os.environ.get("SPINE_DEBUG"):
            raise
        from .resume import error_line
        command = (args or sys.argv[1:] or ["fit"])[0]
        print(f"spine {command}: error: {type(e).__name__}: {error_line(e)}\n(set SPINE_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 2
    if cli.subcommand == "fit" and cli.trainer.is_global_zero and cli.trainer.logger is not None:
        # the logger's own log_dir: Trainer.log_dir broadcasts, and the other ranks have already returned
        log_dir = getattr(cli.trainer.logger, "log_dir", None)
        link = link_latest(log_dir)
        if link is not None:
            print(f"run folder: {log_dir} (also {link})")
    return 0


# ---------------------------------------------------------------------------- top level
def _tool_commands() -> dict:
    import importlib

    from spine.commands import COMMANDS

    for mod in _EXTRA_COMMAND_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
    return COMMANDS


def usage() -> str:
    """`spine --help`: every command with its one-line summary."""
    tools = _tool_commands()
    width = max(len(n) for n in [*TRAINER_COMMANDS, *tools]) + 2
    lines = ["usage: spine COMMAND [options]   (spine COMMAND --help for its options)", "",
             "Trainer stages (LightningCLI: --config YAML, --trainer.*, --model.*, --data.*, --print_config):"]
    lines += [f"  {n:<{width}}{_TRAINER_HELP[n]}" for n in TRAINER_COMMANDS]
    lines += ["", "Tools:"]
    for name, fn in tools.items():
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        lines.append(f"  {name:<{width}}{summary}")
    lines += ["", "Debugging: SPINE_DEBUG=1 shows tracebacks. Threads: OMP_NUM_THREADS or SPINE_NUM_THREADS "
              "(default: the CPUs this process may use)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `spine` console script."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # a reader that went away shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        from spine.commands import silence_stdout, stdout_closed

        if not stdout_closed():
            raise
        silence_stdout()  # `spine configs | head`: the reader had what it wanted; not an error
        return 0


def _main(argv: list[str] | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    from .resume import config_file_error
    if (problem := config_file_error(args)) is not None:  # one line naming the file, not usage text
        print(f"spine: error: {problem}", file=sys.stderr)
        return 2
    if args[0] in TRAINER_COMMANDS:
        # LightningCLI reads sys.argv itself when run as a script (it warns if given both)
        return _lightning_cli(None if argv is None else args)
    tools = _tool_commands()
    if not args[0].startswith("-") and args[0] not in tools:
        hint = _suggest(args[0], [*TRAINER_COMMANDS, *tools])
        print(f"spine: error: unknown command {args[0]!r}{hint}\n(spine --help lists the commands)", file=sys.stderr)
        return 2
    if args[0] not in ("configs",) and "--help" not in args and "-h" not in args:
        try:
            default_threads()
        except ValueError as e:
            print(f"spine: error: {e}", file=sys.stderr)
            return 2
    from spine.commands import main as commands_main

    return commands_main(args)


if __name__ == "__main__":
    sys.exit(main())
