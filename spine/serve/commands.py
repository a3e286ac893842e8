"""The `spine serve`, `spine chat` and `spine judge` subcommands (registered in spine.commands)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal, Optional

from ..commands import DType, _load, _slug, command
from . import require

ChatTemplateName = Literal["auto", "tokenizer", "alpaca", "phi3", "plain"]


@command("serve")
def serve(
    checkpoint: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    model_name: Optional[str] = None,
    max_batch_size: int = 8,
    batch_window_ms: float = 10.0,
    max_n: int = 16,
    max_queue: int = 1024,
    chat_template: ChatTemplateName = "auto",
    shutdown_timeout: float = 30.0,
    device: Literal["auto", "cpu", "cuda"] = "auto",
    dtype: DType = None,
    tokenizer: Optional[str] = None,
    log_level: Literal["warning", "info", "debug"] = "warning",
    threads: Optional[int] = None,
) -> int:
    """Serve a checkpoint over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, /v1/models).

    Args:
        checkpoint: spine checkpoint directory, or hf:PATH for a Hugging Face checkpoint directory.
        host: interface to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface).
        port: TCP port (0 picks a free one; the address is printed when the server is ready).
        model_name: the model id clients send (default: the checkpoint directory's name).
        max_batch_size: at most this many prompts per engine call (concurrent requests are batched).
        batch_window_ms: how long the oldest queued request waits for batch-mates with the same settings.
        max_n: the largest `n` (choices per prompt) a request may ask for.
        max_queue: requests queued beyond this get HTTP 503.
        chat_template: auto (the tokenizer's, else alpaca), tokenizer, alpaca, phi3 or plain.
        shutdown_timeout: after SIGTERM/SIGINT, seconds queued requests may still start; later ones get 503.
        device: auto (CUDA when available), cpu or cuda.
        dtype: cast the weights (default: as stored).
        tokenizer: tokenizer name or directory, for checkpoints saved without one.
        log_level: uvicorn log level (info logs every request).
        threads: CPU threads torch uses per op (default: torch's choice); 1 is fastest for small models on a
            busy machine, where spinning worker threads fight for cores.
    """
    require("fastapi", "spine serve")
    require("uvicorn", "spine serve")
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {port}")
    for name, v, lo in (("max_batch_size", max_batch_size, 1), ("max_n", max_n, 1), ("max_queue", max_queue, 1)):
        if v < lo:
            raise ValueError(f"--{name} must be >= {lo}, got {v}")
    if batch_window_ms < 0 or shutdown_timeout < 0:
        raise ValueError("--batch_window_ms and --shutdown_timeout must be >= 0")
    from ..engine import Engine
    from .app import build_state, listen, serve as run_server
    from .templates import chat_template_for

    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
    sock = listen(host, port)  # fail on a busy port before paying for the model load
    model, tok = _load(checkpoint, device, dtype, tokenizer)
    template = chat_template_for(tok, chat_template)
    name = model_name or Path(checkpoint.removeprefix("hf:")).expanduser().resolve().name
    engine = Engine(model, tok, batch_size=max_batch_size)
    state = build_state(engine, model_name=name, chat_template=template, max_batch_size=max_batch_size,
                        batch_window_ms=batch_window_ms, max_n=max_n, max_queue=max_queue)
    run_server(state, sock, shutdown_timeout=shutdown_timeout, log_level=log_level)
    return 0


@command("chat", repeatable=("stop",))
def chat(
    checkpoint: str,
    mode: Literal["chat", "completion"] = "chat",
    chat_template: ChatTemplateName = "auto",
    system: Optional[str] = None,
    max_tokens: int = 256,
    temperature: float = 0.7,
    top_p: Optional[float] = None,
    top_k: Optional[int] = None,
    seed: Optional[int] = None,
    stop: Optional[list[str]] = None,
    enable_thinking: bool = False,
    device: Literal["auto", "cpu", "cuda"] = "auto",
    dtype: DType = None,
    tokenizer: Optional[str] = None,
) -> int:
    """Chat with a checkpoint in the terminal (multi-turn; /reset, /history, /quit).

    Args:
        checkpoint: spine checkpoint directory, or hf:PATH.
        mode: chat (history rendered with the chat template; for instruction-tuned models) or completion
            (one running text the model continues; how a base model is used).
        chat_template: auto (the tokenizer's, else alpaca), tokenizer, alpaca, phi3 or plain.
        system: a system message (chat mode).
        max_tokens: tokens generated per reply.
        temperature: 0 for greedy replies.
        top_p: nucleus sampling threshold.
        top_k: sample among the k most likely tokens.
        seed: makes the conversation reproducible (turn t draws noise from key "turn{t}").
        stop: extra stop strings (repeat the flag).
        enable_thinking: let a Qwen3 chat model think before answering.
        device: auto (CUDA when available), cpu or cuda.
        dtype: cast the weights (default: as stored).
        tokenizer: tokenizer name or directory, for checkpoints saved without one.
    """
    from ..engine import Engine, SamplingParams
    from .chat import run_chat
    from .templates import chat_template_for

    params = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                            max_new_tokens=max_tokens, stop=tuple(stop or ()))
    model, tok = _load(checkpoint, device, dtype, tokenizer)
    if max_tokens >= model.config.context_length:
        raise ValueError(f"--max_tokens {max_tokens} leaves no room for a prompt in the context of "
                         f"{model.config.context_length} tokens")
    template = chat_template_for(tok, chat_template) if mode == "chat" else None
    run_chat(Engine(model, tok, batch_size=1), params, mode=mode, template=template, system=system,
             enable_thinking=enable_thinking, stdin=sys.stdin, stdout=sys.stdout, interactive=sys.stdin.isatty())
    return 0


@command("judge")
def judge(
    endpoint: str,
    model: str,
    rubric: Literal["book-0-100", "rfs-1-5"],
    traces: Optional[str] = None,
    responses: Optional[str] = None,
    response_field: str = "model_response",
    reference_field: str = "output",
    output: Optional[str] = None,
    concurrency: int = 4,
    timeout: float = 120.0,
    max_retries: int = 2,
    api_key: Optional[str] = None,
    limit: Optional[int] = None,
) -> int:
    """Score responses with an LLM judge behind any OpenAI-compatible endpoint (Ollama, vLLM, spine serve).

    Args:
        endpoint: base URL of the API, e.g. http://127.0.0.1:11434/v1 (Ollama) or http://127.0.0.1:8000/v1.
        model: the judge model's name at that endpoint.
        rubric: book-0-100 (the first book's ch. 7 prompt) or rfs-1-5 (a 1-5 rubric).
        traces: a spine trace file: each record's prompt, completion and gold answer are judged.
        responses: a JSON/JSONL file of records with instruction, input, output (reference) and
            model_response (the book's instruction-data-with-response.json).
        response_field: field of --responses holding the response to judge.
        reference_field: field of --responses holding the reference answer.
        output: trace file for the judgements (default runs/judge/<source>-<rubric>-<hash>.jsonl); a
            rerun with the same settings resumes it.
        concurrency: requests in flight at once.
        timeout: seconds per request.
        max_retries: retries of a failed request (then it is counted as failed, not recorded).
        api_key: API key (default: $OPENAI_API_KEY, or a placeholder for local servers).
        limit: judge only the first LIMIT responses.
    """
    from ..traces import config_hash
    from .judge import (JUDGE_PROMPT_VERSION, JudgeClient, _sha256, base_url, format_judge_summary, get_rubric,
                        judge_items, load_responses, load_trace_items, summarize_scores)

    if (traces is None) == (responses is None):
        raise ValueError("give exactly one of --traces FILE or --responses FILE")
    if concurrency < 1 or (limit is not None and limit < 1):
        raise ValueError("--concurrency and --limit must be >= 1")
    r = get_rubric(rubric)
    url = base_url(endpoint)
    source = Path(traces or responses)
    items = load_trace_items(source) if traces else load_responses(source, response_field=response_field,
                                                                    reference_field=reference_field)
    items = items[:limit] if limit else items
    if not items:
        raise ValueError(f"{source}: nothing to judge")
    client = JudgeClient(url, model, api_key=api_key, timeout=timeout, max_retries=max_retries)
    cfg = {"judge": {"endpoint": url, "model": model, "rubric": r.name, "temperature": client.temperature,
                     "seed": client.seed, "max_tokens": r.max_tokens, "prompt_version": JUDGE_PROMPT_VERSION},
           "source": {"path": str(source.resolve()), "sha256": _sha256(source), "kind": "traces" if traces else
                      "responses", "response_field": response_field, "reference_field": reference_field}}
    out = Path(output) if output else Path("runs") / "judge" / f"{_slug(source.stem)}-{r.name}-{config_hash(cfg)[:8]}.jsonl"
    from ..traces import TraceWriter

    with TraceWriter(out, run_config=cfg) as writer:
        scores, failed = judge_items(items, client, r, writer, concurrency=concurrency)
    summary = summarize_scores(scores, r, failed)
    print(f"{source} | judge {model} at {url} | rubric {r.name}")
    print(format_judge_summary(summary))
    print(f"traces: {out}")
    return 0
