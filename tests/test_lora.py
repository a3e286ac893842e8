"""LoRA invariants: identity at init, exact merge/unmerge, adapters-only training, save/load, plain-name export."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from spine.checkpoint import load_checkpoint, save_checkpoint
from spine.config import ModelConfig
from spine.lora import (LoRALinear, apply_lora, load_lora, lora_modules, lora_state_dict, merge_lora, merged_copy,
                        save_lora, unmerge_lora)
from spine.model import GPT
from spine.training import param_groups


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig.from_preset("gpt2-tiny", vocab_size=97, **kw)).eval()


def randomise_adapters(model: nn.Module, scale: float = 0.05) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * scale)


def test_lora_linear_is_identity_at_init_and_has_expected_shapes():
    base = nn.Linear(16, 24)
    lora = LoRALinear(base, rank=4, alpha=8)
    assert lora.lora_A.shape == (4, 16) and lora.lora_B.shape == (24, 4)
    assert torch.count_nonzero(lora.lora_B) == 0 and torch.count_nonzero(lora.lora_A) > 0
    x = torch.randn(3, 16)
    assert torch.equal(lora(x), base(x))
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(base, rank=0)


def test_apply_lora_output_bitwise_equal_to_base_model():
    model = tiny()
    idx = torch.randint(0, 97, (2, 11))
    ref = model(idx)
    names = apply_lora(model, rank=4, alpha=8)
    assert names == [f"blocks.{i}.{n}" for i in range(2) for n in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")]
    assert torch.equal(model(idx), ref)


def test_only_adapters_trainable_and_in_optimizer():
    model = tiny()
    apply_lora(model, targets=["attn.qkv", "mlp"], rank=2, alpha=4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {f"blocks.{i}.{m}.lora_{ab}" for i in range(2) for m in ("attn.qkv", "mlp.fc", "mlp.proj")
                for ab in "AB"}
    assert trainable == expected
    opt_ids = {id(p) for g in param_groups(model, 0.1) for p in g["params"]}
    assert opt_ids == {id(p) for n, p in model.named_parameters() if n in expected}


def test_unknown_target_and_tied_head_are_clear_errors():
    with pytest.raises(ValueError, match=r"match no linear layer.*qkv"):
        apply_lora(tiny(), targets=["q_proj"])
    with pytest.raises(ValueError, match="tied"):
        apply_lora(tiny(), targets=["lm_head"])
    untied = tiny(tie_embeddings=False)
    assert apply_lora(untied, targets=["head"]) == ["lm_head"]  # "head" is an alias for the output layer


def test_merge_equals_adapter_and_unmerge_restores_base():
    model = tiny()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    idx = torch.randint(0, 97, (2, 13))
    with torch.no_grad():
        base_logits = model(idx)
    apply_lora(model, rank=4, alpha=8)
    randomise_adapters(model)
    with torch.no_grad():
        adapter_logits = model(idx)
        merge_lora(model)
        merged_logits = model(idx)
        assert (merged_logits - adapter_logits).abs().max() < 1e-6
        assert (adapter_logits - base_logits).abs().max() > 1e-3  # adapters do change the output
        unmerge_lora(model)
    for name, m in lora_modules(model).items():
        assert (m.base.weight - base_state[f"{name}.weight"]).abs().max() < 1e-6
    with torch.no_grad():
        assert (model(idx) - adapter_logits).abs().max() < 1e-6


def test_merged_copy_is_a_plain_gpt_that_round_trips_through_checkpoint(tmp_path):
    model = tiny()
    apply_lora(model, rank=4, alpha=8)
    randomise_adapters(model)
    idx = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        expected = model(idx)
        plain = merged_copy(model)
        assert not lora_modules(plain) and lora_modules(model)  # the original keeps its adapters
        assert set(plain.state_dict()) == set(GPT(model.config).state_dict())
        assert (plain(idx) - expected).abs().max() < 1e-6
        save_checkpoint(tmp_path / "ck", plain)
        loaded, _ = load_checkpoint(tmp_path / "ck")
        assert torch.equal(loaded(idx), plain(idx))


def test_save_and_load_adapters_alone(tmp_path):
    model = tiny()
    apply_lora(model, targets=["qkv", "fc"], rank=4, alpha=8, dropout=0.1)
    randomise_adapters(model)
    model.eval()
    sd = lora_state_dict(model)
    assert all(k.endswith((".lora_A", ".lora_B")) for k in sd) and len(sd) == 8
    path = save_lora(model, tmp_path / "adapter.safetensors")
    fresh = tiny()  # same base weights (same seed), no adapters yet: load_lora applies them from the metadata
    load_lora(fresh, path)
    idx = torch.randint(0, 97, (1, 7))
    with torch.no_grad():
        assert torch.equal(fresh.eval()(idx), model(idx))
    wrong_rank = tiny()
    apply_lora(wrong_rank, targets=["qkv", "fc"], rank=2)
    with pytest.raises(ValueError, match="shape"):
        load_lora(wrong_rank, path)
    with pytest.raises(FileNotFoundError):
        load_lora(tiny(), tmp_path / "missing.safetensors")
