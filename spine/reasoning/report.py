"""Report on trace files: summary tables, the compute/quality frontier, and accuracy curves.

- **Frontier**: accuracy (Wilson 95% interval) against mean generated tokens per problem, one point per
  trace file, on one chart; runs that read the gold answer (oracle scorers) are drawn hollow and labelled
  "upper bound", never joined to the frontier line.
- **Accuracy vs k**: for self-consistency runs, majority vote over the first k samples of each problem
  (Wang et al., 2022) with the pipelines' own vote (`spine.reasoning.vote`: the grader's equivalence, ties
  to the higher mean log-prob when the traces carry it), so accuracy@n reproduces the run; for best-of-N
  runs, the best of the first k samples by the recorded scorer value.
- **Accuracy vs round**: for self-refinement runs, the accuracy of the answer held after each round.

Every point carries its Wilson 95% interval. A voted group counts as correct when its first sample was
graded correct; samples with no extracted answer do not vote (a problem with none is wrong).

    python -m spine.reasoning.report run1.jsonl run2.jsonl --frontier frontier.png --png k.png --rounds_png r.png
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from spine.traces import Summary, TraceRecord, format_summary, read_traces, summarize, wilson_interval

from .grade import answers_equivalent
from .vote import Equivalent, majority_vote, normalize_vote

__all__ = ["normalize_vote", "majority_vote", "sample_counts", "accuracy_at_k", "best_of_k_accuracy",
           "accuracy_by_round", "Run", "load_run", "report"]

Counts = dict[int, tuple[int, int]]  # x -> (correct, problems)


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


def _at_k(records: Iterable[TraceRecord], ks: Sequence[int] | None, pick) -> Counts:
    per = _samples_by_problem(records)
    if not per:
        return {}
    n = min(len(rs) for rs in per.values())
    ks = sample_counts(n) if ks is None else [k for k in ks if 1 <= k <= n]
    out = {}
    for k in ks:
        correct = 0
        for rs in per.values():
            first_k = rs[:k]
            winner = pick(first_k)
            correct += winner is not None and bool(first_k[winner].correct)
        out[k] = (correct, len(per))
    return out


def vote_counts(records: Iterable[TraceRecord], ks: Sequence[int] | None = None,
                equivalent: Equivalent | None = answers_equivalent, logprob_tiebreak: bool = True) -> Counts:
    """{k: (correct, problems)} of a majority vote over the first k samples (see `accuracy_at_k`)."""
    def pick(rs: list[TraceRecord]) -> int | None:
        lps = [r.metadata.get("mean_logprob") for r in rs]
        usable = logprob_tiebreak and all(isinstance(x, (int, float)) for x in lps)
        tiebreak = [float(x) for x in lps] if usable else None
        return majority_vote([r.extracted for r in rs], equivalent, tiebreak=tiebreak)[0]
    return _at_k(records, ks, pick)


def accuracy_at_k(records: Iterable[TraceRecord], ks: Sequence[int] | None = None,
                  equivalent: Equivalent | None = answers_equivalent) -> dict[int, float]:
    """{k: majority-vote accuracy over the first k samples}; {} without multi-sample records.

    k runs up to the smallest sample count among the problems (an interrupted problem has fewer).
    Ties go to the higher mean token log-prob when every record carries `metadata["mean_logprob"]`
    (as the self-consistency pipeline does), else to the group seen first.
    """
    return {k: c / n for k, (c, n) in vote_counts(records, ks, equivalent).items()}


def best_of_k_accuracy(records: Iterable[TraceRecord], ks: Sequence[int] | None = None) -> Counts:
    """{k: (correct, problems)} when each problem's answer is the highest-scored (`metadata["score"]`,
    first on ties) of its first k samples: best-of-N's curve from one best-of-n trace."""
    def pick(rs: list[TraceRecord]) -> int | None:
        scores = [r.metadata.get("score") for r in rs]
        if any(not isinstance(s, (int, float)) for s in scores):
            return None
        return max(range(len(rs)), key=lambda i: (scores[i], -i))
    return _at_k(records, ks, pick)


def accuracy_by_round(records: Iterable[TraceRecord]) -> Counts:
    """{round: (correct, problems)} of self-refinement traces: the answer each problem holds after that
    round (a problem that stopped earlier keeps its answer), following the `kept` flags of its rounds."""
    chains: dict[str, list[TraceRecord]] = {}
    for r in records:
        if r.round is not None:
            chains.setdefault(r.problem_id, []).append(r)
    if not chains:
        return {}
    last = max(r.round for rs in chains.values() for r in rs)
    out: Counts = {}
    for rnd in range(last + 1):
        correct = 0
        for rs in chains.values():
            held = None
            for r in sorted(rs, key=lambda r: r.round):
                if r.round > rnd:
                    break
                if r.round == 0 or r.metadata.get("kept"):
                    held = r
            correct += held is not None and bool(held.correct)
        out[rnd] = (correct, len(chains))
    return out


@dataclass
class Run:
    """One trace file, summarised for the report."""

    path: Path
    label: str
    pipeline: str
    upper_bound: bool
    summary: Summary
    records: list[TraceRecord]
    header: dict = field(default_factory=dict)


def load_run(path: str | Path, group_by: Sequence[str] = ("level", "subject")) -> Run:
    """Read a trace file: its label (the pipeline's, from the final records, else the file name),
    pipeline name, whether it is an upper bound (an oracle scorer), and its summary."""
    path = Path(path)
    try:
        header, records = read_traces(path)
    except UnicodeDecodeError as e:  # a binary file given by mistake
        raise ValueError(f"{path}: not a trace file (not UTF-8 text: byte offset {e.start})") from None
    cfg = header.get("config", {}).get("pipeline", {})
    finals = [r for r in records if r.metadata.get("final") is True]
    label = next((r.metadata["label"] for r in finals if r.metadata.get("label")), None) or path.stem
    upper = any(r.metadata.get("upper_bound") for r in finals) or \
        (isinstance(cfg, dict) and isinstance(cfg.get("scorer"), dict) and cfg["scorer"].get("name") == "oracle")
    pipeline = cfg.get("pipeline", "") if isinstance(cfg, dict) else ""
    return Run(path, label, pipeline, bool(upper), summarize(records, group_by=group_by), records, header)


def _curves(run: Run, equivalent: Equivalent | None) -> tuple[str, Counts]:
    """(kind, counts) of a run's accuracy-vs-k curve: "vote" or "best-of-k"; ("", {}) for none."""
    cfg = run.header.get("config", {}).get("pipeline", {})
    if not isinstance(cfg, dict):
        cfg = {}
    if run.pipeline in ("self_refine",) or cfg.get("early_stop"):
        return "", {}  # refinement rounds are not samples; early-stopped problems have unequal counts
    if run.pipeline == "best_of_n":
        return "best-of-k", best_of_k_accuracy(run.records)
    return "vote", vote_counts(run.records, equivalent=equivalent, logprob_tiebreak=cfg.get("tiebreak") != "first")


def _rows(name: str, counts: Counts) -> list[str]:
    """Markdown rows of a curve: x, accuracy, Wilson 95% interval."""
    cis = [wilson_interval(c, n) for c, n in counts.values()]
    return [f"| {name} | " + " | ".join(str(x) for x in counts) + " |", "|---|" + "---:|" * len(counts),
            "| accuracy | " + " | ".join(f"{100 * c / n:.1f}%" for c, n in counts.values()) + " |",
            "| 95% CI | " + " | ".join(f"{100 * lo:.1f}–{100 * hi:.1f}%" for lo, hi in cis) + " |"]


def frontier_table(runs: Sequence[Run]) -> str:
    """Markdown: one row per run with accuracy (Wilson 95% CI) and cost per problem."""
    rows = ["| run | n | accuracy | 95% CI | samples/problem | gen tokens/problem | prompt tokens/problem | "
            "forwards/problem | s/problem |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in runs:
        s = run.summary
        lo, hi = s.ci95
        name = f"{run.label} (upper bound)" if run.upper_bound else run.label
        rows.append(f"| {name} | {s.n} | {100 * s.accuracy:.1f}% | {100 * lo:.1f}–{100 * hi:.1f}% | "
                    f"{s.samples_per_problem:.2f} | {s.tokens_per_problem:.1f} | {s.prompt_tokens_per_problem:.1f} | "
                    f"{s.forward_passes_per_problem:.1f} | {s.seconds_per_problem:.3f} |")
    return "\n".join(rows)


def _figure(title: str, xlabel: str):
    # Figure + Agg canvas directly: no pyplot global state, no backend switch for the caller.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%), Wilson 95% interval")
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig, out_png: Path) -> None:
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, format="png")


def _errbar(ax, xs, counts: Sequence[tuple[int, int]], **kw) -> None:
    ys = [100 * c / n for c, n in counts]
    ivs = [wilson_interval(c, n) for c, n in counts]
    # max(0, .): at 0% or 100% the interval's end equals the point up to rounding
    err = [[max(0.0, y - 100 * lo) for y, (lo, _) in zip(ys, ivs)],
           [max(0.0, 100 * hi - y) for y, (_, hi) in zip(ys, ivs)]]
    ax.errorbar(xs, ys, yerr=err, capsize=3, **kw)


def plot_frontier(runs: Sequence[Run], out_png: str | Path) -> None:
    """Accuracy vs mean generated tokens per problem, one labelled point per run; the methods' Pareto
    frontier as a dashed line; upper bounds hollow. Runs of equal cost are spread a little sideways
    (by at most a few percent of x) so that none hides another; the table gives the exact numbers."""
    fig, ax = _figure("Compute/quality frontier", "mean generated tokens per problem (log scale)")
    fig.set_size_inches(9, 5)
    markers = "osD^v<>pPX*h"
    methods, same_x = [], {}
    for i, run in enumerate(runs):
        s = run.summary
        x0 = max(s.tokens_per_problem, 1e-9)
        k = same_x[round(x0, 1)] = same_x.get(round(x0, 1), -1) + 1
        x = x0 * (1 + 0.025 * k)
        label = f"{run.label} (upper bound)" if run.upper_bound else run.label
        style = dict(fmt=markers[i % len(markers)], label=label)
        if run.upper_bound:
            style.update(mfc="none", color="gray")
        else:
            methods.append((x0, 100 * s.accuracy))
        _errbar(ax, [x], [(s.n_correct, s.n)], **style)
    best, frontier = -1.0, []
    for x, y in sorted(methods, key=lambda p: (p[0], -p[1])):
        if y > best:
            frontier.append((x, y))
            best = y
    if len(frontier) > 1:
        ax.plot([p[0] for p in frontier], [p[1] for p in frontier], "--", color="black", linewidth=1, alpha=0.5,
                label="frontier (methods)")
    ax.set_xscale("log")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    _save(fig, Path(out_png))


def plot_curves(curves: dict[str, Counts], out_png: str | Path, *, title: str, xlabel: str, log2: bool,
                baselines: dict[str, tuple[int, int]] | None = None, upper: Iterable[str] = ()) -> None:
    """Accuracy curves with Wilson intervals; `baselines` (single-sample runs) as dashed lines; curves
    named in `upper` (oracle upper bounds) dotted, gray and hollow."""
    fig, ax = _figure(title, xlabel)
    upper = set(upper)
    for label, counts in curves.items():
        xs = sorted(counts)
        style = dict(linestyle=":", color="gray", mfc="none") if label in upper else {}
        _errbar(ax, xs, [counts[x] for x in xs], marker="o", label=label, **style)
    for i, (label, (c, n)) in enumerate((baselines or {}).items()):
        acc = 100 * c / n if n else 0.0
        color = f"C{len(curves) + i}"
        ax.axhline(acc, linestyle="--", linewidth=1, color=color, label=f"{label} ({acc:.1f}%, n={n})")
        lo, hi = wilson_interval(c, n)
        ax.axhspan(100 * lo, 100 * hi, color=color, alpha=0.12, linewidth=0)  # its 95% interval
    xs = sorted({x for c in curves.values() for x in c})
    if log2:
        ax.set_xscale("log", base=2)
    ax.set_xticks(xs)
    ax.set_xticklabels([str(x) for x in xs])
    ax.set_ylim(0, 100)  # the whole scale: a small gap is not drawn as a cliff
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, Path(out_png))


def report(trace_paths: str | Path | Sequence[str | Path], out_png: str | Path | None = None,
           equivalent: Equivalent | None = answers_equivalent, *, group_by: Sequence[str] = ("level", "subject"),
           frontier_png: str | Path | None = None, rounds_png: str | Path | None = None,
           print_it: bool = True) -> str:
    """Markdown report of one or more trace files (printed and returned).

    `out_png`: accuracy vs k (voting and best-of-k curves, single-sample runs as dashed lines);
    `frontier_png`: accuracy vs mean generated tokens per problem, all runs on one chart;
    `rounds_png`: accuracy vs refinement round. A plot with nothing to draw is not written (the report says so).
    """
    paths = [trace_paths] if isinstance(trace_paths, (str, Path)) else list(trace_paths)
    if not paths:
        raise ValueError("no trace files given")
    runs = [load_run(p, group_by) for p in paths]
    seen: dict[str, int] = {}
    for run in runs:  # one label per run (same pipeline twice, same file name in two folders)
        seen[run.label] = seen.get(run.label, 0) + 1
    for run in runs:
        if seen[run.label] > 1:
            run.label = f"{run.label} ({run.path.stem})"
    parts: list[str] = []
    k_curves: dict[str, Counts] = {}
    r_curves: dict[str, Counts] = {}
    baselines: dict[str, tuple[int, int]] = {}
    upper: set[str] = set()
    for run in runs:
        s = run.summary
        parts.append(f"## {run.path.name}\n\n{run.label}{' (oracle: an upper bound, not a method)' if run.upper_bound else ''}"
                     f" — run `{run.header.get('run_id')}`, config `{run.header.get('config_hash')}`, "
                     f"{len(run.records)} records\n")
        parts.append(format_summary(s))
        kind, counts = _curves(run, equivalent)
        rounds = accuracy_by_round(run.records)
        if counts:
            name = f"{run.label} ({kind}{', upper bound' if run.upper_bound else ''})"
            k_curves[name] = counts
            if run.upper_bound:
                upper.add(name)
            what = "majority vote" if kind == "vote" else "best by score"
            parts.append(f"\naccuracy vs k ({what} over the first k samples):\n")
            parts += _rows("k", counts)
        elif rounds:
            r_curves[run.label] = rounds
            if run.upper_bound:
                upper.add(run.label)
            parts.append("\naccuracy of the answer held after each refinement round:\n")
            parts += _rows("round", rounds)
        elif s.n and s.samples_per_problem <= 1:
            baselines[run.label] = (s.n_correct, s.n)
        parts.append("")
    if len(runs) > 1 or frontier_png is not None:
        parts.append("## compute/quality frontier\n")
        parts.append(frontier_table(runs))
        parts.append("")
    if out_png is not None:
        if k_curves:
            plot_curves(k_curves, out_png, title="Accuracy vs samples per problem", log2=True, baselines=baselines,
                        xlabel="samples per problem (k)", upper=upper)
            parts.append(f"accuracy-vs-samples plot: {out_png}")
        else:
            parts.append("no self-consistency runs (n_samples > 1): no plot written")
    if frontier_png is not None:
        plot_frontier(runs, frontier_png)
        parts.append(f"frontier plot: {frontier_png}")
    if rounds_png is not None:
        if r_curves:
            plot_curves(r_curves, rounds_png, title="Self-refinement: accuracy vs round", log2=False,
                        xlabel="round (0 = draft)", upper=upper)
            parts.append(f"accuracy-vs-round plot: {rounds_png}")
        else:
            parts.append("no self-refinement runs: no rounds plot written")
    text = "\n".join(parts).rstrip() + "\n"
    if print_it:
        print(text)
    return text


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Summarize spine trace files.")
    ap.add_argument("traces", nargs="+", help="trace JSONL files")
    ap.add_argument("--png", default=None, help="accuracy vs k (self-consistency and best-of-N runs)")
    ap.add_argument("--frontier", default=None, help="accuracy vs generated tokens per problem, all runs")
    ap.add_argument("--rounds_png", default=None, help="accuracy vs refinement round")
    args = ap.parse_args(argv)
    report(args.traces, args.png, frontier_png=args.frontier, rounds_png=args.rounds_png)


if __name__ == "__main__":
    main()
