"""Prompts for RL: problems (a task spec, a synthetic spec, a file or a hub dataset) rendered with a
prompt template, served `prompts_per_step` at a time with an exactly resumable order."""
from __future__ import annotations

from typing import Any

import lightning.pytorch as L
from torch.utils.data import DataLoader

from spine.reasoning.problems import Problem, load_problems
from spine.reasoning.prompts import render_prompt
from spine.sampler import ResumableSampler

from .pretrain import _ResumableLoader


def _collate(items: list[tuple[Problem, str]]) -> dict[str, list]:
    return {"problems": [p for p, _ in items], "prompts": [t for _, t in items]}


class _Prompts:
    def __init__(self, problems: list[Problem], template: str):
        self.problems, self.template = problems, template

    def __len__(self) -> int:
        return len(self.problems)

    def __getitem__(self, i: int) -> tuple[Problem, str]:
        p = self.problems[i]
        return p, render_prompt(p, self.template)


class PromptDataModule(L.LightningDataModule):
    """Batches {"problems": [Problem], "prompts": [str]} of `prompts_per_step` training problems.

    source: anything `load_problems` reads: "task:FAMILY:level=..,n=..,seed=..,split=train",
      "synthetic:...,split=train", a MATH/GSM8K/JSON(L) file or a hub dataset name (specs should say
      split=train: evaluation uses the held-out split). template: a `spine.reasoning.prompts` template name. limit: first N problems.
    tokenizer: optional tokenizer spec ("byte", "gpt2", a directory) for a policy built from a preset
      rather than loaded from a checkpoint (its vocab_size/pad_id are linked to the model).
    The order is a (seed, epoch) permutation; `state_dict` stores how many batches were trained, so a
    resumed fit continues with exactly the next prompts (the same scheme as `PretrainDataModule`).
    """

    context_length = None  # the policy's own context length applies

    def __init__(self, source: str = "synthetic:level=3,n=4000,seed=1,split=train", template: str = "synthetic",
                 prompts_per_step: int = 8, limit: int | None = None, shuffle: bool = True, seed: int = 0,
                 format: str = "auto", field_map: dict[str, Any] | None = None, tokenizer: str | None = None):
        super().__init__()
        if isinstance(prompts_per_step, bool) or not isinstance(prompts_per_step, int) or prompts_per_step < 1:
            raise ValueError(f"PromptDataModule: prompts_per_step must be an integer >= 1, got {prompts_per_step!r}")
        if limit is not None and limit < 1:
            raise ValueError(f"PromptDataModule: limit must be >= 1 (or None for all problems), got {limit}")
        render_prompt("x", template)  # an unknown template fails now, listing the known ones
        self.source, self.template, self.format = source, template, format
        self.field_map = dict(field_map or {})
        self.prompts_per_step, self.limit, self.shuffle, self.seed = prompts_per_step, limit, shuffle, seed
        self.tokenizer_spec = tokenizer
        self._tokenizer = None
        self.problems: list[Problem] = []
        self._sampler: ResumableSampler | None = None
        self._pending_state: dict | None = None

    # linked into the model when it is built from a preset (None: the checkpoint decides)
    @property
    def tokenizer(self):
        if self._tokenizer is None and self.tokenizer_spec is not None:
            from spine.tokenizer import get_tokenizer

            self._tokenizer = get_tokenizer(self.tokenizer_spec)
        return self._tokenizer

    @property
    def vocab_size(self) -> int | None:
        return None if self.tokenizer is None else self.tokenizer.vocab_size

    @property
    def pad_id(self) -> int | None:
        return None if self.tokenizer is None else self.tokenizer.pad_id

    def setup(self, stage: str | None = None) -> None:
        if not self.problems:
            problems = load_problems(self.source, format=self.format, **self.field_map)
            self.problems = problems[: self.limit] if self.limit else problems
            ids = [p.id for p in self.problems]
            if len(set(ids)) != len(ids):  # rollout noise is keyed by problem id
                dup = next(x for x in ids if ids.count(x) > 1)
                raise ValueError(f"PromptDataModule: problem ids in {self.source!r} are not unique (e.g. {dup!r})")
            if len(self.problems) < self.prompts_per_step:
                raise ValueError(f"PromptDataModule: {len(self.problems)} problems in {self.source!r} but "
                                 f"prompts_per_step={self.prompts_per_step}")

    def prompts(self) -> list[str]:
        """Every problem's rendered prompt (the policy checks them against its context length)."""
        self.setup()
        return [render_prompt(p, self.template) for p in self.problems]

    def train_dataloader(self) -> DataLoader:
        self.setup()
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            raise ValueError("PromptDataModule serves one device (GRPO runs on one device)")
        sampler = ResumableSampler(len(self.problems), shuffle=self.shuffle, seed=self.seed)
        if self._sampler is not None:
            sampler.set_epoch(self._sampler.epoch)
        if self._pending_state is not None:
            sampler.load_state_dict(self._pending_state)
            self._pending_state = None
        self._sampler = sampler
        return _ResumableLoader(_Prompts(self.problems, self.template), batch_size=self.prompts_per_step,
                                sampler=sampler, drop_last=True, collate_fn=_collate)

    def transfer_batch_to_device(self, batch: Any, device: Any, dataloader_idx: int) -> Any:
        return batch  # text; the policy tokenizes it

    # ------------------------------------------------------------------ exact resume
    def state_dict(self) -> dict[str, Any]:
        """{"sampler": {epoch, consumed}}; consumed = batches whose training_step ran x prompts_per_step."""
        if self._sampler is None:
            return {"sampler": dict(self._pending_state)} if self._pending_state else {}
        s = self._sampler
        state = s.state_dict()
        trainer = self.trainer
        if trainer is not None and trainer.state.fn == "fit":
            processed = trainer.fit_loop.epoch_loop.batch_progress.current.processed
            per_epoch = trainer.num_training_batches
            state["consumed"] = min(processed * self.prompts_per_step, s.consumed)
            if processed >= per_epoch:
                # Lightning builds the next epoch's iterator before set_epoch: name that epoch now
                state["epoch"], state["consumed"] = s.epoch + 1, 0
        return {"sampler": state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = state_dict.get("sampler")
        if not state:
            return
        if self._sampler is not None:
            self._sampler.load_state_dict(state)
        else:
            self._pending_state = dict(state)
