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

import hashlib
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Sequence

import torch

from .generation import generate as _generate

Prompt = str | Sequence[int]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample: one object from YAML/CLI down to the sampler.

    temperature 0 is greedy. `top_p=1.0` is normalised to None (one setting, one distribution).
    `stop` strings cut the text at their first occurrence (decoding of the row ends there);
    `stop_token_ids` are added to the tokenizer's own stop ids. `n` samples per prompt share one prefill.
    """

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    n: int = 1

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ValueError(f"SamplingParams: temperature must be a finite number >= 0 (0 = greedy), got {t!r}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int)
                                       or self.top_k < 1):
            raise ValueError(f"SamplingParams: top_k must be an integer >= 1 or None, got {self.top_k!r}")
        if self.top_p is not None:
            if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
                raise ValueError(f"SamplingParams: top_p must be in (0, 1] or None, got {self.top_p!r}")
            if self.top_p == 1.0:
                object.__setattr__(self, "top_p", None)
        for name in ("max_new_tokens", "n"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"SamplingParams: {name} must be an integer >= 1, got {v!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"SamplingParams: seed must be an integer or None, got {self.seed!r}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"SamplingParams: stop must be non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop_token_ids", tuple(int(i) for i in self.stop_token_ids))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop"], d["stop_token_ids"] = list(self.stop), list(self.stop_token_ids)
        return d


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


def sample_seed(seed: int, key: str | int, index: int) -> int:
    """The 63-bit seed of sample `index` of prompt `key`: a pure function of the three."""
    h = hashlib.sha256(f"{seed}\x1f{key}\x1f{index}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def stop_token_ids(tokenizer: Any) -> set[int]:
    """Every id that ends a turn or a document for this tokenizer (eos, and for Qwen3 both
    `<|im_end|>` and `<|endoftext|>`, so base and chat models stop)."""
    ids = {int(tokenizer.eos_id)}
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
    """Model + tokenizer -> completions for batches of prompts.

    `batch_size` bounds the rows decoded together (samples, not prompts). The engine never changes
    what a sample is: batch size and chunking change speed only.
    """

    def __init__(self, model, tokenizer, *, batch_size: int = 16, compile: bool = False):
        if tokenizer is None:
            raise ValueError("Engine needs a tokenizer: the checkpoint has none (save it with its tokenizer, "
                             "or pass one explicitly)")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"Engine: batch_size must be an integer >= 1, got {batch_size!r}")
        self.model, self.tokenizer = model, tokenizer
        self.batch_size = batch_size
        self.compile = compile

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
                 allowed_special: Any = frozenset()) -> list[list[Completion]]:
        """`params.n` completions for each prompt, in input order.

        keys: one stable id per prompt (e.g. a problem id); sample j of prompt i draws its noise from
        `sample_seed(params.seed, keys[i], j)`. Default keys are the prompt's position, so pass keys
        whenever the same prompt may arrive in another chunk or order.
        """
        if isinstance(prompts, str):
            raise TypeError("Engine.generate takes a list of prompts; wrap a single prompt as [prompt]")
        if keys is not None and len(keys) != len(prompts):
            raise ValueError(f"Engine.generate: {len(keys)} keys for {len(prompts)} prompts")
        keys = list(range(len(prompts))) if keys is None else list(keys)
        ids = [self.encode(p, allowed_special=allowed_special) for p in prompts]
        tok = self.tokenizer
        stops = sorted(stop_token_ids(tok) | set(params.stop_token_ids))
        seed = 0 if params.seed is None else params.seed
        rows = [(i, j) for i in range(len(ids)) for j in range(params.n)]
        out: list[list[Completion]] = [[] for _ in ids]
        # reference implementation: one row per call so each row has its own noise stream
        for i, j in rows:
            t0 = time.perf_counter()
            stop_when = None
            if params.stop:
                stop_when = lambda toks: _cut_at_stop(tok.decode(toks), params.stop)[1] is not None  # noqa: E731
            res = _generate(self.model, [ids[i]], max_new_tokens=params.max_new_tokens,
                            temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
                            seed=None if params.greedy else sample_seed(seed, keys[i], j), stop_tokens=stops,
                            pad_id=tok.pad_id, on_overflow=on_overflow, stop_when=stop_when)
            toks, lps, reason = res.tokens[0], res.logprobs[0], res.finish_reasons[0]
            body = toks[:-1] if reason == "stop" and toks and toks[-1] in stops else toks
            text, hit = _cut_at_stop(tok.decode(body), params.stop)
            stop_reason: str | int | None = hit
            if hit is None and reason == "stop":
                stop_reason = toks[-1]
            out[i].append(Completion(text, toks, lps, "stop" if (reason == "stop" or hit) else "length",
                                     len(res.prompt_tokens[0]), len(toks), j, time.perf_counter() - t0,
                                     stop_reason))
        return out


def sequence_logprobs(model, input_ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Differentiable log p(input_ids[:, t+1] | input_ids[:, :t+1]) under `model`: shape (B, T-1), float32.

    `mask` (B, T), true where a token is to be scored (e.g. completion tokens); positions whose target
    is masked out are 0. Sequences are right-padded (causal attention: no real token sees a pad).
    Rows past `vocab_size` (a padded vocabulary) are excluded from the normaliser, as in generation.
    """
    logits = model(input_ids[:, :-1])
    V = model.config.vocab_size
    lp = torch.log_softmax(logits[..., :V].float(), dim=-1)
    out = lp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    if mask is not None:
        out = out * mask[:, 1:].to(out.dtype)
    return out


def load_model(spec: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
               tokenizer: str | None = None):
    """(model, tokenizer) from a spine checkpoint directory or `hf:PATH_OR_NAME`, in eval mode on `device`.

    A Lightning `.ckpt` is refused with a pointer to `spine consolidate`.
    """
    from pathlib import Path

    from .tokenizer import check_vocab_fits, get_tokenizer

    if spec.startswith("hf:"):
        from .hf import import_hf, import_hf_tokenizer

        model = import_hf(spec[3:], dtype=dtype).to(device)
        tok = import_hf_tokenizer(spec[3:])
    else:
        if spec.endswith(".ckpt") and Path(spec).is_file():
            raise ValueError(f"{spec} is a Lightning training checkpoint, not a spine checkpoint directory; "
                             f"convert it first: spine consolidate {spec} OUT_DIR")
        from .checkpoint import load_checkpoint

        model, tok = load_checkpoint(spec, map_location=device, dtype=dtype)
    if tokenizer is not None:
        tok = get_tokenizer(tokenizer)
        check_vocab_fits(tok, model.config.vocab_size, where=f"tokenizer {tokenizer}")
    return model.eval(), tok
