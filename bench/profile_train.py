"""Where a compiled training step spends GPU time (torch.profiler), grouped by kernel family.

    python3 bench/profile_train.py --model gpt2-124m --batch 32
    python3 bench/profile_train.py --model qwen3-0.6b --batch 8 --fsdp2   # FSDP2 at world size 1
    python3 bench/profile_train.py --model gpt2-124m --batch 32 --bandwidth   # + bytes and GB/s per Triton kernel

Prints GPU time per step (kernel sum) and wall time per step: a wall time well above the GPU time
means the step is bound by the host (Python, hooks, launches), not by kernels.

`--bandwidth` instead compiles the step with inductor's `profile_bandwidth`, which records the bytes of every
Triton kernel's inputs and outputs (the fused elementwise / norm / cross-entropy work), beside the GPU's copy
bandwidth measured in the same process (a reference, not a ceiling: a read-mostly kernel can beat it). Its
times are each kernel re-run alone by inductor's benchmark (cold caches, cloned inputs), not times in the
step: divide the bytes by the Triton share of a normal run's GPU time for the bandwidth in the step.
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


def copy_gbps(n_bytes: int = 2 << 30) -> float:
    """The device-to-device copy bandwidth (read + write bytes per second, in GB/s): the reference the
    memory-bound kernels are held against."""
    x = torch.empty(n_bytes // 2, dtype=torch.bfloat16, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        y.copy_(x)
    end.record()
    torch.cuda.synchronize()
    return 2 * n_bytes * 10 / (start.elapsed_time(end) / 1e3) / 1e9


def parse_bandwidth(text: str) -> list[tuple[float, float, str, str]]:
    """(ms, GB, kernel, graph file) for every kernel line of inductor's `profile_bandwidth_output`."""
    rows, graph = [], "?"
    for line in text.splitlines():
        if line.startswith("TRITON KERNELS BANDWIDTH INFO"):
            graph = line.rsplit("/", 1)[-1].rstrip(")")
            continue
        parts = [p.strip() for p in line.split("\t") if p.strip()]
        if len(parts) >= 5 and parts[0].endswith("ms") and parts[1].endswith("GB"):
            rows.append((float(parts[0][:-2]), float(parts[1][:-2]), parts[-1], graph))
    return rows


def report_bandwidth(text: str, peak: float, title: str, top: int = 15) -> None:
    """Per compiled graph and in all: Triton kernels, their bytes and the time those bytes take at `peak`; then
    the kernels with the most bytes (calls of the same kernel, e.g. one per block, summed). Inductor's isolated
    re-run times are shown as such (see the module docstring)."""
    rows = parse_bandwidth(text)
    if not rows:
        raise SystemExit("inductor wrote no bandwidth lines: is this torch's inductor on CUDA?")
    print(f"{title}\ndevice copy bandwidth: {peak:,.0f} GB/s (read + write)")
    print("| graph | Triton kernel calls | GB | ms at copy bandwidth | ms, isolated re-runs |\n|---|---:|---:|---:|---:|")
    graphs = sorted({g for *_, g in rows})
    for g in graphs + ["all"]:
        sel = [r for r in rows if g in ("all", r[3])]
        ms, gb = sum(r[0] for r in sel), sum(r[1] for r in sel)
        print(f"| {g} | {len(sel)} | {gb:.2f} | {gb / peak * 1e3:.2f} | {ms:.2f} |")
    by_name: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for ms, gb, name, _ in rows:
        acc = by_name[name]
        acc[0] += 1
        acc[1] += gb
        acc[2] += ms
    print(f"\ntop {top} Triton kernels by bytes:\n| calls | GB | ms at copy bandwidth | ms, isolated re-runs | kernel |"
          "\n|---:|---:|---:|---:|---|")
    for name, (n, gb, ms) in sorted(by_name.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"| {n} | {gb:.3f} | {gb / peak * 1e3:.3f} | {ms:.3f} | {name[:80]} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gpt2-124m")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--fsdp2", action="store_true", help="shard as PretrainModule does under ModelParallelStrategy")
    ap.add_argument("--bandwidth", action="store_true", help="bytes and GB/s of every Triton kernel (inductor)")
    ap.add_argument("--n_layer", type=int, default=None,
                    help="fewer blocks than the preset (every block runs the same kernels; compiles faster)")
    args = ap.parse_args()
    if args.bandwidth:
        import tempfile

        import torch._inductor.config as inductor_config

        bw_file = Path(tempfile.mkdtemp(prefix="spine-bw-")) / "bandwidth.txt"
        inductor_config.profile_bandwidth = True
        inductor_config.profile_bandwidth_output = str(bw_file)
        # with the harness on, torch 2.11 calls the compiled module's benchmark without its arguments and fails
        inductor_config.benchmark_harness = False
    cfg = ModelConfig.from_preset(args.model, context_length=args.ctx, pad_vocab_to=64,
                                  **({"n_layer": args.n_layer} if args.n_layer else {}))
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

    if args.bandwidth:
        step()  # compiles; each later call of a compiled graph appends its kernels to bw_file
        bw_file.write_text("")
        step()
        torch.cuda.synchronize()
        report_bandwidth(bw_file.read_text(), copy_gbps(),
                         f"{args.model} ({cfg.n_layer} blocks) B={args.batch} T={args.ctx}: Triton kernels of one step")
        return
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
    print(f"{args.model}{tag} ({cfg.n_layer} blocks) B={args.batch} T={args.ctx}: GPU time per step {total / 3 / 1e3:.1f} ms, "
          f"wall time per step {wall * 1e3:.1f} ms")
    print("| kernel family | share |\n|---|---|")
    for fam, t in sorted(fams.items(), key=lambda x: -x[1]):
        print(f"| {fam} | {t / total:.1%} |")
    print("\ntop kernels:")
    for t, k in sorted(kernels, reverse=True)[:12]:
        print(f"{t / total:6.1%}  {k}")


if __name__ == "__main__":
    main()
