"""n samples per prompt: spine's engine with the shared prefill, without it, and HF generate.

Variants (same random weights, same process, top-k sampling, every row decodes exactly --new_tokens):
- `shared`: `Engine.generate(prompts, SamplingParams(n=N))`: one prefill per prompt, cache rows copied;
- `replicated`: each prompt given N times with n=1: N prefills per prompt (what the old loop did);
- `hf`: transformers `generate(num_return_sequences=N, do_sample=True)` on the exported checkpoint.
Reports generated tokens/s (P * N * new_tokens over the median wall time of --reps runs after --warmup).

    python bench/decode_nsamples.py --preset gpt2-124m --prompts 8 --n 16 --prompt_len 512 --new_tokens 256
    python bench/decode_nsamples.py --device cpu --preset gpt2-tiny --prompts 2 --n 4 --prompt_len 32 \
        --new_tokens 16 --reps 1 --warmup 0          # a smoke run on CPU
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spine.config import ModelConfig  # noqa: E402
from spine.engine import Engine, SamplingParams  # noqa: E402
from spine.model import GPT  # noqa: E402


class IdsOnly:
    """A tokenizer stand-in for id prompts: no stop id can occur (-1), so every row runs its full length."""

    eos_id, pad_id = -1, 0

    def decode(self, ids):
        return ""


def timed(fn, reps: int, warmup: int, cuda: bool) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="gpt2-124m")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--prompt_len", type=int, default=512)
    ap.add_argument("--new_tokens", type=int, default=256)
    ap.add_argument("--batch_size", type=int, default=None, help="engine rows per batch (default: prompts * n)")
    ap.add_argument("--top_k", type=int, default=50)
    ap.add_argument("--compile", action="store_true", help="compiled decode step (CUDA graph on GPU)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--variants", default="shared,replicated,hf")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    cuda = args.device.startswith("cuda")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if cuda else torch.float32)
    ctx = args.prompt_len + args.new_tokens
    cfg = ModelConfig.from_preset(args.preset)
    if cfg.context_length < ctx:
        cfg = ModelConfig.from_preset(args.preset, context_length=ctx)
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    hf_model = None
    if "hf" in args.variants:
        import transformers

        from spine.hf import export_hf

        tmp = Path(tempfile.mkdtemp(prefix="spine-bench-hf-"))
        export_hf(model, tmp)
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp, torch_dtype=dtype,
                                                                     attn_implementation="sdpa").to(args.device).eval()
    model = model.to(device=args.device, dtype=dtype)
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, cfg.vocab_size, (args.prompts, args.prompt_len), generator=g)
    rows = args.prompts * args.n
    engine = Engine(model, IdsOnly(), batch_size=args.batch_size or rows, compile=args.compile, sync_every=32)
    params = SamplingParams(temperature=1.0, top_k=args.top_k, seed=0, max_new_tokens=args.new_tokens, n=args.n)
    one = SamplingParams(temperature=1.0, top_k=args.top_k, seed=0, max_new_tokens=args.new_tokens)
    ids = prompts.tolist()

    def check(out):
        assert all(c.generated_tokens == args.new_tokens for row in out for c in row)

    runs = {
        "shared": lambda: check(engine.generate(ids, params)),
        "replicated": lambda: check(engine.generate([p for p in ids for _ in range(args.n)], one)),
    }
    if hf_model is not None:
        hf_ids = prompts.to(args.device)

        def hf_run():
            with torch.inference_mode():
                out = hf_model.generate(hf_ids, attention_mask=torch.ones_like(hf_ids), do_sample=True,
                                        top_k=args.top_k, max_new_tokens=args.new_tokens,
                                        min_new_tokens=args.new_tokens, num_return_sequences=args.n, pad_token_id=0)
            assert out.shape == (rows, args.prompt_len + args.new_tokens)
        runs["hf"] = hf_run
    results = []
    for name in args.variants.split(","):
        seconds = timed(runs[name], args.reps, args.warmup, cuda)
        row = {"variant": name, "prompts": args.prompts, "n": args.n, "rows": rows, "seconds": seconds,
               "tokens_per_s": rows * args.new_tokens / seconds}
        results.append(row)
        print(json.dumps(row), flush=True)
    device = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{args.preset} {str(dtype).removeprefix('torch.')} prompts {args.prompts} x n {args.n}, prompt "
          f"{args.prompt_len}, new {args.new_tokens}, top_k {args.top_k}, compile {args.compile}; {device}; "
          f"torch {torch.__version__}")
    print("| variant | rows | s | generated tokens/s |\n|---|---:|---:|---:|")
    for r in results:
        print(f"| {r['variant']} | {r['rows']} | {r['seconds']:.3f} | {r['tokens_per_s']:,.0f} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": results}, indent=2))


if __name__ == "__main__":
    main()
