"""`spine serve`: the OpenAI-compatible server, talked to with the official `openai` client on loopback."""
from __future__ import annotations

import json
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from spine.checkpoint import save_checkpoint  # noqa: E402
from spine.commands import main  # noqa: E402
from spine.engine import Engine, SamplingParams, load_model, sequence_logprobs  # noqa: E402
from spine.instruct import prompt_text  # noqa: E402
from spine.model import GPT  # noqa: E402
from spine.serve.batcher import Batcher  # noqa: E402
from spine.serve.protocol import RequestParser  # noqa: E402
from spine.serve.templates import chat_template_for  # noqa: E402
from spine.tokenizer import get_tokenizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))
from serve_helpers import http, inprocess_server, start_cli_server, wait_healthy  # noqa: E402

MAX_N = 4


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("serve") / "tiny"
    save_checkpoint(d, GPT.from_preset("gpt2-tiny", vocab_size=257), get_tokenizer("byte"))
    return d


@pytest.fixture(scope="module")
def engine(ckpt):
    model, tok = load_model(str(ckpt))
    return Engine(model, tok, batch_size=4)


@pytest.fixture(scope="module")
def served(engine):
    with inprocess_server(engine, max_batch_size=4, batch_window_ms=20, max_n=MAX_N) as s:
        yield s


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served[0] + "/v1", api_key="unused", max_retries=0, timeout=60)


def _ids(logprobs_tokens):
    return [int(t.removeprefix("token_id:")) for t in logprobs_tokens]


def _greedy(engine, prompt_ids, max_new, stop=()):
    return engine.generate([prompt_ids], SamplingParams(max_new_tokens=max_new, stop=tuple(stop)))[0][0]


# ---------------------------------------------------------------------------- happy paths
def test_models_and_health(served, client):
    base, state, _ = served
    assert [m.id for m in client.models.list().data] == ["tiny"]
    status, body = http("GET", base + "/health")
    assert status == 200 and body["status"] == "ok" and body["model"] == "tiny"
    status, body = http("GET", base + "/v1/models/other")
    assert status == 404 and body["error"]["param"] == "model"


def test_greedy_completion_equals_spine_generate(client, ckpt, engine, capsys):
    prompt = "Every effort moves you"
    code = main(["generate", "--checkpoint", str(ckpt), "--prompt", prompt, "--sampling.max_new_tokens", "12",
                 "--output", "jsonl", "--device", "cpu"])
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert code == 0
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0, logprobs=0,
                                  extra_body={"return_tokens_as_token_ids": True})
    ch = r.choices[0]
    generated = row.get("tokens", row.get("token_ids"))
    expected = generated[:-1] if row["finish_reason"] == "stop" else generated  # a stop token is not text
    assert _ids(ch.logprobs.tokens) == expected
    assert ch.text == row["completion"] and ch.finish_reason == row["finish_reason"]
    assert r.usage.prompt_tokens == len(prompt.encode()) and r.usage.completion_tokens == len(generated)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # log-probs are the model's: equal to a full forward pass over prompt + completion
    full = torch.tensor([list(prompt.encode()) + expected])
    ref = sequence_logprobs(engine.model, full)[0, len(prompt.encode()) - 1:]
    torch.testing.assert_close(torch.tensor(ch.logprobs.token_logprobs), ref, atol=1e-4, rtol=0)


def test_chat_renders_the_plain_template(client, engine):
    r = client.chat.completions.create(model="tiny", messages=[{"role": "system", "content": "Be brief."},
                                                               {"role": "user", "content": "hi"}],
                                       max_tokens=10, temperature=0)
    text = "Be brief.\n\nUser: hi\nAssistant:"  # the documented plain template, written out by hand
    want = _greedy(engine, list(text.encode()), 10, stop=("\nUser:",))
    assert r.choices[0].message.content == want.text and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == want.finish_reason
    assert r.usage.prompt_tokens == len(text.encode())


def test_alpaca_template_matches_the_instruction_stage():
    tok = get_tokenizer("byte")
    t = chat_template_for(tok, "auto")
    assert t.name == "alpaca"
    assert t.render([{"role": "user", "content": "Name a colour."}]) == \
        prompt_text({"instruction": "Name a colour.", "input": ""}, "alpaca")

    class Chatty:  # a tokenizer with its own template is used as is
        def encode_chat(self, messages, add_generation_prompt=True, enable_thinking=True):
            return [len(messages), int(enable_thinking)]

    assert chat_template_for(Chatty()).encode(Chatty(), [{"role": "user", "content": "x"}],
                                              enable_thinking=False) == [1, 0]


@pytest.mark.parametrize("kind", ["completion", "chat"])
def test_streaming_equals_non_streaming(client, kind):
    kw = dict(model="tiny", max_tokens=20, temperature=0.9, seed=123, n=2)
    if kind == "completion":
        full = client.completions.create(prompt="The cat", **kw)
        chunks = list(client.completions.create(prompt="The cat", stream=True, stream_options={"include_usage": True},
                                                **kw))
        texts = {i: "".join(c.choices[0].text for c in chunks if c.choices and c.choices[0].index == i) for i in (0, 1)}
        want = {c.index: c.text for c in full.choices}
    else:
        msgs = [{"role": "user", "content": "Tell me"}]
        full = client.chat.completions.create(messages=msgs, **kw)
        chunks = list(client.chat.completions.create(messages=msgs, stream=True,
                                                     stream_options={"include_usage": True}, **kw))
        texts = {i: "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i)
                 for i in (0, 1)}
        want = {c.index: c.message.content for c in full.choices}
    assert texts == want
    finishes = {c.choices[0].index: c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason}
    assert finishes == {c.index: c.finish_reason for c in full.choices}
    assert chunks[-1].usage is not None and chunks[-1].usage.model_dump() == full.usage.model_dump()


def test_n_and_seed_are_reproducible_and_independent_of_batching(client, engine):
    r1 = client.completions.create(model="tiny", prompt="Once", max_tokens=8, n=3, temperature=1.0, seed=5)
    r2 = client.completions.create(model="tiny", prompt="Once", max_tokens=8, n=3, temperature=1.0, seed=5)
    texts = [c.text for c in r1.choices]
    assert [c.index for c in r1.choices] == [0, 1, 2] and texts == [c.text for c in r2.choices]
    assert len(set(texts)) > 1  # three samples, not one repeated
    # the documented mapping: sample j of prompt i with seed s is engine key f"{s}:{i}" under batch seed 0
    direct = engine.generate([list(b"Once")], SamplingParams(temperature=1.0, seed=0, max_new_tokens=8, n=3),
                             keys=["5:0"])[0]
    assert texts == [c.text for c in direct]
    other = client.completions.create(model="tiny", prompt="Once", max_tokens=8, n=3, temperature=1.0, seed=6)
    assert [c.text for c in other.choices] != texts


def test_stop_strings_cut_text_and_count_tokens(client, engine):
    # a seeded sample (greedy output of the random tiny model is one repeated byte)
    full = engine.generate([list(b"A long")], SamplingParams(temperature=1.0, seed=0, max_new_tokens=40),
                           keys=["7:0"])[0][0]
    ids, tok = full.token_ids, engine.tokenizer
    text = tok.decode(ids)
    start = next(i for i in range(3, len(text) - 2) if "\ufffd" not in text[i:i + 2])
    stop = text[start:start + 2]
    r = client.completions.create(model="tiny", prompt="A long", max_tokens=40, temperature=1.0, seed=7,
                                  stop=[stop, "\x00zz"])
    assert r.choices[0].text == text[:text.find(stop)] and r.choices[0].finish_reason == "stop"
    counted = next(m for m in range(1, len(ids) + 1) if stop in tok.decode(ids[:m]))
    assert r.usage.completion_tokens == counted


def test_concurrent_requests_each_get_their_own_answer(served, client, engine):
    prompts = [f"prompt number {i}" for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda p: client.completions.create(model="tiny", prompt=p, max_tokens=6,
                                                                temperature=0).choices[0].text, prompts))
    assert got == [_greedy(engine, list(p.encode()), 6).text for p in prompts]


def test_batcher_groups_by_settings_and_keeps_each_requests_samples(engine):
    parser = RequestParser(engine.tokenizer, model_name="m", context_length=128, vocab_size=257,
                           chat_template=chat_template_for(engine.tokenizer, "plain"), max_n=4)
    reqs = [parser.completion({"model": "m", "prompt": p, "max_tokens": 6, "temperature": 1.0, "seed": s, "n": 2})
            for p, s in (("ab", 1), ("cd", 2), ("ef", 1))]
    odd = parser.completion({"model": "m", "prompt": "gh", "max_tokens": 7, "temperature": 1.0, "seed": 1, "n": 2})
    calls = []

    class Recording:
        def generate(self, prompts, params, keys):
            calls.append((len(prompts), params.max_new_tokens))
            return engine.generate(prompts, params, keys=keys)

    b = Batcher(Recording(), max_batch_size=8, window_s=0.0)
    futs = [b.submit(r) for r in (reqs[0], odd, reqs[1], reqs[2])]  # queued before the worker starts
    b.start()
    results = [f.result(timeout=60) for f in futs]
    b.close(timeout=10)
    assert calls == [(3, 6), (1, 7)]  # same settings batched together, the odd one alone
    for r, res in zip((reqs[0], odd, reqs[1], reqs[2]), results):
        alone = engine.generate(r.prompts, r.batch_params(), keys=r.keys())
        assert [c.token_ids for c in res[0]] == [c.token_ids for c in alone[0]]


def test_a_failing_request_fails_alone(engine):
    class Flaky:  # fails any batch holding the prompt "boom"
        tokenizer, model, context_length = engine.tokenizer, engine.model, engine.context_length

        def generate(self, prompts, params, keys):
            if list(b"boom") in [list(p) for p in prompts]:
                raise RuntimeError("engine exploded")
            return engine.generate(prompts, params, keys=keys)

    with inprocess_server(Flaky(), max_batch_size=8, batch_window_ms=200) as (base, state, _):
        body = {"model": "tiny", "max_tokens": 4, "temperature": 0}
        with ThreadPoolExecutor(3) as pool:
            res = list(pool.map(lambda p: http("POST", base + "/v1/completions", {**body, "prompt": p}),
                                ["fine", "boom", "also fine"]))
        assert [s for s, _ in res] == [200, 500, 200]
        assert res[1][1]["error"]["type"] == "server_error" and "engine exploded" in res[1][1]["error"]["message"]
        assert res[0][1]["choices"][0]["text"] == _greedy(engine, list(b"fine"), 4).text
        assert http("GET", base + "/health")[1]["status"] == "ok"


# ---------------------------------------------------------------------------- bad requests
C, CH = "/v1/completions", "/v1/chat/completions"
OK = {"model": "tiny", "prompt": "hi", "max_tokens": 2}
OKC = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
BAD = [
    (C, b"{not json", 400, None),
    (C, b"[1, 2]", 400, None),
    (C, {**OK, "model": "gpt-4"}, 404, "model"),
    (C, {"prompt": "hi"}, 400, "model"),
    (C, {**OK, "max_tokens": 200}, 400, "max_tokens"),
    (C, {**OK, "prompt": "x" * 300}, 400, "prompt"),
    (CH, {**OKC, "messages": [{"role": "user", "content": "x" * 300}]}, 400, "messages"),
    (CH, {**OKC, "max_completion_tokens": 500}, 400, "max_completion_tokens"),
    (C, {**OK, "temperature": -0.5}, 400, "temperature"),
    (C, {**OK, "n": MAX_N + 1}, 400, "n"),
    (C, {**OK, "temperature": "hot"}, 400, "temperature"),
    (C, {**OK, "max_tokens": "5"}, 400, "max_tokens"),
    (C, {**OK, "max_tokens": 1.5}, 400, "max_tokens"),
    (C, {**OK, "n": True}, 400, "n"),
    (C, {**OK, "seed": "x"}, 400, "seed"),
    (C, {**OK, "stop": 5}, 400, "stop"),
    (C, {**OK, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    (C, {**OK, "top_p": 0}, 400, "top_p"),
    (C, {**OK, "stream": "yes"}, 400, "stream"),
    (C, {**OK, "prompt": 5}, 400, "prompt"),
    (C, {**OK, "prompt": [999]}, 400, "prompt"),
    (C, {**OK, "prompt": ""}, 400, "prompt"),
    (C, {**OK, "logprobs": 2}, 400, "logprobs"),
    (C, {**OK, "presence_penalty": 1.0}, 400, "presence_penalty"),
    (CH, {**OKC, "messages": "hi"}, 400, "messages"),
    (CH, {**OKC, "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages"),
    (CH, {**OKC, "logprobs": 1}, 400, "logprobs"),
    (CH, {**OKC, "tools": [{"type": "function"}]}, 400, "tools"),
]


@pytest.mark.parametrize("path,body,status,param", BAD, ids=[f"{i}-{b[3]}" for i, b in enumerate(BAD)])
def test_bad_requests_get_openai_errors_naming_the_field(served, path, body, status, param):
    base = served[0]
    got, err = http("POST", base + path, body)
    assert got == status
    assert set(err) == {"error"} and set(err["error"]) == {"message", "type", "param", "code"}
    assert err["error"]["param"] == param
    if param:
        assert err["error"]["message"].startswith(param + ":")
    assert http("POST", base + C, OK)[0] == 200  # and the server carries on


def test_the_openai_client_raises_on_4xx(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="hi", max_tokens=1000)
    assert e.value.status_code == 400 and "max_tokens" in str(e.value)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="hi", max_tokens=1)


# ---------------------------------------------------------------------------- lifecycle
def test_shutdown_finishes_queued_requests(engine):
    body = {"model": "tiny", "prompt": "x", "max_tokens": 100, "temperature": 0}
    with inprocess_server(engine, max_batch_size=1, batch_window_ms=0, shutdown_timeout=60) as (base, state, server):
        with ThreadPoolExecutor(3) as pool:
            futs = [pool.submit(http, "POST", base + C, body) for _ in range(3)]
            while state.batcher.stats["requests"] < 3:
                threading.Event().wait(0.01)
            server.handle_exit(signal.SIGTERM, None)  # what uvicorn's SIGTERM handler calls
            res = [f.result(timeout=60) for f in futs]
    want = _greedy(engine, [ord("x")], 100).text
    assert [s for s, _ in res] == [200] * 3 and all(b["choices"][0]["text"] == want for _, b in res)


def test_cli_serve_sigterm_finishes_the_running_request_and_cancels_the_queue(ckpt, engine):
    proc, base = start_cli_server(ckpt, "--max_batch_size", "1", "--batch_window_ms", "0", "--shutdown_timeout", "0")
    try:
        c = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)
        assert c.completions.create(model="tiny", prompt="hi", max_tokens=3, temperature=0).choices[0].text == \
            _greedy(engine, list(b"hi"), 3).text
        body = {"model": "tiny", "prompt": "x", "max_tokens": 120, "temperature": 0}
        with ThreadPoolExecutor(4) as pool:
            futs = [pool.submit(http, "POST", base + C, body) for _ in range(4)]
            while True:  # wait until one request runs and others are queued behind it
                h = http("GET", base + "/health")[1]
                if h["running"] == 1 and h["queued"] >= 1:
                    break
            proc.send_signal(signal.SIGTERM)
            res = [f.result(timeout=60) for f in futs]
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    want = _greedy(engine, [ord("x")], 120).text
    done = [b for s, b in res if s == 200]
    cancelled = [b for s, b in res if s == 503]
    assert len(done) + len(cancelled) == 4 and done and cancelled  # none lost
    assert all(b["choices"][0]["text"] == want for b in done)
    assert all(b["error"]["type"] == "service_unavailable" for b in cancelled)
    with pytest.raises(OSError):
        wait_healthy(base, timeout=0.5)


def test_missing_extra_is_one_line(monkeypatch, capsys, ckpt):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi -> ImportError
    code = main(["serve", "--checkpoint", str(ckpt)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "pip install -e '.[serve]'" in err


def test_missing_dependency_of_an_installed_extra_is_named(monkeypatch):
    # seen on a GPU image: fastapi installed, its dependency absent -> the line must name the dependency
    from spine.serve import MissingExtra, require

    def fake_import(name, *a, **k):
        raise ModuleNotFoundError("No module named 'annotated_doc'", name="annotated_doc")

    monkeypatch.setattr("importlib.import_module", fake_import)
    with pytest.raises(MissingExtra, match="installed but cannot be imported: its dependency 'annotated_doc'"):
        require("fastapi", "spine serve")


# ---------------------------------------------------------------------------- spine chat
def test_chat_cli_multi_turn_reset_and_completion_mode(monkeypatch, capsys, ckpt, engine):
    import io

    flags = ["--temperature", "0", "--max_tokens", "6", "--device", "cpu"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\nmore\n/reset\nhi again\n/quit\nnever read\n"))
    assert main(["chat", "--checkpoint", str(ckpt), "--chat_template", "plain", *flags]) == 0
    out = capsys.readouterr().out.splitlines()
    stop = ("\nUser:",)
    r1 = _greedy(engine, list(b"User: hello\nAssistant:"), 6, stop).text
    sep = r1 if r1.startswith((" ", "\n")) else " " + r1
    r2 = _greedy(engine, list(f"User: hello\nAssistant:{sep}\nUser: more\nAssistant:".encode()), 6, stop).text
    r3 = _greedy(engine, list(b"User: hi again\nAssistant:"), 6, stop).text  # history forgotten
    assert out[0].startswith("[spine chat] chat mode, template plain")
    assert out[1:] == [r1, r2, "[history cleared]", r3]

    monkeypatch.setattr(sys, "stdin", io.StringIO("Once upon\na time\n"))
    assert main(["chat", "--checkpoint", str(ckpt), "--mode", "completion", *flags]) == 0
    out = capsys.readouterr().out.splitlines()
    c1 = _greedy(engine, list(b"Once upon"), 6).text
    c2 = _greedy(engine, list(f"Once upon{c1}\na time".encode()), 6).text
    assert out[0].startswith("[spine chat] completion mode") and out[1:] == [c1, c2]
