"""`spine predict` writes its predictions (PredictionWriter), and `spine classify` labels texts in one line."""
from __future__ import annotations

import json

import pytest
import torch

from tests.support.fit_runner import TINY_MODEL, callback, fit_yaml, run_in_process



def _config(root) -> str:
    """Three steps of a one-layer tiny classifier on `root`/data.tsv, last.ckpt under `root`/ckpt."""
    model = {"class_path": "modules.classifier.ClassifierModule",
             "init_args": {"model": "gpt2-tiny", "model_overrides": {**TINY_MODEL, "n_layer": 1}, "trainable_blocks": -1}}
    data = {"class_path": "datamodules.classification.ClassificationDataModule",
            "init_args": {"path": str(root / "data.tsv"), "label_map": {"ham": 0, "spam": 1}, "tokenizer": "byte",
                          "batch_size": 4}}
    ckpt = callback("lightning.pytorch.callbacks.ModelCheckpoint", dirpath=root / "ckpt", save_last=True, save_top_k=0)
    return fit_yaml(root, model, data, seed=1, max_steps=3, limit_val_batches=1, num_sanity_val_steps=0,
                    enable_progress_bar=False, callbacks=[ckpt])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    rows = [("spam" if i % 3 == 0 else "ham", f"message number {i} " + ("WIN cash now" if i % 3 == 0 else "see you"))
            for i in range(40)]
    (root / "data.tsv").write_text("".join(f"{lab}\t{text}\n" for lab, text in rows))
    (root / "c.yaml").write_text(_config(root))
    code, out = run_in_process(["fit", "--config", str(root / "c.yaml")])
    assert code == 0, out
    return root


def test_predict_writes_one_row_per_test_example(trained):
    root = trained
    code, out = run_in_process(["predict", "--config", str(root / "c.yaml"), "--ckpt_path", str(root / "ckpt" / "last.ckpt")])
    assert code == 0, out
    files = sorted((root / "logs").glob("version_*/predictions.jsonl"))
    assert len(files) == 1
    rows = [json.loads(line) for line in files[0].read_text().split("\n") if line]
    from datamodules.classification import ClassificationDataModule

    dm = ClassificationDataModule(path=str(root / "data.tsv"), label_map={"ham": 0, "spam": 1}, tokenizer="byte")
    test = dm.split("test")
    assert len(rows) == len(test) and [r["index"] for r in rows] == list(range(len(test)))
    for r, (_, label) in zip(rows, test):
        assert r["target"] == label
        assert r["labels"] == max(range(2), key=lambda k: r["probs"][k])
        assert r["label_name"] == ["ham", "spam"][r["labels"]]
        assert sum(r["probs"]) == pytest.approx(1.0, abs=1e-5)


def test_classify_one_line(trained, capsys):
    from modules.classifier import ClassifierModule
    from modules.cli import main
    from spine.tokenizer import get_tokenizer

    ckpt = trained / "ckpt" / "last.ckpt"
    texts = ["WIN cash now!!", "see you at lunch", "naïve café"]
    code = main(["classify", str(ckpt), "--text", texts[0], "--text", texts[1], "--text", texts[2], "--output", "jsonl"])
    out, err = capsys.readouterr()
    assert code == 0, err
    rows = [json.loads(line) for line in out.split("\n") if line]
    assert [r["text"] for r in rows] == texts
    # the same probabilities as the module on each text alone (no padding), tokenized independently
    module = ClassifierModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    byte = get_tokenizer("byte")
    for r, t in zip(rows, texts):
        with torch.no_grad():
            p = module(torch.tensor([byte.encode(t)])).float().softmax(-1)[0]
        assert r["probs"] == pytest.approx(p.tolist(), abs=1e-5)
        assert r["label_name"] == ["ham", "spam"][int(p.argmax())]
    code = main(["classify", str(ckpt)])
    assert code == 2 and "--text" in capsys.readouterr().err
