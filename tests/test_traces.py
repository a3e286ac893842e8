"""Traces: config hash, durable writer with resume, truncated files, summaries, and the report."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from spine.reasoning.report import accuracy_at_k, majority_vote, report, sample_counts
from spine.traces import (
    TraceRecord,
    TraceWriter,
    config_hash,
    final_records,
    format_summary,
    read_traces,
    summarize,
    wilson_interval,
)

CONFIG = {"model": "tiny", "template": "synthetic", "n_samples": 1, "temperature": 0.0}


def rec(writer_or_ids, pid, i=0, *, correct=True, extracted="1", tokens=10, seconds=0.5, **meta):
    run_id, chash = (writer_or_ids.run_id, writer_or_ids.config_hash) if isinstance(writer_or_ids, TraceWriter) \
        else writer_or_ids
    return TraceRecord(run_id=run_id, config_hash=chash, checkpoint_sha256=None, problem_id=pid, sample_index=i,
                       prompt=f"Q {pid}", completion=f"... \\boxed{{{extracted}}}", extracted=extracted,
                       extraction_method="boxed", gold="1", correct=correct, rule="exact", tokens=tokens,
                       seconds=seconds, metadata=meta)


def test_config_hash():
    # Independent recomputation from the canonical text: sorted keys, no spaces.
    expected = hashlib.sha256(b'{"a":1,"b":[1,2],"c":{"x":"p/q","y":null}}').hexdigest()[:16]
    assert config_hash({"c": {"y": None, "x": Path("p/q")}, "b": (1, 2), "a": 1}) == expected
    assert config_hash({"a": 1, "b": [1, 2], "c": {"x": "p/q", "y": None}}) == expected
    assert config_hash({"a": 2}) != config_hash({"a": 1}) and len(expected) == 16
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        config_hash({"f": object()})


def test_write_read_roundtrip(tmp_path):
    path = tmp_path / "sub" / "t.jsonl"
    with TraceWriter(path, run_config=CONFIG, run_id="run-1") as w:
        records = [rec(w, "p0"), rec(w, "p1", correct=False, extracted=None), w.make_record(
            problem_id="p2", sample_index=0, prompt="x", completion="y", extracted="3", extraction_method="last_number",
            gold="3", correct=True, rule="numeric", tokens=2, seconds=0.1, metadata={"level": 1})]
        for r in records:
            w.write(r)
        assert w.done_ids() == {"p0", "p1", "p2"}
    lines = path.read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line) for line in lines)
    header, got = read_traces(path)
    assert header["type"] == "header" and header["run_id"] == "run-1"
    assert header["config_hash"] == config_hash(CONFIG) and header["config"] == CONFIG
    assert got == records


def test_text_with_unicode_line_separators_round_trips(tmp_path):
    """json.dumps(ensure_ascii=False) leaves U+0085/U+2028/U+2029 raw; str.splitlines() splits on them.
    A byte-level model's completion can hold any of them: the file must read back, and resume."""
    path = tmp_path / "t.jsonl"
    odd = "a\u2028b\x85c\u2029d\x1ce\x0bf\r\ng"
    with TraceWriter(path, run_config=CONFIG, run_id="run-1") as w:
        r0 = w.make_record(problem_id="p0", sample_index=0, prompt=odd, completion=odd, extracted=None,
                           extraction_method=None, gold="1", correct=False, rule="none", tokens=3, seconds=0.1)
        w.write(r0)
    assert len(path.read_bytes().split(b"\n")) == 3  # header, record, final newline
    header, got = read_traces(path)
    assert got == [r0] and got[0].completion == odd
    with TraceWriter(path, run_config=CONFIG, run_id="run-1") as w:  # resume reads the same file
        assert w.done_ids() == {"p0"}
        w.write(rec(w, "p1"))
    assert [r.problem_id for r in read_traces(path)[1]] == ["p0", "p1"]


def test_write_rejects_foreign_records(tmp_path):
    with TraceWriter(tmp_path / "t.jsonl", run_config=CONFIG) as w:
        with pytest.raises(ValueError, match="carries run"):
            w.write(rec(("other-run", w.config_hash), "p0"))
        with pytest.raises(ValueError, match="carries run"):
            w.write(rec((w.run_id, "0" * 16), "p0"))


def test_resume_and_refuse_other_config(tmp_path):
    path = tmp_path / "t.jsonl"
    with TraceWriter(path, run_config=CONFIG) as w:
        run_id = w.run_id
        w.write(rec(w, "p0"))
        w.write(rec(w, "p1"))
    with TraceWriter(path, run_config=dict(reversed(list(CONFIG.items())))) as w2:  # same config, other key order
        assert w2.resumed and w2.run_id == run_id and w2.done_ids() == {"p0", "p1"}
        w2.write(rec(w2, "p2"))
    header, got = read_traces(path)
    assert [r.problem_id for r in got] == ["p0", "p1", "p2"]
    assert sum(1 for line in path.read_text().splitlines() if '"header"' in line) == 1
    other = {**CONFIG, "temperature": 0.7}
    with pytest.raises(ValueError, match=r"written by another run config \(hash [0-9a-f]{16} != [0-9a-f]{16}\); "
                                         "refusing to mix — use a new path"):
        TraceWriter(path, run_config=other)


def test_truncated_last_line(tmp_path):
    path = tmp_path / "t.jsonl"
    with TraceWriter(path, run_config=CONFIG) as w:
        w.write(rec(w, "p0"))
        w.write(rec(w, "p1"))
    full = path.read_bytes()
    path.write_bytes(full[: len(full) - 25])  # killed in the middle of writing p1
    with pytest.warns(UserWarning, match="truncated last line"):
        _, got = read_traces(path)
    assert [r.problem_id for r in got] == ["p0"]
    with pytest.warns(UserWarning, match="partial last line"):
        w = TraceWriter(path, run_config=CONFIG)
    assert w.done_ids() == {"p0"}
    w.write(rec(w, "p1"))
    w.close()
    _, got = read_traces(path)  # no warning: the file is whole again
    assert [r.problem_id for r in got] == ["p0", "p1"]
    # Corruption that is not at the end is an error, with the line number.
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "{oops", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match="invalid JSON on line 2"):
        read_traces(path)
    # Killed while writing the header itself: start afresh rather than refuse the file.
    head = tmp_path / "head.jsonl"
    head.write_text('{"type": "header", "run_id": "x", "conf')
    with pytest.warns(UserWarning, match="partial last line"):
        w = TraceWriter(head, run_config=CONFIG, run_id="fresh")
    assert not w.resumed and w.run_id == "fresh"
    w.write(rec(w, "p0"))
    w.close()
    header, got = read_traces(head)
    assert header["run_id"] == "fresh" and [r.problem_id for r in got] == ["p0"]
    (tmp_path / "plain.jsonl").write_text('{"a": 1}\n')
    with pytest.raises(ValueError, match="not a spine trace file"):
        TraceWriter(tmp_path / "plain.jsonl", run_config=CONFIG)


def test_done_ids_with_samples_and_final_flags(tmp_path):
    with TraceWriter(tmp_path / "t.jsonl", run_config=CONFIG) as w:
        for i in (0, 1):
            w.write(rec(w, "sc", i, n_samples=3))
        assert w.done_ids() == set()
        w.write(rec(w, "sc", 2, n_samples=3))
        assert w.done_ids() == {"sc"}
        w.write(rec(w, "fl", 0, n_samples=2, final=False))
        w.write(rec(w, "fl", 1, n_samples=2, final=False))
        assert w.done_ids() == {"sc"}  # all samples there, but its flagged final record is missing
        w.write(rec(w, "fl", -1, n_samples=2, final=True))
        assert w.done_ids() == {"sc", "fl"}


def test_redone_sample_keeps_last(tmp_path):
    path = tmp_path / "t.jsonl"
    with TraceWriter(path, run_config=CONFIG) as w:
        w.write(rec(w, "p0", correct=False))
        w.write(rec(w, "p0", correct=True))
    assert [r.correct for r in read_traces(path)[1]] == [True]
    assert [r.correct for r in read_traces(path, dedupe=False)[1]] == [False, True]


def test_wilson_interval_hand_values():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(0, 5)
    assert lo == 0.0 and hi == pytest.approx(0.4345, abs=1e-4)


def test_summarize_counts_each_problem_once():
    ids = ("r", "h")
    records = []
    for k in range(10):  # 10 problems, levels 1 and 2 alternating, problems 0 and 1 wrong
        records.append(rec(ids, f"p{k}", correct=k >= 2, tokens=10 * k, seconds=1.0, level=1 + k % 2))
    # A 3-sample problem whose sample 0 is wrong but whose flagged final answer is right.
    records += [rec(ids, "sc", 0, correct=False, tokens=5, n_samples=3, final=False, subject="Algebra"),
                rec(ids, "sc", 1, correct=True, tokens=5, n_samples=3, final=True, subject="Algebra"),
                rec(ids, "sc", 2, correct=False, tokens=5, n_samples=3, final=False, subject="Algebra")]
    assert final_records(records)["sc"].sample_index == 1
    s = summarize(records)
    assert (s.n, s.n_correct, s.n_records) == (11, 9, 13)
    assert s.accuracy == pytest.approx(9 / 11)
    assert s.mean_tokens == pytest.approx((450 + 15) / 13) and s.total_tokens == 465
    assert s.ci95 == pytest.approx(wilson_interval(9, 11))
    lv = s.by_group["level"]
    assert list(lv) == ["1", "2"]
    assert (lv["1"].n, lv["1"].n_correct) == (5, 4) and (lv["2"].n, lv["2"].n_correct) == (5, 4)
    assert lv["2"].mean_tokens == pytest.approx((10 + 30 + 50 + 70 + 90) / 5)
    assert (s.by_group["subject"]["Algebra"].n, s.by_group["subject"]["Algebra"].n_records) == (1, 3)
    table = format_summary(s)
    assert "| all | 11 | 9 | 81.8% |" in table and "| level=1 | 5 | 4 | 80.0% | 37.6–96.4% |" in table
    assert "| subject=Algebra | 1 | 1 | 100.0% |" in table


# ----------------------------------------------------------------------------- report

# Hand-made self-consistency votes (gold is the answer flagged correct):
#   P1: 3 5 5 7   -> k1: 3 wrong, k2: tie 3/5 -> earliest 3 wrong, k4: 5 (2 votes) right
#   P2: 4 ' 4 ' 9 $9$ -> k1 right, k2 right, k4: tie 4/9 -> earliest 4 right
#   P3: None 2 8 8 -> k1: no answer wrong, k2: 2 right, k4: 8 wrong
# accuracy@1 = 1/3, @2 = 2/3, @4 = 2/3
VOTES = {
    "P1": [("3", False), ("5", True), ("5", True), ("7", False)],
    "P2": [("4", True), (" 4 ", True), ("9", False), ("$9$", False)],
    "P3": [(None, False), ("2", True), ("8", False), ("8", False)],
}


def write_sc_trace(path):
    with TraceWriter(path, run_config={"pipeline": "self_consistency", "n": 4}, run_id="sc-run") as w:
        for pid, votes in VOTES.items():
            for i, (ans, ok) in enumerate(votes):
                w.write(rec(w, pid, i, correct=ok, extracted=ans, n_samples=4, level=1))
    return path


def test_majority_vote_rules():
    assert majority_vote(["3", "5", "5", "7"])[0] == 1
    assert majority_vote(["3", "5"])[0] == 0  # tie -> earliest group
    assert majority_vote([None, None])[0] is None
    assert majority_vote(["0.5", "1/2", "3", "3", "3"], equivalent=None)[0] == 2  # text only
    same = {frozenset({"0.5", "1/2"})}
    eq = lambda a, b: a == b or frozenset({a, b}) in same  # noqa: E731
    assert majority_vote(["0.5", "1/2", "1/2", "3", "3"], equivalent=eq)[0] == 0
    # by default the grader's equivalence pools "0.5" and "1/2", as the self-consistency pipeline does
    assert majority_vote(["3", "0.5", "1/2"])[0] == 1


def test_report_votes_with_the_graders_equivalence(tmp_path):
    """`python -m spine.reasoning.report` used to vote on text alone: "3" won a three-way tie there
    while the pipeline pooled "0.5" and "1/2" and was right."""
    path = tmp_path / "sc.jsonl"
    with TraceWriter(path, run_config=CONFIG) as w:
        for i, (ans, ok) in enumerate([("3", False), ("0.5", True), ("1/2", True)]):
            w.write(rec(w, "p0", i, correct=ok, extracted=ans, n_samples=3))
    _, records = read_traces(path)
    assert accuracy_at_k(records, ks=[3]) == {3: 1.0}
    assert accuracy_at_k(records, ks=[3], equivalent=None) == {3: 0.0}
    assert "| accuracy | 0.0% | 0.0% | 100.0% |" in report([path], print_it=False)  # k=2: a tie, "3" first
    assert sample_counts(4) == [1, 2, 4] and sample_counts(6) == [1, 2, 4, 6] and sample_counts(1) == [1]


def test_accuracy_at_k_and_report_png(tmp_path):
    path = write_sc_trace(tmp_path / "sc.jsonl")
    _, records = read_traces(path)
    acc = accuracy_at_k(records)
    assert list(acc) == [1, 2, 4]
    assert acc[1] == pytest.approx(1 / 3) and acc[2] == pytest.approx(2 / 3) and acc[4] == pytest.approx(2 / 3)
    # Problems cut short by a kill limit k to the fewest samples any problem has.
    assert list(accuracy_at_k([r for r in records if not (r.problem_id == "P3" and r.sample_index == 3)])) == [1, 2, 3]
    png = tmp_path / "plots" / "acc.png"
    text = report([path], out_png=png, print_it=False)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| k | 1 | 2 | 4 |" in text and "| accuracy | 33.3% | 66.7% | 66.7% |" in text
    assert "| all | 3 | 1 | 33.3% |" in text  # without final flags each problem's sample 0 is its answer


def test_report_without_self_consistency(tmp_path, capsys):
    path = tmp_path / "single.jsonl"
    with TraceWriter(path, run_config=CONFIG) as w:
        w.write(rec(w, "p0", level=1))
    png = tmp_path / "none.png"
    text = report(path, out_png=png)
    assert "no self-consistency runs" in text and not png.exists()
    assert "| all | 1 | 1 | 100.0% |" in capsys.readouterr().out


def test_spine_modules_import_without_lightning_or_heavy_deps():
    code = ("import sys, spine.traces, spine.reasoning.problems, spine.reasoning.prompts, "
            "spine.reasoning.synthetic, spine.reasoning.report\n"
            "bad = sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'pytorch_lightning', "
            "'datasets', 'matplotlib'})\n"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize("content", [
    b'[{"problem": "1+1?", "answer": "2"}]',            # a one-line JSON file (e.g. the problems), no newline
    b"text,label\nhello,0\nbye,1",                     # a CSV without a final newline
    b'{"type": "record", "problem_id": "p0"}\n{"x"',   # JSONL that is not a trace
    b"\xff\xfe binary \x00\x01",
])
def test_a_file_that_is_not_a_trace_is_never_touched(tmp_path, content):
    path = tmp_path / "user.file"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"user\.file exists and is not a spine trace file"):
        TraceWriter(path, run_config=CONFIG)
    assert path.read_bytes() == content


def test_a_trace_of_another_config_is_refused_before_its_tail_is_repaired(tmp_path):
    path = tmp_path / "t.jsonl"
    with TraceWriter(path, run_config=CONFIG) as w:
        w.write(rec(w, "p0"))
    data = path.read_bytes() + b'{"type": "record", "probl'  # a partial last line
    path.write_bytes(data)
    with pytest.raises(ValueError, match="another run config"):
        TraceWriter(path, run_config={**CONFIG, "other": 1})
    assert path.read_bytes() == data
