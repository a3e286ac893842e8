"""The spine checkpoint directory: bitwise round trips, manifest verification, atomic writes, errors."""
from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from spine.checkpoint import (checkpoint_sha256, load_checkpoint, load_config, load_weights_into,
                              save_checkpoint)
from spine.config import ModelConfig
from spine.model import GPT
from spine.tokenizer import get_tokenizer


def _model(preset: str = "gpt2-tiny", **kw) -> GPT:
    torch.manual_seed(0)
    return GPT.from_preset(preset, **kw).eval()


def _ids(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(3))


def _assert_bitwise(a: GPT, b: GPT) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    ids = _ids(a.config.vocab_size)
    with torch.no_grad():
        assert torch.equal(a(ids), b(ids))


@pytest.mark.parametrize("preset,kw", [("gpt2-tiny", {"vocab_size": 257}), ("qwen3-tiny", {}),
                                       ("qwen3-tiny", {"tie_embeddings": False, "qkv_bias": True}),
                                       ("gpt2-tiny", {"vocab_size": 300, "pad_vocab_to": 64})])
def test_round_trip_is_bitwise(tmp_path, preset, kw):
    model = _model(preset, **kw)
    save_checkpoint(tmp_path / "ck", model)
    loaded, tok = load_checkpoint(tmp_path / "ck")
    assert tok is None and not loaded.training
    assert loaded.config == model.config
    _assert_bitwise(model, loaded)
    tied = model.config.tie_embeddings
    assert (loaded.lm_head.weight is loaded.tok_emb.weight) == tied
    with safe_open(str(tmp_path / "ck" / "model.safetensors"), "pt") as f:
        assert ("lm_head.weight" in f.keys()) == (not tied)  # a tied head is stored once
    if model.config.pos_emb == "rope":  # non-persistent buffers were rebuilt, not left empty
        assert torch.equal(loaded.rope_cos, model.rope_cos)


def test_dtype_cast_and_bf16_round_trip(tmp_path):
    model = _model("qwen3-tiny").to(torch.bfloat16)
    save_checkpoint(tmp_path / "ck", model)
    loaded, _ = load_checkpoint(tmp_path / "ck")
    assert loaded.tok_emb.weight.dtype == torch.bfloat16
    _assert_bitwise(model, loaded)
    as32, _ = load_checkpoint(tmp_path / "ck", dtype=torch.float32)
    assert as32.blocks[0].mlp.up.weight.dtype == torch.float32
    assert torch.equal(as32.blocks[0].mlp.up.weight, model.blocks[0].mlp.up.weight.float())


def test_manifest_and_sha(tmp_path):
    model = _model(vocab_size=257)
    d = save_checkpoint(tmp_path / "ck", model, get_tokenizer("byte"), metadata={"step": 7, "run": "x"})
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["format"] == "spine-checkpoint" and manifest["version"] == 1
    assert manifest["metadata"] == {"step": 7, "run": "x"}
    assert {"model.safetensors", "config.json", "spine_tokenizer.json"} <= set(manifest["files"])
    for name, entry in manifest["files"].items():
        data = (d / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert checkpoint_sha256(d) == hashlib.sha256((d / "manifest.json").read_bytes()).hexdigest()
    # identical content gives the identical id; different weights a different one
    d2 = save_checkpoint(tmp_path / "ck2", model, get_tokenizer("byte"), metadata={"step": 7, "run": "x"})
    assert checkpoint_sha256(d2) == checkpoint_sha256(d)
    with torch.no_grad():
        model.final_norm.weight[0] += 1
    assert checkpoint_sha256(save_checkpoint(tmp_path / "ck3", model)) != checkpoint_sha256(d)
    assert load_config(d) == model.config


def test_tokenizers_travel_with_the_checkpoint(tmp_path, gpt2_vocab_dir):
    tok = get_tokenizer("gpt2", vocab_dir=gpt2_vocab_dir)
    save_checkpoint(tmp_path / "ck", _model(), tok)
    _, tok2 = load_checkpoint(tmp_path / "ck")
    text = "Every effort moves you"
    assert tok2.encode(text) == tok.encode(text) and tok2.eos_id == 50256


def test_tampered_file_is_named_with_both_hashes(tmp_path):
    d = save_checkpoint(tmp_path / "ck", _model())
    expected = json.loads((d / "manifest.json").read_text())["files"]["config.json"]["sha256"]
    text = (d / "config.json").read_text()
    (d / "config.json").write_text(text.replace("\n", " ", 1))  # same size, other bytes
    actual = hashlib.sha256((d / "config.json").read_bytes()).hexdigest()
    with pytest.raises(ValueError, match=rf"config\.json: sha256 mismatch.*{expected}.*{actual}"):
        load_checkpoint(d)
    load_checkpoint(d, verify=False)  # whitespace does not change the config itself
    (d / "config.json").write_text(text + " ")  # another size: named before any hashing
    with pytest.raises(ValueError, match=rf"config\.json: {len(text) + 1} bytes, but manifest.json records {len(text)}"):
        load_checkpoint(d)


def test_missing_listed_file_and_missing_manifest(tmp_path):
    d = save_checkpoint(tmp_path / "ck", _model(vocab_size=257), get_tokenizer("byte"))
    (d / "spine_tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="lists 'spine_tokenizer.json' but the file is missing"):
        load_checkpoint(d)
    (d / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
        load_checkpoint(d)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "nowhere")


@pytest.mark.parametrize("keep", [0.5, 0.001])
def test_truncated_safetensors(tmp_path, keep):
    d = save_checkpoint(tmp_path / "ck", _model())
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[:max(8, int(len(data) * keep))])
    with pytest.raises(ValueError, match=r"model.safetensors: \d+ bytes, but manifest.json records \d+"):
        load_checkpoint(d)
    with pytest.raises(ValueError, match="model.safetensors is truncated or not a safetensors file"):
        load_checkpoint(d, verify=False)


def test_config_errors_name_file_and_field(tmp_path):
    d = save_checkpoint(tmp_path / "ck", _model())
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "n_embd": 3}))
    with pytest.raises(ValueError, match=r"config\.json: unknown ModelConfig field\(s\) \['n_embd'\]"):
        load_checkpoint(d, verify=False)
    del cfg["d_model"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config\.json: missing required ModelConfig field\(s\) \['d_model'\]"):
        load_config(d)


def _rewrite_weights(d, fn):
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}
    save_file(fn(sd), str(d / "model.safetensors"))


def test_shape_missing_and_unexpected_tensors(tmp_path):
    d = save_checkpoint(tmp_path / "ck", _model())
    _rewrite_weights(d, lambda sd: {**sd, "blocks.1.mlp.fc.weight": torch.zeros(256, 32)})
    with pytest.raises(ValueError, match=r"tensor 'blocks\.1\.mlp\.fc\.weight' has shape \[256, 32\], the model "
                                         r"expects \[256, 64\]"):
        load_checkpoint(d, verify=False)
    _rewrite_weights(d, lambda sd: {k: v for k, v in sd.items() if k != "blocks.1.mlp.fc.weight"} |
                     {"blocks.9.extra": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"missing tensor\(s\) \['blocks\.1\.mlp\.fc\.weight'\]; "
                                         r"unexpected tensor\(s\) \['blocks\.9\.extra'\]"):
        load_checkpoint(d, verify=False)


def test_tokenizer_larger_than_model_vocab(tmp_path, gpt2_vocab_dir):
    small = _model(vocab_size=257)
    with pytest.raises(ValueError, match="50257.*257"):
        save_checkpoint(tmp_path / "ck", small, get_tokenizer("gpt2", vocab_dir=gpt2_vocab_dir))
    assert not (tmp_path / "ck").exists()
    d = save_checkpoint(tmp_path / "ck", _model(vocab_size=200))
    get_tokenizer("byte").save(d)  # placed by hand: the load-time check must catch it
    with pytest.raises(ValueError, match="vocab_size 257.*vocab_size is 200"):
        load_checkpoint(d, verify=False)


def test_load_weights_into(tmp_path):
    src = _model("qwen3-tiny")
    d = save_checkpoint(tmp_path / "ck", src)
    fresh = GPT(ModelConfig.from_preset("qwen3-tiny", dropout=0.1)).eval()  # dropout is not architecture
    load_weights_into(fresh, d)
    _assert_bitwise(src, fresh)
    other = GPT(ModelConfig.from_preset("qwen3-tiny", n_layer=3, rope_theta=500.0))
    with pytest.raises(ValueError, match=r"config differs.*n_layer: checkpoint=2 model=3.*rope_theta: "
                                         r"checkpoint=10000\.0 model=500\.0"):
        load_weights_into(other, d)
    load_weights_into(other, d, strict=False)  # loads the 2 layers it has, keeps block 2
    assert torch.equal(other.blocks[1].mlp.up.weight, src.blocks[1].mlp.up.weight)


def test_overwrite_is_atomic_and_leaves_no_temp_dirs(tmp_path):
    a, b = _model(), _model("gpt2-tiny", n_layer=1)
    d = save_checkpoint(tmp_path / "ck", a)
    save_checkpoint(d, b)
    assert load_config(d).n_layer == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]

    class Boom:
        vocab_size = a.config.vocab_size

        def save(self, directory):
            (directory / "half_written").write_text("x")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(d, a, Boom())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temp dir left behind
    loaded, _ = load_checkpoint(d)  # the previous checkpoint is intact
    _assert_bitwise(b, loaded)


def test_refuses_to_replace_a_foreign_directory(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a spine checkpoint"):
        save_checkpoint(tmp_path / "mine", _model())
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    save_checkpoint(tmp_path / "empty", _model())  # an empty directory is fine
    load_checkpoint(tmp_path / "empty")


def test_debris_of_killed_writers_is_removed_and_a_live_writers_kept(tmp_path):
    d = save_checkpoint(tmp_path / "ck", _model())
    dead = tmp_path / ".ck.tmp-999999999-deadbeef"   # a pid that does not run
    legacy = tmp_path / ".ck.tmp-0123abcd"          # the name before pids were added
    live = tmp_path / f".ck.tmp-{os.getppid()}-feedf00d"  # a writer that still runs
    other = tmp_path / ".notes.tmp-999999999-deadbeef"    # another target's: not ours to touch
    for p in (dead, legacy, live, other):
        p.mkdir()
        (p / "half").write_text("x")
    save_checkpoint(d, _model("gpt2-tiny", n_layer=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ck", live.name, other.name])
