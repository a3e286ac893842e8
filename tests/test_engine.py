"""spine.engine: the one decode loop against independent references.

Shared-prefill samples = samples generated alone with the same seeds; log-probs = score() =
sequence_logprobs; cache = recompute; batch size, chunking, order and compaction change nothing;
stop ids/strings, finish reasons and token counts are exact; the counter-based noise is uniform and
sampling frequencies match the filtered softmax. All on CPU in float32.
"""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from spine.engine import Completion, Engine, SamplingParams, sample_seed, sequence_logprobs, stop_token_ids
from spine.generation import filter_logits, generate, sample_next, score, uniform_noise
from spine.model import GPT
from spine.tokenizer import get_tokenizer

TOK = get_tokenizer("byte")  # 257 ids: 256 bytes + <|endoftext|>
V = 257
PROMPTS = ["Question: 2+2?", "hi", "A somewhat longer prompt, for padding."]


def _model(preset: str = "gpt2-tiny", std: float | None = None) -> GPT:
    torch.manual_seed(0)
    m = GPT.from_preset(preset, vocab_size=V)
    if std is not None:  # peaked next-token distributions: no near-ties for argmax
        m.init_weights(std=std)
    return m.eval()


def _texts(out: list[list[Completion]]) -> list[list[list[int]]]:
    return [[c.token_ids for c in row] for row in out]


# ----------------------------------------------------------------------------- shared prefill = alone
@pytest.mark.parametrize("preset", ["gpt2-tiny", "qwen3-tiny"])
def test_shared_prefill_samples_equal_independent_generation(preset):
    model = _model(preset)
    params = SamplingParams(temperature=1.0, n=4, seed=11, max_new_tokens=10)
    out = Engine(model, TOK, batch_size=16).generate(PROMPTS, params, keys=["a", "b", "c"])
    for row, key, prompt in zip(out, "abc", PROMPTS):
        for j, c in enumerate(row):
            alone = generate(model, [TOK.encode(prompt)], max_new_tokens=10, temperature=1.0,
                             row_seeds=[sample_seed(11, key, j)], stop_tokens=sorted(stop_token_ids(TOK)))
            assert c.token_ids == alone.tokens[0] and c.index == j
            assert torch.allclose(torch.tensor(c.logprobs), torch.tensor(alone.logprobs[0]), atol=1e-5)
    assert len({tuple(c.token_ids) for c in out[0]}) == 4  # the four samples really differ


def test_logprobs_equal_score_and_sequence_logprobs():
    model = _model("qwen3-tiny")
    out = Engine(model, TOK).generate(PROMPTS, SamplingParams(temperature=1.0, n=2, seed=3, max_new_tokens=8))
    prompts = [TOK.encode(p) for p in PROMPTS for _ in range(2)]
    comps = [c.token_ids for row in out for c in row]
    for s, c in zip(score(model, prompts, comps), (c for row in out for c in row)):
        assert torch.allclose(torch.tensor(s.token_logprobs), torch.tensor(c.logprobs), atol=1e-5)
        assert abs(s.sum_logprob - c.sum_logprob) < 1e-4
    # sequence_logprobs is differentiable and masks the prompt
    p, c = prompts[0], comps[0]
    ids = torch.tensor([p + c])
    mask = torch.tensor([[0] * len(p) + [1] * len(c)])
    model.zero_grad()
    lp = sequence_logprobs(model, ids, mask)
    assert lp.shape == (1, len(p) + len(c) - 1) and torch.all(lp[0, :len(p) - 1] == 0)
    assert torch.allclose(lp[0, len(p) - 1:], torch.tensor(out[0][0].logprobs), atol=1e-5)
    lp.sum().backward()
    assert model.tok_emb.weight.grad is not None


@pytest.mark.parametrize("preset", ["gpt2-tiny", "qwen3-tiny"])
def test_sampled_cache_equals_recompute(preset):
    model = _model(preset)
    ids = [TOK.encode(p) for p in PROMPTS]
    kw = dict(max_new_tokens=9, temperature=0.9, top_k=40, repeats=[2, 1, 3], seed=5)
    cached = generate(model, ids, **kw)
    full = generate(model, ids, use_cache=False, **kw)
    assert cached.tokens == full.tokens
    for a, b in zip(cached.logprobs, full.logprobs):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5)


# ----------------------------------------------------------------------------- batching changes nothing
def test_batch_size_chunking_and_order_do_not_change_samples():
    model = _model()
    params = SamplingParams(temperature=1.0, top_p=0.95, n=3, seed=7, max_new_tokens=8, stop=("e",))
    keys = ["p0", "p1", "p2"]
    ref = Engine(model, TOK, batch_size=16).generate(PROMPTS, params, keys=keys)
    for bs in (1, 2, 5):
        assert _texts(Engine(model, TOK, batch_size=bs).generate(PROMPTS, params, keys=keys)) == _texts(ref)
    rev = Engine(model, TOK, batch_size=4).generate(PROMPTS[::-1], params, keys=keys[::-1])
    assert _texts(rev)[::-1] == _texts(ref)
    # chunks: each prompt alone, in its own call, with its key
    for i in range(3):
        alone = Engine(model, TOK, batch_size=2).generate([PROMPTS[i]], params, keys=[keys[i]])
        assert _texts(alone)[0] == _texts(ref)[i]
        assert [c.generated_tokens for c in alone[0]] == [c.generated_tokens for c in ref[i]]


def test_noise_depends_on_key_not_on_the_call():
    """The old engine seeded every call with `seed`: two chunks drew one noise stream."""
    model = _model()
    params = SamplingParams(temperature=1.0, seed=0, max_new_tokens=8)
    eng = Engine(model, TOK)
    a = eng.generate(["same prompt"], params, keys=["problem-1"])
    b = eng.generate(["same prompt"], params, keys=["problem-2"])
    again = eng.generate(["same prompt"], params, keys=["problem-1"])
    assert a[0][0].token_ids != b[0][0].token_ids
    assert a[0][0].token_ids == again[0][0].token_ids
    torch.manual_seed(1)
    u1 = eng.generate(["same prompt"], SamplingParams(temperature=1.0, max_new_tokens=8))
    u2 = eng.generate(["same prompt"], SamplingParams(temperature=1.0, max_new_tokens=8))
    torch.manual_seed(1)
    u3 = eng.generate(["same prompt"], SamplingParams(temperature=1.0, max_new_tokens=8))
    assert u1[0][0].token_ids != u2[0][0].token_ids and u1[0][0].token_ids == u3[0][0].token_ids


@pytest.mark.parametrize("sync_every", [1, 3])
def test_compaction_does_not_change_outputs(sync_every):
    model = _model(std=0.25)
    ids = [TOK.encode(p) for p in PROMPTS]
    free = generate(model, ids, max_new_tokens=14, temperature=1.0, seed=2, repeats=[3, 3, 2])
    # stop ids that end most rows early, at different steps, so the batch shrinks several times
    stops = sorted({row[i] for row in free.tokens[:6] for i in (1, 4)})
    kw = dict(max_new_tokens=14, temperature=1.0, seed=2, repeats=[3, 3, 2], stop_tokens=stops, sync_every=sync_every)
    compacted = generate(model, ids, compact=True, **kw)
    full = generate(model, ids, compact=False, **kw)
    assert compacted.tokens == full.tokens and compacted.finish_reasons == full.finish_reasons
    assert compacted.finish_reasons.count("stop") >= 4
    for a, b in zip(compacted.logprobs, full.logprobs):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5)


def test_greedy_n_samples_are_one_decode():
    model = _model(std=0.25)
    out = Engine(model, TOK).generate(PROMPTS, SamplingParams(n=3, max_new_tokens=6))
    one = Engine(model, TOK).generate(PROMPTS, SamplingParams(max_new_tokens=6))
    for row, ref in zip(out, one):
        assert [c.token_ids for c in row] == [ref[0].token_ids] * 3 and [c.index for c in row] == [0, 1, 2]


# ----------------------------------------------------------------------------- stops and counts
def test_stop_token_finish_reason_and_counts_are_exact():
    model = _model(std=0.25)
    free = Engine(model, TOK).generate(PROMPTS[:1], SamplingParams(max_new_tokens=12))[0][0]
    assert free.finish_reason == "length" and free.generated_tokens == len(free.token_ids) == 12
    assert free.prompt_tokens == len(TOK.encode(PROMPTS[0])) and free.stop_reason is None
    at = 3
    stop = free.token_ids[at]
    first = free.token_ids.index(stop)
    c = Engine(model, TOK).generate(PROMPTS[:1], SamplingParams(max_new_tokens=12, stop_token_ids=(stop,)))[0][0]
    assert c.finish_reason == "stop" and c.stop_reason == stop
    assert c.token_ids == free.token_ids[:first + 1] and c.generated_tokens == first + 1
    assert c.text == TOK.decode(free.token_ids[:first]) and len(c.logprobs) == first + 1


@pytest.mark.parametrize("sync_every", [1, 4])
def test_stop_string_cuts_text_ids_and_counts_paid_tokens(sync_every):
    model = _model(std=0.25)
    free = Engine(model, TOK).generate(PROMPTS[:1], SamplingParams(max_new_tokens=16))[0][0]
    stop = TOK.decode(free.token_ids[5:7])
    pos = free.text.index(stop)
    # the token that completes the stop string (linear scan over prefixes)
    done_at = next(k for k in range(1, 17) if stop in TOK.decode(free.token_ids[:k]))
    c = Engine(model, TOK, sync_every=sync_every).generate(
        PROMPTS[:1], SamplingParams(max_new_tokens=16, stop=(stop,)))[0][0]
    assert c.text == free.text[:pos] and c.finish_reason == "stop" and c.stop_reason == stop
    assert c.token_ids == free.token_ids[:done_at] and c.logprobs == free.logprobs[:done_at]
    # decoding ends at the first host check at or after that token
    assert c.generated_tokens == min(16, -(-done_at // sync_every) * sync_every)


def test_qwen3_stop_ids_include_endoftext_and_im_end(tmp_path):
    from test_qwen_tokenizer import _build_tokenizer_json

    from spine.qwen_tokenizer import Qwen3Tokenizer

    tok = Qwen3Tokenizer(_build_tokenizer_json(tmp_path).parent)
    st = tok.special_tokens
    assert {st["<|endoftext|>"], st["<|im_end|>"]} <= stop_token_ids(tok)
    # a base model's eos is <|endoftext|>: it still stops at <|im_end|>
    base = Qwen3Tokenizer(tmp_path, eos_token="<|endoftext|>")
    assert {st["<|endoftext|>"], st["<|im_end|>"]} <= stop_token_ids(base)
    torch.manual_seed(0)
    model = GPT.from_preset("gpt2-tiny", vocab_size=tok.vocab_size).eval()
    with torch.no_grad():  # final hidden state = e_0 whatever the input; only <|im_end|> reads it
        model.final_norm.weight.zero_()
        model.final_norm.bias.zero_()
        model.final_norm.bias[0] = 1.0
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[st["<|im_end|>"], 0] = 10.0
    c = Engine(model, base).generate(["hi"], SamplingParams(max_new_tokens=4))[0][0]
    assert c.finish_reason == "stop" and c.stop_reason == st["<|im_end|>"]
    assert c.token_ids == [st["<|im_end|>"]] and c.generated_tokens == 1 and c.text == ""


# ----------------------------------------------------------------------------- defects of the old loop
def test_callers_kv_cache_survives_generate_and_score():
    model = _model()
    model.setup_kv_cache(5, 64)  # a caller's cache of another batch size
    mine = [b.attn.kv_cache for b in model.blocks]
    out = generate(model, [[1, 2, 3]], max_new_tokens=4)
    assert [b.attn.kv_cache for b in model.blocks] == mine
    s = score(model, [[1, 2, 3]], out.tokens)  # a leftover cache used to make score() raise
    assert len(s[0].token_logprobs) == 4
    assert [b.attn.kv_cache for b in model.blocks] == mine


def test_bad_settings_are_refused():
    model = _model()
    with pytest.raises(ValueError, match="sync_every"):
        generate(model, [[1]], sync_every=0)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, [[1]], temperature=-0.5)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1.0)
    with pytest.raises(ValueError, match="sync_every"):
        Engine(model, TOK, sync_every=0)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        Engine(model, TOK).generate(["a", ""], SamplingParams())
    with pytest.raises(TypeError, match="list of prompts"):
        Engine(model, TOK).generate("a", SamplingParams())


def test_top_k_keeps_ties_whatever_top_p_says():
    logits = torch.tensor([[3.0, 1.0, 1.0, 1.0, 0.0]])
    kept = filter_logits(logits, temperature=1.0, top_k=2).isfinite()
    assert kept.tolist() == [[True, True, True, True, False]]  # every token tied with the 2nd stays
    assert SamplingParams(top_k=2, top_p=1.0) == SamplingParams(top_k=2, top_p=None)
    rows = logits.repeat(30000, 1)
    seeds = torch.arange(30000)
    a = sample_next(rows, temperature=1.0, top_k=2, row_seeds=seeds)
    b = sample_next(rows, temperature=1.0, top_k=2, top_p=1.0, row_seeds=seeds)
    assert torch.equal(a, b)
    freq = torch.bincount(a, minlength=5).float() / 30000
    want = torch.softmax(torch.tensor([3.0, 1.0, 1.0, 1.0]), -1)
    assert torch.allclose(freq[:4], want, atol=0.012) and freq[4] == 0


# ----------------------------------------------------------------------------- the noise itself
def test_counter_noise_is_uniform_and_independent():
    """Chi-square over 100 bins (99 dof: mean 99, sd 14; the bound is ~7 sd) and over pairs of
    consecutive steps of one row (10x10 bins), fixed seeds: deterministic, not flaky."""
    seeds = torch.tensor([sample_seed(0, "k", j) for j in range(200)])
    u = uniform_noise(seeds, 3, 1000).flatten()
    assert 0 < u.min() and u.max() < 1
    counts = torch.histc(u, bins=100, min=0, max=1)
    chi2 = ((counts - u.numel() / 100) ** 2 / (u.numel() / 100)).sum()
    assert chi2 < 200, chi2
    a, b = uniform_noise(seeds, 4, 1000).flatten(), uniform_noise(seeds, 5, 1000).flatten()
    pairs = torch.bincount((a * 10).long() * 10 + (b * 10).long(), minlength=100).float()
    chi2 = ((pairs - a.numel() / 100) ** 2 / (a.numel() / 100)).sum()
    assert chi2 < 200, chi2
    # neighbouring seeds and steps are not shifted copies of each other
    assert not torch.equal(uniform_noise(torch.tensor([1]), 0, 50)[0, 1:], uniform_noise(torch.tensor([1]), 0, 50)[0, :-1])
    assert torch.equal(uniform_noise(seeds[:3], 7, 10), uniform_noise(seeds, 7, 10)[:3])  # no batch effect


@pytest.mark.slow
def test_compiled_decode_with_in_graph_noise_equals_eager():
    """The compiled step hashes the noise inside the graph (int64 wrap-around must match eager).
    Inductor on CPU takes minutes: run with -m slow (it passed in 2m40s on 2 CPU cores)."""
    torch._dynamo.reset()
    model = _model()
    ids = [[1, 2, 3], [4, 5, 6, 7, 8]]
    kw = dict(max_new_tokens=6, temperature=1.0, seed=3, repeats=[2, 1], stop_tokens=[10, 20, 30, 40], sync_every=2)
    assert generate(model, ids, compile_decode=True, **kw).tokens == generate(model, ids, **kw).tokens


@pytest.mark.parametrize("repeats", [None, [2, 1, 3]])
def test_cache_pool_buffers_are_reused_and_equal_a_fresh_cache(repeats):
    """With a cache pool (the compiled engine's) the prefill writes straight into the pool's fixed buffers
    (one prompt per row) or is gathered into them (shared prefill). A second call reuses the same buffers,
    and nothing of what they held before leaks in: here they are filled with NaN between the calls."""
    model = _model()
    ids = [TOK.encode(p) for p in PROMPTS]
    kw = dict(max_new_tokens=7, temperature=1.0, seed=4, repeats=repeats, stop_tokens=[10, 200])
    pool: dict = {}
    first = generate(model, ids, cache_pool=pool, **kw)
    ptrs = {key: (k.data_ptr(), v.data_ptr()) for key, (k, v) in pool.items()}
    assert ptrs and all(k.shape[0] == sum(repeats or [1] * 3) for k, _ in pool.values())
    with torch.inference_mode():  # the pool holds inference tensors
        for k, v in pool.values():
            k.fill_(float("nan"))
            v.fill_(float("nan"))
    again = generate(model, ids, cache_pool=pool, **kw)
    fresh = generate(model, ids, **kw)
    assert {key: (k.data_ptr(), v.data_ptr()) for key, (k, v) in pool.items()} == ptrs
    assert first.tokens == again.tokens == fresh.tokens
    for a, b in zip(again.logprobs, fresh.logprobs):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5)


def test_shared_prefill_cache_equals_replicated_prefill_and_decodes_with_the_same_ops():
    """After the prefill, the shared path must look exactly like the replicated one: the gathered cache
    equals (and is laid out like) the cache of each prompt prefilled once per row, and one decode step
    dispatches the same ops (counted with torch.profiler: device-independent)."""
    from torch.profiler import ProfilerActivity, profile

    from spine.generation import _gather_cache

    model = _model()
    ids = [TOK.encode(p) for p in PROMPTS[:2]]
    T = max(len(p) for p in ids)
    padded = torch.tensor([[0] * (T - len(p)) + p for p in ids])
    pad = torch.tensor([T - len(p) for p in ids])
    rows = torch.tensor([0, 0, 0, 1, 1])
    with torch.inference_mode():
        model.setup_kv_cache(2, T + 4)
        model(padded, input_pos=torch.arange(T), pad_lens=pad, last_only=True)
        _gather_cache(model, rows, None)
        shared = [(b.attn.kv_cache.k, b.attn.kv_cache.v) for b in model.blocks]
        model.setup_kv_cache(5, T + 4)
        model(padded[rows], input_pos=torch.arange(T), pad_lens=pad[rows], last_only=True)
        for (k, v), b in zip(shared, model.blocks):
            ref = b.attn.kv_cache
            assert k.is_contiguous() and k.stride() == ref.k.stride() and k.dtype == ref.k.dtype
            assert torch.allclose(k, ref.k, atol=1e-6) and torch.allclose(v, ref.v, atol=1e-6)
    model.reset_kv_cache()

    def ops(prompts, repeats, new):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            generate(model, prompts, repeats=repeats, max_new_tokens=new, temperature=1.0, seed=1, top_k=20,
                     stop_tokens=[256], sync_every=4)
        return Counter(e.name for e in prof.events() if e.name.startswith("aten::"))

    def per_step(prompts, repeats):  # 8 more steps, 2 more host checks: prefill and setup cancel out
        return ops(prompts, repeats, 16) - ops(prompts, repeats, 8)

    shared_ops = per_step(ids, [3, 2])
    assert sum(shared_ops.values()) > 0 and shared_ops == per_step([ids[0]] * 3 + [ids[1]] * 2, None)
