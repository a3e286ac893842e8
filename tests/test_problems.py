"""Problem loaders: MATH-500 (shared data), GSM8K-style and generic files, synthetic specs, errors."""
from __future__ import annotations

import json

import pytest

from spine.reasoning.problems import (
    Problem,
    ProblemLoadError,
    load_gsm8k,
    load_jsonl_or_json,
    load_math500,
    load_problems,
    parse_synthetic_spec,
)
from spine.reasoning.synthetic import ArithmeticProblems, to_problem

GSM8K_RECORDS = [
    {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
    {"question": "A farm sells 1,200 eggs a day for $2. Revenue?", "answer": "1200 * 2 = 2400\n#### 2,400"},
    {"question": "What is 10 - 12?", "answer": "It is -2.\n#### -2 "},
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def math500_path(shared_data):
    p = shared_data / "math500" / "math500_test.json"
    if not p.is_file():
        pytest.skip(f"{p} missing")
    return p


def test_load_math500_local(math500_path):
    probs = load_math500(math500_path)
    assert len(probs) == 500 and len({p.id for p in probs}) == 500
    first = probs[0]
    assert first.id == "test/precalculus/807.json"
    assert first.prompt.startswith("Convert the point $(0,3)$ in rectangular coordinates")
    assert first.answer == r"\left( 3, \frac{\pi}{2} \right)"
    assert first.metadata["subject"] == "Precalculus" and first.metadata["level"] == 2
    assert first.metadata["source"] == "math500" and "solution" in first.metadata
    assert {p.metadata["level"] for p in probs} == {1, 2, 3, 4, 5}
    # The dispatcher sniffs the format, and a folder holding one file works too.
    assert load_problems(math500_path) == probs
    assert load_problems(str(math500_path.parent), format="math500") == probs


def test_load_gsm8k_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "gsm8k_test.jsonl", GSM8K_RECORDS)
    probs = load_gsm8k(path)
    assert [p.answer for p in probs] == ["7", "2400", "-2"]
    assert [p.id for p in probs] == ["gsm8k-test-0", "gsm8k-test-1", "gsm8k-test-2"]
    assert probs[0].prompt == GSM8K_RECORDS[0]["question"]
    assert probs[0].metadata == {"solution": "3 + 4 = <<3+4=7>>7", "source": "gsm8k"}
    assert load_problems(path) == probs  # sniffed from the "####" marker
    assert load_problems(str(path), format="gsm8k", split="train")[0].id == "gsm8k-train-0"


def test_gsm8k_without_marker(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [GSM8K_RECORDS[0], {"question": "q", "answer": "7"}])
    with pytest.raises(ProblemLoadError, match=r"record 1 field 'answer' has no '#### <answer>' marker"):
        load_gsm8k(path)


def test_generic_json_and_jsonl(tmp_path):
    records = [{"q": "1+1?", "a": 2, "uid": "x1", "topic": "add"},
               {"q": "2*3?", "a": 6.0, "uid": "x2", "topic": "mul"}]
    jpath = tmp_path / "set.json"
    jpath.write_text(json.dumps(records))
    probs = load_jsonl_or_json(jpath, prompt_field="q", answer_field="a", id_field="uid", metadata_fields=["topic"])
    assert probs == [Problem("x1", "1+1?", "2", {"topic": "add", "source": "set.json"}),
                     Problem("x2", "2*3?", "6", {"topic": "mul", "source": "set.json"})]
    lpath = write_jsonl(tmp_path / "set.jsonl", records)
    got = load_problems(lpath, prompt_field="q", answer_field="a")
    assert [p.id for p in got] == ["set-0", "set-1"] and [p.answer for p in got] == ["2", "6"]
    # A {"data": [...]} wrapper and a JSONL file misnamed .json both load.
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": records}))
    assert len(load_jsonl_or_json(tmp_path / "wrapped.json", prompt_field="q", answer_field="a")) == 2
    write_jsonl(tmp_path / "misnamed.json", records)
    assert len(load_jsonl_or_json(tmp_path / "misnamed.json", prompt_field="q", answer_field="a")) == 2


def test_synthetic_spec():
    got = load_problems("synthetic:level=2,n=5,seed=3")
    assert got == [to_problem(sp) for sp in ArithmeticProblems(seed=3, level=2, split="eval").take(5)]
    assert parse_synthetic_spec("synthetic:") == {"level": 1, "n": 100, "seed": 0, "split": "eval"}
    assert parse_synthetic_spec("synthetic: split=train , n=7") == {"level": 1, "n": 7, "seed": 0, "split": "train"}
    assert len(load_problems("synthetic", format="synthetic")) == 100
    with pytest.raises(ValueError, match="known keys: level, n, seed, split"):
        load_problems("synthetic:level=2,size=5")
    with pytest.raises(ValueError, match="n must be an integer"):
        load_problems("synthetic:n=many")
    with pytest.raises(ValueError, match="known levels"):
        load_problems("synthetic:level=9")


# ----------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    for fn in (load_math500, load_gsm8k, load_problems):
        with pytest.raises(FileNotFoundError, match="problem file not found"):
            fn(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError):
        load_problems("data/does-not-exist.jsonl")


def test_empty_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    (tmp_path / "list.json").write_text("[]")
    for name in ("empty.jsonl", "list.json"):
        with pytest.raises(ProblemLoadError, match=f"no problems in .*{name}"):
            load_gsm8k(tmp_path / name)


def test_missing_field_names_file_record_and_fields(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"problem": "p", "answer": "1"}, {"problem": "p2", "solution": "s"}])
    with pytest.raises(ProblemLoadError) as e:
        load_math500(path)
    msg = str(e.value)
    assert str(path) in msg and "record 1" in msg and "'answer'" in msg and "fields present: problem, solution" in msg
    with pytest.raises(ProblemLoadError, match="record 0 has no field 'topic'"):
        load_jsonl_or_json(path, prompt_field="problem", answer_field="answer", metadata_fields=["topic"])


def test_invalid_json_reports_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[\n  {"problem": "a", "answer": "1"},\n  {"problem": "b", answer: 2}\n]')
    with pytest.raises(ProblemLoadError, match=r"bad\.json: invalid JSON at line 3"):
        load_math500(bad)
    badl = tmp_path / "bad.jsonl"
    badl.write_text('{"question": "a", "answer": "#### 1"}\n{"question": "b", "answer": \n')
    with pytest.raises(ProblemLoadError, match=r"bad\.jsonl: invalid JSON on line 2"):
        load_gsm8k(badl)
    notobj = tmp_path / "n.jsonl"
    notobj.write_text('{"question": "a", "answer": "#### 1"}\n[1, 2]\n')
    with pytest.raises(ProblemLoadError, match="record 1 is a list"):
        load_gsm8k(notobj)


def test_format_errors(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": "t", "label": "l"}])
    with pytest.raises(ValueError, match="unknown problem format 'csv'; known formats: auto, math500"):
        load_problems(path, format="csv")
    with pytest.raises(ProblemLoadError, match=r"cannot tell the format from the fields \['label', 'text'\]"):
        load_problems(path)
    with pytest.raises(ValueError, match="needs answer_field"):
        load_problems(path, format="jsonl", prompt_field="text")
    with pytest.raises(TypeError, match="unknown options"):
        load_problems(path, prompt_fiel="text")
    with pytest.raises(ValueError, match="cannot tell the format of 'someone/some-dataset'"):
        load_problems("someone/some-dataset")
    dup = write_jsonl(tmp_path / "dup.jsonl", [{"q": "a", "a": "1", "k": 1}, {"q": "b", "a": "2", "k": 1}])
    with pytest.raises(ProblemLoadError, match="ids are not unique"):
        load_jsonl_or_json(dup, prompt_field="q", answer_field="a", id_field="k")


def test_hub_name_offline_gives_clear_error():
    # conftest sets HF_HUB_OFFLINE=1: the hub path must fail with advice, not hang or crash.
    with pytest.raises(ProblemLoadError, match="pass a local JSON/JSONL file"):
        load_math500("HuggingFaceH4/MATH-500")


def test_jsonl_strings_holding_unicode_line_separators(tmp_path):
    """U+2028/U+0085 inside a JSON string are not line breaks of a JSONL file (str.splitlines() says they are)."""
    from spine.serve.judge import load_responses

    text = "two\u2028lines\x85here"
    path = tmp_path / "set.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                            for r in [{"q": text, "a": 1}, {"q": "plain", "a": 2}]), encoding="utf-8")
    got = load_problems(path, prompt_field="q", answer_field="a")
    assert [p.prompt for p in got] == [text, "plain"]
    rpath = tmp_path / "responses.jsonl"
    rpath.write_text("".join(json.dumps({"instruction": "i", "input": "", "output": "o", "model_response": m},
                                        ensure_ascii=False) + "\n" for m in (text, "ok")), encoding="utf-8")
    assert [item.response for item in load_responses(rpath)] == [text, "ok"]
