"""The reasoning ladder: its report recomputed from traces, its plan runner, and a shrunken ladder end to end.

Report numbers are checked against hand computations and against an independent reading of the raw
JSONL (no spine.traces): Wilson bounds as the roots of the interval's quadratic, z from NormalDist.
"""
from __future__ import annotations

import json
import math
import struct
import threading
import time
from pathlib import Path
from statistics import NormalDist

import pytest

from spine.reasoning import ladder as L
from spine.reasoning.ladder_render import write_report
from spine.reasoning.ladder_run import load_plan, run_ladder

REPO = Path(__file__).resolve().parents[1]
Z = NormalDist().inv_cdf(0.975)


def wilson_by_quadratic(k: int, n: int) -> tuple[float, float]:
    """Bounds p with (k/n - p)^2 = z^2 p (1 - p) / n, i.e. (1 + z²/n) p² - (2p̂ + z²/n) p + p̂² = 0 (percent)."""
    ph, c = k / n, Z * Z / n
    a, b, cc = 1 + c, -(2 * ph + c), ph * ph
    disc = math.sqrt(b * b - 4 * a * cc)
    return 100 * (-b - disc) / (2 * a), 100 * (-b + disc) / (2 * a)


# ----------------------------------------------------------------------------- hand-made run folders

def _record(pid: str, i: int, correct: bool, tokens: int, level: int, *, final: bool | None = None,
            extracted: str | None = "1", finish: str = "stop") -> dict:
    meta = {"level": level, "finish_reason": finish}
    if final is not None:
        meta["final"] = final
    return {"type": "record", "run_id": "r", "config_hash": "h", "checkpoint_sha256": None, "problem_id": pid,
            "sample_index": i, "prompt": "Q", "completion": "A", "extracted": extracted, "extraction_method": "box",
            "gold": "1", "correct": correct, "rule": "exact", "tokens": tokens, "seconds": 0.1, "metadata": meta}


def _write_traces(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"type": "header", "format": "spine-trace/1", "run_id": "r", "config_hash": "h", "config": {}}
    path.write_text("".join(json.dumps(o) + "\n" for o in [header, *records]))


def _fake_checkpoint(path: Path, shapes: dict[str, list[int]]) -> None:
    """A model.safetensors whose header declares `shapes` (float32, zero data)."""
    path.mkdir(parents=True, exist_ok=True)
    header, off = {}, 0
    for name, shape in shapes.items():
        size = 4 * math.prod(shape)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + size]}
        off += size
    blob = json.dumps(header).encode()
    (path / "model.safetensors").write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(off))


def _greedy(correct_by_level: dict[int, list[bool]], tokens: int) -> list[dict]:
    return [_record(f"L{lv}-{j}", 0, c, tokens, lv) for lv, cs in correct_by_level.items() for j, c in enumerate(cs)]


def _sc(rows: dict[int, list[tuple[bool, list[int], int]]]) -> list[dict]:
    """Per problem: (final verdict, tokens of each sample, index of the final sample)."""
    out = []
    for lv, probs in rows.items():
        for j, (ok, toks, fin) in enumerate(probs):
            for i, t in enumerate(toks):
                out.append(_record(f"L{lv}-{j}", i, ok if i == fin else not ok, t, lv, final=i == fin))
    return out


def make_run(root: Path, *, seed: int = 0, sft_greedy=None, sft_sc=None, grpo_greedy=None,
             models_extra: dict | None = None) -> Path:
    """A run folder as `spine ladder` leaves it: manifest, two checkpoints, ledgers, traces."""
    _fake_checkpoint(root / "sft/spine/final", {"wte": [10, 4], "w": [4, 4]})            # 56 parameters
    _fake_checkpoint(root / "grpo/spine/final", {"wte": [10, 4], "w": [4, 4], "b": [4]})  # 60
    (root / "sft/ledger.json").write_text(json.dumps({"tokens": 1000 + seed, "fit_seconds": 9.0}))
    (root / "grpo/ledger.json").write_text(json.dumps({"tokens": 500, "fit_seconds": 4.0}))
    _write_traces(root / "eval/sft-greedy.jsonl", _greedy(sft_greedy or {1: [1, 1, 1, 0], 2: [1, 0, 0, 0]}, 10))
    _write_traces(root / "eval/sft-sc.jsonl", _sc(sft_sc or {
        1: [(True, [5, 6, 7], 1), (True, [5, 5, 5], 0), (True, [4, 4, 4], 2), (True, [3, 3, 3], 0)],
        2: [(True, [9, 9], 0), (True, [8, 8, 8], 1), (False, [7, 7, 7], 0), (False, [6, 6, 6], 0)]}))
    _write_traces(root / "eval/grpo-greedy.jsonl", _greedy(grpo_greedy or {1: [1, 1, 1, 1], 2: [1, 1, 0, 0]}, 12))
    models = {
        "sft": {"parent": None, "checkpoint": "sft/spine/final", "ledger": "sft/ledger.json", "status": "ok",
                "note": "", "seconds": 20.0},
        "grpo": {"parent": "sft", "checkpoint": "grpo/spine/final", "ledger": "grpo/ledger.json", "status": "ok",
                 "note": "", "seconds": 5.0},
        "student": {"parent": "grpo", "teacher": "grpo", "checkpoint": "student/spine/final",
                    "ledger": "student/ledger.json", "status": "skipped", "note": "configs/x.yaml not found",
                    "seconds": None},
        **(models_extra or {}),
    }
    rungs = [
        {"name": "sft-greedy", "model": "sft", "method": "greedy", "traces": ["eval/sft-greedy.jsonl"], "status": "ok"},
        {"name": "sft-sc", "model": "sft", "method": "sc", "traces": ["eval/sft-sc.jsonl"], "status": "ok"},
        {"name": "sft-bestofn", "model": "sft", "method": "best-of-N", "traces": [], "status": "skipped",
         "note": "pipeline bestofn not available"},
        {"name": "grpo-greedy", "model": "grpo", "method": "greedy", "traces": ["eval/grpo-greedy.jsonl"],
         "status": "ok"},
        {"name": "student-greedy", "model": "student", "method": "greedy", "traces": [], "status": "skipped",
         "note": "model student skipped"},
    ]
    targets = [{"name": "sc", "rung": "sft-sc", "baseline": "sft-greedy", "min_gain": 30},
               {"name": "grpo", "rung": "grpo-greedy", "baseline": "sft-greedy", "min_gain": 10},
               {"name": "control", "rung": "grpo-greedy", "baseline": "sft-greedy", "max_gain": 2},
               {"name": "student", "rung": "student-greedy", "baseline": "grpo-greedy", "min_ratio": 0.9},
               {"name": "ratio", "rung": "sft-greedy", "baseline": "grpo-greedy", "min_ratio": 0.9}]
    manifest = {"format": L.FORMAT, "size": "cpu", "seed": seed, "harder_level": "2", "baseline": "sft-greedy",
                "models": models, "rungs": rungs, "targets": targets, "wall_seconds": 30.0, "budget_seconds": 900}
    (root / L.MANIFEST).write_text(json.dumps(manifest))
    return root


def main_table(md: str) -> list[str]:
    """The rows of the report's first table (the ladder itself; later sections repeat rung names)."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| rung |"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


# ----------------------------------------------------------------------------- report: hand computations

def test_report_numbers_equal_hand_computation(tmp_path):
    rep = L.run_report(make_run(tmp_path / "run"))
    g, sc, gr = rep.row("sft-greedy"), rep.row("sft-sc"), rep.row("grpo-greedy")
    assert rep.levels == ["1", "2", "all"] and rep.harder == "2"
    # sft-greedy: L1 3/4, L2 1/4, all 4/8; 10 tokens a problem
    assert (g.stats.levels["1"].k, g.stats.levels["1"].n) == (3, 4)
    assert g.stats.levels["1"].acc == pytest.approx(75.0)
    assert g.stats.levels["2"].acc == pytest.approx(25.0)
    assert g.stats.levels["all"].acc == pytest.approx(50.0)
    for lv, (k, n) in {"1": (3, 4), "2": (1, 4), "all": (4, 8)}.items():
        assert g.stats.levels[lv].ci == pytest.approx(wilson_by_quadratic(k, n), abs=1e-9)
    assert g.stats.tokens_per_problem == pytest.approx(10.0)
    # sft-sc: the final sample's verdict counts (L1 4/4, L2 2/4); tokens = every sample / problems
    assert sc.stats.levels["1"].acc == pytest.approx(100.0) and sc.stats.levels["2"].acc == pytest.approx(50.0)
    sample_tokens = (5 + 6 + 7) + 15 + 12 + 9 + (9 + 9) + 24 + 21 + 18
    assert sc.stats.tokens_per_problem == pytest.approx(sample_tokens / 8)
    assert sc.gain == pytest.approx({"1": 25.0, "2": 25.0, "all": 25.0})
    assert gr.gain == pytest.approx({"1": 25.0, "2": 25.0, "all": 25.0})
    assert g.gain == pytest.approx({"1": 0.0, "2": 0.0, "all": 0.0})
    # cost: parameters from the safetensors header, tokens from the ledger, seconds from the chain
    assert (g.params, gr.params) == (56, 60)
    assert (g.train_tokens, gr.train_tokens) == (1000, 500)
    assert (g.stage_seconds, g.chain_seconds) == (20.0, 20.0)
    assert (gr.stage_seconds, gr.chain_seconds) == (5.0, 25.0)
    assert rep.row("sft-bestofn").stats is None and rep.row("sft-bestofn").note == "pipeline bestofn not available"


def test_markdown_rows_targets_and_notes(tmp_path):
    run = make_run(tmp_path / "run")
    md_path, png = write_report([run])
    md = md_path.read_text()
    lo, hi = wilson_by_quadratic(3, 4)
    assert f"75.0% [{lo:.1f}–{hi:.1f}] (n=4)" in md
    for name in ("sft-greedy", "sft-sc", "sft-bestofn", "grpo-greedy", "student-greedy"):
        assert sum(line.startswith(f"| {name} |") for line in main_table(md)) == 1
    assert "*not run: pipeline bestofn not available*" in md
    # targets on level 2: sc +25 < +30 (missed by 5.0), grpo +25 >= +10, control +25 > +2 (exceeded by 23.0),
    # student not measured, sft/grpo = 25/50 = 50% of 90% (missed by 40 percentage points = 20 accuracy points)
    assert "**sc** — MISSED: +25.0 points (target >= +30): missed by 5.0 points" in md
    assert "**grpo** — met: +25.0 points" in md
    assert "**control** — MISSED: +25.0 points (target <= +2): exceeded by 23.0 points" in md
    assert "**student** — not measured: rung student-greedy skipped: model student skipped" in md
    assert "missed by 40.0 percentage points of the baseline (20.0 accuracy points)" in md
    assert png.stat().st_size > 0 and png.read_bytes()[:4] == b"\x89PNG"


def test_student_share_of_teacher_parameters(tmp_path):
    run = make_run(tmp_path / "run", models_extra={"student": {
        "parent": "grpo", "teacher": "grpo", "checkpoint": "student/spine/final", "status": "ok", "seconds": 1.0}})
    _fake_checkpoint(run / "student/spine/final", {"w": [3, 5]})  # 15 of the teacher's 60 parameters
    m = json.loads((run / L.MANIFEST).read_text())
    m["rungs"][-1].update(status="ok", traces=["eval/student.jsonl"], note="")
    (run / L.MANIFEST).write_text(json.dumps(m))
    _write_traces(run / "eval/student.jsonl", _greedy({1: [1, 1, 1, 0], 2: [1, 1, 0, 0]}, 7))
    md = write_report([run])[0].read_text()
    assert "- student: 15 parameters = 25.0% of its teacher grpo (60)" in md
    # student L2 50% vs teacher L2 50%: ratio 100% >= 90%
    assert "**student** — met: 50.0% vs 50.0% = 100.0% (target >= 90%)" in md


def test_multi_seed_mean_and_range(tmp_path):
    a = make_run(tmp_path / "s0", seed=0)
    b = make_run(tmp_path / "s1", seed=1, sft_greedy={1: [1, 1, 1, 1], 2: [1, 1, 0, 0]},
                 grpo_greedy={1: [1, 1, 1, 1], 2: [1, 1, 1, 1]})
    agg = {r.name: r for r in L.aggregate([L.run_report(a), L.run_report(b)])}
    g = agg["sft-greedy"]
    assert g.runs == 2
    assert g.acc["2"].values == pytest.approx([25.0, 50.0])
    assert (g.acc["2"].mean, g.acc["2"].lo, g.acc["2"].hi) == pytest.approx((37.5, 25.0, 50.0))
    assert g.acc["all"].mean == pytest.approx((50.0 + 75.0) / 2)
    gr = agg["grpo-greedy"]
    assert gr.gain["2"].values == pytest.approx([25.0, 50.0])      # 50-25, 100-50
    assert g.train_tokens.values == [1000, 1001]
    assert agg["sft-bestofn"].runs == 0 and agg["sft-bestofn"].notes == ["skipped: pipeline bestofn not available"]
    md, _ = write_report([a, b], tmp_path / "both")
    text = md.read_text()
    assert "37.5% (25.0%–50.0%)" in text
    assert "Mean and range (min–max) over 2 runs (seeds 0, 1)" in text
    # targets use the means: grpo-greedy L2 mean 75.0 over sft mean 37.5 = +37.5
    assert "**grpo** — met: +37.5 points" in text


def test_report_refuses_paths_outside_the_run_and_bad_manifests(tmp_path):
    run = make_run(tmp_path / "run")
    m = json.loads((run / L.MANIFEST).read_text())
    m["rungs"][0]["traces"] = ["../../etc/passwd"]
    (run / L.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ValueError, match="outside the run folder"):
        L.run_report(run)
    m["rungs"][0]["traces"] = ["/etc/passwd"]
    (run / L.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ValueError, match="outside the run folder"):
        L.run_report(run)
    with pytest.raises(ValueError, match="not a ladder run folder"):
        L.run_report(tmp_path)
    (tmp_path / L.MANIFEST).write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="format must be"):
        L.run_report(tmp_path)
    with pytest.raises(ValueError, match="give --out"):
        write_report([run, run])


def test_count_parameters_equals_model(tmp_path):
    from spine.checkpoint import save_checkpoint
    from spine.model import GPT

    model = GPT.from_preset("gpt2-tiny", d_model=32, n_layer=2, n_head=2, vocab_size=257, context_length=64)
    save_checkpoint(tmp_path / "ck", model)
    assert L.count_parameters(tmp_path / "ck") == model.num_params()


# ----------------------------------------------------------------------------- plan runner (fake commands)

PLAN = """
size: test
harder_level: "1"
vars:
  probs: "task:arith:level=1,n=4,seed=0,split=eval"
  extra: [--a, "1", --b, "{probs}"]
  nested: "x-{probs}"
models:
  base:
    checkpoint: base/ck
    steps: [[fit, --out, "{model_dir}/ck", "{extra}"]]
  tuned:
    parent: base
    checkpoint: tuned/ck
    steps: [[fit, --init, "{ckpt:base}", --out, "{model_dir}/ck", --n, "{nested}"]]
  broken:
    parent: tuned
    checkpoint: broken/ck
    steps: [[fit, --fail]]
  later:
    requires: ["file:configs/not-landed.yaml"]
    checkpoint: later/ck
    steps: [[fit, --out, "{model_dir}/ck"]]
  child:
    parent: [broken, tuned]
    teacher: parent
    checkpoint: child/ck
    steps: [[fit, --teacher, "{ckpt:parent}", --out, "{model_dir}/ck"]]
rungs:
  - {name: base-greedy, model: base, argv: [eval, "{ckpt:base}", --traces, "{traces}"]}
  - {name: tuned-greedy, model: tuned, argv: [eval, "{ckpt:tuned}", --traces, "{traces}"]}
  - {name: tuned-fancy, model: tuned, requires: ["pipeline:no-such-pipeline"], argv: [eval, x]}
  - {name: broken-greedy, model: broken, argv: [eval, "{ckpt:broken}", --traces, "{traces}"]}
  - {name: later-greedy, model: later, argv: [eval, "{ckpt:later}", --traces, "{traces}"]}
  - {name: child-greedy, model: child, argv: [eval, "{ckpt:child}", --traces, "{traces}"]}
targets:
  - {rung: child-greedy, baseline: "{parent:child}-greedy", min_ratio: 0.9}
"""


class FakeSpine:
    """Stands in for `spine`: `fit --out D` writes a checkpoint, `eval ... --traces F` writes traces."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str], log: Path, env: dict | None = None) -> int:
        self.calls.append(argv)
        log.write_text(" ".join(argv))
        if "--fail" in argv:
            return 1
        if argv[0] == "fit":
            _fake_checkpoint(Path(argv[argv.index("--out") + 1]), {"w": [2, 2]})
        else:
            _write_traces(Path(argv[argv.index("--traces") + 1]), _greedy({1: [1, 0]}, 3))
        return 0


def test_runner_fills_skips_fails_and_records(tmp_path):
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(PLAN)
    fake = FakeSpine()
    run = tmp_path / "run"
    m = run_ladder(load_plan(plan_file), seed=3, out=run, execute=fake, repo=REPO, log=lambda s: None)
    st = {k: (v["status"], v["note"]) for k, v in m["models"].items()}
    assert st["base"][0] == st["tuned"][0] == "ok"
    assert st["broken"][0] == "failed" and "exited 1" in st["broken"][1]
    assert st["later"] == ("skipped", "configs/not-landed.yaml not found (stage not landed)")
    assert st["child"][0] == "ok" and m["models"]["child"]["parent"] == "tuned"  # first parent that is ok
    assert m["models"]["child"]["teacher"] == "tuned"
    rs = {r["name"]: (r["status"], r["note"]) for r in m["rungs"]}
    assert rs["tuned-fancy"] == ("skipped", "pipeline no-such-pipeline not available")
    assert rs["broken-greedy"][0] == "skipped" and "model broken failed" in rs["broken-greedy"][1]
    assert rs["base-greedy"][0] == rs["child-greedy"][0] == "ok"
    assert m["targets"][0]["baseline"] == "tuned-greedy"
    fit_base = fake.calls[0]
    # a list var is spliced (with its own placeholders filled); every fit gets the ledger callback
    assert fit_base[:7] == ["fit", "--out", str(run / "base/ck"), "--a", "1", "--b", "task:arith:level=1,n=4,seed=0,split=eval"]
    assert "callbacks.ledger.TrainingLedger" in fit_base[-1] and str(run / "base/ledger.json") in fit_base[-1]
    tuned = fake.calls[2]
    assert tuned[:5] == ["fit", "--init", str(run / "base/ck"), "--out", str(run / "tuned/ck")]
    assert tuned[6] == "x-task:arith:level=1,n=4,seed=0,split=eval"
    # every rung has a row in the report, with the reason when it did not run
    md = write_report([run])[0].read_text()
    for name in rs:
        assert sum(line.startswith(f"| {name} |") for line in main_table(md)) == 1
    assert "not run: pipeline no-such-pipeline not available" in md
    # a rerun of the same plan and seed resumes: the failed step runs again and so does everything that
    # reads it (here: all later steps); the earlier outputs it would overwrite are moved aside, not deleted
    fake2 = FakeSpine()
    m2 = run_ladder(load_plan(plan_file), seed=3, out=run, execute=fake2, repo=REPO, log=lambda s: None)
    assert [c[:2] for c in fake2.calls] == [["fit", "--fail"], ["fit", "--teacher"], ["eval", str(run / "child/ck")]]
    assert [s["id"] for s in m2["steps"]] == [s["id"] for s in m["steps"]]
    assert [s.get("resumed", False) for s in m2["steps"]] == [True] * 4 + [False] * 3
    stale = sorted(p.name.split(".")[0] for p in (run / "stale").iterdir())
    assert stale == ["child", "child-greedy"] and (run / "child/ck/model.safetensors").is_file()
    # another seed into the same folder is refused; so is a folder that holds something else
    with pytest.raises(ValueError, match="another plan or seed"):
        run_ladder(load_plan(plan_file), seed=4, out=run, execute=fake, repo=REPO, log=lambda s: None)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="not a ladder run folder"):
        run_ladder(load_plan(plan_file), seed=3, out=tmp_path / "mine", execute=fake, repo=REPO, log=lambda s: None)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


@pytest.mark.parametrize("edit,message", [
    (lambda p: p.replace('"{probs}"]', '"{nope}"]', 1), "unknown placeholder {nope}"),
    (lambda p: p.replace('nested: "x-{probs}"', 'nested: "x-{nested}"'), "loop"),
    (lambda p: p.replace("parent: base\n", "parent: ghost\n", 1), "parent 'ghost' is not a model"),
    (lambda p: p.replace('"{ckpt:base}", --out', '"{ckpt:ghost}", --out', 1), "{ckpt:ghost} names no model"),
    (lambda p: p.replace("min_ratio: 0.9", "wrong: 1"), "min_gain/max_gain/min_ratio"),
    (lambda p: p.replace("name: tuned-fancy", "name: base-greedy"), "appears twice"),
])
def test_bad_plans_fail_in_one_line(tmp_path, edit, message):
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(edit(PLAN))
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")) as e:
        load_plan(plan_file)
    assert "\n" not in str(e.value)


def test_shipped_plans_load():
    for size in ("cpu", "gpu", "tiny"):
        plan = load_plan(REPO / "configs" / "ladder" / f"{size}.yaml")
        assert {"pretrain", "sft", "grpo", "grpo-random", "student"} <= set(plan["models"])
        names = [r["name"] for r in plan["rungs"]]
        assert {"sft-greedy", "sft-sc", "sft-bestofn", "sft-refine", "grpo-greedy", "grpo-sc",
                "grpo-random-greedy", "student-greedy", "student-sft-greedy", "student-kd-greedy"} <= set(names)


def test_extends_chain_resolves_each_file_relative_to_itself(tmp_path):
    # a user's plan elsewhere extends the shipped gpu plan, which itself extends cpu.yaml beside it
    mine = tmp_path / "mine.yaml"
    mine.write_text(f"extends: {REPO / 'configs' / 'ladder' / 'gpu.yaml'}\nvars: {{device: cpu}}\n")
    plan = load_plan(mine)
    assert plan["vars"]["device"] == "cpu" and plan["size"] == "gpu" and "student" in plan["models"]


def test_ladder_outside_the_repo_root_is_one_line(tmp_path, monkeypatch, capsys):
    from spine.commands import main

    monkeypatch.chdir(tmp_path)  # no configs/ here: every stage would be skipped as "not landed"
    assert main(["ladder", "--size", "tiny", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "run it from the repository root" in err
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- the shrunken ladder, end to end

def _in_process(argv: list[str], log: Path, env: dict | None = None) -> int:
    import sys

    sys.path.insert(0, str(REPO / "tests" / "support"))
    from fit_runner import run_in_process

    code, out = run_in_process(argv)
    log.write_text("$ spine " + " ".join(argv) + "\n" + out)
    return int(code or 0)


def _independent(path: Path) -> dict:
    """Per level (and 'all'): (correct, problems); and tokens per problem — straight from the JSONL."""
    recs = [json.loads(x) for x in path.read_text().splitlines()[1:] if x.strip()]
    by_pid: dict[str, list[dict]] = {}
    for r in recs:
        by_pid.setdefault(r["problem_id"], []).append(r)
    counts: dict[str, list[int]] = {}
    for rs in by_pid.values():
        flagged = [r for r in rs if r["metadata"].get("final") is True]
        fin = flagged[-1] if flagged else min(rs, key=lambda r: r["sample_index"])
        for key in (str(fin["metadata"]["level"]), "all"):
            c = counts.setdefault(key, [0, 0])
            c[0] += bool(fin["correct"])
            c[1] += 1
    tokens = sum(r["tokens"] for r in recs if r["sample_index"] >= 0)
    return {"levels": counts, "tokens_per_problem": tokens / len(by_pid)}


def test_shrunken_ladder_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # plans name configs relative to the repository root, as a user runs them
    plan = load_plan(REPO / "configs/ladder/tiny.yaml",
                     {"pretrain_args": ["--trainer.max_steps", "8"]})
    run = tmp_path / "ladder"
    m = run_ladder(plan, seed=0, out=run, plan_name="configs/ladder/tiny.yaml", execute=_in_process, repo=REPO,
                   log=lambda s: None)
    failed = [(n, v["note"]) for n, v in m["models"].items() if v["status"] == "failed"]
    failed += [(r["name"], r["note"]) for r in m["rungs"] if r["status"] == "failed"]
    assert not failed, failed
    assert m["models"]["pretrain"]["status"] == "ok"
    md_path, png = write_report([run])
    md = main_table(md_path.read_text())
    rep = L.run_report(run)
    for r in m["rungs"]:
        rows = [line for line in md if line.startswith(f"| {r['name']} |")]
        assert len(rows) == 1, r["name"]
        if r["status"] != "ok":
            assert "not run:" in rows[0] and r["note"] and r["note"] in rows[0]
            continue
        ind = _independent(run / r["traces"][0])
        row = rep.row(r["name"])
        assert row.stats.tokens_per_problem == pytest.approx(ind["tokens_per_problem"])
        assert f"| {ind['tokens_per_problem']:.1f} |" in rows[0]
        for lv, (k, n) in ind["levels"].items():
            st = row.stats.levels[lv]
            assert (st.k, st.n) == (k, n)
            lo, hi = wilson_by_quadratic(k, n)
            assert st.ci == pytest.approx((lo, hi), abs=1e-9)
            assert f"{100 * k / n:.1f}% [{lo:.1f}–{hi:.1f}] (n={n})" in rows[0]
    measured = [r for r in m["rungs"] if r["status"] == "ok"]
    assert measured and rep.row("pretrain-greedy").params == json.loads((run / "pretrain/ledger.json").read_text())["parameters"]
    assert png.read_bytes()[:4] == b"\x89PNG"


PARALLEL_PLAN = """
size: test
jobs: {jobs}
env: {{SPINE_NUM_THREADS: 1}}
vars: {{}}
models:
  a:
    checkpoint: a/ck
    steps: [[fit, --out, "{{model_dir}}/ck"]]
  b:
    checkpoint: b/ck
    steps: [[fit, --out, "{{model_dir}}/ck"]]
  c:
    parent: a
    checkpoint: c/ck
    steps: [[fit, --init, "{{ckpt:parent}}", --out, "{{model_dir}}/ck"]]
  d:
    checkpoint: d/ck
    steps: [[fit, --teacher, "{{ckpt:b}}", --out, "{{model_dir}}/ck"]]
rungs:
  - {{name: a-greedy, model: a, argv: [eval, "{{ckpt:a}}", --traces, "{{traces}}"]}}
  - {{name: d-greedy, model: d, argv: [eval, "{{ckpt:d}}", --traces, "{{traces}}"]}}
"""


class TimedSpine(FakeSpine):
    """FakeSpine that records when each command ran (by model folder or trace name), fails a command whose
    input checkpoint (--init/--teacher) does not exist yet, and makes `a` and `b` meet at a barrier: they
    only get past it if they run at the same time."""

    def __init__(self, meet: bool):
        super().__init__()
        self.spans: dict[str, tuple[float, float]] = {}
        self.envs: list[dict] = []
        self.barrier = threading.Barrier(2, timeout=30) if meet else None

    def __call__(self, argv, log, env=None):
        t0 = time.perf_counter()
        self.envs.append(dict(env or {}))
        key = Path(argv[argv.index("--out") + 1]).parent.name if "--out" in argv else Path(argv[-1]).stem
        for flag in ("--init", "--teacher"):
            if flag in argv and not (Path(argv[argv.index(flag) + 1]) / "model.safetensors").is_file():
                return 1
        if self.barrier is not None and key in ("a", "b"):
            self.barrier.wait()
        time.sleep(0.05)
        code = super().__call__(argv, log, env)
        self.spans[key] = (t0, time.perf_counter())
        return code


@pytest.mark.parametrize("jobs", [1, 6])
def test_runner_runs_independent_models_side_by_side(tmp_path, jobs):
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(PARALLEL_PLAN.format(jobs=jobs))
    fake = TimedSpine(meet=jobs > 1)  # with one job at a time a barrier would deadlock (and time out)
    m = run_ladder(load_plan(plan_file), seed=0, out=tmp_path / "run", execute=fake, repo=REPO, log=lambda s: None)
    # every command found its inputs: nothing started before the models it reads had finished
    assert all(v["status"] == "ok" for v in m["models"].values()), m["models"]
    assert all(r["status"] == "ok" for r in m["rungs"])
    s = fake.spans
    assert s["c"][0] >= s["a"][1] and s["d"][0] >= s["b"][1] and s["a-greedy"][0] >= s["a"][1]
    if jobs == 1:  # the plan's order, one at a time
        assert sorted(s, key=lambda k: s[k][0]) == ["a", "a-greedy", "b", "c", "d", "d-greedy"]
        spans = sorted(s.values())
        assert all(x[1] <= y[0] for x, y in zip(spans, spans[1:]))
    # (jobs 6: a and b met at the barrier, so they ran side by side)
    assert fake.envs and all(e == {"SPINE_NUM_THREADS": "1"} for e in fake.envs)
    assert m["jobs"] == jobs and m["env"] == {"SPINE_NUM_THREADS": "1"}
    logs = [st["log"] for st in m["steps"]]
    assert len(set(logs)) == len(logs) == 6  # every command its own log, even when they run at once


RESUME_PLAN = """
size: test
jobs: {jobs}
vars: {{init: "{{ckpt:a}}"}}
models:
  a:
    checkpoint: a/ck
    steps: [[fit, --out, "{{model_dir}}/ck"], [fit, --fail-once, "{{model_dir}}/marker"]]
  b:
    checkpoint: b/ck
    steps: [[fit, --init, "{{init}}", --out, "{{model_dir}}/ck"]]
  free:
    checkpoint: free/ck
    steps: [[fit, --out, "{{model_dir}}/ck"]]
rungs:
  - {{name: b-greedy, model: b, argv: [eval, "{{ckpt:b}}", --traces, "{{traces}}"]}}
  - {{name: free-greedy, model: free, argv: [eval, "{{ckpt:free}}", --traces, "{{traces}}"]}}
"""


class OnceSpine(TimedSpine):
    """`--fail-once MARKER` fails until MARKER exists (it is written on the first, failing call)."""

    def __call__(self, argv, log, env=None):
        if "--fail-once" in argv:
            self.calls.append(argv)
            marker = Path(argv[argv.index("--fail-once") + 1])
            if not marker.exists():
                marker.write_text("x")
                return 1
            return 0
        return super().__call__(argv, log, env)


@pytest.mark.parametrize("jobs", [1, 3])
def test_runner_resumes_what_did_not_change_and_skips_what_cannot_run(tmp_path, jobs):
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(RESUME_PLAN.format(jobs=jobs))
    run = tmp_path / "run"
    m = run_ladder(load_plan(plan_file), seed=0, out=run, execute=OnceSpine(False), repo=REPO, log=lambda s: None)
    st = {k: (v["status"], v["note"]) for k, v in m["models"].items()}
    assert st["a"][0] == "failed" and "step 1 exited 1" in st["a"][1]
    # b reads a's checkpoint through a var: it waits for a, and a failed model keeps it from running
    assert st["b"] == ("skipped", "needs a (failed)")
    assert st["free"][0] == "ok"
    rs = {r["name"]: r["status"] for r in m["rungs"]}
    assert rs == {"b-greedy": "skipped", "free-greedy": "ok"}
    # rerun: a's first step is kept (finished, same command), its failed second step runs again; b runs
    # now; free and its rung read nothing that changed, so they are skipped as done
    fake2 = OnceSpine(False)
    m2 = run_ladder(load_plan(plan_file), seed=0, out=run, execute=fake2, repo=REPO, log=lambda s: None)
    ran = sorted(c[1] if c[0] == "fit" else Path(c[1]).parent.name for c in fake2.calls)
    assert ran == ["--fail-once", "--init", "b"], fake2.calls
    assert all(v["status"] == "ok" for v in m2["models"].values())
    resumed = {s["id"]: s.get("resumed", False) for s in m2["steps"]}
    assert resumed["a"] and resumed["free"] and resumed["free-greedy"] and not resumed["a.1"] and not resumed["b"]


def test_runner_refuses_a_dependency_loop_and_bad_jobs(tmp_path):
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(PARALLEL_PLAN.format(jobs=2).replace("  a:\n", "  a:\n    parent: c\n"))
    with pytest.raises(ValueError, match="models read each other in a loop: a -> c -> a"):
        load_plan(plan_file)
    plan_file.write_text(PARALLEL_PLAN.format(jobs=2).replace("  a:\n", "  a:\n    parent: a\n"))
    with pytest.raises(ValueError, match="models.a names itself as its parent or teacher"):
        load_plan(plan_file)
    # a loop through a var is a loop too
    plan_file.write_text(PARALLEL_PLAN.format(jobs=2).replace("vars: {}", 'vars: {via: "{ckpt:c}"}')
                         .replace('[[fit, --out, "{model_dir}/ck"]]', '[[fit, --x, "{via}", --out, "{model_dir}/ck"]]', 1))
    with pytest.raises(ValueError, match="loop: a -> c -> a"):
        load_plan(plan_file)
    plan_file.write_text(PARALLEL_PLAN.format(jobs=0))
    with pytest.raises(ValueError, match="jobs must be a positive integer, got 0"):
        load_plan(plan_file)
