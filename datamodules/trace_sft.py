"""SFT data from teacher traces (or a task's own worked solutions), for the instruction stage.

The training stage is `modules.instruction.InstructionModule` unchanged: batches are the same
{"input_ids", "targets"} with -100 on the prompt. Selection, rendering and length buckets are in
`spine.trace_data`; this module reads the sources, prints what was kept and dropped, splits by
problem (a problem's samples never straddle train and val) and serves length-bucketed batches.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
import lightning.pytorch as L
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from spine.reasoning.problems import load_problems
from spine.reasoning.prompts import render_prompt
from spine.tokenizer import get_tokenizer
from spine.trace_data import (Example, LengthBucketSampler, SelectionReport, apply_overflow, collate_masked,
                              length_buckets, render_example, select_traces, split_by_key)
from spine.traces import read_traces

from .splits import SplitLoaders


class TraceSFTDataModule(SplitLoaders, L.LightningDataModule):
    """Prompt-masked SFT batches from `spine eval` trace files or from a problem source's worked solutions.

    traces: trace JSONL file(s) of any teacher. Selection: `correct_only`, `dedupe`, `max_per_problem`.
    problems: instead of traces, a problem source with worked solutions in metadata["solution"] (e.g.
      "synthetic:level=1,n=2000,seed=3,split=train"), rendered with `template`: the plain-SFT baseline.
    chat/thinking: render as Qwen3 ChatML (with a `<think>` block when `thinking`); see spine.trace_data.
    max_length: the longest model input; longer examples follow `too_long` (drop | truncate | error),
      and are counted in the printed report. Everything shorter is kept: batches come from one length
      bucket each with at most `batch_size` rows and `max_batch_tokens` padded tokens.
    val_frac: share of *problems* held out for validation (stable hash of the problem id).
    """

    def __init__(
        self,
        traces: list[str] | str | None = None,
        problems: str | None = None,
        template: str = "synthetic",
        tokenizer: str = "gpt2",
        vocab_dir: str | None = None,
        chat: bool = False,
        thinking: bool = True,
        correct_only: bool = True,
        dedupe: bool = True,
        max_per_problem: int | None = None,
        max_length: int | None = None,
        too_long: str = "drop",
        val_frac: float = 0.05,
        batch_size: int = 8,
        max_batch_tokens: int | None = None,
        bucket: bool = True,
        seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        if (traces is None) == (problems is None):
            raise ValueError("TraceSFTDataModule: give exactly one of traces (trace files) or problems "
                             "(a source with worked solutions)")
        if max_length is not None and max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        self.tokenizer = get_tokenizer(tokenizer, vocab_dir)
        self.vocab_size: int = self.tokenizer.vocab_size
        self.pad_id: int = int(self.tokenizer.pad_id if getattr(self.tokenizer, "pad_id", None) is not None
                               else self.tokenizer.eos_id)
        render = partial(render_example, self.tokenizer, chat=chat, thinking=thinking)
        if traces is not None:
            paths = [traces] if isinstance(traces, str) else list(traces)
            if not paths:
                raise ValueError("TraceSFTDataModule: traces is an empty list")
            records = [r for p in paths for r in read_traces(Path(p).expanduser())[1]]
            kept, self.report = select_traces(records, correct_only=correct_only, dedupe=dedupe,
                                              max_per_problem=max_per_problem)
            examples = [render(r.prompt, r.completion, answer=r.gold, key=r.problem_id) for r in kept]
        else:
            probs = load_problems(problems)
            missing = [p.id for p in probs if not isinstance(p.metadata.get("solution"), str)]
            if missing:
                raise ValueError(f"problems {problems!r}: {len(missing)} problems have no worked solution "
                                 f"(metadata['solution']), e.g. {missing[0]!r}")
            self.report = SelectionReport(total=len(probs), kept=len(probs), problems_total=len(probs),
                                          problems_kept=len(probs))
            examples = [render(render_prompt(p, template), " " + p.metadata["solution"], answer=p.answer, key=p.id)
                        for p in probs]
        examples = apply_overflow(examples, max_length, too_long, self.report)
        if not examples:
            raise ValueError(f"TraceSFTDataModule: nothing left to train on\n{self.report.format()}")
        self.report.buckets = length_buckets([len(e.ids) for e in examples])
        splits = split_by_key([e.key for e in examples], val_frac, seed)
        self._examples: dict[str, list[Example]] = {
            "train": [e for e, s in zip(examples, splits) if s == "train"],
            "val": [e for e, s in zip(examples, splits) if s == "val"],
        }
        self._examples["test"] = self._examples["val"]
        if not self._examples["train"]:
            raise ValueError(f"TraceSFTDataModule: no training examples after a val_frac={val_frac} split")
        longest = max(len(e.ids) - 1 for e in examples)
        self.context_length: int = max_length if max_length is not None else longest
        rank_zero_info(self.report.format() + f"\n  split: {len(self._examples['train'])} train / "
                       f"{len(self._examples['val'])} val examples")

    def examples(self, split: str) -> list[Example]:
        return self._examples[split]

    def _loader(self, split: str, train: bool) -> DataLoader:
        h = self.hparams
        data = self._examples[split]
        fn = partial(collate_masked, pad_id=self.pad_id)
        if h.bucket:
            sampler = LengthBucketSampler([len(e.ids) for e in data], h.batch_size, h.max_batch_tokens,
                                          shuffle=train, seed=h.seed)
            return DataLoader(data, batch_sampler=sampler, num_workers=h.num_workers, collate_fn=fn)
        return DataLoader(data, batch_size=h.batch_size, shuffle=train, num_workers=h.num_workers, collate_fn=fn)
