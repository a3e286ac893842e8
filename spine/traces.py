"""Traces: one JSON object a line for every graded sample, plus a header with the run config.

File layout (JSONL)::

    {"type": "header", "format": "spine-trace/1", "run_id": ..., "config_hash": ..., "config": {...}, ...}
    {"type": "record", "run_id": ..., "problem_id": ..., "sample_index": 0, ..., "metadata": {...}}
    ...

A trace file plus its config reproduces the number it produced. Writes are append-only and
fsync'd per record, so a killed run loses at most the record in flight; reopening the same path
with the same config resumes (``done_ids()`` says which problems to skip), and a different
config is refused rather than mixed in.

Conventions the readers rely on (pipelines should follow them):
- per-sample records have ``sample_index`` in ``[0, n_samples)`` and ``metadata["n_samples"]``
  when there is more than one sample per problem;
- the record carrying the pipeline's chosen answer has ``metadata["final"] = True`` (a pipeline
  that flags one should set ``final = False`` on the others; a separate final record that is not
  a sample uses ``sample_index = -1``). Without any flag, sample 0 is the problem's answer;
- ``metadata["cost"]`` = {prompt_tokens, generated_tokens, forward_passes, seconds} of the record
  (`spine.reasoning.cost`); ``tokens``/``seconds`` equal its generated tokens and seconds;
- a refinement round has ``round`` (0 = the draft) and ``parent`` (the sample index it revised).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import uuid
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

__all__ = [
    "TRACE_FORMAT",
    "TraceRecord",
    "TraceWriter",
    "config_hash",
    "canonical_config",
    "read_traces",
    "Summary",
    "summarize",
    "format_summary",
    "wilson_interval",
    "final_records",
    "record_cost",
]

TRACE_FORMAT = "spine-trace/1"


@dataclass
class TraceRecord:
    """One graded sample (see the module docstring for the `metadata` conventions)."""

    run_id: str
    config_hash: str
    checkpoint_sha256: str | None
    problem_id: str
    sample_index: int
    prompt: str
    completion: str
    extracted: str | None
    extraction_method: str
    gold: str
    correct: bool
    rule: str
    tokens: int
    seconds: float
    metadata: dict = field(default_factory=dict)
    round: int | None = None      # refinement round (0 = the draft), None outside refinement
    parent: int | None = None     # sample_index of the record this one revised

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TraceRecord":
        """Build from a parsed line; unknown keys (e.g. "type") are ignored, missing required ones are an error."""
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in d and n not in _OPTIONAL_FIELDS]
        if missing:
            raise ValueError(f"trace record lacks fields {missing}")
        return cls(**{n: d[n] for n in names if n in d})


_OPTIONAL_FIELDS = ("metadata", "round", "parent")


# ----------------------------------------------------------------------------- config hash


def canonical_config(config: Any) -> Any:
    """`config` as plain JSON types (dataclasses, Paths, tuples, sets, enums converted)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return canonical_config(dataclasses.asdict(config))
    if isinstance(config, Mapping):
        return {str(k): canonical_config(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [canonical_config(v) for v in config]
    if isinstance(config, (set, frozenset)):
        return sorted(canonical_config(v) for v in config)
    if isinstance(config, Enum):
        return canonical_config(config.value)
    if isinstance(config, Path):
        return str(config)
    if isinstance(config, float) and not math.isfinite(config):
        return str(config)  # NaN/inf are not JSON
    if config is None or isinstance(config, (str, int, float, bool)):
        return config
    raise TypeError(f"run config value {config!r} of type {type(config).__name__} is not JSON-serialisable; "
                    "convert it to a string or number first")


def config_hash(config: Mapping) -> str:
    """First 16 hex digits of sha256 over the canonical JSON (sorted keys) of `config`."""
    text = json.dumps(canonical_config(config), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# ----------------------------------------------------------------------------- reading


def read_traces(path: str | Path, *, dedupe: bool = True) -> tuple[dict, list[TraceRecord]]:
    """(header, records) of a trace file.

    A last line cut off by a kill is skipped with a warning; a bad line elsewhere is an error.
    With `dedupe`, a (problem_id, sample_index) written twice (a resumed, half-done problem is
    redone) keeps its last version.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"trace file not found: {p}")
    # "\n" only: a record is one line, but the text it holds may contain U+0085 or U+2028, which
    # json.dumps(ensure_ascii=False) leaves raw and str.splitlines() would split on (a byte model emits them)
    lines = [line.rstrip("\r") for line in p.read_text(encoding="utf-8").split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ValueError(f"{p}: empty trace file (no header)")
    parsed: list[tuple[int, dict]] = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines):
                warnings.warn(f"{p}: skipping truncated last line {i} (run killed mid-write?)", stacklevel=2)
                break
            raise ValueError(f"{p}: invalid JSON on line {i}: {e.msg}") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{p}: line {i} is not a JSON object")
        parsed.append((i, obj))
    if not parsed or parsed[0][1].get("type") != "header":
        raise ValueError(f"{p}: not a spine trace file (line 1 is not a header)")
    header = parsed[0][1]
    records: list[TraceRecord] = []
    for i, obj in parsed[1:]:
        if obj.get("type", "record") != "record":
            raise ValueError(f"{p}: line {i} has unexpected type {obj.get('type')!r}")
        try:
            records.append(TraceRecord.from_dict(obj))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{p}: line {i}: {e}") from None
    if dedupe:
        latest: dict[tuple[str, int], TraceRecord] = {}
        for r in records:
            latest[(r.problem_id, r.sample_index)] = r
        records = list(latest.values())
    return header, records


# ----------------------------------------------------------------------------- writing


# how every header line starts (json.dumps of the header dict below keeps this key order)
_HEADER_PREFIX = json.dumps({"type": "header"})[:-1].encode()


def _new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


class TraceWriter:
    """Append-only JSONL trace writer that resumes an interrupted run of the same config.

    Use as a context manager or call `close()`. `run_id` and `config_hash` are attributes to put
    on records (`make_record` fills them in); on resume `run_id` is the one in the file's header.
    """

    def __init__(self, path: str | Path, *, run_config: Mapping, run_id: str | None = None,
                 fsync: bool = True) -> None:
        self.path = Path(path)
        self.config = canonical_config(run_config)
        self.config_hash = config_hash(run_config)
        self.fsync = fsync
        self.resumed = False
        # problem_id -> (sample indices seen, n_samples, any "final" key seen, final=True seen)
        self._progress: dict[str, list[Any]] = {}
        if self.path.exists() and self.path.stat().st_size > 0 and self._check_header() and self._repair_tail():
            header, records = read_traces(self.path, dedupe=False)
            if header.get("config_hash") != self.config_hash:
                raise ValueError(
                    f"trace file {self.path} was written by another run config (hash "
                    f"{header.get('config_hash')} != {self.config_hash}); refusing to mix — use a new path")
            if run_id is not None and run_id != header.get("run_id"):
                warnings.warn(f"resuming {self.path}: keeping its run_id {header.get('run_id')!r}, "
                              f"not {run_id!r}", stacklevel=2)
            self.run_id = str(header.get("run_id"))
            self.resumed = True
            for r in records:
                self._track(r)
            self._fh = open(self.path, "a", encoding="utf-8")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.run_id = run_id or _new_run_id()
            self._fh = open(self.path, "w", encoding="utf-8")
            self._append({"type": "header", "format": TRACE_FORMAT, "run_id": self.run_id,
                          "config_hash": self.config_hash, "config": self.config,
                          "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})

    def _check_header(self) -> bool:
        """Refuse (ValueError, file untouched) anything whose first line is not a spine trace header.

        True: a complete header line. False: only a header cut off by a kill (safe to rewrite)."""
        with open(self.path, "rb") as fh:
            first = fh.readline(1 << 24)
        if first.endswith(b"\n"):
            try:
                head = json.loads(first.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                head = None
            if isinstance(head, dict) and head.get("type") == "header" and head.get("format") == TRACE_FORMAT:
                if head.get("config_hash") != self.config_hash:  # refused before any repair touches it
                    raise ValueError(
                        f"trace file {self.path} was written by another run config (hash "
                        f"{head.get('config_hash')} != {self.config_hash}); refusing to mix — use a new path")
                return True
        elif first.startswith(_HEADER_PREFIX):
            # a header cut off by a kill: nothing else was ever written, so start afresh
            warnings.warn(f"{self.path}: dropping a partial last line ({len(first)} bytes) left by an "
                          "interrupted write", stacklevel=3)
            return False
        raise ValueError(f"{self.path} exists and is not a spine trace file (its first line is not a "
                         f"{TRACE_FORMAT} header); refusing to write to it — pass a new trace path")

    def _repair_tail(self) -> bool:
        """Cut a partial last line left by a kill; False if not even the header survived."""
        with open(self.path, "rb+") as fh:
            data = fh.read()
            if data.endswith(b"\n"):
                return True
            cut = data.rfind(b"\n") + 1  # 0 when there is no complete line at all
            warnings.warn(f"{self.path}: dropping a partial last line ({len(data) - cut} bytes) "
                          "left by an interrupted write", stacklevel=3)
            fh.truncate(cut)
            return cut > 0

    def _append(self, obj: Mapping[str, Any]) -> None:
        self._fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self._fh.flush()
        if self.fsync:
            os.fsync(self._fh.fileno())

    def _track(self, rec: TraceRecord) -> None:
        st = self._progress.setdefault(rec.problem_id, [set(), 1, False, False])
        st[0].add(rec.sample_index)
        st[1] = max(st[1], int(rec.metadata.get("n_samples", 1) or 1))
        if "final" in rec.metadata:
            st[2] = True
            st[3] = st[3] or rec.metadata["final"] is True

    def done_ids(self) -> set[str]:
        """Problems fully recorded: samples 0..n_samples-1 all present and, if the pipeline
        flags a final record for that problem, the final=True record present too."""
        done = set()
        for pid, (seen, n, uses_final, has_final) in self._progress.items():
            if all(i in seen for i in range(n)) and (has_final or not uses_final):
                done.add(pid)
        return done

    def make_record(self, **fields: Any) -> TraceRecord:
        """A `TraceRecord` with this writer's run_id and config_hash filled in."""
        fields.setdefault("run_id", self.run_id)
        fields.setdefault("config_hash", self.config_hash)
        fields.setdefault("checkpoint_sha256", None)
        return TraceRecord(**fields)

    def write(self, rec: TraceRecord) -> None:
        """Append one record durably (flush + fsync)."""
        if rec.config_hash != self.config_hash or rec.run_id != self.run_id:
            raise ValueError(f"record for {rec.problem_id!r} carries run {rec.run_id!r}/config {rec.config_hash} "
                             f"but this trace file is run {self.run_id!r}/config {self.config_hash}")
        self._append({"type": "record", **rec.to_dict()})
        self._track(rec)

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ----------------------------------------------------------------------------- summaries

_Z95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval for k successes out of n (n=0 -> (0, 1))."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, center - half), min(1.0, center + half))


@dataclass
class Summary:
    """Accuracy over problems (one answer each) and cost over all records (samples)."""

    n: int
    n_correct: int
    accuracy: float
    ci95: tuple[float, float]
    mean_tokens: float
    mean_seconds: float
    n_records: int
    total_tokens: int
    total_seconds: float
    by_group: dict[str, dict[str, "Summary"]] = field(default_factory=dict)
    # cost per problem (all records of a problem summed, averaged over problems): the compute axis
    samples_per_problem: float = 0.0
    tokens_per_problem: float = 0.0
    prompt_tokens_per_problem: float = 0.0
    forward_passes_per_problem: float = 0.0
    seconds_per_problem: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def final_records(records: Iterable[TraceRecord]) -> dict[str, TraceRecord]:
    """problem_id -> the record holding its answer: the last one flagged metadata["final"] is
    True, else sample 0, else the lowest sample index. Order: first appearance."""
    by_pid: dict[str, list[TraceRecord]] = {}
    for r in records:
        by_pid.setdefault(r.problem_id, []).append(r)
    out = {}
    for pid, rs in by_pid.items():
        flagged = [r for r in rs if r.metadata.get("final") is True]
        if flagged:
            out[pid] = flagged[-1]
        else:
            zero = [r for r in rs if r.sample_index == 0]
            out[pid] = zero[-1] if zero else min(rs, key=lambda r: r.sample_index)
    return out


def _sort_key(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def record_cost(r: TraceRecord) -> tuple[int, int]:
    """(prompt tokens, forward passes) of a record: its metadata["cost"]; for traces written before costs
    were recorded, its prompt length and one forward pass per generated token."""
    cost = r.metadata.get("cost")
    if isinstance(cost, Mapping):
        return int(cost.get("prompt_tokens", 0)), int(cost.get("forward_passes", 0))
    return int(r.metadata.get("prompt_tokens", 0) or 0), int(r.tokens)


def _summary(finals: Sequence[TraceRecord], all_records: Sequence[TraceRecord]) -> Summary:
    n, k = len(finals), sum(bool(r.correct) for r in finals)
    m = len(all_records)
    tok = sum(int(r.tokens) for r in all_records)
    sec = sum(float(r.seconds) for r in all_records)
    costs = [record_cost(r) for r in all_records]
    per = (lambda x: x / n) if n else (lambda x: 0.0)
    return Summary(n=n, n_correct=k, accuracy=k / n if n else 0.0, ci95=wilson_interval(k, n),
                   mean_tokens=tok / m if m else 0.0, mean_seconds=sec / m if m else 0.0,
                   n_records=m, total_tokens=tok, total_seconds=sec, samples_per_problem=per(m),
                   tokens_per_problem=per(tok), prompt_tokens_per_problem=per(sum(c[0] for c in costs)),
                   forward_passes_per_problem=per(sum(c[1] for c in costs)), seconds_per_problem=per(sec))


def summarize(records: Iterable[TraceRecord], *, group_by: Sequence[str] = ("level", "subject")) -> Summary:
    """Accuracy with a Wilson 95% interval, counting each problem once (see `final_records`),
    overall and per value of each `group_by` metadata key (problems lacking the key are left
    out of that grouping). Token and time means are per record."""
    records = list(records)
    finals = final_records(records)
    by_pid: dict[str, list[TraceRecord]] = {}
    for r in records:
        by_pid.setdefault(r.problem_id, []).append(r)
    summary = _summary(list(finals.values()), records)
    for key in group_by:
        groups: dict[str, list[str]] = {}
        for pid, fin in finals.items():
            value = fin.metadata.get(key)
            if value is None:  # fall back to any sample that carries the key
                value = next((r.metadata[key] for r in by_pid[pid] if r.metadata.get(key) is not None), None)
            if value is not None:
                groups.setdefault(str(value), []).append(pid)
        if groups:
            summary.by_group[key] = {
                v: _summary([finals[p] for p in groups[v]], [r for p in groups[v] for r in by_pid[p]])
                for v in sorted(groups, key=_sort_key)
            }
    return summary


def format_summary(summary: Summary) -> str:
    """Markdown table: one row overall, then one per group value (mean tokens/s are per record, i.e. per
    sample; the last two columns per problem); then a line with the cost per problem."""
    rows = ["| group | n | correct | accuracy | 95% CI | mean tokens | mean s | tokens/problem | s/problem |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def row(label: str, s: Summary) -> str:
        lo, hi = s.ci95
        return (f"| {label} | {s.n} | {s.n_correct} | {100 * s.accuracy:.1f}% | "
                f"{100 * lo:.1f}–{100 * hi:.1f}% | {s.mean_tokens:.1f} | {s.mean_seconds:.3f} | "
                f"{s.tokens_per_problem:.1f} | {s.seconds_per_problem:.3f} |")

    rows.append(row("all", summary))
    for key, groups in summary.by_group.items():
        for value, s in groups.items():
            rows.append(row(f"{key}={value}", s))
    s = summary
    rows.append(f"\ncost per problem: {s.samples_per_problem:.2f} samples, {s.prompt_tokens_per_problem:.1f} prompt "
                f"tokens, {s.tokens_per_problem:.1f} generated tokens, {s.forward_passes_per_problem:.1f} forward "
                f"passes, {s.seconds_per_problem:.3f} s")
    return "\n".join(rows)
