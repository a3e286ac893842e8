"""What every training stage shares: building the core `GPT`, the optimizer and schedule, exact token
normalisation under gradient accumulation, and RNG state in checkpoints (for bitwise resume).

The mathematics lives in `spine`; this class only wires it into Lightning's hooks.
"""
from __future__ import annotations

import math
import os
import random
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch

from spine.config import ModelConfig
from spine.engine import load_model
from spine.distributed import MODEL_CONFIG_KEY, TOKENIZER_FILES_KEY, shard_fsdp2, tokenizer_files
from spine.model import GPT
from spine.training import TokenNormalizer, param_groups, warmup_cosine


def build_model(
    model: str = "gpt2-tiny",
    model_overrides: dict[str, Any] | None = None,
    init_from: str | None = None,
    vocab_size: int | None = None,
    context_length: int | None = None,
    init: str = "gpt2",
) -> tuple[GPT, Any]:
    """A `GPT` from a preset (+ overrides), a spine checkpoint dir, or `hf:PATH` (an HF checkpoint dir).

    `vocab_size`/`context_length` come from the data module (LightningCLI links them). For a fresh
    model they set the shape; for a loaded one they are checked against it.
    Returns (model, tokenizer-or-None from the checkpoint).
    """
    tokenizer = None
    if init_from:
        net, tokenizer = load_model(init_from)
        net.train()  # loaders return eval mode; a training stage must see dropout as configured
        cfg = net.config
        if vocab_size is not None and vocab_size > cfg.vocab_size:
            raise ValueError(f"the data's tokenizer has {vocab_size} ids but the checkpoint {init_from} embeds only "
                             f"{cfg.vocab_size}; use the checkpoint's tokenizer")
        if context_length is not None and context_length > cfg.context_length:
            raise ValueError(f"data context_length {context_length} exceeds the checkpoint's context_length "
                             f"{cfg.context_length} ({init_from})")
        return net, tokenizer
    overrides = dict(model_overrides or {})
    if vocab_size is not None:
        overrides.setdefault("vocab_size", vocab_size)
    if context_length is not None:
        overrides.setdefault("context_length", context_length)
    cfg = ModelConfig.from_preset(model, **overrides)
    net = GPT(cfg)
    if init != "gpt2":
        net.init_weights(scheme=init)
    return net, tokenizer


def validate_hparams(*, lr: float, weight_decay: float, betas: Any, warmup_steps: int, min_lr_ratio: float,
                    scheduler: str) -> None:
    """One ValueError line naming the optimisation setting that cannot work."""
    def real(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    if not real(lr) or lr <= 0:
        raise ValueError(f"--model.init_args.lr must be a positive number, got {lr!r}")
    if not real(weight_decay) or weight_decay < 0:
        raise ValueError(f"--model.init_args.weight_decay must be >= 0, got {weight_decay!r}")
    if (not isinstance(betas, (list, tuple)) or len(betas) != 2
            or not all(real(b) and 0 <= b < 1 for b in betas)):
        raise ValueError(f"--model.init_args.betas must be two numbers in [0, 1), got {betas!r}")
    if not isinstance(warmup_steps, int) or isinstance(warmup_steps, bool) or warmup_steps < 0:
        raise ValueError(f"--model.init_args.warmup_steps must be an integer >= 0, got {warmup_steps!r}")
    if not real(min_lr_ratio) or not 0 <= min_lr_ratio <= 1:
        raise ValueError(f"--model.init_args.min_lr_ratio must be in [0, 1] (the final lr as a fraction of lr), "
                         f"got {min_lr_ratio!r}")
    if scheduler not in ("cosine", "constant"):
        raise ValueError(f"--model.init_args.scheduler must be 'cosine' or 'constant', got {scheduler!r}")


def check_resumable(checkpoint: dict, model: GPT, own_state: dict[str, torch.Tensor]) -> None:
    """Refuse, in one line, a training checkpoint that does not fit this module's model, or whose
    weights hold NaN/Inf (Lightning would fail deep in `load_state_dict`, or train on NaNs)."""
    stored = checkpoint.get(MODEL_CONFIG_KEY)
    if isinstance(stored, dict):
        ours = model.config.to_dict()
        diff = sorted(k for k in ours if k not in ("name", "dropout", "extra", "family") and stored.get(k) != ours[k])
        if diff:
            listed = ", ".join(f"{k}: checkpoint={stored.get(k)!r} model={ours[k]!r}" for k in diff[:6])
            raise ValueError(f"--ckpt_path: the checkpoint holds another model ({listed}); resume with the config "
                             "it was trained with")
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        return
    for name, t in state.items():
        mine = own_state.get(name)
        if isinstance(t, torch.Tensor) and mine is not None and tuple(t.shape) != tuple(mine.shape) \
                and not hasattr(mine, "device_mesh"):
            raise ValueError(f"--ckpt_path: tensor {name!r} has shape {list(t.shape)} in the checkpoint but "
                             f"{list(mine.shape)} in this model; resume with the config it was trained with")
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not hasattr(t, "device_mesh") \
                and not bool(torch.isfinite(t).all()):
            raise ValueError(f"--ckpt_path: tensor {name!r} holds NaN/Inf values; the checkpoint is corrupt or "
                             "its run diverged — resume from an earlier one")


def _np_state_to_plain(state) -> dict:
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _np_state_from_plain(d: dict):
    return (d["name"], d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["cached"])


class SpineModule(L.LightningModule):
    """Base for the stages. Subclasses implement `training_step`/`validation_step` with `self.loss_step`."""

    # FSDP2 (Lightning's ModelParallelStrategy) all-gathers a block's weights only inside its forward;
    # stages that call parts of the model outside `GPT.forward` (a classifier head on pooled
    # states, LoRA) opt out and say so rather than fail inside torch.
    supports_sharding = False

    def __init__(
        self,
        model: str = "gpt2-tiny",
        model_overrides: dict[str, Any] | None = None,
        init_from: str | None = None,
        vocab_size: int | None = None,
        context_length: int | None = None,
        pad_id: int | None = None,
        lr: float = 4e-4,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.1,
        scheduler: str = "cosine",
        compile: bool = False,
        fused_adam: bool | None = None,
        init: str = "gpt2",
    ):
        """A training stage over a `GPT` built from a preset or loaded from a checkpoint.

        Args:
            model: preset name: gpt2-124m, gpt2-355m, gpt2-774m, gpt2-1558m, qwen3-0.6b, qwen3-1.7b,
                qwen3-4b, qwen3-8b, gpt2-tiny, qwen3-tiny (`spine.config.PRESETS`).
            model_overrides: ModelConfig fields that replace the preset's, e.g. {d_model: 128, n_layer: 4}.
            init_from: start from a spine checkpoint directory, or hf:PATH (a Hugging Face GPT-2/Qwen3
                directory); `model`, `model_overrides` and `init` are then ignored.
            vocab_size: set by the data module (linked); the model's vocabulary.
            context_length: set by the data module (linked); the model's context.
            pad_id: set by the data module (linked); the padding id.
            lr: peak learning rate of AdamW.
            weight_decay: AdamW weight decay (not applied to norms, biases, embeddings).
            betas: AdamW betas.
            warmup_steps: linear warmup steps before the schedule.
            min_lr_ratio: the cosine schedule ends at lr * min_lr_ratio.
            scheduler: "cosine" (linear warmup, then cosine to min_lr_ratio over the run's steps) or
                "constant" (warmup, then lr).
            compile: torch.compile the model (the loss step as one graph).
            fused_adam: fused AdamW kernel (None: on CUDA only).
            init: weight init of a fresh model: "gpt2" (N(0, 0.02), nanoGPT/HF) or "torch" (PyTorch
                defaults, as the book's GPTModel). Ignored when starting from `init_from`.
        """
        super().__init__()
        validate_hparams(lr=lr, weight_decay=weight_decay, betas=betas, warmup_steps=warmup_steps,
                         min_lr_ratio=min_lr_ratio, scheduler=scheduler)
        self.save_hyperparameters()
        self.model, self.tokenizer = build_model(model, model_overrides, init_from, vocab_size, context_length, init)
        self.pad_id = pad_id
        self.normalizer = TokenNormalizer()

    # ------------------------------------------------------------------ setup
    def configure_model(self) -> None:
        self._shard()
        if self.hparams.compile and not getattr(self, "_compiled", False):
            # in-place compile keeps parameter names (and so checkpoints) unchanged
            self.model.compile()
            self._compiled = True

    def _shard(self) -> None:
        """Under ModelParallelStrategy: shard the model with FSDP2 over the data-parallel mesh (once)."""
        mesh = self.device_mesh
        if mesh is None or getattr(self, "_sharded", False):
            return
        name = type(self).__name__
        if not self.supports_sharding:
            raise ValueError(f"{name} does not support ModelParallelStrategy (FSDP2): it calls parts of the model "
                             "outside its forward. Use --trainer.strategy=ddp.")
        dims = mesh.mesh_dim_names or ()
        if "tensor_parallel" in dims and mesh["tensor_parallel"].size() > 1:
            raise ValueError(
                f"{name}: spine shards with FSDP2 only (no tensor parallelism), but the device mesh has "
                f"tensor_parallel={mesh['tensor_parallel'].size()}. Pass --trainer.strategy.data_parallel_size="
                f"{mesh.size()} --trainer.strategy.tensor_parallel_size=1 (see docs/multi-gpu.md).")
        dp = mesh["data_parallel"] if "data_parallel" in dims else mesh
        # bf16-mixed: gather and compute in bf16, keep fp32 master shards, reduce grads in fp32
        param_dtype = torch.bfloat16 if str(self.trainer.precision) == "bf16-mixed" else None
        if self.hparams.compile and not getattr(self, "_compiled", False):
            # Compile block by block (torchtitan's layout): a graph over the whole model would break at
            # every FSDP2 hook and ran at half the speed of the unsharded model (bench/RESULTS.md §5).
            for block in self.model.blocks:
                block.compile()
            self._compiled = True
        shard_fsdp2(self.model, dp, param_dtype=param_dtype)
        self._sharded = True

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clipping from the Trainer's `gradient_clip_val`, also with fused AdamW under bf16-mixed.

        Lightning's AMP plugin refuses fused optimizers with clipping because fp16 grad scaling would
        unscale inside the step; bf16 has no scaler, so gradients are already true gradients here.
        """
        if not gradient_clip_val:
            return
        plugin = self.trainer.precision_plugin
        if getattr(plugin, "scaler", None) is None and getattr(optimizer, "_step_supports_amp_scaling", False):
            params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val,
                            gradient_clip_algorithm=gradient_clip_algorithm)

    def setup(self, stage: str) -> None:
        from .checkpoint_io import use_spine_checkpoint_io

        use_spine_checkpoint_io(self.trainer)  # atomic, checksummed .ckpt files (unless the user chose an IO)
        self._make_checkpoint_dirs()
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if self.tokenizer is None and dm is not None and getattr(dm, "tokenizer", None) is not None:
            self.tokenizer = dm.tokenizer

    def _make_checkpoint_dirs(self) -> None:
        """Rank 0 creates every ModelCheckpoint directory now, before the barrier that ends setup.

        Otherwise the first sharded save (ModelParallelStrategy: every rank calls
        `mkdir(parents=True)` on its shard directory) creates the parent on whichever rank gets
        there first, so which rank writes outside its own shard depended on timing."""
        trainer = self.trainer
        if not trainer.is_global_zero:
            return
        for cb in trainer.checkpoint_callbacks:
            dirpath = getattr(cb, "dirpath", None)
            if dirpath and "://" not in str(dirpath):
                os.makedirs(dirpath, exist_ok=True)

    def forward(self, idx: torch.Tensor, **kw) -> torch.Tensor:
        return self.model(idx, **kw)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        h = self.hparams
        fused = h.fused_adam
        if fused is None:
            # fused AdamW exists for CUDA and (torch >= 2.4) CPU; on CPU it is several times faster
            fused = self.device.type in ("cuda", "cpu")
        opt = torch.optim.AdamW(param_groups(self.model, h.weight_decay), lr=h.lr, betas=tuple(h.betas),
                                fused=bool(fused))
        if h.scheduler == "constant":
            return opt
        if h.scheduler != "cosine":
            raise ValueError(f"scheduler must be 'cosine' or 'constant', got {h.scheduler!r}")
        total = int(self.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(h.warmup_steps, max(total, 1), h.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def backward_loss(self, loss_sum: torch.Tensor, n_tokens: torch.Tensor, reference: int | None = None
                      ) -> torch.Tensor:
        """The value to return from training_step so gradients end up token-normalised per window.

        `reference`: a fixed divisor known without a GPU sync (e.g. `targets.numel()`).
        """
        if self.normalizer.reference is None and self._trainer is not None and self.trainer.world_size > 1:
            # Under DDP every rank must divide by the SAME reference: DDP averages the ranks' gradients
            # before `rescale_` multiplies by reference * accumulate * world / global_tokens, which is
            # exact only if the reference cancels. A per-rank one (a rank's first token count, as the
            # instruction/classifier stages pass no reference) would weight ranks unequally and leave
            # them with different gradients (diverging weights). One all-reduce, on the first
            # micro-batch only; afterwards (and after a resume) the reference is fixed.
            ref = torch.as_tensor(float(reference) if reference else n_tokens, dtype=torch.float64,
                                  device=self.device).clamp_min(1.0)
            reference = float(self.trainer.strategy.reduce(ref, reduce_op="sum")) / self.trainer.world_size
        return self.normalizer.micro_batch(loss_sum, n_tokens, reference)

    def on_before_optimizer_step(self, optimizer) -> None:
        trainer = self.trainer
        world = trainer.world_size

        def all_reduce(t):
            return trainer.strategy.reduce(t.to(self.device), reduce_op="sum")

        self.normalizer.rescale_((p for g in optimizer.param_groups for p in g["params"]),
                                 accumulate=trainer.accumulate_grad_batches, world_size=world,
                                 all_reduce=all_reduce, device=self.device)
        # the step's token-mean loss over every micro-batch of every rank (reduced with the token count)
        self.log("train_loss", self.normalizer.step_loss, prog_bar=True)

    # ------------------------------------------------------------------ exact resume
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["spine_rng"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            # numpy's state as plain tensors/ints so the checkpoint loads with weights_only=True
            "numpy": _np_state_to_plain(np.random.get_state()),
            "python": random.getstate(),
        }
        checkpoint["spine_normalizer"] = self.normalizer.state_dict()
        # enough to rebuild the model alone from this checkpoint (`spine consolidate`), e.g. from shards
        checkpoint[MODEL_CONFIG_KEY] = self.model.config.to_dict()
        if self.tokenizer is not None:
            if getattr(self, "_tokenizer_files", None) is None:
                self._tokenizer_files = tokenizer_files(self.tokenizer)
            checkpoint[TOKENIZER_FILES_KEY] = self._tokenizer_files

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_resumable(checkpoint, self.model, self.state_dict())
        rng = checkpoint.get("spine_rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            if rng.get("cuda") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            np.random.set_state(_np_state_from_plain(rng["numpy"]))
            random.setstate(rng["python"])
        if "spine_normalizer" in checkpoint:
            self.normalizer.load_state_dict(checkpoint["spine_normalizer"])
