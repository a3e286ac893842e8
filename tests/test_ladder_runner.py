"""The ladder's plan runner: placeholders, requirements, skips and failures, resume, commands run side
by side (`jobs`) in dependency order, `env`, and bad plans refused in one line (no real `spine` runs:
a fake executor stands in)."""
from __future__ import annotations

import hashlib
import sys
import threading
import time
from pathlib import Path

import pytest

from spine.reasoning.ladder_render import write_report
from spine.reasoning.ladder_run import load_plan, run_ladder

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "support"))
from ladder_fakes import fake_checkpoint, greedy, main_table, write_traces  # noqa: E402


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
            fake_checkpoint(Path(argv[argv.index("--out") + 1]), {"w": [2, 2]})
        else:
            write_traces(Path(argv[argv.index("--traces") + 1]), greedy({1: [1, 0]}, 3))
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
        assert {"pretrain", "sft", "grpo", "grpo-random", "student", "student-sft"} <= set(plan["models"])
        assert "student-kd" not in plan["models"]  # the distilled student *is* the logit-KD one
        names = [r["name"] for r in plan["rungs"]]
        assert {"sft-greedy", "sft-sc", "sft-bestofn", "sft-refine", "grpo-greedy", "grpo-sc",
                "grpo-random-greedy", "student-greedy", "student-sft-greedy"} <= set(names)


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


def test_runner_starts_a_ready_model_before_a_ready_rung(tmp_path):
    """With one slot free, a fit that later commands wait for goes before an evaluation that nothing waits
    for: `a` finishes while `b` holds the other slot, and `c` (a's child) starts before `a-greedy`. `b` holds
    its slot until `a-greedy` has started, so the order is forced, not timed."""
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(PARALLEL_PLAN.format(jobs=2))
    started: list[str] = []
    greedy_started = threading.Event()

    class Ordered(FakeSpine):
        def __call__(self, argv, log, env=None):
            key = Path(argv[argv.index("--out") + 1]).parent.name if "--out" in argv else Path(argv[-1]).stem
            started.append(key)
            if key == "a-greedy":
                greedy_started.set()
            if key == "b":
                assert greedy_started.wait(timeout=30)
            return super().__call__(argv, log, env)

    m = run_ladder(load_plan(plan_file), seed=0, out=tmp_path / "run", execute=Ordered(), repo=REPO, log=lambda s: None)
    assert all(v["status"] == "ok" for v in m["models"].values()) and all(r["status"] == "ok" for r in m["rungs"])
    assert started.index("c") < started.index("a-greedy")


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


CONFIG_PLAN = """
size: test
vars: {{cfg: "{cfg}"}}
models:
  a:
    checkpoint: a/ck
    steps: [[fit, --config, "{{cfg}}", --out, "{{model_dir}}/ck"]]
  free:
    checkpoint: free/ck
    steps: [[fit, --out, "{{model_dir}}/ck"]]
rungs:
  - {{name: a-greedy, model: a, argv: [eval, "{{ckpt:a}}", --traces, "{{traces}}"]}}
"""


def test_resume_reruns_a_step_whose_config_file_changed(tmp_path):
    """Same command line, edited `--config` file: the step and what reads its model run again; the
    untouched model is kept."""
    cfg = tmp_path / "stage.yaml"
    cfg.write_text("lr: 1\n")
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(CONFIG_PLAN.format(cfg=cfg))
    run = tmp_path / "run"
    m1 = run_ladder(load_plan(plan_file), seed=0, out=run, execute=FakeSpine(), repo=REPO, log=lambda s: None)
    assert next(s for s in m1["steps"] if s["id"] == "a")["configs"] == {str(cfg): hashlib.sha256(b"lr: 1\n").hexdigest()}
    same = FakeSpine()
    run_ladder(load_plan(plan_file), seed=0, out=run, execute=same, repo=REPO, log=lambda s: None)
    assert same.calls == []  # nothing changed: everything resumed
    cfg.write_text("lr: 2\n")
    edited = FakeSpine()
    m3 = run_ladder(load_plan(plan_file), seed=0, out=run, execute=edited, repo=REPO, log=lambda s: None)
    assert sorted(c[0] for c in edited.calls) == ["eval", "fit"]
    assert "--config" in next(c for c in edited.calls if c[0] == "fit")
    resumed = {s["id"]: s.get("resumed", False) for s in m3["steps"]}
    assert resumed == {"a": False, "a-greedy": False, "free": True}
