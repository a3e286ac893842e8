"""DPO (Raschka ch.7 bonus; Rafailov et al. 2023): the instruction stage with a pairwise loss.

The mathematics is `spine.dpo`; the data `datamodules.preference.PreferenceDataModule`. LoRA, export
and the optimizer are `InstructionModule`'s. The reference model is either a frozen copy of the
starting policy (`reference: copy`) or the policy itself with its LoRA adapters switched off
(`reference: lora`, no second copy of the weights; needs `lora`).
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric

from spine.dpo import REDUCTIONS, DPOOutput, check_beta, dpo_loss, sequence_scores
from spine.lora import lora_disabled, merged_copy

from .instruction import InstructionModule

METRICS = ("loss", "chosen_reward", "rejected_reward", "margin", "accuracy")
REFERENCES = ("copy", "lora")


class DPOModule(InstructionModule):
    """beta: the DPO temperature. reduction: "mean" (book, default) or "sum" (paper) sequence log-probs.

    Logs per step train_loss (via the token normaliser: the mean over pairs of the step),
    train_chosen_reward, train_rejected_reward, train_margin, train_accuracy; per validation the same
    with val_. `last_val` holds the latest validation means also during the sanity check, so a plot
    can show the starting point (set trainer.num_sanity_val_steps: -1 to score the whole split).
    """

    def __init__(self, *args: Any, beta: float = 0.1, reduction: str = "mean", reference: str = "copy",
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        check_beta(beta)
        if reduction not in REDUCTIONS:
            raise ValueError(f"DPOModule: reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if reference not in REFERENCES:
            raise ValueError(f"DPOModule: reference must be one of {REFERENCES}, got {reference!r}")
        if reference == "lora" and self.lora is None:
            raise ValueError("DPOModule: reference 'lora' (the policy with adapters disabled) needs lora: {rank: ...}")
        self.beta, self.reduction, self.reference = beta, reduction, reference
        self._reference: list[nn.Module] = []
        if reference == "copy":
            ref = merged_copy(self.model) if self.lora is not None else copy.deepcopy(self.model)
            for p in ref.parameters():
                p.requires_grad_(False)
            self._reference = [ref.eval()]  # a list: not a submodule (not trained or saved)
        self.metrics = nn.ModuleDict({f"{s}_{m}": MeanMetric() for s in ("val", "test") for m in METRICS})
        self.last_val: dict[str, float] = {}

    def _reference_scores(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self.reference == "lora":
                was = self.model.training
                self.model.eval()  # the reference has no dropout
                try:
                    with lora_disabled(self.model):
                        return sequence_scores(self.model, ids, mask, self.reduction)
                finally:
                    self.model.train(was)
            ref = self._reference[0]
            if ref.tok_emb.weight.device != ids.device:
                ref.to(ids.device)
            return sequence_scores(ref, ids, mask, self.reduction)

    def dpo_step(self, batch) -> DPOOutput:
        """Both sides in one forward of 2B rows (the collate pads them to one length)."""
        ids = torch.cat([batch["chosen_ids"], batch["rejected_ids"]])
        mask = torch.cat([batch["chosen_mask"], batch["rejected_mask"]])
        B = batch["chosen_ids"].shape[0]
        pol = sequence_scores(self.model, ids, mask, self.reduction)
        ref = self._reference_scores(ids, mask)
        return dpo_loss(pol[:B], pol[B:], ref[:B], ref[B:], beta=self.beta)

    @staticmethod
    def _values(out: DPOOutput) -> dict[str, torch.Tensor]:
        n = out.count.clamp_min(1).float()
        return {"loss": out.loss_sum.detach() / n, "chosen_reward": out.chosen_reward_sum / n,
                "rejected_reward": out.rejected_reward_sum / n, "margin": out.margin_sum / n,
                "accuracy": out.correct.float() / n}

    def training_step(self, batch, batch_idx):
        out = self.dpo_step(batch)
        for k, v in self._values(out).items():
            if k != "loss":  # train_loss is the optimizer step's mean, logged by the base class
                self.log(f"train_{k}", v, on_step=True, on_epoch=False)
        return self.backward_loss(out.loss_sum, out.count)

    def _eval(self, batch, split: str) -> None:  # type: ignore[override]
        out = self.dpo_step(batch)
        for k, v in self._values(out).items():
            self.metrics[f"{split}_{k}"].update(v, weight=out.count)

    def validation_step(self, batch, batch_idx):
        self._eval(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval(batch, "test")

    def _epoch_end(self, split: str) -> dict[str, float]:
        vals = {}
        for m in METRICS:
            metric = self.metrics[f"{split}_{m}"]
            if metric.update_called:
                v = metric.compute()
                vals[m] = float(v)
                self.log(f"{split}_{m}", v, prog_bar=m in ("loss", "margin"))
            metric.reset()
        return vals

    def on_validation_epoch_end(self):
        self.last_val = self._epoch_end("val")

    def on_test_epoch_end(self):
        self._epoch_end("test")
