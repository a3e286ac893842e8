"""Stability sweep of a recipe: `spine fit --config CONFIG` over seeds x CPU thread counts.

Runs each (seed, threads) as its own process with `OMP_NUM_THREADS`/`MKL_NUM_THREADS` set to the
thread count (what a user's machine decides), `--seed_everything SEED` and its own output folder,
then prints each run's held-out `reasoning/*_acc` (last value in metrics.csv) and, per metric, the
mean and the range over all runs. With `--parallel K` (K > 1) runs share the machine K at a time,
each pinned with `taskset` to its own `--cores-per-run` cores; keep K = 1 on a 2-core machine.

    python bench/substrate.py --config configs/tasks-cpu.yaml --seeds 0 1 2 --threads 1 2
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def last_metrics(run_dir: Path) -> dict[str, float]:
    """The last logged value of every reasoning/* metric in the run's metrics.csv files."""
    out: dict[str, float] = {}
    for f in sorted(run_dir.rglob("metrics.csv")):
        with open(f, newline="") as fh:
            for row in csv.DictReader(fh):
                for k, v in row.items():
                    if k and k.startswith("reasoning/") and v not in ("", None):
                        out[k] = float(v)
    return out


def run_config(config: str, run_dir: Path) -> str:
    """The config as given, unless it pins a `SpineCheckpoint` dirpath: then a copy in `run_dir`
    whose checkpoint goes to `run_dir/spine` (runs of different seeds must not share one folder)."""
    import yaml
    cfg = yaml.safe_load(Path(config).read_text())
    cbs = (cfg.get("trainer") or {}).get("callbacks") or []
    pinned = [cb for cb in cbs if isinstance(cb, dict) and str(cb.get("class_path", "")).endswith("SpineCheckpoint")
              and (cb.get("init_args") or {}).get("dirpath")]
    if not pinned:
        return config
    for cb in pinned:
        cb["init_args"]["dirpath"] = str(run_dir / "spine")
    out = run_dir / "config.yaml"
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(out)


def level_metrics(run_dir: Path) -> dict[str, float]:
    """Per-level accuracy of the last trace of each pipeline (`reasoning/L<k>/<label>_acc`), and
    pass@n of sampled pipelines (any sample correct: the head-room that voting and RL can reach)."""
    from spine.traces import final_records, read_traces, summarize
    latest: dict[str, Path] = {}
    for f in sorted(run_dir.rglob("traces/*-step*.jsonl"), key=lambda f: int(f.stem.rsplit("-step", 1)[1])):
        latest[f.stem.rsplit("-step", 1)[0]] = f
    out: dict[str, float] = {}
    for label, f in latest.items():
        _, records = read_traces(f)
        for lv, s in summarize(records, group_by=("level",)).by_group.get("level", {}).items():
            out[f"reasoning/L{lv}/{label}_acc"] = s.accuracy
        if any(r.sample_index > 0 for r in records):
            by_pid: dict[str, list] = {}
            for r in records:
                by_pid.setdefault(r.problem_id, []).append(r)
            finals = final_records(records)
            for lv in sorted({str(finals[p].metadata.get("level")) for p in finals}):
                pids = [p for p in finals if str(finals[p].metadata.get("level")) == lv]
                out[f"reasoning/L{lv}/{label}_pass_acc"] = (
                    sum(any(r.correct for r in by_pid[p]) for p in pids) / max(len(pids), 1))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", default="runs/substrate")
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--cores-per-run", type=int, default=2)
    ap.add_argument("--spine", default=shutil.which("spine") or f"{sys.executable} -m modules.cli")
    ap.add_argument("extra", nargs="*", help="more `spine fit` arguments (after --)")
    a = ap.parse_args(argv)
    out = Path(a.out) / Path(a.config).stem
    jobs = [(s, t) for s in a.seeds for t in a.threads]
    running: list[tuple[subprocess.Popen, tuple[int, int], float, object]] = []
    free_slots = list(range(max(1, a.parallel)))
    results: dict[tuple[int, int], dict] = {}
    while jobs or running:
        while jobs and free_slots:
            seed, threads = jobs.pop(0)
            slot = free_slots.pop(0)
            run_dir = out / f"seed{seed}-threads{threads}"
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(parents=True)
            env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
            cmd = a.spine.split() + ["fit", "--config", run_config(a.config, run_dir), "--seed_everything", str(seed),
                                     "--trainer.default_root_dir", str(run_dir),
                                     "--trainer.logger.init_args.save_dir", str(run_dir), *a.extra]
            if a.parallel > 1:
                lo = slot * a.cores_per_run
                cmd = ["taskset", "-c", f"{lo}-{lo + a.cores_per_run - 1}", *cmd]
            log = open(run_dir / "fit.log", "w")
            print(f"[substrate] start seed={seed} threads={threads}: {' '.join(cmd)}", flush=True)
            running.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT),
                            (seed, threads, slot), time.time(), log))
        time.sleep(2)
        for item in list(running):
            proc, (seed, threads, slot), t0, log = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            free_slots.append(slot)
            run_dir = out / f"seed{seed}-threads{threads}"
            m = {**last_metrics(run_dir), **level_metrics(run_dir)}
            results[(seed, threads)] = {"rc": proc.returncode, "seconds": round(time.time() - t0, 1), **m}
            print(f"[substrate] done seed={seed} threads={threads} rc={proc.returncode} "
                  f"{time.time() - t0:.0f}s {json.dumps(m)}", flush=True)
    keys = sorted({k for r in results.values() for k in r if k.startswith("reasoning/")})
    print(f"\n{a.config}: {len(results)} runs (seeds {a.seeds} x threads {a.threads})")
    print("| seed | threads | wall s | " + " | ".join(k.removeprefix("reasoning/") for k in keys) + " |")
    print("|---|---|---|" + "---|" * len(keys))
    for (s, t), r in sorted(results.items()):
        print(f"| {s} | {t} | {r['seconds']} | " + " | ".join(f"{100 * r[k]:.1f}" if k in r else "-" for k in keys) + " |")
    for k in keys:
        vals = [100 * r[k] for r in results.values() if k in r]
        if vals:
            print(f"{k}: mean {statistics.mean(vals):.1f}, range {min(vals):.1f}-{max(vals):.1f} "
                  f"(spread {max(vals) - min(vals):.1f} points, {len(vals)} runs)")
    (out / "summary.json").write_text(json.dumps({f"{s}-{t}": r for (s, t), r in results.items()}, indent=1))
    return 0 if all(r["rc"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
