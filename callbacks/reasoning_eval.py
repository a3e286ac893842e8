"""Reasoning accuracy during `fit`: run the evaluation harness on held-out problems and log it."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.utilities import rank_zero_warn

from spine.distributed import unsharded_copy
from spine.reasoning.evaluate import chunk_size_for, evaluate, evaluate_sharded
from spine.params import SamplingParams
from spine.reasoning.forced import forced_matches_ids, forced_rows
from spine.reasoning.pipelines import ProblemEngine, make_pipeline
from spine.reasoning.problems import load_problems, validate_problems
from spine.reasoning.prompts import render_prompt
from spine.traces import format_summary

from .checkpoint import require_gatherable_weights
from .progress import emit


def _all_gather_object(obj):
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


class ReasoningEval(L.Callback):
    """Evaluate `pipelines` on `problems` every `every_n_steps` steps and/or at the end of fit (and,
    with `at_fit_start`, before the first training step: the baseline of a fine-tuning curve).

    Each pipeline is a dict: {"name": "greedy"} or {"name": "sc", "n": 8, "temperature": 0.8}: its
    SamplingParams fields override `sampling`, the settings all pipelines share (max_new_tokens, stop).
    {"name": "forced"} decodes nothing: it logs the share of problems whose worked solution greedy decoding
    would write (`spine.reasoning.forced`: one forward per batch), a cheap level check; it writes no trace.
    With `averaged`, the evaluations read the weights of the trainer's `WeightAveraging` callback (e.g. Lightning's
    `EMAWeightAveraging`): the weights that callback saves in checkpoints, so a ModelCheckpoint on this metric
    keeps the averaged weights it measured.
    Logs `reasoning/<label>_acc`; traces go to `<trace_dir>/<label>-step<step>.jsonl`
    (default trace_dir: `<log_dir>/traces`). Under DDP each rank evaluates a disjoint share
    (rank r takes problems r, r+W, …); the records are gathered once to rank 0, which alone writes
    the trace and computes the summary that every rank then logs (`evaluate_sharded`). Under FSDP2
    every rank first gathers the full weights into a plain copy. Results are kept in `self.results`.
    A trace's run config records the global step (the weights are those of that step), so a fit
    resumed from a checkpoint re-evaluating the same step resumes the same file. Metrics go to
    the loggers directly: `self.log` is not allowed in `on_fit_end`. With `name`, the metric is
    `reasoning/<name>/<label>_acc` and the traces `<name>-<label>-step<step>.jsonl`, so two of these
    callbacks in one fit (a stopping check and a held-out evaluation) keep apart. `start_step`: the
    periodic evaluations run at the multiples of `every_n_steps` from that step on (a check that cannot
    pass before it costs nothing); the runs at fit start and end ignore it. An `EarlyStopping` on such a
    metric needs `strict: false`, since validations before the first evaluation do not have it.
    With `target` (an accuracy in [0, 1]) each pipeline also logs `..._gap` = |accuracy - target|: a
    `ModelCheckpoint(monitor=..._gap, mode=min, save_top_k=1)` then keeps the weights closest to that level
    (a model at a chosen accuracy, whatever step each seed reaches it at; `spine consolidate` turns the kept
    `.ckpt` into a spine checkpoint). That ModelCheckpoint only warns while the gap is not logged yet
    (before `start_step`) as long as no validation has run; after a validation Lightning refuses the
    missing metric, so validate at the end of such a fit (or only after `start_step`). `stop_above`: the
    fit stops after a periodic check where a pipeline's accuracy reaches it (Lightning's EarlyStopping
    with a `stopping_threshold` reads metrics at validation, and validating before `start_step` is what
    that ModelCheckpoint cannot have): a run that only looks for a level need not train on past it. Under
    `min_steps` / `min_epochs` Lightning keeps training until they are met and stops right after.
    """

    def __init__(self, problems: str = "synthetic:level=1,n=100,seed=123,split=eval",
                 pipelines: list[dict[str, Any]] | None = None, template: str = "synthetic",
                 sampling: SamplingParams = SamplingParams(max_new_tokens=64, stop=("\nQuestion:",)),
                 batch_size: int = 64, every_n_steps: int = 0, at_fit_end: bool = True, trace_dir: str | None = None,
                 limit: int | None = None, at_fit_start: bool = False, name: str | None = None,
                 start_step: int = 0, target: float | None = None, stop_above: float | None = None,
                 averaged: bool = False):
        if name is not None and (not name or not all(c.isalnum() or c in "-_" for c in name)):
            raise ValueError(f"ReasoningEval: name must be letters, digits, '-' or '_', got {name!r}")
        self.name = name
        if start_step < 0:
            raise ValueError(f"ReasoningEval: start_step must be >= 0, got {start_step}")
        if start_step and not every_n_steps:
            raise ValueError(f"ReasoningEval: start_step {start_step} needs every_n_steps > 0 (it delays the "
                             f"periodic evaluations only)")
        self.start_step = start_step
        for field, value in (("target", target), ("stop_above", stop_above)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0.0 <= value <= 1.0):
                raise ValueError(f"ReasoningEval: {field} must be an accuracy between 0 and 1, got {value!r}")
        self.target = target
        self.averaged = averaged
        if stop_above is not None and every_n_steps < 1:
            raise ValueError(f"ReasoningEval: stop_above {stop_above} needs every_n_steps > 0 (it acts on the "
                             f"periodic checks only), got every_n_steps {every_n_steps}")
        self.stop_above = stop_above
        self.source = problems
        self.pipeline_specs = [dict(s) for s in (pipelines or [{"name": "greedy"}])]
        # a pipeline's own sampling fields override `sampling`: the prompts must fit the largest budget
        self._max_new_tokens = sampling.max_new_tokens
        for spec in self.pipeline_specs:  # a typo in a pipeline should fail before training, not after
            if "name" not in spec:
                raise ValueError(f"ReasoningEval: each pipeline needs a 'name' (greedy or sc), got {spec}")
            if spec["name"] == "forced":
                if len(spec) > 1:
                    raise ValueError(f"ReasoningEval: pipeline 'forced' takes no options (it generates nothing), "
                                     f"got {sorted(k for k in spec if k != 'name')}")
                continue
            args = {k: v for k, v in spec.items() if k != "name"}
            try:
                pipe = make_pipeline(spec["name"], sampling=sampling, **args)
            except (TypeError, ValueError) as e:  # unknown pipeline, options it does not take
                raise ValueError(f"ReasoningEval: bad options for pipeline {spec['name']!r}: {e}") from None
            self._max_new_tokens = max(self._max_new_tokens, pipe.sampling.max_new_tokens)
        render_prompt("x", template)  # unknown template: fail now, listing the known ones
        if limit is not None and limit < 1:
            raise ValueError(f"ReasoningEval: limit must be >= 1 (or None), got {limit}")
        self.sampling = sampling
        self.engine_args = dict(template=template, batch_size=batch_size)
        self.every_n_steps, self.at_fit_end, self.at_fit_start = every_n_steps, at_fit_end, at_fit_start
        self.trace_dir, self.limit = trace_dir, limit
        self.results: list[dict[str, Any]] = []
        self._problems = None
        self._forced_rows: list[tuple[list[int], list[int]]] = []
        self._last_step = -1

    @staticmethod
    def _label(spec: dict[str, Any]) -> str:
        name = spec["name"]
        return f"{name}{spec['n']}" if "n" in spec else name

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step == self._last_step:
            return
        if getattr(pl_module, "tokenizer", None) is None:
            rank_zero_warn("ReasoningEval: the module has no tokenizer (neither its checkpoint nor the data "
                           "module gave one); skipping reasoning evaluation")
            return
        self._last_step = trainer.global_step
        self._load(pl_module)
        world, rank = trainer.world_size, trainer.global_rank
        # each rank decodes its own share for as long as it needs: a sharded (FSDP2) model would have to
        # run its forwards in lock-step, so it is gathered into a plain copy on every rank first
        model = unsharded_copy(self._weights(trainer, pl_module).model)
        engine = ProblemEngine(model, pl_module.tokenizer, **self.engine_args)
        out_dir = Path(self.trace_dir or Path(trainer.log_dir or trainer.default_root_dir) / "traces")
        for spec in self.pipeline_specs:
            spec = dict(spec)
            label = self._label(spec)
            if spec["name"] == "forced":
                self._forced(trainer, model, pl_module.tokenizer)
                continue
            pipeline = make_pipeline(spec.pop("name"), sampling=self.sampling, **spec)
            stem = f"{self.name}-{label}" if self.name else label
            path = out_dir / f"{stem}-step{trainer.global_step}.jsonl"
            extra = {"global_step": trainer.global_step}
            if world > 1:  # samples depend on problem ids only: any world size resumes the same file
                s = evaluate_sharded(self._problems, engine, pipeline, rank=rank, world_size=world,
                                     gather=_all_gather_object, broadcast=trainer.strategy.broadcast,
                                     trace_path=path, source=self.source, extra=extra)
            else:
                s = evaluate(self._problems, engine, pipeline, trace_path=path, source=self.source, extra=extra,
                             chunk_size=chunk_size_for(self.engine_args["batch_size"], pipeline.sampling.n)).summary
            n_correct, n, tokens, seconds = s.n_correct, s.n, s.total_tokens, s.total_seconds
            acc = n_correct / max(n, 1)
            self._log(trainer, label, acc)
            self.results.append({"step": trainer.global_step, "pipeline": label, "name": self.name,
                                 "accuracy": acc, "n": int(n),
                                 "tokens_per_problem": tokens / max(n, 1), "seconds_per_problem": seconds / max(n, 1),
                                 "trace": str(path)})
            if trainer.is_global_zero:
                table = f"\n{format_summary(s)}"
                emit(trainer, f"[reasoning eval @ step {trainer.global_step}] {self.name + ' ' if self.name else ''}{label}: accuracy {acc:.3f} "
                               f"on {int(n)} problems, {tokens / max(n, 1):.1f} tokens/problem{table}\n"
                               f"traces: {path}")

    def _log(self, trainer: L.Trainer, label: str, acc: float) -> None:
        key = f"reasoning/{self.name}/{label}_acc" if self.name else f"reasoning/{label}_acc"
        metrics = {key: acc}
        if self.target is not None:
            metrics[key.removesuffix("_acc") + "_gap"] = abs(acc - self.target)
        # self.log is not allowed in on_fit_end: write to the loggers directly
        for k, v in metrics.items():
            trainer.callback_metrics[k] = torch.tensor(v)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    def _forced(self, trainer: L.Trainer, model: torch.nn.Module, tokenizer) -> None:
        # every rank scores every problem (one forward per batch, no decoding): the ranks hold the same
        # weights, so they agree without a gather; there is no completion, so there is no trace either
        t0 = time.perf_counter()
        matches = forced_matches_ids(model, self._forced_rows, pad_id=tokenizer.pad_id,
                                     batch_size=self.engine_args["batch_size"])
        seconds = time.perf_counter() - t0
        acc = sum(matches) / max(len(matches), 1)
        self._log(trainer, "forced", acc)
        self.results.append({"step": trainer.global_step, "pipeline": "forced", "name": self.name, "accuracy": acc,
                             "n": len(matches), "tokens_per_problem": 0.0,
                             "seconds_per_problem": seconds / max(len(matches), 1), "trace": None})
        if trainer.is_global_zero:
            emit(trainer, f"[reasoning eval @ step {trainer.global_step}] {self.name + ' ' if self.name else ''}forced: "
                          f"greedy would write the worked solution on {acc:.3f} of {len(matches)} problems "
                          f"({seconds:.1f} s)")

    def _load(self, pl_module: L.LightningModule) -> None:
        # the pipelines cut a prompt that does not fit the context from the left, so an eval whose prompts
        # are too long for max_new_tokens would score the model on cut questions: refused in one line instead.
        # (Refinement's critique/revision prompts and self-verification's scoring prompts are longer than
        # the question and are still cut to the context by design; the question itself is checked here.)
        if self._problems is not None:
            return
        probs = load_problems(self.source)
        probs = probs[: self.limit] if self.limit else probs
        engine = ProblemEngine(pl_module.model, pl_module.tokenizer, **self.engine_args)
        try:
            if any(spec["name"] != "forced" for spec in self.pipeline_specs):  # only decoding needs the room
                validate_problems(probs, where=self.source, engine=engine,
                                  context_length=pl_module.model.config.context_length,
                                  max_new_tokens=self._max_new_tokens, setting="sampling.max_new_tokens")
            if any(spec["name"] == "forced" for spec in self.pipeline_specs):
                # tokenized once: a check every few steps should cost the forward, not the tokenizer
                rows = forced_rows(pl_module.tokenizer, probs, template=self.engine_args["template"],
                                   context_length=pl_module.model.config.context_length)
                self._forced_rows = rows
        except ValueError as e:
            raise ValueError(f"ReasoningEval: {e}") from None
        self._problems = probs

    def _weights(self, trainer: L.Trainer, pl_module: L.LightningModule) -> L.LightningModule:
        if not self.averaged:
            return pl_module
        # Lightning's WeightAveraging keeps its average as an AveragedModel around a copy of the module; that copy
        # is what the callback saves as a checkpoint's state_dict and copies into the module at the end of fit
        avg = next(cb for cb in trainer.callbacks if isinstance(cb, WeightAveraging))
        return pl_module if avg._average_model is None else avg._average_model.module

    def setup(self, trainer, pl_module, stage):
        require_gatherable_weights(trainer, "ReasoningEval")
        if self.averaged and not any(isinstance(cb, WeightAveraging) for cb in trainer.callbacks):
            raise ValueError("ReasoningEval: averaged=true evaluates the weights of a WeightAveraging callback "
                             "(e.g. lightning.pytorch.callbacks.EMAWeightAveraging), and the trainer has none")

    def on_train_start(self, trainer, pl_module):
        if getattr(pl_module, "tokenizer", None) is not None:
            self._load(pl_module)  # bad problems fail before the first step, not at the first evaluation
        # the starting point of a fine-tuning curve (a resumed fit re-reads that step's trace)
        if self.at_fit_start:
            self._run(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.every_n_steps > 0 and step > 0 and step >= self.start_step and step % self.every_n_steps == 0:
            before = len(self.results)
            self._run(trainer, pl_module)
            if self.stop_above is not None:
                # only this check's results (not a previous fit's at the same step); the accuracies are the whole
                # (gathered) set's, so every rank stops at the same step
                reached = [r for r in self.results[before:] if r["accuracy"] >= self.stop_above]
                if reached:
                    trainer.should_stop = True
                    emit(trainer, f"[reasoning eval @ step {step}] {reached[0]['pipeline']} accuracy "
                                  f"{reached[0]['accuracy']:.3f} >= stop_above {self.stop_above}: stopping the fit")

    def on_fit_end(self, trainer, pl_module):
        if self.at_fit_end:
            self._run(trainer, pl_module)
