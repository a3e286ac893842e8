"""The reasoning ladder: its report recomputed from traces, and a shrunken ladder end to end (the plan
runner itself: tests/test_ladder_runner.py).

Report numbers are checked against hand computations and against an independent reading of the raw
JSONL (no spine.traces): Wilson bounds as the roots of the interval's quadratic, z from NormalDist.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from statistics import NormalDist

import pytest
import torch

from spine.reasoning import ladder as L
from spine.reasoning.ladder_render import write_report
from spine.reasoning.ladder_run import load_plan, run_ladder

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "support"))
from ladder_fakes import fake_checkpoint, greedy, main_table, record, write_traces  # noqa: E402
Z = NormalDist().inv_cdf(0.975)


def wilson_by_quadratic(k: int, n: int) -> tuple[float, float]:
    """Bounds p with (k/n - p)^2 = z^2 p (1 - p) / n, i.e. (1 + z²/n) p² - (2p̂ + z²/n) p + p̂² = 0 (percent)."""
    ph, c = k / n, Z * Z / n
    a, b, cc = 1 + c, -(2 * ph + c), ph * ph
    disc = math.sqrt(b * b - 4 * a * cc)
    return 100 * (-b - disc) / (2 * a), 100 * (-b + disc) / (2 * a)


# ----------------------------------------------------------------------------- hand-made run folders

def _sc(rows: dict[int, list[tuple[bool, list[int], int]]]) -> list[dict]:
    """Per problem: (final verdict, tokens of each sample, index of the final sample)."""
    out = []
    for lv, probs in rows.items():
        for j, (ok, toks, fin) in enumerate(probs):
            for i, t in enumerate(toks):
                out.append(record(f"L{lv}-{j}", i, ok if i == fin else not ok, t, lv, final=i == fin))
    return out


def make_run(root: Path, *, seed: int = 0, sft_greedy=None, sft_sc=None, grpo_greedy=None,
             models_extra: dict | None = None) -> Path:
    """A run folder as `spine ladder` leaves it: manifest, two checkpoints, ledgers, traces."""
    fake_checkpoint(root / "sft/spine/final", {"wte": [10, 4], "w": [4, 4]})            # 56 parameters
    fake_checkpoint(root / "grpo/spine/final", {"wte": [10, 4], "w": [4, 4], "b": [4]})  # 60
    (root / "sft/ledger.json").write_text(json.dumps({"tokens": 1000 + seed, "fit_seconds": 9.0}))
    (root / "grpo/ledger.json").write_text(json.dumps({"tokens": 500, "fit_seconds": 4.0}))
    write_traces(root / "eval/sft-greedy.jsonl", greedy(sft_greedy or {1: [1, 1, 1, 0], 2: [1, 0, 0, 0]}, 10))
    write_traces(root / "eval/sft-sc.jsonl", _sc(sft_sc or {
        1: [(True, [5, 6, 7], 1), (True, [5, 5, 5], 0), (True, [4, 4, 4], 2), (True, [3, 3, 3], 0)],
        2: [(True, [9, 9], 0), (True, [8, 8, 8], 1), (False, [7, 7, 7], 0), (False, [6, 6, 6], 0)]}))
    write_traces(root / "eval/grpo-greedy.jsonl", greedy(grpo_greedy or {1: [1, 1, 1, 1], 2: [1, 1, 0, 0]}, 12))
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


def test_rung_against_baseline_problem_by_problem(tmp_path):
    run = make_run(tmp_path / "run")
    rep = L.run_report(run)
    sc, g = rep.row("sft-sc").stats, rep.row("sft-greedy").stats
    # level 2: sc's finals right, right, wrong, wrong; greedy's right, wrong, wrong, wrong
    p = L.paired(sc, g, "2", ("sft-sc", "sft-greedy"))
    assert (p.problems, p.both, p.fixed, p.broken, p.neither) == (4, 1, 1, 0, 2)
    # sc's level-2 samples (a non-final sample's verdict is the opposite of its problem's final one in make_run):
    # [T, F], [F, T, F], [F, T, T], [F, T, T] -> 6 of 11 right, 2.75 per problem
    assert p.sample_acc == pytest.approx(100 * 6 / 11) and p.samples_per_problem == pytest.approx(11 / 4)
    # a greedy rung draws one sample per problem: no sample column
    q = L.paired(rep.row("grpo-greedy").stats, g, "2", ("grpo-greedy", "sft-greedy"))
    assert (q.both, q.fixed, q.broken, q.neither, q.sample_acc) == (1, 1, 0, 2, None)
    assert L.paired(sc, g, "9", ("sft-sc", "sft-greedy")) is None
    md = write_report([run])[0].read_text()
    assert "| sft-sc vs sft-greedy | 4 | 1 | 1 | 0 | 2 | +1 | 54.5% of 2.8 per problem (baseline's answers: 25.0%) |" in md
    # one line per distinct pair, although two targets compare grpo-greedy with sft-greedy
    assert sum(line.startswith("| grpo-greedy vs sft-greedy |") for line in md.splitlines()) == 1


def test_plot_marks_each_method_and_colours_each_model(tmp_path, monkeypatch):
    import matplotlib.axes

    from spine.reasoning.ladder_render import render_png
    calls = []
    real = matplotlib.axes.Axes.errorbar
    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar",
                        lambda self, *a, **kw: calls.append(kw) or real(self, *a, **kw))
    render_png([L.run_report(make_run(tmp_path / "run"))], tmp_path / "p.png")
    by = {kw["label"]: kw for kw in calls[:3]}  # the first panel: sft-greedy, sft-sc, grpo-greedy
    assert by["sft-greedy"]["fmt"] != by["sft-sc"]["fmt"]            # greedy vs sc: two markers
    assert by["sft-greedy"]["fmt"] == by["grpo-greedy"]["fmt"]       # one method, one marker
    assert by["sft-greedy"]["color"] == by["sft-sc"]["color"] != by["grpo-greedy"]["color"]  # one model, one colour


def test_student_share_of_teacher_parameters(tmp_path):
    run = make_run(tmp_path / "run", models_extra={"student": {
        "parent": "grpo", "teacher": "grpo", "checkpoint": "student/spine/final", "status": "ok", "seconds": 1.0}})
    fake_checkpoint(run / "student/spine/final", {"w": [3, 5]})  # 15 of the teacher's 60 parameters
    m = json.loads((run / L.MANIFEST).read_text())
    m["rungs"][-1].update(status="ok", traces=["eval/student.jsonl"], note="")
    (run / L.MANIFEST).write_text(json.dumps(m))
    write_traces(run / "eval/student.jsonl", greedy({1: [1, 1, 1, 0], 2: [1, 1, 0, 0]}, 7))
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
    recs = [json.loads(x) for x in path.read_text().split("\n")[1:] if x.strip()]
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
    # the run records the host its CPU bits came from, and the report names it
    assert m["host"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert f"host: {m['host']['cpu']} (" in md_path.read_text()
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

