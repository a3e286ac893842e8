"""Where a compiled training step spends GPU time (torch.profiler), grouped by kernel family.

    python3 bench/profile_train.py --model gpt2-124m --batch 32
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spine.config import ModelConfig  # noqa: E402
from spine.model import GPT  # noqa: E402
from spine.training import make_loss_fn, param_groups  # noqa: E402

FAMILIES = [("flash", "attention"), ("fmha", "attention"), ("attention", "attention"), ("gemm", "matmul"),
            ("sm90", "matmul"), ("cutlass", "matmul"), ("nvjet", "matmul"), ("adam", "optimizer"),
            ("multi_tensor", "optimizer/clip"), ("triton", "fused elementwise/norm/CE (triton)")]


def family(name: str) -> str:
    low = name.lower()
    for key, fam in FAMILIES:
        if key in low:
            return fam
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gpt2-124m")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--ctx", type=int, default=1024)
    args = ap.parse_args()
    cfg = ModelConfig.from_preset(args.model, context_length=args.ctx, pad_vocab_to=64)
    model = GPT(cfg).cuda()
    loss_fn = make_loss_fn(model, compile=True)
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4, fused=True)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.ctx + 1), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            s, n = loss_fn(ids[:, :-1], ids[:, 1:])
        (s / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(8):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    fams, kernels = defaultdict(float), []
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if t <= 0:
            continue
        fams[family(e.key)] += t
        kernels.append((t, e.key[:90]))
    total = sum(fams.values())
    print(f"{args.model} B={args.batch} T={args.ctx}: GPU time per step {total / 3 / 1e3:.1f} ms")
    print("| kernel family | share |\n|---|---|")
    for fam, t in sorted(fams.items(), key=lambda x: -x[1]):
        print(f"| {fam} | {t / total:.1%} |")
    print("\ntop kernels:")
    for t, k in sorted(kernels, reverse=True)[:12]:
        print(f"{t / total:6.1%}  {k}")


if __name__ == "__main__":
    main()
