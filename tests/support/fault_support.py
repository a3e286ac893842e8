"""Test-only helpers for tests/test_faults.py.

- `KillDuringSave(save)`: SIGKILL this process in the middle of writing the `save`-th training
  checkpoint (half of its bytes written, nothing flushed or renamed): the worst moment for a kill.
- `python fault_support.py CASES.json RESULTS.json`: run each case's `spine` argv through the real
  entry point (`modules.cli.main`) in this one process (one interpreter start for dozens of
  commands), with stderr captured, an optional file-size limit (RLIMIT_FSIZE: a full disk without
  needing a small filesystem), and any exception that escapes recorded as a traceback.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import signal
import sys
import traceback

import lightning.pytorch as L
import torch


class KillDuringSave(L.Callback):
    def __init__(self, save: int = 2):
        self.save = save

    def setup(self, trainer, pl_module, stage):
        original, count = torch.save, [0]

        def half_then_die(obj, f, *args, **kwargs):
            if not hasattr(f, "write"):  # a path: not the checkpoint writer's file object
                return original(obj, f, *args, **kwargs)
            count[0] += 1
            if count[0] < self.save:
                return original(obj, f, *args, **kwargs)
            buf = io.BytesIO()
            original(obj, buf, *args, **kwargs)
            data = buf.getvalue()
            f.write(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)

        torch.save = half_then_die


def _run(case: dict) -> dict:
    from modules.cli import main

    err, out = io.StringIO(), io.StringIO()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    if case.get("fsize"):
        resource.setrlimit(resource.RLIMIT_FSIZE, (case["fsize"], hard))
    cwd = os.getcwd()
    try:
        os.chdir(case.get("cwd", cwd))
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = main(case["argv"])
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 2
            except BaseException:  # noqa: BLE001 - the point: nothing should get here
                traceback.print_exc()
                code = "traceback"
    finally:
        os.chdir(cwd)
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    return {"code": code, "stderr": err.getvalue(), "stdout": out.getvalue()}


if __name__ == "__main__":
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the size limit fails with EFBIG instead
    cases = json.loads(open(sys.argv[1]).read())
    results = {name: _run(case) for name, case in cases.items()}
    with open(sys.argv[2], "w") as f:
        json.dump(results, f)
