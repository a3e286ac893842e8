"""Decoding on one GPU: `spine.generate` vs HF `generate`, same random weights, same process.

64-token prompts, 256 new tokens, top-k sampling, batch 1 and 64, bf16 weights. Reports tokens/s
(generated tokens over wall time), time to first token (prefill + first sample) and time per output
token (the rest, divided by 255), each the median of --reps runs after warm-up.

    python bench/decode_throughput.py --model gpt2-124m --batches 1,64
    python bench/decode_throughput.py --batches 64 --variants spine,hf --profile   # + per-step ops/kernels/syncs
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spine.config import ModelConfig  # noqa: E402
from spine.engine import Engine, SamplingParams  # noqa: E402
from spine.model import GPT  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_nsamples import IdsOnly, per_step_profile  # noqa: E402
from train_throughput import plain_head, refuse_aligned_plainhead  # noqa: E402


def timed(fn, reps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gpt2-124m")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--prompt_len", type=int, default=64)
    ap.add_argument("--new_tokens", type=int, default=256)
    ap.add_argument("--top_k", type=int, default=50)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--variants", default="spine,spine_eager,hf",
                    help="spine (compiled), spine_plainhead (compiled, an unaligned head as a plain linear), "
                         "spine_eager, hf")
    ap.add_argument("--profile", action="store_true", help="per decode step: aten ops, kernels, kernel µs, syncs")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    cfg = ModelConfig.from_preset(args.model, context_length=1024 if args.model.startswith("gpt2") else 2048)
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - {"spine", "spine_plainhead", "spine_eager", "hf"})
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from spine, spine_plainhead, spine_eager, hf")
    if "spine_plainhead" in variants:
        refuse_aligned_plainhead(cfg, f"spine_plainhead ({args.model})")
    torch.manual_seed(0)
    model = GPT(cfg).cuda().to(torch.bfloat16).eval()
    hf_model = None
    if "hf" in args.variants:
        import transformers

        from spine.hf import export_hf

        tmp = Path("/tmp/spine-bench-hf")
        export_hf(model.float(), tmp)
        model = model.to(torch.bfloat16)
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp, torch_dtype=torch.bfloat16,
                                                                     attn_implementation="sdpa").cuda().eval()
    rows = []
    for B in [int(b) for b in args.batches.split(",")]:
        g = torch.Generator().manual_seed(B)
        prompts = torch.randint(0, cfg.vocab_size, (B, args.prompt_len), generator=g)
        for variant in variants:
            if variant.startswith("spine"):
                plain_head(variant == "spine_plainhead")
                # compiled: the engine keeps its cache buffers per shape, so the CUDA graph is reused
                engine = Engine(model, IdsOnly(), batch_size=B, compile=variant != "spine_eager", sync_every=10**9)
                ids = prompts.tolist()

                def run(n):
                    return engine.generate(ids, SamplingParams(temperature=1.0, top_k=args.top_k, seed=0,
                                                               max_new_tokens=n))
            else:
                ids = prompts.cuda()

                def run(n):
                    with torch.inference_mode():
                        return hf_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                                 top_k=args.top_k, max_new_tokens=n, min_new_tokens=n,
                                                 pad_token_id=0)
            total = timed(lambda: run(args.new_tokens), args.reps, args.warmup)
            ttft = timed(lambda: run(1), args.reps, args.warmup)
            tpot = (total - ttft) / (args.new_tokens - 1)
            row = {"variant": variant, "batch": B, "tokens_per_s": B * args.new_tokens / total,
                   "ttft_ms": ttft * 1e3, "tpot_ms": tpot * 1e3, "total_s": total}
            if args.profile:
                hi = min(args.new_tokens, 64)
                prof = per_step_profile(run, hi, hi // 2, cuda=True, top=10)
                row.update({f"step_{k}": prof[k] for k in ("aten_ops", "kernels", "kernel_us", "syncs")},
                           top_kernels=prof["top_kernels"])
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{args.model} prompt {args.prompt_len} new {args.new_tokens} top_k {args.top_k} bf16 "
          f"{torch.cuda.get_device_name()} torch {torch.__version__}")
    print("| variant | batch | tokens/s | TTFT ms | TPOT ms |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['batch']} | {r['tokens_per_s']:,.0f} | {r['ttft_ms']:.1f} | {r['tpot_ms']:.2f} |")
    if args.profile:
        print("\n| variant | batch | aten ops/step | kernels/step | kernel µs/step | syncs/step |\n|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['variant']} | {r['batch']} | {r['step_aten_ops']:.1f} | {r['step_kernels']:.1f} | "
                  f"{r['step_kernel_us']:.0f} | {r['step_syncs']:.2f} |")
    by = {(r["variant"], r["batch"]): r["tokens_per_s"] for r in rows}
    for B in [int(b) for b in args.batches.split(",")]:
        if ("spine", B) in by and ("hf", B) in by:
            print(f"batch {B}: spine / hf = {by[('spine', B)] / by[('hf', B)]:.1f}x")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
