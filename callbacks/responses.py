"""Generate responses for the held-out instruction records and write them (Raschka ch.7 §7.7)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as L
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from spine.engine import Engine
from spine.params import SamplingParams
from spine.traces import TraceWriter


def normalise_answer(text: str) -> str:
    """Whitespace-collapsed, case-folded text for the exact-match verdict in the traces."""
    return " ".join(text.split()).casefold()


class ResponseWriter(L.Callback):
    """After fit (`when="fit_end"`) or test (`"test_end"`), answer each record of a split (with `sampling`: greedy by default) and write:

    (a) `json_path`: the book's format, a JSON list of the records each with "model_response";
    (b) `traces_path`: `spine.traces` JSONL, one record per prompt (prompt, completion, tokens, seconds;
        gold = the reference output, verdict = normalised exact match, rule "exact_match").
    Paths default to `<log_dir>/responses.json` and `<log_dir>/responses.traces.jsonl`; both files are
    rewritten by each run. Only rank 0 generates and writes. The data module must expose the split's
    records (`test_data`), `prompt(record)` and `tokenizer` (as `InstructionDataModule` does).
    """

    def __init__(self, json_path: str | None = None, traces_path: str | None = None, split: str = "test",
                 when: str = "fit_end", sampling: SamplingParams = SamplingParams(max_new_tokens=256),
                 batch_size: int = 8, limit: int | None = None):
        if when not in ("fit_end", "test_end"):
            raise ValueError(f"ResponseWriter: when must be 'fit_end' or 'test_end', got {when!r}")
        if split not in ("train", "val", "test"):
            raise ValueError(f"ResponseWriter: split must be train/val/test, got {split!r}")
        self.json_path, self.traces_path = json_path, traces_path
        self.split, self.when = split, when
        self.sampling, self.batch_size, self.limit = sampling, batch_size, limit
        self.responses: list[dict[str, Any]] = []

    def _paths(self, trainer: L.Trainer) -> tuple[Path, Path]:
        root = Path(trainer.log_dir or trainer.default_root_dir)
        return (Path(self.json_path) if self.json_path else root / "responses.json",
                Path(self.traces_path) if self.traces_path else root / "responses.traces.jsonl")

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # every rank must join trainer.log_dir (a broadcast under DDP) before rank 0 goes on alone
        json_path, traces_path = self._paths(trainer)
        if not trainer.is_global_zero:
            return
        dm = trainer.datamodule
        records = list(getattr(dm, f"{self.split}_data", None) or [])[: self.limit]
        tok = getattr(pl_module, "tokenizer", None) or getattr(dm, "tokenizer", None)
        if not records or tok is None or not hasattr(dm, "prompt"):
            rank_zero_info("ResponseWriter: no records, tokenizer or prompt template; nothing written")
            return
        model = pl_module.model
        ctx = model.config.context_length
        too_long = sum(len(tok.encode(dm.prompt(r))) + self.sampling.max_new_tokens > ctx for r in records)
        if too_long:
            rank_zero_warn(f"ResponseWriter: {too_long} of {len(records)} prompts + max_new_tokens="
                           f"{self.sampling.max_new_tokens} exceed the model's context ({ctx}); their prompts keep only "
                           "their last tokens. Give the model a longer context or lower max_new_tokens.")
        run_config = {"stage": "instruction-responses", "split": self.split, "sampling": self.sampling.to_dict(),
                      "template": getattr(dm, "template", None), "init_from": pl_module.hparams.get("init_from"),
                      "global_step": trainer.global_step, "n_records": len(records)}
        if traces_path.exists():
            os.remove(traces_path)  # this run's responses only: never resume into another model's answers
        prompts = [dm.prompt(r) for r in records]
        out = Engine(model, tok, batch_size=self.batch_size).generate(prompts, self.sampling, on_overflow="truncate")
        self.responses = []
        with TraceWriter(traces_path, run_config=run_config) as tw:
            for i, (rec, prompt, row) in enumerate(zip(records, prompts, out)):
                c = row[0]
                answer = c.text.strip()  # the book strips the response text
                self.responses.append({**rec, "model_response": answer})
                tw.write(tw.make_record(
                    problem_id=f"{self.split}-{i}", sample_index=0, prompt=prompt, completion=c.text,
                    extracted=answer, extraction_method="strip", gold=rec["output"],
                    correct=normalise_answer(answer) == normalise_answer(rec["output"]), rule="exact_match",
                    tokens=c.generated_tokens, seconds=c.seconds,
                    metadata={"finish_reason": c.finish_reason, "index": i}))
        json_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = json_path.with_name(json_path.name + ".tmp")
        tmp.write_text(json.dumps(self.responses, indent=4, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(json_path)
        exact = sum(normalise_answer(r["model_response"]) == normalise_answer(r["output"]) for r in self.responses)
        rank_zero_info(f"ResponseWriter: {len(self.responses)} responses → {json_path} and {traces_path} "
                       f"(exact match {exact}/{len(self.responses)})")

    def on_fit_end(self, trainer, pl_module):
        if self.when == "fit_end":
            self._run(trainer, pl_module)

    def on_test_end(self, trainer, pl_module):
        if self.when == "test_end":
            self._run(trainer, pl_module)
