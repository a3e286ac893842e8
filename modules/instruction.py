"""Instruction fine-tuning (Raschka ch.7): masked next-token loss normalised by target tokens."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torchmetrics import MeanMetric

from spine.checkpoint import save_checkpoint
from spine.classify import check_tokenizers_agree
from spine.lora import apply_lora, merged_copy, save_lora
from spine.training import lm_loss_sum

from .base import SpineModule
from .classifier import lora_kwargs


class InstructionModule(SpineModule):
    """Supervised fine-tuning on batches {"input_ids", "targets"} (-100 = no loss; see `spine.instruct`).

    The loss is the sum over target tokens divided by the number of target tokens in the whole
    accumulation window (`backward_loss`), so short and long answers weigh by their tokens.
    lora: {rank, alpha, targets, dropout}: only the adapters train (`spine.lora`).
    export_dir: at the end of fit, write a spine checkpoint there (adapters merged, plain GPT names,
      loadable by `load_checkpoint` / `init_from`), plus `<export_dir>.lora.safetensors` with LoRA.
    Logs train_loss (the optimizer step's token mean over all micro-batches and ranks), val_loss and test_loss (token-weighted over the split).
    """

    def __init__(self, *args: Any, lora: dict | None = None, chunked_ce: bool = False,
                 export_dir: str | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # load_checkpoint returns an eval-mode model and Lightning keeps submodule modes: train it
        self.model.train()
        self.chunked_ce = chunked_ce
        self.export_dir = export_dir
        self.lora = lora_kwargs(lora)
        if self.lora is not None:
            apply_lora(self.model, **self.lora)
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = self.trainer.datamodule if self._trainer is not None else None
        check_tokenizers_agree(getattr(dm, "tokenizer", None), self.tokenizer, "InstructionModule: ")

    def _loss(self, batch):
        return lm_loss_sum(self.model, batch["input_ids"], batch["targets"], chunked=self.chunked_ce)

    def training_step(self, batch, batch_idx):
        loss_sum, n = self._loss(batch)
        return self.backward_loss(loss_sum, n)

    def _eval(self, batch, metric: MeanMetric) -> None:
        loss_sum, n = self._loss(batch)
        if int(n) > 0:  # a batch whose targets are all masked carries no information
            metric.update(loss_sum / n, weight=n)

    def validation_step(self, batch, batch_idx):
        self._eval(batch, self.val_loss)

    def on_validation_epoch_end(self):
        if self.val_loss.update_called:
            self.log("val_loss", self.val_loss.compute(), prog_bar=True)
        self.val_loss.reset()

    def test_step(self, batch, batch_idx):
        self._eval(batch, self.test_loss)

    def on_test_epoch_end(self):
        if self.test_loss.update_called:
            self.log("test_loss", self.test_loss.compute())
        self.test_loss.reset()

    def predict_step(self, batch, batch_idx):
        return self.model(batch["input_ids"])

    def on_fit_end(self) -> None:
        if self.export_dir:
            self.export(self.export_dir)

    @rank_zero_only
    def export(self, directory: str) -> Path:
        """Write the fine-tuned model as a spine checkpoint (LoRA merged) and, with LoRA, the adapters alone."""
        plain = merged_copy(self.model) if self.lora is not None else self.model
        meta = {"stage": "instruction", "global_step": int(self.trainer.global_step) if self._trainer else 0,
                "init_from": self.hparams.init_from, "lora": self.lora}
        path = save_checkpoint(directory, plain, self.tokenizer, metadata=meta)
        if self.lora is not None:
            save_lora(self.model, f"{str(directory).rstrip('/')}.lora.safetensors")
        rank_zero_info(f"exported the fine-tuned model to {path}")
        return path
