"""Ladder plans: read a plan file (its `extends` chain resolved), check every model, rung, target and
placeholder (one-line ValueError naming the field), and the dependency graph the runner schedules by.
The keys and placeholders are documented in `spine.reasoning.ladder_run`."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

__all__ = ["load_plan"]

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
