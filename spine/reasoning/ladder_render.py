"""ladder.md and ladder.png of one ladder run or several (seeds), from `spine.reasoning.ladder`'s numbers."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..hostinfo import describe_host
from .ladder import ALL, AggRow, Row, RunReport, Spread, TargetResult, aggregate, evaluate_targets, paired, run_report

__all__ = ["render_markdown", "render_png", "write_report"]


# ----------------------------------------------------------------------------- rendering

def _si(n: float | None) -> str:
    if n is None:
        return "–"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def _secs(s: float | None) -> str:
    return "–" if s is None else f"{s:.0f} s"


def _sp(s: Spread | None, fmt: Callable[[float], str]) -> str:
    if s is None:
        return "–"
    if len(s.values) == 1:
        return fmt(s.mean)
    return f"{fmt(s.mean)} ({fmt(s.lo)}–{fmt(s.hi)})"


def _why(rows: Iterable[Row], name: str) -> str:
    row = next((r for r in rows if r.name == name), None)
    if row is None:
        return "is not in the plan"
    return f"{row.status}: {row.note}" if row.note else row.status


def _level_label(lv: str) -> str:
    return "all" if lv == ALL else f"L{lv}"


def _single_table(rep: RunReport) -> list[str]:
    cols = [_level_label(lv) for lv in rep.levels]
    head = ["rung", "model", "method", "params", "train tokens", "train time (stage / chain)", *cols,
            "tokens/problem", f"gain {_level_label(rep.harder)}", "gain all"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
    for r in rep.rows:
        if r.stats is None:
            lines.append(f"| {r.name} | {r.model} | {r.method} | " + " | ".join(["–"] * 3)
                         + f" | *not run: {r.note or r.status}* |" + " |" * (len(head) - 7))
            continue
        accs = []
        for lv in rep.levels:
            st = r.stats.levels.get(lv)
            accs.append("–" if st is None else f"{st.acc:.1f}% [{st.ci[0]:.1f}–{st.ci[1]:.1f}] (n={st.n})")
        gh, ga = r.gain.get(rep.harder), r.gain.get(ALL)
        lines.append("| " + " | ".join([
            r.name, r.model, r.method, _si(r.params), _si(r.train_tokens),
            f"{_secs(r.stage_seconds)} / {_secs(r.chain_seconds)}", *accs, f"{r.stats.tokens_per_problem:.1f}",
            "–" if gh is None else f"{gh:+.1f}", "–" if ga is None else f"{ga:+.1f}"]) + " |")
    return lines


def _agg_table(rep0: RunReport, rows: list[AggRow], levels: list[str], harder: str) -> list[str]:
    pct = lambda v: f"{v:.1f}%"  # noqa: E731
    pts = lambda v: f"{v:+.1f}"  # noqa: E731
    head = ["rung", "model", "method", "runs", "params", "train tokens", "train time (stage / chain)",
            *[_level_label(lv) for lv in levels], "tokens/problem", f"gain {_level_label(harder)}", "gain all"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
    for a in rows:
        if a.runs == 0:
            lines.append(f"| {a.name} | {a.model} | {a.method} | 0 | *not run: {'; '.join(a.notes)}* |"
                         + " |" * (len(head) - 5))
            continue
        lines.append("| " + " | ".join([
            a.name, a.model, a.method, str(a.runs), _sp(a.params, _si), _sp(a.train_tokens, _si),
            f"{_sp(a.stage_seconds, _secs)} / {_sp(a.chain_seconds, _secs)}",
            *[_sp(a.acc.get(lv), pct) for lv in levels], _sp(a.tokens_per_problem, lambda v: f"{v:.1f}"),
            _sp(a.gain.get(harder), pts), _sp(a.gain.get(ALL), pts)]) + " |")
    return lines


def _targets_lines(results: list[TargetResult], level: str) -> list[str]:
    if not results:
        return []
    out = [f"## Targets (level {level})", ""]
    for t in results:
        mark = "not measured" if t.met is None else "met" if t.met else "MISSED"
        out.append(f"- **{t.name}** — {mark}: {t.text}")
    return out + [""]


def _students(rep: RunReport) -> list[str]:
    """One line per distilled model: its parameters as a share of its teacher's (the 'quarter size' check)."""
    out = []
    models = rep.manifest["models"]
    params = {r.model: r.params for r in rep.rows if r.params}
    for name, m in models.items():
        teacher = m.get("teacher")
        if teacher and params.get(name) and params.get(teacher):
            out.append(f"- {name}: {params[name]:,} parameters = {100 * params[name] / params[teacher]:.1f}% of "
                       f"its teacher {teacher} ({params[teacher]:,})")
    return (["## Students", ""] + out + [""]) if out else []


def _paired_lines(rep: RunReport) -> list[str]:
    """Each target's rung against its baseline, problem by problem on the harder level: how many problems
    the rung fixed and broke, and how often its own samples are right beside the baseline's answers (a vote
    can still beat a baseline its samples trail, when their errors scatter over different wrong answers)."""
    seen, out = set(), []
    for t in rep.manifest.get("targets", []):
        pair = (str(t.get("rung")), str(t.get("baseline")))
        a, b = rep.row(pair[0]), rep.row(pair[1])
        if pair in seen or a is None or b is None or a.stats is None or b.stats is None:
            continue
        seen.add(pair)
        p = paired(a.stats, b.stats, rep.harder, pair)
        if p is None:
            continue
        base_acc = 100.0 * (p.both + p.broken) / p.problems
        samples = ("–" if p.sample_acc is None else
                   f"{p.sample_acc:.1f}% of {p.samples_per_problem:.1f} per problem (baseline's answers: {base_acc:.1f}%)")
        out.append(f"| {p.rung} vs {p.baseline} | {p.problems} | {p.both} | {p.fixed} | {p.broken} | {p.neither} "
                   f"| {p.fixed - p.broken:+d} | {samples} |")
    if not out:
        return []
    return [f"Each target's rung against its baseline, problem by problem (level {rep.harder}), and how often the "
            "rung's own samples are right beside the baseline's answers.", "",
            "| rung vs baseline | problems | both right | fixed | broken | both wrong | net | rung's samples right |",
            "|---|---:|---:|---:|---:|---:|---:|---|", *out, ""]


def _diagnostics(rep: RunReport) -> list[str]:
    out = ["## What the traces show", "",
           "| rung | problems | no answer extracted | final sample hit the token limit |", "|---|---:|---:|---:|"]
    for r in rep.rows:
        if r.stats:
            out.append(f"| {r.name} | {r.stats.problems} | {r.stats.no_answer:.1f}% | {r.stats.truncated:.1f}% |")
    return out + [""] + _paired_lines(rep)


def _header(m: dict) -> list[str]:
    wall = m.get("wall_seconds")
    budget = m.get("budget_seconds")
    bits = [f"plan `{m.get('plan', '?')}`", f"size {m.get('size', '?')}", f"seed {m.get('seed', '?')}",
            f"device {m.get('device', '?')}"]
    if wall is not None:
        over = f", over the {budget:.0f} s budget by {wall - budget:.0f} s" if budget and wall > budget else ""
        bits.append(f"wall {wall:.0f} s" + (f" (budget {budget:.0f} s{over})" if budget else ""))
    if m.get("started"):
        bits.append(f"started {m['started']}")
    lines = [" · ".join(bits), ""]
    if m.get("host", {}).get("cpu"):  # CPU results depend on the processor's kernels (docs/getting-started.md, "Processors")
        lines[-1:] = ["", f"host: {describe_host(m['host'], m.get('env'))}", ""]
    return lines


_LEGEND = ("Accuracy: share of held-out problems whose final answer is correct, per difficulty level "
           "(L*) and overall, with the 95% Wilson interval and the number of problems. tokens/problem: "
           "generated tokens of every sample the method drew (votes, drafts, critiques, revisions) / problems. "
           "gain: accuracy points over the baseline rung `{baseline}`. train time: the stage that made the "
           "model / that stage plus every stage it was built from. Every number is recomputed from the "
           "trace files by `spine ladder-report`.")


def render_markdown(reports: Sequence[RunReport], *, png_name: str | None = "ladder.png") -> str:
    """ladder.md for one run, or for several runs (seeds): mean and range, then each run."""
    rep0 = reports[0]
    m0 = rep0.manifest
    lines = [f"# Reasoning ladder — {m0.get('size', '?')}", ""]
    if len(reports) == 1:
        lines += _header(m0)
        if m0.get("problems"):
            lines += [f"Held-out problems: `{m0['problems']}`", ""]
        lines += [_LEGEND.format(baseline=rep0.baseline), ""]
        lines += _single_table(rep0) + [""]
        if png_name:
            lines += [f"![accuracy vs generated tokens per problem]({png_name})", ""]
        by = {r.name: r for r in rep0.rows}
        lines += _targets_lines(evaluate_targets(
            m0.get("targets", []), lambda n: by[n].stats.levels[rep0.harder].acc
            if n in by and by[n].stats and rep0.harder in by[n].stats.levels else None,
            rep0.harder, lambda n: _why(rep0.rows, n)), rep0.harder)
        lines += _students(rep0)
        lines += _diagnostics(rep0)
        lines += _steps(m0)
        return "\n".join(lines) + "\n"
    seeds = ", ".join(str(r.manifest.get("seed", "?")) for r in reports)
    levels = list(dict.fromkeys(lv for r in reports for lv in r.levels if lv != ALL)) + [ALL]
    harder = rep0.harder
    agg = aggregate(reports)
    lines += [f"Mean and range (min–max) over {len(reports)} runs (seeds {seeds}); plan `{m0.get('plan', '?')}`.",
              "", _LEGEND.format(baseline=rep0.baseline), ""]
    lines += _agg_table(rep0, agg, levels, harder) + [""]
    if png_name:
        lines += [f"![accuracy vs generated tokens per problem]({png_name})", ""]
    by = {a.name: a for a in agg}
    lines += _targets_lines(evaluate_targets(
        m0.get("targets", []), lambda n: by[n].acc[harder].mean if n in by and harder in by[n].acc else None,
        harder, lambda n: "; ".join(by[n].notes) if n in by and by[n].notes else "is not in the plan"), harder)
    for rep in reports:
        lines += [f"## Run {rep.run_dir.name} (seed {rep.manifest.get('seed', '?')})", ""] + _header(rep.manifest)
        lines += _single_table(rep) + [""]
    return "\n".join(lines) + "\n"


def _steps(m: dict) -> list[str]:
    steps = m.get("steps") or []
    if not steps:
        return []
    out = ["## Commands", "", "| step | exit | seconds | command |", "|---|---:|---:|---|"]
    for s in steps:
        cmd = " ".join(json.dumps(a) if (" " in a or not a) else a for a in s.get("argv", []))
        rc = s.get("rc")
        out.append(f"| {s.get('id')} | {'–' if rc is None else rc} | "
                   f"{'–' if s.get('seconds') is None else format(s['seconds'], '.1f')} | `spine {cmd}` |")
    return out + [""]


def render_png(reports: Sequence[RunReport], path: str | Path) -> Path:
    """Accuracy vs generated tokens per problem, one point per measured rung (log x); error bars are
    the Wilson interval for one run, the min–max range for several. Left: the harder level; right: all."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rep0 = reports[0]
    agg = aggregate(reports)
    panels = [rep0.harder, ALL] if rep0.harder != ALL else [ALL]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    models = list(dict.fromkeys(a.model for a in agg))
    colors = {mname: plt.cm.tab10(i % 10) for i, mname in enumerate(models)}
    markers = {}
    for ax, lv in zip(axes[0], panels):
        for a in agg:
            if a.runs == 0 or lv not in a.acc or a.tokens_per_problem is None:
                continue
            x, y = a.tokens_per_problem.mean, a.acc[lv].mean
            if len(reports) == 1:
                st = rep0.row(a.name).stats.levels[lv]
                lo, hi = st.ci
            else:
                lo, hi = a.acc[lv].lo, a.acc[lv].hi
            mk = markers.setdefault(a.method, "osD^vP*Xh<>"[len(markers) % 11])
            # max(0, ...): rounding can put the mean a hair outside its own interval
            ax.errorbar([x], [y], yerr=[[max(0.0, y - lo)], [max(0.0, hi - y)]], fmt=mk, color=colors[a.model],
                        capsize=3, label=a.name)
            ax.annotate(a.name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("generated tokens per problem")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.set_title(f"level {lv}" if lv != ALL else "all levels")
        ax.grid(alpha=0.3)
    if axes[0][-1].get_legend_handles_labels()[0]:
        axes[0][-1].legend(fontsize=7, loc="best")
    title = f"ladder ({rep0.manifest.get('size', '?')})"
    title += f", mean and range over {len(reports)} runs" if len(reports) > 1 else ", 95% Wilson intervals"
    fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Write ladder.md and ladder.png for one run (into its folder unless `out_dir`) or for several
    runs (seeds; `out_dir` required). Returns the two paths."""
    if not run_dirs:
        raise ValueError("give at least one ladder run folder")
    if out_dir is None and len(run_dirs) > 1:
        raise ValueError("several run folders: give --out DIR for the combined report")
    reports = [run_report(d) for d in run_dirs]
    out = Path(out_dir if out_dir is not None else run_dirs[0])
    out.mkdir(parents=True, exist_ok=True)
    png = render_png(reports, out / "ladder.png")
    md = out / "ladder.md"
    md.write_text(render_markdown(reports, png_name=png.name), encoding="utf-8")
    return md, png
