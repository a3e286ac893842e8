"""`spine` subcommands that are not a Trainer loop: generate, import-hf, export-hf, eval, report.

Each command is a typed function with a docstring, registered with `@command(name)`; the parser is
built from the signatures with jsonargparse (as LightningCLI does), so flags, `--config file.yaml`
and `--print_config` behave like `spine fit`. To add a command, write a function and decorate it;
`modules.cli` routes every subcommand that is not fit/validate/test/predict to `main(argv)`.

Errors a user can cause (bad path, bad flag, prompt too long, ...) print one line on stderr and
return exit code 2; set SPINE_DEBUG=1 to see the traceback instead.
"""
from __future__ import annotations

import json
import os
import sys
from argparse import ArgumentError
from pathlib import Path
from typing import Callable, Literal, Optional

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


def _check_sampling(top_k: Optional[int], top_p: Optional[float]) -> None:
    """--top_k 0 used to mean "no filter" without a word; refuse values that filter nothing or everything."""
    if top_k is not None and top_k < 1:
        raise ValueError(f"--top_k must be >= 1 (leave it out for no top-k filter), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"--top_p must be in (0, 1], got {top_p}")


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
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    seed: Optional[int] = None,
    device: Literal["auto", "cpu", "cuda"] = "auto",
    dtype: DType = None,
    tokenizer: Optional[str] = None,
    on_overflow: Literal["error", "truncate"] = "error",
    output: Literal["text", "jsonl"] = "text",
) -> int:
    """Generate a completion for each prompt from a spine checkpoint.

    Args:
        checkpoint: spine checkpoint directory (see `spine import-hf` or training runs).
        prompt: prompt text; repeat --prompt for several prompts (decoded as one batch).
        max_new_tokens: tokens to generate per prompt.
        temperature: 0 for greedy decoding, > 0 to sample.
        top_k: sample only among the k most likely tokens.
        top_p: sample only from the smallest set of tokens whose probability reaches p.
        seed: makes sampling reproducible.
        device: auto (CUDA when available), cpu or cuda.
        dtype: cast the weights (default: as stored).
        tokenizer: tokenizer name or directory, for checkpoints saved without one.
        on_overflow: 'error' if a prompt plus max_new_tokens exceeds the context, 'truncate' keeps its last tokens.
        output: 'text' prints each completion; 'jsonl' prints one JSON object per prompt.
    """
    from .checkpoint import load_checkpoint
    from .generation import generate as run_generate
    from .hf import parse_dtype
    from .tokenizer import check_vocab_fits, get_tokenizer

    _check_sampling(top_k, top_p)
    model, tok = load_checkpoint(checkpoint, map_location=_device(device), dtype=parse_dtype(dtype))
    if tokenizer is not None:
        tok = get_tokenizer(tokenizer)
        check_vocab_fits(tok, model.config.vocab_size, where=f"--tokenizer {tokenizer}")
    if tok is None:
        raise ValueError(f"{checkpoint} holds no tokenizer; pass --tokenizer (e.g. gpt2 or a directory)")
    ids = [tok.encode(p) for p in prompt]
    for i, p in enumerate(ids):
        if not p:
            raise ValueError(f"prompt {i} is empty; give some text")
    out = run_generate(model, ids, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                       top_p=top_p, seed=seed, eos_id=tok.eos_id, pad_id=tok.pad_id, on_overflow=on_overflow)
    texts = out.texts(tok)
    for i, text in enumerate(texts):
        if output == "jsonl":
            print(json.dumps({"prompt": prompt[i], "completion": text, "tokens": out.tokens[i],
                              "finish_reason": out.finish_reasons[i]}, ensure_ascii=False))
        else:
            if len(texts) > 1:
                print(f"--- [{i}] {out.finish_reasons[i]}")
            print(text)
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


def _load_for_eval(checkpoint: str, device: str, dtype: DType, tokenizer: Optional[str]):
    """(model, tokenizer) from a spine checkpoint directory or `hf:PATH`, on `device`."""
    from .hf import parse_dtype
    from .tokenizer import check_vocab_fits, get_tokenizer

    dev, dt = _device(device), parse_dtype(dtype)
    if checkpoint.startswith("hf:"):
        from .hf import import_hf as _import, import_hf_tokenizer

        model = _import(checkpoint[3:], dtype=dt).to(dev)
        tok = import_hf_tokenizer(checkpoint[3:])
    else:
        from .checkpoint import load_checkpoint

        model, tok = load_checkpoint(checkpoint, map_location=dev, dtype=dt)
    if tokenizer is not None:
        tok = get_tokenizer(tokenizer)
        check_vocab_fits(tok, model.config.vocab_size, where=f"--tokenizer {tokenizer}")
    if tok is None:
        raise ValueError(f"checkpoint {checkpoint} has no tokenizer; pass --tokenizer NAME_OR_DIR (e.g. gpt2, "
                         "byte) or save the checkpoint with its tokenizer")
    return model.eval(), tok


def _slug(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "-" for c in text)
    return "-".join(filter(None, keep.split("-")))[:40] or "run"


@command("eval", repeatable=("stop_strings",))
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
    pipeline: Literal["greedy", "sc"] = "greedy",
    n: int = 8,
    temperature: Optional[float] = None,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    seed: int = 0,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    stop_strings: Optional[list[str]] = None,
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
        pipeline: greedy (one sample per problem) or sc (self-consistency: N samples, majority vote).
        n: samples per problem for sc.
        temperature: sampling temperature (default 0 for greedy, 0.8 for sc).
        top_k: sample only among the k most likely tokens.
        top_p: sample only from the smallest set of tokens whose probability reaches p.
        seed: seed of the sampling noise.
        max_new_tokens: tokens generated per sample.
        batch_size: prompts (samples) decoded together.
        stop_strings: cut each completion at the first of these (repeat the flag for several; text is
            literal, so give a newline as $'\\n...' in bash or in a --config YAML file); default
            "\\nQuestion:" for the synthetic template, none otherwise.
        traces: trace JSONL file; a rerun with the same settings resumes it, other settings are refused
            (default: runs/eval/<checkpoint>-<pipeline>-<config hash>.jsonl).
        device: auto (CUDA when available), cpu or cuda.
        dtype: cast the weights (default: as stored).
        tokenizer: tokenizer name or directory, for checkpoints saved without one.
    """
    from .reasoning.evaluate import checkpoint_identity, evaluate, run_config, source_identity
    from .reasoning.pipelines import Engine, make_pipeline
    from .reasoning.problems import load_problems, validate_problems
    from .reasoning.prompts import render_prompt
    from .traces import config_hash, format_summary

    # cheap checks first: a typo should not cost a model load
    render_prompt("x", template)
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    _check_sampling(top_k, top_p)
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

    model, tok = _load_for_eval(checkpoint, device, dtype, tokenizer)
    extra["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")  # bf16 and fp32 answers differ
    if stop_strings is None:
        stop_strings = ["\nQuestion:"] if template == "synthetic" else []
    engine = Engine(model, tok, template=template, chat=chat, enable_thinking=enable_thinking,
                    max_new_tokens=max_new_tokens, batch_size=batch_size, stop_strings=stop_strings)
    validate_problems(probs, where=problems, engine=engine, context_length=model.config.context_length)
    kwargs: dict = {"top_k": top_k, "top_p": top_p, "seed": seed}
    if temperature is not None:
        kwargs["temperature"] = temperature
    if pipeline == "sc":
        kwargs["n"] = n
    pipe = make_pipeline(pipeline, **kwargs)
    sha = checkpoint_identity(checkpoint)
    if traces is None:
        cfg = run_config(engine, pipe, source=source, checkpoint_sha256=sha, extra=extra)
        label = f"sc{n}" if pipeline == "sc" else pipeline
        name = Path(checkpoint[3:] if checkpoint.startswith("hf:") else checkpoint).expanduser().resolve().name
        traces = str(Path("runs") / "eval" / f"{_slug(name)}-{label}-{config_hash(cfg)[:8]}.jsonl")

    def progress(done: int, total: int) -> None:
        print(f"[spine eval] {done}/{total} problems", file=sys.stderr, flush=True)

    report = evaluate(probs, engine, pipe, trace_path=traces, source=source, checkpoint_sha256=sha, extra=extra,
                      chunk_size=max(1, batch_size * 4 // (n if pipeline == "sc" else 1)), progress=progress)
    label = f"self-consistency n={n}" if pipeline == "sc" else pipeline
    resumed = f", {report.skipped} resumed from the trace file" if report.skipped else ""
    print(f"{checkpoint} | {problems} | {label}, temperature {pipe.temperature} | {len(probs)} problems{resumed}")
    print(format_summary(report.summary))
    print(f"traces: {report.trace_path}")
    return 0


@command("report", variadic=("traces", "trace JSONL files written by spine eval / validate / ReasoningEval"))
def report(traces: list[str], png: Optional[str] = None,
           group_by: list[str] = ["level", "subject"]) -> int:  # noqa: B006 (jsonargparse reads the default)
    """Summarize trace files: accuracy tables and, for self-consistency runs, accuracy vs samples.

    Args:
        traces: trace JSONL files.
        png: write the accuracy-vs-samples plot of the self-consistency traces here.
        group_by: metadata keys that get one table row per value.
    """
    from .reasoning.grade import answers_equivalent
    from .reasoning.report import report as _report

    _report(traces, png, equivalent=answers_equivalent, group_by=group_by, print_it=True)
    return 0


# ---------------------------------------------------------------------------- parser / main
def build_parser():
    """jsonargparse parser with one subcommand per registered function."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="spine", description="spine tools (Trainer stages: spine fit|validate|test|"
                            "predict)", exit_on_error=False)
    subcommands = parser.add_subcommands(dest="subcommand")
    for name, fn in COMMANDS.items():
        sub = ArgumentParser(prog=f"spine {name}", exit_on_error=False)
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
    kwargs = {k: v for k, v in vars(cfg[name]).items() if k != "config"}
    try:
        return int(COMMANDS[name](**kwargs) or 0)
    except (ValueError, OSError, RuntimeError, ArgumentError) as e:
        if os.environ.get("SPINE_DEBUG"):
            raise
        print(f"spine {name}: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
