"""Teacher-forced exact match (`spine.reasoning.forced`) against greedy decoding through the engine."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from spine.config import ModelConfig
from spine.engine import Engine, SamplingParams
from spine.model import GPT
from spine.reasoning.forced import forced_matches
from spine.reasoning.prompts import render_prompt
from spine.reasoning.tasks import get_task
from spine.tokenizer import get_tokenizer

PRINTABLE = [ord(c) for c in "abcdefghijklmnopqrstuvwxyz0123456789+-=. "]


def _model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    cfg = ModelConfig.from_preset("gpt2-tiny", vocab_size=257)
    model = GPT(cfg).eval()
    with torch.no_grad():  # every other id gets logit 0: greedy picks a printable byte, so text round-trips
        keep = torch.zeros(model.lm_head.weight.shape[0], dtype=torch.bool)
        keep[PRINTABLE] = True
        model.lm_head.weight[~keep] = 0.0
        model.lm_head.weight[keep] *= 50.0
    return model


def _with_solution(problem, solution: str):
    return dataclasses.replace(problem, metadata={**problem.metadata, "solution": solution})


def test_forced_match_is_true_exactly_when_greedy_decoding_writes_the_solution():
    """The model's own greedy continuations (engine, KV cache) are matches; changing one character of one
    makes it a miss; batch size (right padding over rows of different lengths) changes nothing."""
    model, tok = _model(), get_tokenizer("byte")
    problems = get_task("chain").generate(level=2, n=3, seed=1, split="eval") \
        + get_task("chain").generate(level=5, n=3, seed=1, split="eval")  # prompts of different lengths
    lengths = [5, 9, 13, 7, 11, 3]
    engine = Engine(model, tok, batch_size=8)
    own = []
    for p, k in zip(problems, lengths):
        c = engine.generate([render_prompt(p, "synthetic")], SamplingParams(max_new_tokens=k))[0][0]
        assert len(c.token_ids) == k and set(c.token_ids) <= set(PRINTABLE)
        own.append(c.text)
    assert forced_matches(model, tok, [_with_solution(p, s) for p, s in zip(problems, own)]) == [True] * 6

    def changed(text: str, at: int) -> str:
        other = "x" if text[at] != "x" else "y"
        return text[:at] + other + text[at + 1:]

    mixed = [_with_solution(p, changed(s, i % len(s)) if i % 2 else s) for i, (p, s) in enumerate(zip(problems, own))]
    expect = [True, False, True, False, True, False]
    for bs in (1, 4, 64):
        assert forced_matches(model, tok, mixed, batch_size=bs) == expect
    # a change in the last character is caught as well as one in the first
    assert forced_matches(model, tok, [_with_solution(problems[0], changed(own[0], len(own[0]) - 1)),
                                       _with_solution(problems[0], changed(own[0], 0))]) == [False, False]
    assert model.training is False


def test_forced_match_restores_training_mode_and_refuses_what_it_cannot_score():
    model, tok = _model(), get_tokenizer("byte")
    chain = get_task("chain").generate(level=3, n=2, seed=0, split="eval")
    model.train()
    assert forced_matches(model, tok, chain) == [False, False]  # a random model does not write chain's solutions
    assert model.training
    bare = dataclasses.replace(chain[0], metadata={k: v for k, v in chain[0].metadata.items() if k != "solution"})
    with pytest.raises(ValueError, match="has no worked solution"):
        forced_matches(model, tok, [bare])
    with pytest.raises(ValueError, match="over the model's context of 128"):
        forced_matches(model, tok, [_with_solution(chain[0], "1+1=2. " * 30)])
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        forced_matches(model, tok, chain, batch_size=0)
