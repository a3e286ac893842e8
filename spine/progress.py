"""One progress line for loops outside the Trainer (`spine eval`, scripts).

On a terminal: a single line rewritten in place (`\\r`), `label  k/N problems  rate  ETA`. Elsewhere
(redirected, tee, SLURM): a line at every tenth of the work (and the last), so a log gets ~10 lines,
not one per chunk. No dependency beyond the standard library; `spine/` stays free of Lightning.
"""
from __future__ import annotations

import sys
import time
from typing import IO, Callable


def _fmt(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressLine:
    """Call with (done, total) as work completes; `close()` ends a terminal line."""

    def __init__(self, label: str, unit: str = "items", stream: IO[str] | None = None, tty: bool | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.label, self.unit = label, unit
        self.stream = stream or sys.stderr
        self.tty = bool(self.stream.isatty()) if tty is None else tty
        self.clock = clock
        self._t0: float | None = None
        self._start_done = 0
        self._last_decile = -1
        self._open = False

    def text(self, done: int, total: int) -> str:
        now = self.clock()
        if self._t0 is None:
            self._t0, self._start_done = now, done
        elapsed = now - self._t0
        parts = [f"{self.label}  {done}/{total} {self.unit}"]
        rate_n = done - self._start_done  # work resumed from a trace file took no time here
        if rate_n > 0 and elapsed > 0:
            parts.append(f"{rate_n / elapsed:.2f} {self.unit}/s")
            parts.append(f"ETA {_fmt(elapsed / rate_n * max(0, total - done))}")
        parts.append(f"elapsed {_fmt(elapsed)}")
        return "  ".join(parts)

    def __call__(self, done: int, total: int) -> None:
        line = self.text(done, total)
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
            self._open = True
            if done >= total:
                self.close()
        else:
            decile = (10 * done) // max(total, 1)
            if decile == self._last_decile and done < total:
                return
            self._last_decile = decile
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False
