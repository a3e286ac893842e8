"""One GRPO step: spine's `GRPOModule` against TRL's `GRPOTrainer`, same weights, shapes and device, one process.

A step is P prompts x G samples x N new tokens: the rollout (generation + reward + advantages), then one
optimizer update on the P*G completions (forward with entropy, clipped surrogate, backward, clip, AdamW).
Both sides get the same random weights (spine's `GPT` exported to HF with `spine.hf.export_hf`), the
same prompt token ids, plain temperature-1 sampling, the DAPO token-mean loss, no KL/reference model,
one update per rollout (old log-probs = the rollout's, no recompute), fp32 weights under bf16 autocast
on GPU (fp32 on CPU), and completions of exactly N tokens (so the comparison times work, not luck):
- spine: the module through Lightning's Trainer, as `spine fit` runs it (manual optimization;
  `GRPOModule.rollout` drives `spine.engine.Engine`, eager decode, as the module does by default). The
  tokenizer has no stop id, so every row decodes N tokens.
- spine_compiled: the same with `compile_rollouts=True` (one compiled Engine for the fit: the CUDA-graph
  decode step; its compilation falls in the warm-up step). `--spine_compile` turns the `spine` variant
  into this one.
- spine_bf16: spine_compiled decoding from a bf16 copy of the weights (`rollout_dtype: bf16`, refreshed
  in place before each rollout, autocast off): what a decode-only engine reads, half the bytes.
- TRL: `GRPOTrainer` with transformers `generate` (no vLLM), `min_new_tokens=N` so EOS is masked,
  gradient checkpointing off (TRL's default is on: `--trl_gradient_checkpointing` turns it back on),
  logging/saving/reporting off.
Rollout seconds: `GRPOModule.rollout` / `GRPOTrainer._generate_and_score_completions`, CUDA-synchronised;
update seconds: the rest of the step (step seconds minus rollout seconds); medians over --steps after
--warmup steps. Every completion's length is checked to be N on both sides.

Prompts are random token ids written as words of a synthetic vocabulary (one word per id), so both
tokenizers map them to the same ids for any preset without tokenizer files, and the reward (a hash of
the completion text, the same function on both sides) costs next to nothing.

TRL is a bench-only dependency (not in pyproject): `pip install trl` (measured with trl 1.16.0). On a GPU
machine: `../shared/tools/device-wheels trl accelerate psutil` and carry `.whl` (see that script's header).

    python bench/grpo_throughput.py --preset gpt2-124m --device cuda --steps 3 --warmup 1
    python bench/grpo_throughput.py --preset gpt2-124m --device cuda --steps 3 --warmup 1 \
        --variants spine,spine_compiled,trl   # eager spine, compiled-rollout spine and TRL in one run
    python bench/grpo_throughput.py --preset qwen3-0.6b --device cuda --steps 3 --warmup 1
    python bench/grpo_throughput.py --preset gpt2-tiny --prompts 2 --n 4 --new_tokens 16 --device cpu \
        --steps 1 --warmup 1                # a CPU check that both sides run end to end
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import statistics
import sys
import tempfile
import time
import warnings
import zlib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spine.config import ModelConfig  # noqa: E402
from spine.model import GPT  # noqa: E402

VARIANTS = ("spine", "spine_compiled", "spine_bf16", "trl")


# ---------------------------------------------------------------------------- shared inputs
def id_word(i: int, width: int) -> str:
    """Token id -> a lowercase word of `width` letters (base 26): no digits, so no answer to extract."""
    letters = []
    for _ in range(width):
        i, r = divmod(i, 26)
        letters.append(chr(97 + r))
    return "".join(reversed(letters))


def word_width(vocab_size: int) -> int:
    return max(1, math.ceil(math.log(vocab_size, 26)))


class WordTokenizer:
    """spine's side of the synthetic vocabulary: text of space-separated id words <-> ids.

    `eos_id` is -1 (never a token) and there are no other stop ids, so the engine decodes every row to
    `max_new_tokens`: fixed-length completions without touching the module.
    """

    eos_id = -1
    pad_id = 0

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self.width = word_width(vocab_size)
        self.ids = {id_word(i, self.width): i for i in range(vocab_size)}

    def encode(self, text: str, allowed_special=frozenset()) -> list[int]:
        return [self.ids[w] for w in text.split()]

    def decode(self, ids) -> str:
        return " ".join(id_word(int(i), self.width) for i in ids)


def hf_word_tokenizer(vocab_size: int, eos_id: int):
    """TRL's side: a transformers fast tokenizer over the same words (WordLevel, split on whitespace)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    width = word_width(vocab_size)
    vocab = {id_word(i, width): i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=id_word(0, width)))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    eos = id_word(eos_id, width)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=eos)


def make_prompts(n: int, length: int, vocab_size: int, seed: int = 1) -> list[list[int]]:
    """Random prompt ids, avoiding 0 (spine's pad) and the last id (TRL's EOS/pad)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab_size - 1, (n, length), generator=g).tolist()


def text_reward(text: str) -> float:
    """A cheap reward with a spread inside a group: a hash of the completion text, in [0, 1]."""
    return (zlib.crc32(text.encode()) % 5) / 4.0


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------- spine
def run_spine(args, cfg: ModelConfig, state: dict, prompts: list[list[int]], compile_rollouts: bool = False,
              rollout_dtype: str | None = None) -> dict:
    """Warmup + steps GRPO steps of `GRPOModule` through Lightning's Trainer; per-step seconds.
    `compile_rollouts`: the module's compiled rollout engine (variant spine_compiled); `rollout_dtype`:
    its decode copy of the weights (variant spine_bf16)."""
    import lightning.pytorch as L

    from datamodules.prompts import PromptDataModule
    from modules.grpo import GRPOModule
    from spine.engine import SamplingParams
    from spine.reasoning.problems import Problem

    dev = args.device

    class TimedGRPO(GRPOModule):
        """The module unchanged, with its rollout timed (and its completion lengths kept for the check)."""

        def rollout(self, *a, **k):
            _sync(dev)
            t0 = time.perf_counter()
            out = super().rollout(*a, **k)
            _sync(dev)
            self.bench_rollout_s.append(time.perf_counter() - t0)
            self.bench_lengths.extend(len(t) for t in out["token_ids"])
            return out

    class StepTimer(L.Callback):
        def __init__(self):
            self.times: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            _sync(dev)
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            _sync(dev)
            self.times.append(time.perf_counter() - self.t0)

    tok = WordTokenizer(cfg.vocab_size)
    cuda = dev.startswith("cuda")
    module = TimedGRPO(
        model=args.preset, model_overrides={"context_length": cfg.context_length}, group_size=args.n,
        sampling=SamplingParams(temperature=1.0, max_new_tokens=args.new_tokens, seed=0),
        loss_aggregation="token", eps_low=0.2, eps_high=0.2, old_logprobs="rollout",
        reward="format",  # replaced below by text_reward (the same function TRL gets)
        skip_zero_variance=False,  # TRL trains every group: so does this side
        rollout_batch_size=args.prompts * args.n, max_grad_norm=1.0, lr=1e-6, weight_decay=0.0,
        scheduler="constant", compile_rollouts=compile_rollouts, rollout_dtype=rollout_dtype)
    module.model.load_state_dict(state)
    module.tokenizer = tok
    module.reward_fn = lambda problem, text: text_reward(text)
    module.bench_rollout_s, module.bench_lengths = [], []
    # the stage's own data module, given the problems directly; template "plain" is the prompt text itself
    data = PromptDataModule(template="plain", prompts_per_step=args.prompts, shuffle=False)
    data.problems = [Problem(id=f"p{i}", prompt=tok.decode(p), answer="0") for i, p in enumerate(prompts)]
    timer = StepTimer()
    with tempfile.TemporaryDirectory(prefix="grpo-bench-spine-") as root, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer = L.Trainer(accelerator="cuda" if cuda else "cpu", devices=1,
                            precision="bf16-mixed" if args.bf16 else "32-true", max_steps=args.warmup + args.steps,
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                            default_root_dir=root, callbacks=[timer])
        trainer.fit(module, datamodule=data)
    out = {"step_s": timer.times, "rollout_s": module.bench_rollout_s, "lengths": module.bench_lengths}
    del module, trainer
    return out


# ---------------------------------------------------------------------------- TRL
def run_trl(args, cfg: ModelConfig, hf_dir: Path, prompts: list[list[int]]) -> dict:
    """Warmup + steps GRPO steps of TRL's `GRPOTrainer` on the exported weights; per-step seconds."""
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    dev = args.device
    cuda = dev.startswith("cuda")
    eos = cfg.vocab_size - 1
    tok = hf_word_tokenizer(cfg.vocab_size, eos)
    words = WordTokenizer(cfg.vocab_size)
    texts = [words.decode(p) for p in prompts]
    assert [tok(t)["input_ids"] for t in texts] == prompts, "the two tokenizers disagree on the prompts"
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="sdpa")

    def reward(prompts, completions, **kw):
        return [text_reward(c) for c in completions]

    steps: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            _sync(dev)
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            _sync(dev)
            steps.append(time.perf_counter() - self.t0)

    with tempfile.TemporaryDirectory(prefix="grpo-bench-trl-") as root:
        conf = GRPOConfig(
            output_dir=root, per_device_train_batch_size=args.prompts * args.n, gradient_accumulation_steps=1,
            num_generations=args.n, max_completion_length=args.new_tokens,
            generation_kwargs={"min_new_tokens": args.new_tokens},  # EOS masked: every completion has N tokens
            temperature=1.0, top_p=1.0, top_k=0, beta=0.0, loss_type="dapo", epsilon=0.2, num_iterations=1,
            max_steps=args.warmup + args.steps, learning_rate=1e-6, weight_decay=0.0, max_grad_norm=1.0,
            lr_scheduler_type="constant", warmup_steps=0, bf16=args.bf16, use_cpu=not cuda,
            gradient_checkpointing=args.trl_gradient_checkpointing, logging_strategy="no", save_strategy="no",
            report_to="none", disable_tqdm=True, seed=0, dataloader_num_workers=0, shuffle_dataset=False)
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=conf, processing_class=tok,
                              train_dataset=Dataset.from_dict({"prompt": texts}), callbacks=[StepTimer()])
        rollout_s: list[float] = []
        lengths: list[int] = []
        generate = trainer._generate_and_score_completions

        def timed_generate(inputs):
            _sync(dev)
            t0 = time.perf_counter()
            out = generate(inputs)
            _sync(dev)
            rollout_s.append(time.perf_counter() - t0)
            lengths.extend(out["completion_mask"].sum(dim=1).tolist())
            return out

        trainer._generate_and_score_completions = timed_generate
        trainer.train()
    out = {"step_s": steps, "rollout_s": rollout_s, "lengths": lengths, "trl": trl.__version__}
    del trainer, model
    return out


# ---------------------------------------------------------------------------- report
def summarise(name: str, raw: dict, args) -> dict:
    """Medians over the timed steps (warm-up dropped), after checking the step is what was asked for."""
    want = args.warmup + args.steps
    if len(raw["step_s"]) != want or len(raw["rollout_s"]) != want:
        raise SystemExit(f"{name}: expected {want} steps with one rollout each, got {len(raw['step_s'])} steps and "
                         f"{len(raw['rollout_s'])} rollouts")
    rows = args.prompts * args.n
    bad = [n for n in raw["lengths"] if n != args.new_tokens]
    if len(raw["lengths"]) != want * rows or bad:
        raise SystemExit(f"{name}: completions were not all {args.new_tokens} tokens long "
                         f"(lengths seen: {sorted(set(raw['lengths']))[:8]})")
    step = raw["step_s"][args.warmup:]
    roll = raw["rollout_s"][args.warmup:]
    upd = [s - r for s, r in zip(step, roll)]
    return {"variant": name, "rollout_s": statistics.median(roll), "update_s": statistics.median(upd),
            "step_s": statistics.median(step), "steps": len(step),
            "rollout_tokens_per_s": rows * args.new_tokens / statistics.median(roll),
            "step_s_all": raw["step_s"], "rollout_s_all": raw["rollout_s"]}


def choose_variants(spec: str, spine_compile: bool = False) -> list[str]:
    """The variants to run, in order, from `--variants`; `--spine_compile` swaps spine for spine_compiled."""
    variants = [v.strip() for v in spec.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise SystemExit(f"--variants: unknown {unknown or 'none given'}; choose from {', '.join(VARIANTS)}")
    if spine_compile:
        variants = ["spine_compiled" if v == "spine" else v for v in variants]
    return list(dict.fromkeys(variants))


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU, {torch.get_num_threads()} threads"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="gpt2-124m", help="spine model preset (random weights)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per step (P)")
    ap.add_argument("--n", type=int, default=8, help="samples per prompt (G)")
    ap.add_argument("--new_tokens", type=int, default=256, help="tokens per completion (N), exactly")
    ap.add_argument("--prompt_len", type=int, default=64, help="tokens per prompt")
    ap.add_argument("--steps", type=int, default=3, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--variants", default="spine,trl", help=f"comma-separated, from {', '.join(VARIANTS)}")
    ap.add_argument("--spine_compile", action="store_true",
                    help="run the spine variant with compile_rollouts (reported as spine_compiled)")
    ap.add_argument("--trl_gradient_checkpointing", action="store_true",
                    help="TRL's default; off by default here because spine does not recompute activations")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                    help="auto: bf16 autocast over fp32 weights on CUDA, fp32 on CPU (bf16 on CPU checks the AMP path)")
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = ap.parse_args()
    variants = choose_variants(args.variants, args.spine_compile)
    for name in ("prompts", "new_tokens", "prompt_len", "steps"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.n < 2 or args.warmup < 0:
        raise SystemExit(f"need --n >= 2 (a group baseline) and --warmup >= 0, got {args.n}, {args.warmup}")
    if "trl" in variants:  # fail before the spine side has spent its minutes
        try:
            import datasets  # noqa: F401
            import trl  # noqa: F401
        except ImportError as e:
            raise SystemExit(f"the trl variant needs TRL (a bench-only dependency): pip install trl ({e})") from None
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available (use --device cpu for a check run)")
    args.bf16 = args.precision == "bf16" or (args.precision == "auto" and args.device.startswith("cuda"))
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    need = args.prompt_len + args.new_tokens
    cfg = ModelConfig.from_preset(args.preset)
    if cfg.context_length < need:
        cfg = ModelConfig.from_preset(args.preset, context_length=need)
    torch.manual_seed(0)
    state = GPT(cfg).state_dict()
    prompts = make_prompts(args.prompts, args.prompt_len, cfg.vocab_size)
    raw = {}
    with tempfile.TemporaryDirectory(prefix="grpo-bench-hf-") as hf_dir:
        if "trl" in variants:
            from spine.hf import export_hf

            model = GPT(cfg)
            model.load_state_dict(state)
            export_hf(model, Path(hf_dir) / "model")
            del model
        for v in variants:
            torch._dynamo.reset()  # a compiled variant's graphs (and CUDA-graph memory) go before the next runs
            gc.collect()
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            if v == "trl":
                raw[v] = run_trl(args, cfg, Path(hf_dir) / "model", prompts)
            else:
                raw[v] = run_spine(args, cfg, state, prompts, compile_rollouts=v != "spine",
                                   rollout_dtype="bf16" if v == "spine_bf16" else None)
            if args.device.startswith("cuda"):
                raw[v]["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    rows = []
    for v in variants:
        row = summarise(v, raw[v], args)
        if "peak_mem_gib" in raw[v]:
            row["peak_mem_gib"] = raw[v]["peak_mem_gib"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    by = {r["variant"]: r for r in rows}
    ratios = {s: {k: by["trl"][k] / by[s][k] for k in ("rollout_s", "update_s", "step_s")}
              for s in ("spine", "spine_compiled", "spine_bf16") if s in by and "trl" in by}
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "trl": raw.get("trl", {}).get("trl")}
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    dtype = "bf16-mixed" if args.bf16 else "fp32"
    print(f"\nGRPO step, {args.preset} (random weights), {args.prompts} prompts x {args.n} samples x "
          f"{args.new_tokens} new tokens (prompt {args.prompt_len}), {dtype}; {device_name(args.device)}; {when}; "
          + ", ".join(f"{k} {v}" for k, v in versions.items() if v))
    print("| variant | rollout s | update s | s/step |\n|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['rollout_s']:.3f} | {r['update_s']:.3f} | {r['step_s']:.3f} |")
    for s, ratio in ratios.items():
        print(f"| TRL / {s} | {ratio['rollout_s']:.2f}x | {ratio['update_s']:.2f}x | {ratio['step_s']:.2f}x |")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "device": device_name(args.device), "date": when,
                                              "versions": versions, "rows": rows, "trl_over_spine": ratios.get("spine"),
                                              "trl_over_spine_compiled": ratios.get("spine_compiled"),
                                              "trl_over_spine_bf16": ratios.get("spine_bf16")}, indent=2))


if __name__ == "__main__":
    main()
