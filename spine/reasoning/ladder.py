"""The ladder report: every rung's accuracy, cost and gain, recomputed from its trace files.

A ladder run folder (written by `spine ladder`, see `spine.reasoning.ladder_plan`) holds `ladder.json`:

    {"format": "spine-ladder/1", "size": "cpu", "seed": 0, "harder_level": "4", "baseline": "sft-greedy",
     "models": {"sft": {"parent": "pretrain", "checkpoint": "sft/spine", "ledger": "sft/ledger.json",
                        "status": "ok", "note": "", "seconds": 95.1}, ...},
     "rungs": [{"name": "sft-greedy", "model": "sft", "method": "greedy", "traces": ["eval/sft-greedy.jsonl"],
                "status": "ok", "note": ""}, ...],
     "targets": [{"name": ..., "rung": "sft-sc", "baseline": "sft-greedy", "min_gain": 5}, ...],
     "steps": [{"id": ..., "argv": [...], "rc": 0, "seconds": ..., "log": "logs/..."}], ...}

Nothing numeric is taken from the manifest except training tokens/time (from each model's ledger
or its steps' wall time): accuracy, CIs, tokens per problem and gains come from the traces:

- a problem's answer is its final record (`spine.traces.final_records`); accuracy per difficulty
  level (`metadata["level"]`) and overall, with a 95% Wilson interval;
- tokens per problem = generated tokens summed over every sample record (sample_index >= 0: all
  votes, drafts, critiques and revisions a pipeline drew) / number of problems;
- gain = accuracy points over the baseline rung (SFT greedy) at the same level.
Several run folders (seeds) give the mean and the range (min-max) of every number.
All paths in a manifest are relative to its folder and must stay inside it.
"""
from __future__ import annotations

import json
import math
import statistics
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..traces import TraceRecord, final_records, read_traces, wilson_interval

__all__ = ["MANIFEST", "FORMAT", "LevelStat", "RungStats", "Row", "RunReport", "read_manifest", "inside",
           "rung_stats", "count_parameters", "run_report", "aggregate", "evaluate_targets", "render_markdown",
           "render_png", "write_report"]

MANIFEST = "ladder.json"
FORMAT = "spine-ladder/1"
ALL = "all"


# ----------------------------------------------------------------------------- manifest

def inside(root: Path, rel: str, what: str) -> Path:
    """`root / rel`, refusing absolute paths and paths that leave `root` (a manifest is data, not trusted)."""
    if not isinstance(rel, str) or not rel:
        raise ValueError(f"{root / MANIFEST}: {what} must be a relative path, got {rel!r}")
    p = Path(rel)
    full = (root / p).resolve()
    if p.is_absolute() or not full.is_relative_to(root.resolve()):
        raise ValueError(f"{root / MANIFEST}: {what} {rel!r} is outside the run folder {root}")
    return full


def read_manifest(run_dir: str | Path) -> dict:
    """The parsed `ladder.json` of a run folder (one-line ValueError when missing or malformed)."""
    root = Path(run_dir)
    path = root / MANIFEST
    if not path.is_file():
        raise ValueError(f"{root}: not a ladder run folder (no {MANIFEST}; `spine ladder --out {root}` writes it)")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ValueError(f"{path}: format must be {FORMAT!r}, got {m.get('format') if isinstance(m, dict) else m!r}")
    for key, typ in (("models", dict), ("rungs", list)):
        if not isinstance(m.get(key), typ):
            raise ValueError(f"{path}: field {key!r} must be a {typ.__name__}")
    for i, r in enumerate(m["rungs"]):
        if not isinstance(r, dict) or not isinstance(r.get("name"), str) or r.get("model") not in m["models"]:
            raise ValueError(f"{path}: rungs[{i}] needs a name and a model listed under 'models', got {r!r}")
    return m


# ----------------------------------------------------------------------------- statistics from traces

@dataclass
class LevelStat:
    """k correct of n problems; accuracy and its Wilson 95% interval in percent."""

    n: int
    k: int

    @property
    def acc(self) -> float:
        return 100.0 * self.k / self.n if self.n else float("nan")

    @property
    def ci(self) -> tuple[float, float]:
        lo, hi = wilson_interval(self.k, self.n)
        return 100.0 * lo, 100.0 * hi


@dataclass
class RungStats:
    levels: dict[str, LevelStat]       # level value (str) -> stat, plus ALL
    tokens_per_problem: float
    no_answer: float                   # % of problems whose final record has no extracted answer
    truncated: float                   # % of problems whose final sample hit the token limit
    problems: int


def _level_key(v: str) -> tuple[int, float, str]:
    try:
        return (0, float(v), v)
    except ValueError:
        return (1, 0.0, v)


def rung_stats(records: Sequence[TraceRecord]) -> RungStats:
    """Accuracy per level and overall, tokens per problem and failure shares of one rung's records."""
    finals = final_records(records)
    if not finals:
        raise ValueError("no trace records")
    level_of: dict[str, str] = {}
    for r in records:  # a problem's level from any of its records (the final one may be a bare summary)
        if r.metadata.get("level") is not None:
            level_of.setdefault(r.problem_id, str(r.metadata["level"]))
    levels: dict[str, LevelStat] = {}
    for pid, fin in finals.items():
        for key in {level_of.get(pid), ALL} - {None}:
            st = levels.setdefault(key, LevelStat(0, 0))
            st.n += 1
            st.k += bool(fin.correct)
    order = sorted((k for k in levels if k != ALL), key=_level_key) + [ALL]
    n = len(finals)
    tokens = sum(int(r.tokens) for r in records if r.sample_index >= 0)
    no_answer = sum(f.extracted is None for f in finals.values())
    truncated = sum(f.metadata.get("finish_reason") == "length" for f in finals.values())
    return RungStats({k: levels[k] for k in order}, tokens / n, 100.0 * no_answer / n, 100.0 * truncated / n, n)


def count_parameters(checkpoint: Path) -> int:
    """Parameters of a spine checkpoint, from its safetensors header alone (no weights read; a tied
    head is stored once, so this equals `GPT.num_params()`)."""
    f = checkpoint / "model.safetensors"
    with open(f, "rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise ValueError(f"{f}: not a safetensors file (shorter than its header length)")
        size = struct.unpack("<Q", raw)[0]
        if size > 100_000_000:
            raise ValueError(f"{f}: safetensors header of {size} bytes is implausible")
        header = json.loads(fh.read(size))
    return sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")


# ----------------------------------------------------------------------------- one run

@dataclass
class Row:
    """One rung of one run (`status` ok / skipped / failed; numbers None unless ok)."""

    name: str
    model: str
    method: str
    status: str
    note: str = ""
    params: int | None = None
    train_tokens: int | None = None
    stage_seconds: float | None = None
    chain_seconds: float | None = None
    stats: RungStats | None = None
    gain: dict[str, float] = field(default_factory=dict)
    traces: list[str] = field(default_factory=list)


@dataclass
class RunReport:
    run_dir: Path
    manifest: dict
    rows: list[Row]
    levels: list[str]          # level columns, ALL last
    harder: str                # the level the targets are measured on
    baseline: str              # rung name the gains are relative to

    def row(self, name: str) -> Row | None:
        return next((r for r in self.rows if r.name == name), None)


def _model_cost(root: Path, models: dict, name: str) -> tuple[int | None, float | None, int | None]:
    """(training tokens, training seconds, parameters) of one model stage. Seconds: the wall time of
    the stage's steps as the chain measured it (teacher trace generation included for a distilled
    student), else the ledger's fit time; tokens: the ledger's; parameters: the checkpoint's."""
    m = models.get(name) or {}
    tokens, seconds, params = None, m.get("seconds"), None
    if m.get("ledger"):
        path = inside(root, m["ledger"], f"models.{name}.ledger")
        if path.is_file():
            try:
                led = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: invalid JSON ({e.msg})") from None
            tokens = led.get("tokens")
            if seconds is None:
                seconds = led.get("fit_seconds")
    if m.get("checkpoint") and m.get("status", "ok") == "ok":
        ck = inside(root, m["checkpoint"], f"models.{name}.checkpoint")
        if (ck / "model.safetensors").is_file():
            params = count_parameters(ck)
    return tokens, seconds, params


def _chain_seconds(models: dict, name: str, own: dict[str, float | None]) -> float | None:
    """Training seconds of `name` and every stage it was built from (parent, teacher, ...)."""
    total, seen, todo = 0.0, set(), [name]
    while todo:
        cur = todo.pop()
        if cur in seen or cur not in models:
            continue
        seen.add(cur)
        if own.get(cur) is None:
            return None
        total += own[cur]
        todo += [p for p in (models[cur].get("parent"), models[cur].get("teacher")) if p]
    return total


def run_report(run_dir: str | Path) -> RunReport:
    """Recompute one run's ladder from its manifest and trace files."""
    root = Path(run_dir)
    m = read_manifest(root)
    models = m["models"]
    cost = {name: _model_cost(root, models, name) for name in models}
    stage_seconds = {name: c[1] for name, c in cost.items()}
    rows: list[Row] = []
    for r in m["rungs"]:
        row = Row(name=r["name"], model=r["model"], method=str(r.get("method", "")),
                  status=str(r.get("status", "skipped")), note=str(r.get("note", "")),
                  traces=list(r.get("traces") or []))
        mstat = models[r["model"]].get("status", "ok")
        if row.status == "ok" and mstat != "ok":
            row.status, row.note = "skipped", f"model {r['model']} {mstat}: {models[r['model']].get('note', '')}"
        if row.status == "ok":
            records: list[TraceRecord] = []
            for i, rel in enumerate(row.traces):
                path = inside(root, rel, f"rung {row.name} traces[{i}]")
                records += read_traces(path)[1]
            if not records:
                raise ValueError(f"{root / MANIFEST}: rung {row.name} is marked ok but its traces hold no records")
            row.stats = rung_stats(records)
            row.train_tokens, row.stage_seconds, row.params = cost[r["model"]]
            row.chain_seconds = _chain_seconds(models, r["model"], stage_seconds)
        rows.append(row)
    levels = sorted({lv for row in rows if row.stats for lv in row.stats.levels if lv != ALL}, key=_level_key)
    harder = str(m.get("harder_level") or (levels[-1] if levels else ALL))
    baseline = str(m.get("baseline", "sft-greedy"))
    base = next((x for x in rows if x.name == baseline and x.stats), None)
    for row in rows:
        if row.stats and base is not None:
            row.gain = {lv: row.stats.levels[lv].acc - base.stats.levels[lv].acc
                        for lv in row.stats.levels if lv in base.stats.levels}
    return RunReport(root, m, rows, levels + [ALL], harder, baseline)


# ----------------------------------------------------------------------------- several seeds

@dataclass
class Spread:
    """Mean and range of one number over the runs that have it."""

    values: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def lo(self) -> float:
        return min(self.values)

    @property
    def hi(self) -> float:
        return max(self.values)


@dataclass
class AggRow:
    name: str
    model: str
    method: str
    runs: int                                     # runs where the rung was measured
    notes: list[str]                              # why it was not measured elsewhere
    acc: dict[str, Spread] = field(default_factory=dict)
    gain: dict[str, Spread] = field(default_factory=dict)
    tokens_per_problem: Spread | None = None
    params: Spread | None = None
    train_tokens: Spread | None = None
    stage_seconds: Spread | None = None
    chain_seconds: Spread | None = None


def _spread(values: Iterable[float | None]) -> Spread | None:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return Spread(vals) if vals else None


def aggregate(reports: Sequence[RunReport]) -> list[AggRow]:
    """One row per rung name (in first-seen order): mean and range over the runs that measured it."""
    names: list[str] = []
    for rep in reports:
        names += [r.name for r in rep.rows if r.name not in names]
    out = []
    for name in names:
        rows = [r for rep in reports if (r := rep.row(name)) is not None]
        ok = [r for r in rows if r.stats is not None]
        agg = AggRow(name, rows[0].model, rows[0].method, len(ok),
                     sorted({f"{r.status}: {r.note}" for r in rows if r.stats is None}))
        for lv in dict.fromkeys(lv for r in ok for lv in r.stats.levels):
            agg.acc[lv] = _spread(r.stats.levels[lv].acc for r in ok if lv in r.stats.levels)
            if g := _spread(r.gain.get(lv) for r in ok):
                agg.gain[lv] = g
        agg.tokens_per_problem = _spread(r.stats.tokens_per_problem for r in ok)
        agg.params = _spread(r.params for r in ok)
        agg.train_tokens = _spread(r.train_tokens for r in ok)
        agg.stage_seconds = _spread(r.stage_seconds for r in ok)
        agg.chain_seconds = _spread(r.chain_seconds for r in ok)
        out.append(agg)
    return out


# ----------------------------------------------------------------------------- targets

@dataclass
class TargetResult:
    name: str
    text: str          # e.g. "+3.0 points (target >= +5): missed by 2.0 points"
    met: bool | None   # None: not measured


def evaluate_targets(targets: Sequence[dict], acc: Callable[[str], float | None], level: str,
                     why_missing: Callable[[str], str]) -> list[TargetResult]:
    """Check each target on `level` with `acc(rung) -> accuracy in % (None if not measured)`.

    Kinds: `min_gain` / `max_gain` (points of `rung` over `baseline`), `min_ratio` (accuracy of
    `rung` / accuracy of `baseline`, e.g. a student over its teacher).
    """
    out = []
    for t in targets:
        name = str(t.get("name") or f"{t.get('rung')} vs {t.get('baseline')}")
        a, b = acc(str(t.get("rung"))), acc(str(t.get("baseline")))
        if a is None or b is None:
            missing = t.get("rung") if a is None else t.get("baseline")
            out.append(TargetResult(name, f"rung {missing} {why_missing(str(missing))}", None))
            continue
        if "min_ratio" in t and b <= 0:
            out.append(TargetResult(name, f"{a:.1f}% vs {b:.1f}%: the baseline is at 0%, so the ratio is undefined",
                                    None))
            continue
        if "min_ratio" in t:
            want = float(t["min_ratio"])
            ratio = a / b
            short = (want - ratio) * b  # accuracy points the rung still needs
            met = ratio >= want
            text = (f"{a:.1f}% vs {b:.1f}% = {100 * ratio:.1f}% (target >= {100 * want:.0f}%)"
                    + ("" if met else f": missed by {100 * (want - ratio):.1f} percentage points of the baseline "
                                      f"({short:.1f} accuracy points)"))
        elif "min_gain" in t or "max_gain" in t:
            gain = a - b
            if "min_gain" in t:
                want = float(t["min_gain"])
                met = gain >= want
                text = f"{gain:+.1f} points (target >= {want:+.0f})" + ("" if met else f": missed by {want - gain:.1f} points")
            else:
                want = float(t["max_gain"])
                met = gain <= want
                text = f"{gain:+.1f} points (target <= {want:+.0f})" + ("" if met else f": exceeded by {gain - want:.1f} points")
        else:
            raise ValueError(f"target {name!r}: give min_gain, max_gain or min_ratio")
        out.append(TargetResult(name, text, met))
    return out


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


def _diagnostics(rep: RunReport) -> list[str]:
    out = ["## What the traces show", "",
           "| rung | problems | no answer extracted | final sample hit the token limit |", "|---|---:|---:|---:|"]
    for r in rep.rows:
        if r.stats:
            out.append(f"| {r.name} | {r.stats.problems} | {r.stats.no_answer:.1f}% | {r.stats.truncated:.1f}% |")
    return out + [""]


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
    return [" · ".join(bits), ""]


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
            ax.errorbar([x], [y], yerr=[[max(0.0, y - lo)], [max(0.0, hi - y)]],  # rounding can cross 0 fmt=mk, color=colors[a.model], capsize=3,
                        label=a.name)
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
