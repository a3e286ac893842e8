"""Training throughput on one GPU: spine (Trainer + data module) vs a plain loop over the spine core vs HF.

All variants run in this one process on the same GPU, same shape, batch, precision (bf16 autocast),
torch.compile and fused AdamW; each is timed per optimizer step (CUDA-synchronised) after warm-up, and
the median over the timed steps is reported with tokens/s and MFU against --peak_tflops.

    python bench/train_throughput.py --model gpt2-124m --batch 16 --steps 30 --warmup 10
    python bench/train_throughput.py --model qwen3-0.6b --batch 8

Data for the Trainer variant: the pretraining data module over the synthetic corpus with the GPT-2
tokenizer (--vocab_dir) for GPT-2 shapes, or random windows of a synthetic token file for Qwen3 shapes.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spine.config import ModelConfig  # noqa: E402
import spine.model as _spine_model  # noqa: E402
from spine.model import GPT  # noqa: E402
from spine.training import make_loss_fn, param_groups  # noqa: E402


def median_step_time(step_fn, steps: int, warmup: int) -> tuple[float, list[float]]:
    times = []
    for i in range(warmup + steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step_fn()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def make_batch(cfg: ModelConfig, B: int, T: int, device) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (B, T + 1), generator=g)
    return {"input_ids": ids[:, :-1].to(device), "targets": ids[:, 1:].to(device)}


_PADDED_HEAD = _spine_model.head_logits  # spine's own, kept to switch back to


def refuse_aligned_plainhead(cfg, label: str) -> None:
    """Exit when a plain-head variant would measure spine's own path again (the head needs no padding)."""
    if cfg.padded_vocab_size % 8 == 0:
        raise SystemExit(f"{label}: the head's {cfg.padded_vocab_size} rows are aligned already, so the plain head "
                         "would measure spine again; use an unpadded GPT-2 vocabulary (--pad_vocab_to 1 in training)")


def plain_head(on: bool) -> None:
    """on: the output layer is a plain `F.linear` even when its row count is not a multiple of 8 (spine before
    `spine.model.head_logits`), to measure the padded head in the same run. off: spine's default."""
    want = torch.nn.functional.linear if on else _PADDED_HEAD
    if _spine_model.head_logits is not want:
        _spine_model.head_logits = want
        torch._dynamo.reset()  # compiled graphs traced the other head


def bench_plain(cfg, B, T, args, loader=None, fast: tuple[str, ...] = ()) -> float:
    """The spine core in a hand-written loop (no Lightning): the reference for Lightning's overhead.

    `fast` names optional fast paths (variant `plain+fp8+cdt`, ...): fp8 = float8 matmuls for every
    block linear (torchao), fp8head = the LM head too, cdt = inductor coordinate-descent tuning,
    autotune = compile mode max-autotune-no-cudagraphs, graphs = compile mode reduce-overhead (the
    compiled forward and backward replayed as CUDA graphs; the optimizer step stays eager), plainhead = an
    unaligned vocabulary's head as a plain linear (what spine did before its padded head; use with
    --pad_vocab_to 1).
    """
    from spine.speed import compiler_tuning, float8_linears

    plain_head("plainhead" in fast)

    torch.manual_seed(0)
    model = GPT(cfg).cuda()
    if "fp8" in fast or "fp8head" in fast:
        names, why = float8_linears(model, skip=() if "fp8head" in fast else ("lm_head",))
        if why:  # a row labelled fp8 must have run in float8
            raise SystemExit(f"variant plain+{'+'.join(fast)}: float8 not available: {why}")
        print(f"float8: {len(names)} linears", flush=True)
    compiler_tuning("cdt" in fast)
    if "autotune" in fast and "graphs" in fast:
        raise SystemExit("variant plain+autotune+graphs: pick one compile mode")
    if ("autotune" in fast or "graphs" in fast) and not args.compile:
        raise SystemExit(f"variant plain+{'+'.join(fast)}: a compile mode needs --compile 1")
    mode = "max-autotune-no-cudagraphs" if "autotune" in fast else "reduce-overhead" if "graphs" in fast else None
    if args.compile and args.compile_scope == "model":
        model.compile(mode=mode)
    loss_fn = make_loss_fn(model, chunked=args.chunked_ce, compile=bool(args.compile) and args.compile_scope == "loss",
                           compile_mode=mode)
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4, fused=True)
    batch = make_batch(cfg, B, T, "cuda")
    it = iter(loader) if loader is not None else None

    def step():
        nonlocal it
        b = batch
        if it is not None:
            try:
                b = next(it)
            except StopIteration:
                it = iter(loader)
                b = next(it)
            b = {k: v.cuda(non_blocking=True) for k, v in b.items()}
        if mode == "reduce-overhead":  # a new step: the graphs' previous outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss_sum, n = loss_fn(b["input_ids"], b["targets"])
        (loss_sum / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    t, _ = median_step_time(step, args.steps, args.warmup)
    compiler_tuning(False)
    del model, opt
    return t


def bench_hf(cfg, B, T, args) -> float | None:
    try:
        import transformers
    except ImportError:
        return None
    from spine.hf import config_to_hf

    hf_cfg = config_to_hf(cfg.replace(pad_vocab_to=1))
    torch.manual_seed(0)
    if cfg.family == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_cfg, attn_implementation="sdpa"))
    else:
        model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**hf_cfg, attn_implementation="sdpa"))
    model = model.cuda().train()
    if args.compile:
        model = torch.compile(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=True)
    batch = make_batch(cfg, B, T, "cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(input_ids=batch["input_ids"], labels=batch["input_ids"])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    t, _ = median_step_time(step, args.steps, args.warmup)
    del model, opt
    return t


def bench_nanogpt(cfg, B, T, args) -> float | None:
    """nanoGPT's `model.py` (from ../shared/anchors, never copied here): the headline peer, same process."""
    import importlib.util

    path = Path(args.anchors) / "nanogpt_model.py"
    if cfg.family != "gpt2" or not path.is_file():
        print(f"nanogpt variant skipped: {'not a GPT-2 shape' if cfg.family != 'gpt2' else f'{path} not found'}")
        return None
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    nano = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nano)
    torch.manual_seed(0)
    ncfg = nano.GPTConfig(block_size=max(T, 1024), vocab_size=cfg.padded_vocab_size, n_layer=cfg.n_layer,
                          n_head=cfg.n_head, n_embd=cfg.d_model, dropout=0.0, bias=True)
    model = nano.GPT(ncfg).cuda().train()
    # nanoGPT's own recipe: compile the whole model, fused AdamW from its configure_optimizers
    opt = model.configure_optimizers(0.1, 1e-4, (0.9, 0.95), "cuda")
    if args.compile:
        model = torch.compile(model)
    batch = make_batch(cfg, B, T, "cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = model(batch["input_ids"], batch["targets"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    t, _ = median_step_time(step, args.steps, args.warmup)
    del model, opt
    return t


def bench_trainer(cfg, B, T, args, fast: tuple[str, ...] = ()) -> float:
    """`spine fit` path: PretrainModule + PretrainDataModule through Lightning's Trainer.

    `fast` as in `bench_plain`: fp8 = `--model.init_args.float8 true`, cdt = inductor coordinate-descent tuning.
    """
    import lightning.pytorch as L

    from spine.speed import compiler_tuning

    from datamodules.pretrain import PretrainDataModule
    from modules.pretrain import PretrainModule

    from common import StepTimer

    if cfg.family == "gpt2":
        dm = PretrainDataModule(source="synthetic", tokenizer="gpt2", vocab_dir=args.vocab_dir, context_length=T,
                                sampling="random", samples_per_epoch=B * (args.steps + args.warmup + 2),
                                batch_size=B, synthetic_problems=20000, num_workers=2, cache_dir=args.cache_dir)
    else:
        dm = PretrainDataModule(source="synthetic", tokenizer="byte", context_length=T, sampling="random",
                                samples_per_epoch=B * (args.steps + args.warmup + 2), batch_size=B,
                                synthetic_problems=20000, num_workers=2, cache_dir=args.cache_dir)
    overrides = {k: v for k, v in cfg.to_dict().items() if k not in ("name",)}
    overrides.pop("vocab_size")
    overrides.pop("context_length")
    module = PretrainModule(model=args.model, model_overrides=overrides, vocab_size=cfg.vocab_size,
                            context_length=T, lr=1e-4, compile=bool(args.compile), fused_adam=True,
                            chunked_ce=args.chunked_ce, scheduler="cosine", float8="fp8" in fast)
    compiler_tuning("cdt" in fast)
    timer = StepTimer()
    trainer = L.Trainer(accelerator="cuda", devices=1, precision="bf16-mixed", max_steps=args.steps + args.warmup,
                        gradient_clip_val=1.0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=[timer])
    trainer.fit(module, dm)
    t = statistics.median(timer.times[args.warmup:])
    compiler_tuning(False)
    if "fp8" in fast and not any(type(m).__name__ == "Float8Linear" for m in module.model.modules()):
        raise SystemExit("variant trainer+fp8: float8 was not applied (see the warning above)")
    del module, trainer
    return t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gpt2-124m")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--compile", type=int, default=1)
    ap.add_argument("--chunked_ce", type=int, default=0)
    ap.add_argument("--compile_scope", default="loss", choices=["loss", "model"])
    ap.add_argument("--pad_vocab_to", type=int, default=64)
    ap.add_argument("--variants", default="trainer,plain,plain_loader,hf,nanogpt")
    ap.add_argument("--anchors", default="../shared/anchors", help="folder holding nanogpt_model.py")
    ap.add_argument("--vocab_dir", default=".devdata/gpt2-bpe")
    ap.add_argument("--cache_dir", default="/tmp/spine-cache")
    ap.add_argument("--peak_tflops", type=float, default=989.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    B, T = args.batch, args.ctx
    cfg = ModelConfig.from_preset(args.model, context_length=max(T, 1024) if args.model.startswith("gpt2") else T,
                                  pad_vocab_to=args.pad_vocab_to)
    fpt = cfg.flops_per_token(T)
    rows = []
    for variant in args.variants.split(","):
        base_name, *flags = variant.split("+")
        allowed = {"plain": {"fp8", "fp8head", "cdt", "autotune", "graphs", "plainhead"}, "trainer": {"fp8", "cdt"}}.get(base_name, set())
        if set(flags) - allowed:
            raise SystemExit(f"variant {variant}: unknown fast path(s) {sorted(set(flags) - allowed)}; "
                             f"{base_name} takes {sorted(allowed) or 'none'}")
        if "plainhead" in flags:
            refuse_aligned_plainhead(cfg, f"variant {variant}")
        plain_head(False)  # each variant starts from spine's own head; plain+plainhead switches it for itself
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        if base_name == "trainer":
            t = bench_trainer(cfg, B, T, args, fast=tuple(flags))
        elif base_name == "plain":
            t = bench_plain(cfg, B, T, args, fast=tuple(flags))
        elif variant == "plain_loader":
            from datamodules.pretrain import PretrainDataModule

            dm = PretrainDataModule(source="synthetic", tokenizer="gpt2" if cfg.family == "gpt2" else "byte",
                                    vocab_dir=args.vocab_dir, context_length=T, sampling="random",
                                    samples_per_epoch=B * 1000, batch_size=B, synthetic_problems=20000,
                                    num_workers=2, cache_dir=args.cache_dir)
            dm.prepare_data()
            dm.setup("fit")
            t = bench_plain(cfg, B, T, args, loader=dm.train_dataloader())
        elif variant == "nanogpt":
            t = bench_nanogpt(cfg.replace(pad_vocab_to=64), B, T, args)
            if t is None:
                continue
        elif variant == "hf":
            t = bench_hf(cfg.replace(pad_vocab_to=1), B, T, args)
            if t is None:
                continue
        else:
            raise SystemExit(f"unknown variant {variant}")
        tok_s = B * T / t
        mfu = fpt * tok_s / (args.peak_tflops * 1e12)
        mem = torch.cuda.max_memory_allocated() / 2**30
        rows.append({"variant": variant, "step_ms": t * 1e3, "tokens_per_s": tok_s, "mfu": mfu, "peak_mem_gib": mem})
        print(json.dumps(rows[-1]), flush=True)
    base = {r["variant"]: r["tokens_per_s"] for r in rows}
    print(f"\n{args.model} B={B} T={T} compile={args.compile}/{args.compile_scope} chunked_ce={args.chunked_ce} "
          f"pad_vocab_to={args.pad_vocab_to} {torch.cuda.get_device_name()} torch {torch.__version__}")
    print("| variant | step ms | tokens/s | MFU | peak GiB |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | {r['mfu']:.1%} | {r['peak_mem_gib']:.1f} |")
    if "hf" in base and "trainer" in base:
        print(f"trainer / hf = {base['trainer'] / base['hf']:.2f}x")
    for name in base:
        if name.startswith("trainer") and "nanogpt" in base:
            print(f"{name} / nanogpt = {base[name] / base['nanogpt']:.2f}x")
    if "plain" in base and "trainer" in base:
        print(f"lightning overhead = {1 - base['trainer'] / base['plain']:.1%}")
    if "plain" in base and "plain_loader" in base:
        print(f"real loader / batch on GPU = {base['plain_loader'] / base['plain']:.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
