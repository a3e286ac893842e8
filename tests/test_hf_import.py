"""HF interop as a new user meets it: a GPT-2 folder saved by current transformers (tokenizer.json only),
hub names (offline: one line), and `export-hf` of a byte-tokenizer checkpoint that AutoTokenizer loads."""
from __future__ import annotations

import json

import pytest
import torch

from modules.cli import main
from spine.checkpoint import load_checkpoint, save_checkpoint
from spine.model import GPT
from spine.tokenizer import get_tokenizer

transformers = pytest.importorskip("transformers")

TEXTS = ["Hello world", " leading space and  double", "naïve café — 東京 🙂", "a<|endoftext|>b", "\n\ttabs\r\n", ""]


def _run(capsys, argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def gpt2_folder_tokenizer_json_only(tmp_path_factory, gpt2_vocab_dir):
    """What `save_pretrained` of current transformers writes for GPT-2: config, weights, tokenizer.json."""
    vocab = json.loads((gpt2_vocab_dir / "encoder.json").read_text())
    lines = (gpt2_vocab_dir / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]
    merges = [tuple(line.split(" ")) for line in lines if line]
    hf_tok = transformers.GPT2TokenizerFast(vocab=vocab, merges=merges)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=50257, n_positions=64, n_embd=32, n_layer=1, n_head=2)).eval()
    d = tmp_path_factory.mktemp("hf") / "gpt2"
    model.save_pretrained(d)
    hf_tok.save_pretrained(d)
    assert not (d / "vocab.json").exists() and (d / "tokenizer.json").is_file()
    return d, hf_tok, model


def test_import_gpt2_folder_with_only_tokenizer_json(capsys, tmp_path, gpt2_folder_tokenizer_json_only, gpt2_vocab_dir):
    src, hf_tok, hf_model = gpt2_folder_tokenizer_json_only
    code, out, err = _run(capsys, ["import-hf", src, tmp_path / "ck"])
    assert code == 0, err
    assert "tokenizer gpt2" in out
    model, tok = load_checkpoint(tmp_path / "ck")
    reference = get_tokenizer("gpt2", vocab_dir=gpt2_vocab_dir)  # tiktoken from the original files
    for text in TEXTS:
        ids = tok.encode(text, allowed_special="all")
        assert ids == hf_tok(text)["input_ids"] == reference.encode(text, allowed_special="all")
        assert tok.decode(ids) == hf_tok.decode(ids) == text
    x = torch.tensor([tok.encode("Every effort moves you")])
    with torch.no_grad():
        torch.testing.assert_close(model(x).float(), hf_model(x).logits, rtol=1e-4, atol=1e-4)


def test_hub_name_offline_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("SPINE_DEBUG", raising=False)
    code, out, err = _run(capsys, ["import-hf", "openai-community/gpt2", tmp_path / "ck"])
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "openai-community/gpt2" in lines[0] and "Hugging Face hub" in lines[0]
    assert not (tmp_path / "ck").exists()


def test_hub_name_goes_through_huggingface_hub(capsys, tmp_path, monkeypatch, gpt2_folder_tokenizer_json_only):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    src = gpt2_folder_tokenizer_json_only[0]
    asked = []

    def fake_snapshot_download(repo_id, allow_patterns=None, **kw):
        asked.append(repo_id)
        assert "*.safetensors" in allow_patterns and "tokenizer.json" in allow_patterns
        return str(src)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    code, out, err = _run(capsys, ["import-hf", "openai-community/gpt2", tmp_path / "ck"])
    assert code == 0, err
    assert set(asked) == {"openai-community/gpt2"}
    # a missing local path that cannot be a hub name is still "not found", without the network
    code, _, err = _run(capsys, ["import-hf", tmp_path / "nope" / "deeper" / "x", tmp_path / "ck2"])
    assert code == 2 and "not found" in err


def test_export_byte_tokenizer_loads_in_autotokenizer(capsys, tmp_path):
    torch.manual_seed(0)
    byte = get_tokenizer("byte")
    save_checkpoint(tmp_path / "ck", GPT.from_preset("gpt2-tiny", vocab_size=257), byte)
    code, out, err = _run(capsys, ["export-hf", tmp_path / "ck", tmp_path / "hf"])
    assert code == 0, err
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert len(hf_tok) == 257 and hf_tok.eos_token_id == 256
    for text in TEXTS:
        ids = byte.encode(text, allowed_special="all")
        assert hf_tok(text)["input_ids"] == ids
        assert hf_tok.decode(ids) == byte.decode(ids)
    # and spine reads its own spec back (the exact tokenizer)
    code, _, err = _run(capsys, ["import-hf", tmp_path / "hf", tmp_path / "back"])
    assert code == 0, err
    assert load_checkpoint(tmp_path / "back")[1].name == "byte"


def test_export_refuses_a_tokenizer_transformers_cannot_load(capsys, tmp_path, monkeypatch):
    from spine.bpe import BPETokenizer

    monkeypatch.delenv("SPINE_DEBUG", raising=False)
    bpe = BPETokenizer.train("low lower lowest newer newest " * 20, vocab_size=270)
    save_checkpoint(tmp_path / "ck", GPT.from_preset("gpt2-tiny", vocab_size=bpe.vocab_size), bpe)
    code, _, err = _run(capsys, ["export-hf", tmp_path / "ck", tmp_path / "hf"])
    assert code == 2 and "'bpe' tokenizer" in err and "nothing was written" in err
    assert not (tmp_path / "hf").exists() or not any((tmp_path / "hf").iterdir())
