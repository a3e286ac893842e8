"""Classification fine-tuning (Raschka ch.6): the core GPT with a `num_classes` head on the last real token."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

from spine.classify import (POOLINGS, check_tokenizers_agree, classify, freeze_for_classification, head_size_of,
                            replace_head)
from spine.lora import DEFAULT_TARGETS, apply_lora

from .base import SpineModule

LORA_KEYS = {"rank", "alpha", "targets", "dropout"}


def lora_kwargs(lora: dict | None) -> dict | None:
    """Validate the YAML `lora:` block ({rank, alpha, targets, dropout}) and fill defaults."""
    if lora is None:
        return None
    if not isinstance(lora, dict):
        raise ValueError(f"lora must be a mapping with keys {sorted(LORA_KEYS)}, got {lora!r}")
    unknown = set(lora) - LORA_KEYS
    if unknown:
        raise ValueError(f"lora: unknown key(s) {sorted(unknown)}; known keys: {sorted(LORA_KEYS)}")
    return {"rank": int(lora.get("rank", 8)), "alpha": float(lora.get("alpha", 16.0)),
            "targets": list(lora.get("targets") or DEFAULT_TARGETS), "dropout": float(lora.get("dropout", 0.0))}


class ClassifierModule(SpineModule):
    """Sequence classification on batches {"input_ids", "labels", "lengths"} (right-padded).

    num_classes: None takes the data module's `num_classes` at setup (or checks it when given).
    trainable_blocks: the book trains the last block + final norm + head (1); -1 trains everything
      (use it from random init). Ignored with `lora`, where only the adapters and the head train.
    pooling: "last" (last real token, book) or "mean" (mean over real tokens).
    Logs train_loss, val_loss, val_acc, val_f1 (macro), test_loss, test_acc, test_f1; the confusion
    matrices are printed and kept in `self.confusion[stage]` (rows = true class, columns = predicted).
    """

    def __init__(self, *args: Any, num_classes: int | None = None, trainable_blocks: int = 1,
                 pooling: str = "last", lora: dict | None = None, head_seed: int | None = 123, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # load_checkpoint returns an eval-mode model and Lightning keeps submodule modes: train it
        self.model.train()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        self.lora = lora_kwargs(lora)
        self.num_classes: int | None = None
        self.confusion: dict[str, list[list[int]]] = {}
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        if num_classes is not None:
            self._build_head(num_classes)

    # ------------------------------------------------------------------ head, freezing, metrics
    def _build_head(self, num_classes: int) -> None:
        replace_head(self.model, num_classes, seed=self.hparams.head_seed)
        if self.lora is not None:
            apply_lora(self.model, trainable=["lm_head"], **self.lora)
        else:
            freeze_for_classification(self.model, self.hparams.trainable_blocks)
        self.num_classes = num_classes
        self.hparams.num_classes = num_classes  # saved with Lightning checkpoints: load_from_checkpoint rebuilds it
        kw = {"num_classes": num_classes}
        self.train_acc = MulticlassAccuracy(average="micro", **kw)
        self.val_acc, self.test_acc = MulticlassAccuracy(average="micro", **kw), MulticlassAccuracy(average="micro", **kw)
        self.val_f1, self.test_f1 = MulticlassF1Score(average="macro", **kw), MulticlassF1Score(average="macro", **kw)
        self.val_cm, self.test_cm = MulticlassConfusionMatrix(**kw), MulticlassConfusionMatrix(**kw)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = self.trainer.datamodule if self._trainer is not None else None
        check_tokenizers_agree(getattr(dm, "tokenizer", None), self.tokenizer, "ClassifierModule: ")
        data_classes = getattr(dm, "num_classes", None)
        if self.num_classes is None:
            if data_classes is None:
                raise ValueError("ClassifierModule: num_classes is not set and the data module has no num_classes")
            self._build_head(int(data_classes))
        elif data_classes is not None and int(data_classes) != self.num_classes:
            names = getattr(dm, "label_names", None)
            raise ValueError(f"ClassifierModule has a {self.num_classes}-class head but the data has {data_classes} "
                             f"classes {names or ''}; set model num_classes: {data_classes} (or leave it unset)")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        stored = head_size_of(checkpoint.get("state_dict", {}))
        if stored is not None and self.num_classes is not None and stored != self.num_classes:
            raise ValueError(f"the checkpoint's classification head has {stored} classes but this model has "
                             f"{self.num_classes}; resume with the same labels (num_classes / label_map)")
        super().on_load_checkpoint(checkpoint)

    # ------------------------------------------------------------------ steps
    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits (B, num_classes)."""
        return classify(self.model, input_ids, lengths, self.pooling)

    def _logits_loss(self, batch):
        logits = self(batch["input_ids"], batch["lengths"]).float()
        return logits, F.cross_entropy(logits, batch["labels"], reduction="sum")

    def training_step(self, batch, batch_idx):
        logits, loss_sum = self._logits_loss(batch)
        n = batch["labels"].numel()
        self.train_acc(logits.argmax(-1), batch["labels"])
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True, batch_size=n)
        # One target per example, so "token" normalisation is example normalisation: the objective is
        # the mean cross-entropy over the examples of the accumulation window. Equal micro-batches would
        # average correctly on their own; backward_loss keeps it exact when the last batch is ragged.
        return self.backward_loss(loss_sum, n)

    def _eval_step(self, batch, stage: str) -> None:
        logits, loss_sum = self._logits_loss(batch)
        labels, preds, n = batch["labels"], logits.argmax(-1), batch["labels"].numel()
        getattr(self, f"{stage}_loss").update(loss_sum / n, weight=n)
        for name in ("acc", "f1", "cm"):
            getattr(self, f"{stage}_{name}").update(preds, labels)

    def _eval_epoch_end(self, stage: str) -> None:
        loss = getattr(self, f"{stage}_loss")
        self.log(f"{stage}_loss", loss.compute(), prog_bar=stage == "val")
        for name in ("acc", "f1"):
            metric = getattr(self, f"{stage}_{name}")
            self.log(f"{stage}_{name}", metric.compute(), prog_bar=stage == "val")
            metric.reset()
        cm = getattr(self, f"{stage}_cm")
        self.confusion[stage] = cm.compute().tolist()
        loss.reset()
        cm.reset()
        if stage == "test":
            rank_zero_info(f"test confusion matrix (rows = true, columns = predicted): {self.confusion[stage]}")

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self):
        self._eval_epoch_end("val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def on_test_epoch_end(self):
        self._eval_epoch_end("test")

    def predict_step(self, batch, batch_idx):
        probs = self(batch["input_ids"], batch.get("lengths")).float().softmax(-1)
        return {"labels": probs.argmax(-1), "probs": probs}
