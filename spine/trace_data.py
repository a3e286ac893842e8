"""Teacher traces -> training data: selection, chat rendering with a loss mask, length buckets, pairs.

Input: trace files written by `spine eval` (`spine.traces`), from any teacher (a larger spine
model, a GRPO-trained one, imported weights). Each record carries the prompt the teacher saw, its
completion, the verdict and the gold answer.

- `select_traces`: keep correct samples only (configurable), drop exact duplicates (same prompt and
  completion after whitespace normalisation), optionally cap samples per problem; every decision
  is counted in a `SelectionReport` that the data module prints.
- `render_example`: (ids, loss_mask) together. Plain: prompt ids + completion ids + end-of-text,
  loss on the completion and the end token. Chat (Qwen3 ChatML): the prompt becomes one user turn
  (a prompt the teacher already saw in ChatML is unwrapped first), the completion the assistant turn
  closed by `<|im_end|>`; with `thinking` the reasoning sits in `<think>...</think>` followed by the
  final answer, without it the empty think block of Qwen3's no-thinking mode is part of the prompt.
- `LengthBucketSampler`: batches drawn from one length bucket with a token budget, so long traces
  train in smaller batches instead of being dropped; only examples longer than the model's context
  are handled by an explicit policy (drop, truncate or error), and counted.
- `preference_pairs`: correct vs incorrect samples of one problem -> (prompt, chosen, rejected) for DPO.
"""
from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch

from .traces import TraceRecord
from .training import IGNORE_INDEX

__all__ = ["SelectionReport", "select_traces", "render_example", "Example", "collate_masked", "length_buckets",
           "LengthBucketSampler", "preference_pairs", "OVERFLOW_POLICIES", "apply_overflow", "split_by_key"]

OVERFLOW_POLICIES = ("drop", "truncate", "error")
_IM_START, _IM_END = "<|im_start|>", "<|im_end|>"
_THINK_START, _THINK_END = "<think>", "</think>"


# ----------------------------------------------------------------------------- selection
@dataclass
class SelectionReport:
    """What happened to every record: counts that add up to `total`."""

    total: int = 0
    kept: int = 0
    incorrect: int = 0
    duplicates: int = 0
    over_cap: int = 0
    empty: int = 0
    problems_total: int = 0
    problems_kept: int = 0
    too_long: int = 0  # filled in after tokenisation (see apply_overflow)
    truncated: int = 0
    buckets: dict[str, int] = field(default_factory=dict)

    def format(self) -> str:
        lines = [f"traces: {self.total} records of {self.problems_total} problems -> kept {self.kept} "
                 f"({self.problems_kept} problems)",
                 f"  dropped: {self.incorrect} incorrect, {self.duplicates} duplicates, {self.empty} empty completions, "
                 f"{self.over_cap} over the per-problem cap, {self.too_long} longer than max_length"
                 + (f"; truncated {self.truncated}" if self.truncated else "")]
        if self.buckets:
            lines.append("  length buckets (tokens: examples): "
                         + ", ".join(f"{k}: {v}" for k, v in self.buckets.items()))
        return "\n".join(lines)


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def select_traces(records: Sequence[TraceRecord], *, correct_only: bool = True, dedupe: bool = True,
                  max_per_problem: int | None = None) -> tuple[list[TraceRecord], SelectionReport]:
    """The records to train on, in input order, and a report of what was dropped and why."""
    if max_per_problem is not None and (not isinstance(max_per_problem, int) or max_per_problem < 1):
        raise ValueError(f"max_per_problem must be an integer >= 1 or None, got {max_per_problem!r}")
    rep = SelectionReport(total=len(records), problems_total=len({r.problem_id for r in records}))
    seen: set[tuple[str, str]] = set()
    per_problem: Counter[str] = Counter()
    kept: list[TraceRecord] = []
    for r in records:
        if not r.completion.strip():
            rep.empty += 1
            continue
        if correct_only and not r.correct:
            rep.incorrect += 1
            continue
        key = (_norm(r.prompt), _norm(r.completion))
        if dedupe and key in seen:
            rep.duplicates += 1
            continue
        if max_per_problem is not None and per_problem[r.problem_id] >= max_per_problem:
            rep.over_cap += 1
            continue
        seen.add(key)
        per_problem[r.problem_id] += 1
        kept.append(r)
    rep.kept, rep.problems_kept = len(kept), len(per_problem)
    return kept, rep


# ----------------------------------------------------------------------------- rendering
@dataclass
class Example:
    """One training row: ids and a loss mask of the same length (True = the model learns this token)."""

    ids: list[int]
    mask: list[bool]
    key: str = ""  # the problem id (splits are by problem)

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.mask):
            raise ValueError(f"Example {self.key!r}: {len(self.ids)} ids but {len(self.mask)} mask entries")


def _user_content(prompt: str) -> str:
    """A prompt the teacher saw in ChatML (one user turn + generation prompt) -> the user's text."""
    m = re.fullmatch(r"<\|im_start\|>user\n(.*?)<\|im_end\|>\n<\|im_start\|>assistant\n"
                     r"(?:<think>\n\n</think>\n\n)?", prompt, flags=re.S)
    return m.group(1) if m else prompt


def _split_thinking(completion: str) -> tuple[str | None, str]:
    """(reasoning inside <think>..</think> or None, the text after it)."""
    if _THINK_END not in completion:
        return None, completion
    head, _, tail = completion.partition(_THINK_END)
    return head.replace(_THINK_START, "", 1).strip("\n"), tail.lstrip("\n")


def render_example(tokenizer: Any, prompt: str, completion: str, *, chat: bool = False, thinking: bool = True,
                   answer: str | None = None, key: str = "") -> Example:
    """(ids, loss mask) for one prompt/completion; see the module docstring for both formats.

    chat + thinking: a completion without its own think block becomes the reasoning, followed by
    "The answer is \\boxed{answer}" when `answer` is given (else the completion is the answer too).
    """
    if not chat:
        p = tokenizer.encode(prompt)
        c = tokenizer.encode(completion) + [int(tokenizer.eos_id)]
        return Example(p + c, [False] * len(p) + [True] * len(c), key)
    specials = getattr(tokenizer, "special_tokens", {}) or {}
    missing = [t for t in (_IM_START, _IM_END, _THINK_START, _THINK_END) if t not in specials]
    if missing:
        raise ValueError(f"chat rendering needs a ChatML tokenizer with {missing} (Qwen3); "
                         f"{getattr(tokenizer, 'name', type(tokenizer).__name__)} has none: use chat: false")
    user = _user_content(prompt)
    reasoning, final = _split_thinking(completion)
    head = f"{_IM_START}user\n{user}{_IM_END}\n{_IM_START}assistant\n"
    if thinking:
        if reasoning is None:
            reasoning = completion.strip("\n")
            final = f"The answer is \\boxed{{{answer}}}." if answer is not None else completion.strip("\n")
        body = f"{_THINK_START}\n{reasoning}\n{_THINK_END}\n\n{final}{_IM_END}"
    else:
        head += f"{_THINK_START}\n\n{_THINK_END}\n\n"
        body = f"{final}{_IM_END}"
    think = {_THINK_START, _THINK_END, _IM_END}
    # the user's text is encoded with no specials: a "<|im_end|>" typed inside it stays plain text
    p = (tokenizer.encode(f"{_IM_START}user\n", allowed_special={_IM_START}) + tokenizer.encode(user)
         + tokenizer.encode(head[len(f"{_IM_START}user\n") + len(user):], allowed_special="all"))
    # the completion's text likewise; only the markers we placed are special
    c: list[int] = []
    for i, piece in enumerate(re.split(r"(<think>|</think>|<\|im_end\|>)", body)):
        if piece:
            c += tokenizer.encode(piece, allowed_special=think if i % 2 else frozenset())
    return Example(p + c, [False] * len(p) + [True] * len(c), key)


def apply_overflow(examples: list[Example], max_length: int | None, policy: str, report: SelectionReport | None = None
                   ) -> list[Example]:
    """Examples needing more than `max_length` inputs (len(ids) - 1 > max_length): dropped, truncated
    (first max_length + 1 ids kept) or an error, counted in `report`."""
    if policy not in OVERFLOW_POLICIES:
        raise ValueError(f"too_long must be one of {OVERFLOW_POLICIES}, got {policy!r}")
    if max_length is None:
        return examples
    out = []
    for e in examples:
        if len(e.ids) - 1 <= max_length:
            out.append(e)
        elif policy == "error":
            raise ValueError(f"trace of problem {e.key!r} has {len(e.ids)} tokens, more than max_length + 1 = "
                             f"{max_length + 1}; raise max_length or set too_long: drop|truncate")
        elif policy == "truncate":
            out.append(Example(e.ids[:max_length + 1], e.mask[:max_length + 1], e.key))
            if report is not None:
                report.truncated += 1
        elif report is not None:
            report.too_long += 1
    return out


def collate_masked(batch: Sequence[Example], pad_id: int, ignore_index: int = IGNORE_INDEX
                   ) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row: inputs = ids[:-1], targets = ids[1:] with -100 where the mask is off."""
    if not batch:
        raise ValueError("collate_masked: empty batch")
    T = max(len(e.ids) for e in batch) - 1
    x = torch.full((len(batch), T), pad_id, dtype=torch.long)
    y = torch.full((len(batch), T), ignore_index, dtype=torch.long)
    for b, e in enumerate(batch):
        ids = torch.as_tensor(e.ids, dtype=torch.long)
        m = torch.as_tensor(e.mask, dtype=torch.bool)
        n = len(e.ids) - 1
        x[b, :n] = ids[:-1]
        y[b, :n] = torch.where(m[1:], ids[1:], torch.full_like(ids[1:], ignore_index))
    return {"input_ids": x, "targets": y}


# ----------------------------------------------------------------------------- length buckets
def _bucket_edges(max_len: int) -> list[int]:
    edges, e = [], 64
    while e < max_len:
        edges.append(e)
        e *= 2
    return edges + [max(max_len, 1)]


def length_buckets(lengths: Sequence[int]) -> dict[str, int]:
    """Counts per power-of-two length bucket ("<=64", "65-128", ...), for the report."""
    if not lengths:
        return {}
    edges = _bucket_edges(max(lengths))
    counts: dict[str, int] = {}
    for n in lengths:
        i = next(k for k, e in enumerate(edges) if n <= e)
        label = f"<={edges[0]}" if i == 0 else f"{edges[i - 1] + 1}-{edges[i]}"
        counts[label] = counts.get(label, 0) + 1
    return {lbl: counts[lbl] for lbl in sorted(counts, key=lambda s: int(s.split("-")[-1].lstrip("<=")))}


class LengthBucketSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of indices from one power-of-two length bucket each, at most `batch_size` rows and
    (when `max_tokens` is set) at most `max_tokens` padded tokens, so a long trace trains in a small
    batch (down to one row) instead of being dropped or blowing up memory. Shuffled per epoch
    (seed + epoch) when `shuffle`; deterministic order otherwise."""

    def __init__(self, lengths: Sequence[int], batch_size: int, max_tokens: int | None = None, *,
                 shuffle: bool = True, seed: int = 0):
        if batch_size < 1 or (max_tokens is not None and max_tokens < 1):
            raise ValueError(f"batch_size and max_tokens must be >= 1, got {batch_size}, {max_tokens}")
        self.lengths, self.batch_size, self.max_tokens = list(lengths), batch_size, max_tokens
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        edges = _bucket_edges(max(self.lengths) if self.lengths else 1)
        self.buckets: list[list[int]] = [[] for _ in edges]
        for i, n in enumerate(self.lengths):
            self.buckets[next(k for k, e in enumerate(edges) if n <= e)].append(i)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        out = []
        for bucket in self.buckets:
            idx = list(bucket)
            if self.shuffle:
                rng.shuffle(idx)
            batch, longest = [], 0
            for i in idx:
                n = self.lengths[i]
                too_many = len(batch) >= self.batch_size
                over = self.max_tokens is not None and batch and max(longest, n) * (len(batch) + 1) > self.max_tokens
                if batch and (too_many or over):
                    out.append(batch)
                    batch, longest = [], 0
                batch.append(i)
                longest = max(longest, n)
            if batch:
                out.append(batch)
        if self.shuffle:
            rng.shuffle(out)
        return out

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches()
        self.epoch += 1  # a fresh order next time even if nobody calls set_epoch
        return iter(batches)

    def __len__(self) -> int:
        return len(self._batches())


# ----------------------------------------------------------------------------- preference pairs
def preference_pairs(records: Sequence[TraceRecord], *, max_pairs_per_problem: int = 1, dedupe: bool = True
                     ) -> tuple[list[dict[str, str]], dict[str, int]]:
    """{prompt, chosen, rejected, problem_id} from correct vs incorrect samples of one problem.

    Pair k of a problem matches its k-th distinct correct sample with its k-th distinct incorrect one
    (cycling through the shorter list), up to `max_pairs_per_problem`. Returns the pairs and counts
    (problems with pairs, problems all correct, all incorrect).
    """
    if not isinstance(max_pairs_per_problem, int) or max_pairs_per_problem < 1:
        raise ValueError(f"max_pairs_per_problem must be an integer >= 1, got {max_pairs_per_problem!r}")
    by_pid: dict[str, list[TraceRecord]] = {}
    for r in records:
        if r.completion.strip():
            by_pid.setdefault(r.problem_id, []).append(r)
    pairs: list[dict[str, str]] = []
    stats = {"problems": len(by_pid), "with_pairs": 0, "all_correct": 0, "all_incorrect": 0}
    for pid, rs in by_pid.items():
        good, bad, seen = [], [], set()
        for r in sorted(rs, key=lambda r: r.sample_index):
            k = _norm(r.completion)
            if dedupe and k in seen:
                continue
            seen.add(k)
            (good if r.correct else bad).append(r)
        if not good or not bad:
            stats["all_correct" if good else "all_incorrect"] += 1
            continue
        stats["with_pairs"] += 1
        n = min(max_pairs_per_problem, max(len(good), len(bad)))
        for k in range(n):
            c, w = good[k % len(good)], bad[k % len(bad)]
            pairs.append({"prompt": c.prompt, "chosen": c.completion, "rejected": w.completion, "problem_id": pid})
    return pairs, stats


def split_by_key(keys: Sequence[str], val_frac: float, seed: int = 0) -> list[str]:
    """"train"/"val" per key, stable (sha256 of seed and key), so one problem never lands in both."""
    import hashlib

    if not 0 <= val_frac < 1:
        raise ValueError(f"val_frac must be in [0, 1), got {val_frac}")
    out = []
    for k in keys:
        h = int.from_bytes(hashlib.sha256(f"{seed}|{k}".encode()).digest()[:8], "big") / 2 ** 64
        out.append("val" if h < val_frac else "train")
    return out

