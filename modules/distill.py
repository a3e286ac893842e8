"""Logit knowledge distillation: the instruction stage with a frozen teacher's soft targets.

Loss per target token: alpha * CE + (1 - alpha) * tau^2 * D(teacher || student) (see `spine.distill`),
summed and token-normalised like every stage (`backward_loss`). Everything else (LoRA, export, data,
prompt masking) is `InstructionModule`'s: any SFT data module works, e.g. the book's instruction data
or `datamodules.trace_sft.TraceSFTDataModule`.
"""
from __future__ import annotations

from typing import Any

import torch
from torchmetrics import MeanMetric

from spine.distill import check_kd_args, check_same_tokenizer, kd_loss_sum
from spine.engine import load_model

from .instruction import InstructionModule


class DistillModule(InstructionModule):
    """Student = the usual `model`/`init_from`; teacher = any `load_model` spec (spine dir or `hf:PATH`).

    The teacher is frozen, in eval mode, kept outside the module tree (so it is neither trained,
    nor saved in checkpoints, nor sharded) and moved to the student's device on first use. Its
    tokenizer must be the student's (checked at construction when the student has one, else at setup).
    divergence: "forward_kl" | "reverse_kl" | "jsd". kd_chunk_size: target tokens per logits chunk.
    Logs val_loss (the KD objective) and val_ce (the student's plain cross-entropy).
    """

    def __init__(self, *args: Any, teacher: str, alpha: float = 0.5, temperature: float = 1.0,
                 divergence: str = "forward_kl", kd_chunk_size: int = 1024, **kwargs: Any):
        super().__init__(*args, **kwargs)
        check_kd_args(alpha, temperature, divergence)
        self.alpha, self.temperature, self.divergence, self.kd_chunk_size = alpha, temperature, divergence, kd_chunk_size
        t_model, t_tok = load_model(teacher)
        for p in t_model.parameters():
            p.requires_grad_(False)
        self._teacher = [t_model]  # a list: not a submodule (not trained, saved or moved by Lightning)
        self.teacher_tokenizer = t_tok
        self.teacher_spec = teacher
        if t_model.config.vocab_size != self.model.config.vocab_size:
            raise ValueError(f"teacher {teacher}: vocab_size {t_model.config.vocab_size} differs from the student's "
                             f"{self.model.config.vocab_size}; logit KD needs one shared vocabulary")
        if self.tokenizer is not None:
            check_same_tokenizer(self.tokenizer, t_tok, f"teacher {teacher}")
        ctx = self.hparams.context_length
        if ctx is not None and ctx > t_model.config.context_length:
            raise ValueError(f"teacher {teacher}: context_length {t_model.config.context_length} is shorter than the "
                             f"data's {ctx}")
        self.val_ce = MeanMetric()

    @property
    def teacher(self) -> torch.nn.Module:
        t = self._teacher[0]
        ref = self.model.tok_emb.weight
        if t.tok_emb.weight.device != ref.device:
            t.to(ref.device)
        return t

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = self.trainer.datamodule if self._trainer is not None else None
        check_same_tokenizer(self.tokenizer if self.tokenizer is not None else getattr(dm, "tokenizer", None),
                             self.teacher_tokenizer, f"teacher {self.teacher_spec}")

    def _kd(self, batch, alpha: float):
        x, y = batch["input_ids"], batch["targets"]
        hs = self.model(x, return_hidden=True)
        ht = t_head = None
        if alpha < 1:
            t = self.teacher
            with torch.no_grad():
                ht = t(x, return_hidden=True)
            t_head = t.lm_head
        return kd_loss_sum(hs, self.model.lm_head, ht, t_head, y, alpha=alpha, temperature=self.temperature,
                           divergence=self.divergence, vocab_size=self.model.config.vocab_size,
                           chunk_size=self.kd_chunk_size)

    def _loss(self, batch):
        return self._kd(batch, self.alpha)

    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)
        ce, n = self._kd(batch, 1.0)
        if int(n) > 0:
            self.val_ce.update(ce / n, weight=n)

    def on_validation_epoch_end(self):
        super().on_validation_epoch_end()
        if self.val_ce.update_called:
            self.log("val_ce", self.val_ce.compute())
        self.val_ce.reset()
