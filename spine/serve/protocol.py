"""The OpenAI wire format: request bodies -> validated `GenRequest`s, engine completions -> responses.

Pure Python (no web framework), so it is tested without a server. Every rejection is an `APIError`
that renders as OpenAI's error shape ``{"error": {"message", "type", "param", "code"}}`` and names
the offending field in `param`.

Semantics worth knowing (docs/serving.md has the full table):
- `seed`: sample j of prompt i of a request with seed s draws its noise from the engine key
  ``f"{s}:{i}"`` (batch seed 0), so a request's samples never depend on its batch-mates; without a
  seed the server draws a random one per request.
- `usage.completion_tokens` counts, per choice, the tokens up to and including the one that ended it
  (the stop token, or the token that completed a stop string); `prompt_tokens` counts each prompt once.
- `logprobs` are the model's own log-probs of the returned tokens (before temperature/top-p), as the
  engine reports them; alternatives (`logprobs` > 0 / `top_logprobs` > 0) are not computed.
"""
from __future__ import annotations

import math
import secrets
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Literal, Sequence

from ..engine import Completion, SamplingParams
from .templates import ChatTemplate, check_messages

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's documented default for /v1/completions
MAX_STOP = 4


class APIError(Exception):
    """A request the server refuses: HTTP status + OpenAI error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 type: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _bad(param: str, message: str) -> APIError:
    return APIError(400, f"{param}: {message}", param=param)


def _type_name(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(v), "number" if isinstance(v, (int, float)) else type(v).__name__)


def _get_int(body: dict, name: str, default: int | None, lo: int | None = None, hi: int | None = None) -> int | None:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(name, f"expected an integer, got {_type_name(v)} {v!r}"[:200])
    if lo is not None and v < lo:
        raise _bad(name, f"must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise _bad(name, f"must be <= {hi}, got {v}")
    return v


def _get_float(body: dict, name: str, default: float | None, lo: float, hi: float, *,
               lo_open: bool = False) -> float | None:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _bad(name, f"expected a finite number, got {_type_name(v)} {v!r}"[:200])
    if v < lo or (lo_open and v == lo) or v > hi:
        raise _bad(name, f"must be in {'(' if lo_open else '['}{lo}, {hi}], got {v}")
    return float(v)


def _get_bool(body: dict, name: str, default: bool) -> bool:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise _bad(name, f"expected a boolean, got {_type_name(v)} {v!r}"[:200])
    return v


@dataclass
class GenRequest:
    """One validated request: prompts as token ids + the engine settings + how to answer."""

    kind: Literal["completion", "chat"]
    prompts: list[list[int]]
    params: SamplingParams  # `seed` is the request's resolved seed
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False
    token_ids_as_tokens: bool = False
    id: str = ""
    created: int = 0

    def keys(self) -> list[str]:
        """The engine keys of this request's prompts (see the module docstring)."""
        return [f"{self.params.seed}:{i}" for i in range(len(self.prompts))]

    def batch_params(self) -> SamplingParams:
        """Settings shared by every request this one may be batched with (seed moves into the keys)."""
        return replace(self.params, seed=0)


# features the engine does not have: refuse them rather than silently ignore them
def _refuse_unsupported(body: dict, kind: str) -> None:
    def refuse(name: str, why: str) -> None:
        raise _bad(name, f"not supported by spine serve ({why})")

    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            refuse(name, "only 0 is accepted")
    if body.get("logit_bias"):
        refuse("logit_bias", "only an empty object is accepted")
    if kind == "completion":
        if body.get("echo"):
            refuse("echo", "only false is accepted")
        if body.get("suffix"):
            refuse("suffix", "insertion is not available")
        if body.get("best_of") is not None and body.get("best_of") != body.get("n", 1):
            refuse("best_of", "only best_of = n is accepted")
    else:
        for name in ("tools", "functions", "tool_choice", "function_call", "audio", "prediction"):
            if body.get(name):
                refuse(name, "no tool calls, audio or predicted outputs")
        rf = body.get("response_format")
        if rf is not None and (not isinstance(rf, dict) or rf.get("type") != "text"):
            refuse("response_format", "only {'type': 'text'}")


class RequestParser:
    """Turns OpenAI request bodies into `GenRequest`s for one served model."""

    def __init__(self, tokenizer: Any, *, model_name: str, context_length: int, vocab_size: int,
                 chat_template: ChatTemplate, max_n: int = 16):
        self.tok, self.model_name = tokenizer, model_name
        self.context_length, self.vocab_size = context_length, vocab_size
        self.template, self.max_n = chat_template, max_n

    # ------------------------------------------------------------------ shared fields
    def _check_model(self, body: dict) -> None:
        m = body.get("model")
        if m is None:
            raise _bad("model", "required; this server serves " + repr(self.model_name))
        if not isinstance(m, str):
            raise _bad("model", f"expected a string, got {_type_name(m)}")
        if m != self.model_name:
            raise APIError(404, f"model: {m!r} does not exist; this server serves {self.model_name!r}",
                           param="model", code="model_not_found")

    def _stop(self, body: dict) -> tuple[str, ...]:
        v = body.get("stop")
        if v is None:
            return ()
        stops = [v] if isinstance(v, str) else v
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _bad("stop", f"expected a string or an array of strings, got {_type_name(v)}")
        if len(stops) > MAX_STOP:
            raise _bad("stop", f"at most {MAX_STOP} stop sequences, got {len(stops)}")
        if any(s == "" for s in stops):
            raise _bad("stop", "stop sequences must be non-empty")
        return tuple(stops)

    def _params(self, body: dict, prompts: list[list[int]], prompt_param: str, *, kind: str,
                extra_stop: Sequence[str] = ()) -> tuple[SamplingParams, dict]:
        n = _get_int(body, "n", 1, lo=1)
        if n > self.max_n:
            raise _bad("n", f"at most {self.max_n} choices per request (--max_n), got {n}")
        temperature = _get_float(body, "temperature", 1.0, 0.0, 2.0)
        top_p = _get_float(body, "top_p", None, 0.0, 1.0, lo_open=True)
        top_k = _get_int(body, "top_k", None, lo=1)  # vLLM-style extension
        seed = _get_int(body, "seed", None)
        stop = self._stop(body)
        stream = _get_bool(body, "stream", False)
        opts = body.get("stream_options")
        if opts is not None and not isinstance(opts, dict):
            raise _bad("stream_options", f"expected an object, got {_type_name(opts)}")
        include_usage = bool(opts and _get_bool(opts, "include_usage", False))
        if opts and not stream:
            raise _bad("stream_options", "only allowed when stream is true")
        as_ids = _get_bool(body, "return_tokens_as_token_ids", False)  # vLLM-style extension
        if kind == "completion":
            lp = _get_int(body, "logprobs", None, lo=0, hi=5)
            if lp:
                raise _bad("logprobs", "only 0 is supported (the sampled token's log-prob; "
                                       "alternatives are not computed)")
            want_logprobs = lp is not None
        else:
            want_logprobs = _get_bool(body, "logprobs", False)
            if _get_int(body, "top_logprobs", None, lo=0, hi=20):
                raise _bad("top_logprobs", "only 0 is supported (alternatives are not computed)")
        _refuse_unsupported(body, kind)

        longest = max(len(p) for p in prompts)
        where = max(range(len(prompts)), key=lambda i: len(prompts[i]))
        label = (f"prompt {where}" if len(prompts) > 1 else "the prompt") if kind == "completion" else \
            "the prompt rendered from messages"
        if longest >= self.context_length:
            raise APIError(400, f"{prompt_param}: {label} is {longest} tokens; the model's context is "
                           f"{self.context_length} tokens and at least one must be left to generate",
                           param=prompt_param, code="context_length_exceeded")
        room = self.context_length - longest
        max_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        default = COMPLETIONS_DEFAULT_MAX_TOKENS if kind == "completion" else room
        max_tokens = _get_int(body, max_name, default, lo=1)
        if max_tokens > room:
            given = "" if body.get(max_name) is not None else " (the default)"
            raise APIError(400, f"{max_name}: {max_tokens}{given} + {longest} prompt tokens exceeds the model's "
                           f"context of {self.context_length} tokens; ask for at most {room}",
                           param=max_name, code="context_length_exceeded")
        if seed is None:
            seed = secrets.randbits(63)
        greedy = temperature == 0.0
        params = SamplingParams(temperature=temperature, top_k=None if greedy else top_k,
                                top_p=None if greedy else top_p, seed=seed, max_new_tokens=max_tokens,
                                stop=tuple(dict.fromkeys(stop + tuple(extra_stop))), n=n)
        return params, {"stream": stream, "include_usage": include_usage, "logprobs": want_logprobs,
                        "token_ids_as_tokens": as_ids}

    def _check_ids(self, ids: list, param: str) -> list[int]:
        bad = [t for t in ids if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < self.vocab_size]
        if bad:
            raise _bad(param, f"token ids must be integers in [0, {self.vocab_size}), got {bad[0]!r}")
        return list(ids)

    # ------------------------------------------------------------------ endpoints
    def completion(self, body: Any) -> GenRequest:
        """Validate a /v1/completions body."""
        if not isinstance(body, dict):
            raise APIError(400, f"request body must be a JSON object, got {_type_name(body)}")
        self._check_model(body)
        p = body.get("prompt")
        if p is None:
            raise _bad("prompt", "required")
        if isinstance(p, str):
            prompts = [self.tok.encode(p)]
        elif isinstance(p, list) and p and all(isinstance(x, str) for x in p):
            prompts = [self.tok.encode(x) for x in p]
        elif isinstance(p, list) and p and all(isinstance(x, int) and not isinstance(x, bool) for x in p):
            prompts = [self._check_ids(p, "prompt")]
        elif isinstance(p, list) and p and all(isinstance(x, list) for x in p):
            prompts = [self._check_ids(x, "prompt") for x in p]
        else:
            raise _bad("prompt", "expected a string, an array of strings, an array of token ids or an array "
                                 f"of token-id arrays, got {_type_name(p)}"
                                 + (" (empty)" if isinstance(p, list) and not p else ""))
        for i, ids in enumerate(prompts):
            if not ids:
                raise _bad("prompt", f"prompt {i} is empty (encodes to no tokens)")
        params, how = self._params(body, prompts, "prompt", kind="completion")
        return GenRequest("completion", prompts, params, id=f"cmpl-{uuid.uuid4().hex}", created=int(time.time()),
                          **how)

    def chat(self, body: Any, *, enable_thinking: bool | None = None) -> GenRequest:
        """Validate a /v1/chat/completions body and render its messages with the chat template."""
        if not isinstance(body, dict):
            raise APIError(400, f"request body must be a JSON object, got {_type_name(body)}")
        self._check_model(body)
        messages = body.get("messages")
        if messages is None:
            raise _bad("messages", "required")
        messages = _normalise_messages(messages)
        kwargs = body.get("chat_template_kwargs") or {}  # vLLM-style: {"enable_thinking": false}
        if not isinstance(kwargs, dict):
            raise _bad("chat_template_kwargs", f"expected an object, got {_type_name(kwargs)}")
        thinking = _get_bool(kwargs, "enable_thinking", True if enable_thinking is None else enable_thinking)
        try:
            ids = self.template.encode(self.tok, messages, enable_thinking=thinking)
        except ValueError as e:
            raise _bad("messages", str(e)) from None
        params, how = self._params(body, [ids], "messages", kind="chat", extra_stop=self.template.stop)
        return GenRequest("chat", [ids], params, id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()),
                          **how)


def _normalise_messages(messages: Any) -> list[dict[str, str]]:
    """OpenAI messages -> [{"role", "content"}] with text content ("developer" is a system message)."""
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "expected a non-empty array of message objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise _bad("messages", f"messages[{i}] must be an object, got {_type_name(m)}")
        role, content = m.get("role"), m.get("content")
        role = "system" if role == "developer" else role
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            if not all(isinstance(c, dict) and c.get("type") == "text" and isinstance(c.get("text"), str)
                       for c in content):
                raise _bad("messages", f"messages[{i}].content: only text parts are supported")
            content = "".join(c["text"] for c in content)
        out.append({"role": role, "content": content})
    try:
        check_messages(out)
    except ValueError as e:
        raise _bad("messages", str(e)) from None
    return out


# ---------------------------------------------------------------------------- responses
@dataclass
class Choice:
    """An engine completion settled for the wire: the returned tokens and the counted ones."""

    text: str
    ids: list[int]  # tokens that make up `text` (logprobs are reported for these)
    logprobs: list[float]
    counted: int  # tokens up to and including the one that ended the choice
    finish_reason: str


def _first_prefix(n: int, pred) -> int:
    """Smallest m in [1, n] with pred(m) true (pred monotone); n when none."""
    lo, hi = 1, n
    while lo < hi:
        mid = (lo + hi) // 2
        if pred(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def settle(tok: Any, c: Completion, stop_ids: set[int]) -> Choice:
    """Which of `c.token_ids` the client is shown and billed (see the module docstring)."""
    ids, lps = list(c.token_ids), list(c.logprobs)
    if c.finish_reason == "stop" and isinstance(c.stop_reason, str) and ids:
        # the stop string: count up to the token that completed it; show the tokens that cover the text
        hit = c.stop_reason
        counted = _first_prefix(len(ids), lambda m: hit in tok.decode(ids[:m]))
        shown = 0 if not c.text else _first_prefix(counted, lambda m: len(tok.decode(ids[:m])) >= len(c.text))
        return Choice(c.text, ids[:shown], lps[:shown], counted, "stop")
    if c.finish_reason == "stop" and ids and ids[-1] in stop_ids:
        return Choice(c.text, ids[:-1], lps[:-1], len(ids), "stop")
    return Choice(c.text, ids, lps, len(ids), c.finish_reason)


def token_bytes(tok: Any, i: int) -> bytes:
    """The bytes one token stands for (exact for byte, GPT-2 and spine BPE tokenizers)."""
    enc = getattr(tok, "encoding", None)
    if enc is not None and hasattr(enc, "decode_single_token_bytes"):
        try:
            return enc.decode_single_token_bytes(i)
        except Exception:  # special tokens outside the mergeable ranks
            pass
    if getattr(tok, "name", None) == "byte" and 0 <= i < 256:
        return bytes([i])
    if hasattr(tok, "decode_bytes"):
        return tok.decode_bytes([i])
    return tok.decode([i]).encode("utf-8", "surrogatepass")


def _token_str(tok: Any, i: int, as_ids: bool) -> str:
    return f"token_id:{i}" if as_ids else token_bytes(tok, i).decode("utf-8", errors="replace")


def usage(req: GenRequest, choices: Sequence[Sequence[Choice]]) -> dict[str, int]:
    prompt = sum(len(p) for p in req.prompts)
    completion = sum(ch.counted for per_prompt in choices for ch in per_prompt)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _completion_logprobs(tok: Any, ids: list[int], lps: list[float], as_ids: bool, offset0: int = 0) -> dict:
    tokens = [_token_str(tok, i, as_ids) for i in ids]
    offsets, pos = [], offset0
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": None, "text_offset": offsets}


def _chat_logprobs(tok: Any, ids: list[int], lps: list[float], as_ids: bool) -> dict:
    return {"content": [{"token": _token_str(tok, i, as_ids), "logprob": lp, "bytes": list(token_bytes(tok, i)),
                         "top_logprobs": []} for i, lp in zip(ids, lps)], "refusal": None}


def response(tok: Any, req: GenRequest, model: str, choices: list[list[Choice]]) -> dict[str, Any]:
    """The non-streaming response body."""
    out = []
    for i, per_prompt in enumerate(choices):
        for j, ch in enumerate(per_prompt):
            index = i * req.params.n + j
            if req.kind == "completion":
                lp = _completion_logprobs(tok, ch.ids, ch.logprobs, req.token_ids_as_tokens) if req.logprobs else None
                out.append({"index": index, "text": ch.text, "logprobs": lp, "finish_reason": ch.finish_reason})
            else:
                lp = _chat_logprobs(tok, ch.ids, ch.logprobs, req.token_ids_as_tokens) if req.logprobs else None
                out.append({"index": index, "message": {"role": "assistant", "content": ch.text},
                            "logprobs": lp, "finish_reason": ch.finish_reason})
    obj = "text_completion" if req.kind == "completion" else "chat.completion"
    return {"id": req.id, "object": obj, "created": req.created, "model": model, "choices": out,
            "usage": usage(req, choices)}


def _pieces(tok: Any, ch: Choice) -> Iterator[tuple[str, int, float]]:
    """(text delta, token id, logprob) per returned token; deltas hold back a partial UTF-8 character
    and concatenate to exactly `ch.text`."""
    sent, start = 0, 0
    for k, (i, lp) in enumerate(zip(ch.ids, ch.logprobs)):
        piece = tok.decode(ch.ids[start:k + 1])
        delta = ""
        if not piece.endswith("\ufffd") or k == len(ch.ids) - 1:
            delta = piece[:max(0, len(ch.text) - sent)]
            if ch.text.startswith(delta, sent):
                sent, start = sent + len(delta), k + 1
            else:
                delta = ""
        yield delta, i, lp
    if sent < len(ch.text):
        yield ch.text[sent:], -1, 0.0


def stream_events(tok: Any, req: GenRequest, model: str, choices: list[list[Choice]]) -> Iterator[dict[str, Any]]:
    """The chunk objects of a streamed response (one per returned token per choice, then the finish)."""
    obj = "text_completion" if req.kind == "completion" else "chat.completion.chunk"
    base = {"id": req.id, "object": obj, "created": req.created, "model": model}

    def chunk(index: int, text: str | None, ids: list[int], lps: list[float], finish: str | None,
              first: bool = False) -> dict[str, Any]:
        if req.kind == "completion":
            lp = _completion_logprobs(tok, ids, lps, req.token_ids_as_tokens) if req.logprobs and ids else None
            c = {"index": index, "text": text or "", "logprobs": lp, "finish_reason": finish}
        else:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if text:
                delta["content"] = text
            lp = _chat_logprobs(tok, ids, lps, req.token_ids_as_tokens) if req.logprobs and ids else None
            c = {"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}
        return {**base, "choices": [c]}

    for i, per_prompt in enumerate(choices):
        for j, ch in enumerate(per_prompt):
            index = i * req.params.n + j
            if req.kind == "chat":
                yield chunk(index, None, [], [], None, first=True)
            for delta, tid, lp in _pieces(tok, ch):
                yield chunk(index, delta, [tid] if tid >= 0 else [], [lp] if tid >= 0 else [], None)
            yield chunk(index, None, [], [], ch.finish_reason)
    if req.include_usage:
        yield {**base, "choices": [], "usage": usage(req, choices)}
