"""Micro-batching: concurrent requests -> few `Engine.generate` calls, on one worker thread.

Requests wait in a FIFO queue. The worker takes the oldest request, waits until `window_s` after it
arrived (less when its batch is already full), and runs every queued request with the *same settings*
(`GenRequest.batch_params()`: temperature, top-k/p, max tokens, stops, n; the seed is not a setting)
in one engine call, up to `max_batch_size` prompts. Each request keeps its own noise through the
engine's keys (`GenRequest.keys()`), so its samples are those it would get alone. Requests with other
settings stay queued, in order, for the next call.

A failing engine call is retried one request at a time, so a bad request fails alone. Shutdown:
`begin_shutdown(grace_s)` refuses new work at once, lets queued requests start for `grace_s` seconds,
then fails those still queued with `ShuttingDown`; a call already running always finishes.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ..engine import Completion, SamplingParams
from .protocol import GenRequest

log = logging.getLogger("spine.serve")


class ShuttingDown(RuntimeError):
    """The server is stopping and did not start this request."""


class Overloaded(RuntimeError):
    """The queue is full."""


@dataclass
class _Job:
    req: GenRequest
    params: SamplingParams
    future: Future
    arrived: float = field(default_factory=time.monotonic)


class Batcher:
    """Queue + worker thread in front of an `Engine` (anything with `generate(prompts, params, keys=)`)."""

    def __init__(self, engine: Any, *, max_batch_size: int = 8, window_s: float = 0.01, max_queue: int = 1024):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if window_s < 0:
            raise ValueError(f"batch window must be >= 0, got {window_s}")
        self.engine, self.max_batch_size, self.window_s, self.max_queue = engine, max_batch_size, window_s, max_queue
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._shutdown_at: float | None = None  # monotonic time after which queued jobs are cancelled
        self.running = 0  # requests inside the current engine call
        self.stats = {"requests": 0, "batches": 0, "max_batch": 0, "failed": 0, "cancelled": 0}

    # ------------------------------------------------------------------ client side
    def submit(self, req: GenRequest) -> Future:
        """Queue `req`; the future resolves to its completions (list per prompt) or an exception."""
        fut: Future = Future()
        with self._cond:
            if self._shutdown_at is not None or self._closed:
                raise ShuttingDown("the server is shutting down; not accepting new requests")
            if len(self._queue) >= self.max_queue:
                raise Overloaded(f"{len(self._queue)} requests already queued; retry later")
            self._queue.append(_Job(req, req.batch_params(), fut))
            self.stats["requests"] += 1
            self._cond.notify()
        return fut

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def shutting_down(self) -> bool:
        return self._shutdown_at is not None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "Batcher":
        self._thread = threading.Thread(target=self._run, name="spine-serve-engine", daemon=True)
        self._thread.start()
        return self

    def begin_shutdown(self, grace_s: float = 0.0) -> None:
        """Refuse new requests; cancel those not started within `grace_s` seconds. Signal-handler safe
        (only sets attributes; the worker polls)."""
        if self._shutdown_at is None:
            self._shutdown_at = time.monotonic() + max(0.0, grace_s)

    def close(self, timeout: float | None = None) -> None:
        """Stop after the queue is empty (or cancelled); join the worker."""
        self.begin_shutdown(0.0 if timeout is None else timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ worker
    def _cancel_queued(self) -> None:
        while self._queue:
            job = self._queue.popleft()
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(ShuttingDown("the server shut down before this request started"))
            self.stats["cancelled"] += 1

    def _next_batch(self) -> list[_Job] | None:
        with self._cond:
            while True:
                if self._shutdown_at is not None and time.monotonic() >= self._shutdown_at:
                    self._cancel_queued()
                if not self._queue:
                    if self._closed:
                        return None
                    self._cond.wait(0.05)
                    continue
                head = self._queue[0]
                same = [j for j in self._queue if j.params == head.params]
                size = sum(len(j.req.prompts) for j in same)
                wait = head.arrived + self.window_s - time.monotonic()
                if wait > 0 and size < self.max_batch_size and not self._closed and self._shutdown_at is None:
                    self._cond.wait(min(wait, 0.05))
                    continue
                batch, total = [], 0
                for j in same:  # oldest first; the head always goes, even if larger than the cap
                    if batch and total + len(j.req.prompts) > self.max_batch_size:
                        break
                    batch.append(j)
                    total += len(j.req.prompts)
                for j in batch:
                    self._queue.remove(j)
                return batch

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            live = [j for j in batch if j.future.set_running_or_notify_cancel()]  # skip disconnected clients
            self.stats["cancelled"] += len(batch) - len(live)
            if not live:
                continue
            self.running = len(live)
            try:
                self._execute(live)
            finally:
                self.running = 0

    def _generate(self, jobs: list[_Job]) -> list[list[Completion]]:
        prompts = [p for j in jobs for p in j.req.prompts]
        keys = [k for j in jobs for k in j.req.keys()]
        return self.engine.generate(prompts, jobs[0].params, keys=keys)

    def _execute(self, jobs: list[_Job]) -> None:
        self.stats["batches"] += 1
        self.stats["max_batch"] = max(self.stats["max_batch"], sum(len(j.req.prompts) for j in jobs))
        try:
            out = self._generate(jobs)
        except Exception as e:  # noqa: BLE001 - isolate the culprit, keep serving
            if len(jobs) > 1:
                log.warning("batch of %d requests failed (%s: %s); retrying one at a time", len(jobs),
                            type(e).__name__, e)
                for j in jobs:
                    self._execute([j])
                self.stats["batches"] -= 1
                return
            log.exception("request %s failed", jobs[0].req.id)
            self.stats["failed"] += 1
            jobs[0].future.set_exception(e)
            return
        i = 0
        for j in jobs:
            n = len(j.req.prompts)
            j.future.set_result(out[i:i + n])
            i += n
