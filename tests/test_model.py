"""ModelConfig and GPT invariants: serialisation, validation, parameter counts, dropout, torch.compile."""
from __future__ import annotations

import json

import pytest
import torch

from spine.config import PRESETS, ModelConfig
from spine.model import GPT

PUBLIC = ["gpt2-124m", "gpt2-355m", "gpt2-774m", "gpt2-1558m", "qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b"]
# Published totals (openai-community/gpt2*, tied head counted once).
GPT2_PARAMS = {"gpt2-124m": 124_439_808, "gpt2-355m": 354_823_168, "gpt2-774m": 774_030_080,
               "gpt2-1558m": 1_557_611_200}


# ---------------------------------------------------------------------------- config
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_json_round_trip(tmp_path, name):
    cfg = ModelConfig.from_preset(name, extra={"note": [1, 2]})
    cfg.to_json(tmp_path / "c.json")
    assert ModelConfig.from_json(tmp_path / "c.json") == cfg
    assert ModelConfig.from_json(cfg.to_json()) == cfg  # from text as well
    assert json.loads(cfg.to_json())["n_kv_head"] == cfg.n_kv_head  # derived fields are written out


def test_unknown_preset_lists_names():
    with pytest.raises(ValueError, match="unknown model preset 'gpt3'.*gpt2-124m.*qwen3-8b"):
        ModelConfig.from_preset("gpt3")


def test_unknown_and_missing_keys_are_named(tmp_path):
    base = ModelConfig.from_preset("gpt2-tiny").to_dict()
    with pytest.raises(ValueError, match=r"unknown ModelConfig field\(s\) \['drop_rate', 'emb_dim'\]"):
        ModelConfig.from_dict({**base, "emb_dim": 5, "drop_rate": 0.1})
    del base["n_layer"]
    (tmp_path / "c.json").write_text(json.dumps(base))
    with pytest.raises(ValueError, match=r"c\.json: missing required ModelConfig field\(s\) \['n_layer'\]"):
        ModelConfig.from_json(tmp_path / "c.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        ModelConfig.from_json(tmp_path / "bad.json")


@pytest.mark.parametrize("changes,message", [
    ({"vocab_size": 0}, "vocab_size must be a positive integer"),
    ({"n_layer": 2.5}, "n_layer must be a positive integer"),
    ({"n_head": 5}, "d_model=64 is not divisible by n_head=5"),
    ({"n_kv_head": 3}, "n_head=4 must be a multiple of n_kv_head=3"),
    ({"pos_emb": "alibi"}, "pos_emb must be one of"),
    ({"norm": "batchnorm"}, "norm must be one of"),
    ({"mlp": "relu"}, "mlp must be one of"),
    ({"dropout": 1.0}, "dropout must be in [0, 1)"),
    ({"norm_eps": 0.0}, "norm_eps must be > 0"),
    ({"pos_emb": "rope", "head_dim": 15}, "head_dim must be even for rotary positions"),
])
def test_invalid_values_are_named(changes, message):
    with pytest.raises(ValueError) as e:
        ModelConfig.from_preset("gpt2-tiny", **changes)
    assert message in str(e.value)


# ---------------------------------------------------------------------------- parameter counts
def _meta(cfg: ModelConfig) -> GPT:
    with torch.device("meta"):
        return GPT(cfg)


@pytest.mark.parametrize("name", PUBLIC)
def test_public_presets_build_on_meta_with_public_counts(name):
    cfg = ModelConfig.from_preset(name)
    model = _meta(cfg)
    assert all(p.is_meta for p in model.parameters())
    n = model.num_params()
    assert cfg.num_params() == n
    if name in GPT2_PARAMS:
        assert n == GPT2_PARAMS[name]
    else:
        transformers = pytest.importorskip("transformers")
        from spine.hf import config_to_hf

        hf_cfg = {k: v for k, v in config_to_hf(cfg).items() if k not in ("architectures", "model_type")}
        with torch.device("meta"):
            hf = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**hf_cfg))
        assert n == sum(p.numel() for p in hf.parameters())  # HF dedupes the tied head the same way
    if name == "qwen3-0.6b":
        assert n == 596_049_920 and cfg.tie_embeddings


@pytest.mark.parametrize("changes", [{}, {"tie_embeddings": False}, {"pad_vocab_to": 64, "vocab_size": 1000},
                                     {"qkv_bias": False, "bias": False}, {"n_kv_head": 1, "qk_norm": True}])
@pytest.mark.parametrize("preset", ["gpt2-tiny", "qwen3-tiny"])
def test_num_params_formula_matches_module(preset, changes):
    cfg = ModelConfig.from_preset(preset, **changes)
    model = _meta(cfg)
    assert cfg.num_params() == model.num_params()
    emb = cfg.padded_vocab_size * cfg.d_model + (cfg.context_length * cfg.d_model if cfg.pos_emb == "learned" else 0)
    head = 0 if cfg.tie_embeddings else cfg.padded_vocab_size * cfg.d_model
    assert cfg.num_params(include_embeddings=False) == model.num_params() - emb - head


# ---------------------------------------------------------------------------- forward behaviour
def _tiny(preset: str, **kw) -> GPT:
    torch.manual_seed(0)
    return GPT.from_preset(preset, vocab_size=300, **kw)


@pytest.mark.parametrize("preset", ["gpt2-tiny", "qwen3-tiny"])
def test_dropout_train_vs_eval(preset):
    model = _tiny(preset, dropout=0.3)
    ref = _tiny(preset)  # same weights (same seed), no dropout
    idx = torch.randint(0, 300, (2, 16))
    model.train()
    a, b = model(idx), model(idx)
    assert not torch.allclose(a, b)
    model.eval()
    with torch.no_grad():
        c, d = model(idx), model(idx)
        assert torch.equal(c, d)
        assert torch.allclose(c, ref.eval()(idx), atol=1e-6)


def test_padded_vocab_shapes_and_context_limit():
    model = _tiny("gpt2-tiny", pad_vocab_to=64)
    assert model(torch.zeros(1, 5, dtype=torch.long)).shape == (1, 5, 320)
    with pytest.raises(ValueError, match="sequence length 129 exceeds context_length 128"):
        model(torch.zeros(1, 129, dtype=torch.long))
    model.setup_kv_cache(1, 16)
    with pytest.raises(ValueError, match="pass input_pos"):
        model(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="exceeds the model's context_length"):
        model.setup_kv_cache(1, 1000)


def test_cast_keeps_rope_tables_float32():
    model = _tiny("qwen3-tiny").to(torch.bfloat16)
    assert model.rope_cos.dtype == torch.float32 and model.tok_emb.weight.dtype == torch.bfloat16


# ---------------------------------------------------------------------------- torch.compile
def _decode_steps(model: GPT, step_fn, prompt: torch.Tensor, pad_lens: torch.Tensor, n: int) -> list[torch.Tensor]:
    """Prefill eagerly, then `n` one-token cached steps through `step_fn`; returns each step's logits."""
    B, T0 = prompt.shape
    model.setup_kv_cache(B, T0 + n)
    try:
        with torch.no_grad():
            logits = model(prompt, input_pos=torch.arange(T0), pad_lens=pad_lens, last_only=True)
            outs = []
            for i in range(n):
                tok = logits[:, -1].argmax(-1, keepdim=True)
                logits = step_fn(tok, torch.tensor([T0 + i]), pad_lens)
                outs.append(logits)
        return outs
    finally:
        model.reset_kv_cache()


def _check_compile(preset: str, train_backend: str, decode_backend: str) -> None:
    torch._dynamo.reset()
    model = _tiny(preset)
    idx = torch.randint(0, 300, (2, 24))
    # training forward + backward, fullgraph (no graph breaks)
    model.train()
    compiled = torch.compile(model, fullgraph=True, backend=train_backend)
    loss_c = torch.nn.functional.cross_entropy(compiled(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
    loss_c.backward()
    grads_c = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    loss_e = torch.nn.functional.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
    loss_e.backward()
    assert abs(loss_c.item() - loss_e.item()) <= 1e-5
    for n, p in model.named_parameters():
        assert torch.allclose(grads_c[n], p.grad, atol=1e-5), n
    # decode step: one token, static cache, left-padding offsets
    model.eval()

    def step(t, p, pl):
        return model(t, input_pos=p, pad_lens=pl, last_only=True)

    prompt, pad_lens = torch.randint(0, 300, (2, 7)), torch.tensor([0, 3])
    eager = _decode_steps(model, step, prompt, pad_lens, 3)
    comp = _decode_steps(model, torch.compile(step, fullgraph=True, backend=decode_backend), prompt, pad_lens, 3)
    for a, b in zip(eager, comp):
        assert (a - b).abs().max().item() <= 1e-5


@pytest.mark.parametrize("preset", ["gpt2-tiny", "qwen3-tiny"])
def test_compile_fullgraph_traces(preset):
    """Dynamo captures the training forward (+backward) and the decode step without graph breaks.

    Fast backends: "eager" runs dynamo's graph capture (where graph breaks happen); "aot_eager" adds
    AOTAutograd's functionalisation of the in-place KV-cache writes, as inductor needs.
    """
    _check_compile(preset, "eager", "aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["gpt2-tiny", "qwen3-tiny"])
def test_compile_inductor_matches_eager(preset):
    """The same with inductor codegen (30-60 s per model on 2 CPU cores, hence slow)."""
    _check_compile(preset, "inductor", "inductor")


def test_head_logits_equal_the_linear_head_forward_and_backward():
    """The padded head (used on CUDA when the vocabulary is not a multiple of 8) computes F.linear, and its
    gradients are those of the unpadded weight and bias."""
    from spine.model import head_logits, pads_head

    # which heads take the padded path: plain linears with unaligned rows, on CUDA only
    assert pads_head(torch.nn.Linear(16, 37), "cuda") and pads_head(torch.nn.Linear(16, 2), "cuda")
    assert not pads_head(torch.nn.Linear(16, 40), "cuda") and not pads_head(torch.nn.Linear(16, 37), "cpu")

    class Wrapped(torch.nn.Linear):  # e.g. a float8 linear: runs its own forward
        pass

    assert not pads_head(Wrapped(16, 37), "cuda")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 16, generator=g)
    for bias in (None, torch.randn(37, generator=g)):
        w = torch.randn(37, 16, generator=g).requires_grad_()
        b = None if bias is None else bias.clone().requires_grad_()
        got = head_logits(x, w, b)
        assert got.shape == (5, 3, 37)
        want_w, want_b = w.detach().clone().requires_grad_(), None if b is None else b.detach().clone().requires_grad_()
        want = torch.nn.functional.linear(x, want_w, want_b)
        assert torch.allclose(got, want, atol=1e-5)
        upstream = torch.randn(want.shape, generator=g)
        (got * upstream).sum().backward()
        (want * upstream).sum().backward()
        assert w.grad.shape == (37, 16) and torch.allclose(w.grad, want_w.grad, atol=1e-5)
        if b is not None:
            assert torch.allclose(b.grad, want_b.grad, atol=1e-5)


def test_forward_routes_an_unaligned_head_through_head_logits(monkeypatch):
    """GPT.forward's wiring of the padded head (its CUDA condition forced true here): same logits, full and
    last-only, as the plain head."""
    import spine.model as sm

    torch.manual_seed(0)
    model = GPT.from_preset("gpt2-tiny", vocab_size=37).eval()
    idx = torch.randint(0, 37, (2, 9))
    want, want_last = model(idx), model(idx, last_only=True)
    calls = []
    monkeypatch.setattr(sm, "pads_head", lambda head, device_type: calls.append(device_type) or True)
    got, got_last = model(idx), model(idx, last_only=True)
    assert calls == ["cpu", "cpu"] and got.shape == want.shape == (2, 9, 37)
    assert torch.allclose(got, want, atol=1e-5) and torch.allclose(got_last, want_last, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the padded head is a CUDA path")
def test_padded_head_on_cuda_matches_cpu():
    """On CUDA an unaligned head (37 rows) runs padded: logits and gradients (tied embeddings included) equal the
    CPU model's plain head, full and last-only."""
    torch.manual_seed(0)
    cpu = GPT.from_preset("gpt2-tiny", vocab_size=37)
    gpu = GPT.from_preset("gpt2-tiny", vocab_size=37).cuda()
    gpu.load_state_dict(cpu.state_dict())
    idx = torch.randint(0, 37, (3, 11))
    want, got = cpu(idx), gpu(idx.cuda())
    assert torch.allclose(got.cpu(), want, atol=1e-4)
    assert torch.allclose(gpu(idx.cuda(), last_only=True).cpu(), want[:, -1:], atol=1e-4)
    want.square().mean().backward()
    got.square().mean().backward()
    for (name, p), q in zip(cpu.named_parameters(), gpu.parameters()):
        assert torch.allclose(q.grad.cpu(), p.grad, atol=1e-4), name
