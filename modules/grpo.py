"""GRPO (RL with verifiable rewards) as a training stage.

One `training_step` = one rollout batch: the prompt data module hands over P problems, the engine
draws G completions of each with the current weights (one shared prefill per prompt), the reward
scores them, group advantages are formed, groups whose rewards are all equal are dropped before any
forward, and `inner_updates` optimizer steps are taken on what is left (old log-probs kept from the
rollout). The mathematics is in `spine.rl`, the rewards in `spine.reasoning.rewards`.

Steps: Lightning's `global_step` counts optimizer updates, so it advances by `inner_updates` per
rollout batch (by 0 when every group was skipped); `rl/rollouts` counts rollout batches.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from typing import Any, Sequence

import torch
from lightning.pytorch.utilities import rank_zero_warn

from spine.engine import Engine, SamplingParams, sample_seed, sequence_logprobs
from spine.reasoning.rewards import make_reward, score, shuffle_rewards, verify
from spine.rl import (AGGREGATIONS, aggregate, group_advantages, logprobs_and_entropy, pack_rollouts,
                      policy_token_loss, trim_at_stop_string, zero_variance_groups)

from .base import SpineModule

_OLD_LOGPROBS = ("rollout", "recompute")
_ROLLOUT_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
                   "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}


def _int_at_least(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"GRPOModule: {name} must be an integer >= {low}, got {value!r}")
    return value


class GRPOModule(SpineModule):
    """GRPO / Dr. GRPO / DAPO-style policy optimisation of a spine `GPT` (see docs/grpo.md).

    Policy: `init_from` (a spine checkpoint dir or "hf:PATH") or a preset, as every stage.
    Rollouts: `group_size` (G) samples per prompt drawn with `sampling` (temperature > 0, top_p/top_k,
      max_new_tokens, stop strings); noise keyed by (sampling.seed, rollout index, problem id, sample),
      so a resumed run draws the same samples.
    Advantages: group mean baseline, divided by the group std when `scale_advantages` (GRPO) or not
      (Dr. GRPO). `loss_aggregation`: one of `spine.rl.AGGREGATIONS`.
    Updates: `inner_updates` optimizer steps per rollout batch on the PPO clipped ratio
      (`eps_low`/`eps_high`); old log-probs from the rollout (`old_logprobs="rollout"`) or from a
      no-grad forward before the first update ("recompute"). Both sides are raw-model (temperature 1)
      log-probs. `micro_batch_size` completions per forward (None: all at once).
    KL: `kl_coef` > 0 adds the per-token k3 KL to a frozen copy of the initial weights; `log_kl`
      logs it without the penalty.
    Rewards: `reward` ("correctness", "format" or "pkg.module.function"(problem, text) -> number) plus
      `format_weight` x boxed-format (paid only to correct answers if `format_only_when_correct`);
      `random_reward` shuffles the step's rewards across its completions (the control run).
    Filtering: `skip_zero_variance` drops all-equal groups with no forward/backward; `resample_budget`
      extra rounds redraw those groups' samples; `mask_truncated` removes completions that hit
      `max_new_tokens` from the loss.
    Speed: `compile_rollouts` keeps one `Engine(compile=True)` for the whole fit, so the compiled decode
      step (a CUDA graph on GPU) and its KV-cache buffers are built once and reused by every rollout.
      `rollout_dtype` ("bf16", "fp16", "fp32"; None: decode the trained weights under the step's
      autocast) decodes from a copy of the weights in that dtype, refreshed in place before every
      rollout, with autocast off: bf16 weights read half the bytes per decode step and skip autocast's
      per-step casts. The rollout's log-probs then come from the copy (bf16 norms/softmax, not fp32
      ones), a small mismatch against the update's forward; `old_logprobs: recompute` removes it.
    """

    def __init__(self, *args: Any, group_size: int = 8,
                 sampling: SamplingParams = SamplingParams(temperature=1.0, max_new_tokens=256),
                 scale_advantages: bool = True, loss_aggregation: str = "token", eps_low: float = 0.2,
                 eps_high: float = 0.2, inner_updates: int = 1, old_logprobs: str = "rollout",
                 kl_coef: float = 0.0, log_kl: bool = False, reward: str = "correctness",
                 format_weight: float = 0.0, format_only_when_correct: bool = False, random_reward: bool = False,
                 skip_zero_variance: bool = True, resample_budget: int = 0, mask_truncated: bool = False,
                 rollout_batch_size: int = 64, micro_batch_size: int | None = None, max_grad_norm: float | None = 1.0,
                 max_skipped_steps: int = 50, compile_rollouts: bool = False,
                 rollout_dtype: str | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.automatic_optimization = False
        self.model.train()
        self.G = _int_at_least("group_size", group_size, 2)
        _int_at_least("inner_updates", inner_updates, 1)
        _int_at_least("resample_budget", resample_budget, 0)
        _int_at_least("rollout_batch_size", rollout_batch_size, 1)
        _int_at_least("max_skipped_steps", max_skipped_steps, 1)
        if not isinstance(compile_rollouts, bool):
            raise ValueError(f"GRPOModule: compile_rollouts must be true or false, got {compile_rollouts!r}")
        if rollout_dtype is not None and rollout_dtype not in _ROLLOUT_DTYPES:
            raise ValueError(f"GRPOModule: rollout_dtype must be null or one of {', '.join(_ROLLOUT_DTYPES)}, "
                             f"got {rollout_dtype!r}")
        if micro_batch_size is not None:
            _int_at_least("micro_batch_size", micro_batch_size, 1)
        if loss_aggregation not in AGGREGATIONS:
            raise ValueError(f"GRPOModule: loss_aggregation must be one of {', '.join(AGGREGATIONS)}, "
                             f"got {loss_aggregation!r}")
        if old_logprobs not in _OLD_LOGPROBS:
            raise ValueError(f"GRPOModule: old_logprobs must be one of {', '.join(_OLD_LOGPROBS)}, got {old_logprobs!r}")
        if not isinstance(sampling, SamplingParams):
            raise ValueError(f"GRPOModule: sampling must be a SamplingParams, got {sampling!r}")
        if sampling.temperature <= 0:
            raise ValueError(f"GRPOModule: sampling.temperature must be > 0 (greedy rollouts make every group's "
                             f"samples identical), got {sampling.temperature!r}")
        if sampling.n not in (1, self.G):
            raise ValueError(f"GRPOModule: the samples per prompt are group_size ({self.G}); leave sampling.n at 1, "
                             f"got {sampling.n}")
        if eps_low < 0 or eps_high < 0 or eps_low >= 1:
            raise ValueError(f"GRPOModule: need 0 <= eps_low < 1 and eps_high >= 0, got {eps_low}, {eps_high}")
        if kl_coef < 0:
            raise ValueError(f"GRPOModule: kl_coef must be >= 0, got {kl_coef}")
        self.sampling = dataclasses.replace(sampling, n=self.G, seed=0 if sampling.seed is None else sampling.seed)
        # plain values in the hyperparameters (checkpoints load with weights_only=True)
        self.hparams["sampling"] = self.sampling.to_dict()
        self.reward_fn = make_reward(reward, format_weight=format_weight,
                                     format_only_when_correct=format_only_when_correct)
        # the frozen reference lives outside the module tree: not trained, not in checkpoints (it is the
        # initial weights, rebuilt identically on resume)
        self._ref: list = []
        if kl_coef > 0 or log_kl:
            self._ref = [copy.deepcopy(self.model).eval().requires_grad_(False)]
        self.rollouts = 0            # rollout batches drawn so far (keys the rollout noise)
        self.skipped_in_a_row = 0
        self.last_metrics: dict[str, float] = {}
        self._engine: Engine | None = None  # the fit's one compiled engine (compile_rollouts), made lazily
        self._decode_copy: list = []  # rollout_dtype's copy of the weights (outside the module tree, like _ref)

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.tokenizer is None:
            raise ValueError("GRPOModule needs a tokenizer: load the policy from a checkpoint that has one, or "
                             "give the data module a tokenizer")
        if self._trainer is None:
            return
        if self.trainer.world_size > 1:
            raise ValueError("GRPOModule runs on one device for now (trainer.devices=1)")
        dm = getattr(self.trainer, "datamodule", None)
        if stage == "fit" and dm is not None and hasattr(dm, "prompts"):
            self.check_prompts(dm.problems, dm.prompts())

    def check_prompts(self, problems, prompts: Sequence[str]) -> None:
        """Every prompt plus `max_new_tokens` must fit the policy's context: fail before training."""
        ctx, room = self.model.config.context_length, self.sampling.max_new_tokens
        for p, text in zip(problems, prompts):
            n = len(self.tokenizer.encode(text))
            if n + room > ctx:
                raise ValueError(f"problem {p.id!r}: its prompt has {n} tokens, which with max_new_tokens={room} "
                                 f"exceeds the policy's context_length {ctx}; lower max_new_tokens or drop long "
                                 "problems")

    def on_fit_start(self) -> None:
        for ref in self._ref:
            ref.to(self.device)

    def on_fit_end(self) -> None:
        self._engine = None  # frees the KV-cache pool; the compiled step stays cached on the model
        self._decode_copy = []

    @torch.no_grad()
    def decode_model(self):
        """The model rollouts decode with: the trained one, or (`rollout_dtype`) its copy in that dtype,
        brought up to the current weights. The copy is made once and refreshed in place, so a compiled
        engine's CUDA graph (which reads the parameters at fixed addresses) stays valid."""
        name = self.hparams.rollout_dtype
        if name is None:
            return self.model
        here = next(self.model.parameters()).device
        if not self._decode_copy or next(self._decode_copy[0].parameters()).device != here:
            c = copy.deepcopy(self.model)
            # compiled decode steps cached on the model close over *it*: the copy must compile its own
            c.__dict__.pop("_spine_decode_steps", None)
            for p in c.parameters():
                p.grad = None
            self._decode_copy = [c.to(_ROLLOUT_DTYPES[name]).eval().requires_grad_(False)]
        c = self._decode_copy[0]
        for dst, src in zip(c.parameters(), self.model.parameters()):
            dst.copy_(src)
        return c

    def rollout_engine(self) -> Engine:
        """The engine a rollout decodes with: a fresh eager one, or (`compile_rollouts`) the fit's one
        compiled engine. Keeping it keeps its KV-cache buffers at fixed addresses, so the CUDA graph
        captured for the decode step replays every step instead of being re-recorded. The graph reads
        the parameters in place and the optimizer updates them in place, so it always sees the current
        weights. Without `rollout_dtype` it runs under whatever autocast the step runs under (torch.compile
        guards on the autocast state), as the eager path does; with it, on `decode_model()`'s copy with
        autocast off."""
        model = self.decode_model()
        if not self.hparams.compile_rollouts:
            return Engine(model, self.tokenizer, batch_size=self.hparams.rollout_batch_size)
        e = self._engine
        if e is None or e.model is not model or e.tokenizer is not self.tokenizer:
            self._engine = Engine(model, self.tokenizer, batch_size=self.hparams.rollout_batch_size,
                                  compile=True)
        return self._engine

    # ------------------------------------------------------------------ rollouts
    @torch.no_grad()
    def rollout(self, problems, prompts: Sequence[str], round_: int = 0) -> dict[str, Any]:
        """G completions per prompt with the current weights, scored: a dict of per-row lists
        (row i*G + j is sample j of prompt i) and the rollout's seconds/tokens."""
        engine = self.rollout_engine()
        # a fresh noise stream per rollout batch: (sampling.seed, rollout index), then per (problem, sample)
        params = dataclasses.replace(self.sampling, seed=sample_seed(self.sampling.seed, "rollout", self.rollouts))
        keys = [p.id if round_ == 0 else f"{p.id}#resample{round_}" for p in problems]
        t0 = time.perf_counter()
        # a rollout_dtype copy already holds its dtype: autocast would only add casts
        no_autocast = self.hparams.rollout_dtype is not None
        with torch.autocast(self.device.type, enabled=False) if no_autocast else contextlib.nullcontext():
            outs = engine.generate(list(prompts), params, keys=keys)
        seconds = time.perf_counter() - t0
        prompt_ids = [engine.encode(t) for t in prompts]
        rows: dict[str, list] = {"problem": [], "prompt_ids": [], "token_ids": [], "logprobs": [], "text": [],
                                 "truncated": []}
        generated = 0
        for p, ids, comps in zip(problems, prompt_ids, outs):
            for c in comps:
                toks, lps = list(c.token_ids), list(c.logprobs)
                generated += c.generated_tokens
                if isinstance(c.stop_reason, str):  # train on what was chosen up to the stop string
                    k = trim_at_stop_string(self.tokenizer.decode, toks, c.stop_reason)
                    toks, lps = toks[:k], lps[:k]
                rows["problem"].append(p)
                rows["prompt_ids"].append(ids)
                rows["token_ids"].append(toks)
                rows["logprobs"].append(lps)
                rows["text"].append(c.text)
                rows["truncated"].append(c.finish_reason == "length")
        rows["correct"] = [verify(p, t) for p, t in zip(rows["problem"], rows["text"])]
        rewards = torch.tensor(score(self.reward_fn, rows["problem"], rows["text"]), dtype=torch.float32)
        rows["true_rewards"] = rewards
        if self.hparams.random_reward:
            g = torch.Generator().manual_seed(sample_seed(self.sampling.seed, f"shuffle{round_}", self.rollouts))
            rewards = shuffle_rewards(rewards, g)
        rows["rewards"] = rewards
        rows["seconds"], rows["generated"] = seconds, generated
        return rows

    def _select(self, problems, prompts, first: dict[str, Any]) -> tuple[dict[str, list], dict[str, float]]:
        """The rows to train on: groups with a reward spread (after up to `resample_budget` redraws)."""
        G, h = self.G, self.hparams
        n_groups = len(problems)
        groups: list[dict[str, Any]] = []  # per prompt: the rollout rows dict and the group's slice in it
        zero = zero_variance_groups(first["rewards"], G)
        for i in range(n_groups):
            groups.append({"src": first, "i": i, "zero": bool(zero[i])})
        resampled = 0
        extra_seconds, extra_generated = 0.0, 0
        for r in range(1, h.resample_budget + 1):
            todo = [g for g in groups if g["zero"]]
            if not todo or not h.skip_zero_variance:
                break
            again = self.rollout([problems[g["i"]] for g in todo], [prompts[g["i"]] for g in todo], round_=r)
            extra_seconds += again["seconds"]
            extra_generated += again["generated"]
            z = zero_variance_groups(again["rewards"], G)
            for k, g in enumerate(todo):
                if not bool(z[k]):
                    g.update(src=again, i=k, zero=False)
                    resampled += 1
        keep: dict[str, list] = {"prompt_ids": [], "token_ids": [], "logprobs": [], "advantages": [],
                                 "truncated": []}
        for g in groups:
            if g["zero"] and h.skip_zero_variance:
                continue
            src, i = g["src"], g["i"]
            rewards = src["rewards"][i * G:(i + 1) * G]
            adv = group_advantages(rewards, G, scale=h.scale_advantages)
            for j in range(G):
                row = i * G + j
                if h.mask_truncated and src["truncated"][row]:
                    continue  # no loss: its tokens never reach a forward
                for key in ("prompt_ids", "token_ids", "logprobs", "truncated"):
                    keep[key].append(src[key][row])
                keep["advantages"].append(float(adv[j]))
        info = {"rl/zero_variance_frac": float(zero.float().mean()), "rl/resampled_groups": float(resampled),
                "rl/groups_trained": float(sum(1 for g in groups if not (g["zero"] and h.skip_zero_variance))),
                "extra_seconds": extra_seconds, "extra_generated": extra_generated}
        return keep, info

    # ------------------------------------------------------------------ the step
    def training_step(self, batch, batch_idx):
        problems, prompts = batch["problems"], batch["prompts"]
        first = self.rollout(problems, prompts)
        keep, info = self._select(problems, prompts, first)
        self.rollouts += 1
        lens = [len(t) for t in first["token_ids"]]
        rewards = first["true_rewards"]
        m: dict[str, float] = {
            "rl/reward_mean": float(rewards.mean()), "rl/reward_std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
            "rl/accuracy": sum(first["correct"]) / max(1, len(first["correct"])),
            "rl/completion_len_mean": sum(lens) / max(1, len(lens)), "rl/completion_len_max": float(max(lens, default=0)),
            "rl/truncated_frac": sum(first["truncated"]) / max(1, len(first["truncated"])),
            "rl/rollout_tokens_per_s": (first["generated"] + info.pop("extra_generated"))
            / max(1e-9, first["seconds"] + info.pop("extra_seconds")),
            "rl/rollouts": float(self.rollouts),
        }
        m.update(info)
        if keep["token_ids"]:
            self.skipped_in_a_row = 0
            m.update(self.update(keep))
        else:
            self.skipped_in_a_row += 1
            if self.skipped_in_a_row >= self.hparams.max_skipped_steps:
                rank_zero_warn(f"GRPOModule: {self.skipped_in_a_row} rollout batches in a row had no group with a "
                               "reward spread (every sample right, or every sample wrong): stopping")
                self.trainer.should_stop = True
        self.last_metrics = m
        self.log_dict(m, on_step=True, on_epoch=False, batch_size=len(problems))
        self.log("rl/accuracy_pbar", m["rl/accuracy"], prog_bar=True, on_step=True, on_epoch=False,
                 batch_size=len(problems))

    def update(self, keep: dict[str, list]) -> dict[str, float]:
        """`inner_updates` optimizer steps on the kept rows; returns the update's metrics."""
        h = self.hparams
        dev = self.device
        ids, mask, old = pack_rollouts(keep["prompt_ids"], keep["token_ids"], keep["logprobs"],
                                       pad_id=int(self.tokenizer.pad_id), device=dev)
        adv = torch.tensor(keep["advantages"], dtype=torch.float32, device=dev)
        B = ids.shape[0]
        real_tokens = sum(len(p) + len(t) for p, t in zip(keep["prompt_ids"], keep["token_ids"]))
        mb = h.micro_batch_size or B
        chunks = [slice(s, min(s + mb, B)) for s in range(0, B, mb)]
        ref = [None] * len(chunks)
        if self._ref:
            with torch.no_grad():
                ref = [sequence_logprobs(self._ref[0], ids[c], mask[c]) for c in chunks]
        if h.old_logprobs == "recompute":
            with torch.no_grad():
                old = torch.cat([sequence_logprobs(self.model, ids[c], mask[c]) for c in chunks])
        opt = self.optimizers()
        sched = self.lr_schedulers()
        tokmask = mask[:, 1:]
        n_tok = float(tokmask.sum())
        stats = {"low": 0.0, "high": 0.0, "kl": 0.0, "ent": 0.0, "loss": 0.0}
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for u in range(h.inner_updates):
            for c, r in zip(chunks, ref):
                logp, ent = logprobs_and_entropy(self.model, ids[c], mask[c], with_entropy=u == 0)
                tl = policy_token_loss(logp, old[c], adv[c], tokmask[c], eps_low=h.eps_low, eps_high=h.eps_high,
                                       ref_logp=r, kl_coef=h.kl_coef)
                s, n = aggregate(tl.loss, tokmask[c], h.loss_aggregation,
                                 max_new_tokens=self.sampling.max_new_tokens)
                self.manual_backward(self.backward_loss(s, n))
                stats["low"] += float(tl.clipped_low.sum())
                stats["high"] += float(tl.clipped_high.sum())
                if u == 0:
                    stats["ent"] += float(ent.sum())
                    if tl.kl is not None:
                        stats["kl"] += float(tl.kl.sum())
            opt.step()
            opt.zero_grad(set_to_none=True)
            if sched is not None:
                sched.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        denom = max(1.0, n_tok)
        out = {"rl/entropy": stats["ent"] / denom,
               "rl/clip_low_frac": stats["low"] / (denom * h.inner_updates),
               "rl/clip_high_frac": stats["high"] / (denom * h.inner_updates),
               "rl/update_tokens_per_s": real_tokens * h.inner_updates / max(seconds, 1e-9),
               "rl/trained_completions": float(B)}
        if self._ref:
            out["rl/kl"] = stats["kl"] / denom
        return out

    def on_before_optimizer_step(self, optimizer) -> None:
        super().on_before_optimizer_step(optimizer)  # token normalisation first: clip the true gradient
        if self.hparams.max_grad_norm:
            params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(params, self.hparams.max_grad_norm)
            self.log("rl/grad_norm", norm, on_step=True, on_epoch=False)

    # ------------------------------------------------------------------ exact resume
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["spine_grpo"] = {"rollouts": self.rollouts, "skipped_in_a_row": self.skipped_in_a_row}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("spine_grpo", {})
        self.rollouts = int(state.get("rollouts", 0))
        self.skipped_in_a_row = int(state.get("skipped_in_a_row", 0))

    def validation_step(self, batch, batch_idx):  # held-out accuracy comes from the ReasoningEval callback
        return None
