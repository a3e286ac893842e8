"""An LLM judge over any OpenAI-compatible endpoint (Ollama, vLLM, `spine serve`, OpenAI).

Rubrics:
- "book-0-100": the first book's ch. 7 prompt (input, correct output, model response; "score ... on a
  scale from 0 to 100 ... Respond with the integer number only"). Parsed strictly: the reply must be
  one integer 0..100 (surrounding whitespace and one trailing period allowed).
- "rfs-1-5": a 1-5 rubric (wording ours, in the spirit of the reasoning book's appendix F judge):
  the reply's last non-empty line must be exactly `Score: N` with N in 1..5.
For both, a complete leading `<think>...</think>` block (reasoning judges) is removed first. Anything
else is *missing*: recorded with the raw reply, counted, never given a default score.

`judge_file` writes one trace record per judged response with `spine.traces.TraceWriter` (resumable);
`JudgeScorer` is the same judge as a best-of-N scorer (`scorer(prompt, candidates) -> scores`).
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import statistics
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import urlparse

from ..instruct import format_input
from ..traces import TraceWriter, read_traces, wilson_interval
from . import require

JUDGE_PROMPT_VERSION = 1


@dataclass(frozen=True)
class Rubric:
    name: str
    low: int
    high: int
    pass_mark: int  # a record is "correct" when its score >= pass_mark
    max_tokens: int

    def prompt(self, instruction: str, response: str, reference: str | None = None, input: str = "") -> str:
        if self.name == "book-0-100":
            given = format_input({"instruction": instruction, "input": input})
            ref = f"and correct output `{reference}`, " if reference else ""
            return (f"Given the input `{given}` {ref}score the model response `{response}` on a scale from 0 to "
                    "100, where 100 is the best score. Respond with the integer number only.")
        task = f"{instruction}\n\n{input}" if input else instruction
        ref = f"\n\nReference answer:\n{reference}" if reference else ""
        return ("You are a fair and strict judge. Rate the response to the task on a scale of 1 to 5"
                + (", using the reference answer" if reference else "") + ".\n"
                "5: fully correct and clearly explained\n4: correct, with minor flaws\n"
                "3: partially correct or incomplete\n2: mostly incorrect, with some relevant content\n"
                "1: incorrect or irrelevant\n\n"
                f"Task:\n{task}{ref}\n\nResponse:\n{response}\n\n"
                "End your reply with one line of the form `Score: N`, where N is 1, 2, 3, 4 or 5.")

    def parse(self, reply: str | None) -> int | None:
        """The score in `reply`, or None when it does not follow the rubric's format exactly."""
        if not isinstance(reply, str):
            return None
        text = re.sub(r"^\s*<think>.*?</think>", "", reply, count=1, flags=re.S).strip()
        if self.name == "book-0-100":
            m = re.fullmatch(r"(\d{1,3})\.?", text)
        else:
            lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
            m = re.fullmatch(r"(?i)score:\s*(\d)\.?", lines[-1]) if lines else None
        if not m:
            return None
        score = int(m.group(1))
        return score if self.low <= score <= self.high else None


RUBRICS = {"book-0-100": Rubric("book-0-100", 0, 100, 50, 8),
           "rfs-1-5": Rubric("rfs-1-5", 1, 5, 4, 512)}


def get_rubric(name: str) -> Rubric:
    if name not in RUBRICS:
        raise ValueError(f"--rubric must be one of {sorted(RUBRICS)}, got {name!r}")
    return RUBRICS[name]


def base_url(endpoint: str) -> str:
    """`http://host:port` -> `http://host:port/v1` (an explicit path is kept as given)."""
    u = urlparse(endpoint)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise ValueError(f"--endpoint must be an http(s) URL such as http://127.0.0.1:8000/v1, got {endpoint!r}")
    return endpoint.rstrip("/") + ("/v1" if u.path in ("", "/") else "")


class JudgeClient:
    """Sends one judge prompt as a chat completion and returns (raw reply, completion tokens)."""

    def __init__(self, endpoint: str, model: str, *, api_key: str | None = None, timeout: float = 120.0,
                 max_retries: int = 2, temperature: float = 0.0, seed: int | None = 0):
        openai = require("openai", "spine judge")
        import os

        self.endpoint, self.model, self.temperature, self.seed = base_url(endpoint), model, temperature, seed
        self._client = openai.OpenAI(base_url=self.endpoint, timeout=timeout, max_retries=max_retries,
                                     api_key=api_key or os.environ.get("OPENAI_API_KEY") or "not-needed")

    def ask(self, prompt: str, max_tokens: int) -> tuple[str | None, int]:
        kw: dict[str, Any] = {"seed": self.seed} if self.seed is not None else {}
        r = self._client.chat.completions.create(model=self.model, messages=[{"role": "user", "content": prompt}],
                                                 temperature=self.temperature, max_tokens=max_tokens, **kw)
        content = r.choices[0].message.content if r.choices else None
        tokens = r.usage.completion_tokens if r.usage is not None else 0
        return content, int(tokens or 0)


@dataclass
class Item:
    """One response to judge."""

    problem_id: str
    sample_index: int
    instruction: str
    response: str
    reference: str | None = None
    input: str = ""
    metadata: dict = field(default_factory=dict)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_responses(path: str | Path, *, response_field: str = "model_response", reference_field: str = "output",
                   id_field: str = "id") -> list[Item]:
    """Book-style records (JSON list or JSONL): instruction, input, output (reference), model_response."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"responses file not found: {p}")
    text = p.read_text(encoding="utf-8")
    try:
        records = json.loads(text) if text.lstrip().startswith("[") else [
            json.loads(line) for line in text.split("\n") if line.strip()]  # not splitlines(): U+2028 in a reply
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not a JSON list or JSONL file: {e.msg} (line {e.lineno})") from None
    items = []
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise ValueError(f"{p}: record {i} is a {type(r).__name__}, expected an object")
        for f in ("instruction", response_field):
            if not isinstance(r.get(f), str):
                raise ValueError(f"{p}: record {i} has no string field {f!r} (fields: {sorted(r)})")
        ref = r.get(reference_field)
        items.append(Item(str(r.get(id_field, i)), 0, r["instruction"], r[response_field],
                          ref if isinstance(ref, str) else None, r.get("input") or ""))
    return items


def load_trace_items(path: str | Path) -> list[Item]:
    """Every record of a spine trace file: its prompt, completion and gold answer."""
    _, records = read_traces(path)
    return [Item(r.problem_id, r.sample_index, r.prompt, r.completion, r.gold or None,
                 metadata={k: r.metadata[k] for k in ("n_samples", "final") if k in r.metadata})
            for r in records]


def summarize_scores(scores: Sequence[int | None], rubric: Rubric, failed: int = 0) -> dict[str, Any]:
    """Mean score with a normal-approximation 95% CI over the parsed scores; missing ones are counted,
    not scored. `pass_rate` (score >= pass mark, over parsed scores) has a Wilson interval."""
    got = [s for s in scores if s is not None]
    k = len(got)
    mean = statistics.fmean(got) if got else float("nan")
    half = 1.959963984540054 * statistics.stdev(got) / math.sqrt(k) if k > 1 else float("nan")
    passed = sum(s >= rubric.pass_mark for s in got)
    return {"rubric": rubric.name, "n": len(scores) + failed, "scored": k, "missing": len(scores) - k,
            "failed": failed, "mean": mean, "ci95": (mean - half, mean + half), "pass_mark": rubric.pass_mark,
            "pass_rate": passed / k if k else float("nan"), "pass_ci95": wilson_interval(passed, k)}


def format_judge_summary(s: dict[str, Any]) -> str:
    lo, hi = s["ci95"]
    plo, phi = s["pass_ci95"]
    if not s["scored"]:  # nothing parsed: no mean to report
        return ("| rubric | n | scored | missing | failed | mean |\n|---|---:|---:|---:|---:|---:|\n"
                f"| {s['rubric']} | {s['n']} | 0 | {s['missing']} | {s['failed']} | — (no parsable reply) |")
    if s["scored"] == 1:
        lo = hi = float("nan")
    return ("| rubric | n | scored | missing | failed | mean | 95% CI | pass rate (>= {pm}) |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|\n"
            "| {r} | {n} | {k} | {m} | {f} | {mean:.2f} | {lo:.2f}–{hi:.2f} | {pr:.1f}% ({plo:.1f}–{phi:.1f}%) |"
            ).format(pm=s["pass_mark"], r=s["rubric"], n=s["n"], k=s["scored"], m=s["missing"], f=s["failed"],
                     mean=s["mean"], lo=lo, hi=hi, pr=100 * s["pass_rate"], plo=100 * plo, phi=100 * phi)


def judge_items(items: Sequence[Item], client: JudgeClient, rubric: Rubric, writer: TraceWriter, *,
                concurrency: int = 4, progress: Callable[[int, int], None] | None = None) -> tuple[list, int]:
    """Judge `items` (skipping those `writer` already holds); write one record each. Returns
    (scores of every item in the file, number of requests that failed and were not recorded)."""
    done = writer.done_ids()
    todo = [it for it in items if it.problem_id not in done]
    failed = 0

    def one(it: Item) -> tuple[Item, str | None, int, float, Exception | None]:
        prompt = rubric.prompt(it.instruction, it.response, it.reference, it.input)
        t0 = time.perf_counter()
        try:
            reply, tokens = client.ask(prompt, rubric.max_tokens)
            return it, reply, tokens, time.perf_counter() - t0, None
        except Exception as e:  # noqa: BLE001 - a failed request is counted, never scored
            return it, None, 0, time.perf_counter() - t0, e

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = [pool.submit(one, it) for it in todo]
        for k, fut in enumerate(as_completed(futures), start=1):
            it, reply, tokens, seconds, err = fut.result()
            if err is not None:
                failed += 1
                print(f"[spine judge] {it.problem_id}#{it.sample_index}: request failed "
                      f"({type(err).__name__}: {str(err)[:200]}); not recorded, rerun to retry", flush=True)
            else:
                score = rubric.parse(reply)
                writer.write(writer.make_record(
                    problem_id=it.problem_id, sample_index=it.sample_index,
                    prompt=rubric.prompt(it.instruction, it.response, it.reference, it.input),
                    completion=reply if reply is not None else "", extracted=None if score is None else str(score),
                    extraction_method="judge-strict" if score is not None else "judge-unparsable",
                    gold=it.reference or "", correct=score is not None and score >= rubric.pass_mark,
                    rule=f"judge:{rubric.name}", tokens=tokens, seconds=seconds,
                    metadata={**it.metadata, "score": score, "missing": score is None, "response": it.response,
                              "rubric": rubric.name, "judge_model": client.model, "raw_reply_is_null": reply is None}))
            if progress:
                progress(k, len(todo))
    _, records = read_traces(writer.path)
    wanted = {(it.problem_id, it.sample_index) for it in items}
    scores = [r.metadata.get("score") for r in records if (r.problem_id, r.sample_index) in wanted]
    return scores, failed


class JudgeScorer:
    """A best-of-N scorer backed by a judge endpoint: `scorer(prompt, candidates) -> [score or None]`.

    Higher is better; None means the judge's reply did not parse (the caller decides, e.g. rank last).
    """

    def __init__(self, endpoint: str, model: str, rubric: str = "rfs-1-5", *, concurrency: int = 4,
                 **client_kwargs: Any):
        self.rubric = get_rubric(rubric)
        self.client = JudgeClient(endpoint, model, **client_kwargs)
        self.concurrency = concurrency

    def __call__(self, prompt: str, candidates: Sequence[str], reference: str | None = None) -> list[float | None]:
        def one(c: str) -> float | None:
            reply, _ = self.client.ask(self.rubric.prompt(prompt, c, reference), self.rubric.max_tokens)
            s = self.rubric.parse(reply)
            return None if s is None else float(s)

        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            return list(pool.map(one, candidates))
