"""Teacher-forced exact match (`spine.reasoning.forced`) against greedy decoding through the engine."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from spine.config import ModelConfig
from spine.engine import Engine, SamplingParams
from spine.model import GPT
from spine.reasoning.forced import forced_matches, forced_matches_ids, forced_solution
from spine.reasoning.prompts import render_prompt
from spine.reasoning.tasks import get_task, verify
from spine.reasoning.tasks.spec import format_document
from spine.tokenizer import get_tokenizer


def _model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig.from_preset("gpt2-tiny", vocab_size=257)).eval()


def test_forced_match_is_true_exactly_when_greedy_decoding_writes_the_continuation():
    """The model's own greedy continuations (engine, KV cache) are matches; changing one id of one makes it
    a miss, first or last; batch size (right padding over rows of different lengths) changes nothing."""
    model = _model()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (3, 17, 40, 8, 25, 1)]
    lengths = [5, 9, 13, 7, 11, 3]
    engine = Engine(model, get_tokenizer("byte"), batch_size=8)
    own = [engine.generate([p], SamplingParams(max_new_tokens=k))[0][0].token_ids for p, k in zip(prompts, lengths)]
    assert forced_matches_ids(model, list(zip(prompts, own)), pad_id=256) == [True] * 6

    def changed(ids: list[int], at: int) -> list[int]:
        return ids[:at] + [(ids[at] + 1) % 256] + ids[at + 1:]

    mixed = [(p, changed(c, i % len(c)) if i % 2 else c) for i, (p, c) in enumerate(zip(prompts, own))]
    for bs in (1, 4, 64):
        assert forced_matches_ids(model, mixed, pad_id=256, batch_size=bs) == [True, False] * 3
    assert forced_matches_ids(model, [(prompts[0], changed(own[0], 0)), (prompts[0], changed(own[0], 4))],
                              pad_id=256) == [False, False]
    model.train()
    forced_matches_ids(model, mixed[:1], pad_id=256)
    assert model.training  # its mode is restored
    for bad in ([([], [1])], [([1], [])]):
        with pytest.raises(ValueError, match="empty prompt or continuation"):
            forced_matches_ids(model, bad, pad_id=256)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        forced_matches_ids(model, mixed, pad_id=256, batch_size=0)


def test_forced_match_agrees_with_greedy_on_a_model_that_learned_some_worked_solutions():
    """A tiny model trained on 6 chain documents: on those 6 problems and 6 it never saw, the teacher-forced
    check is true exactly where greedy decoding of the prompt writes the worked solution, and the prompt plus
    the checked continuation is the training document, character for character."""
    tok = get_tokenizer("byte")
    task = get_task("chain")
    seen, unseen = task.generate(level=2, n=6, seed=0, split="train"), task.generate(level=2, n=6, seed=0, split="eval")
    for p in seen + unseen:
        assert render_prompt(p, "synthetic") + forced_solution(p) == format_document(p)
    torch.manual_seed(0)
    model = GPT(ModelConfig.from_preset("gpt2-tiny", vocab_size=257))
    docs = [tok.encode(format_document(p)) + [tok.eos_id] for p in seen]
    T = max(map(len, docs))
    x = torch.tensor([d + [tok.pad_id] * (T - len(d)) for d in docs])
    target = torch.tensor([d[1:] + [-100] * (T - len(d) + 1) for d in docs])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(100):
        loss = F.cross_entropy(model(x).flatten(0, 1)[:, :257], target.flatten(), ignore_index=-100)
        opt.zero_grad(), loss.backward(), opt.step()
    model.eval()
    forced = forced_matches(model, tok, seen + unseen, batch_size=5)
    engine = Engine(model, tok, batch_size=16)
    outs = engine.generate([render_prompt(p, "synthetic") for p in seen + unseen],
                           SamplingParams(max_new_tokens=64, stop=("\nQuestion:",)))
    writes = [o[0].text.startswith(forced_solution(p)) for p, o in zip(seen + unseen, outs)]
    assert forced == writes
    assert sum(forced[:6]) >= 4 and sum(forced[6:]) <= 2  # it learned the seen ones, not the unseen
    assert all(verify(p, o[0].text).correct for p, o, f in zip(seen + unseen, outs, forced) if f)


def test_forced_solution_and_matches_refuse_what_they_cannot_check():
    model, tok = _model(), get_tokenizer("byte")
    chain = get_task("chain").generate(level=3, n=2, seed=0, split="eval")
    bare = dataclasses.replace(chain[0], metadata={k: v for k, v in chain[0].metadata.items() if k != "solution"})
    with pytest.raises(ValueError, match="has no worked solution"):
        forced_matches(model, tok, [bare])
    with pytest.raises(ValueError, match="template 'math' is not the start of the training document"):
        forced_solution(chain[0], "math")
    long = dataclasses.replace(chain[0], metadata={**chain[0].metadata, "solution": "1+1=2. " * 30})
    with pytest.raises(ValueError, match="over the model's context of 128"):
        forced_matches(model, tok, [long])
