"""Export spine checkpoints during fit and prove each one reloads to identical logits."""
from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from spine.checkpoint import load_checkpoint, save_checkpoint
from spine.distributed import build_from_state, compute_dtype, full_state_dict, is_sharded


def require_gatherable_weights(trainer, callback: str) -> None:
    """Refuse Lightning's FSDPStrategy (FSDP1) for callbacks that read the model's whole weights.

    FSDP1 flattens parameters into shards that spine cannot gather the way it gathers FSDP2's DTensors:
    the callback would read partial tensors (or deadlock). FSDP2 is supported.
    """
    from lightning.pytorch.strategies import FSDPStrategy

    if isinstance(trainer.strategy, FSDPStrategy):
        raise ValueError(f"{callback} does not support --trainer.strategy=fsdp (FSDP1). Use FSDP2: "
                         "--trainer.strategy=lightning.pytorch.strategies.ModelParallelStrategy "
                         "--trainer.strategy.data_parallel_size=<devices> --trainer.strategy.tensor_parallel_size=1")


class CheckpointParityError(RuntimeError):
    """A saved checkpoint did not reproduce the live model's logits."""


def probe_batch(model, n_tokens: int = 32, seed: int = 1234) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = min(n_tokens, model.config.context_length)
    return torch.randint(0, model.config.vocab_size, (2, n), generator=g)


@torch.no_grad()
def probe_logits(model) -> torch.Tensor:
    """float32 CPU logits of `model` on `probe_batch` in eval mode, autocast off (a collective if sharded)."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        # `_call_impl` is the module call minus an in-place torch.compile wrapper (we compare weights, not
        # kernels) but with the forward hooks, which is where FSDP2 all-gathers a sharded model's weights
        with torch.autocast(device_type=device.type, enabled=False):
            return model._call_impl(probe_batch(model).to(device)).float().cpu()
    finally:
        model.train(was_training)


@torch.no_grad()
def check_parity(model, directory: str | Path, expected: torch.Tensor | None = None,
                 state: dict[str, torch.Tensor] | None = None) -> float:
    """Reload `directory` into a fresh model; raise unless its logits equal `model`'s bitwise.

    `expected`: the live model's `probe_logits`, when they had to be computed beforehand (a sharded
    model computes them on all ranks together). The fresh model runs on the live model's device, in
    the dtype the live forward computes in.
    `state`: the gathered weights of a sharded model; the reloaded tensors must equal them bitwise.
    When a sharded model computes in a lower precision than its fp32 shards (FSDP2 bf16 gathers),
    its kernels see the weights at other addresses and can round differently from the unsharded
    copy's, so there the logits must agree to bf16 rounding (the bitwise weight check is what
    proves the checkpoint holds the live weights; a bf16 logit check alone could not see a stale one).
    Returns the max |logit difference| (0.0 when bitwise equal).
    """
    if expected is None:
        expected = probe_logits(model)
    fresh, _ = load_checkpoint(directory, map_location="cpu")
    if state is not None:
        saved = fresh.state_dict()
        bad = [k for k, v in saved.items() if k not in state or not torch.equal(state[k].to(v.dtype), v)]
        if bad:
            raise CheckpointParityError(f"checkpoint {directory}: tensors {bad[:4]} differ from the live weights")
    dtype = compute_dtype(model)
    fresh = fresh.to(device=next(model.parameters()).device, dtype=dtype)
    got = probe_logits(fresh)
    if torch.equal(expected, got):
        return 0.0
    diff = (expected - got).abs().max().item()
    # 4 bf16 ulps (eps = 2^-7): rounding differences that grow over the layers, not a different model
    if state is not None and dtype != torch.float32 and torch.allclose(got, expected, rtol=2 ** -5, atol=2 ** -5):
        return diff
    raise CheckpointParityError(f"checkpoint {directory} does not reproduce the model: max |logit diff| = {diff:g}")


class SpineCheckpoint(L.Callback):
    """Writes the spine checkpoint format (safetensors + config + tokenizer + manifest).

    - whenever Lightning saves a training checkpoint: `<dirpath>/last` (replaced atomically), then
      reloaded into a fresh model and checked for bitwise-identical logits (`verify=True`);
    - at the end of fit: `<dirpath>/final`, verified the same way.
    `dirpath` defaults to `<trainer.log_dir or default_root_dir>/spine`.
    Under FSDP2 (ModelParallelStrategy) the full weights are gathered to rank 0 (every rank takes part),
    and the parity reference is the sharded model's own forward; a failure on rank 0 is raised on all ranks.
    """

    def __init__(self, dirpath: str | None = None, on_save: bool = True, on_fit_end: bool = True, verify: bool = True):
        self.dirpath = dirpath
        self.on_save = on_save
        self.at_fit_end = on_fit_end
        self.verify = verify
        self.exported: list[Path] = []

    def _dir(self, trainer) -> Path:
        if self.dirpath:
            return Path(self.dirpath)
        return Path(trainer.log_dir or trainer.default_root_dir) / "spine"

    def _export(self, trainer, pl_module, name: str) -> Path | None:
        # Resolve the directory on every rank *before* the rank-0 check: `trainer.log_dir` is a
        # collective (a broadcast) under DDP, and calling it on rank 0 alone deadlocks.
        target = self._dir(trainer) / name
        meta = {"global_step": trainer.global_step, "epoch": trainer.current_epoch}
        tokenizer = getattr(pl_module, "tokenizer", None)
        if is_sharded(pl_module.model):
            return self._export_sharded(trainer, pl_module.model, tokenizer, target, meta)
        if not trainer.is_global_zero:
            return None
        save_checkpoint(target, pl_module.model, tokenizer, metadata=meta)
        if self.verify:
            check_parity(pl_module.model, target)
        self.exported.append(target)
        return target

    def _export_sharded(self, trainer, model, tokenizer, target: Path, meta: dict) -> Path | None:
        state = full_state_dict(model)  # collective; whole tensors on rank 0 only
        expected = probe_logits(model) if self.verify else None  # collective forward
        error = None
        if trainer.is_global_zero:
            try:
                net = build_from_state(model.config, state, where="gathered FSDP weights")
                save_checkpoint(target, net, tokenizer, metadata=meta)
                if self.verify:
                    diff = check_parity(model, target, expected=expected, state=state)
                    if diff:
                        rank_zero_info(f"{target}: weights bitwise equal to the shards; logits within {diff:g} "
                                       f"of the sharded {compute_dtype(model)} forward")
            except Exception as e:  # noqa: BLE001 - re-raised below, after the other ranks hear of it
                error = e
        message = trainer.strategy.broadcast(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        if message is not None:
            raise CheckpointParityError(f"rank 0 failed to write the spine checkpoint {target}: {message}")
        if not trainer.is_global_zero:
            return None
        self.exported.append(target)
        return target

    def setup(self, trainer, pl_module, stage):
        require_gatherable_weights(trainer, "SpineCheckpoint")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if self.on_save:
            self._export(trainer, pl_module, "last")

    def on_fit_end(self, trainer, pl_module):
        if self.at_fit_end:
            path = self._export(trainer, pl_module, "final")
            if path is not None:
                checked = " (reloaded: logits bitwise equal)" if self.verify and not is_sharded(pl_module.model) else ""
                rank_zero_info(f"spine checkpoint written to {path}{checked}")
