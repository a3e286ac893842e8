"""Pick the GPU substrate's pretraining length: for each step count, side by side on one GPU, the gpu
ladder's own pretrain and SFT commands (configs/ladder/gpu.yaml's vars) and a greedy eval of both on
its held-out problems; prints the step count whose SFT level-8 accuracy is nearest `--target`
(stdout: that number only; the table goes to stderr and OUT/calibration.md).

    python3 bench/h200_substrate_steps.py --steps 250 325 400 475 --out /tmp/calibrate
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from spine.reasoning.ladder_run import load_plan  # noqa: E402

LEVEL = re.compile(r"^\| level=(\d+) \| (\d+) \| (\d+) \|")


def spine(argv: list[str], log: Path) -> int:
    with open(log, "w", encoding="utf-8") as fh:
        return subprocess.call([sys.executable, "-m", "modules.cli", *argv], stdout=fh, stderr=subprocess.STDOUT)


def levels(log: Path) -> dict[str, float]:
    out = {}
    for line in log.read_text(encoding="utf-8").splitlines():
        m = LEVEL.match(line)
        if m:
            out[f"L{m.group(1)}"] = 100.0 * int(m.group(3)) / int(m.group(2))
    return out


def lane(steps: int, v: dict, out: Path) -> dict:
    d = out / f"s{steps}"
    d.mkdir(parents=True, exist_ok=True)
    ck = lambda p: ('--trainer.callbacks+={"class_path": "callbacks.SpineCheckpoint", "init_args": '  # noqa: E731
                    f'{{"dirpath": "{p}", "on_save": false}}}}')
    nocb = ["--trainer.logger", "false", "--trainer.enable_checkpointing", "false", "--trainer.callbacks", "[]"]
    evals = ["--problems", v["eval_problems"], *v["eval_args"]]
    row: dict = {"steps": steps}
    if spine(["fit", "--config", v["pretrain_config"], "--trainer.max_steps", str(steps),
              "--trainer.val_check_interval", str(steps), *nocb, ck(d / "pre")], d / "pretrain.log"):
        return {**row, "error": "pretrain failed"}
    spine(["eval", "--checkpoint", str(d / "pre/final"), *evals], d / "pretrain-greedy.log")
    if spine(["fit", "--config", v["sft_config"], "--model.init_args.init_from", str(d / "pre/final"),
              "--data.init_args.traces", "null", "--data.init_args.problems", v["sft_corpus"],
              "--model.init_args.export_dir", "null", *nocb, *v["sft_args"], ck(d / "sft")], d / "sft.log"):
        return {**row, "error": "sft failed"}
    spine(["eval", "--checkpoint", str(d / "sft/final"), *evals], d / "sft-greedy.log")
    return {**row, "pretrain": levels(d / "pretrain-greedy.log"), "sft": levels(d / "sft-greedy.log")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", required=True)
    ap.add_argument("--plan", default="configs/ladder/gpu.yaml")
    ap.add_argument("--level", default="L8")
    ap.add_argument("--target", type=float, default=45.0)
    ap.add_argument("--out", default="/tmp/calibrate")
    a = ap.parse_args()
    v = load_plan(a.plan)["vars"]
    out = Path(a.out)
    with ThreadPoolExecutor(len(a.steps)) as pool:
        rows = list(pool.map(lambda s: lane(s, v, out), a.steps))
    ok = [r for r in rows if a.level in r.get("sft", {})]
    lines = ["| pretrain steps | pretrained only | after SFT |", "|---:|---|---|"]
    lines += [f"| {r['steps']} | {r.get('pretrain', r.get('error'))} | {r.get('sft', '')} |" for r in rows]
    text = "\n".join(lines)
    (out / "calibration.md").write_text(text + "\n" + json.dumps(rows) + "\n", encoding="utf-8")
    print(text, file=sys.stderr)
    if not ok:
        sys.exit("no step count got through pretrain + SFT + eval")
    print(min(ok, key=lambda r: abs(r["sft"][a.level] - a.target))["steps"])


if __name__ == "__main__":
    main()
