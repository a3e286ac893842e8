"""n samples per prompt: spine's engine with the shared prefill, without it, and HF generate.

Variants (same random weights, same process, top-k sampling, every row decodes exactly --new_tokens):
- `shared`: `Engine.generate(prompts, SamplingParams(n=N))`: one prefill per prompt, cache rows copied;
- `replicated`: each prompt given N times with n=1: N prefills per prompt (what the old loop did);
- `shared_compiled`, `replicated_compiled`: the same through one compiled engine (a CUDA graph per decode
  step on GPU; both use its cache buffers, so the graph's addresses hold); `--compile` adds both;
- `hf`: transformers `generate(num_return_sequences=N, do_sample=True)` on the exported checkpoint.

Every variant is warmed up first, then the repetitions go round the variants in turn (rep 1 of each, rep 2
of each, ...), so a clock ramp or a background job cannot favour whichever runs first. Each rep also times
a one-token run (TTFT: prefill + first sample), which splits the time into prefill and per-step decode.
Reports generated tokens/s (P * N * new_tokens over the median wall time), TTFT and ms per decode step.

`--profile` adds, per variant, what one decode step costs: dispatcher (aten) ops, device kernels and their
time, host syncs, and the kernels that take the most time. They are the counts of a run of H tokens minus
those of a run of H/2 tokens (H = min(new_tokens, 64)) over H/2, so prefill and setup cancel out; op counts
per step are the same on CPU and GPU, so a CPU run already compares the code paths.

    python bench/decode_nsamples.py --preset gpt2-124m --prompts 8 --n 16 --prompt_len 512 --new_tokens 256
    python bench/decode_nsamples.py --variants shared,replicated --compile --profile   # + compiled, per-step costs
    python bench/decode_nsamples.py --device cpu --preset gpt2-tiny --prompts 2 --n 4 --prompt_len 32 \
        --new_tokens 16 --reps 1 --warmup 0 --variants shared,replicated --profile   # a smoke run on CPU
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spine.config import ModelConfig  # noqa: E402
from spine.engine import Engine, SamplingParams  # noqa: E402
from spine.model import GPT  # noqa: E402

VARIANTS = ("shared", "replicated", "shared_compiled", "replicated_compiled", "hf")


class IdsOnly:
    """A tokenizer stand-in for id prompts: no stop id can occur (-1), so every row runs its full length."""

    eos_id, pad_id = -1, 0

    def decode(self, ids):
        return ""


def wall(fn: Callable[[], object], cuda: bool) -> float:
    """Seconds `fn` takes, the device drained before and after."""
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _counts(run: Callable[[int], object], n: int, cuda: bool) -> tuple[Counter, Counter, Counter, Counter]:
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    run(n)  # same shapes once more outside the profile: no compilation or first-call work inside it
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        run(n)
        if cuda:
            torch.cuda.synchronize()
    ops, kernels, kernel_us, syncs = Counter(), Counter(), Counter(), Counter()
    for e in prof.events():
        if e.device_type == DeviceType.CUDA:
            kernels[e.name] += 1
            kernel_us[e.name] += e.time_range.elapsed_us()
        elif e.name.startswith("aten::"):
            ops[e.name] += 1
            if e.name in ("aten::_local_scalar_dense", "aten::item"):
                syncs[e.name] += 1
        elif "Synchronize" in e.name:  # cudaStreamSynchronize & co: the host waits for the device
            syncs[e.name] += 1
    return ops, kernels, kernel_us, syncs


def per_step_profile(run: Callable[[int], object], hi: int, lo: int, cuda: bool, top: int = 6) -> dict:
    """Per decode step: aten ops, device kernels, kernel microseconds and host syncs of `run(n_tokens)`,
    as (counts of a run of `hi` tokens - counts of a run of `lo` tokens) / (hi - lo)."""
    if not 1 <= lo < hi:
        raise ValueError(f"per_step_profile needs 1 <= lo < hi, got lo={lo}, hi={hi}")
    a, b = _counts(run, lo, cuda), _counts(run, hi, cuda)
    steps = hi - lo
    per = [{k: (big[k] - small[k]) / steps for k in set(big) | set(small)} for small, big in zip(a, b)]
    ops, kernels, kernel_us, syncs = per
    heavy = sorted(kernel_us.items(), key=lambda kv: -kv[1])[:top]
    return {"aten_ops": sum(ops.values()), "kernels": sum(kernels.values()), "kernel_us": sum(kernel_us.values()),
            "syncs": sum(syncs.values()), "top_kernels": [(name, kernels[name], us) for name, us in heavy],
            "ops": {k: v for k, v in sorted(ops.items()) if v}}


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
    ap.add_argument("--compile", action="store_true", help="add shared_compiled and replicated_compiled")
    ap.add_argument("--profile", action="store_true", help="per-step ops/kernels/syncs of each variant")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="runs per variant before timing (>= 1 with --compile)")
    ap.add_argument("--variants", default="shared,replicated,hf")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    variants = [v for v in args.variants.split(",") if v]
    if args.compile:
        variants += [v for v in ("shared_compiled", "replicated_compiled") if v not in variants]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise SystemExit(f"unknown variant(s) {bad}; choose from {', '.join(VARIANTS)}")
    if args.new_tokens < 2:
        raise SystemExit("--new_tokens must be >= 2 (the per-step time is the run minus a one-token run)")
    cuda = args.device.startswith("cuda")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if cuda else torch.float32)
    ctx = args.prompt_len + args.new_tokens
    cfg = ModelConfig.from_preset(args.preset)
    if cfg.context_length < ctx:
        cfg = ModelConfig.from_preset(args.preset, context_length=ctx)
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    hf_model = None
    if "hf" in variants:
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
    ids = prompts.tolist()
    engines: dict[bool, Engine] = {}  # one per mode: both compiled variants share its cache buffers

    def engine(compiled: bool) -> Engine:
        if compiled not in engines:
            engines[compiled] = Engine(model, IdsOnly(), batch_size=args.batch_size or rows, compile=compiled,
                                       sync_every=32)
        return engines[compiled]

    def spine_run(shared: bool, compiled: bool) -> Callable[[int], None]:
        def run(new: int) -> None:
            p = SamplingParams(temperature=1.0, top_k=args.top_k, seed=0, max_new_tokens=new,
                               n=args.n if shared else 1)
            out = engine(compiled).generate(ids if shared else [q for q in ids for _ in range(args.n)], p)
            assert all(c.generated_tokens == new for row in out for c in row)
        return run

    def hf_run(new: int) -> None:
        hf_ids = prompts.to(args.device)
        with torch.inference_mode():
            out = hf_model.generate(hf_ids, attention_mask=torch.ones_like(hf_ids), do_sample=True,
                                    top_k=args.top_k, max_new_tokens=new, min_new_tokens=new,
                                    num_return_sequences=args.n, pad_token_id=0)
        assert out.shape == (rows, args.prompt_len + new)

    runs = {v: hf_run if v == "hf" else spine_run(v.startswith("shared"), v.endswith("_compiled")) for v in variants}
    for name in variants:
        for _ in range(args.warmup):
            runs[name](args.new_tokens)
            runs[name](1)
    full: dict[str, list[float]] = {v: [] for v in variants}
    first: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.reps):  # round-robin: every variant sees the same conditions
        for name in variants:
            full[name].append(wall(lambda: runs[name](args.new_tokens), cuda))
            first[name].append(wall(lambda: runs[name](1), cuda))
    results = []
    for name in variants:
        seconds, ttft = statistics.median(full[name]), statistics.median(first[name])
        row = {"variant": name, "prompts": args.prompts, "n": args.n, "rows": rows, "seconds": seconds,
               "tokens_per_s": rows * args.new_tokens / seconds, "ttft_ms": ttft * 1e3,
               "step_ms": (seconds - ttft) / (args.new_tokens - 1) * 1e3, "all_seconds": full[name]}
        results.append(row)
        print(json.dumps(row), flush=True)
    profiles = {}
    if args.profile:
        hi = min(args.new_tokens, 64)
        for name in variants:
            profiles[name] = per_step_profile(runs[name], hi, hi // 2, cuda)
            print(json.dumps({"variant": name, "profile_per_step": profiles[name]}), flush=True)

    device = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{args.preset} {str(dtype).removeprefix('torch.')} prompts {args.prompts} x n {args.n}, prompt "
          f"{args.prompt_len}, new {args.new_tokens}, top_k {args.top_k}, reps {args.reps} round-robin; {device}; "
          f"torch {torch.__version__}")
    print("| variant | rows | s | generated tokens/s | TTFT ms | ms/step |\n|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['variant']} | {r['rows']} | {r['seconds']:.3f} | {r['tokens_per_s']:,.0f} | "
              f"{r['ttft_ms']:.1f} | {r['step_ms']:.3f} |")
    if profiles:
        print("\nper decode step | aten ops | device kernels | kernel µs | host syncs |\n|---|---:|---:|---:|---:|")
        for name, p in profiles.items():
            print(f"| {name} | {p['aten_ops']:.1f} | {p['kernels']:.1f} | {p['kernel_us']:.0f} | {p['syncs']:.2f} |")
        for name, p in profiles.items():
            if p["top_kernels"]:
                print(f"{name} top kernels per step: " + "; ".join(
                    f"{k[:70]} x{c:.1f} {us:.0f}µs" for k, c, us in p["top_kernels"]))
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": results, "profile": profiles}, indent=2))


if __name__ == "__main__":
    main()
