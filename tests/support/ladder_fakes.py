"""Hand-made ladder run pieces for the ladder tests: trace records and files, a safetensors header with
given shapes (no weights), and the report's main table."""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path


def record(pid: str, i: int, correct: bool, tokens: int, level: int, *, final: bool | None = None,
            extracted: str | None = "1", finish: str = "stop") -> dict:
    meta = {"level": level, "finish_reason": finish}
    if final is not None:
        meta["final"] = final
    return {"type": "record", "run_id": "r", "config_hash": "h", "checkpoint_sha256": None, "problem_id": pid,
            "sample_index": i, "prompt": "Q", "completion": "A", "extracted": extracted, "extraction_method": "box",
            "gold": "1", "correct": correct, "rule": "exact", "tokens": tokens, "seconds": 0.1, "metadata": meta}


def write_traces(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"type": "header", "format": "spine-trace/1", "run_id": "r", "config_hash": "h", "config": {}}
    path.write_text("".join(json.dumps(o) + "\n" for o in [header, *records]))


def fake_checkpoint(path: Path, shapes: dict[str, list[int]]) -> None:
    """A model.safetensors whose header declares `shapes` (float32, zero data)."""
    path.mkdir(parents=True, exist_ok=True)
    header, off = {}, 0
    for name, shape in shapes.items():
        size = 4 * math.prod(shape)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + size]}
        off += size
    blob = json.dumps(header).encode()
    (path / "model.safetensors").write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(off))


def greedy(correct_by_level: dict[int, list[bool]], tokens: int) -> list[dict]:
    return [record(f"L{lv}-{j}", 0, c, tokens, lv) for lv, cs in correct_by_level.items() for j, c in enumerate(cs)]


def main_table(md: str) -> list[str]:
    """The rows of the report's first table (the ladder itself; later sections repeat rung names)."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| rung |"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]
