"""Pretraining: next-token cross-entropy normalised by target tokens, token-weighted perplexity."""
from __future__ import annotations

from typing import Any

import torch
from torchmetrics import MeanMetric

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from spine.speed import float8_linears
from spine.training import make_loss_fn

from .base import SpineModule


class PretrainModule(SpineModule):
    """Next-token prediction on batches {"input_ids", "targets"} (targets = inputs shifted by one).

    Logs `train_loss` (the optimizer step's token mean over all micro-batches and ranks), `val_loss` (token-weighted over the whole
    validation set, synced across devices) and `val_ppl = exp(val_loss)`.
    """

    supports_sharding = True

    def __init__(self, *args: Any, chunked_ce: bool = False, float8: bool = False, **kwargs: Any):
        """Pretraining; every other argument is `SpineModule`'s.

        Args:
            chunked_ce: cross-entropy in chunks of tokens (less memory, slower).
            float8: train the blocks' linear layers with float8 matmuls (torchao, GPUs of compute
                capability 8.9+; `spine.speed.float8_linears`). Where it cannot run, one warning says why
                and training goes on without it. Pretraining only: the other stages keep frozen
                reference copies (GRPO, DPO) and LoRA bases that a swap would leave out of step.
        """
        super().__init__(*args, **kwargs)
        self.chunked_ce = chunked_ce
        self.float8 = float8
        self.val_loss = MeanMetric()
        self.flops_per_batch = 0

    def configure_model(self) -> None:
        self._float8()
        self._shard()
        if self.chunked_ce and getattr(self, "_sharded", False):
            # the chunked loss reads lm_head.weight outside the forward, where FSDP2 holds only a shard
            raise ValueError("PretrainModule: chunked_ce is not supported with ModelParallelStrategy (FSDP2); "
                             "set --model.init_args.chunked_ce=false")
        # compile the loss step whole (model + cross-entropy) rather than the model alone
        if getattr(self, "_loss_fn", None) is None:
            # sharded: the blocks were compiled one by one in `_shard`; compile the cross-entropy alone
            compile = bool(self.hparams.compile)
            if compile and getattr(self, "_sharded", False):
                compile = "loss"
            self._loss_fn = make_loss_fn(self.model, chunked=self.chunked_ce, compile=compile)

    def _float8(self) -> None:
        """Swap in float8 linears once, before sharding and compiling."""
        if not self.float8 or getattr(self, "_float8_done", False):
            return
        self._float8_done = True
        names, why = float8_linears(self.model)
        if why:
            rank_zero_warn(f"float8: not used ({why}); training continues without it")
        else:
            rank_zero_info(f"float8: {len(names)} linear layers train with float8 matmuls")

    def _loss(self, batch):
        if getattr(self, "_loss_fn", None) is None:
            self.configure_model()
        return self._loss_fn(batch["input_ids"], batch["targets"])

    def training_step(self, batch, batch_idx):
        loss_sum, n = self._loss(batch)
        B, T = batch["input_ids"].shape
        self.flops_per_batch = int(self.model.config.flops_per_token(T) * B * T)
        return self.backward_loss(loss_sum, n, reference=B * T)

    def validation_step(self, batch, batch_idx):
        loss_sum, n = self._loss(batch)
        n = n.clamp_min(1)
        self.val_loss.update(loss_sum / n, weight=n)

    def on_validation_epoch_end(self):
        value = self.val_loss.compute()
        self.val_loss.reset()
        self.log("val_loss", value, prog_bar=True, sync_dist=False)
        self.log("val_ppl", torch.exp(value.clamp(max=50.0)))

    def test_step(self, batch, batch_idx):
        return self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self):
        value = self.val_loss.compute()
        self.val_loss.reset()
        self.log("test_loss", value)
        self.log("test_ppl", torch.exp(value.clamp(max=50.0)))

    def predict_step(self, batch, batch_idx):
        return self.model(batch["input_ids"])
