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
ladder.md and ladder.png are drawn by `spine.reasoning.ladder_render` from what this module computes.
"""
from __future__ import annotations

import json
import math
import statistics
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..traces import TraceRecord, final_records, read_traces, wilson_interval

__all__ = ["MANIFEST", "FORMAT", "ALL", "LevelStat", "RungStats", "Row", "RunReport", "Spread", "AggRow",
           "TargetResult", "Paired", "paired", "read_manifest", "inside", "rung_stats", "count_parameters",
           "run_report", "aggregate", "evaluate_targets"]

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
    outcomes: dict[str, bool] = field(default_factory=dict)     # problem_id -> the final answer's verdict
    level_of: dict[str, str] = field(default_factory=dict)      # problem_id -> level
    # per level and ALL: the verdicts of every drawn sample (a vote's final record carries the chosen answer,
    # which is its own sample's answer, so its verdict is that sample's too)
    samples: dict[str, LevelStat] = field(default_factory=dict)


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
    samples: dict[str, LevelStat] = {}
    for r in records:
        if r.sample_index < 0 or r.correct is None:
            continue
        for key in {level_of.get(r.problem_id), ALL} - {None}:
            st = samples.setdefault(key, LevelStat(0, 0))
            st.n += 1
            st.k += bool(r.correct)
    return RungStats({k: levels[k] for k in order}, tokens / n, 100.0 * no_answer / n, 100.0 * truncated / n, n,
                     {pid: bool(f.correct) for pid, f in finals.items()}, level_of, samples)


@dataclass
class Paired:
    """One rung against another, problem by problem, on one level: where they agree and where not."""

    rung: str
    baseline: str
    problems: int        # problems of that level both rungs answered
    both: int            # both right
    fixed: int           # baseline wrong, rung right
    broken: int          # baseline right, rung wrong
    neither: int
    samples_per_problem: float      # samples the rung drew per problem (votes, candidates, rounds)
    sample_acc: float | None        # % of the rung's samples that are right (None when it drew one per problem)


def paired(a: RungStats, b: RungStats, level: str, names: tuple[str, str]) -> Paired | None:
    """Rung `a` against baseline `b` on the problems of `level` (ALL: every shared problem) they both
    answered; None when they share none."""
    pids = [p for p in a.outcomes if p in b.outcomes and (level == ALL or a.level_of.get(p) == level)]
    if not pids:
        return None
    cells = {(x, y): 0 for x in (True, False) for y in (True, False)}
    for p in pids:
        cells[(a.outcomes[p], b.outcomes[p])] += 1
    st = a.samples.get(level)
    per = st.n / a.levels[level].n if st else 1.0   # a.levels counts the rung's problems of that level
    return Paired(names[0], names[1], len(pids), cells[(True, True)], cells[(True, False)], cells[(False, True)],
                  cells[(False, False)], per, st.acc if st and per > 1 else None)


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
