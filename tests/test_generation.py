"""generate/score invariants: cache == recompute, padding == alone, sampling modes, stops, log-probs."""
from __future__ import annotations

import pytest
import torch

from spine.generation import generate, score
from spine.model import GPT

V = 320
FAMILIES = ["gpt2-tiny", "qwen3-tiny"]


def _peaked(preset: str, **kw) -> GPT:
    """Weights large enough that next-token distributions are peaked (no near-ties for argmax)."""
    torch.manual_seed(0)
    model = GPT.from_preset(preset, vocab_size=V, **kw)
    model.init_weights(std=0.25)
    return model.eval()


def _flat(preset: str = "gpt2-tiny") -> GPT:
    """Default init: near-uniform (high-entropy) next-token distributions."""
    torch.manual_seed(0)
    return GPT.from_preset(preset, vocab_size=V).eval()


def _prompts(lengths=(3, 11, 6), seed=1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V, (n,), generator=g).tolist() for n in lengths]


def _lp_close(a: list[list[float]], b: list[list[float]], atol: float) -> None:
    assert [len(r) for r in a] == [len(r) for r in b]
    for ra, rb in zip(a, b):
        assert torch.allclose(torch.tensor(ra), torch.tensor(rb), atol=atol, rtol=0)


@pytest.mark.parametrize("preset", FAMILIES)
def test_kv_cache_equals_full_recompute(preset):
    model, prompts = _peaked(preset), _prompts()
    cached = generate(model, prompts, max_new_tokens=8)
    full = generate(model, prompts, max_new_tokens=8, use_cache=False)
    assert cached.tokens == full.tokens
    _lp_close(cached.logprobs, full.logprobs, 1e-5)
    assert len(set(map(tuple, cached.tokens))) > 1  # the rows really differ


@pytest.mark.parametrize("preset", FAMILIES)
def test_left_padded_batch_equals_one_by_one(preset):
    model, prompts = _peaked(preset), _prompts((2, 13, 7, 1))
    batch = generate(model, prompts, max_new_tokens=10)
    for i, p in enumerate(prompts):
        alone = generate(model, [p], max_new_tokens=10)
        assert batch.tokens[i] == alone.tokens[0]
        _lp_close([batch.logprobs[i]], alone.logprobs, 1e-4)
    assert batch.prompt_tokens == prompts


@pytest.mark.parametrize("preset", FAMILIES)
def test_logprobs_equal_score_and_a_manual_forward(preset):
    model, prompts = _flat(preset), _prompts()
    out = generate(model, prompts, max_new_tokens=9, temperature=1.0, seed=5)
    scores = score(model, prompts, out.tokens)
    for p, toks, lps, s in zip(prompts, out.tokens, out.logprobs, scores):
        _lp_close([lps], [s.token_logprobs], 1e-5)
        assert abs(s.sum_logprob - sum(lps)) <= 1e-4 and s.num_tokens == len(toks)
        with torch.no_grad():
            logits = model(torch.tensor([p + toks]))[0, len(p) - 1:-1]
        manual = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(toks)[:, None])[:, 0]
        _lp_close([lps], [manual.tolist()], 1e-5)


def test_logprobs_equal_score_with_padded_vocab():
    """Both normalise over the real vocab only (the pad_vocab_to rows are never tokens)."""
    torch.manual_seed(0)
    model = GPT.from_preset("gpt2-tiny", vocab_size=100, pad_vocab_to=64).eval()
    out = generate(model, [[1, 2, 3]], max_new_tokens=5)
    _lp_close(out.logprobs, [score(model, [[1, 2, 3]], out.tokens)[0].token_logprobs], 1e-5)


def test_top_k_1_and_tiny_top_p_equal_greedy():
    model, prompts = _flat(), _prompts()
    greedy = generate(model, prompts, max_new_tokens=10)
    k1 = generate(model, prompts, max_new_tokens=10, temperature=1.3, top_k=1, seed=0)
    p0 = generate(model, prompts, max_new_tokens=10, temperature=1.3, top_p=1e-6, seed=0)
    assert k1.tokens == greedy.tokens == p0.tokens
    sampled = generate(model, prompts, max_new_tokens=10, temperature=1.3, seed=0)
    assert sampled.tokens != greedy.tokens  # a flat model really samples something else


def test_seed_reproducibility():
    model, prompts = _flat(), _prompts()
    a = generate(model, prompts, max_new_tokens=16, temperature=1.0, seed=123)
    b = generate(model, prompts, max_new_tokens=16, temperature=1.0, seed=123)
    c = generate(model, prompts, max_new_tokens=16, temperature=1.0, seed=124)
    assert a.tokens == b.tokens and a.logprobs == b.logprobs
    assert all(x != y for x, y in zip(a.tokens, c.tokens))
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    generate(model, prompts, max_new_tokens=4, temperature=1.0, seed=9)
    assert torch.equal(torch.rand(1), before)  # the global RNG is untouched


def test_per_row_stop_tokens():
    model, prompts = _peaked("gpt2-tiny"), _prompts()
    free = generate(model, prompts, max_new_tokens=12)
    row0 = free.tokens[0]
    stop = next(t for i, t in enumerate(row0) if i >= 2 and t not in row0[:i])
    at = row0.index(stop)
    never = next(t for t in range(V) if all(t not in r for r in free.tokens))
    out = generate(model, prompts, max_new_tokens=12, stop_tokens=[[stop], [never], [never]])
    assert out.finish_reasons == ["stop", "length", "length"]
    assert out.tokens[0] == row0[:at + 1]  # the stop token is kept as the last id
    assert out.tokens[1:] == free.tokens[1:]
    _lp_close(out.logprobs[1:], free.logprobs[1:], 1e-5)
    # eos_id applies to every row; a row that already stopped never resumes
    eos = generate(model, prompts, max_new_tokens=12, eos_id=free.tokens[1][0])
    assert eos.finish_reasons[1] == "stop" and eos.tokens[1] == free.tokens[1][:1]


@pytest.mark.parametrize("sync_every", [1, 4])
def test_stop_when_ends_a_row_at_the_next_host_check(sync_every):
    """stop_when (a host test, e.g. "contains a stop string") ends only the rows it names, at the first
    check after it became true; those rows keep what they generated, the others are unchanged."""
    model, prompts = _peaked("gpt2-tiny"), _prompts()
    free = generate(model, prompts, max_new_tokens=16)
    row0 = free.tokens[0]
    trigger = row0[5]  # stop row 0 once it has produced this id
    first = row0.index(trigger)
    calls = []

    def stop_when(tokens):
        calls.append(len(tokens))
        return trigger in tokens and tokens[:len(row0)] == row0[:len(tokens)]  # row 0 only

    out = generate(model, prompts, max_new_tokens=16, stop_when=stop_when, sync_every=sync_every)
    stop_len = (first // sync_every + 1) * sync_every  # the first check at or after the trigger
    assert out.tokens[0] == row0[:stop_len] and out.finish_reasons[0] == "stop"
    assert out.tokens[1:] == free.tokens[1:] and out.finish_reasons[1:] == ["length", "length"]
    _lp_close(out.logprobs[1:], free.logprobs[1:], 1e-5)
    assert calls and all(n % sync_every == 0 for n in calls)  # only at host checks, never per token otherwise


def test_errors_and_truncate_policy():
    model = _peaked("gpt2-tiny")  # context_length 128
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(model, [[1], []])
    with pytest.raises(ValueError, match=r"longest prompt \(120 tokens\) \+ max_new_tokens \(10\) = 130 exceeds "
                                         r"the model's context_length \(128\)"):
        generate(model, [[5] * 120], max_new_tokens=10)
    with pytest.raises(ValueError, match="outside the model's vocab"):
        generate(model, [[V]])
    long = _prompts((125,))[0]
    out = generate(model, [long], max_new_tokens=10, on_overflow="truncate")
    assert out.prompt_tokens[0] == long[-118:]
    assert out.tokens == generate(model, [long[-118:]], max_new_tokens=10).tokens


def test_padded_vocab_never_generates_padding_ids():
    torch.manual_seed(0)
    model = GPT.from_preset("gpt2-tiny", vocab_size=100, pad_vocab_to=64, tie_embeddings=False).eval()
    with torch.no_grad():  # make the 28 padding rows the most likely "tokens" by far
        model.lm_head.weight[100:] = 1000 * model.lm_head.weight[:28]
        assert model(torch.tensor([[1, 2, 3]]))[0, -1].argmax() >= 100  # precondition
    for kw in ({}, {"temperature": 1.0, "seed": 0}, {"temperature": 2.0, "top_k": 50, "seed": 1}):
        out = generate(model, [[1, 2, 3], [7, 99, 50, 4, 0]], max_new_tokens=20, **kw)
        assert all(0 <= t < 100 for row in out.tokens for t in row), kw


def test_compiled_decode_step_in_generate():
    """generate(decode_step=compiled) equals eager; fullgraph capture of the cached one-token step."""
    torch._dynamo.reset()
    model, prompts = _peaked("qwen3-tiny"), _prompts()

    def step(t, p, pl):
        return model(t, input_pos=p, pad_lens=pl, last_only=True)

    eager = generate(model, prompts, max_new_tokens=6)
    comp = generate(model, prompts, max_new_tokens=6, decode_step=torch.compile(step, fullgraph=True, backend="eager"))
    assert comp.tokens == eager.tokens
    _lp_close(comp.logprobs, eager.logprobs, 1e-5)


@pytest.mark.parametrize("top_k,top_p,support", [(3, None, 3), (None, 0.8, 3), (None, None, 5)])
def test_sampling_frequencies_match_filtered_softmax(top_k, top_p, support):
    """Gumbel-max sampling draws from softmax over the kept tokens (20k draws, 3-sigma-ish bound)."""
    from collections import Counter

    from spine.generation import filter_logits, sample_next

    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]]).repeat(20000, 1)
    seeds = torch.arange(20000) * 7919  # the counter-based noise of 20k rows
    draws = Counter(sample_next(logits, temperature=1.0, top_k=top_k, top_p=top_p, row_seeds=seeds).tolist())
    probs = filter_logits(logits[:1], temperature=1.0, top_k=top_k, top_p=top_p).softmax(-1)[0]
    assert set(draws) == set(range(support))
    for tok, p in enumerate(probs.tolist()):
        assert abs(draws.get(tok, 0) / 20000 - p) < 0.012, (tok, draws, probs)


def test_finished_rows_padded_with_a_stop_id_keep_their_length():
    """A finished row is fed `pad_id` from then on; when pad_id is itself a stop id (GPT-2 pads with its
    eos) that must not count as the row stopping again later."""
    model, prompts = _peaked("gpt2-tiny"), _prompts()
    free = generate(model, prompts, max_new_tokens=12)
    row0 = free.tokens[0]
    stop = next(t for i, t in enumerate(row0) if i >= 2 and t not in row0[:i])
    never = next(t for t in range(V) if all(t not in r for r in free.tokens))
    ref = generate(model, prompts, max_new_tokens=12, stop_tokens=[[stop], [never], [never]])
    out = generate(model, prompts, max_new_tokens=12, stop_tokens=[[stop], [never], [never]], pad_id=stop,
                   sync_every=64, compact=False)  # the finished row stays in the batch to the end
    assert out.tokens == ref.tokens and out.finish_reasons == ref.finish_reasons == ["stop", "length", "length"]


def test_compiled_decode_compacts_in_few_buckets(monkeypatch):
    """The compiled step sees only power-of-two batches of at least MIN_COMPILED_ROWS rows as rows finish
    (each batch size is one more graph; dynamo stops a fullgraph fit after 8), and compaction changes
    no sample. torch.compile is the identity here: this checks the shapes the step is called with."""
    from spine import generation

    seen: list[int] = []

    def no_compile(fn, **kw):
        def counted(tok, *a):
            seen.append(tok.shape[0])
            return fn(tok, *a)
        return counted

    monkeypatch.setattr(torch, "compile", no_compile)
    model = _flat()
    model.__dict__.pop("_spine_decode_steps", None)
    ids = _prompts(lengths=[4] * 64, seed=3)
    # a sixth of the vocabulary ends a row: rows finish at scattered steps, down to a few live ones
    kw = dict(max_new_tokens=32, temperature=1.0, seed=5, stop_tokens=list(range(0, V, 6)), sync_every=1)
    comp = generate(model, ids, compile_decode=True, **kw)
    eager = generate(model, ids, **kw)
    assert comp.tokens == eager.tokens
    lengths = sorted(len(t) for t in eager.tokens)
    # (the premise: after step 20 only 1-4 rows are live, so unfloored buckets would reach 4 rows or fewer)
    assert 1 <= sum(n > 20 for n in lengths) <= 4
    assert seen[0] == 64 and min(seen) == generation.MIN_COMPILED_ROWS
    assert set(seen) <= {64, 32, 16}
    model.__dict__.pop("_spine_decode_steps", None)
