"""The fine-tuning stages under DDP on CPU: real `spine fit` with 2 gloo ranks, then `spine validate`
of the saved checkpoint in one process.

Per stage (classification with torchmetrics accuracy/F1, instruction with -100-masked token loss):
- both ranks end with bitwise identical weights (a rank-dependent normaliser would make them drift:
  see the token-normalisation test in tests/test_ddp.py);
- the validation metrics logged under DDP (each rank sees half of the val split; torchmetrics sync
  them) equal those of a single process validating the same checkpoint over the whole split.
Val splits are sized to divide by 2, so Lightning's DistributedSampler repeats no sample.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "support"))
from fit_runner import ACCELERATOR, TINY_MODEL, callback, fit_yaml, spine_fit  # noqa: E402

STEPS = 6
STAGES = {  # (model, data) of each stage; the data's `path` is filled in by the test
    "classifier": ({"class_path": "modules.classifier.ClassifierModule",
                    "init_args": {"model": "gpt2-tiny", "model_overrides": TINY_MODEL, "trainable_blocks": -1,
                                  "lr": 3.0e-3}},
                   {"class_path": "datamodules.classification.ClassificationDataModule",
                    "init_args": {"label_map": {"ham": 0, "spam": 1}, "tokenizer": "byte", "batch_size": 4}}),
    "instruction": ({"class_path": "modules.instruction.InstructionModule",
                     "init_args": {"model": "gpt2-tiny", "model_overrides": {**TINY_MODEL, "context_length": 256},
                                   "lr": 3.0e-3}},
                    {"class_path": "datamodules.instruction.InstructionDataModule",
                     "init_args": {"tokenizer": "byte", "batch_size": 2, "mask_prompt": True}}),
}


def _config(root: Path, model: dict, data: dict, devices: int, strategy: str) -> str:
    """STEPS steps on `devices` ranks, validation at the end, last.ckpt and every rank's final weights saved."""
    callbacks = [callback("lightning.pytorch.callbacks.ModelCheckpoint", dirpath=root / "ckpt", save_last=True),
                 callback("ddp_probe.FinalWeights", dirpath=root / "weights")]
    return fit_yaml(root, model, data, seed=7, accelerator=ACCELERATOR, devices=devices, strategy=strategy,
                    max_steps=STEPS, val_check_interval=STEPS, check_val_every_n_epoch=None, num_sanity_val_steps=0,
                    log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)


def _data(stage: str, tmp: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    words = ["win", "prize", "call", "now", "free", "hi", "see", "you", "lunch", "ok", "later", "cash"]

    def text(n: int) -> str:
        return " ".join(words[i] for i in torch.randint(0, len(words), (n,), generator=g).tolist())

    if stage == "classifier":  # 100 + 100 rows: 140 train, 20 val, 40 test
        path = tmp / "sms.tsv"
        rows = [f"{'spam' if i % 2 else 'ham'}\t{text(3 + i % 7)}" for i in range(200)]
        path.write_text("\n".join(rows) + "\n")
    else:  # 80 records: 68 train, 4 val, 8 test; lengths vary a lot, so ranks' target counts differ
        path = tmp / "instructions.json"
        recs = [{"instruction": f"Repeat: {text(2 + i % 5)}", "input": text(i % 3),
                 "output": text(1 + (i * 7) % 11)} for i in range(80)]
        path.write_text(json.dumps(recs))
    return path


def _metrics(root: Path) -> dict[str, float]:
    """The last logged value of every val_* column of the run's metrics.csv."""
    (path,) = root.glob("logs/version_*/metrics.csv")
    out = {}
    for row in csv.DictReader(path.open()):
        out.update({k: float(v) for k, v in row.items() if k.startswith("val_") and v})
    return out


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_fine_tuning_stage_under_ddp(stage, tmp_path):
    model, data = STAGES[stage]
    data = {**data, "init_args": {"path": str(_data(stage, tmp_path)), **data["init_args"]}}
    root = tmp_path / "ddp"
    root.mkdir()
    cfg = _config(root, model, data, devices=2, strategy="ddp")
    fit = spine_fit(cfg, root)
    assert fit.returncode == 0, fit.stderr[-4000:]
    w0, w1 = (load_file(root / "weights" / f"rank{r}.safetensors") for r in range(2))
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0), "ranks' weights differ"
    ddp = _metrics(root)
    assert "val_loss" in ddp and (stage != "classifier" or "val_acc" in ddp), ddp

    one = tmp_path / "single"
    one.mkdir()
    cfg = _config(one, model, data, devices=1, strategy="auto")
    val = spine_fit(cfg, one, "--ckpt_path", str(root / "ckpt" / "last.ckpt"), subcommand="validate")
    assert val.returncode == 0, val.stderr[-4000:]
    single = _metrics(one)
    assert single.keys() == ddp.keys()
    for k in ddp:  # summation order differs (2 shards vs one pass): agreement to float32 rounding
        assert ddp[k] == pytest.approx(single[k], rel=1e-5, abs=1e-6), (k, ddp[k], single[k])
