"""`spine judge`: strict parsing, traces with raw replies, resume; against a stub endpoint and `spine serve`."""
from __future__ import annotations

import json
import math
import statistics
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

pytest.importorskip("openai")

from spine.checkpoint import save_checkpoint  # noqa: E402
from spine.commands import main  # noqa: E402
from spine.engine import Engine, SamplingParams, load_model  # noqa: E402
from spine.model import GPT  # noqa: E402
from spine.serve.judge import RUBRICS, JudgeScorer, summarize_scores  # noqa: E402
from spine.serve.templates import chat_template_for  # noqa: E402
from spine.tokenizer import get_tokenizer  # noqa: E402
from spine.traces import read_traces  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))


@pytest.mark.parametrize("reply,score", [("85", 85), (" 42.\n", 42), ("100", 100), ("0", 0), ("101", None),
                                         ("85/100", None), ("Score: 85", None), ("eighty", None), ("", None),
                                         (None, None), ("<think>long</think>\n70", 70), ("-5", None)])
def test_book_rubric_parses_strictly(reply, score):
    assert RUBRICS["book-0-100"].parse(reply) == score


@pytest.mark.parametrize("reply,score", [("Score: 4", 4), ("Because...\nscore: 5.", 5), ("Score: 6", None),
                                         ("Score: 0", None), ("4", None), ("Score: 4 (good)", None),
                                         ("Score: 3\nThanks", None), ("<think>x</think>Score: 2", 2)])
def test_rfs_rubric_parses_strictly(reply, score):
    assert RUBRICS["rfs-1-5"].parse(reply) == score


def test_book_prompt_is_the_books():
    p = RUBRICS["book-0-100"].prompt("Name a colour.", "Blue", "Red")
    assert p == ("Given the input `Below is an instruction that describes a task. Write a response that "
                 "appropriately completes the request.\n\n### Instruction:\nName a colour.` and correct output "
                 "`Red`, score the model response `Blue` on a scale from 0 to 100, where 100 is the best score. "
                 "Respond with the integer number only.")


# ---------------------------------------------------------------------------- stub endpoint
REPLIES = {"R1": "85", "R2": " 42.\n", "R3": "Score: 90", "R4": "eighty", "R5": "101",
           "R6": "<think>hmm</think>\n70", "R7": "HTTP500", "R8": None}


class Stub(BaseHTTPRequestHandler):
    counts: dict[str, int] = {}
    fail: set[str] = {"R7"}

    def log_message(self, *a):  # keep test output quiet
        pass

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][0]["content"]
        marker = next(m for m in REPLIES if f"`{m}`" in prompt)
        Stub.counts[marker] = Stub.counts.get(marker, 0) + 1
        if marker in Stub.fail:
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"{broken")
            return
        out = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                          "choices": [{"index": 0, "finish_reason": "stop",
                                       "message": {"role": "assistant", "content": REPLIES[marker]}}],
                          "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


@pytest.fixture
def stub():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    Stub.counts, Stub.fail = {}, {"R7"}
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_judge_against_a_stub_with_malformed_replies(stub, tmp_path, capsys):
    data = tmp_path / "responses.json"
    data.write_text(json.dumps([{"instruction": f"task {m}", "input": "", "output": "ref", "model_response": m}
                                for m in REPLIES]))
    out = tmp_path / "judged.jsonl"
    argv = ["judge", "--endpoint", stub, "--model", "stub", "--responses", str(data), "--rubric", "book-0-100",
            "--output", str(out), "--max_retries", "0", "--timeout", "10"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    _, records = read_traces(out)
    by = {r.metadata["response"]: r for r in records}
    assert set(by) == set(REPLIES) - {"R7"}  # the failed request is not recorded (a rerun retries it)
    assert {m: by[m].metadata["score"] for m in by} == {"R1": 85, "R2": 42, "R3": None, "R4": None, "R5": None,
                                                         "R6": 70, "R8": None}
    assert all(by[m].completion == (REPLIES[m] or "") for m in by)  # the raw reply, verbatim
    assert by["R3"].extracted is None and by["R3"].extraction_method == "judge-unparsable"
    assert by["R1"].correct and not by["R2"].correct  # pass mark 50
    mean = (85 + 42 + 70) / 3
    half = 1.959963984540054 * statistics.stdev([85, 42, 70]) / math.sqrt(3)
    row = next(line for line in printed.splitlines() if line.startswith("| book-0-100"))
    assert row.split("|")[2:8] == [" 8 ", " 3 ", " 4 ", " 1 ", f" {mean:.2f} ", f" {mean - half:.2f}–{mean + half:.2f} "]

    Stub.fail = set()  # the endpoint recovers: a rerun resumes, asking only for what is not recorded
    before = dict(Stub.counts)
    assert main(argv) == 0
    assert {m: Stub.counts[m] - before.get(m, 0) for m in Stub.counts if Stub.counts[m] != before.get(m, 0)} == {"R7": 1}
    _, records = read_traces(out)
    assert len(records) == 8


def test_summary_never_invents_scores():
    s = summarize_scores([None, None], RUBRICS["rfs-1-5"], failed=1)
    assert s["scored"] == 0 and s["missing"] == 2 and s["n"] == 3 and math.isnan(s["mean"])


def test_judge_bad_inputs_are_one_line(tmp_path, capsys):
    assert main(["judge", "--endpoint", "http://127.0.0.1:9/v1", "--model", "m", "--rubric", "rfs-1-5"]) == 2
    assert "exactly one of --traces" in capsys.readouterr().err
    assert main(["judge", "--endpoint", "ftp://x", "--model", "m", "--rubric", "rfs-1-5",
                 "--responses", str(tmp_path / "none.json")]) == 2
    assert "--endpoint must be an http(s) URL" in capsys.readouterr().err


# ---------------------------------------------------------------------------- against spine serve
@pytest.fixture(scope="module")
def judge_engine(tmp_path_factory):
    torch.manual_seed(1)
    d = tmp_path_factory.mktemp("judge") / "judge"
    save_checkpoint(d, GPT.from_preset("gpt2-tiny", vocab_size=257, context_length=1024), get_tokenizer("byte"))
    model, tok = load_model(str(d))
    return Engine(model, tok, batch_size=4)


def test_judge_against_spine_serve_and_the_scorer_hook(judge_engine, tmp_path, capsys):
    from serve_helpers import inprocess_server

    data = tmp_path / "r.jsonl"
    items = [{"instruction": "Add 2 and 3.", "input": "", "output": "5", "model_response": r} for r in ("5", "six")]
    data.write_text("\n".join(json.dumps(x) for x in items) + "\n")
    out = tmp_path / "j.jsonl"
    with inprocess_server(judge_engine, model_name="judge", chat_template="alpaca") as (base, _, _):
        assert main(["judge", "--endpoint", base, "--model", "judge", "--responses", str(data),
                     "--rubric", "book-0-100", "--output", str(out), "--max_retries", "0"]) == 0
        scores = JudgeScorer(base, "judge", "book-0-100", max_retries=0)("Add 2 and 3.", ["5", "six"], "5")
    _, records = read_traces(out)
    assert len(records) == 2
    rubric, t = RUBRICS["book-0-100"], chat_template_for(judge_engine.tokenizer, "alpaca")
    for r in records:  # the judge's reply is the served model's greedy answer to the rubric prompt
        ids = t.encode(judge_engine.tokenizer, [{"role": "user", "content": r.prompt}])
        want = judge_engine.generate([ids], SamplingParams(max_new_tokens=rubric.max_tokens, stop=t.stop))[0][0]
        assert r.completion == want.text
        assert r.metadata["score"] == rubric.parse(want.text)
    by = {r.metadata["response"]: r.metadata["score"] for r in records}
    assert scores == [None if by[c] is None else float(by[c]) for c in ("5", "six")]
