"""The one generation door: prompts + `SamplingParams` -> completions.

Everything in spine that decodes goes through `Engine.generate`: `spine generate`, the reasoning
pipelines, the sampling/response callbacks, GRPO rollouts and the server. It knows nothing of
problems or templates; it takes text or token ids.

Per-token log-probs are those of the *model's* distribution (log-softmax of the raw logits, before
temperature/top-k/top-p), so they equal `sequence_logprobs` over the finished sequence and serve as
policy log-probs for RL. The noise of a sample depends only on (seed, key, sample index), never on
batching, chunking or world size, so a resumed or re-chunked sampled run reproduces its samples.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch

from .generation import fit_context, generate as _generate
from .generation import sample_seed, sequence_logprobs  # noqa: F401 (part of this API)
from .params import SamplingParams

Prompt = str | Sequence[int]


@dataclass
class Completion:
    """One sample of one prompt.

    token_ids: generated ids (a stop token that ended the row is the last id; text excludes it).
    logprobs: model log-prob of each id in `token_ids` (see module docstring for the distribution).
    finish_reason: "stop" (stop token or stop string) or "length" (max_new_tokens reached).
    generated_tokens: tokens paid for, including any decoded past a stop string before the row ended.
    """

    text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    generated_tokens: int
    index: int = 0
    seconds: float = 0.0
    stop_reason: str | int | None = None  # the stop string or stop id that ended it, if any

    @property
    def sum_logprob(self) -> float:
        return float(sum(self.logprobs))

    @property
    def mean_logprob(self) -> float:
        return self.sum_logprob / max(1, len(self.logprobs))


def stop_token_ids(tokenizer: Any) -> set[int]:
    """Every id that ends a turn or a document for this tokenizer (eos, and for Qwen3 both
    `<|im_end|>` and `<|endoftext|>`, so base and chat models stop)."""
    ids = {int(tokenizer.eos_id)}
    ids.update(int(i) for i in (getattr(tokenizer, "stop_ids", None) or ()))
    for attr in ("im_end_id", "endoftext_id"):
        v = getattr(tokenizer, attr, None)
        if v is not None:
            ids.add(int(v))
    return ids


def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, str | None]:
    hits = [(i, s) for s in stops for i in [text.find(s)] if i >= 0]
    if not hits:
        return text, None
    i, s = min(hits)
    return text[:i], s


class Engine:
    """Model + tokenizer -> completions for batches of prompts: the one decode loop's front door.

    `batch_size` bounds the rows decoded together (samples, not prompts). The engine never changes
    what a sample is: batch size, chunking and prompt order change speed only. `compile=True`
    decodes with a compiled one-token step (a CUDA graph on GPU) and keeps cache buffers per shape.
    `sync_every`: decode steps between host checks (stop strings, finished rows, compaction).
    """

    def __init__(self, model, tokenizer, *, batch_size: int = 16, compile: bool = False, sync_every: int = 8):
        if tokenizer is None:
            raise ValueError("Engine needs a tokenizer: the checkpoint has none (save it with its tokenizer, "
                             "or pass one explicitly)")
        for name, v in (("batch_size", batch_size), ("sync_every", sync_every)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"Engine: {name} must be an integer >= 1, got {v!r}")
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.compile, self.sync_every = batch_size, compile, sync_every
        self._cache_pool: dict | None = {} if compile else None

    @property
    def context_length(self) -> int:
        return self.model.config.context_length

    def encode(self, prompt: Prompt, *, allowed_special: Any = frozenset()) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, allowed_special=allowed_special)
        return [int(t) for t in prompt]

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams, *,
                 keys: Sequence[str | int] | None = None,
                 on_overflow: Literal["error", "truncate"] = "error",
                 allowed_special: Any = frozenset(), first_index: int = 0) -> list[list[Completion]]:
        """`params.n` completions for each prompt, in input order.

        keys: one stable id per prompt (e.g. a problem id); sample j of prompt i draws its noise from
        `sample_seed(params.seed, keys[i], j)`. Default keys are the prompt's position, so pass keys
        whenever the same prompt may arrive in another chunk or order. `seed=None` draws a base seed
        from torch's global RNG (so unseeded calls differ, and `torch.manual_seed` reproduces them).
        The n samples of a prompt share one prefill; greedy decoding runs one row and copies it n times.
        first_index: the samples drawn are indices first_index .. first_index + n - 1 of each prompt (their
        noise and `Completion.index`), so a caller drawing in rounds (early-stopped voting) gets exactly
        the samples one call with a larger n would have drawn.
        """
        if isinstance(prompts, str):
            raise TypeError("Engine.generate takes a list of prompts; wrap a single prompt as [prompt]")
        if not isinstance(params, SamplingParams):
            raise TypeError(f"Engine.generate: params must be a SamplingParams, got {type(params).__name__}")
        if keys is not None and len(keys) != len(prompts):
            raise ValueError(f"Engine.generate: {len(keys)} keys for {len(prompts)} prompts")
        if isinstance(first_index, bool) or not isinstance(first_index, int) or first_index < 0:
            raise ValueError(f"Engine.generate: first_index must be an integer >= 0, got {first_index!r}")
        if not prompts:
            return []
        keys = list(range(len(prompts))) if keys is None else list(keys)
        ids = [self.encode(p, allowed_special=allowed_special) for p in prompts]
        for i, p in enumerate(ids):
            if not p:
                raise ValueError(f"Engine.generate: prompt {i} is empty; give some text or token ids")
        ids = fit_context(ids, params.max_new_tokens, self.context_length, on_overflow)
        base = params.seed if params.seed is not None else int(torch.randint(0, 2**62, ()).item())
        rows_per_prompt = 1 if params.greedy else params.n
        # longest prompts first: batches of similar length waste less padding
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        out: list[list[Completion | None]] = [[None] * params.n for _ in ids]
        for chunk in self._plan(order, rows_per_prompt):
            for (i, js), comps in zip(chunk, self._run(ids, keys, chunk, params, base, first_index)):
                for j, c in zip(js, comps):
                    out[i][j] = c
        if params.greedy and params.n > 1:  # every sample of a greedy prompt is the same completion
            for row in out:
                row[1:] = [dataclasses.replace(row[0], index=first_index + j) for j in range(1, params.n)]
        return out  # type: ignore[return-value]

    def _plan(self, order: list[int], rows_per_prompt: int) -> list[list[tuple[int, list[int]]]]:
        """Chunks of at most `batch_size` rows: (prompt index, its sample indices in this chunk)."""
        chunks, cur, used = [], [], 0
        for i in order:
            js = list(range(rows_per_prompt))
            while js:
                take = min(len(js), self.batch_size - used)
                cur.append((i, js[:take]))
                js, used = js[take:], used + take
                if used == self.batch_size:
                    chunks.append(cur)
                    cur, used = [], 0
        if cur:
            chunks.append(cur)
        return chunks

    def _run(self, ids, keys, chunk, params: SamplingParams, base: int, first: int = 0) -> list[list[Completion]]:
        tok = self.tokenizer
        stops = stop_token_ids(tok) | set(params.stop_token_ids)
        stop_when = None
        if params.stop:
            # a stop string ending in the newest `sync_every` tokens lies within this many tokens of the end
            # (a byte-level token is at least one byte; a character at most four)
            window = self.sync_every + 4 * max(len(s) for s in params.stop)
            stop_when = lambda toks: _cut_at_stop(tok.decode(toks[-window:]), params.stop)[1] is not None  # noqa: E731
        t0 = time.perf_counter()
        res = _generate(self.model, [ids[i] for i, _ in chunk], repeats=[len(js) for _, js in chunk],
                        row_seeds=[sample_seed(base, keys[i], first + j) for i, js in chunk for j in js],
                        max_new_tokens=params.max_new_tokens, temperature=params.temperature, top_k=params.top_k,
                        top_p=params.top_p, stop_tokens=sorted(stops), pad_id=tok.pad_id,
                        compile_decode=self.compile, sync_every=self.sync_every, stop_when=stop_when,
                        cache_pool=self._cache_pool)
        seconds = (time.perf_counter() - t0) / len(res.tokens)
        comps, r = [], 0
        for i, js in chunk:
            mine = []
            for j in js:
                mine.append(self._completion(res.tokens[r], res.logprobs[r], res.finish_reasons[r],
                                             len(res.prompt_tokens[r]), first + j, seconds, stops, params.stop))
                r += 1
            comps.append(mine)
        return comps

    def _completion(self, toks: list[int], lps: list[float], reason: str, n_prompt: int, index: int,
                    seconds: float, stops: set[int], stop_strings: Sequence[str]) -> Completion:
        decode = self.tokenizer.decode
        paid = len(toks)
        stop_reason: str | int | None = None
        body = toks
        if reason == "stop" and toks and toks[-1] in stops:
            body, stop_reason = toks[:-1], toks[-1]
        text, hit = _cut_at_stop(decode(body), stop_strings)
        if hit is not None:
            # the ids end with the token that completed the stop string, as a stop token ends its row
            lo, hi = 1, len(body)
            while lo < hi:
                mid = (lo + hi) // 2
                if _cut_at_stop(decode(body[:mid]), stop_strings)[1] is not None:
                    hi = mid
                else:
                    lo = mid + 1
            toks, lps, stop_reason, reason = body[:lo], lps[:lo], hit, "stop"
        return Completion(text, list(toks), list(lps[:len(toks)]), "stop" if reason == "stop" else "length",
                          n_prompt, paid, index, seconds, stop_reason)


def hf_path(spec: str) -> str | None:
    """The Hugging Face checkpoint (directory or hub name) of an `hf:PATH_OR_NAME` model spec, else None.
    The one place the `hf:` prefix is parsed."""
    return spec[3:] if spec.startswith("hf:") else None


def load_model(spec: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
               tokenizer: str | None = None, require_tokenizer: bool = False):
    """(model, tokenizer) from a spine checkpoint directory or `hf:PATH_OR_NAME`, in eval mode on `device`.

    `tokenizer` (a name or directory) replaces the checkpoint's own, checked against the model's vocab.
    `require_tokenizer`: raise a ValueError naming the fix when there is none. A Lightning `.ckpt` is
    refused with a pointer to `spine consolidate`.
    """
    from pathlib import Path

    from .tokenizer import check_vocab_fits, get_tokenizer

    hf = hf_path(spec)
    if hf is not None:
        from .hf import import_hf, import_hf_tokenizer

        model = import_hf(hf, dtype=dtype).to(device)
        tok = import_hf_tokenizer(hf)
    else:
        if spec.endswith(".ckpt") and Path(spec).is_file():
            raise ValueError(f"{spec} is a Lightning training checkpoint, not a spine checkpoint directory; "
                             f"convert it first: spine consolidate {spec} OUT_DIR")
        from .checkpoint import load_checkpoint

        model, tok = load_checkpoint(spec, map_location=device, dtype=dtype)
    if tokenizer is not None:
        tok = get_tokenizer(tokenizer)
        check_vocab_fits(tok, model.config.vocab_size, where=f"tokenizer {tokenizer}")
    if tok is None and require_tokenizer:
        raise ValueError(f"checkpoint {spec} has no tokenizer; pass --tokenizer NAME_OR_DIR (e.g. gpt2, byte) "
                         "or save the checkpoint with its tokenizer")
    return model.eval(), tok
