"""`spine ladder` (run a ladder plan) and `spine ladder-report` (recompute its report from the traces).

Registered in spine.commands' registry by importing this module there; docs/ladder.md explains the rungs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .commands import command

PLANS = Path(__file__).resolve().parent.parent / "configs" / "ladder"


def _vars(items: Optional[list[str]]) -> dict[str, object]:
    import yaml

    out: dict[str, object] = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"--set {item!r}: expected NAME=VALUE (a var of the ladder plan)")
        # a list var is given as a YAML flow list: --set 'sc_args=[--pipeline, sc, --n, "4"]'
        out[key.strip()] = [str(x) for x in yaml.safe_load(value)] if value.lstrip().startswith("[") else value
    return out


@command("ladder", repeatable=("set",))
def ladder(
    size: str = "cpu",
    plan: Optional[str] = None,
    seed: int = 0,
    seeds: Optional[list[int]] = None,
    out: Optional[str] = None,
    set: Optional[list[str]] = None,  # noqa: A002 (the flag reads --set NAME=VALUE)
) -> int:
    """Run the reasoning ladder: pretrain -> SFT -> eval (greedy, voting, best-of-N, refinement) -> GRPO
    (+ random-reward control) -> eval -> distil a quarter-size student -> eval -> ladder.md/ladder.png.

    Args:
        size: cpu (2 cores, <= 15 min), gpu (one H200, <= 10 min) or tiny (CI smoke size): picks
            configs/ladder/SIZE.yaml.
        plan: a ladder plan file instead of the size's (see docs/ladder.md for its keys).
        seed: the seed of the run (passed to every stage as {seed}).
        seeds: several seeds, e.g. [0,1,2]: one run each under OUT/seedS, then one report of their
            mean and range in OUT.
        out: run folder (default runs/ladder/SIZE-seedS, or runs/ladder/SIZE with several seeds). A
            rerun with the same plan and seed resumes: finished steps are skipped unless something they
            read ran again.
        set: override a plan var, NAME=VALUE (repeat the flag).
    """
    from .reasoning.ladder_render import write_report
    from .reasoning.ladder_run import load_plan, run_ladder, subprocess_executor

    plan_path = Path(plan) if plan else PLANS / f"{size}.yaml"
    if not plan and not plan_path.is_file():
        known = sorted(p.stem for p in PLANS.glob("*.yaml") if not p.stem.startswith("_"))
        raise ValueError(f"--size {size!r}: no plan {plan_path}; known sizes: {', '.join(known)}")
    spec = load_plan(plan_path, _vars(set))
    root = PLANS.parent.parent
    if not (Path.cwd() / "configs").is_dir() and (root / "configs").is_dir():
        # the stages name configs/ and datamodules/ relative to the working folder; elsewhere every
        # stage would be skipped as "not landed"
        raise ValueError(f"run it from the repository root ({root}): the plan's stages name "
                         f"configs relative to it, and {Path.cwd()} has no configs/ folder")
    seed_list = list(seeds) if seeds else [seed]
    base = Path(out) if out else Path("runs") / "ladder" / (f"{size}" if len(seed_list) > 1 else f"{size}-seed{seed}")
    runs = []
    failed = False
    for s in seed_list:
        run = base / f"seed{s}" if len(seed_list) > 1 else base
        manifest = run_ladder(spec, seed=s, out=run, plan_name=str(plan_path), execute=subprocess_executor)
        failed |= any(m["status"] == "failed" for m in manifest["models"].values())
        failed |= any(r["status"] == "failed" for r in manifest["rungs"])
        md, png = write_report([run])
        print(f"[ladder] seed {s}: {md} and {png} ({manifest['wall_seconds']:.0f} s)")
        runs.append(run)
    if len(runs) > 1:
        md, png = write_report(runs, base)
        print(f"[ladder] {len(runs)} seeds: {md} and {png}")
    print(md.read_text(encoding="utf-8"))
    return 1 if failed else 0


@command("ladder-report", variadic=("runs", "ladder run folders (several: one per seed)"))
def ladder_report(runs: list[str], out: Optional[str] = None) -> int:
    """Recompute a ladder's report from its trace files: ladder.md and ladder.png.

    Args:
        runs: ladder run folders written by `spine ladder`; several (seeds) give mean and range.
        out: folder for ladder.md/ladder.png (default: the run folder; required for several runs).
    """
    from .reasoning.ladder_render import write_report

    md, png = write_report(runs, out)
    print(md.read_text(encoding="utf-8"))
    print(f"wrote {md} and {png}")
    return 0
