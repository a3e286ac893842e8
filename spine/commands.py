"""`spine` subcommands that are not a Trainer loop: generate, import-hf, export-hf, eval, report.

Each command is a typed function with a docstring, registered with `@command(name)`; the parser is
built from the signatures with jsonargparse (as LightningCLI does), so flags, `--config file.yaml`
and `--print_config` behave like `spine fit`. To add a command, write a function and decorate it;
`modules.cli` routes every subcommand that is not fit/validate/test/predict to `main(argv)`.

Errors a user can cause (bad path, bad flag, prompt too long, ...) print one line on stderr and
return exit code 2; set SPINE_DEBUG=1 to see the traceback instead.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from argparse import ArgumentError
from pathlib import Path
from typing import Callable, Literal, Optional

from .params import SamplingParams

EXIT_USAGE = 2
DType = Optional[Literal["float32", "bfloat16", "float16"]]

# name -> function; `_POSITIONAL` names commands whose required parameters are positional (SRC DST)
COMMANDS: dict[str, Callable[..., Optional[int]]] = {}
_POSITIONAL: set[str] = set()
# list-typed options that may be repeated (`--prompt a --prompt b`), per command
_REPEATABLE: dict[str, tuple[str, ...]] = {}
# command -> (parameter, help): a list parameter taken as one or more positional words (`report A B`)
_VARIADIC: dict[str, tuple[str, str]] = {}


def command(name: str, *, positional: bool = False, repeatable: tuple[str, ...] = (),
            variadic: tuple[str, str] | None = None):
    """Register `fn` as subcommand `name` (required parameters positional when `positional`;
    `variadic=(param, help)` makes the list parameter `param` take all positional words)."""
    def register(fn: Callable[..., Optional[int]]) -> Callable[..., Optional[int]]:
        COMMANDS[name] = fn
        if positional:
            _POSITIONAL.add(name)
        if repeatable:
            _REPEATABLE[name] = repeatable
        if variadic:
            _VARIADIC[name] = variadic
        return fn
    return register


def _device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but CUDA is not available")
    return device


def _check_target(dst: str, overwrite: bool) -> Path:
    p = Path(dst).expanduser()
    if p.exists() and (not p.is_dir() or any(p.iterdir())) and not overwrite:
        raise FileExistsError(f"{p} already exists; pass --overwrite true to replace it")
    return p


# ---------------------------------------------------------------------------- commands
@command("generate", repeatable=("prompt",))
def generate(
    checkpoint: str,
    prompt: list[str],
    sampling: SamplingParams = SamplingParams(),
    batch_size: int = 16,
    device: Literal["auto", "cpu", "cuda"] = "auto",
    dtype: DType = None,
    tokenizer: Optional[str] = None,
    on_overflow: Literal["error", "truncate"] = "error",
    output: Literal["text", "jsonl"] = "text",
) -> int:
    """Generate completions for each prompt from a spine checkpoint (or hf:PATH).

    Args:
        checkpoint: spine checkpoint directory (see `spine import-hf` or training runs), or hf:PATH.
        prompt: prompt text; repeat --prompt for several prompts (decoded as one batch).
        sampling: how to sample (--sampling.max_new_tokens 40, --sampling.temperature 0.7,
            --sampling.top_k, --sampling.top_p, --sampling.seed, --sampling.n, --sampling.stop); greedy by default.
        batch_size: rows (samples) decoded together.
        device: auto (CUDA when available), cpu or cuda.
        dtype: cast the weights (default: as stored).
        tokenizer: tokenizer name or directory, for checkpoints saved without one.
        on_overflow: 'error' if a prompt plus max_new_tokens exceeds the context, 'truncate' keeps its last tokens.
        output: 'text' prints each completion; 'jsonl' prints one JSON object per completion.
    """
    from .engine import Engine

    model, tok = _load(checkpoint, device, dtype, tokenizer)
    for i, p in enumerate(prompt):
        if not p:
            raise ValueError(f"prompt {i} is empty; give some text")
    out = Engine(model, tok, batch_size=batch_size).generate(prompt, sampling, on_overflow=on_overflow)
    many = len(prompt) > 1 or sampling.n > 1
    for i, row in enumerate(out):
        for c in row:
            if output == "jsonl":
                print(json.dumps({"prompt": prompt[i], "index": c.index, "completion": c.text,
                                  "tokens": c.token_ids, "finish_reason": c.finish_reason,
                                  "prompt_tokens": c.prompt_tokens, "generated_tokens": c.generated_tokens},
                                 ensure_ascii=False))
            else:
                if many:
                    print(f"--- [{i}{f'.{c.index}' if sampling.n > 1 else ''}] {c.finish_reason}")
                print(c.text)
    return 0


@command("import-hf", positional=True)
def import_hf(src: str, dst: str, dtype: DType = None, overwrite: bool = False) -> int:
    """Convert a Hugging Face GPT-2 / Qwen3 checkpoint directory into a spine checkpoint.

    Args:
        src: HF checkpoint directory (config.json + safetensors or pytorch_model.bin).
        dst: spine checkpoint directory to write (with the tokenizer when SRC has one).
        dtype: cast the weights (default: as stored).
        overwrite: replace DST if it exists.
    """
    from .checkpoint import save_checkpoint
    from .hf import import_hf as _import, import_hf_tokenizer, parse_dtype

    target = _check_target(dst, overwrite)
    model = _import(src, dtype=parse_dtype(dtype))
    tok = import_hf_tokenizer(src)
    save_checkpoint(target, model, tok, metadata={"source": "import-hf", "hf_path": str(Path(src).absolute())})
    print(f"wrote {target}: {model.config.family} {model.num_params():,} parameters, "
          f"tokenizer {tok.name if tok is not None else 'none'}")
    return 0


@command("export-hf", positional=True)
def export_hf(src: str, dst: str, overwrite: bool = False) -> int:
    """Export a spine checkpoint to a directory that transformers' AutoModelForCausalLM loads.

    Args:
        src: spine checkpoint directory.
        dst: HF directory to write (config.json, model.safetensors, tokenizer files).
        overwrite: write into DST even if it is not empty.
    """
    from .checkpoint import load_checkpoint
    from .hf import export_hf as _export

    target = _check_target(dst, overwrite)
    model, tok = load_checkpoint(src)
    _export(model, target, tok)
    print(f"wrote {target}: HF {json.loads((target / 'config.json').read_text())['model_type']} checkpoint")
    return 0


@command("consolidate", positional=True)
def consolidate(src: str, dst: str, dtype: DType = None, overwrite: bool = False) -> int:
    """Turn a Lightning training checkpoint (a .ckpt file or an FSDP sharded directory) into a spine checkpoint.

    Args:
        src: what ModelCheckpoint wrote: a `.ckpt` file, or the directory ModelParallelStrategy (FSDP2)
            writes (shards + .metadata + meta.pt), at any number of ranks; read here in one process.
        dst: spine checkpoint directory to write (with the tokenizer stored in the training checkpoint).
        dtype: cast the weights (default: as trained, float32 master weights).
        overwrite: replace DST if it exists.
    """
    from .distributed import consolidate as _consolidate
    from .hf import parse_dtype

    target = _check_target(dst, overwrite)
    out = _consolidate(src, target, dtype=parse_dtype(dtype))
    manifest = json.loads((out / "manifest.json").read_text())
    tok = "with" if "spine_tokenizer.json" in manifest["files"] else "without"
    print(f"wrote {out} (step {manifest['metadata'].get('global_step', '?')}, {tok} tokenizer) from {src}")
    return 0


def _load(checkpoint: str, device: str, dtype: DType, tokenizer: Optional[str]):
    """(model, tokenizer) through the one loader, `spine.engine.load_model`."""
    from .engine import load_model
    from .hf import parse_dtype

    return load_model(checkpoint, device=_device(device), dtype=parse_dtype(dtype), tokenizer=tokenizer,
                      require_tokenizer=True)


def _slug(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "-" for c in text)
    return "-".join(filter(None, keep.split("-")))[:40] or "run"


@command("eval")
def eval_(
    checkpoint: str,
    problems: str,
    format: Literal["auto", "math500", "gsm8k", "json", "jsonl", "synthetic"] = "auto",
    prompt_field: Optional[str] = None,
    answer_field: Optional[str] = None,
    id_field: Optional[str] = None,
    limit: Optional[int] = None,
    template: str = "math",
    chat: bool = False,
    enable_thinking: bool = False,
    pipeline: str = "greedy",
    sampling: SamplingParams = SamplingParams(max_new_tokens=256),
    scorer: Optional[str] = None,
    scorer_args: Optional[dict] = None,
    rounds: Optional[int] = None,
    early_stop: Optional[bool] = None,
    round_size: Optional[int] = None,
    batch_size: int = 16,
    traces: Optional[str] = None,
    device: Literal["auto", "cpu", "cuda"] = "auto",
    dtype: DType = None,
    tokenizer: Optional[str] = None,
) -> int:
    """Evaluate a checkpoint on reasoning problems: generate, extract, grade, write traces, summarize.

    Args:
        checkpoint: spine checkpoint directory, or hf:PATH for a Hugging Face checkpoint directory.
        problems: problem file (MATH-500 JSON, GSM8K JSONL, generic JSON/JSONL), HF dataset name, or a
            synthetic spec such as "synthetic:level=1,n=50,seed=7,split=eval".
        format: problem format; auto sniffs it from the records' fields.
        prompt_field: record field holding the question (generic json/jsonl files).
        answer_field: record field holding the gold answer (generic json/jsonl files).
        id_field: record field holding a unique id (generic json/jsonl files; default: file stem + index).
        limit: evaluate only the first LIMIT problems.
        template: prompt template (math, math_cot, plain, synthetic).
        chat: wrap the prompt in the tokenizer's chat template (Qwen3).
        enable_thinking: let a chat model think (<think>...</think>) before answering.
        pipeline: greedy (one sample per problem), sc (self-consistency: n samples, majority vote), bestofn
            (n samples, the best by --scorer), refine (draft -> critique -> revise, --rounds), or any registered
            pipeline (docs/pipelines.md).
        scorer: bestofn / refine: mean_logprob, sum_logprob, heuristic, self_verify, judge, or oracle (reads
            the gold answer: an upper bound, never a method).
        scorer_args: options of the scorer as JSON, e.g. '{"endpoint": "http://host:8000", "model": "judge"}'
            for judge, '{"brevity_chars": 300}' for heuristic.
        rounds: refine: the most critique -> revise rounds (default 3).
        early_stop: sc: draw in rounds and stop once the leading answer can no longer be overtaken.
        round_size: sc with early_stop: samples drawn per round after the first n // 2 + 1.
        sampling: how to sample (--sampling.max_new_tokens, --sampling.temperature, --sampling.n,
            --sampling.top_k, --sampling.top_p, --sampling.seed, --sampling.stop; or `sampling:` in a --config
            YAML). sc samples at temperature 0.8 with n=8 unless told otherwise; the synthetic template
            stops at "\\nQuestion:" unless stop strings are given. Samples depend on (seed, problem id,
            sample index), so a resumed or re-chunked run reproduces them.
        batch_size: rows (samples) decoded together; changes speed only.
        traces: trace JSONL file; a rerun with the same settings resumes it, other settings are refused
            (default: runs/eval/<checkpoint>-<pipeline>-<config hash>.jsonl).
        device: auto (CUDA when available), cpu or cuda.
        dtype: cast the weights (default: as stored).
        tokenizer: tokenizer name or directory, for checkpoints saved without one.
    """
    from .engine import hf_path
    from .reasoning.evaluate import checkpoint_identity, chunk_size_for, evaluate, run_config, source_identity
    from .reasoning.pipelines import ProblemEngine, make_pipeline, pipeline_options
    from .reasoning.problems import load_problems, validate_problems
    from .reasoning.prompts import render_prompt
    from .traces import config_hash, format_summary

    # cheap checks first: a typo should not cost a model load
    render_prompt("x", template)
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    if template == "synthetic" and not sampling.stop:
        sampling = dataclasses.replace(sampling, stop=("\nQuestion:",))
    options = {k: v for k, v in (("scorer", scorer), ("scorer_args", scorer_args), ("rounds", rounds),
                                 ("early_stop", early_stop), ("round_size", round_size)) if v is not None}
    bad = [f"--{k}" for k in options if k not in pipeline_options(pipeline)]
    if bad:
        raise ValueError(f"{', '.join(bad)} does not apply to --pipeline {pipeline} (see spine eval --help)")
    pipe = make_pipeline(pipeline, sampling=sampling, **options)
    params = pipe.sampling
    fields = {k: v for k, v in (("prompt_field", prompt_field), ("answer_field", answer_field),
                                ("id_field", id_field)) if v is not None}
    try:
        probs = load_problems(problems, format=format, **fields)
    except TypeError as e:  # option combinations the loader rejects
        raise ValueError(str(e)) from None
    probs = probs[:limit] if limit else probs
    validate_problems(probs, where=problems)  # before the model loads: nothing generated for a bad file
    source, extra = source_identity(problems)
    if tokenizer is not None:
        extra["tokenizer"] = tokenizer

    model, tok = _load(checkpoint, device, dtype, tokenizer)
    extra["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")  # bf16 and fp32 answers differ
    engine = ProblemEngine(model, tok, template=template, chat=chat, enable_thinking=enable_thinking,
                           batch_size=batch_size)
    validate_problems(probs, where=problems, engine=engine, context_length=model.config.context_length,
                      max_new_tokens=params.max_new_tokens)
    sha = checkpoint_identity(checkpoint)
    label = pipe.label() if callable(getattr(pipe, "label", None)) else pipeline
    if traces is None:
        cfg = run_config(engine, pipe, source=source, checkpoint_sha256=sha, extra=extra)
        name = Path(hf_path(checkpoint) or checkpoint).expanduser().resolve().name
        traces = str(Path("runs") / "eval" / f"{_slug(name)}-{label}-{config_hash(cfg)[:8]}.jsonl")

    from .progress import ProgressLine

    progress = ProgressLine("[spine eval]", unit="problems")
    report = evaluate(probs, engine, pipe, trace_path=traces, source=source, checkpoint_sha256=sha, extra=extra,
                      chunk_size=chunk_size_for(batch_size, params.n), progress=progress)
    resumed = f", {report.skipped} resumed from the trace file" if report.skipped else ""
    bound = " (oracle: an upper bound, not a method)" if getattr(getattr(pipe, "scorer", None), "upper_bound", False) else ""
    print(f"{checkpoint} | {problems} | {label}{bound}, temperature {params.temperature} | {len(probs)} problems{resumed}")
    print(format_summary(report.summary))
    print(f"traces: {report.trace_path}")
    return 0


@command("report", variadic=("traces", "trace JSONL files written by spine eval / validate / ReasoningEval"))
def report(traces: list[str], png: Optional[str] = None, frontier: Optional[str] = None,
           rounds_png: Optional[str] = None,
           group_by: list[str] = ["level", "subject"]) -> int:  # noqa: B006 (jsonargparse reads the default)
    """Summarize trace files: accuracy and cost tables, the compute/quality frontier, accuracy vs k and vs round.

    Args:
        traces: trace JSONL files.
        png: write accuracy vs samples per problem here (self-consistency votes and best-of-N's best of k).
        frontier: write accuracy vs mean generated tokens per problem of all the runs here (one chart).
        rounds_png: write accuracy vs round of the self-refinement runs here.
        group_by: metadata keys that get one table row per value.
    """
    from .reasoning.grade import answers_equivalent
    from .reasoning.report import report as _report

    for name, value in (("--png", png), ("--frontier", frontier), ("--rounds_png", rounds_png)):
        if value is not None and not value.lower().endswith(".png"):
            raise ValueError(f"{name} {value}: expected a .png file name")
    _report(traces, png, equivalent=answers_equivalent, group_by=group_by, frontier_png=frontier,
            rounds_png=rounds_png, print_it=True)
    return 0


from .serve import commands as _serve_commands  # noqa: E402,F401  (registers serve, chat, judge)
from . import ladder_commands  # noqa: E402,F401  (registers `ladder` and `ladder-report`)


# ---------------------------------------------------------------------------- parser / main
def build_parser():
    """jsonargparse parser with one subcommand per registered function."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="spine", description="spine tools (Trainer stages: spine fit|validate|test|"
                            "predict)", exit_on_error=False, allow_abbrev=False)
    subcommands = parser.add_subcommands(dest="subcommand")
    for name, fn in COMMANDS.items():
        sub = ArgumentParser(prog=f"spine {name}", exit_on_error=False, allow_abbrev=False)
        sub.add_argument("--config", action=ActionConfigFile, help="YAML/JSON file with any of the options")
        if name in _VARIADIC:
            param, help_text = _VARIADIC[name]
            # jsonargparse reads a positional list as one JSON value; argparse's nargs="+" takes words
            sub.add_argument(param, nargs="+", help=help_text)
            sub.add_function_arguments(fn, as_positional=name in _POSITIONAL, skip={param})
        else:
            sub.add_function_arguments(fn, as_positional=name in _POSITIONAL)
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        subcommands.add_subcommand(name, sub, help=summary)
    return parser


def _expand_repeatable(argv: list[str]) -> list[str]:
    """`--prompt a --prompt b` → a list: first occurrence sets it (JSON), later ones append (`+`)."""
    if not argv or argv[0] not in _REPEATABLE:
        return argv
    out, seen, i = [argv[0]], set(), 1
    names = {f"--{n}": n for n in _REPEATABLE[argv[0]]}
    while i < len(argv):
        arg, value = argv[i], None
        key = arg.split("=", 1)[0]
        if key in names and "=" in arg:
            value = arg.split("=", 1)[1]
        elif key in names and i + 1 < len(argv):
            value, i = argv[i + 1], i + 1
        if value is None:
            out.append(arg)
        elif key in seen:
            out += [f"{key}+", value]
        else:
            seen.add(key)
            out += [key, json.dumps([value])]  # always text: never parsed as YAML
        i += 1
    return out


def stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll reports an error on it)."""
    import select

    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
    except (AttributeError, OSError, ValueError):  # no real descriptor (captured), or no poll (Windows)
        return False
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def silence_stdout() -> None:
    """Point stdout's descriptor at devnull, so the interpreter's last flush does not fail on a closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (AttributeError, OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; returns the exit code (0 ok, 2 usage or input error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        cfg = parser.parse_args(_expand_repeatable(argv))
    except SystemExit as e:  # --help / --print_config
        return int(e.code or 0) if isinstance(e.code, int) or e.code is None else EXIT_USAGE
    except (ArgumentError, ValueError, TypeError) as e:
        print(f"spine: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    name = cfg.subcommand
    try:  # nested dataclasses (SamplingParams) from their namespaces; their checks raise ValueError
        cfg = parser.instantiate(cfg)
    except (ValueError, TypeError) as e:
        print(f"spine {name}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    kwargs = {k: v for k, v in vars(cfg[name]).items() if k != "config"}
    try:
        return int(COMMANDS[name](**kwargs) or 0)
    except (ValueError, OSError, RuntimeError, ArgumentError) as e:
        if isinstance(e, BrokenPipeError) and stdout_closed():
            raise  # the reader of our output went away (`| head`): the console script ends quietly
        if os.environ.get("SPINE_DEBUG"):
            raise
        print(f"spine {name}: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
