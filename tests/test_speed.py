"""Optional training fast paths (spine/speed.py) against the pure-PyTorch reference.

float8 is checked on the CPU through torchao's emulation (float8 casts and scales, matmuls in higher
precision) and, where a float8 GPU and torchao exist, with the real kernels; without torchao or such
a GPU the model must stay exactly as it was and the caller gets one line saying why.
"""
from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from spine.config import ModelConfig
from spine.model import GPT
from spine.speed import compiler_tuning, float8_linears, float8_support
from spine.training import lm_loss_sum

HAS_TORCHAO = importlib.util.find_spec("torchao") is not None
FLOAT8_GPU = float8_support() is None


def _tiny(family: str = "gpt2") -> tuple[ModelConfig, GPT]:
    preset = "gpt2-tiny" if family == "gpt2" else "qwen3-tiny"
    cfg = ModelConfig.from_preset(preset).replace(d_model=64, n_layer=2, n_head=4, vocab_size=256, context_length=64)
    if family != "gpt2":
        cfg = cfg.replace(n_kv_head=2, head_dim=16, d_ff=128)
    torch.manual_seed(0)
    return cfg, GPT(cfg)


def _loss_and_grads(model: GPT, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss, n = lm_loss_sum(model, ids[:, :-1], ids[:, 1:])
    (loss / n).backward()
    return (loss / n).detach(), {k: p.grad.detach().clone() for k, p in model.named_parameters()}


def test_float8_falls_back_in_one_line_where_it_cannot_run():
    if FLOAT8_GPU:
        pytest.skip("this machine can run float8; the fallback is for machines that cannot")
    _, model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types = [type(m) for m in model.modules()]
    names, why = float8_linears(model)
    assert names == [] and isinstance(why, str) and "\n" not in why
    # the hardware is checked first (without importing torchao), then torchao
    if not torch.cuda.is_available():
        assert why.startswith("no CUDA device")
    elif torch.cuda.get_device_capability() < (8, 9):
        assert "capability" in why
    else:
        assert not HAS_TORCHAO and "torchao" in why
    assert [type(m) for m in model.modules()] == types
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.skipif(not HAS_TORCHAO, reason="torchao not installed (pip install -e '.[fast]')")
@pytest.mark.parametrize("family", ["gpt2", "qwen3"])
def test_float8_emulated_matches_reference(family):
    cfg, model = _tiny(family)
    ref = copy.deepcopy(model)
    names, why = float8_linears(model, emulate=True)
    assert why is None
    # every block linear, never the (tied) head; sizes here are multiples of 16
    expected = {n for n, m in ref.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    assert set(names) == expected and len(names) == (4 if family == "gpt2" else 5) * cfg.n_layer
    assert all(type(model.get_submodule(n)).__name__ == "Float8Linear" for n in names)
    assert type(model.lm_head) is torch.nn.Linear
    assert list(model.state_dict()) == list(ref.state_dict())  # checkpoints keep their keys
    if cfg.tie_embeddings:
        assert model.lm_head.weight is model.tok_emb.weight
    ids = torch.randint(0, cfg.vocab_size, (4, 33), generator=torch.Generator().manual_seed(1))
    loss8, g8 = _loss_and_grads(model, ids)
    loss, g = _loss_and_grads(ref, ids)
    # float8 e4m3 activations/weights, e5m2 gradients: loss within 0.5%, each linear's weight
    # gradient within 20% (relative L2) and pointing the same way (cosine > 0.98)
    assert abs(loss8.item() - loss.item()) <= 5e-3 * loss.item()
    for name in names:
        a, b = g8[f"{name}.weight"].flatten(), g[f"{name}.weight"].flatten()
        assert (a - b).norm() <= 0.2 * b.norm(), name
        assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.98, name
        # and the float8 casts are really in the path: a no-op swap would give identical gradients
        assert (a - b).norm() > 1e-3 * b.norm(), name


@pytest.mark.skipif(not HAS_TORCHAO, reason="torchao not installed")
def test_float8_skips_sizes_that_are_not_multiples_of_16():
    cfg = ModelConfig.from_preset("gpt2-tiny").replace(d_model=40, n_layer=1, n_head=4, vocab_size=256)
    model = GPT(cfg)
    names, why = float8_linears(model, emulate=True)
    assert why is None and names == []  # 40 and 120 are not multiples of 16
    assert all(type(m) is torch.nn.Linear for m in model.modules() if isinstance(m, torch.nn.Linear))


@pytest.mark.skipif(not FLOAT8_GPU, reason="needs torchao and a GPU with float8 tensor cores")
def test_float8_gpu_matches_reference():
    cfg, model = _tiny()
    model = model.cuda()
    ref = copy.deepcopy(model)
    names, why = float8_linears(model)
    assert why is None and names
    ids = torch.randint(0, cfg.vocab_size, (4, 33), generator=torch.Generator().manual_seed(1)).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss8, g8 = _loss_and_grads(model, ids)
        loss, g = _loss_and_grads(ref, ids)
    assert abs(loss8.item() - loss.item()) <= 1e-2 * loss.item()
    for name in names:
        a, b = g8[f"{name}.weight"].flatten().float(), g[f"{name}.weight"].flatten().float()
        assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.97, name


def test_compiler_tuning_switches_inductor_and_back():
    import torch._inductor.config as inductor_config

    before = inductor_config.coordinate_descent_tuning
    try:
        compiler_tuning(True)
        assert inductor_config.coordinate_descent_tuning is True
        compiler_tuning(False)
        assert inductor_config.coordinate_descent_tuning is False
    finally:
        inductor_config.coordinate_descent_tuning = before


def test_pretrain_module_float8_flag_warns_once_and_trains_as_without_it():
    if FLOAT8_GPU:
        pytest.skip("this machine can run float8")
    import warnings

    from modules.pretrain import PretrainModule

    def module(float8: bool) -> PretrainModule:
        torch.manual_seed(0)
        return PretrainModule(model="gpt2-tiny", model_overrides={"d_model": 64, "n_layer": 1, "n_head": 4},
                              vocab_size=256, context_length=32, float8=float8)

    with_flag, without = module(True), module(False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with_flag.configure_model()
        with_flag.configure_model()  # Lightning may call it again: still one warning, one swap
        without.configure_model()
    lines = [str(w.message) for w in caught if "float8" in str(w.message)]
    assert len(lines) == 1 and lines[0].startswith("float8: not used (") and "\n" not in lines[0]
    assert all(type(m) is torch.nn.Linear for m in with_flag.model.modules() if isinstance(m, torch.nn.Linear))
    ids = torch.randint(0, 256, (2, 33), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids[:, :-1], "targets": ids[:, 1:]}
    assert torch.equal(with_flag._loss(batch)[0], without._loss(batch)[0])


def test_float8_is_a_pretraining_option_only():
    from modules.instruction import InstructionModule

    with pytest.raises(TypeError, match="float8"):
        InstructionModule(model="gpt2-tiny", model_overrides={"d_model": 64, "n_layer": 1, "n_head": 4},
                          vocab_size=256, context_length=32, float8=True)
