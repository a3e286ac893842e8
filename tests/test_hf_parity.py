"""HF import/export parity: spine's GPT against transformers' GPT-2 and Qwen3 on tiny random models."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import save_file  # noqa: E402
from transformers import (AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, Qwen3Config,  # noqa: E402
                          Qwen3ForCausalLM)

from spine.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from spine.config import ModelConfig  # noqa: E402
from spine.hf import config_from_hf, config_to_hf, export_hf, import_hf, import_hf_tokenizer  # noqa: E402
from spine.model import GPT  # noqa: E402

VOCAB = 97


def _randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Weights far from init (norms != 1, biases != 0) so a wrong mapping cannot hide."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))
    return model.eval()


def _gpt2_hf(n_layer=2) -> GPT2LMHeadModel:
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=48, n_embd=32, n_layer=n_layer, n_head=4, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1)
    return _randomize(GPT2LMHeadModel(cfg))


def _qwen3_hf(n_kv: int, tie: bool, bias: bool) -> Qwen3ForCausalLM:
    cfg = Qwen3Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=n_kv, head_dim=8, max_position_embeddings=64,
                      tie_word_embeddings=tie, attention_bias=bias, rope_theta=50000.0, rms_norm_eps=1e-6,
                      attn_implementation="eager")
    return _randomize(Qwen3ForCausalLM(cfg))


IDS = torch.randint(0, VOCAB, (3, 21), generator=torch.Generator().manual_seed(2))


def _hf_logits(hf) -> torch.Tensor:
    with torch.no_grad():
        return hf(IDS).logits


def _spine_logits(model: GPT) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(IDS)[..., :model.config.vocab_size]


def _max_diff(a, b) -> float:
    return (a - b).abs().max().item()


def _roundtrip_all(hf, tmp_path, **save_kw):
    """import → logits; export → transformers loads → logits; spine save/load → bitwise."""
    ref = _hf_logits(hf)
    assert ref.abs().max() > 1.0  # the comparison is not between near-zero numbers
    src = tmp_path / "hf"
    hf.save_pretrained(src, **save_kw)
    model = import_hf(src)
    assert _max_diff(_spine_logits(model), ref) <= 1e-5

    out = export_hf(model, tmp_path / "export")
    hf2, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True, attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert type(hf2) is type(hf)
    assert _max_diff(_hf_logits(hf2.eval()), ref) <= 1e-5

    save_checkpoint(tmp_path / "ckpt", model)
    again, _ = load_checkpoint(tmp_path / "ckpt")
    for (k, a), (k2, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    assert torch.equal(_spine_logits(again), _spine_logits(model))
    return model


def test_gpt2_parity(tmp_path):
    model = _roundtrip_all(_gpt2_hf(), tmp_path)
    cfg = model.config
    assert (cfg.d_model, cfg.n_layer, cfg.context_length, cfg.pos_emb, cfg.tie_embeddings) == (32, 2, 48, "learned", True)
    assert model.lm_head.weight is model.tok_emb.weight


@pytest.mark.parametrize("n_kv,tie,bias", [(4, True, False), (2, False, True), (1, True, True), (1, False, False),
                                           (2, True, False)])
def test_qwen3_parity(tmp_path, n_kv, tie, bias):
    model = _roundtrip_all(_qwen3_hf(n_kv, tie, bias), tmp_path)
    cfg = model.config
    assert (cfg.n_head // cfg.n_kv_head, cfg.tie_embeddings, cfg.qkv_bias) == (4 // n_kv, tie, bias)
    assert cfg.rope_theta == 50000.0 and cfg.context_length == 64 and cfg.head_dim == 8


@pytest.mark.parametrize("family", ["gpt2", "qwen3"])
def test_sharded_safetensors(tmp_path, family):
    hf = _gpt2_hf() if family == "gpt2" else _qwen3_hf(2, False, False)
    hf.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not (tmp_path / "hf" / "model.safetensors").exists()
    assert _max_diff(_spine_logits(import_hf(tmp_path / "hf")), _hf_logits(hf)) <= 1e-5
    # a shard listed in the index but absent is named
    first = sorted(set(index["weight_map"].values()))[0]
    (tmp_path / "hf" / first).unlink()
    with pytest.raises(FileNotFoundError, match=first):
        import_hf(tmp_path / "hf")


def test_gpt2_original_layout_without_prefix_and_with_mask_buffers(tmp_path):
    """openai-community/gpt2's files: no `transformer.` prefix, `attn.bias` buffers, no lm_head."""
    hf = _gpt2_hf()
    sd = {k.removeprefix("transformer."): v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    n = hf.config.n_positions
    for i in range(hf.config.n_layer):
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    src = tmp_path / "orig"
    src.mkdir()
    save_file(sd, str(src / "model.safetensors"))
    hf.config.to_json_file(src / "config.json")
    assert _max_diff(_spine_logits(import_hf(src)), _hf_logits(hf)) <= 1e-5


def test_pytorch_model_bin_weights_only(tmp_path):
    hf = _gpt2_hf()
    src = tmp_path / "bin"
    src.mkdir()
    hf.config.to_json_file(src / "config.json")
    torch.save(hf.state_dict(), src / "pytorch_model.bin")
    assert _max_diff(_spine_logits(import_hf(src)), _hf_logits(hf)) <= 1e-5
    # a pickle that is not plain tensors is refused, never executed
    torch.save({"payload": _Evil()}, src / "pytorch_model.bin")
    with pytest.raises(ValueError, match="weights_only"):
        import_hf(src)


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled code ran",))


def test_shape_mismatch_names_tensor_and_shapes(tmp_path):
    hf = _qwen3_hf(2, True, False)
    hf.save_pretrained(tmp_path / "hf")
    cfg_path = tmp_path / "hf" / "config.json"
    data = json.loads(cfg_path.read_text())
    data["intermediate_size"] = 48
    cfg_path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"HF tensor 'model\.layers\.0\.mlp\.(gate|up|down)_proj\.weight' "
                       r"has shape \[(40, 32|32, 40)\], expected \[(48, 32|32, 48)\]"):
        import_hf(tmp_path / "hf")


def test_missing_and_unknown(tmp_path):
    hf = _gpt2_hf()
    src = tmp_path / "hf"
    hf.save_pretrained(src)
    sd = {k: v.contiguous() for k, v in hf.state_dict().items()
          if "h.1.mlp.c_fc.weight" not in k and k != "lm_head.weight"}
    save_file(sd, str(src / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing HF tensor.*h\.1\.mlp\.c_fc\.weight"):
        import_hf(src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["model_type"] = "llama"
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unsupported HF model_type 'llama'.*gpt2, qwen3"):
        import_hf(src)
    with pytest.raises(FileNotFoundError, match="holds no HF weights"):
        shutil.rmtree(src)
        src.mkdir()
        (src / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
        import_hf(src)


def test_config_mapping_round_trip():
    for name in ("gpt2-124m", "qwen3-0.6b", "qwen3-8b"):
        cfg = ModelConfig.from_preset(name)
        back = config_from_hf(config_to_hf(cfg))
        keep = {"name", "extra"}
        assert {k: v for k, v in back.to_dict().items() if k not in keep} == \
               {k: v for k, v in cfg.to_dict().items() if k not in keep}, name
    with pytest.raises(ValueError, match="rope type 'yarn'"):
        config_from_hf({**config_to_hf(ModelConfig.from_preset("qwen3-tiny")), "rope_scaling": {"rope_type": "yarn"}})


def test_export_padded_vocab_and_gpt2_without_qkv_bias(tmp_path):
    """Spine-only shapes: pad_vocab_to rows are dropped, a missing qkv bias is written as zeros."""
    cfg = ModelConfig.from_preset("gpt2-tiny", vocab_size=VOCAB, pad_vocab_to=64, qkv_bias=False)
    model = _randomize(GPT(cfg))
    assert model.tok_emb.weight.shape[0] == 128
    out = export_hf(model, tmp_path / "x")
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert hf.config.vocab_size == VOCAB
    assert _max_diff(_hf_logits(hf), _spine_logits(model)) <= 1e-5


def test_export_refuses_nonzero_mlp_bias_for_qwen3(tmp_path):
    model = import_hf_from(tmp_path, _qwen3_hf(2, True, True))
    assert torch.count_nonzero(model.blocks[0].mlp.gate.bias) == 0  # imported as zeros
    with torch.no_grad():
        model.blocks[1].mlp.up.bias[3] = 0.5
    with pytest.raises(ValueError, match=r"blocks\.1\.mlp\.up\.bias is non-zero"):
        export_hf(model, tmp_path / "x")


def import_hf_from(tmp_path, hf) -> GPT:
    hf.save_pretrained(tmp_path / "src")
    return import_hf(tmp_path / "src")


def test_export_refuses_unrepresentable_model(tmp_path):
    cfg = ModelConfig.from_preset("qwen3-tiny", qk_norm=False)
    with pytest.raises(ValueError, match="no supported HF architecture"):
        export_hf(GPT(cfg), tmp_path / "x")


def test_bf16_import_keeps_or_casts_dtype(tmp_path):
    hf = _qwen3_hf(2, True, False).to(torch.bfloat16)
    hf.save_pretrained(tmp_path / "hf")
    assert import_hf(tmp_path / "hf").tok_emb.weight.dtype == torch.bfloat16
    assert import_hf(tmp_path / "hf", dtype=torch.float32).blocks[0].attn.qkv.weight.dtype == torch.float32


# ---------------------------------------------------------------------------- tokenizers
def _hf_gpt2_tokenizer_dir(vocab_dir, dst):
    """HF file names for GPT-2's BPE (vocab.json/merges.txt hold encoder.json/vocab.bpe contents)."""
    dst.mkdir(parents=True, exist_ok=True)
    encoder = json.loads((vocab_dir / "encoder.json").read_text())
    (dst / "vocab.json").write_text(json.dumps(encoder, ensure_ascii=False))  # other bytes, same mapping
    shutil.copy(vocab_dir / "vocab.bpe", dst / "merges.txt")
    return dst


# (no special token: HF tokenizers map "<|endoftext|>" in text to the special id, spine keeps it as text)
TEXT = "Hello world, it's 2024!\n  Ünïcödé   spaces and\ttabs, 日本語 🙂."


def test_gpt2_tokenizer_import_export(tmp_path, gpt2_vocab_dir):
    from spine.tokenizer import get_tokenizer

    ref = get_tokenizer("gpt2", vocab_dir=gpt2_vocab_dir)
    src = _hf_gpt2_tokenizer_dir(gpt2_vocab_dir, tmp_path / "hf")
    (src / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    tok = import_hf_tokenizer(src)
    assert tok.encode(TEXT) == ref.encode(TEXT) and tok.eos_id == 50256
    # it survives a checkpoint round trip (the HF files do not match the GPT-2 sha256 pins)
    model = GPT.from_preset("gpt2-tiny")
    save_checkpoint(tmp_path / "ckpt", model, tok)
    _, tok2 = load_checkpoint(tmp_path / "ckpt")
    assert tok2.encode(TEXT) == ref.encode(TEXT)
    # export writes HF tokenizer files that transformers reads identically
    out = export_hf(model, tmp_path / "export", tok2)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok(TEXT)["input_ids"] == ref.encode(TEXT)
    merges = (out / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges == (gpt2_vocab_dir / "vocab.bpe").read_text(encoding="utf-8").rstrip("\n").splitlines()
    assert import_hf_tokenizer(out).encode(TEXT) == ref.encode(TEXT)


def test_no_tokenizer_files_gives_none(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert import_hf_tokenizer(tmp_path) is None


def _qwen_tokenizer_json(directory) -> None:
    """A Qwen3-shaped tokenizer.json (byte-level BPE + Qwen3's added tokens), trained here offline."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(["hello world, think step by step"] * 4, trainer)
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ("<think>", "</think>")])
    tok.save(str(directory / "tokenizer.json"))


def test_qwen3_tokenizer_import(tmp_path):
    hf = Qwen3ForCausalLM(Qwen3Config(vocab_size=320, hidden_size=32, intermediate_size=40, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                      max_position_embeddings=64, tie_word_embeddings=True))
    hf.save_pretrained(tmp_path / "hf")
    _qwen_tokenizer_json(tmp_path / "hf")
    tok = import_hf_tokenizer(tmp_path / "hf")
    assert tok.name == "qwen3" and tok.vocab_size == 320  # the model's rows, not just the defined ids
    text = "hello world <think>"
    assert tok.decode(tok.encode(text)) == text
    save_checkpoint(tmp_path / "ck", import_hf(tmp_path / "hf"), tok)
    _, tok2 = load_checkpoint(tmp_path / "ck")
    assert tok2.encode(text) == tok.encode(text) and tok2.vocab_size == 320
