"""The `spine` command: LightningCLI for fit/validate/test/predict, jsonargparse subcommands for the rest."""
from __future__ import annotations

import os
import sys

# Errors that mean "your input is wrong" (a missing file, a bad value): one line, not a traceback.
USER_ERRORS = (ValueError, OSError)  # OSError: FileNotFoundError, a full disk, ... (named by the raiser)

TRAINER_COMMANDS = ("fit", "validate", "test", "predict")


def _lightning_cli(args: list[str] | None) -> int:
    import lightning.pytorch as L
    from lightning.pytorch.cli import LightningCLI

    from .base import SpineModule

    class SpineCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            # the data module owns the tokenizer and the windows; the model takes its shape from them
            parser.link_arguments("data.vocab_size", "model.init_args.vocab_size", apply_on="instantiate")
            parser.link_arguments("data.pad_id", "model.init_args.pad_id", apply_on="instantiate")
            parser.link_arguments("data.context_length", "model.init_args.context_length", apply_on="instantiate")

        def _parse_ckpt_path(self) -> None:  # resolve `last`, verify the file, refuse a changed model
            from .resume import preflight
            preflight(self)

    try:
        SpineCLI(
            SpineModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=args,
            auto_configure_optimizers=False,
        )
    except USER_ERRORS as e:
        if os.environ.get("SPINE_DEBUG"):
            raise
        command = (args or sys.argv[1:] or ["fit"])[0]
        from .resume import error_line
        print(f"spine {command}: error: {type(e).__name__}: {error_line(e)}\n(set SPINE_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `spine` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    from .resume import config_file_error
    if (problem := config_file_error(args)) is not None:  # one line naming the file, not usage text
        print(f"spine: error: {problem}", file=sys.stderr)
        return 2
    if args and args[0] in TRAINER_COMMANDS:
        # LightningCLI reads sys.argv itself when run as a script (it warns if given both)
        return _lightning_cli(None if argv is None else args)
    from spine.commands import main as commands_main

    return commands_main(args)


if __name__ == "__main__":
    sys.exit(main())
