"""The evaluation harness: problems → pipeline → graded samples → traces → summary.

Every graded sample becomes one trace line; the sample that carries a problem's chosen answer is
flagged `metadata["final"] = True` (so summaries count each problem once). A run resumes by
skipping problem ids already complete in its trace file; a trace file written under another run
config is refused rather than mixed.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..engine import hf_path
from ..traces import Summary, TraceRecord, TraceWriter, config_hash, final_records, read_traces, summarize
from .pipelines import Pipeline, ProblemEngine, ProblemResult
from .problems import Problem


@dataclass
class EvalReport:
    """What `evaluate` returns: the summary over all requested problems (resumed ones included)."""

    summary: Summary
    results: list[ProblemResult]          # results computed in this call (not those resumed from traces)
    trace_path: Path | None
    skipped: int                          # problems already in the trace file


def run_config(engine: ProblemEngine, pipeline: Pipeline, *, source: str, checkpoint_sha256: str | None,
               extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What determines the numbers of a run; its hash guards trace files against mixing."""
    cfg = {"source": source, "checkpoint_sha256": checkpoint_sha256, "engine": engine.settings(),
           "pipeline": pipeline.config()}
    if extra:
        cfg["extra"] = dict(extra)
    return cfg


_HF_FILES = (".json", ".safetensors", ".bin", ".model", ".tiktoken", ".txt")


def checkpoint_identity(spec: str | Path) -> str:
    """sha256 naming the weights of `spec` for a run config: a spine checkpoint directory (the
    sha256 of its manifest, which lists every file's hash) or "hf:PATH" (sha256 over the names
    and contents of the directory's config/weight/tokenizer files; slow only for huge models)."""
    hf = hf_path(str(spec))
    if hf is None:
        from ..checkpoint import checkpoint_sha256

        return checkpoint_sha256(str(spec))
    root = Path(hf).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"HF checkpoint directory not found: {root}")
    h = hashlib.sha256()
    for f in sorted(p for p in root.iterdir() if p.is_file() and p.name.endswith(_HF_FILES)):
        fh = hashlib.sha256()
        with open(f, "rb") as fd:
            for block in iter(lambda: fd.read(1 << 20), b""):
                fh.update(block)
        h.update(f"{f.name}\0{fh.hexdigest()}\n".encode())
    return h.hexdigest()


def source_identity(source: str | Path) -> tuple[str, dict[str, Any]]:
    """(source, extra) for a run config: a local problems file is named "file:<name>" and pinned by
    its content's sha256 (the content decides the numbers; where the file lives does not), any
    other source (a synthetic spec, a hub name) by its text."""
    path = Path(str(source)).expanduser()
    if path.is_file():
        return f"file:{path.name}", {"problems_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return str(source), {}


def result_records(results: Sequence[ProblemResult], pipeline: Pipeline, *, run_id: str, config_hash: str,
                   checkpoint_sha256: str | None) -> list[TraceRecord]:
    """The trace records of pipeline results: one per sample, the chosen one flagged final.

    Each record carries its cost (`metadata["cost"]`; `tokens`/`seconds` are its generated tokens and
    seconds), the sample's mean token log-prob, its score when a scorer rated it, and for refinement
    rounds `round`/`parent`. The final record also carries the problem's whole cost and the pipeline's label.
    """
    label = pipeline.label() if callable(getattr(pipeline, "label", None)) else pipeline.name
    out = []
    for r in results:
        n = len(r.samples)
        for i, s in enumerate(r.samples):
            c = s.completion
            cost = s.spent
            meta = dict(r.problem.metadata)
            meta.pop("solution", None)  # long and not needed to reproduce the number
            meta.update({"pipeline": pipeline.name, "n_samples": n, "final": i == r.final_index,
                         "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
                         "cost": cost.to_dict(), "mean_logprob": c.mean_logprob})
            if s.score is not None:
                meta["score"] = s.score
            meta.update(s.details)
            if c.stop_reason is not None:
                meta["stop_reason"] = c.stop_reason
            if i == r.final_index:
                meta.update({"vote": r.vote, "chosen_answer": r.answer, "chosen_correct": r.correct, "label": label,
                             "problem_tokens": r.tokens, "problem_seconds": r.seconds,
                             "problem_cost": r.cost.to_dict(), **r.details})
            out.append(TraceRecord(
                run_id=run_id, config_hash=config_hash, checkpoint_sha256=checkpoint_sha256,
                problem_id=r.problem.id, sample_index=i, prompt=r.prompt, completion=c.text, extracted=s.answer,
                extraction_method=s.method, gold=r.problem.answer,
                # the final record carries the pipeline's verdict (for a vote: the chosen answer's)
                correct=r.correct if i == r.final_index else s.verdict.correct,
                rule=r.rule if i == r.final_index else s.verdict.rule,
                tokens=cost.generated_tokens, seconds=cost.seconds, metadata=meta, round=s.round, parent=s.parent))
    return out


class EvalWriter:
    """The one writer of evaluation traces: every evaluation path (`evaluate`, `evaluate_sharded`,
    `ReasoningEvalModule`) opens, resumes, writes and summarises through it.

    With a path it wraps a `TraceWriter` (a file of another run config is refused, the same config
    resumes); without one it keeps the records in memory. Use as a context manager or `close()`.
    """

    def __init__(self, path: str | Path | None, run_config: Mapping[str, Any], *,
                 checkpoint_sha256: str | None = None):
        self.path = Path(path) if path is not None else None
        self.checkpoint_sha256 = checkpoint_sha256
        self._trace = TraceWriter(self.path, run_config=run_config) if self.path is not None else None
        self.run_id = self._trace.run_id if self._trace else "memory"
        self.config_hash = self._trace.config_hash if self._trace else config_hash(run_config)
        self.resumed = bool(self._trace and self._trace.resumed)
        self._memory: list[TraceRecord] = []

    def done_ids(self) -> set[str]:
        """Problems already complete (resume skips them)."""
        return self._trace.done_ids() if self._trace else set()

    def recorded_verdicts(self) -> dict[str, bool]:
        """problem id -> the recorded verdict of its answer, for problems in the file."""
        return {pid: bool(r.correct) for pid, r in final_records(self.records()).items()}

    def records_of(self, results: Sequence[ProblemResult], pipeline: Pipeline) -> list[TraceRecord]:
        return result_records(results, pipeline, run_id=self.run_id, config_hash=self.config_hash,
                              checkpoint_sha256=self.checkpoint_sha256)

    def write(self, records: Sequence[TraceRecord]) -> None:
        """Append records (durably, when writing a file)."""
        for rec in records:
            if self._trace:
                self._trace.write(rec)
            else:
                self._memory.append(rec)

    def write_results(self, results: Sequence[ProblemResult], pipeline: Pipeline) -> None:
        self.write(self.records_of(results, pipeline))

    def write_gathered(self, parts: Sequence[Sequence[Mapping[str, Any]]], order: Sequence[str]) -> None:
        """Write records gathered from every rank (lists of `TraceRecord.to_dict()`), in problem order."""
        rank = {pid: i for i, pid in enumerate(order)}
        recs = sorted((TraceRecord.from_dict(d) for part in parts for d in part),
                      key=lambda r: (rank.get(r.problem_id, -1), r.sample_index))
        self.write(recs)

    def records(self) -> list[TraceRecord]:
        """Everything recorded so far (a file's records include those of earlier, resumed runs)."""
        if self._trace is None:
            return list(self._memory)
        return read_traces(self.path)[1]

    def summary(self, problem_ids: Iterable[str] | None = None) -> Summary:
        """Summary over the recorded problems (only `problem_ids` when given)."""
        return summarize_traces(self.records(), problem_ids)

    def close(self) -> None:
        if self._trace:
            self._trace.close()

    def __enter__(self) -> "EvalWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def summarize_traces(records: Iterable[TraceRecord], problem_ids: Iterable[str] | None = None) -> Summary:
    """`summarize` over the records of `problem_ids` (all when None)."""
    if problem_ids is not None:
        wanted = set(problem_ids)
        records = [r for r in records if r.problem_id in wanted]
    return summarize(records)


def chunk_size_for(batch_size: int, n: int) -> int:
    """Problems per `evaluate` chunk for an engine of `batch_size` rows and `n` samples per problem.

    Each chunk is one generate call, decoded to its longest completion, so a chunk smaller than the
    engine's batch leaves rows idle and multiplies the decode steps (200 problems at batch 200 in
    chunks of 64 take four 112-token decodes instead of one). Four batches' worth of rows per chunk
    keeps the batch full while a resumed run loses at most that much."""
    return max(1, batch_size * 4 // max(1, n))


def evaluate(
    problems: Sequence[Problem],
    engine: ProblemEngine,
    pipeline: Pipeline,
    *,
    trace_path: str | Path | None = None,
    source: str = "problems",
    checkpoint_sha256: str | None = None,
    extra: Mapping[str, Any] | None = None,
    chunk_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """Run `pipeline` over `problems`, write traces (when `trace_path`), return the summary.

    The run config (see `run_config`; `extra` holds anything else that changes the numbers, e.g.
    the problems file's sha256) is hashed into the trace header: reopening the same file resumes,
    skipping problems already complete, and a file of another config raises ValueError.
    Problems are processed in chunks of `chunk_size` so an interrupted run loses at most one chunk;
    samples depend on problem ids, not on chunks, so a resumed run draws what the full run would.
    The summary covers every problem in `problems`, resumed ones included.
    """
    if chunk_size < 1:
        raise ValueError(f"evaluate: chunk_size must be >= 1, got {chunk_size}")
    ids = _check_ids(problems)
    cfg = run_config(engine, pipeline, source=source, checkpoint_sha256=checkpoint_sha256, extra=extra)
    results: list[ProblemResult] = []
    with EvalWriter(trace_path, cfg, checkpoint_sha256=checkpoint_sha256) as out:
        done = out.done_ids()
        todo = [p for p in problems if p.id not in done]
        skipped = len(problems) - len(todo)
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start:start + chunk_size]
            res = pipeline.run(engine, chunk)
            results.extend(res)
            out.write_results(res, pipeline)
            if progress is not None:
                progress(skipped + start + len(chunk), len(problems))
        summary = out.summary(ids)
    return EvalReport(summary, results, Path(trace_path) if trace_path else None, skipped)


def _check_ids(problems: Sequence[Problem]) -> list[str]:
    if not problems:
        raise ValueError("evaluate: no problems given")
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"evaluate: duplicate problem ids {dup}; traces key samples by problem id")
    return ids


def evaluate_sharded(
    problems: Sequence[Problem],
    engine: ProblemEngine,
    pipeline: Pipeline,
    *,
    rank: int,
    world_size: int,
    gather: Callable[[Any], list[Any]],
    broadcast: Callable[[Any], Any],
    trace_path: str | Path | None = None,
    source: str = "problems",
    checkpoint_sha256: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Summary:
    """`evaluate` split over `world_size` processes; only rank 0 touches the trace file.

    Every rank calls this with the same `problems`. Rank 0 opens (or resumes) the trace and tells
    the others which problems are done; rank r decodes problems r, r + W, … of the rest; the records
    are gathered to rank 0 (`gather(obj)` returns the list of every rank's obj on rank 0), which
    writes them in problem order and summarises. Returns the same `Summary` on every rank
    (`broadcast(obj)` sends rank 0's obj to all). The collectives are passed in, so any launcher works.
    Samples depend on problem ids only, so the world size does not change them.
    """
    ids = _check_ids(problems)
    cfg = run_config(engine, pipeline, source=source, checkpoint_sha256=checkpoint_sha256, extra=extra)
    out = EvalWriter(trace_path if rank == 0 else None, cfg, checkpoint_sha256=checkpoint_sha256)
    try:
        run_id, chash, done = broadcast((out.run_id, out.config_hash, out.done_ids()) if rank == 0 else None)
        out.run_id, out.config_hash = run_id, chash  # every rank stamps its records for rank 0's file
        todo = [p for p in problems if p.id not in done]
        mine = todo[rank::world_size]
        results = pipeline.run(engine, mine) if mine else []
        everything = gather([rec.to_dict() for rec in out.records_of(results, pipeline)])
        summary = None
        if rank == 0:
            out.write_gathered(everything, ids)
            summary = out.summary(ids)
    finally:
        out.close()
    return broadcast(summary)
