"""The decode loop and scoring on a `GPT`: the low-level primitives under `spine.engine.Engine`.

Use `spine.engine.Engine` (text or ids + `SamplingParams` -> completions); `generate` here is the one
decode loop it drives and nothing else in spine calls it. It takes token-id prompts of different
lengths, left-pads them into one batch, prefills a KV cache once per distinct prompt, copies the
cache rows for the `repeats` samples of each prompt, and decodes one column at a time. Rows that
finished are gathered out of the batch (`compact`) at the periodic host checks.

Sampling noise is counter-based: the uniform for vocabulary column `c` at generated position `t` of a
row is a pure integer hash of (row seed, t, c) (`spine.sampling`), so a row draws the same tokens
whatever batch, chunk or position it is decoded in, and the whole decode step, sampling included,
stays one static-shape graph. Per-token log-probabilities are those of the *model's* distribution
(log-softmax of raw logits, before temperature/top-k/top-p), so they equal `sequence_logprobs`.

Context policy: when prompt + max_new_tokens exceeds the model's context, `on_overflow="error"`
(default) raises and says by how much; `"truncate"` keeps the *last* tokens of each prompt so that
prompt + max_new_tokens fits (the start of a long prompt is dropped, as chat UIs do).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, Literal, Sequence

import torch

from .model import GPT, KVCache
# the sampling helpers live in spine.sampling; re-exported so `from spine.generation import ...` keeps working
from .sampling import _select, filter_logits, sample_next, sample_seed, sample_with_noise, uniform_noise  # noqa: F401

Prompts = Sequence[Sequence[int]] | torch.Tensor


@dataclass
class GenerationOutput:
    """Result of `generate`, one entry per output row (prompt i's `repeats[i]` rows in a row), in order.

    tokens: generated ids (the stop token, when one ended the row, is included as the last id).
    logprobs: model log-prob of each generated id.
    finish_reasons: "stop" (a stop token, or `stop_when`) or "length" (max_new_tokens reached).
    """

    tokens: list[list[int]]
    logprobs: list[list[float]]
    finish_reasons: list[str]
    prompt_tokens: list[list[int]] = field(default_factory=list)
    stop_ids: list[set[int]] = field(default_factory=list)

    def texts(self, tokenizer, *, strip_stop: bool = True) -> list[str]:
        """Decode each row, dropping the final stop token unless `strip_stop=False`."""
        out = []
        for toks, reason, stops in zip(self.tokens, self.finish_reasons, self.stop_ids or [set()] * len(self.tokens)):
            if strip_stop and reason == "stop" and toks and toks[-1] in stops:
                toks = toks[:-1]
            out.append(tokenizer.decode(toks))
        return out

    @property
    def num_generated(self) -> int:
        return sum(len(t) for t in self.tokens)


def compiled_decode_step(model: GPT, temperature: float = 0.0, top_k: int | None = None,
                         top_p: float | None = None):
    """One compiled function per (model, sampling settings): cached forward of one token + sampling.

    `fn(tok, pos, pad_lens, row_seeds, step) -> (next ids, log-probs)`, `step` a 0-d int64 tensor.
    Static shapes (one token, a fixed-size cache, positions and the noise counter as tensors) let mode
    "reduce-overhead" capture it as a CUDA graph on GPU; the noise hash is inside the graph.
    """
    cache = model.__dict__.setdefault("_spine_decode_steps", {})
    key = (float(temperature), top_k, top_p)
    fn = cache.get(key)
    if fn is None:
        vocab = model.config.vocab_size

        def step_fn(tok, pos, pad_lens, row_seeds, step):
            logits = model(tok, input_pos=pos, pad_lens=pad_lens, last_only=True)
            return _select(logits[:, -1, :], row_seeds, step, vocab, temperature, top_k, top_p)

        mode = "reduce-overhead" if model.tok_emb.weight.is_cuda else None
        # every (sampling setting, batch bucket) is one more graph of the one code object `step_fn`; dynamo's
        # default limit (8 per code object) stops a fit with fullgraph=True once a ninth shape comes
        cfg = torch._dynamo.config
        if hasattr(cfg, "recompile_limit"):
            cfg.recompile_limit = max(cfg.recompile_limit, 64)
        else:  # torch < 2.6
            cfg.cache_size_limit = max(cfg.cache_size_limit, 64)
        fn = torch.compile(step_fn, mode=mode, fullgraph=True, dynamic=False)
        cache[key] = fn
    return fn


# ---------------------------------------------------------------------------- KV cache handling
@contextlib.contextmanager
def own_kv_cache(model: GPT) -> Iterator[None]:
    """Run with no KV cache set up, then give the caller's caches back untouched.

    Generation sets up (and resizes) its own cache and scoring runs without one; neither may wipe or
    trip over a cache the caller left on the model.
    """
    saved = [b.attn.kv_cache for b in model.blocks]
    model.reset_kv_cache()
    try:
        yield
    finally:
        for b, c in zip(model.blocks, saved):
            b.attn.kv_cache = c


def _pool_buffers(pool: dict, i: int, shape: tuple, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Block i's fixed (k, v) buffers of `shape` (one pair per shape, so a captured CUDA graph keeps its addresses)."""
    return pool.setdefault((i, shape, dtype), (torch.empty(shape, dtype=dtype, device=device),
                                               torch.empty(shape, dtype=dtype, device=device)))


def _gather_cache(model: GPT, rows: torch.Tensor, pool: dict | None) -> None:
    """Keep cache rows `rows` (B',) of every block (repeats allowed: that is how a prefill is shared)."""
    B = rows.numel()
    for i, block in enumerate(model.blocks):
        c = block.attn.kv_cache
        if pool is not None:
            k, v = _pool_buffers(pool, i, (B, *c.k.shape[1:]), c.k.dtype, c.k.device)
            if k.data_ptr() != c.k.data_ptr():
                torch.index_select(c.k, 0, rows, out=k)
                torch.index_select(c.v, 0, rows, out=v)
            else:  # gathering into the buffer being read: copy out first
                k.copy_(c.k.index_select(0, rows))
                v.copy_(c.v.index_select(0, rows))
        else:
            k, v = c.k.index_select(0, rows), c.v.index_select(0, rows)
        c.k, c.v = k, v


def _use_pool_cache(model: GPT, batch: int, total: int, filled: int, pool: dict) -> None:
    """Make the pool's (batch, total) buffers the cache, so a prefill writes straight into the buffers the
    decode graph reads (no fresh cache to allocate, zero and copy over). Columns from `filled` on are zeroed:
    they hold an earlier call's rows, and a masked NaN there would still poison attention (0 * NaN)."""
    cfg, ref = model.config, model.tok_emb.weight
    for i, block in enumerate(model.blocks):
        k, v = _pool_buffers(pool, i, (batch, cfg.n_kv_head, total, cfg.head_dim), ref.dtype, ref.device)
        k[:, :, filled:].zero_()
        v[:, :, filled:].zero_()
        c = KVCache(0, cfg.n_kv_head, 0, cfg.head_dim, dtype=ref.dtype, device=ref.device)
        c.k, c.v = k, v
        block.attn.kv_cache = c


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


# The compiled decode step compacts finished rows away in power-of-two buckets, never below this many rows:
# each bucket is one more graph (and CUDA graph) to build, and a decode step of 16 rows costs what one of 2
# does. From a batch of 512 that is at most 6 batch sizes per (sampling setting, cache length).
MIN_COMPILED_ROWS = 16


# ---------------------------------------------------------------------------- the decode loop
def _as_lists(prompts: Prompts) -> list[list[int]]:
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() == 1:
            prompts = prompts[None]
        return [row.tolist() for row in prompts]
    if len(prompts) > 0 and isinstance(prompts[0], int):
        raise TypeError("prompts must be a list of token-id lists (a batch); wrap a single prompt as [ids]")
    return [list(map(int, p)) for p in prompts]


def _check_prompts(prompts: list[list[int]], vocab_size: int) -> None:
    if not prompts:
        raise ValueError("generate: no prompts given")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"generate: prompt {i} is empty; give at least one token (e.g. the BOS/EOS id)")
        bad = [t for t in p if t < 0 or t >= vocab_size]
        if bad:
            raise ValueError(f"generate: prompt {i} has token id(s) {bad[:5]} outside the model's vocab [0, {vocab_size})")


def fit_context(prompts: list[list[int]], max_new_tokens: int, ctx: int,
                on_overflow: Literal["error", "truncate"]) -> list[list[int]]:
    """The prompts, each cut to its last tokens (`truncate`) or refused (`error`) when it + max_new_tokens
    would not fit the context."""
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens <= ctx:
        return prompts
    if on_overflow == "truncate":
        keep = ctx - max_new_tokens
        if keep < 1:
            raise ValueError(f"generate: max_new_tokens={max_new_tokens} leaves no room for a prompt in "
                             f"context_length={ctx}")
        return [p[-keep:] for p in prompts]
    raise ValueError(
        f"generate: longest prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) = "
        f"{longest + max_new_tokens} exceeds the model's context_length ({ctx}); shorten the prompt, "
        "lower max_new_tokens, or pass on_overflow='truncate' to keep the last tokens of each prompt"
    )


def _stop_sets(stop_tokens, eos_id, B) -> list[set[int]]:
    if stop_tokens is None:
        per_row = [set() for _ in range(B)]
    elif len(stop_tokens) > 0 and not isinstance(stop_tokens[0], int):
        if len(stop_tokens) != B:
            raise ValueError(f"generate: stop_tokens has {len(stop_tokens)} rows but there are {B} prompts")
        per_row = [set(map(int, s)) for s in stop_tokens]
    else:
        per_row = [set(map(int, stop_tokens)) for _ in range(B)]
    if eos_id is not None:
        for s in per_row:
            s.add(int(eos_id))
    return per_row


def _stop_table(stops: list[set[int]], device) -> torch.Tensor | None:
    """(B, S) stop ids per row, padded with -1 (never a token); None when no row has any."""
    width = max((len(s) for s in stops), default=0)
    if width == 0:
        return None
    table = torch.full((len(stops), width), -1, dtype=torch.long)
    for i, s in enumerate(stops):
        table[i, :len(s)] = torch.tensor(sorted(s), dtype=torch.long)
    return table.to(device)


@torch.inference_mode()
def generate(
    model: GPT,
    prompts: Prompts,
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    row_seeds: Sequence[int] | None = None,
    repeats: Sequence[int] | None = None,
    eos_id: int | None = None,
    stop_tokens: Sequence[int] | Sequence[Sequence[int]] | None = None,
    pad_id: int = 0,
    on_overflow: Literal["error", "truncate"] = "error",
    use_cache: bool = True,
    decode_step=None,
    compile_decode: bool = False,
    sync_every: int = 8,
    stop_when: Callable[[list[int]], bool] | None = None,
    compact: bool = True,
    cache_pool: dict | None = None,
) -> GenerationOutput:
    """Generate continuations for a batch of token-id prompts of any lengths (the engine's decode loop).

    `repeats[i]` rows continue prompt i (default 1): the prompt is prefilled once and its cache rows
    copied. Greedy when temperature is 0; otherwise temperature sampling with optional top-k/top-p,
    row r drawing its noise from `row_seeds[r]` (default `sample_seed(seed, r, 0)`; `seed=None` draws a
    base seed from torch's global RNG). A row stops at `eos_id` or any of its prompt's `stop_tokens`
    (one list for all, or one per prompt). `use_cache=False` recomputes the whole sequence each step
    (the reference the cache is tested against). `decode_step(tok, pos, pad_lens) -> logits` replaces
    the one-token cached forward; `compile_decode=True` uses `compiled_decode_step(model)`.
    The host looks at the rows only every `sync_every` steps: then `stop_when(tokens)` (e.g. "the text
    contains a stop string") may end running rows (keeping what they generated), the loop ends when
    every row has, and with `compact` the running rows are gathered into a smaller batch once they are
    at most half of it (rows' results never change). A caller's KV cache on the model is left as it was.
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or not temperature >= 0.0:
        raise ValueError(f"generate: temperature must be >= 0 (0 = greedy), got {temperature!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"generate: top_p must be in (0, 1], got {top_p}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"generate: top_k must be >= 1 or None, got {top_k}")
    if isinstance(sync_every, bool) or not isinstance(sync_every, int) or sync_every < 1:
        raise ValueError(f"generate: sync_every must be an integer >= 1, got {sync_every!r}")
    cfg = model.config
    rows = _as_lists(prompts)
    _check_prompts(rows, cfg.vocab_size)
    rows = fit_context(rows, max_new_tokens, cfg.context_length, on_overflow)
    U = len(rows)
    reps = [1] * U if repeats is None else [int(r) for r in repeats]
    if len(reps) != U or any(r < 1 for r in reps):
        raise ValueError(f"generate: repeats must give an integer >= 1 for each of the {U} prompts, got {repeats!r}")
    B = sum(reps)
    if row_seeds is None:
        base = seed if seed is not None else int(torch.randint(0, 2**62, ()).item())
        row_seeds = [sample_seed(base, r, 0) for r in range(B)]
    if len(row_seeds) != B:
        raise ValueError(f"generate: {len(row_seeds)} row_seeds for {B} rows")
    stops = [s for s, r in zip(_stop_sets(stop_tokens, eos_id, U), reps) for _ in range(r)]
    prompt_rows = [p for p, r in zip(rows, reps) for _ in range(r)]

    device = model.tok_emb.weight.device
    T0 = max(len(p) for p in rows)
    # built on the host and moved once: on a GPU, a copy per prompt and a device repeat_interleave (which
    # syncs to learn its length) are host round trips that every call's prefill would wait on
    pad_u = torch.tensor([T0 - len(p) for p in rows]).to(device)
    idx = torch.full((U, T0), pad_id, dtype=torch.long)
    for i, p in enumerate(rows):
        idx[i, T0 - len(p):] = torch.tensor(p, dtype=torch.long)
    idx = idx.to(device)
    expand = torch.repeat_interleave(torch.arange(U), torch.tensor(reps)).to(device)

    was_training = model.training
    model.eval()
    total = T0 + max_new_tokens
    if compile_decode and use_cache and decode_step is None:
        # few distinct shapes, so compiled graphs are reused across calls
        total = min(cfg.context_length, -(-total // 256) * 256)
    fused = compiled_decode_step(model, temperature, top_k, top_p) if (
        compile_decode and use_cache and decode_step is None) else None
    with own_kv_cache(model):
        try:
            if use_cache:
                if B == U and cache_pool is not None:
                    _use_pool_cache(model, U, total, T0, cache_pool)
                else:
                    model.setup_kv_cache(U, total)
                logits = model(idx, input_pos=torch.arange(T0, device=device), pad_lens=pad_u, last_only=True)
                if B != U:
                    _gather_cache(model, expand, cache_pool)
            else:
                logits = model(idx, pad_lens=pad_u, last_only=True)
            logits = logits[:, -1, :].index_select(0, expand)
            # everything stays on the device; the host looks only every `sync_every` steps
            out_tok = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
            out_lp = torch.zeros((B, max_new_tokens), dtype=torch.float32, device=device)
            length = torch.full((B,), max_new_tokens, dtype=torch.long, device=device)
            done = torch.zeros(B, dtype=torch.bool, device=device)
            cur = torch.arange(B, device=device)  # the original row of each batch row
            pad_lens = pad_u.index_select(0, expand)
            seeds = torch.tensor(row_seeds, dtype=torch.int64, device=device)
            stop_tab = _stop_table(stops, device)
            seq = idx.index_select(0, expand)
            positions = torch.arange(T0, total, device=device)
            steps = torch.arange(max_new_tokens, device=device)  # 0-d counters for the compiled step
            steps_run = 0
            # until the first compaction batch row i is row i: the per-step bookkeeping writes whole columns
            # instead of scattering through `cur` (9 dispatches a step instead of 15, no index_put)
            ident = True
            nxt, lp = _select(logits, seeds, 0, cfg.vocab_size, temperature, top_k, top_p)
            for step in range(max_new_tokens):
                d = done if ident else done.index_select(0, cur)
                nxt = torch.where(d, pad_id, nxt)
                if ident:
                    out_tok[:, step] = nxt
                    out_lp[:, step] = lp
                else:
                    out_tok[cur, step] = nxt
                    out_lp[cur, step] = lp
                steps_run = step + 1
                if stop_tab is not None:
                    hit = (nxt[:, None] == stop_tab).any(-1) & ~d
                    if ident:
                        length.masked_fill_(hit, step + 1)
                        done |= hit  # d is done itself: read above, before this update
                    else:
                        length[cur] = torch.where(hit, torch.full_like(nxt, step + 1), length.index_select(0, cur))
                        done[cur] = d | hit
                if step == max_new_tokens - 1:
                    break
                if (step + 1) % sync_every == 0 and (stop_tab is not None or stop_when is not None):
                    if stop_when is not None:
                        running = cur[~done.index_select(0, cur)].tolist()
                        if running:
                            so_far = out_tok[running, :step + 1].tolist()
                            ended = [r for r, toks in zip(running, so_far) if stop_when(toks)]
                            if ended:
                                ended_t = torch.tensor(ended, device=device)
                                length[ended_t] = step + 1
                                done[ended_t] = True
                    live = (~done.index_select(0, cur)).nonzero().flatten()
                    n_live = live.numel()
                    if n_live == 0:
                        break
                    b = cur.numel()
                    if compact and n_live <= b // 2:
                        keep = live
                        if fused is not None:  # bucket sizes: a handful of compiled shapes, not one per count
                            size = max(_pow2(n_live), MIN_COMPILED_ROWS)
                            if size < b:
                                fill = (done.index_select(0, cur)).nonzero().flatten()[:size - n_live]
                                keep = torch.cat([live, fill])
                            else:
                                keep = torch.arange(b, device=device)
                        if keep.numel() < b:
                            ident = False
                            cur, nxt, lp = cur[keep], nxt[keep], lp[keep]
                            pad_lens, seeds = pad_lens[keep], seeds[keep]
                            stop_tab = stop_tab[keep] if stop_tab is not None else None
                            if use_cache:
                                _gather_cache(model, keep, cache_pool)
                            else:
                                seq = seq[keep]
                if fused is not None:
                    nxt, lp = fused(nxt[:, None], positions[step:step + 1], pad_lens, seeds, steps[step + 1])
                    continue
                if use_cache:
                    step_fn = decode_step or (lambda t, p, pl: model(t, input_pos=p, pad_lens=pl, last_only=True))
                    logits = step_fn(nxt[:, None], positions[step:step + 1], pad_lens)
                else:
                    seq = torch.cat([seq, nxt[:, None]], dim=1)
                    logits = model(seq, pad_lens=pad_lens, last_only=True)
                nxt, lp = _select(logits[:, -1, :], seeds, step + 1, cfg.vocab_size, temperature, top_k, top_p)
        finally:
            model.train(was_training)
    lengths = length.clamp(max=steps_run).tolist()
    done_l = done.tolist()
    tok_l, lp_l = out_tok.tolist(), out_lp.tolist()
    out_tokens = [tok_l[i][:lengths[i]] for i in range(B)]
    out_lps = [lp_l[i][:lengths[i]] for i in range(B)]
    reasons = ["stop" if done_l[i] else "length" for i in range(B)]
    return GenerationOutput(out_tokens, out_lps, reasons, prompt_rows, stops)


# ---------------------------------------------------------------------------- scoring
@dataclass
class Score:
    """Log-probability of a completion given its prompt."""

    sum_logprob: float
    mean_logprob: float
    num_tokens: int
    token_logprobs: list[float]


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(targets) under logits (..., V) -> (...); float32 for stability."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def sequence_logprobs(model: GPT, input_ids: torch.Tensor, mask: torch.Tensor | None = None, *,
                      return_entropy: bool = False):
    """Differentiable log p(input_ids[:, t+1] | input_ids[:, :t+1]) under `model`: shape (B, T-1), float32.

    `mask` (B, T), true where a token is to be scored (e.g. completion tokens); positions whose target
    is masked out are 0. Sequences are right-padded (causal attention: no real token sees a pad).
    Rows past `vocab_size` (a padded vocabulary) are excluded from the normaliser, as in generation.
    A KV cache left on the model is set aside for the forward and put back.
    `return_entropy=True` returns `(logprobs, entropy)`, the per-position entropy (detached: a metric)
    from the same forward, so RL logs it without a second pass.
    """
    with own_kv_cache(model):
        logits = model(input_ids[:, :-1])
    logits = logits[..., :model.config.vocab_size]
    ent = None
    if return_entropy:
        lp = torch.log_softmax(logits.float(), dim=-1)
        out = lp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        with torch.no_grad():
            ent = -(lp.exp() * lp).sum(dim=-1)
    else:
        out = token_logprobs(logits, input_ids[:, 1:])
    if mask is not None:
        m = mask[:, 1:].to(out.dtype)
        out = out * m
        ent = ent * m if ent is not None else None
    return (out, ent) if return_entropy else out


@torch.inference_mode()
def score(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    *,
    batch_size: int = 8,
    pad_id: int = 0,
) -> list[Score]:
    """Sum and mean log-prob of each completion given its prompt (teacher forcing: `sequence_logprobs`)."""
    if len(prompts) != len(completions):
        raise ValueError(f"score: {len(prompts)} prompts but {len(completions)} completions")
    cfg = model.config
    device = model.tok_emb.weight.device
    was_training = model.training
    model.eval()
    results: list[Score] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = list(zip(prompts[start:start + batch_size], completions[start:start + batch_size]))
            seqs = []
            for j, (p, c) in enumerate(chunk):
                if len(p) == 0:
                    raise ValueError(f"score: prompt {start + j} is empty")
                if len(c) == 0:
                    raise ValueError(f"score: completion {start + j} is empty")
                if len(p) + len(c) > cfg.context_length:
                    raise ValueError(f"score: prompt {start + j} + completion = {len(p) + len(c)} tokens exceeds "
                                     f"context_length {cfg.context_length}")
                seqs.append(list(p) + list(c))
            T = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), T), pad_id, dtype=torch.long, device=device)
            for j, s in enumerate(seqs):
                ids[j, :len(s)] = torch.tensor(s, dtype=torch.long, device=device)
            lp_all = sequence_logprobs(model, ids)
            for j, (p, c) in enumerate(chunk):
                lp = lp_all[j, len(p) - 1:len(p) - 1 + len(c)].tolist()
                results.append(Score(sum(lp), sum(lp) / len(lp), len(lp), lp))
    finally:
        model.train(was_training)
    return results
