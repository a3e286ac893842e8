"""`spine validate` for reasoning: run a pipeline over problems, grade, write traces, log accuracy."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info

from spine.params import SamplingParams
from spine.reasoning.evaluate import EvalWriter, checkpoint_identity, run_config, source_identity, summarize_traces
from spine.reasoning.pipelines import ProblemEngine, make_pipeline
from spine.reasoning.problems import Problem
from spine.reasoning.prompts import render_prompt
from spine.traces import format_summary, read_traces

from .base import SpineModule


class ReasoningEvalModule(SpineModule):
    """Evaluation-only stage: `init_from` a spine checkpoint (or `hf:PATH`), then validate/test.

    Batches are lists of `Problem`s from `datamodules.ReasoningDataModule`. Logs `val_acc` /
    `test_acc` (each problem counted once, across all devices). Traces go to `trace_path` (rank r
    of a multi-process run writes `<stem>.rank{r}<suffix>`); a rerun with the same config resumes
    by skipping finished problems, whose recorded verdicts still count. `tokenizer` names one
    (e.g. "gpt2" or a directory) for checkpoints saved without theirs.
    """

    def __init__(self, *args: Any, pipeline: str = "greedy", pipeline_args: dict[str, Any] | None = None,
                 template: str = "math", chat: bool = False, enable_thinking: bool = False,
                 sampling: SamplingParams = SamplingParams(max_new_tokens=256), gen_batch_size: int = 32,
                 trace_path: str | None = None, tokenizer: str | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if not self.hparams.init_from:
            # an untrained preset would "evaluate" to ~0% without complaint: require real weights
            raise ValueError("ReasoningEvalModule needs init_from: a spine checkpoint directory or hf:PATH")
        self.pipeline = make_pipeline(pipeline, sampling=sampling, **(pipeline_args or {}))
        self.engine_args = dict(template=template, chat=chat, enable_thinking=enable_thinking,
                                batch_size=gen_batch_size)
        render_prompt("x", template)  # an unknown template fails at construction, listing the known ones
        if tokenizer is not None:
            from spine.tokenizer import check_vocab_fits, get_tokenizer

            self.tokenizer = get_tokenizer(tokenizer)
            check_vocab_fits(self.tokenizer, self.model.config.vocab_size, where=f"tokenizer={tokenizer}")
        self.trace_path = trace_path
        self._writer: EvalWriter | None = None
        self._recorded: dict[str, bool] = {}  # problem id -> verdict, for problems resumed from the trace file
        self._seen: set[str] = set()
        self._counts = [0, 0]  # correct, total: plain ints, summed across ranks once at the end

    def _trace_file(self) -> Path | None:
        if not self.trace_path:
            return None
        p = Path(self.trace_path)
        if self.trainer.world_size > 1:
            p = p.with_name(f"{p.stem}.rank{self.global_rank}{p.suffix}")
        return p

    def _start(self) -> None:
        init = self.hparams.init_from
        if self.tokenizer is None:
            raise ValueError(f"checkpoint {init} has no tokenizer; pass model.init_args.tokenizer (e.g. gpt2 or a "
                             "directory) or save the checkpoint with its tokenizer")
        self.engine = ProblemEngine(self.model, self.tokenizer, **self.engine_args)
        self.ckpt_sha = checkpoint_identity(init) if init else None
        self._counts = [0, 0]
        self._recorded = {}
        self._seen = set()
        path = self._trace_file()
        if path is not None:
            source, extra = source_identity(getattr(self.trainer.datamodule, "source", ""))
            # after the precision plugin's conversion (e.g. bf16-true): bf16 and fp32 answers differ
            extra["dtype"] = str(next(self.model.parameters()).dtype).removeprefix("torch.")
            cfg = run_config(self.engine, self.pipeline, source=source, checkpoint_sha256=self.ckpt_sha, extra=extra)
            self._writer = EvalWriter(path, cfg, checkpoint_sha256=self.ckpt_sha)
            if self._writer.resumed:
                self._recorded = self._writer.recorded_verdicts()

    def _step(self, problems: list[Problem]) -> None:
        done = self._writer.done_ids() if self._writer is not None else set()
        todo = []
        self._seen.update(p.id for p in problems)
        for p in problems:
            if p.id in done and p.id in self._recorded:  # resumed: its verdict counts, nothing to run
                self._counts[0] += self._recorded[p.id]
                self._counts[1] += 1
            else:
                todo.append(p)
        if not todo:
            return
        results = self.pipeline.run(self.engine, todo)
        if self._writer is not None:
            self._writer.write_results(results, self.pipeline)
        for r in results:
            self._counts[0] += bool(r.correct)
            self._counts[1] += 1

    def _end(self, prefix: str) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        counts = torch.tensor(self._counts, dtype=torch.float64, device=self.device)
        world = self.trainer.world_size
        if world > 1:
            # every rank reaches epoch end, so one collective here is safe (steps may differ per rank)
            counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        n_correct, total = counts.tolist()
        acc = n_correct / max(total, 1.0)
        path = self._trace_file()
        if path is not None:
            if world > 1:
                self.trainer.strategy.barrier()  # all rank files complete before rank 0 reads them
            if self.trainer.is_global_zero:
                paths = [path] if world == 1 else [path.with_name(f"{Path(self.trace_path).stem}.rank{r}{path.suffix}")
                                                   for r in range(world)]
                records = [rec for p in paths if p.exists() for rec in read_traces(p)[1]]
                # the table covers this run's problems (a file may hold more from a longer run)
                summary = summarize_traces(records, self._seen if world == 1 else None)
                if summary.n:
                    rank_zero_info(f"\n{format_summary(summary)}\ntraces: "
                                   f"{', '.join(str(p) for p in paths)}")
        # the values are already global (equal on every rank): sync_dist's mean leaves them unchanged and
        # silences Lightning's warning for epoch-level logging under a distributed strategy
        self.log(f"{prefix}_acc", torch.tensor(acc, device=self.device), sync_dist=True)
        self.log(f"{prefix}_problems", torch.tensor(total, device=self.device), sync_dist=True)

    def on_validation_start(self) -> None:
        self._start()

    def validation_step(self, batch: list[Problem], batch_idx: int) -> None:
        self._step(batch)

    def on_validation_epoch_end(self) -> None:
        self._end("val")

    def on_test_start(self) -> None:
        self._start()

    def test_step(self, batch: list[Problem], batch_idx: int) -> None:
        self._step(batch)

    def on_test_epoch_end(self) -> None:
        self._end("test")

    def training_step(self, batch, batch_idx):
        raise RuntimeError("ReasoningEvalModule only evaluates: use `spine validate` or `spine test`")
