"""Report on trace files: summary tables and, for self-consistency runs, accuracy vs samples.

Self-consistency (Wang et al., 2022): accuracy@k is the accuracy of a majority vote over the
first k samples of each problem, with the pipelines' own vote (`spine.reasoning.vote`: normalized
text or the grader's `answers_equivalent`), so accuracy@n reproduces a self-consistency run's
accuracy. A voted group counts as correct when its first sample was graded correct. Ties go to the group
whose first sample came earliest; samples with no extracted answer do not vote (a problem with
none is wrong).

    python -m spine.reasoning.report run1.jsonl run2.jsonl --png accuracy_vs_samples.png
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterable, Sequence

from spine.traces import TraceRecord, format_summary, read_traces, summarize

from .grade import answers_equivalent
from .vote import Equivalent, majority_vote, normalize_vote

__all__ = ["normalize_vote", "majority_vote", "sample_counts", "accuracy_at_k", "report"]

def _samples_by_problem(records: Iterable[TraceRecord]) -> dict[str, list[TraceRecord]]:
    """problem_id -> its per-sample records in sample order, for problems with n_samples > 1."""
    out: dict[str, list[TraceRecord]] = {}
    for r in records:
        n = int(r.metadata.get("n_samples", 1) or 1)
        if n > 1 and 0 <= r.sample_index < n:
            out.setdefault(r.problem_id, []).append(r)
    return {p: sorted(rs, key=lambda r: r.sample_index) for p, rs in out.items()}


def sample_counts(n: int) -> list[int]:
    """k = 1, 2, 4, ... up to n, plus n itself."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n] if n >= 1 else []


def accuracy_at_k(records: Iterable[TraceRecord], ks: Sequence[int] | None = None,
                  equivalent: Equivalent | None = answers_equivalent) -> dict[int, float]:
    """{k: majority-vote accuracy over the first k samples}; {} without self-consistency records.

    k runs up to the smallest sample count among the problems (an interrupted problem has fewer).
    """
    per = _samples_by_problem(records)
    if not per:
        return {}
    n = min(len(rs) for rs in per.values())
    ks = sample_counts(n) if ks is None else [k for k in ks if 1 <= k <= n]
    acc = {}
    for k in ks:
        correct = 0
        for rs in per.values():
            first_k = rs[:k]
            winner, _ = majority_vote([r.extracted for r in first_k], equivalent)
            correct += winner is not None and bool(first_k[winner].correct)
        acc[k] = correct / len(per)
    return acc


def _plot(curves: dict[str, dict[int, float]], out_png: Path, baselines: dict[str, float] | None = None,
          n_problems: dict[str, int] | None = None) -> None:
    """accuracy@k curves with Wilson 95% bars (when `n_problems` gives each run's problem count);
    `baselines` (single-sample runs, e.g. greedy) as dashed lines with their interval shaded.
    The y axis always shows 0-100%, so a small gap is not drawn as a cliff."""
    # Figure + Agg canvas directly: no pyplot global state, no backend switch for the caller.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..traces import wilson_interval

    n_problems = n_problems or {}
    fig = Figure(figsize=(6.5, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for label, acc in curves.items():
        ks = sorted(acc)
        ys = [100 * acc[k] for k in ks]
        n = n_problems.get(label)
        if n:
            lo_hi = [wilson_interval(round(acc[k] * n), n) for k in ks]
            # max(0, ...): at 0% or 100% the interval's end and the point differ only by rounding
            err = [[max(0.0, y - 100 * lo) for y, (lo, _) in zip(ys, lo_hi)],
                   [max(0.0, 100 * hi - y) for y, (_, hi) in zip(ys, lo_hi)]]
            ax.errorbar(ks, ys, yerr=err, marker="o", capsize=3, label=f"{label} (n={n}, 95% CI)")
        else:
            ax.plot(ks, ys, marker="o", label=label)
    for i, (label, acc) in enumerate((baselines or {}).items()):
        color = f"C{len(curves) + i}"
        ax.axhline(100 * acc, linestyle="--", linewidth=1, color=color, label=f"{label} ({100 * acc:.1f}%)")
        n = n_problems.get(label)
        if n:
            lo, hi = wilson_interval(round(acc * n), n)
            ax.axhspan(100 * lo, 100 * hi, color=color, alpha=0.12, linewidth=0)
    all_ks = sorted({k for acc in curves.values() for k in acc})
    ax.set_xscale("log", base=2)
    ax.set_xticks(all_ks)
    ax.set_xticklabels([str(k) for k in all_ks])
    ax.set_ylim(0, 100)
    ax.set_xlabel("samples per problem (k, majority vote)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Self-consistency: accuracy vs number of samples")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, format="png")


def report(trace_paths: str | Path | Sequence[str | Path], out_png: str | Path | None = None,
           equivalent: Equivalent | None = answers_equivalent, *, group_by: Sequence[str] = ("level", "subject"),
           print_it: bool = True) -> str:
    """Markdown report of one or more trace files (printed and returned).

    With `out_png`, accuracy@k curves of the self-consistency runs are drawn into one PNG, with
    single-sample runs (greedy) as dashed reference lines; when no run has more than one sample
    per problem no PNG is written and the report says so.
    """
    paths = [trace_paths] if isinstance(trace_paths, (str, Path)) else list(trace_paths)
    if not paths:
        raise ValueError("no trace files given")
    parts: list[str] = []
    curves: dict[str, dict[int, float]] = {}
    baselines: dict[str, float] = {}  # single-sample runs: drawn as reference lines beside the curves
    n_problems: dict[str, int] = {}
    for path in map(Path, paths):
        try:
            header, records = read_traces(path)
        except UnicodeDecodeError as e:  # a binary file given by mistake
            raise ValueError(f"{path}: not a trace file (not UTF-8 text: byte offset {e.start})") from None
        label = path.stem
        if label in curves or label in baselines:  # same file name in two folders
            label = f"{label} ({header.get('run_id')})"
        parts.append(f"## {path.name}\n\nrun `{header.get('run_id')}`, config `{header.get('config_hash')}`, "
                     f"{len(records)} records\n")
        summary = summarize(records, group_by=group_by)
        parts.append(format_summary(summary))
        acc = accuracy_at_k(records, equivalent=equivalent)
        n_problems[label] = len({r.problem_id for r in records})
        if not acc and summary.n:
            baselines[label] = summary.accuracy
        if acc:
            curves[label] = acc
            parts.append("\nself-consistency (majority vote over the first k samples):\n")
            parts.append("| k | " + " | ".join(str(k) for k in acc) + " |")
            parts.append("|---|" + "---:|" * len(acc))
            parts.append("| accuracy | " + " | ".join(f"{100 * a:.1f}%" for a in acc.values()) + " |")
        parts.append("")
    if out_png is not None:
        if curves:
            _plot(curves, Path(out_png), baselines, n_problems)
            parts.append(f"accuracy-vs-samples plot: {out_png}")
        else:
            parts.append("no self-consistency runs (n_samples > 1): no plot written")
    text = "\n".join(parts).rstrip() + "\n"
    if print_it:
        print(text)
    return text


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Summarize spine trace files.")
    ap.add_argument("traces", nargs="+", help="trace JSONL files")
    ap.add_argument("--png", default=None, help="write accuracy-vs-samples here (self-consistency runs)")
    args = ap.parse_args(argv)
    report(args.traces, args.png)


if __name__ == "__main__":
    main()
