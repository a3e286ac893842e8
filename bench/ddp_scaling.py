"""Multi-GPU scaling of `spine fit`'s path (PretrainModule + PretrainDataModule + Trainer).

Runs the GPT-2 124M step (bf16-mixed, compiled loss, fused AdamW, per-GPU batch --batch, context
1024) on --devices GPUs with --strategy and prints global tokens/s (median step time over the timed
steps, rank 0, CUDA-synchronised). Run once with --devices 1 and once with 2: scaling efficiency =
tokens/s(2) / (2 * tokens/s(1)). One configuration per process, because Lightning's DDP launcher
re-runs this script in each rank. Keep NVLink multicast off (NCCL_NVLS_ENABLE=0).

    NCCL_NVLS_ENABLE=0 python bench/ddp_scaling.py --devices 1
    NCCL_NVLS_ENABLE=0 python bench/ddp_scaling.py --devices 2 --strategy ddp
    NCCL_NVLS_ENABLE=0 python bench/ddp_scaling.py --devices 2 --strategy fsdp2 --model qwen3-0.6b --batch 8

Strategies: ddp, ddp_tuned, fsdp (Lightning's FSDPStrategy, FSDP1, whole model one unit, no clipping),
fsdp2 (ModelParallelStrategy; spine shards per block in PretrainModule.configure_model).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NCCL_NVLS_ENABLE", "0")


def run(devices: int, strategy: str, args) -> float | None:
    import lightning.pytorch as L

    from datamodules.pretrain import PretrainDataModule
    from modules.pretrain import PretrainModule

    from common import StepTimer

    B, T = args.batch, args.ctx
    steps = args.steps + args.warmup
    dm = PretrainDataModule(source="synthetic", tokenizer="gpt2", vocab_dir=args.vocab_dir, context_length=T,
                            sampling="random", samples_per_epoch=B * devices * (steps + 2), batch_size=B,
                            synthetic_problems=20000, num_workers=2, cache_dir=args.cache_dir)
    # GPT-2 presets take the tokenizer's 50257 (padded to 50304); others keep their own vocabulary
    # (Qwen3: 151936), so the embedding/head cost is the real model's; the gpt2 token ids fit in it
    vocab = 50257 if args.model.startswith("gpt2") else None
    module = PretrainModule(model=args.model, model_overrides={"pad_vocab_to": 64}, vocab_size=vocab, context_length=T,
                            lr=1e-4, compile=True, fused_adam=True)
    timer = StepTimer()
    if strategy == "ddp_tuned":
        from lightning.pytorch.strategies import DDPStrategy

        # grads live in the all-reduce buckets (no copy); the graph is the same every step
        strategy = DDPStrategy(gradient_as_bucket_view=True, static_graph=True)
    elif strategy == "fsdp2":
        from lightning.pytorch.strategies import ModelParallelStrategy

        # FSDP2 via spine's configure_model (one unit per block, bf16 gathers, fp32 reduce), clipping on
        strategy = ModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1)
    trainer = L.Trainer(accelerator="cuda", devices=devices, strategy=strategy, precision="bf16-mixed",
                        max_steps=steps, gradient_clip_val=1.0 if strategy != "fsdp" else None, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, use_distributed_sampler=False, callbacks=[timer])
    trainer.fit(module, dm)
    if not trainer.is_global_zero:
        return None
    t = statistics.median(timer.times[args.warmup:])
    return devices * B * T / t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gpt2-124m")
    ap.add_argument("--devices", type=int, default=2)
    ap.add_argument("--strategy", default="ddp")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--vocab_dir", default=".devdata/gpt2-bpe")
    ap.add_argument("--cache_dir", default="/tmp/spine-cache")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    # fsdp2 also runs on one GPU (world size 1), to separate its own cost from communication
    tps = run(args.devices, args.strategy if args.devices > 1 or args.strategy == "fsdp2" else "auto", args)
    if tps is None:  # not rank 0
        return
    row = {"gpus": args.devices, "model": args.model,
           "strategy": args.strategy if args.devices > 1 or args.strategy == "fsdp2" else "-", "tokens_per_s": tps,
           "per_gpu_batch": args.batch, "ctx": args.ctx, "device": torch.cuda.get_device_name()}
    print("RESULT " + json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
