"""Teacher-forced exact match: would greedy decoding write a problem's worked solution?

Greedy decoding writes a given solution exactly when every token of it is the model's arg-max given the
prompt and the solution's tokens before it. That can be read off *one* forward pass over prompt +
solution, instead of one forward per generated token: the same quantity as lm-evaluation-harness's
`is_greedy`, here per problem. For a task whose worked solutions are the only natural way to the answer
(`chain`: one path of facts), the fraction of matches is greedy accuracy minus the rare greedy answers
that are right by another path, at a fraction of the cost, which is what lets a fit check its level
every few steps (`callbacks.ReasoningEval` pipeline `forced`).
"""
from __future__ import annotations

from typing import Sequence

import torch

from .problems import Problem
from .prompts import render_prompt

__all__ = ["forced_matches", "forced_solution"]


def forced_solution(problem: Problem) -> str:
    """The worked solution of `problem` (`metadata["solution"]`), or one line saying it has none."""
    solution = (problem.metadata or {}).get("solution")
    if not isinstance(solution, str) or not solution:
        raise ValueError(f"problem {problem.id!r} has no worked solution (metadata['solution']): a teacher-forced "
                         f"check needs one (the task families write them; loaded files usually do not)")
    return solution


@torch.no_grad()
def forced_matches(model: torch.nn.Module, tokenizer, problems: Sequence[Problem], *, template: str = "synthetic",
                   batch_size: int = 64) -> list[bool]:
    """For each problem, whether every token of its worked solution is the model's arg-max after the prompt
    (rendered with `template`, as the evaluation pipelines render it) and the solution's earlier tokens.

    The prompt and the solution are encoded separately and joined, as decoding conditions on the prompt's
    ids. Rows are right-padded, so causal attention keeps the padding out of every scored position.
    """
    if batch_size < 1:
        raise ValueError(f"forced_matches: batch_size must be >= 1, got {batch_size}")
    blocks = getattr(model, "blocks", None)
    if blocks is not None and len(blocks) and getattr(blocks[0].attn, "kv_cache", None) is not None:
        raise ValueError("forced_matches: the model has a KV cache set up; it needs a plain forward")
    ctx = model.config.context_length
    rows: list[tuple[list[int], int]] = []
    for p in problems:
        prompt_ids = tokenizer.encode(render_prompt(p, template))
        sol_ids = tokenizer.encode(forced_solution(p))
        ids = prompt_ids + sol_ids
        if len(ids) > ctx:
            raise ValueError(f"problem {p.id!r}: prompt + solution are {len(ids)} tokens, over the model's "
                             f"context of {ctx}")
        rows.append((ids, len(prompt_ids)))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[bool] = []
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            T = max(len(ids) for ids, _ in chunk)
            idx = torch.full((len(chunk), T), tokenizer.pad_id, dtype=torch.long)
            for i, (ids, _) in enumerate(chunk):
                idx[i, :len(ids)] = torch.tensor(ids)
            idx = idx.to(device)
            pred = model(idx).argmax(dim=-1)  # pred[:, t] is the arg-max for token t + 1
            for i, (ids, n_prompt) in enumerate(chunk):
                # solution tokens sit at n_prompt .. len(ids) - 1, each predicted one position earlier
                out.append(bool((pred[i, n_prompt - 1:len(ids) - 1] == idx[i, n_prompt:len(ids)]).all()))
    finally:
        model.train(was_training)
    return out
