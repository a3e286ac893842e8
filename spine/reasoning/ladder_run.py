"""`spine ladder`: run a ladder plan — a fixed chain of `spine` commands — into one run folder.

The runner has no stage logic: a plan (YAML, `configs/ladder/*.yaml`) lists the models (each made by
one or more `spine` commands, usually `spine fit`) and the rungs (each one `spine eval` of a model
with one pipeline), with `{...}` placeholders. The runner fills the placeholders, skips what cannot
run yet (a missing config or module, an unregistered pipeline, a skipped or failed model it reads)
with a note, runs every command in order (each in its own process by default, logging to `logs/`;
`jobs` commands at once when the plan allows, each as soon as the models it reads exist), times it,
and keeps `ladder.json` (see `spine.reasoning.ladder`) up to date after every step, so a killed run
leaves a readable manifest and a rerun with the same plan and seed resumes: a step that finished with
the same command line and the same `--config` file contents is skipped unless something it reads ran
again.

Plan keys:
    extends: another plan file (same folder) whose keys this one overrides (`vars` merged by key)
    size, device, budget_seconds, harder_level, baseline, problems: copied into the manifest
    vars: {name: value} for `{name}` placeholders
    models: {name: {steps: [[spine argv...], ...], checkpoint: path in the run folder, parent: name or
             [first available, ...], teacher: name, requires: [...]}}
    rungs: [{name, model, method, argv: [spine argv...], requires: [...]}]
    targets: [{name, rung, baseline, min_gain | max_gain | min_ratio}]
    jobs: how many commands may run at once (default 1). A model starts once every model it reads
          (parents, teacher, `{ckpt:...}`) has finished, a rung once its model has; among the ready
          ones the first in plan order goes first, so `jobs: 1` runs the plan's order exactly
    env: {NAME: value} added to every command's environment (e.g. SPINE_NUM_THREADS: 1, so a run's
         numbers do not depend on the machine's core count or on what runs beside it)

Placeholders: `{run}` the run folder, `{seed}`, `{ckpt:MODEL}` that model's checkpoint, `{ckpt:parent}`
the model's resolved parent, `{parent}` its name, `{traces}` the rung's trace file, `{model_dir}` the
model's folder, and every var. A `spine fit` step also gets the `TrainingLedger` callback.
Requirements: `file:PATH` (exists, relative to the working directory), `pipeline:NAME` (registered
in spine.reasoning.pipelines), `command:NAME` (a registered `spine` subcommand).
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any, Callable

import yaml

from .ladder import FORMAT, MANIFEST

__all__ = ["load_plan", "run_ladder", "subprocess_executor", "Executor"]

# argv (without the leading `spine`), log file, extra environment variables -> exit code
Executor = Callable[[list[str], Path, dict[str, str]], int]

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z0-9_.-]+))?\}")
_BUILTIN = {"run", "seed", "ckpt", "traces", "model_dir", "parent"}


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"ladder plan not found: {path}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a ladder plan is a mapping, got {type(data).__name__}")
    return data


def load_plan(path: str | Path, overrides: dict[str, Any] | None = None) -> dict:
    """The plan at `path` with its `extends` chain resolved and `overrides` applied to its vars;
    every model/rung/target/placeholder checked (one-line ValueError naming the field)."""
    path = Path(path)
    plan = _read_yaml(path)
    seen = {path.resolve()}
    cur = path  # an `extends` is relative to the file that names it, not to the first plan
    while "extends" in plan:
        base_path = cur.parent / str(plan.pop("extends"))
        if base_path.resolve() in seen:
            raise ValueError(f"{path}: 'extends' loops back to {base_path}")
        seen.add(base_path.resolve())
        base = _read_yaml(base_path)
        cur = base_path
        vars_ = {**(base.get("vars") or {}), **(plan.get("vars") or {})}
        plan = {**base, **plan, "vars": vars_}
    plan["vars"] = {**(plan.get("vars") or {}), **(overrides or {})}
    _check_plan(plan, path)
    return plan


def _check_plan(plan: dict, where: Path) -> None:
    models, rungs = plan.get("models"), plan.get("rungs")
    if not isinstance(models, dict) or not models:
        raise ValueError(f"{where}: 'models' must be a non-empty mapping of model name -> steps")
    if not isinstance(rungs, list):
        raise ValueError(f"{where}: 'rungs' must be a list")
    jobs = plan.get("jobs", 1)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"{where}: jobs must be a positive integer, got {jobs!r}")
    env = plan.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in env.values()):
        raise ValueError(f"{where}: env must map variable names to strings or integers, got {env!r}")
    known_vars = set(plan["vars"])
    if known_vars & _BUILTIN:
        raise ValueError(f"{where}: vars may not be named {', '.join(sorted(known_vars & _BUILTIN))} (built-in placeholders)")
    for name, value in plan["vars"].items():
        _check_var_cycle(plan["vars"], name, (), where)
        items = value if isinstance(value, list) else [value]
        if items:
            _check_argv(items, f"vars.{name}", where, known_vars, models if isinstance(models, dict) else {})
    for name, m in models.items():
        if not re.fullmatch(r"[A-Za-z0-9_-]+", str(name)):
            raise ValueError(f"{where}: model name {name!r} may use only letters, digits, '-' and '_'")
        if not isinstance(m, dict) or not isinstance(m.get("steps"), list) or not m["steps"]:
            raise ValueError(f"{where}: models.{name}.steps must be a non-empty list of spine argv lists")
        for p in _parents(m):
            if p not in models:
                raise ValueError(f"{where}: models.{name}.parent {p!r} is not a model of the plan")
        if m.get("teacher") is not None and m["teacher"] not in models and m["teacher"] != "parent":
            raise ValueError(f"{where}: models.{name}.teacher {m['teacher']!r} is not a model of the plan")
        if name in _parents(m) or m.get("teacher") == name:
            raise ValueError(f"{where}: models.{name} names itself as its parent or teacher")
        for i, step in enumerate(m["steps"]):
            _check_argv(step, f"models.{name}.steps[{i}]", where, known_vars, models)
        for key in ("checkpoint",):
            if not isinstance(m.get(key), str):
                raise ValueError(f"{where}: models.{name}.{key} must be a path inside the run folder")
    names = set()
    for i, r in enumerate(rungs):
        if not isinstance(r, dict) or not isinstance(r.get("name"), str) or r.get("model") not in models:
            raise ValueError(f"{where}: rungs[{i}] needs a name and a model of the plan, got {r!r}")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", r["name"]) or r["name"] in models:
            raise ValueError(f"{where}: rung name {r['name']!r}: letters, digits, '-' and '_' only, "
                             "and not the name of a model")
        if r["name"] in names:
            raise ValueError(f"{where}: rung name {r['name']!r} appears twice")
        names.add(r["name"])
        _check_argv(r.get("argv"), f"rungs[{i}].argv", where, known_vars, models)
    for name in models:
        _check_model_loop(plan, name, (), where)
    for i, t in enumerate(plan.get("targets") or []):
        if not isinstance(t, dict) or not ({"min_gain", "max_gain", "min_ratio"} & set(t)):
            raise ValueError(f"{where}: targets[{i}] needs rung, baseline and one of min_gain/max_gain/min_ratio")
        for key in ("rung", "baseline"):
            if _PLACEHOLDER.sub("", str(t.get(key))) not in names and not _PLACEHOLDER.search(str(t.get(key))):
                raise ValueError(f"{where}: targets[{i}].{key} {t.get(key)!r} is not a rung of the plan")


def _check_model_loop(plan: dict, name: str, path: tuple[str, ...], where: Path) -> None:
    if name in path:
        raise ValueError(f"{where}: models read each other in a loop: {' -> '.join(path + (name,))}")
    for dep in sorted(_unit_deps(plan, ("model", name))):
        _check_model_loop(plan, dep, path + (name,), where)


def _check_var_cycle(vars_: dict, name: str, path: tuple[str, ...], where: Path) -> None:
    if name in path:
        raise ValueError(f"{where}: vars refer to each other in a loop: {' -> '.join(path + (name,))}")
    value = vars_.get(name)
    for item in value if isinstance(value, list) else [value]:
        for m in _PLACEHOLDER.finditer(str(item)):
            if m.group(2) is None and m.group(1) in vars_:
                _check_var_cycle(vars_, m.group(1), path + (name,), where)


def _check_argv(argv: Any, field: str, where: Path, known_vars: set[str], models: dict) -> None:
    if not isinstance(argv, list) or not argv or not all(isinstance(a, (str, int, float)) for a in argv):
        raise ValueError(f"{where}: {field} must be a non-empty list of strings (a spine command line)")
    for a in argv:
        for m in _PLACEHOLDER.finditer(str(a)):
            key, arg = m.group(1), m.group(2)
            if key == "ckpt" and arg not in models and arg != "parent":
                raise ValueError(f"{where}: {field}: {{ckpt:{arg}}} names no model of the plan")
            if key not in _BUILTIN and key not in known_vars:
                raise ValueError(f"{where}: {field}: unknown placeholder {{{key}}} (define it under vars)")


def _parents(m: dict) -> list[str]:
    p = m.get("parent")
    return [] if p is None else [p] if isinstance(p, str) else list(p)


def _available(req: str, repo: Path) -> str | None:
    """None when the requirement holds, else the reason it does not."""
    kind, _, arg = str(req).partition(":")
    if kind == "file":
        return None if (repo / arg).exists() else f"{arg} not found (stage not landed)"
    if kind == "pipeline":
        from . import pipelines

        return None if arg in getattr(pipelines, "PIPELINES", {}) else f"pipeline {arg} not available"
    if kind == "command":
        from .. import commands

        return None if arg in commands.COMMANDS else f"command spine {arg} not available"
    raise ValueError(f"unknown requirement {req!r} (use file:PATH, pipeline:NAME or command:NAME)")


def subprocess_executor(argv: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    """Run `spine ARGV` as its own process (`python -m modules.cli`), output to `log`, with `env` added
    to this process's environment."""
    with open(log, "w", encoding="utf-8") as fh:
        fh.write("$ spine " + " ".join(argv) + "\n")
        fh.flush()
        return subprocess.call([sys.executable, "-m", "modules.cli", *argv], stdout=fh, stderr=subprocess.STDOUT,
                               env={**os.environ, **(env or {})})


def _config_digests(argv: list[str], repo: Path) -> dict[str, str]:
    """sha256 of each file a step takes its settings from (`--config FILE` or `--config=FILE`, relative to
    `repo`, where the commands run): an edited config is a changed step, though its command line is the same."""
    files = [b for a, b in zip(argv, argv[1:]) if a == "--config"]
    files += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    out = {}
    for value in files:
        path = Path(value) if Path(value).is_absolute() else repo / value
        out[value] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
    return out


def _write_manifest(run: Path, manifest: dict) -> None:
    tmp = run / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, run / MANIFEST)


def _plan_hash(plan: dict, seed: int) -> str:
    text = json.dumps({"plan": plan, "seed": seed}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_ladder(plan: dict, *, seed: int, out: str | Path, plan_name: str = "?",
               execute: Executor = subprocess_executor, repo: str | Path = ".",
               log: Callable[[str], None] = print) -> dict:
    """Run every step of `plan` into `out`; returns the final manifest. A step that fails marks its
    model or rung failed (and everything built on it skipped); the rest still runs."""
    run, repo = Path(out), Path(repo)
    phash = _plan_hash(plan, seed)
    previous: dict = {}
    if (run / MANIFEST).is_file():
        previous = json.loads((run / MANIFEST).read_text(encoding="utf-8"))
        if previous.get("plan_hash") != phash:
            raise ValueError(f"{run} holds a ladder run of another plan or seed (plan hash "
                             f"{previous.get('plan_hash')} != {phash}); use a new --out")
    elif run.exists() and any(run.iterdir()):
        raise ValueError(f"{run} exists and is not a ladder run folder; use a new --out (nothing is overwritten)")
    run.mkdir(parents=True, exist_ok=True)
    (run / "logs").mkdir(exist_ok=True)
    done = {s["id"]: s for s in previous.get("steps", []) if s.get("rc") == 0}

    # a var is a string, or a list of strings spliced in place of an argv item that is only its placeholder
    vars_ = {k: [str(x) for x in v] if isinstance(v, list) else str(v) for k, v in plan["vars"].items()}
    env = {str(k): str(v) for k, v in (plan.get("env") or {}).items()}
    jobs = int(plan.get("jobs") or 1)
    models: dict[str, dict] = {}
    for name, m in plan["models"].items():
        models[name] = {"stage": m.get("stage", name), "parent": None, "teacher": m.get("teacher"),
                        "checkpoint": m["checkpoint"], "ledger": f"{name}/ledger.json", "status": "pending",
                        "note": "", "seconds": None, "control": bool(m.get("control", False))}
    rungs = [{"name": r["name"], "model": r["model"], "method": r.get("method", ""), "traces": [],
              "status": "pending", "note": "", "seconds": None} for r in plan["rungs"]]
    manifest = {
        "format": FORMAT, "plan": plan_name, "plan_hash": phash, "size": plan.get("size"), "seed": seed,
        "device": plan.get("device", vars_.get("device")), "harder_level": plan.get("harder_level"),
        "baseline": plan.get("baseline", "sft-greedy"), "problems": _fill(str(plan.get("problems", "")), vars_),
        "budget_seconds": plan.get("budget_seconds"), "targets": [], "models": models, "rungs": rungs,
        "steps": [], "host": {"platform": platform.platform(), "python": platform.python_version(),
                              "cpus": os.cpu_count(), "threads": os.environ.get("OMP_NUM_THREADS")},
        "jobs": jobs, "env": env,
        "started": previous.get("started") or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "vars": vars_,
    }
    t_start = time.perf_counter()
    prior_wall = float(previous.get("wall_seconds") or 0.0)

    def ctx(model: str, traces: str = "") -> dict[str, str]:
        c = {"run": str(run), "seed": str(seed), "model_dir": str(run / model), "traces": traces,
             "parent": models[model]["parent"] or "", **vars_}
        return c

    def fill(argv: list, model: str, traces: str = "") -> list[str]:
        c = ctx(model, traces)

        def sub(m: re.Match) -> str:
            key, arg = m.group(1), m.group(2)
            if key == "ckpt":
                target = models[model]["parent"] if arg == "parent" else arg
                return str(run / models[target]["checkpoint"])
            if isinstance(c[key], list):
                raise ValueError(f"ladder plan: list var {{{key}}} must be a whole argv item, not inside {m.string!r}")
            # a var's value may hold placeholders itself (cycles are refused when the plan is loaded)
            return _PLACEHOLDER.sub(sub, c[key]) if key in vars_ else c[key]

        out: list[str] = []
        for a in argv:
            whole = _PLACEHOLDER.fullmatch(str(a))
            if whole and whole.group(2) is None and isinstance(c.get(whole.group(1)), list):
                out += [_PLACEHOLDER.sub(sub, x) for x in c[whole.group(1)]]
            else:
                out.append(_PLACEHOLDER.sub(sub, str(a)))
        return out

    lock = threading.Lock()
    counter = {"logs": 0}
    reran: set[str] = set()  # models any of whose steps ran in this call (their dependents run again too)

    def step(sid: str, argv: list[str], outputs: Path | None, resumable: bool) -> tuple[int, float, str, bool]:
        if argv[0] == "fit":  # every fit reports its tokens and time the same way
            ledger = {"class_path": "callbacks.ledger.TrainingLedger",
                      "init_args": {"path": str(run / sid.split(".")[0] / "ledger.json")}}
            argv = [*argv, "--trainer.callbacks+=" + json.dumps(ledger)]
        with lock:
            logrel = f"logs/{counter['logs']:02d}-{sid}.log"
            counter["logs"] += 1
            # resume = skip a step that finished with the same command line and config files, unless
            # something it reads (an earlier step of its model, a model it starts from) ran again in this call
            configs = _config_digests(argv, repo)
            if resumable and sid in done and done[sid]["argv"] == argv and done[sid].get("configs", {}) == configs:
                rec = dict(done[sid], resumed=True)
                manifest["steps"].append(rec)
                log(f"[ladder] {sid}: done in an earlier run ({rec['seconds']:.1f} s), skipped")
                return 0, float(rec["seconds"]), rec["log"], True
            if outputs is not None and outputs.exists():  # an earlier attempt's output: kept aside, never mixed in or deleted
                stale = run / "stale" / f"{outputs.name}.{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%f')}"
                stale.parent.mkdir(exist_ok=True)
                os.replace(outputs, stale)
                log(f"[ladder] {sid}: moved the earlier {outputs.relative_to(run)} to {stale.relative_to(run)}")
            log(f"[ladder] {sid}: spine {' '.join(argv)}")
        t0 = time.perf_counter()
        rc = int(execute(argv, run / logrel, env))
        dt = time.perf_counter() - t0
        with lock:
            manifest["steps"].append({"id": sid, "argv": argv, "configs": configs, "rc": rc, "seconds": round(dt, 3),
                                      "log": logrel})
            manifest["wall_seconds"] = round(prior_wall + time.perf_counter() - t_start, 3)
            _write_manifest(run, manifest)
            log(f"[ladder] {sid}: exit {rc} after {dt:.1f} s")
        return rc, dt, logrel, False

    def update(rec: dict, **values: Any) -> None:
        with lock:  # another thread may be writing the manifest from these very dicts
            rec.update(values)

    def unavailable(unit: tuple[str, Any], besides: list[str]) -> str | None:
        """Why a model the unit reads (other than its parent options) keeps it from running."""
        bad = [d for d in sorted(deps[unit] - set(besides)) if models[d]["status"] != "ok"]
        return ("needs " + "; ".join(f"{d} ({models[d]['status']})" for d in bad)) if bad else None

    def run_model(name: str) -> None:
        spec, rec = plan["models"][name], models[name]
        why = None
        options = _parents(spec)
        if options:
            ok = [p for p in options if models[p]["status"] == "ok"]
            if ok:
                update(rec, parent=ok[0])
            else:
                why = "; ".join(f"{p} {models[p]['status']}" for p in options)
                why = f"parent not available ({why})"
        if rec["teacher"] == "parent":
            update(rec, teacher=rec["parent"])
        why = why or unavailable(("model", name), options)
        for req in spec.get("requires") or []:
            why = why or _available(_fill(str(req), vars_), repo)
        if why:
            update(rec, status="skipped", note=why)
            log(f"[ladder] model {name}: not run: {why}")
        else:
            total, resumable = 0.0, not (deps[("model", name)] & reran)
            for i, argv in enumerate(spec["steps"]):
                # a model's first step that runs again starts from an empty model folder
                rc, dt, logrel, resumed = step(f"{name}.{i}" if i else name, fill(argv, name),
                                               run / name if i == 0 else None, resumable)
                if not resumed:
                    resumable = False
                    with lock:
                        reran.add(name)
                total += dt
                if rc != 0:
                    update(rec, status="failed", note=f"step {i} exited {rc} (see {logrel})")
                    break
            else:
                ck = run / rec["checkpoint"]
                if (ck / "model.safetensors").is_file():
                    update(rec, status="ok")
                else:
                    update(rec, status="failed", note=f"no checkpoint at {rec['checkpoint']} after its steps")
            update(rec, seconds=round(total, 3))
        with lock:
            _write_manifest(run, manifest)

    def run_rung(i: int) -> None:
        r_spec, r = plan["rungs"][i], rungs[i]
        name = r_spec["model"]
        rec = models[name]
        why = None if rec["status"] == "ok" else f"model {name} {rec['status']}: {rec['note']}"
        why = why or unavailable(("rung", i), [name])
        for req in r_spec.get("requires") or []:
            why = why or _available(_fill(str(req), vars_), repo)
        if why:
            update(r, status="skipped", note=why)
            log(f"[ladder] rung {r['name']}: not run: {why}")
            return
        traces = f"eval/{r['name']}.jsonl"
        (run / "eval").mkdir(exist_ok=True)
        rc, dt, logrel, _ = step(r["name"], fill(r_spec["argv"], name, str(run / traces)), run / traces,
                                 not (deps[("rung", i)] & reran))
        update(r, seconds=round(dt, 3))
        if rc == 0 and (run / traces).is_file():
            update(r, status="ok", traces=[traces])
        else:
            update(r, status="failed", note=f"exited {rc}" + ("" if (run / traces).is_file() else ", no traces")
                   + f" (see {logrel})")
        with lock:
            _write_manifest(run, manifest)

    # units in plan order (a model, then its rungs); each starts once the models it reads are finished,
    # at most `jobs` at a time, the first ready one first -- with jobs: 1 exactly the plan's order
    units: list[tuple[str, Any]] = []
    for name in plan["models"]:
        units.append(("model", name))
        units += [("rung", i) for i, r in enumerate(plan["rungs"]) if r["model"] == name]
    deps = {u: _unit_deps(plan, u, vars_) for u in units}
    errors: list[BaseException] = []

    def guarded(unit: tuple[str, Any]) -> None:
        """A runner error (not a failing command) marks its unit failed; the rest of the ladder still
        runs, and the first such error is raised once the manifest is written."""
        try:
            (run_model if unit[0] == "model" else run_rung)(unit[1])
        except Exception as e:  # noqa: BLE001 -- re-raised after the loop
            rec = models[unit[1]] if unit[0] == "model" else rungs[unit[1]]
            update(rec, status="failed", note=f"runner error: {e}")
            with lock:
                errors.append(e)

    _write_manifest(run, manifest)
    finished: set[str] = set()
    pending, running = list(units), {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            for u in [u for u in pending if deps[u] <= finished][:jobs - len(running)]:
                pending.remove(u)
                running[pool.submit(guarded, u)] = u
            if not running:
                raise ValueError("ladder plan: nothing left can start: "
                                 + ", ".join(u[1] if u[0] == "model" else plan["rungs"][u[1]]["name"] for u in pending))
            for fut in wait(running, return_when=FIRST_COMPLETED).done:
                u = running.pop(fut)
                if u[0] == "model":
                    finished.add(u[1])
    resolve = {f"parent:{n}": models[n]["parent"] or "" for n in models}
    manifest["targets"] = [{k: (_PLACEHOLDER.sub(lambda m: resolve.get(f"{m.group(1)}:{m.group(2)}", m.group(0)), v)
                                if isinstance(v, str) else v) for k, v in t.items()}
                           for t in copy.deepcopy(plan.get("targets") or [])]
    manifest["wall_seconds"] = round(prior_wall + time.perf_counter() - t_start, 3)
    manifest["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    _write_manifest(run, manifest)
    if errors:
        raise errors[0]
    return manifest


def _ckpt_refs(items: list, vars_: dict, seen: frozenset = frozenset()) -> set[str]:
    """Every `{ckpt:NAME}` in `items`, through the vars they name (recursively)."""
    out: set[str] = set()
    for a in items:
        for m in _PLACEHOLDER.finditer(str(a)):
            if m.group(1) == "ckpt" and m.group(2) != "parent":
                out.add(m.group(2))
            elif m.group(2) is None and m.group(1) in vars_ and m.group(1) not in seen:
                v = vars_[m.group(1)]
                out |= _ckpt_refs(v if isinstance(v, list) else [v], vars_, seen | {m.group(1)})
    return out


def _unit_deps(plan: dict, unit: tuple[str, Any], vars_: dict | None = None) -> set[str]:
    """The models a unit (("model", name) or ("rung", index)) reads: its model or parents, its teacher,
    and every `{ckpt:NAME}` of its command lines (through the vars they use)."""
    kind, key = unit
    spec = plan["models"][key] if kind == "model" else plan["rungs"][key]
    argvs = spec["steps"] if kind == "model" else [spec["argv"]]
    out = set(_parents(spec)) if kind == "model" else {spec["model"]}
    if kind == "model" and spec.get("teacher") not in (None, "parent"):
        out.add(spec["teacher"])
    refs = _ckpt_refs([a for argv in argvs for a in argv], plan["vars"] if vars_ is None else vars_)
    if kind == "model":
        refs.discard(key)  # a step may name its own checkpoint (written by an earlier step)
    return out | refs


def _fill(text: str, vars_: dict[str, Any]) -> str:
    """`text` with its string vars filled (requirements, the manifest's problems line)."""
    def sub(m: re.Match) -> str:
        v = vars_.get(m.group(1))
        return v if m.group(2) is None and isinstance(v, str) else m.group(0)
    return _PLACEHOLDER.sub(sub, text)
