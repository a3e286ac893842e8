"""`Problem` — one evaluation task — and loaders for the formats the project reads.

A `Problem.prompt` is the bare problem statement; a prompt template (`spine.reasoning.prompts`)
wraps it before it reaches a model. Loaders take a local JSON/JSONL file (these machines have no
network) or, failing that, a Hugging Face dataset name (``datasets`` is imported only then).
Every bad input gets an error that names the file and, where it applies, the record and line.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

__all__ = [
    "Problem",
    "ProblemLoadError",
    "load_math500",
    "load_gsm8k",
    "load_jsonl_or_json",
    "load_problems",
    "validate_problems",
    "parse_synthetic_spec",
    "FORMATS",
]

FORMATS = ("auto", "math500", "gsm8k", "json", "jsonl", "synthetic")
_FILE_SUFFIXES = (".json", ".jsonl", ".ndjson")


@dataclass(frozen=True)
class Problem:
    """A task with a gold answer. `metadata` holds e.g. level, subject, solution, source."""

    id: str
    prompt: str
    answer: str
    metadata: dict = field(default_factory=dict)


class ProblemLoadError(ValueError):
    """A problem file could not be read into `Problem`s (bad JSON, missing field, empty)."""


# ----------------------------------------------------------------------------- file reading


def _looks_like_path(source: str | Path) -> bool:
    """True when `source` must be a local path (so a missing file is an error, not a hub name)."""
    if isinstance(source, Path):
        return True
    s = str(source)
    return (
        s.lower().endswith(_FILE_SUFFIXES)
        or s.startswith(("/", "./", "../", "~"))
        or "\\" in s
        or Path(s).expanduser().exists()
    )


def _resolve_file(path: str | Path, split: str | None = None) -> Path:
    """A readable file; a directory is accepted when exactly one JSON(L) file in it names `split`."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"problem file not found: {p}")
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.name.lower().endswith(_FILE_SUFFIXES))
        if split is not None:
            files = [f for f in files if split in f.name] or files
        if len(files) != 1:
            names = ", ".join(f.name for f in files) or "none"
            raise ProblemLoadError(f"{p} is a directory; expected exactly one JSON/JSONL problem file "
                                   f"(for split {split!r}) in it, found: {names}")
        p = files[0]
    return p


def _read_records(path: Path) -> list[dict]:
    """Records of a JSON list or a JSONL file, with file/line numbers in every error."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ProblemLoadError(f"{path}: not UTF-8 text ({e})") from None
    if not text.strip():
        raise ProblemLoadError(f"no problems in {path} (the file is empty)")
    jsonl = path.name.lower().endswith((".jsonl", ".ndjson"))
    records: Any
    if not jsonl:
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            # A JSONL file saved as .json parses as one object then fails with "Extra data".
            if e.msg == "Extra data" and text.lstrip().startswith("{"):
                jsonl = True
            else:
                raise ProblemLoadError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    if jsonl:
        records = []
        for lineno, line in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028 may sit in a string
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ProblemLoadError(f"{path}: invalid JSON on line {lineno}: {e.msg}") from None
    if isinstance(records, dict):
        # Accept {"data": [...]}-style wrappers with exactly one list of records.
        lists = [v for v in records.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise ProblemLoadError(f"{path}: expected a JSON list of records (or JSONL), got an object "
                                   f"with keys {sorted(records)}")
        records = lists[0]
    if not isinstance(records, list):
        raise ProblemLoadError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    if not records:
        raise ProblemLoadError(f"no problems in {path}")
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise ProblemLoadError(f"{path}: record {i} is a {type(r).__name__}, expected a JSON object")
    return records


def _field(rec: dict, name: str, *, where: str, index: int, allow_null: bool = False) -> Any:
    if name not in rec:
        present = ", ".join(sorted(rec)) or "none"
        raise ProblemLoadError(f"{where}: record {index} has no field {name!r} (fields present: {present})")
    if rec[name] is None and not allow_null:
        # str(None) would become the gold answer "None" and be graded against
        raise ProblemLoadError(f"{where}: record {index} field {name!r} is null; expected text")
    if isinstance(rec[name], (list, dict)) and not allow_null:
        raise ProblemLoadError(f"{where}: record {index} field {name!r} is a JSON {type(rec[name]).__name__}; "
                               "expected text or a number")
    return rec[name]


def _lone_surrogate(text: str) -> int:
    """Index of the first lone UTF-16 surrogate in `text` (JSON "\\ud800" parses to one), or -1."""
    for i, ch in enumerate(text):
        if "\ud800" <= ch <= "\udfff":
            return i
    return -1


def _strings(value: Any, path: str) -> list[tuple[str, str]]:
    if isinstance(value, str):
        return [(path, value)]
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in _strings(v, f"{path}.{k}") + _strings(k, f"{path} key")]
    if isinstance(value, (list, tuple)):
        return [x for i, v in enumerate(value) for x in _strings(v, f"{path}[{i}]")]
    return []


def validate_problems(problems: Sequence[Problem], *, where: str = "problems", engine: Any = None,
                      context_length: int | None = None, max_new_tokens: int = 0,
                      setting: str = "--sampling.max_new_tokens") -> None:
    """Check every problem before anything is generated; one ProblemLoadError line naming the problem.

    Refused: no problems, duplicate ids, an empty gold answer, a lone surrogate anywhere (it cannot be
    written as UTF-8, so the trace writer would fail mid-run and on every resume). With `engine` (a
    `spine.reasoning.pipelines.ProblemEngine`: `prompt_for`, `tokenizer`, `chat`) and the model's
    `context_length`: a rendered prompt that does not leave room for `max_new_tokens` (generation
    would cut it from the front, silently); the line names the longest such prompt, how many do not fit
    and the largest value of `setting` (the caller's name for max_new_tokens) that fits them all.
    """
    if not problems:
        raise ProblemLoadError(f"{where}: no problems to evaluate")
    seen: set[str] = set()
    for i, p in enumerate(problems):
        label = f"{where}: problem {i} (id {p.id!r})"
        if p.id in seen:
            raise ProblemLoadError(f"{label}: the id is not unique; traces key samples by problem id")
        seen.add(p.id)
        if not isinstance(p.answer, str) or not p.answer.strip():
            raise ProblemLoadError(f"{label}: the gold answer is empty; every problem needs one to be graded")
        if not isinstance(p.prompt, str) or not p.prompt.strip():
            raise ProblemLoadError(f"{label}: the prompt is empty")
        for field_name, text in [("id", p.id), ("prompt", p.prompt), ("answer", p.answer),
                                 *_strings(p.metadata, "metadata")]:
            at = _lone_surrogate(text)
            if at >= 0:
                raise ProblemLoadError(f"{label}: {field_name} holds a lone surrogate {text[at]!r} at character "
                                       f"{at}, which is not valid Unicode text; fix the record")
    if engine is None or context_length is None:
        return
    limit = context_length - max_new_tokens
    special = "all" if engine.chat else frozenset()
    lengths = [len(engine.tokenizer.encode(engine.prompt_for(p), allowed_special=special)) for p in problems]
    over = [n > limit for n in lengths]
    if any(over):
        i = max(range(len(lengths)), key=lambda j: lengths[j])
        n, p = lengths[i], problems[i]
        room = (f"set {setting} to at most {context_length - n} to fit them all"
                if n < context_length else "no new token fits the longest")
        raise ProblemLoadError(
            f"{where}: {sum(over)} of {len(problems)} prompts do not fit: the longest, problem {i} (id {p.id!r}), "
            f"is {n} tokens, and with {setting} {max_new_tokens} it does not fit the model's context of "
            f"{context_length} tokens; {room}, or leave those problems out (prompts are never cut)")


def _as_text(value: Any) -> str:
    # Gold answers are sometimes stored as numbers; keep ints as "72", not "72.0".
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else str(value)


def _load_hf(name: str, split: str, config: str | None = None) -> tuple[list[dict], str]:
    try:
        import datasets  # lazy: heavy, and only needed for hub names
    except ImportError as e:  # pragma: no cover - datasets is a dependency
        raise ImportError(f"loading {name!r} from the Hugging Face hub needs `datasets`; "
                          "or pass a local JSON/JSONL file") from e
    try:
        ds = datasets.load_dataset(name, config, split=split) if config else datasets.load_dataset(name, split=split)
    except Exception as e:
        raise ProblemLoadError(f"could not load Hugging Face dataset {name!r} (split {split!r}): {e}. "
                               "Without network access pass a local JSON/JSONL file instead.") from e
    records = [dict(r) for r in ds]
    where = f"{name}[{split}]"
    if not records:
        raise ProblemLoadError(f"no problems in {where}")
    return records, where


def _source_records(path_or_name: str | Path, split: str, hf_config: str | None = None) -> tuple[list[dict], str]:
    if _looks_like_path(path_or_name):
        p = _resolve_file(path_or_name, split)
        return _read_records(p), str(p)
    return _load_hf(str(path_or_name), split, hf_config)


# ----------------------------------------------------------------------------- loaders


def _math500_from_records(records: list[dict], where: str) -> list[Problem]:
    out = []
    for i, r in enumerate(records):
        meta = {k: r[k] for k in ("level", "subject", "solution") if k in r}
        meta["source"] = "math500"
        pid = r.get("unique_id") or r.get("id") or f"math500-{i}"
        out.append(Problem(id=str(pid), prompt=_as_text(_field(r, "problem", where=where, index=i)),
                           answer=_as_text(_field(r, "answer", where=where, index=i)), metadata=meta))
    return out


def load_math500(path_or_name: str | Path = "HuggingFaceH4/MATH-500", split: str = "test") -> list[Problem]:
    """MATH-500-style records {problem, answer, solution?, subject?, level?, unique_id?}.

    `path_or_name` is a local JSON/JSONL file (or a folder holding one) or a hub dataset name.
    Ids are the records' `unique_id` (e.g. "test/precalculus/807.json") when present.
    """
    records, where = _source_records(path_or_name, split)
    return _math500_from_records(records, where)


def _gsm8k_answer(text: str, *, where: str, index: int) -> tuple[str, str]:
    """(final answer, worked solution) from a GSM8K answer "...\\n#### 1,234"."""
    if "####" not in text:
        raise ProblemLoadError(f"{where}: record {index} field 'answer' has no '#### <answer>' marker")
    solution, final = text.rsplit("####", 1)
    final = final.strip().replace(",", "")
    if not final:
        raise ProblemLoadError(f"{where}: record {index} field 'answer' is empty after '####'")
    return final, solution.strip()


def _gsm8k_from_records(records: list[dict], where: str, split: str) -> list[Problem]:
    out = []
    for i, r in enumerate(records):
        q = _as_text(_field(r, "question", where=where, index=i))
        final, solution = _gsm8k_answer(_as_text(_field(r, "answer", where=where, index=i)), where=where, index=i)
        pid = r.get("id") or f"gsm8k-{split}-{i}"
        out.append(Problem(id=str(pid), prompt=q, answer=final,
                           metadata={"solution": solution, "source": "gsm8k"}))
    return out


def load_gsm8k(path_or_name: str | Path = "openai/gsm8k", split: str = "test") -> list[Problem]:
    """GSM8K-style JSONL {question, answer: "...#### 1,234"}; the gold answer is "1234".

    Ids are the record's `id` if it has one, else "gsm8k-<split>-<index>".
    """
    records, where = _source_records(path_or_name, split, hf_config="main")
    return _gsm8k_from_records(records, where, split)


def load_jsonl_or_json(path: str | Path, *, prompt_field: str, answer_field: str, id_field: str | None = None,
                       metadata_fields: Sequence[str] = ()) -> list[Problem]:
    """Generic loader: name the fields that hold the prompt, the answer and (optionally) the id.

    Ids default to "<file stem>-<index>". Listed `metadata_fields` must be present in every record.
    """
    p = _resolve_file(path)
    records = _read_records(p)
    where = str(p)
    out = []
    for i, r in enumerate(records):
        prompt = _as_text(_field(r, prompt_field, where=where, index=i))
        answer = _as_text(_field(r, answer_field, where=where, index=i))
        pid = _field(r, id_field, where=where, index=i) if id_field else f"{p.stem}-{i}"
        meta = {k: _field(r, k, where=where, index=i, allow_null=True) for k in metadata_fields}
        meta.setdefault("source", p.name)
        out.append(Problem(id=str(pid), prompt=prompt, answer=answer, metadata=meta))
    ids = [q.id for q in out]
    if len(set(ids)) != len(ids):
        dup = next(x for x in ids if ids.count(x) > 1)
        raise ProblemLoadError(f"{where}: problem ids are not unique (e.g. {dup!r}); pass another id_field")
    return out


def parse_synthetic_spec(spec: str) -> dict[str, Any]:
    """"synthetic:level=2,n=200,seed=1,split=eval" -> {"level": 2, "n": 200, "seed": 1, "split": "eval"}.

    Defaults: level=1, n=100, seed=0, split="eval" (a spec is for evaluation, so held-out).
    """
    head, _, body = spec.partition(":")
    if head.strip() != "synthetic":
        raise ValueError(f"not a synthetic spec: {spec!r} (expected 'synthetic:level=..,n=..')")
    out: dict[str, Any] = {"level": 1, "n": 100, "seed": 0, "split": "eval"}
    for part in filter(None, (x.strip() for x in body.split(","))):
        key, eq, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or key not in out:
            raise ValueError(f"bad synthetic spec item {part!r} in {spec!r}; known keys: {', '.join(out)}")
        if key == "split":
            out[key] = value
        else:
            try:
                out[key] = int(value)
            except ValueError:
                raise ValueError(f"synthetic spec {spec!r}: {key} must be an integer, got {value!r}") from None
    if out["n"] < 1:
        raise ValueError(f"synthetic spec {spec!r}: n must be >= 1")
    return out


def _sniff_format(records: list[dict], where: str) -> str:
    first = records[0]
    if "problem" in first and "answer" in first:
        return "math500"
    if "question" in first and "answer" in first and "####" in _as_text(first["answer"]):
        return "gsm8k"
    raise ProblemLoadError(
        f"{where}: cannot tell the format from the fields {sorted(first)}; pass format='math500' or "
        "'gsm8k', or prompt_field=... and answer_field=... for a generic JSON/JSONL file")


def load_problems(source: str | Path, *, format: str = "auto", **field_map: Any) -> list[Problem]:
    """Load problems from a file, a hub dataset name, a "synthetic:..." or a "task:..." spec.

    `format`: "auto" (sniffed from the fields), "math500", "gsm8k", "json"/"jsonl" (generic: needs
    `prompt_field` and `answer_field`, optional `id_field`, `metadata_fields`), or "synthetic".
    `split` may be passed for hub datasets (default "test"). Passing `prompt_field` selects the
    generic loader under "auto".
    """
    if format not in FORMATS:
        raise ValueError(f"unknown problem format {format!r}; known formats: {', '.join(FORMATS)}")
    src = str(source)
    if src.strip().startswith("task:"):  # task family specs (spine.reasoning.tasks.spec)
        if field_map:
            raise ValueError(f"task problems take no field options (got {sorted(field_map)})")
        from spine.reasoning.tasks.spec import load_task_problems  # lazy: tasks import this module

        return load_task_problems(src)
    if format == "synthetic" or (format == "auto" and src.split(":", 1)[0].strip() == "synthetic"):
        if field_map:
            raise ValueError(f"synthetic problems take no field options (got {sorted(field_map)})")
        from spine.reasoning.synthetic import ArithmeticProblems, to_problem  # lazy: avoids an import cycle

        spec = parse_synthetic_spec(src if ":" in src else src + ":")
        gen = ArithmeticProblems(seed=spec["seed"], level=spec["level"], split=spec["split"])
        return [to_problem(sp) for sp in gen.take(spec["n"])]

    split = field_map.pop("split", "test")
    generic_keys = {"prompt_field", "answer_field", "id_field", "metadata_fields"}
    unknown = set(field_map) - generic_keys
    if unknown:
        raise TypeError(f"load_problems got unknown options {sorted(unknown)}; "
                        f"known: split, {', '.join(sorted(generic_keys))}")
    if format in ("json", "jsonl") or (format == "auto" and field_map):
        missing = [k for k in ("prompt_field", "answer_field") if k not in field_map]
        if missing:
            raise ValueError(f"format {format!r} needs {' and '.join(missing)} to name the record fields")
        return load_jsonl_or_json(src, **field_map)
    if field_map:
        raise TypeError(f"field options {sorted(field_map)} only apply to format 'json'/'jsonl'")
    if format == "math500":
        return load_math500(source, split)
    if format == "gsm8k":
        return load_gsm8k(source, split)
    # auto, no field map: hub names by their well-known names, files by their fields.
    if not _looks_like_path(source):
        low = src.lower()
        if "gsm8k" in low:
            return load_gsm8k(src, split)
        if "math" in low:
            return load_math500(src, split)
        raise ValueError(f"cannot tell the format of {src!r}: not a local file and not a known dataset "
                         "name; pass format=... (and field names for a generic file)")
    records, where = _source_records(source, split)
    fmt = _sniff_format(records, where)
    return _math500_from_records(records, where) if fmt == "math500" else _gsm8k_from_records(records, where, split)

