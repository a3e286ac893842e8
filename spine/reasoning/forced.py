"""Teacher-forced exact match: would greedy decoding write a problem's worked solution?

Greedy decoding writes a given solution exactly when every token of it is the model's arg-max given the
prompt and the solution's tokens before it. That can be read off *one* forward pass over prompt +
solution, instead of one forward per generated token: the same quantity as lm-evaluation-harness's
`is_greedy`, here per problem (`callbacks.ReasoningEval` pipeline `forced`). It is a lower bound on greedy
accuracy, not a reading of it: greedy can reach the right answer by another path (a wrong middle step), which
on the chain substrate's level 6 is 5-15% of the problems, a different share per model (docs/tasks.md).
"""
from __future__ import annotations

from typing import Sequence

import torch

from .problems import Problem
from .prompts import render_prompt
from .tasks.spec import format_document

__all__ = ["forced_matches", "forced_matches_ids", "forced_rows", "forced_solution"]


def forced_solution(problem: Problem, template: str = "synthetic") -> str:
    """What greedy decoding must write after the prompt (`template`) to reproduce the problem's training
    document (`spine.reasoning.tasks.spec.format_document`: the worked solution after "Answer: "), or one
    line saying why there is none."""
    solution = (problem.metadata or {}).get("solution")
    if not isinstance(solution, str) or not solution:
        raise ValueError(f"problem {problem.id!r} has no worked solution (metadata['solution']): a teacher-forced "
                         f"check needs one (the task families write them; loaded files usually do not)")
    document, prompt = format_document(problem), render_prompt(problem, template)
    if not document.startswith(prompt):
        raise ValueError(f"template {template!r} is not the start of the training document of problem "
                         f"{problem.id!r}, so there is no continuation to check (use template 'synthetic')")
    return document[len(prompt):]


@torch.no_grad()
def forced_matches_ids(model: torch.nn.Module, rows: Sequence[tuple[Sequence[int], Sequence[int]]], *, pad_id: int,
                       batch_size: int = 64) -> list[bool]:
    """For each (prompt ids, continuation ids): whether every continuation id is the model's arg-max after the
    prompt and the continuation's earlier ids, i.e. whether greedy decoding from the prompt writes it.
    Rows are right-padded, so causal attention keeps the padding out of every scored position."""
    if batch_size < 1:
        raise ValueError(f"forced_matches: batch_size must be >= 1, got {batch_size}")
    blocks = getattr(model, "blocks", None)
    if blocks is not None and len(blocks) and getattr(blocks[0].attn, "kv_cache", None) is not None:
        raise ValueError("forced_matches: the model has a KV cache set up; it needs a plain forward")
    for i, (prompt, cont) in enumerate(rows):
        if not prompt or not cont:
            raise ValueError(f"forced_matches: row {i} has an empty prompt or continuation")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[bool] = []
    try:
        for start in range(0, len(rows), batch_size):
            chunk = [(list(p), list(c)) for p, c in rows[start:start + batch_size]]
            T = max(len(p) + len(c) for p, c in chunk)
            idx = torch.full((len(chunk), T), pad_id, dtype=torch.long)
            for i, (p, c) in enumerate(chunk):
                idx[i, :len(p) + len(c)] = torch.tensor(p + c)
            idx = idx.to(device)
            pred = model(idx).argmax(dim=-1)  # pred[:, t] is the arg-max for token t + 1
            for i, (p, c) in enumerate(chunk):
                n, end = len(p), len(p) + len(c)  # continuation ids sit at n .. end - 1, predicted one earlier
                out.append(bool((pred[i, n - 1:end - 1] == idx[i, n:end]).all()))
    finally:
        model.train(was_training)
    return out


def forced_rows(tokenizer, problems: Sequence[Problem], *, template: str = "synthetic",
                context_length: int | None = None) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, continuation ids) per problem, for `forced_matches_ids`. The prompt (rendered with `template`,
    as the evaluation pipelines render it) and its continuation (`forced_solution`) are encoded separately and
    joined, as decoding conditions on the prompt's ids. A row longer than `context_length` is refused in one line."""
    rows = []
    for p in problems:
        ids = (tokenizer.encode(render_prompt(p, template)), tokenizer.encode(forced_solution(p, template)))
        n = len(ids[0]) + len(ids[1])
        if context_length is not None and n > context_length:
            raise ValueError(f"problem {p.id!r}: prompt + worked solution are {n} tokens, over the model's context "
                             f"of {context_length}")
        rows.append(ids)
    return rows


def forced_matches(model: torch.nn.Module, tokenizer, problems: Sequence[Problem], *, template: str = "synthetic",
                   batch_size: int = 64) -> list[bool]:
    """For each problem, whether greedy decoding after the prompt writes its worked solution (the training
    document's continuation of the prompt, the space after "Answer:" included; `forced_rows`)."""
    rows = forced_rows(tokenizer, problems, template=template, context_length=model.config.context_length)
    return forced_matches_ids(model, rows, pad_id=tokenizer.pad_id, batch_size=batch_size)
