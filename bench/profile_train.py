"""Where a compiled training step spends GPU time (torch.profiler), grouped by kernel family.

    python3 bench/profile_train.py --model gpt2-124m --batch 32
    python3 bench/profile_train.py --model qwen3-0.6b --batch 8 --fsdp2   # FSDP2 at world size 1

Prints GPU time per step (kernel sum) and wall time per step: a wall time well above the GPU time
means the step is bound by the host (Python, hooks, launches), not by kernels.
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
    ap.add_argument("--fsdp2", action="store_true", help="shard as PretrainModule does under ModelParallelStrategy")
    args = ap.parse_args()
    cfg = ModelConfig.from_preset(args.model, context_length=args.ctx, pad_vocab_to=64)
    model = GPT(cfg).cuda()
    if args.fsdp2:
        import os

        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh

        from spine.distributed import shard_fsdp2

        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29533")
        dist.init_process_group("nccl", rank=0, world_size=1)
        for block in model.blocks:  # the same layout as SpineModule._shard + PretrainModule
            block.compile()
        shard_fsdp2(model, init_device_mesh("cuda", (1,)), param_dtype=torch.bfloat16)
        loss_fn = make_loss_fn(model, compile="loss")
    else:
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

    import time

    for _ in range(8):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / 5
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
    tag = " FSDP2 (world 1)" if args.fsdp2 else ""
    print(f"{args.model}{tag} B={args.batch} T={args.ctx}: GPU time per step {total / 3 / 1e3:.1f} ms, "
          f"wall time per step {wall * 1e3:.1f} ms")
    print("| kernel family | share |\n|---|---|")
    for fam, t in sorted(fams.items(), key=lambda x: -x[1]):
        print(f"| {fam} | {t / total:.1%} |")
    print("\ntop kernels:")
    for t, k in sorted(kernels, reverse=True)[:12]:
        print(f"{t / total:6.1%}  {k}")


if __name__ == "__main__":
    main()
