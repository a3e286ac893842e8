"""Task families: determinism, disjoint splits by construction, the difficulty dial, worked solutions
that verify, wrong and hostile answers rejected, spec strings, and the hooks (problems, sources, pipelines)."""
from __future__ import annotations

import re

import pytest

from spine.reasoning.pipelines import SingleSample
from spine.reasoning.pipelines import Completion as PipelineCompletion
from spine.reasoning.problems import Problem, load_problems
from spine.reasoning.tasks import TASKS, VerifyResult, get_task, split_of_canonical, verify
from spine.reasoning.tasks.countdown import check_expression
from spine.reasoning.tasks.spec import parse_task_spec, task_documents
from spine.sources import resolve_source

FAMILIES = sorted(TASKS)


def test_registry_and_unknown_name():
    assert {"arith", "linear", "countdown", "sort", "base", "chain"} <= set(TASKS)
    with pytest.raises(ValueError, match="unknown task 'nope'; known tasks: arith"):
        get_task("nope")


@pytest.mark.parametrize("family", FAMILIES)
def test_deterministic_by_seed(family):
    t = get_task(family)
    a = t.generate(3, 50, seed=5, split="train")
    assert a == t.generate(3, 50, seed=5, split="train")
    b = t.generate(3, 50, seed=6, split="train")
    assert [p.prompt for p in a] != [p.prompt for p in b]
    assert len({p.id for p in a}) == 50


@pytest.mark.parametrize("family", FAMILIES)
def test_splits_disjoint_by_construction(family):
    t = get_task(family)
    level = max(t.levels)
    train = t.generate(level, 3000, seed=0, split="train")
    evals = t.generate(level, 300, seed=0, split="eval") + t.generate(level, 300, seed=1, split="eval")
    # membership is a function of the canonical problem alone, so no seed can put one in both
    assert all(t.split_of(p.metadata["canonical"]) == "train" for p in train)
    assert all(t.split_of(p.metadata["canonical"]) == "eval" for p in evals)
    assert not {p.metadata["canonical"] for p in train} & {p.metadata["canonical"] for p in evals}
    assert not {p.prompt for p in train} & {p.prompt for p in evals}
    assert all(p.metadata["split"] == "eval" for p in evals)


def test_split_rule_is_a_hash_of_family_and_canonical():
    eval_share = sum(split_of_canonical("x", str(i)) == "eval" for i in range(5000)) / 5000
    assert 0.07 < eval_share < 0.13  # ~1 in 10 held out
    assert split_of_canonical("a", "5") == split_of_canonical("a", "5")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("level", [1, 2, 3, 4, 5])
def test_worked_solutions_verify(family, level):
    t = get_task(family)
    for p in t.generate(level, 250, seed=level, split="train"):
        sol = p.metadata["solution"]
        assert sol.endswith(f"\\boxed{{{p.answer}}}.")
        r = verify(p, sol)
        assert r.correct and r.reason == "correct" and r.extracted == p.answer, (p, r)
        # a completion that runs on into the next document is graded on its first answer only
        assert verify(p, sol + "\nQuestion: Make 1.\nAnswer: \\boxed{999}").correct


def _numbers(text):
    return [int(x) for x in re.findall(r"-?\d+", text)]


def test_difficulty_dial():
    arith = get_task("arith")
    steps = [sum(len(p.metadata["solution"].split(". ")) - 1 for p in arith.generate(lv, 50, seed=0)) / 50
             for lv in arith.levels]
    assert steps == sorted(steps) and steps[0] == 1 and steps[-1] == 4
    big = [max(max(_numbers(p.prompt)) for p in arith.generate(lv, 200, seed=0)) for lv in (2, 3, 5)]
    assert big[0] < 10 <= big[1] < 100 <= big[2]  # operand digits (and so carries) grow
    cd = get_task("countdown")
    counts = [{len(p.metadata["numbers"]) for p in cd.generate(lv, 100, seed=0)} for lv in cd.levels]
    assert counts == [{2}, {3}, {3}, {4}, {4}]
    ops = [set(re.findall(r"[-+*/]", " ".join(p.answer for p in cd.generate(lv, 200, seed=0)))) for lv in cd.levels]
    assert ops[1] == {"+", "-"} and "*" in ops[2] and "/" in ops[4] and "/" not in ops[3]
    srt = get_task("sort")
    assert [len(srt.generate(lv, 1)[0].metadata["numbers"]) for lv in srt.levels] == [3, 4, 5, 6, 8]
    lin = get_task("linear")
    both_sides = [sum("x" in p.metadata["equation"].split("=")[1] for p in lin.generate(lv, 100)) for lv in lin.levels]
    assert both_sides[:3] == [0, 0, 0] and both_sides[3] == both_sides[4] == 100
    assert min(int(p.answer) for p in lin.generate(3, 200)) < 0 <= min(int(p.answer) for p in lin.generate(2, 200))
    base = get_task("base")
    assert {p.metadata["base"] for p in base.generate(1, 50)} == {2}
    assert min(p.metadata["base"] for p in base.generate(5, 50)) > 10


def test_chain_steps_recompute_and_dial():
    chain = get_task("chain")
    assert chain.levels == tuple(range(1, 9))
    for lv in chain.levels:
        for p in chain.generate(lv, 200, seed=lv, split="train"):
            expr = p.metadata["canonical"]
            assert p.prompt == f"Compute {expr}."
            # the question's operands, recomputed left to right, independently of the generator
            toks = re.findall(r"[+-]|\d+", expr)
            value, steps = int(toks[0]), []
            for op, b in zip(toks[1::2], toks[2::2]):
                new = value + int(b) if op == "+" else value - int(b)
                steps.append(f"{value}{op}{b}={new}.")
                assert 1 <= int(b) <= 9 and new >= 0
                value = new
            assert len(steps) == lv and 1 <= int(toks[0]) <= 9
            assert p.metadata["solution"] == " ".join(steps) + f" The answer is \\boxed{{{value}}}."
            assert p.answer == str(value)
    # level 8 has plenty of distinct problems: the eval split does not repeat itself
    held = chain.generate(8, 400, seed=0, split="eval")
    assert len({p.prompt for p in held}) == 400


def _wrong(family: str, p: Problem) -> str:
    if family in ("arith", "linear", "chain", "chainpaths"):
        return str(int(p.answer) + 1)
    if family == "sort":
        xs = sorted(p.metadata["numbers"])
        i = next(i for i in range(len(xs) - 1) if xs[i] != xs[i + 1])
        xs[i], xs[i + 1] = xs[i + 1], xs[i]
        return ", ".join(map(str, xs))
    if family == "base":
        from spine.reasoning.tasks.radix import to_base
        return to_base(p.metadata["number"] + 1, p.metadata["base"])
    return f"{p.answer} + {p.metadata['numbers'][0]}"  # countdown: a reused number, wrong value


@pytest.mark.parametrize("family", FAMILIES)
def test_wrong_answers_rejected(family):
    t = get_task(family)
    for p in t.generate(4, 300, seed=2):
        if family == "sort" and len(set(p.metadata["numbers"])) == 1:
            continue
        r = verify(p, f"Answer: \\boxed{{{_wrong(family, p)}}}.")
        assert not r.correct and r.reason != "correct", (p, r)
        assert verify(p, "I do not know.").reason == "no_answer"


def test_countdown_checks():
    nums, target = [7, 3, 3, 25], 28
    assert check_expression("25 + 3", nums, target) == "correct"
    assert check_expression("(25 + 3) = 28", nums, target) == "correct"  # "expr = target": the left side
    assert check_expression("25 \\times 3 - 7 * 3 - 7", [25, 3, 7, 3, 7], 28) == "wrong_value"  # 47
    assert check_expression("3 \\cdot 7 + 7", nums, target) == "reused_number"
    assert check_expression("25 + 3 + 3 - 3", nums, target) == "reused_number"
    assert check_expression("20 + 8", nums, target) == "unknown_number"
    assert check_expression("25.0 + 3", nums, target) == "correct"  # 25.0 is the number 25
    assert check_expression("25.5 + 2.5", nums, target) == "unknown_number"
    assert check_expression("7 / (3 - 3)", nums, target) == "division_by_zero"
    assert check_expression("25 + 3 + 0 * 7", nums, target) == "unknown_number"
    for hostile in ("9^9^9^9", "3!", "\\sqrt{25} + 3", "x + 25", "-3 + 25 + 3 + 3", "|25| + 3", "\\sin 3"):
        assert check_expression(hostile, [9, 9, 9, 9, 3, 25, 3, 3], 28) == "bad_operation", hostile
    for junk in ("__import__('os').system('true')", "25 + ", "((25 + 3)", "25 + 3; 7"):
        assert check_expression(junk, nums, target) == "parse_error", junk
    assert check_expression("(" * 60 + "25" + ")" * 60 + " + 3", nums, target) == "too_large"
    assert check_expression("9" * 300 + " + 3", nums, target) == "unknown_number"
    assert check_expression("9" * 5000 + " + 3", nums, target) == "too_long"


def test_countdown_verify_handles_huge_and_hostile_completions():
    p = get_task("countdown").generate(5, 1, seed=0)[0]
    assert verify(p, "\\boxed{" + "1+" * 5000 + "1}").reason == "too_long"
    assert verify(p, "\\boxed{" + "9^" * 100 + "9}").reason == "too_large"  # nested past the parser depth cap
    assert verify(p, "\\boxed{9^9^9^9}").reason == "bad_operation"
    assert verify(p, "the answer is 28").reason == "no_answer"  # no box: an expression must be boxed
    r = verify(p, "\\boxed{" + p.answer + "}")
    assert isinstance(r, VerifyResult) and r.correct and bool(r)


def test_other_family_answer_forms():
    lin = get_task("linear").generate(2, 1, seed=0)[0]
    assert verify(lin, f"\\boxed{{x = {lin.answer}}}").correct
    assert verify(lin, f"so x is {lin.answer}").correct  # numeric families fall back to the last number
    srt = Problem("s", "Sort", "1, 2, 10", {"task": "sort", "numbers": [10, 2, 1]})
    assert verify(srt, "\\boxed{[1, 2, 10]}").correct
    assert verify(srt, "\\boxed{1 2 10}").correct
    assert verify(srt, "\\boxed{1, 10, 2}").reason == "wrong_order"
    assert verify(srt, "\\boxed{1, 2}").reason == "wrong_items"
    assert verify(srt, "\\boxed{1, 2, 10, x}").reason == "parse_error"
    assert verify(srt, "1, 2, 10").reason == "no_answer"
    b = Problem("b", "Write 37 in base 2.", "100101", {"task": "base", "number": 37, "base": 2})
    assert verify(b, "\\boxed{100101_2}").correct and verify(b, "\\boxed{100101}").correct
    assert verify(b, "\\boxed{100101_3}").reason == "wrong_base"
    assert verify(b, "\\boxed{100102}").reason == "parse_error"
    with pytest.raises(ValueError, match="not a task problem"):
        verify(Problem("m", "1+1", "2"), "\\boxed{2}")


def test_specs_parse_and_typos_fail_in_one_line():
    s = parse_task_spec("task:arith+linear:levels=1-5,n=20000,seed=0,split=train")
    assert s.families == ("arith", "linear") and s.levels == (1, 2, 3, 4, 5) and s.n == 20000
    assert parse_task_spec("task:countdown").split == "eval"  # a problem spec defaults to held-out
    for bad, msg in [("task:countdwn:level=3", "unknown task 'countdwn'"),
                     ("task:countdown:lvl=3", "bad item 'lvl=3'"),
                     ("task:countdown:level=3,level=4", "given twice"),
                     ("task:countdown:level=three", "level must be an integer"),
                     ("task:countdown:level=9", "levels are 1, 2, 3, 4, 5"),
                     ("task:countdown:split=test", "split must be train or eval"),
                     ("task:countdown:n=0", "n must be >= 1"),
                     ("task:sort:levels=4-2", "empty range"),
                     ("task:sort:level=2,levels=1-3", "not both")]:
        with pytest.raises(ValueError, match=re.escape(msg)) as e:
            load_problems(bad)
        assert "\n" not in str(e.value)


def test_problem_specs_and_mixtures():
    ps = load_problems("task:countdown:level=3,n=40,seed=1,split=eval")
    assert len(ps) == 40 and {p.metadata["task"] for p in ps} == {"countdown"}
    assert all(p.metadata["split"] == "eval" and p.metadata["level"] == 3 for p in ps)
    mix = load_problems("task:arith+sort:levels=2-3,n=8,seed=0")
    assert [(p.metadata["task"], p.metadata["level"]) for p in mix[:4]] == [("arith", 2), ("arith", 3), ("sort", 2), ("sort", 3)]
    # the arith family is the quickstart's generator: same problems as the synthetic spec
    a = load_problems("task:arith:level=2,n=20,seed=3,split=eval")
    b = load_problems("synthetic:level=2,n=20,seed=3,split=eval")
    assert [(p.prompt, p.answer) for p in a] == [(p.prompt, p.answer) for p in b]


def test_corpus_source_yields_train_worked_solutions():
    src = resolve_source("task:arith+countdown:levels=1-2,n=40,seed=0,split=train")
    docs = list(src.documents)
    assert len(docs) == 40 and all(d.startswith("Question: ") and "\nAnswer: " in d and d.endswith("}.") for d in docs)
    assert src.fingerprint == resolve_source("task:arith+countdown:levels=1-2,n=40,seed=0,split=train").fingerprint
    assert src.fingerprint != resolve_source("task:arith+countdown:levels=1-2,n=40,seed=1,split=train").fingerprint
    with pytest.raises(ValueError, match="split=train"):
        task_documents("task:countdown:level=1,n=5,split=eval")
    with pytest.raises(ValueError, match="unknown task"):
        resolve_source("task:arithmetic:n=5,split=train")


class _StubEngine:
    """Returns fixed completions: the pipeline's grading is what is under test."""

    def __init__(self, texts):
        self.texts = texts

    def prompt_for(self, p):
        return p.prompt

    def sample(self, problems, params):
        return [[PipelineCompletion(t, [1], [0.0], "stop", 1, 1)] for t in self.texts]


def test_pipelines_grade_task_problems_with_the_task_verifier():
    p = Problem("c", "Use 7, 3, 25 to make 28.", "25 + 3", {"task": "countdown", "numbers": [7, 3, 25], "target": 28})
    # value 28 but 3 is used twice: the generic grader would accept it, the task verifier does not
    res = SingleSample().run(_StubEngine(["\\boxed{25 + 3 + 3 - 3}", "\\boxed{3 + 25}"]), [p, p])
    assert [r.correct for r in res] == [False, True]
    assert res[0].rule == "reused_number" and res[1].answer == "3 + 25"


def test_torch_threads_callback_pins_and_restores():
    import torch

    from callbacks import TorchThreads

    before = torch.get_num_threads()
    cb = TorchThreads(num_threads=2)
    cb.setup(None, None, "fit")
    assert torch.get_num_threads() == 2
    cb.teardown(None, None, "fit")
    assert torch.get_num_threads() == before
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="num_threads must be an integer >= 1"):
            TorchThreads(num_threads=bad)


def test_chainpaths_solutions_take_each_order_and_recompute():
    paths = get_task("chainpaths")
    assert paths.levels == get_task("chain").levels
    seen = {"Left": 0, "Adds": 0, "Back": 0}
    for lv in paths.levels:
        for p in paths.generate(lv, 300, seed=lv, split="train"):
            toks = re.findall(r"[+-]|\d+", p.metadata["canonical"])
            terms = [("+", int(toks[0]))] + [(op, int(b)) for op, b in zip(toks[1::2], toks[2::2])]
            tag, _, body = p.metadata["solution"].partition(": ")
            assert p.metadata["order"] == tag
            seen[tag] += 1
            lines = re.findall(r"(\d+)([+-])(\d+)=(\d+)\.", body)
            assert len(lines) == lv and body.endswith(f"The answer is \\boxed{{{p.answer}}}.")
            # every line is right, each starts from the previous result, none goes below zero
            for i, (a, op, b, c) in enumerate(lines):
                assert int(c) == (int(a) + int(b) if op == "+" else int(a) - int(b)) and int(c) >= 0
                assert i == 0 or a == lines[i - 1][3]
            assert lines[-1][3] == p.answer
            used = [("+", int(lines[0][0]))] + [(op, int(b)) for _, op, b, _ in lines]
            adds = [t for t in terms if t[0] == "+"]
            subs = [t for t in terms if t[0] == "-"]
            want = {"Left": terms, "Adds": adds + subs, "Back": adds[::-1] + subs[::-1]}[tag]
            assert used == want, (p.prompt, p.metadata["solution"])
    # the order is drawn uniformly (each about a third), so sampling explores it at any temperature
    assert all(0.28 < n / sum(seen.values()) < 0.39 for n in seen.values()), seen
    # the longest level-6 solution is 84 bytes (85 generated tokens with the space after "Answer:"), so a
    # level-6 prompt (at most 40 bytes) and its solution fit the substrate's 128-token context
    longest = max(len(p.metadata["solution"]) for p in paths.generate(6, 3000, seed=0, split="train"))
    assert longest <= 84


def test_chainpaths_holds_out_exactly_chains_eval_problems():
    chain, paths = get_task("chain"), get_task("chainpaths")
    held = {p.metadata["canonical"] for p in chain.generate(6, 400, seed=7, split="eval")}
    train = [p.metadata["canonical"] for p in paths.generate(6, 4000, seed=0, split="train")]
    assert not held & set(train)
    assert all(paths.split_of(c) == "eval" for c in held)
    # with its own family name in the hash, some held-out chain problems would be chainpaths training text
    assert any(split_of_canonical("chainpaths", c) == "train" for c in held)


def test_chainpaths_orders_bench_reads_what_each_sample_did(tmp_path):
    """bench/chainpaths_orders.py: per tag, the share of samples, accuracy and whether the named order's
    steps were written, on hand-made samples of one problem."""
    from conftest import load_bench

    from spine.traces import TraceRecord, TraceWriter
    bench = load_bench("chainpaths_orders")
    p = get_task("chain").generate(3, 1, seed=0, split="eval")[0]
    from spine.reasoning.tasks.chainpaths import solve, terms_of
    follow = "Adds: " + " ".join(solve(terms_of(p.metadata["canonical"]), "Adds")[0]) + f" The answer is \\boxed{{{p.answer}}}."
    texts = [(follow, True), ("Back: 1+1=2. The answer is \\boxed{2}.", False), (f"Left: \\boxed{{{p.answer}}}", True)]
    path = tmp_path / "t.jsonl"
    with TraceWriter(path, run_config={"x": 1}) as w:
        for i, (text, ok) in enumerate(texts):
            w.write(TraceRecord(run_id=w.run_id, config_hash=w.config_hash, checkpoint_sha256=None,
                                problem_id=p.id, sample_index=i, prompt=p.prompt, completion=" " + text,
                                extracted=None, extraction_method="task", gold=p.answer, correct=ok, rule="",
                                tokens=1, seconds=0.0, metadata=dict(p.metadata)))
    stats, distinct = bench.order_stats(str(path), level=3)
    assert stats == {"Adds": (1, 1.0, 1.0), "Back": (1, 0.0, 0.0), "Left": (1, 1.0, 0.0)}
    assert distinct == {3: 1}
    assert bench.order_stats(str(path), level=4)[0] == {}


def test_chain_errors_bench_names_the_first_faulty_step():
    """bench/chain_errors.py on hand-written completions of one level-4 question: 5+3-2+4-1 = 9."""
    from conftest import load_bench

    bench = load_bench("chain_errors")
    q = "Question: Compute 5+3-2+4-1.\nAnswer:"
    cases = {
        "5+3=8. 8-2=6. 6+4=10. 10-1=9. The answer is \\boxed{9}.": ("steps right, answer wrong", 0),
        "5+3=8. 8-2=7. 7+4=11. 11-1=10. The answer is \\boxed{10}.": ("arithmetic slip", 1),
        "5+3=8. 8-3=5. 5+4=9. 9-1=8. The answer is \\boxed{8}.": ("operand misread", 1),
        "5+3=8. 8-2=6. 9+4=13. 13-1=12. The answer is \\boxed{12}.": ("carried value", 1),
        "5+3=8. 8-2=6. 6+4=10. The answer is \\boxed{10}.": ("missing step", 1),
        "5+3=9. 9-3=6. 6+4=10. 10-1=9. The answer is \\boxed{9}.": ("arithmetic slip", 2),
    }
    for completion, expected in cases.items():
        assert bench.classify(q, completion) == expected, completion
    with pytest.raises(ValueError, match="not a chain question"):
        bench.classify("Question: sort 3 1 2", "1 2 3")
