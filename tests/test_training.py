"""Training math: losses, schedules, param groups, and exact token normalisation under accumulation."""
import math

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from modules.base import SpineModule
from spine.config import ModelConfig
from spine.model import GPT
from spine.training import (IGNORE_INDEX, TokenNormalizer, chunked_cross_entropy_sum, cross_entropy_sum,
                            lm_loss_sum, param_groups, warmup_cosine)


def test_cross_entropy_sum_matches_mean_times_count():
    logits = torch.randn(2, 5, 11)
    targets = torch.randint(0, 11, (2, 5))
    targets[0, :3] = IGNORE_INDEX
    s, n = cross_entropy_sum(logits, targets)
    mean = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1), ignore_index=IGNORE_INDEX)
    assert n.item() == 7
    assert torch.allclose(s, mean * 7, atol=1e-5)


def test_chunked_cross_entropy_equals_full_value_and_grad():
    model = GPT(ModelConfig.from_preset("gpt2-tiny", vocab_size=97))
    ids = torch.randint(0, 97, (2, 16))
    targets = torch.randint(0, 97, (2, 16))
    targets[1, 5:] = IGNORE_INDEX
    full, n1 = lm_loss_sum(model, ids, targets)
    full.backward()
    g_full = model.blocks[0].attn.qkv.weight.grad.clone()
    model.zero_grad()
    chunk, n2 = lm_loss_sum(model, ids, targets, chunked=True, chunk_size=7)
    chunk.backward()
    assert n1 == n2
    assert torch.allclose(full, chunk, atol=1e-4)
    assert torch.allclose(g_full, model.blocks[0].attn.qkv.weight.grad, atol=1e-6)


def test_warmup_cosine_hand_values():
    fn = warmup_cosine(warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    assert [fn(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert fn(4) == pytest.approx(1.0)
    assert fn(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # halfway
    assert fn(14) == pytest.approx(0.1)
    assert fn(100) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="total_steps"):
        warmup_cosine(1, 0)


def test_param_groups_skip_decay_on_norms_biases_embeddings():
    model = GPT(ModelConfig.from_preset("gpt2-tiny"))
    model.blocks[1].requires_grad_(False)
    groups = param_groups(model, 0.1)
    decay = {id(p) for p in groups[0]["params"]}
    no_decay = {id(p) for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert id(model.tok_emb.weight) in no_decay and id(model.pos_emb.weight) in no_decay
    assert id(model.blocks[0].norm1.weight) in no_decay and id(model.blocks[0].attn.qkv.bias) in no_decay
    assert id(model.blocks[0].attn.qkv.weight) in decay
    assert id(model.blocks[1].attn.qkv.weight) not in decay | no_decay  # frozen
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in groups for p in g["params"]) == n_trainable


def test_token_normalizer_factor():
    norm = TokenNormalizer()
    params = [torch.nn.Parameter(torch.ones(3))]
    for n in (10, 30):
        loss = norm.micro_batch(params[0].sum() * n, n) / 2  # the trainer divides by accumulate=2
        loss.backward()
    factor = norm.rescale_(params, accumulate=2)
    # d/dp of (sum_i n_i * sum(p)) / (n_1 + n_2) = 1 for each element
    assert torch.allclose(params[0].grad, torch.ones(3))
    assert float(factor) == pytest.approx(10 * 2 / 40)
    assert norm.tokens == 0.0


class _GradProbe(SpineModule):
    """Records gradients after token normalisation; SGD so that gradient scale matters."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.grads = []

    def training_step(self, batch, batch_idx):
        loss_sum, n = lm_loss_sum(self.model, batch["input_ids"], batch["targets"])
        return self.backward_loss(loss_sum, n, reference=batch["targets"].numel())

    def on_before_optimizer_step(self, optimizer):
        super().on_before_optimizer_step(optimizer)
        self.grads.append({k: p.grad.clone() for k, p in self.model.named_parameters() if p.grad is not None})

    def configure_optimizers(self):
        return torch.optim.SGD(self.model.parameters(), lr=0.0)


def _micro_batches():
    g = torch.Generator().manual_seed(0)
    out = []
    for n_valid in (3, 12, 7, 16):  # very different target-token counts per micro-batch
        ids = torch.randint(0, 50, (2, 8), generator=g)
        targets = torch.randint(0, 50, (2, 8), generator=g)
        flat = targets.view(-1)
        flat[n_valid:] = IGNORE_INDEX
        out.append({"input_ids": ids, "targets": targets})
    return out


def test_gradient_accumulation_is_token_normalised_through_the_trainer():
    batches = _micro_batches()
    kw = dict(model="gpt2-tiny", vocab_size=50, context_length=8, scheduler="constant")
    L.seed_everything(0)
    probe = _GradProbe(**kw)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, accumulate_grad_batches=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(probe, DataLoader(batches, batch_size=None))
    assert len(probe.grads) == 2

    # reference: each window as one batch with token-mean loss
    L.seed_everything(0)
    ref = GPT(ModelConfig.from_preset("gpt2-tiny", vocab_size=50, context_length=8))
    ref.load_state_dict(probe.model.state_dict())  # SGD lr=0: weights unchanged by fit
    for w, (a, b) in enumerate([(0, 1), (2, 3)]):
        ref.zero_grad()
        ids = torch.cat([batches[a]["input_ids"], batches[b]["input_ids"]])
        tg = torch.cat([batches[a]["targets"], batches[b]["targets"]])
        loss_sum, n = lm_loss_sum(ref, ids, tg)
        (loss_sum / n).backward()
        for k, p in ref.named_parameters():
            assert torch.allclose(probe.grads[w][k], p.grad, atol=1e-6, rtol=1e-4), k
