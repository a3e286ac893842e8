"""`spine serve`: an OpenAI-compatible HTTP API on FastAPI + uvicorn, over the one engine.

Endpoints: POST /v1/completions, POST /v1/chat/completions (JSON or server-sent events),
GET /v1/models, GET /v1/models/{id}, GET /health. Handlers only parse, queue and format: generation
is `Engine.generate`, reached through the `Batcher`. Bodies are parsed by `RequestParser` (not by
FastAPI models) so every rejection has OpenAI's error shape and names its field.

Streaming sends the chunks once the engine has finished the request (the engine returns whole
completions); clients see the same SSE protocol as from any OpenAI server.
"""
from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engine import Engine, stop_token_ids
from .batcher import Batcher, Overloaded, ShuttingDown
from .protocol import APIError, RequestParser, response, settle, stream_events
from .templates import ChatTemplate

log = logging.getLogger("spine.serve")


@dataclass
class ServerState:
    engine: Engine
    batcher: Batcher
    parser: RequestParser
    model_name: str
    created: int


def build_state(engine: Engine, *, model_name: str, chat_template: ChatTemplate, max_batch_size: int = 8,
                batch_window_ms: float = 10.0, max_n: int = 16, max_queue: int = 1024) -> ServerState:
    """Parser + batcher for `engine` (the batcher is started by the app's lifespan)."""
    model = engine.model
    parser = RequestParser(engine.tokenizer, model_name=model_name, context_length=engine.context_length,
                           vocab_size=model.config.vocab_size, chat_template=chat_template, max_n=max_n)
    batcher = Batcher(engine, max_batch_size=max_batch_size, window_s=batch_window_ms / 1000.0, max_queue=max_queue)
    return ServerState(engine, batcher, parser, model_name, int(time.time()))


def _error(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


def create_app(state: ServerState) -> FastAPI:
    """The FastAPI application serving `state`'s model."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.batcher.start()
        yield
        state.batcher.close(timeout=5.0)

    app = FastAPI(title="spine serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    tok = state.engine.tokenizer
    stops = stop_token_ids(tok)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return _error(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return _error(APIError(e.status_code, f"{request.method} {request.url.path}: {e.detail}", type=kind))

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return _error(APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error"))

    def model_card() -> dict[str, Any]:
        return {"id": state.model_name, "object": "model", "created": state.created, "owned_by": "spine",
                "max_model_len": state.engine.context_length}

    @app.get("/health")
    async def health():
        b = state.batcher
        return {"status": "shutting_down" if b.shutting_down else "ok", "model": state.model_name,
                "queued": b.queued, "running": b.running, **b.stats}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if model_id != state.model_name:
            raise APIError(404, f"model: {model_id!r} does not exist; this server serves {state.model_name!r}",
                           param="model", code="model_not_found")
        return model_card()

    async def body_of(request: Request) -> Any:
        raw = await request.body()
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"request body is not valid JSON: {e}") from None

    async def run(req) -> list:
        try:
            fut = state.batcher.submit(req)
        except ShuttingDown as e:
            raise APIError(503, str(e), type="service_unavailable") from None
        except Overloaded as e:
            raise APIError(503, str(e), type="service_unavailable", code="overloaded") from None
        try:
            out = await asyncio.wrap_future(fut)
        except ShuttingDown as e:
            raise APIError(503, str(e), type="service_unavailable") from None
        except ValueError as e:  # input the engine refused that validation let through
            raise APIError(400, str(e)) from None
        return [[settle(tok, c, stops) for c in per_prompt] for per_prompt in out]

    async def answer(req):
        choices = await run(req)
        if not req.stream:
            return response(tok, req, state.model_name, choices)

        def events():
            for ev in stream_events(tok, req, state.model_name, choices):
                yield f"data: {json.dumps(ev, ensure_ascii=False)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await answer(state.parser.completion(await body_of(request)))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await answer(state.parser.chat(await body_of(request)))

    return app


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0 = a free port; read it back with getsockname)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def make_server(state: ServerState, *, shutdown_timeout: float = 30.0, log_level: str = "warning"):
    """A uvicorn Server whose SIGTERM/SIGINT first puts the batcher into shutdown (see Batcher)."""
    import uvicorn

    class _Server(uvicorn.Server):
        def handle_exit(self, sig, frame):  # runs in the signal handler: only sets flags
            state.batcher.begin_shutdown(shutdown_timeout)
            super().handle_exit(sig, frame)

    # uvicorn waits for open requests; the margin covers an engine call that is already running
    config = uvicorn.Config(create_app(state), log_level=log_level, lifespan="on",
                            timeout_graceful_shutdown=shutdown_timeout + 60.0, access_log=log_level == "info")
    return _Server(config)


def serve(state: ServerState, sock: socket.socket, *, shutdown_timeout: float = 30.0,
          log_level: str = "warning") -> None:
    """Serve on `sock` until SIGTERM/SIGINT; returns after in-flight requests finished or were cancelled."""
    server = make_server(state, shutdown_timeout=shutdown_timeout, log_level=log_level)
    host, port = sock.getsockname()[:2]
    print(f"spine serve: {state.model_name} on http://{host}:{port}/v1 (context {state.engine.context_length}, "
          f"batch <= {state.batcher.max_batch_size} prompts, window {state.batcher.window_s * 1000:g} ms)",
          flush=True)
    # uvicorn re-raises the captured signal after its graceful shutdown; with the default handler
    # that would kill us with -15 after a clean stop, so the handler it restores is a no-op
    if sys.platform != "win32":
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
    server.run(sockets=[sock])
    print(f"spine serve: stopped ({state.batcher.stats['requests']} requests, "
          f"{state.batcher.stats['cancelled']} cancelled)", flush=True)
