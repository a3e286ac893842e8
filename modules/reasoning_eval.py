"""`spine validate` for reasoning: run a pipeline over problems, grade, write traces, log accuracy."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import SumMetric

from spine.checkpoint import checkpoint_sha256
from spine.reasoning.evaluate import result_records, run_config
from spine.reasoning.pipelines import Engine, make_pipeline
from spine.traces import TraceWriter, format_summary, read_traces, summarize

from .base import SpineModule


class ReasoningEvalModule(SpineModule):
    """Evaluation-only stage: `init_from` a spine checkpoint (or `hf:PATH`), then validate/test.

    Traces go to `trace_path` (rank r of a multi-process run writes `<stem>.rank{r}.jsonl`); a rerun
    with the same config resumes by skipping finished problems.
    """

    def __init__(self, *args: Any, pipeline: str = "greedy", pipeline_args: dict[str, Any] | None = None,
                 template: str = "math", chat: bool = False, enable_thinking: bool = False,
                 max_new_tokens: int = 256, gen_batch_size: int = 32, stop_strings: list[str] | None = None,
                 trace_path: str | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.pipeline = make_pipeline(pipeline, **(pipeline_args or {}))
        self.engine_args = dict(template=template, chat=chat, enable_thinking=enable_thinking,
                                max_new_tokens=max_new_tokens, batch_size=gen_batch_size,
                                stop_strings=stop_strings or [])
        self.trace_path = trace_path
        self.n_correct = SumMetric()
        self.n_total = SumMetric()
        self._writer: TraceWriter | None = None

    def _trace_file(self) -> Path | None:
        if not self.trace_path:
            return None
        p = Path(self.trace_path)
        if self.trainer.world_size > 1:
            p = p.with_name(f"{p.stem}.rank{self.global_rank}{p.suffix}")
        return p

    def _start(self) -> None:
        self.engine = Engine(self.model, self.tokenizer, **self.engine_args)
        init = self.hparams.init_from
        self.ckpt_sha = checkpoint_sha256(init) if init and not init.startswith("hf:") else None
        path = self._trace_file()
        if path is not None:
            dm = self.trainer.datamodule
            cfg = run_config(self.engine, self.pipeline, source=str(getattr(dm, "source", "")),
                             checkpoint_sha256=self.ckpt_sha)
            self._writer = TraceWriter(path, run_config=cfg)

    def _step(self, problems) -> None:
        if self._writer is not None:
            done = self._writer.done_ids()
            problems = [p for p in problems if p.id not in done]
        if not problems:
            return
        results = self.pipeline.run(self.engine, problems)
        for r in results:
            if self._writer is not None:
                for rec in result_records(self._writer, r, self.pipeline, self.ckpt_sha):
                    self._writer.write(rec)
            self.n_correct.update(torch.tensor(float(r.correct)))
            self.n_total.update(torch.tensor(1.0))

    def _end(self, prefix: str) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        total = self.n_total.compute()
        acc = self.n_correct.compute() / total.clamp_min(1)
        self.n_correct.reset()
        self.n_total.reset()
        path = self._trace_file()
        if path is not None and path.exists():
            _, records = read_traces(path)
            summary = summarize(records)
            if self.trainer.world_size == 1:
                # includes problems resumed from the trace file, not only those run now
                acc = torch.tensor(summary.accuracy)
            rank_zero_info(f"\n{format_summary(summary)}\ntraces: {path}")
        self.log(f"{prefix}_acc", acc)

    def on_validation_start(self) -> None:
        self._start()

    def validation_step(self, batch, batch_idx):
        self._step(batch)

    def on_validation_epoch_end(self) -> None:
        self._end("val")

    def on_test_start(self) -> None:
        self._start()

    def test_step(self, batch, batch_idx):
        self._step(batch)

    def on_test_epoch_end(self) -> None:
        self._end("test")

    def training_step(self, batch, batch_idx):
        raise RuntimeError("ReasoningEvalModule only evaluates: use `spine validate` or `spine test`")
