"""Start `spine serve`'s app in-process (a uvicorn thread on 127.0.0.1:0) or as a subprocess, for tests."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def http(method: str, url: str, body: bytes | dict | None = None, timeout: float = 30.0) -> tuple[int, dict]:
    """(status, JSON body) of one request; error statuses are returned, not raised."""
    data = json.dumps(body).encode() if isinstance(body, dict) or isinstance(body, list) else body
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_healthy(base: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return http("GET", base + "/health", timeout=2.0)[1]
        except (urllib.error.URLError, ConnectionError, OSError):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{base} did not become healthy within {timeout}s") from None
            time.sleep(0.05)


@contextlib.contextmanager
def inprocess_server(engine, *, model_name: str = "tiny", chat_template: str = "plain", shutdown_timeout: float = 30.0,
                     **state_kw):
    """Yield (base_url, state, server) for an app serving `engine` on a uvicorn thread."""
    from spine.serve.app import build_state, listen, make_server
    from spine.serve.templates import chat_template_for

    state = build_state(engine, model_name=model_name, chat_template=chat_template_for(engine.tokenizer, chat_template),
                        **state_kw)
    sock = listen("127.0.0.1", 0)
    server = make_server(state, shutdown_timeout=shutdown_timeout)
    t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        wait_healthy(base, timeout=30.0)
        yield base, state, server
    finally:
        server.should_exit = True
        t.join(30.0)


def start_cli_server(checkpoint: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """`spine serve --checkpoint ... --port 0 ARGS` as a subprocess; returns (process, base_url) once it listens."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # spine.commands.main is what `spine serve` runs; entering there skips `modules` (Lightning) imports
    entry = "import sys; from spine.commands import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", entry, "serve", "--checkpoint", str(checkpoint),
                             "--host", "127.0.0.1", "--port", "0", "--device", "cpu", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "http://" in line:
                found.set()

    threading.Thread(target=read, daemon=True).start()
    if not found.wait(120.0):
        proc.kill()
        raise TimeoutError(f"spine serve did not start: {proc.stderr.read()[-2000:] if proc.poll() is not None else ''}")
    url = next(line for line in lines if "http://" in line).split("http://", 1)[1].split("/", 1)[0]
    proc.output_lines = lines  # type: ignore[attr-defined]
    return proc, f"http://{url}"
