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
          ones models go before rungs (the fits are what later commands wait for), each in plan
          order; `jobs: 1` runs the plan's order exactly
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
import re
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any, Callable

from .ladder import FORMAT, MANIFEST
from ..hostinfo import host_info
from .ladder_plan import _PLACEHOLDER, _fill, _parents, _unit_deps, load_plan

__all__ = ["load_plan", "run_ladder", "subprocess_executor", "Executor"]

# argv (without the leading `spine`), log file, extra environment variables -> exit code
Executor = Callable[[list[str], Path, dict[str, str]], int]


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
        "steps": [], "host": host_info(),
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
    # at most `jobs` at a time, ready models before ready rungs -- with jobs: 1 exactly the plan's order
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
            ready = [u for u in pending if deps[u] <= finished]
            if jobs > 1:  # models before rungs: a fit others wait for should not queue behind an evaluation
                ready.sort(key=lambda u: u[0] != "model")
            for u in ready[:jobs - len(running)]:
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
