"""Classification: SMS balancing/split counts, pandas parity, pooling under padding, freezing, errors, fits."""
from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import pytest
import torch

from datamodules.classification import (ClassificationDataModule, balance_indices, map_labels, pad_batch,
                                        read_table, resolve_columns, split_indices)
from spine.classify import classify, freeze_for_classification, pool_hidden, replace_head
from spine.config import ModelConfig
from spine.model import GPT

sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))
from fit_runner import run_in_process  # noqa: E402  (shared with the other CLI tests)


def sms(shared_data):
    return shared_data / "sms-spam" / "SMSSpamCollection"


def test_sms_balance_and_book_split_counts(shared_data, gpt2_vocab_dir):
    dm = ClassificationDataModule(str(sms(shared_data)), vocab_dir=str(gpt2_vocab_dir))
    assert dm.label_names == ["ham", "spam"] and dm.num_classes == 2
    assert dm.class_counts["train"][0] + dm.class_counts["val"][0] + dm.class_counts["test"][0] == 747
    assert [len(dm.split(s)) for s in ("train", "val", "test")] == [1045, 149, 300]
    assert dm.pad_id == 50256 and dm.vocab_size == 50257
    assert dm.context_length == 120  # the book: longest training text = 120 GPT-2 tokens
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_ids"].shape[0] == 8 and batch["labels"].shape == (8,) and batch["lengths"].shape == (8,)
    row = int(batch["lengths"].argmin())
    assert (batch["input_ids"][row, batch["lengths"][row]:] == 50256).all()


def test_unbalanced_counts_and_raw_file_counts(shared_data):
    rows = read_table(sms(shared_data))
    t, lab, data = resolve_columns(rows, None, None)
    labels, names = map_labels([r[lab] for r in data])
    assert (t, lab, names) == (1, 0, ["ham", "spam"]) and np.bincount(labels).tolist() == [4827, 747]


def test_balance_and_split_match_pandas_sample():
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    labels = (rng.random(300) < 0.2).astype(int).tolist()
    df = pd.DataFrame({"Label": labels, "i": range(300)})
    # the book's create_balanced_dataset + random_split
    spam = df[df.Label == 1]
    bal = pd.concat([df[df.Label == 0].sample(spam.shape[0], random_state=123), spam])
    shuffled = bal.sample(frac=1, random_state=123).reset_index(drop=True)
    keep = balance_indices(labels, 2, seed=123)
    assert keep == bal.i.tolist()
    tr, va, te = split_indices(len(keep), 0.7, 0.1, seed=123)
    order = [keep[i] for i in tr + va + te]
    assert order == shuffled.i.tolist()
    assert (len(tr), len(va)) == (int(len(keep) * 0.7), int(len(keep) * 0.1))


def tiny_classifier(num_classes=2, seed=0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(ModelConfig.from_preset("gpt2-tiny", vocab_size=50))
    replace_head(model, num_classes, seed=1)
    return model.eval()


def test_last_token_pooling_ignores_right_padding():
    model = tiny_classifier(3)
    seqs = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15]]
    batch = pad_batch([(s, 0) for s in seqs], pad_id=49, pad_to=9)
    with torch.no_grad():
        padded = classify(model, batch["input_ids"], batch["lengths"], "last")
        padded_mean = classify(model, batch["input_ids"], batch["lengths"], "mean")
        for b, s in enumerate(seqs):
            alone = classify(model, torch.tensor([s]), None, "last")[0]
            assert torch.allclose(padded[b], alone, atol=1e-5)
            alone_mean = classify(model, torch.tensor([s]), None, "mean")[0]
            assert torch.allclose(padded_mean[b], alone_mean, atol=1e-5)
        # the last *position* (what the book reads) is a pad token and gives something else
        last_pos = model(batch["input_ids"])[:, -1]
        assert not torch.allclose(last_pos[1], padded[1], atol=1e-3)
    with pytest.raises(ValueError, match="lengths"):
        pool_hidden(torch.zeros(2, 4, 8), torch.tensor([0, 3]))


def test_freezing_leaves_exactly_the_expected_parameters():
    model = tiny_classifier()
    names = set(freeze_for_classification(model, 1))
    expected = {n for n, _ in model.named_parameters() if n.startswith(("blocks.1.", "final_norm.", "lm_head."))}
    assert names == expected and "lm_head.bias" in names and not any(n.startswith("blocks.0") for n in names)
    assert set(freeze_for_classification(model, 0)) == {"final_norm.weight", "final_norm.bias", "lm_head.weight",
                                                        "lm_head.bias"}
    assert len(freeze_for_classification(model, -1)) == len(list(model.named_parameters()))
    with pytest.raises(ValueError, match="trainable_blocks"):
        freeze_for_classification(model, 3)


def write(tmp_path, text, name="d.tsv"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_bad_inputs_give_clear_errors(tmp_path):
    DM = ClassificationDataModule
    with pytest.raises(FileNotFoundError, match="not found"):
        DM(str(tmp_path / "missing.tsv"), tokenizer="byte").setup()
    with pytest.raises(ValueError, match="empty"):
        DM(write(tmp_path, "\n\n"), tokenizer="byte").setup()
    csv = write(tmp_path, "message,category\nhello,a\nbye,b\n", "d.csv")
    with pytest.raises(ValueError, match=r"column\(s\) \['text', 'label'\] not found; the header row has columns "
                                         r"\['message', 'category'\]"):
        DM(csv, text_column="text", label_column="label", tokenizer="byte").setup()
    ints = write(tmp_path, "0\thi\n1\tyo\n3\tho\n")
    with pytest.raises(ValueError, match=r"row 3 has label 3, outside \[0, 2\)"):
        DM(ints, num_classes=2, tokenizer="byte").setup()
    with pytest.raises(ValueError, match=r"row 2 has label 'spam', which is not in label_map"):
        DM(write(tmp_path, "ham\thi\nspam\tyo\n"), label_map={"ham": 0, "eggs": 1}, tokenizer="byte").setup()
    with pytest.raises(ValueError, match=r"cannot balance: class\(es\) \['eggs'\] have no examples"):
        DM(write(tmp_path, "ham\thi\nspam\tyo\n"), label_map={"ham": 0, "spam": 1, "eggs": 2},
           tokenizer="byte").setup()


def toy_file(tmp_path, n=60):
    lines = [f"{'pos' if i % 2 else 'neg'}\t{'good great fine' if i % 2 else 'bad awful poor'} {i}" for i in range(n)]
    return write(tmp_path, "\n".join(lines) + "\n")


def trainer(tmp_path, steps=2, **kw):
    return L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path, **kw)


def test_classifier_fit_two_steps_then_test_and_predict(tmp_path):
    from modules.classifier import ClassifierModule

    dm = ClassificationDataModule(toy_file(tmp_path), tokenizer="byte", batch_size=4)
    model = ClassifierModule(model="gpt2-tiny", vocab_size=dm.vocab_size, context_length=dm.context_length,
                             pad_id=dm.pad_id, trainable_blocks=-1, lr=1e-3)
    tr = trainer(tmp_path, val_check_interval=2, limit_val_batches=2)
    tr.fit(model, dm)
    assert model.num_classes == 2 and tr.global_step == 2
    assert {"val_acc", "val_f1", "val_loss"} <= set(tr.callback_metrics)
    res = tr.test(model, dm, ckpt_path=None)[0]
    assert 0.0 <= res["test_acc"] <= 1.0 and "test_f1" in res
    assert sum(map(sum, model.confusion["test"])) == len(dm.split("test"))
    pred = tr.predict(model, dm)[0]
    assert pred["probs"].shape == (4, 2) and torch.allclose(pred["probs"].sum(-1), torch.ones(4))
    # resuming with a different number of classes is refused with a clear message
    ckpt = tmp_path / "c.ckpt"
    tr.save_checkpoint(ckpt)
    three = ClassifierModule(model="gpt2-tiny", vocab_size=dm.vocab_size, context_length=dm.context_length,
                             num_classes=3)
    with pytest.raises(ValueError, match="3-class head but the data has 2 classes"):
        trainer(tmp_path).fit(three, dm)
    lines = [f"{'abc'[i % 3]}\ttext {i}" for i in range(30)]
    dm3 = ClassificationDataModule(write(tmp_path, "\n".join(lines), "three.tsv"), tokenizer="byte", batch_size=4)
    with pytest.raises(ValueError, match="checkpoint's classification head has 2 classes but this model has 3"):
        trainer(tmp_path, steps=4).fit(three, dm3, ckpt_path=ckpt)


def test_classifier_optimizer_holds_what_should_train(tmp_path):
    from modules.classifier import ClassifierModule

    dm = ClassificationDataModule(toy_file(tmp_path), tokenizer="byte", batch_size=4)
    kw = dict(model="gpt2-tiny", vocab_size=dm.vocab_size, context_length=dm.context_length, scheduler="constant")
    for extra, ok in [({"trainable_blocks": 1}, lambda n: n.startswith(("blocks.1.", "final_norm.", "lm_head."))),
                      ({"lora": {"rank": 2, "alpha": 4}}, lambda n: n.endswith((".lora_A", ".lora_B"))
                       or n.startswith("lm_head."))]:
        model = ClassifierModule(**kw, **extra)
        tr = trainer(tmp_path, limit_val_batches=0)
        tr.fit(model, dm)
        in_opt = {id(p) for g in tr.optimizers[0].param_groups for p in g["params"]}
        names = [n for n, p in model.model.named_parameters() if id(p) in in_opt]
        assert names and all(ok(n) for n in names)
        assert {n for n, p in model.model.named_parameters() if p.requires_grad} == set(names)
    assert sum(n.startswith("lm_head.") for n in names) == 2 and len(names) == 2 + 2 * 2 * 4


def test_classification_from_checkpoint_with_mismatched_vocab(tmp_path):
    from modules.classifier import ClassifierModule
    from spine.checkpoint import save_checkpoint
    from spine.tokenizer import get_tokenizer

    save_checkpoint(tmp_path / "ck", GPT.from_preset("gpt2-tiny", vocab_size=257), get_tokenizer("byte"))
    dm = ClassificationDataModule(toy_file(tmp_path), tokenizer=str(tmp_path / "ck"), batch_size=4)
    assert dm.vocab_size == 257  # the checkpoint's own tokenizer
    model = ClassifierModule(init_from=str(tmp_path / "ck"), vocab_size=dm.vocab_size,
                             context_length=dm.context_length, trainable_blocks=0)
    trainer(tmp_path, limit_val_batches=0, steps=1).fit(model, dm)
    with pytest.raises(ValueError, match="embeds only 257"):
        ClassifierModule(init_from=str(tmp_path / "ck"), vocab_size=50257)


@pytest.mark.parametrize("name", ["spam-gpt2", "spam-pretrained", "spam-scratch", "spam-lora"])
def test_spam_configs_parse(name):
    import yaml

    code, out = run_in_process(["fit", "--config", f"configs/{name}.yaml", "--print_config"])
    cfg = yaml.safe_load(out)
    assert code == 0 and cfg["model"]["class_path"] == "modules.classifier.ClassifierModule"
    assert cfg["data"]["init_args"]["batch_size"] == 8 and cfg["trainer"]["max_epochs"] == 5
    if name == "spam-gpt2":  # the book's chapter-6 recipe
        m = cfg["model"]["init_args"]
        assert (m["lr"], m["weight_decay"], m["trainable_blocks"]) == (5e-5, 0.1, 1)
        assert m["init_from"].startswith("hf:")


def test_spam_scratch_cli_runs_two_steps(tmp_path, shared_data, gpt2_vocab_dir):
    code, _ = run_in_process(["fit", "--config", "configs/spam-scratch.yaml", "--trainer.max_steps=2",
                       "--trainer.limit_val_batches=1", "--trainer.logger=false", "--trainer.callbacks=[]",
                       "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
                       f"--trainer.default_root_dir={tmp_path}", f"--data.init_args.path={sms(shared_data)}",
                       f"--data.init_args.vocab_dir={gpt2_vocab_dir}"])
    assert code == 0
