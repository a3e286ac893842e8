"""Lightning's `.ckpt` files through `spine.atomic`: written beside the target, fsync'd, renamed, with a
content checksum checked on every load (resume, `spine test --ckpt_path`, ...).

Lightning's own `TorchCheckpointIO` writes to `$TMPDIR` and moves the file; across filesystems the
move is an in-place copy, so a kill or a full disk leaves a truncated `last.ckpt` under its final
name. Every `SpineModule` installs this plugin in `setup` (`use_spine_checkpoint_io`) unless the
Trainer was given another CheckpointIO, so every shipped config and `spine fit` uses it. It can also
be named explicitly: `trainer.plugins: [modules.checkpoint_io.SpineCheckpointIO]`.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from spine.atomic import load_training_checkpoint, save_training_checkpoint


def _remote(path: Any) -> bool:
    return "://" in str(path)


class SpineCheckpointIO(TorchCheckpointIO):
    """Atomic, checksummed local `.ckpt` files (remote fsspec URLs fall back to Lightning's IO)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or _remote(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        save_training_checkpoint(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Optional[Callable] = lambda storage, loc: storage,
                        weights_only: Optional[bool] = None) -> dict[str, Any]:
        # weights_only is always True: spine never unpickles arbitrary objects from a checkpoint
        if _remote(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        return load_training_checkpoint(path, map_location=map_location)


def use_spine_checkpoint_io(trainer: Any) -> bool:
    """Install `SpineCheckpointIO` on `trainer`'s strategy when it still has Lightning's default IO."""
    strategy = trainer.strategy
    current = getattr(strategy, "_checkpoint_io", None)
    if current is None or type(current) is TorchCheckpointIO:
        strategy.checkpoint_io = SpineCheckpointIO()
        return True
    return isinstance(current, SpineCheckpointIO)
