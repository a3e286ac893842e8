"""Write what `spine predict` computes: one JSON line per example (Lightning's BasePredictionWriter)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn


def rows_from_output(output: Any, batch_size: int) -> list[dict[str, Any]]:
    """Split one `predict_step` output into per-example JSON-able dicts.

    A dict of batched tensors gives one field per key (per-example values of up to one dimension:
    labels, probabilities); a bare tensor becomes the field "prediction". Larger per-example
    tensors (e.g. full logits) are left out: a JSON file is the wrong place for them.
    """
    fields = output if isinstance(output, dict) else {"prediction": output}
    rows: list[dict[str, Any]] = [{} for _ in range(batch_size)]
    for key, value in fields.items():
        if isinstance(value, torch.Tensor):
            if value.dim() == 0 or value.shape[0] != batch_size or value.dim() > 2:
                continue
            for i, v in enumerate(value.detach().cpu().tolist()):
                rows[i][key] = v
        elif isinstance(value, (list, tuple)) and len(value) == batch_size:
            for i, v in enumerate(value):
                rows[i][key] = v
    return rows


class PredictionWriter(BasePredictionWriter):
    """Append each predict batch's rows to `path` (default `<log_dir>/predictions.jsonl`).

    Each row: `index` (position in the predict set), the module's output fields, and for
    classifiers `label_name` (from the data module's `label_names`) and `target` when the batch has labels.
    Under DDP each rank writes `predictions.rank<R>.jsonl` (DistributedSampler order).
    """

    def __init__(self, path: str | None = None):
        super().__init__(write_interval="batch")
        self.path = path
        self.written: Path | None = None
        self.n = 0
        self._skipped_warned = False

    def _target(self, trainer) -> Path:
        root = Path(trainer.log_dir or trainer.default_root_dir)
        path = Path(self.path) if self.path else root / "predictions.jsonl"
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        return path

    def on_predict_start(self, trainer, pl_module):
        self.written = self._target(trainer)
        self.written.parent.mkdir(parents=True, exist_ok=True)
        self.written.write_text("")  # this run's predictions only
        self.n = 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        ids = batch.get("input_ids") if isinstance(batch, dict) else None
        size = int(ids.shape[0]) if ids is not None else len(batch_indices or [])
        rows = rows_from_output(prediction, size)
        names = getattr(trainer.datamodule, "label_names", None)
        targets = batch.get("labels") if isinstance(batch, dict) else None
        if not any(rows) and not self._skipped_warned:
            rank_zero_warn("PredictionWriter: the predict_step output has no per-example fields of up to one "
                           "dimension (e.g. full logits); only indices are written")
            self._skipped_warned = True
        with open(self.written, "a", encoding="utf-8") as f:
            for i, row in enumerate(rows):
                out = {"index": int(batch_indices[i]) if batch_indices else self.n, **row}
                if names and isinstance(row.get("labels"), int) and 0 <= row["labels"] < len(names):
                    out["label_name"] = names[row["labels"]]
                if isinstance(targets, torch.Tensor) and targets.dim() == 1 and targets.shape[0] == size:
                    out["target"] = int(targets[i])
                f.write(json.dumps(out, ensure_ascii=False) + "\n")
                self.n += 1

    def on_predict_end(self, trainer, pl_module):
        rank_zero_info(f"predictions: {self.written} ({self.n} rows)")
