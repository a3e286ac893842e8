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
from fit_runner import ACCELERATOR, spine_fit  # noqa: E402

STEPS = 6
CONFIG = """
seed_everything: 7
trainer:
  accelerator: {accelerator}
  devices: {devices}
  strategy: {strategy}
  max_steps: {steps}
  val_check_interval: {steps}
  check_val_every_n_epoch: null
  num_sanity_val_steps: 0
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {root}
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args: {{save_dir: {root}, name: logs}}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: {root}/ckpt, save_last: true}}
    - class_path: ddp_probe.FinalWeights
      init_args: {{dirpath: {root}/weights}}
model:
{model}
data:
{data}
"""
STAGES = {
    "classifier": ("""  class_path: modules.classifier.ClassifierModule
  init_args:
    model: gpt2-tiny
    model_overrides: {d_model: 32, n_layer: 2, n_head: 2}
    trainable_blocks: -1
    lr: 3.0e-3""", """  class_path: datamodules.classification.ClassificationDataModule
  init_args: {{path: {path}, label_map: {{ham: 0, spam: 1}}, tokenizer: byte, batch_size: 4}}"""),
    "instruction": ("""  class_path: modules.instruction.InstructionModule
  init_args:
    model: gpt2-tiny
    model_overrides: {d_model: 32, n_layer: 2, n_head: 2, context_length: 256}
    lr: 3.0e-3""", """  class_path: datamodules.instruction.InstructionDataModule
  init_args: {{path: {path}, tokenizer: byte, batch_size: 2, mask_prompt: true}}"""),
}


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
    data = data.format(path=_data(stage, tmp_path))
    root = tmp_path / "ddp"
    root.mkdir()
    cfg = CONFIG.format(accelerator=ACCELERATOR, devices=2, strategy="ddp", steps=STEPS, root=root,
                        model=model, data=data)
    fit = spine_fit(cfg, root)
    assert fit.returncode == 0, fit.stderr[-4000:]
    w0, w1 = (load_file(root / "weights" / f"rank{r}.safetensors") for r in range(2))
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0), "ranks' weights differ"
    ddp = _metrics(root)
    assert "val_loss" in ddp and (stage != "classifier" or "val_acc" in ddp), ddp

    one = tmp_path / "single"
    one.mkdir()
    cfg = CONFIG.format(accelerator=ACCELERATOR, devices=1, strategy="auto", steps=STEPS, root=one,
                        model=model, data=data)
    val = spine_fit(cfg, one, "--ckpt_path", str(root / "ckpt" / "last.ckpt"), subcommand="validate")
    assert val.returncode == 0, val.stderr[-4000:]
    single = _metrics(one)
    assert single.keys() == ddp.keys()
    for k in ddp:  # summation order differs (2 shards vs one pass): agreement to float32 rounding
        assert ddp[k] == pytest.approx(single[k], rel=1e-5, abs=1e-6), (k, ddp[k], single[k])
