"""Decoding and scoring on a `GPT`: the primitives that sampling, best-of-N, GRPO and distillation reuse.

`generate` takes token-id prompts of different lengths, left-pads them into one batch, prefills a
static KV cache and decodes one column at a time. Per-token log-probabilities are those of the
*model's* distribution (log-softmax of raw logits, before temperature/top-k/top-p), so they equal a
full forward pass over the finished sequence and can be used directly as policy log-probs.

Context policy: when prompt + max_new_tokens exceeds the model's context, `on_overflow="error"`
(default) raises and says by how much; `"truncate"` keeps the *last* tokens of each prompt so that
prompt + max_new_tokens fits (the start of a long prompt is dropped, as chat UIs do).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F

from .model import GPT

Prompts = Sequence[Sequence[int]] | torch.Tensor


@dataclass
class GenerationOutput:
    """Result of `generate`, one entry per prompt row, in input order.

    tokens: generated ids (the stop token, when one ended the row, is included as the last id).
    logprobs: model log-prob of each generated id.
    finish_reasons: "stop" (a stop/eos token was generated) or "length" (max_new_tokens reached).
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


def _fit_context(prompts, max_new_tokens, ctx, on_overflow):
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


def filter_logits(logits: torch.Tensor, *, temperature: float, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """Temperature-scaled logits with everything outside top-k / the top-p nucleus set to -inf."""
    logits = logits.float() / temperature
    if top_k is not None and top_k > 0:
        k = min(top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the mass *before* it already reaches top_p (the top token always stays)
        drop = probs.cumsum(dim=-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def sample_with_noise(logits: torch.Tensor, uniform: torch.Tensor | None, *, temperature: float = 0.0,
                      top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Pick one id per row: argmax at temperature 0, else Gumbel-max over the filtered logits.

    argmax(z + G) with G = -log(-log(U)) draws exactly from softmax(z). Taking the noise U as an
    input (drawn from a seeded generator outside) keeps sampling reproducible and lets the whole
    decode step, sampling included, be compiled into one CUDA graph.
    """
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-20, 1.0 - 1e-7)))
    if top_k is not None and top_k > 0 and top_p is None and uniform.shape[-1] < logits.shape[-1]:
        # top-k only: race the k candidates alone (noise is (B, k)), no pass over the vocabulary
        vals, idx = torch.topk(logits.float() / temperature, uniform.shape[-1], dim=-1)
        return idx.gather(-1, (vals + gumbel).argmax(dim=-1, keepdim=True)).squeeze(-1)
    z = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    return (z + gumbel).argmax(dim=-1)


def noise_shape(shape: tuple[int, ...] | torch.Size, top_k: int | None, top_p: float | None) -> tuple[int, int]:
    """Uniform noise needed per step: (B, k) for top-k-only sampling, else (B, V)."""
    B, V = shape[0], shape[-1]
    if top_k is not None and 0 < top_k < V and top_p is None:
        return (B, top_k)
    return (B, V)


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one id per row from logits (B, V): greedy at temperature 0, else filtered sampling."""
    noise = None
    if temperature > 0.0:
        noise = torch.rand(noise_shape(logits.shape, top_k, top_p), generator=generator, device=logits.device,
                           dtype=torch.float32)
    return sample_with_noise(logits, noise, temperature=temperature, top_k=top_k, top_p=top_p)


def _select(logits: torch.Tensor, noise: torch.Tensor | None, vocab_size: int, temperature: float,
            top_k: int | None, top_p: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(next ids, their model log-probs) from last-position logits (B, V_padded)."""
    last = logits.float()
    if last.shape[-1] > vocab_size:
        last = last.masked_fill(torch.arange(last.shape[-1], device=last.device) >= vocab_size, float("-inf"))
    nxt = sample_with_noise(last, noise, temperature=temperature, top_k=top_k, top_p=top_p)
    lp = F.log_softmax(last, dim=-1).gather(-1, nxt[:, None]).squeeze(-1)
    return nxt, lp


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
    eos_id: int | None = None,
    stop_tokens: Sequence[int] | Sequence[Sequence[int]] | None = None,
    pad_id: int = 0,
    on_overflow: Literal["error", "truncate"] = "error",
    use_cache: bool = True,
    decode_step=None,
    compile_decode: bool = False,
    sync_every: int = 8,
    stop_when: Callable[[list[int]], bool] | None = None,
) -> GenerationOutput:
    """Generate continuations for a batch of token-id prompts of any lengths.

    Greedy when temperature is 0; otherwise temperature sampling with optional top-k/top-p.
    `seed` makes sampling reproducible (a private generator; global RNG untouched).
    A row stops at `eos_id` or any of its `stop_tokens` (one list for all rows, or one per row).
    `use_cache=False` recomputes the whole sequence each step (the reference the cache is tested
    against). `decode_step` optionally replaces the one-token cached forward; `compile_decode=True`
    uses `compiled_decode_step(model)` (torch.compile, CUDA graphs on GPU). The host checks whether
    every row has stopped only every `sync_every` steps, so decoding never waits on the GPU per token.
    `stop_when(tokens)`: a host-side test (e.g. "the text contains a stop string") run at those same
    checks on each running row's generated tokens; True stops the row there, with everything generated
    so far (at most `sync_every - 1` tokens past the point where it became true).
    """
    if max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens must be >= 1, got {max_new_tokens}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"generate: top_p must be in (0, 1], got {top_p}")
    cfg = model.config
    rows = _as_lists(prompts)
    _check_prompts(rows, cfg.vocab_size)
    rows = _fit_context(rows, max_new_tokens, cfg.context_length, on_overflow)
    B = len(rows)
    stops = _stop_sets(stop_tokens, eos_id, B)

    device = model.tok_emb.weight.device
    lens = torch.tensor([len(p) for p in rows], device=device)
    T0 = int(lens.max())
    pad_lens = T0 - lens
    idx = torch.full((B, T0), pad_id, dtype=torch.long, device=device)
    for i, p in enumerate(rows):
        idx[i, T0 - len(p):] = torch.tensor(p, dtype=torch.long, device=device)

    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)

    was_training = model.training
    model.eval()
    total = T0 + max_new_tokens
    shape = model.kv_cache_shape
    owns_cache = use_cache and not (shape is not None and shape[0] == B and shape[1] >= total)
    if owns_cache:
        model.setup_kv_cache(B, total)
    fused_step = None
    if use_cache and decode_step is None and compile_decode:
        fused_step = compiled_decode_step(model, temperature, top_k, top_p)
    try:
        if use_cache:
            logits = model(idx, input_pos=torch.arange(T0, device=device), pad_lens=pad_lens, last_only=True)
        else:
            model.reset_kv_cache()
            logits = model(idx, pad_lens=pad_lens, last_only=True)
        # everything stays on the device; the host syncs only every `sync_every` steps
        out_tok = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
        out_lp = torch.zeros((B, max_new_tokens), dtype=torch.float32, device=device)
        length = torch.full((B,), max_new_tokens, dtype=torch.long, device=device)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        stop_mask = _stop_mask(stops, cfg.padded_vocab_size, device)
        rows_idx = torch.arange(B, device=device)
        positions = torch.arange(T0, total, device=device)
        seq = idx
        steps_run = 0
        sampled = temperature > 0.0
        V = logits.shape[-1]

        def noise():
            if not sampled:
                return None
            return torch.rand(noise_shape((B, V), top_k, top_p), generator=generator, device=device,
                              dtype=torch.float32)

        nxt, lp = _select(logits[:, -1, :], noise(), cfg.vocab_size, temperature, top_k, top_p)
        for step in range(max_new_tokens):
            nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
            out_tok[:, step] = nxt
            out_lp[:, step] = lp
            steps_run = step + 1
            if stop_mask is not None:
                hit = stop_mask[rows_idx, nxt] & ~done
                length = torch.where(hit, torch.full_like(length, step + 1), length)
                done = done | hit
            if step == max_new_tokens - 1:
                break
            if (step + 1) % sync_every == 0 and (stop_mask is not None or stop_when is not None):
                if stop_when is not None:
                    running = (~done).nonzero().flatten().tolist()
                    if running:
                        so_far = out_tok[running, :step + 1].tolist()
                        hit = [r for r, toks in zip(running, so_far) if stop_when(toks)]
                        if hit:
                            hit_t = torch.tensor(hit, device=device)
                            length[hit_t] = step + 1
                            done[hit_t] = True
                if bool(done.all()):
                    break
            if use_cache and fused_step is not None:
                nxt, lp = fused_step(nxt[:, None], positions[step:step + 1], pad_lens, noise())
                continue
            if use_cache:
                step_fn = decode_step or (lambda t, p, pl: model(t, input_pos=p, pad_lens=pl, last_only=True))
                logits = step_fn(nxt[:, None], positions[step:step + 1], pad_lens)
            else:
                seq = torch.cat([seq, nxt[:, None]], dim=1)
                logits = model(seq, pad_lens=pad_lens, last_only=True)
            nxt, lp = _select(logits[:, -1, :], noise(), cfg.vocab_size, temperature, top_k, top_p)
    finally:
        if owns_cache:
            model.reset_kv_cache()
        model.train(was_training)
    lengths = length.clamp(max=steps_run).tolist()
    done_l = done.tolist()
    tok_l, lp_l = out_tok.tolist(), out_lp.tolist()
    out_tokens = [tok_l[i][:lengths[i]] for i in range(B)]
    out_lps = [lp_l[i][:lengths[i]] for i in range(B)]
    reasons = ["stop" if done_l[i] else "length" for i in range(B)]
    return GenerationOutput(out_tokens, out_lps, reasons, rows, stops)


def compiled_decode_step(model: GPT, temperature: float = 0.0, top_k: int | None = None,
                         top_p: float | None = None):
    """One compiled function per (model, sampling settings): cached forward of one token + sampling.

    `fn(tok, pos, pad_lens, noise) -> (next ids, log-probs)`. Static shapes (one token, a fixed-size
    cache, positions as a tensor) let mode "reduce-overhead" capture it as a CUDA graph on GPU;
    sampling is inside the graph, its noise an input (see `sample_with_noise`).
    """
    cache = model.__dict__.setdefault("_spine_decode_steps", {})
    key = (float(temperature), top_k, top_p)
    fn = cache.get(key)
    if fn is None:
        vocab = model.config.vocab_size

        def step(tok, pos, pad_lens, noise):
            logits = model(tok, input_pos=pos, pad_lens=pad_lens, last_only=True)
            return _select(logits[:, -1, :], noise, vocab, temperature, top_k, top_p)

        mode = "reduce-overhead" if model.tok_emb.weight.is_cuda else None
        fn = torch.compile(step, mode=mode, fullgraph=True, dynamic=False)
        cache[key] = fn
    return fn


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


def _stop_mask(stops: list[set[int]], vocab: int, device) -> torch.Tensor | None:
    if not any(stops):
        return None
    mask = torch.zeros(len(stops), vocab, dtype=torch.bool, device=device)
    for i, s in enumerate(stops):
        ids = [t for t in s if 0 <= t < vocab]
        if ids:
            mask[i, ids] = True
    return mask


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


@torch.inference_mode()
def score(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    *,
    batch_size: int = 8,
    pad_id: int = 0,
) -> list[Score]:
    """Sum and mean log-prob of each completion given its prompt (teacher forcing, one forward)."""
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
            # right padding is harmless under causal attention: no real token sees a pad
            logits = model(ids[:, :-1])
            # rows past vocab_size (pad_vocab_to) are not tokens: normalise over real ids, as generate does
            lp_all = token_logprobs(logits[..., :cfg.vocab_size], ids[:, 1:])
            for j, (p, c) in enumerate(chunk):
                lp = lp_all[j, len(p) - 1:len(p) - 1 + len(c)].tolist()
                results.append(Score(sum(lp), sum(lp) / len(lp), len(lp), lp))
    finally:
        model.train(was_training)
    return results
