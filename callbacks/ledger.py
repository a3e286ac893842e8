"""What a fit cost: trained tokens, optimizer steps and wall time, written as one JSON file.

`spine ladder` adds it to every `spine fit` of the chain (class path `callbacks.ledger.TrainingLedger`)
so that every rung's report row gets its training tokens and time the same way, whatever the stage.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import lightning.pytorch as L


def batch_tokens(batch) -> int | None:
    """Tokens a training batch trains on: target positions that take a loss (`targets != -100`),
    else every input position; None for batches without token tensors (e.g. GRPO prompt batches)."""
    if not isinstance(batch, dict):
        return None
    targets = batch.get("targets")
    if targets is not None and hasattr(targets, "ne"):
        return int(targets.ne(-100).sum())
    ids = batch.get("input_ids")
    if ids is not None and hasattr(ids, "numel"):
        return int(ids.numel())
    return None


class TrainingLedger(L.Callback):
    """Writes `path` at the end of fit: {"tokens", "token_source", "steps", "fit_seconds", "parameters"}.

    Tokens: a stage that counts its own (an int attribute `tokens_seen` on the LightningModule, e.g.
    rollout + update tokens of an RL stage) is trusted; otherwise the tokens of the training batches
    seen on this rank (see `batch_tokens`) times the world size. `fit_seconds` is the wall time from
    fit start to fit end (in-fit evaluation callbacks included: they are part of what the stage costs).
    Written by rank 0 only, atomically; a resumed fit counts only what it ran itself.
    """

    def __init__(self, path: str):
        self.path = Path(path)
        self.tokens = 0
        self.counted = True
        self.t0 = 0.0

    def on_fit_start(self, trainer, pl_module) -> None:
        self.t0 = time.perf_counter()
        self.tokens, self.counted = 0, True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = batch_tokens(batch)
        if n is None:
            self.counted = False
        else:
            self.tokens += n

    def on_fit_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        own = getattr(pl_module, "tokens_seen", None)
        if isinstance(own, (int, float)) and not isinstance(own, bool):
            tokens, source = int(own), f"{type(pl_module).__name__}.tokens_seen"
        elif self.counted:
            tokens, source = self.tokens * trainer.world_size, "training batches (targets != -100)"
        else:
            tokens, source = None, f"{type(pl_module).__name__} batches carry no token tensors and it keeps no tokens_seen"
        model = getattr(pl_module, "model", pl_module)
        params = model.num_params() if hasattr(model, "num_params") else sum(p.numel() for p in model.parameters())
        out = {"tokens": tokens, "token_source": source, "steps": int(trainer.global_step),
               "fit_seconds": round(time.perf_counter() - self.t0, 3), "parameters": int(params),
               "stage": type(pl_module).__name__}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(out, indent=2) + "\n")
        os.replace(tmp, self.path)
