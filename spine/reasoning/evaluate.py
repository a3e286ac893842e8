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
from typing import Any, Callable, Mapping, Sequence

from ..traces import TraceWriter, read_traces, summarize, Summary
from .pipelines import Engine, Pipeline, ProblemResult
from .problems import Problem


@dataclass
class EvalReport:
    """What `evaluate` returns: the summary over all requested problems (resumed ones included)."""

    summary: Summary
    results: list[ProblemResult]          # results computed in this call (not those resumed from traces)
    trace_path: Path | None
    skipped: int                          # problems already in the trace file


def run_config(engine: Engine, pipeline: Pipeline, *, source: str, checkpoint_sha256: str | None,
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
    s = str(spec)
    if not s.startswith("hf:"):
        from ..checkpoint import checkpoint_sha256

        return checkpoint_sha256(s)
    root = Path(s[3:]).expanduser()
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


def result_records(writer: TraceWriter, r: ProblemResult, pipeline: Pipeline, checkpoint_sha: str | None):
    """The trace records of one problem's result (one per sample; the chosen one flagged final)."""
    n = len(r.samples)
    for i, s in enumerate(r.samples):
        meta = dict(r.problem.metadata)
        meta.pop("solution", None)  # long and not needed to reproduce the number
        meta.update({"pipeline": pipeline.name, "n_samples": n, "final": i == r.final_index,
                     "finish_reason": s.completion.finish_reason})
        if i == r.final_index:
            meta.update({"vote": r.vote, "chosen_answer": r.answer, "chosen_correct": r.correct,
                         "problem_tokens": r.tokens, "problem_seconds": r.seconds})
        yield writer.make_record(
            checkpoint_sha256=checkpoint_sha, problem_id=r.problem.id, sample_index=i, prompt=r.prompt,
            completion=s.completion.text, extracted=s.answer, extraction_method=s.method, gold=r.problem.answer,
            # the final record carries the pipeline's verdict (for a vote: the chosen answer's)
            correct=r.correct if i == r.final_index else s.verdict.correct,
            rule=r.rule if i == r.final_index else s.verdict.rule,
            tokens=s.completion.tokens, seconds=s.completion.seconds, metadata=meta)


def evaluate(
    problems: Sequence[Problem],
    engine: Engine,
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
    Problems are processed in chunks of `chunk_size` so an interrupted run loses at most one chunk.
    The summary covers every problem in `problems`, resumed ones included.
    """
    if chunk_size < 1:
        raise ValueError(f"evaluate: chunk_size must be >= 1, got {chunk_size}")
    if not problems:
        raise ValueError("evaluate: no problems given")
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"evaluate: duplicate problem ids {dup}; traces key samples by problem id")
    writer = None
    todo = list(problems)
    skipped = 0
    if trace_path is not None:
        cfg = run_config(engine, pipeline, source=source, checkpoint_sha256=checkpoint_sha256, extra=extra)
        writer = TraceWriter(trace_path, run_config=cfg)
        done = writer.done_ids()
        todo = [p for p in problems if p.id not in done]
        skipped = len(problems) - len(todo)
    results: list[ProblemResult] = []
    try:
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start:start + chunk_size]
            out = pipeline.run(engine, chunk)
            results.extend(out)
            if writer is not None:
                for r in out:
                    for rec in result_records(writer, r, pipeline, checkpoint_sha256):
                        writer.write(rec)
            if progress is not None:
                progress(skipped + start + len(chunk), len(problems))
    finally:
        if writer is not None:
            writer.close()
    if trace_path is not None:
        _, records = read_traces(trace_path)
        wanted = set(ids)
        summary = summarize([r for r in records if r.problem_id in wanted])
    else:
        summary = summarize(_in_memory_records(results, pipeline))
    return EvalReport(summary, results, Path(trace_path) if trace_path else None, skipped)


def _in_memory_records(results: Sequence[ProblemResult], pipeline: Pipeline):
    class _W:  # a writer stand-in that only builds records
        run_id, config_hash = "memory", "memory"

        @staticmethod
        def make_record(**f):
            from ..traces import TraceRecord

            f.setdefault("run_id", "memory")
            f.setdefault("config_hash", "memory")
            return TraceRecord(**f)

    out = []
    for r in results:
        out.extend(result_records(_W, r, pipeline, None))
    return out


def evaluate_sharded(
    problems: Sequence[Problem],
    engine: Engine,
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
    """
    cfg = run_config(engine, pipeline, source=source, checkpoint_sha256=checkpoint_sha256, extra=extra)
    writer = TraceWriter(trace_path, run_config=cfg) if (rank == 0 and trace_path is not None) else None
    header = (writer.run_id, writer.config_hash, writer.done_ids()) if writer is not None else ("memory", "memory", set())
    try:
        run_id, chash, done = broadcast(header)
        todo = [p for p in problems if p.id not in done]
        results = pipeline.run(engine, todo[rank::world_size]) if todo[rank::world_size] else []

        class _Stamp:  # builds records that rank 0's writer accepts
            @staticmethod
            def make_record(**f):
                from ..traces import TraceRecord

                return TraceRecord(run_id=run_id, config_hash=chash, **f)

        mine = [rec.to_dict() for r in results for rec in result_records(_Stamp, r, pipeline, checkpoint_sha256)]
        everything = gather(mine)
        summary = None
        if rank == 0:
            from ..traces import TraceRecord

            order = {p.id: i for i, p in enumerate(problems)}
            records = sorted((TraceRecord.from_dict(d) for part in everything for d in part),
                             key=lambda r: (order.get(r.problem_id, -1), r.sample_index))
            if writer is not None:
                for rec in records:
                    writer.write(rec)
                writer.close()
                _, records = read_traces(trace_path)
            wanted = set(order)
            summary = summarize([r for r in records if r.problem_id in wanted])
    finally:
        if writer is not None:
            writer.close()
    return broadcast(summary)
