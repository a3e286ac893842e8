"""GRPO mathematics (spine.rl) and rewards (spine.reasoning.rewards) against hand computations."""
import math

import pytest
import torch

from spine.config import ModelConfig
from spine.engine import Engine, SamplingParams, sequence_logprobs
from spine.model import GPT
from spine.reasoning.problems import Problem
from spine.reasoning.rewards import (correctness_reward, format_reward, make_reward, score, shuffle_rewards,
                                     verify)
from spine.rl import (aggregate, entropy_from_logits, group_advantages, kl_k3, logprobs_and_entropy,
                      pack_rollouts, policy_token_loss, trim_at_stop_string, zero_variance_groups)
from spine.tokenizer import get_tokenizer


# ----------------------------------------------------------------------------- advantages
def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 1.0, 2.0, 2.0])  # two groups of 4
    std1 = math.sqrt(4 * 0.25 / 3)                               # unbiased std of [1,0,0,1]
    mean2 = 2.0
    std2 = math.sqrt((1 + 1 + 0 + 0) / 3)
    want = [0.5 / (std1 + 1e-4), -0.5 / (std1 + 1e-4), -0.5 / (std1 + 1e-4), 0.5 / (std1 + 1e-4),
            1 / (std2 + 1e-4), -1 / (std2 + 1e-4), 0.0, 0.0]
    assert group_advantages(r, 4).tolist() == pytest.approx(want, rel=1e-6)
    # Dr. GRPO: the mean baseline alone
    assert group_advantages(r, 4, scale=False).tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5,
                                                                         3 - mean2, 1 - mean2, 0, 0])
    # a zero-variance group has zero advantage either way (no division blow-up)
    assert group_advantages(torch.ones(4), 4).tolist() == [0.0] * 4


def test_zero_variance_groups_and_bad_group_size():
    r = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    assert zero_variance_groups(r, 2).tolist() == [True, False, True]
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        group_advantages(r, 1)
    with pytest.raises(ValueError, match="P\\*G"):
        group_advantages(r, 4)


# ----------------------------------------------------------------------------- aggregation
def _toy():
    loss = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 5.0, 9.0, 9.0], [7.0, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)  # row 3: masked out
    return loss, mask


@pytest.mark.parametrize("mode, want_sum, want_count", [
    ("sequence_sum", (1 + 2 + 3) + (4 + 5), 2),            # book ch.6: per-sequence sums, mean over sequences
    ("sequence_mean", (1 + 2 + 3) / 3 + (4 + 5) / 2, 2),   # DeepSeekMath: per-sequence token means
    ("token", 1 + 2 + 3 + 4 + 5, 5),                        # DAPO: one mean over the batch's tokens
    ("constant", 1 + 2 + 3 + 4 + 5, 2 * 10),                # Dr. GRPO: / (sequences x max_new_tokens)
])
def test_aggregations_by_hand(mode, want_sum, want_count):
    loss, mask = _toy()
    s, n = aggregate(loss, mask, mode, max_new_tokens=10)
    assert float(s) == pytest.approx(want_sum)
    assert int(n) == want_count


def test_aggregation_is_exact_under_accumulation():
    # two micro-batches summed then divided by the summed counts = the whole batch's loss
    loss, mask = _toy()
    for mode in ("sequence_sum", "sequence_mean", "token", "constant"):
        s, n = aggregate(loss, mask, mode, max_new_tokens=10)
        s1, n1 = aggregate(loss[:1], mask[:1], mode, max_new_tokens=10)
        s2, n2 = aggregate(loss[1:], mask[1:], mode, max_new_tokens=10)
        assert float(s1 + s2) / float(n1 + n2) == pytest.approx(float(s) / float(n))
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        aggregate(loss, mask, "mean")


# ----------------------------------------------------------------------------- clipping, KL
def test_clipping_low_and_high_by_hand():
    # token 0: A=+1, ratio 1.5 > 1 + eps_high (0.3) -> clipped at 1.3, no gradient
    # token 1: A=-1, ratio 0.5 < 1 - eps_low (0.1) -> clipped at 0.9, no gradient
    # token 2: A=+1, ratio 0.5: min picks the unclipped 0.5 (pessimistic), gradient flows
    # token 3: A=-1, ratio 1.2: inside for eps_high=0.3, unclipped
    ratios = torch.tensor([[1.5, 0.5, 0.5, 1.2]])
    old = torch.zeros(1, 4)
    logp = torch.log(ratios).clone().requires_grad_(True)
    adv = torch.tensor([1.0])
    mask = torch.ones(1, 4, dtype=torch.bool)
    # one advantage per row: build 4 rows, one token each, to give tokens their own sign
    logp4 = torch.log(ratios.view(4, 1)).clone().requires_grad_(True)
    adv4 = torch.tensor([1.0, -1.0, 1.0, -1.0])
    tl = policy_token_loss(logp4, old.view(4, 1), adv4, mask.view(4, 1), eps_low=0.1, eps_high=0.3)
    assert tl.loss.view(-1).tolist() == pytest.approx([-1.3, 0.9, -0.5, 1.2])
    assert tl.clipped_high.view(-1).tolist() == [True, False, False, False]
    assert tl.clipped_low.view(-1).tolist() == [False, True, False, False]
    tl.loss.sum().backward()
    # d/dlogp of -A * exp(logp - old) = -A * ratio where unclipped, 0 where the clip is active
    assert logp4.grad.view(-1).tolist() == pytest.approx([0.0, 0.0, -0.5, 1.2])
    # ratio 1 (one update per rollout): the plain policy gradient -A
    tl1 = policy_token_loss(logp, logp.detach(), adv, mask)
    assert tl1.loss.view(-1).tolist() == pytest.approx([-1.0] * 4)


def test_masked_tokens_carry_no_loss_and_no_ratio():
    logp = torch.tensor([[0.3, -5.0]])
    tl = policy_token_loss(logp, torch.zeros(1, 2), torch.tensor([2.0]), torch.tensor([[True, False]]))
    assert tl.loss[0, 1] == 0 and tl.ratio[0, 1] == 1.0


def test_kl_k3_by_hand_and_zero_at_reference():
    logp = torch.log(torch.tensor([[0.5, 0.1]]))
    ref = torch.log(torch.tensor([[0.25, 0.1]]))
    d = math.log(0.25) - math.log(0.5)
    assert kl_k3(logp, ref).view(-1).tolist() == pytest.approx([math.exp(d) - d - 1, 0.0], abs=1e-7)
    # the loss adds kl_coef * k3, and the policy's own log-probs as reference give exactly 0
    tl = policy_token_loss(logp, logp, torch.tensor([0.0]), torch.ones(1, 2, dtype=torch.bool), ref_logp=ref,
                           kl_coef=0.5)
    assert tl.loss.view(-1).tolist() == pytest.approx([0.5 * (math.exp(d) - d - 1), 0.0], abs=1e-7)
    same = policy_token_loss(logp, logp, torch.tensor([1.0]), torch.ones(1, 2, dtype=torch.bool), ref_logp=logp,
                             kl_coef=1.0)
    assert same.kl.abs().max() == 0


def test_entropy_by_hand():
    assert entropy_from_logits(torch.zeros(3, 7)).tolist() == pytest.approx([math.log(7)] * 3)
    p = torch.tensor([0.7, 0.2, 0.1])
    assert float(entropy_from_logits(p.log())) == pytest.approx(float(-(p * p.log()).sum()), rel=1e-6)


# ----------------------------------------------------------------------------- packing, log-probs
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    tok = get_tokenizer("byte")
    cfg = ModelConfig.from_preset("gpt2-tiny", vocab_size=tok.vocab_size, context_length=64, d_model=32,
                                  n_layer=2, n_head=2)
    return GPT(cfg).eval(), tok


def test_packed_rollout_logprobs_equal_sequence_logprobs(tiny):
    """The engine's per-token log-probs, placed by `pack_rollouts`, are the policy's `sequence_logprobs`
    on the packed sequences: old and new log-probs line up token for token (ratio 1 before an update)."""
    model, tok = tiny
    prompts = ["12 + 3 =", "Question: x"]
    outs = Engine(model, tok).generate(prompts, SamplingParams(temperature=1.0, seed=3, n=2, max_new_tokens=6))
    p_ids = [tok.encode(p) for p in prompts for _ in range(2)]
    comps = [c for row in outs for c in row]
    ids, mask, old = pack_rollouts(p_ids, [c.token_ids for c in comps], [c.logprobs for c in comps],
                                   pad_id=tok.pad_id)
    with torch.no_grad():
        new = sequence_logprobs(model, ids, mask)
        both, ent = logprobs_and_entropy(model, ids, mask)
    assert torch.allclose(new, old, atol=1e-5)
    assert torch.equal(both, new)
    # every completion token has exactly one log-prob slot, and nothing else has one
    assert int(mask.sum()) == sum(len(c.token_ids) for c in comps)
    assert int((old != 0).sum()) <= int(mask.sum())
    with torch.no_grad():
        ref_ent = entropy_from_logits(model(ids[:, :-1])[..., :model.config.vocab_size]) * mask[:, 1:]
    assert torch.allclose(ent, ref_ent, atol=1e-5)


def test_trim_at_stop_string(tiny):
    _, tok = tiny
    ids = tok.encode("7.\nQuestion: Tom")
    k = trim_at_stop_string(tok.decode, ids, "\nQuestion:")
    assert tok.decode(ids[:k]) == "7.\nQuestion:"
    assert trim_at_stop_string(tok.decode, ids, "nowhere") == len(ids)


# ----------------------------------------------------------------------------- rewards
P = Problem(id="p1", prompt="Tom has 3 apples. He buys 4 more.", answer="7")


def test_correctness_and_format_rewards():
    assert correctness_reward(P, "3 + 4 = 7. The answer is \\boxed{7}.") == 1.0
    assert correctness_reward(P, "3 + 4 = 8. The answer is \\boxed{8}.") == 0.0
    assert correctness_reward(P, "3 + 4 = 7") == 1.0  # last-number fallback, as the evaluation harness
    boxed_only = make_reward("boxed_correctness")     # the book's ch. 6 reward: a \\boxed{} answer or nothing
    assert score(boxed_only, [P] * 3, ["3 + 4 = 7", "\\boxed{7}", "\\boxed{8}"]) == [0.0, 1.0, 0.0]
    assert verify(P, "\\boxed{7}") is True
    assert format_reward(P, "\\boxed{8}") == 1.0 and format_reward(P, "it is 7") == 0.0


@pytest.mark.parametrize("only_when_correct, want", [
    (False, [1.25, 1.0, 0.25, 0.0]),
    (True, [1.25, 1.0, 0.0, 0.0]),
])
def test_format_weight_and_only_when_correct(only_when_correct, want):
    fn = make_reward("correctness", format_weight=0.25, format_only_when_correct=only_when_correct)
    texts = ["\\boxed{7}", "so 7", "\\boxed{8}", "so 8"]
    assert score(fn, [P] * 4, texts) == pytest.approx(want)


def test_a_reward_that_is_not_a_number_fails_in_one_line():
    for bad in ("yes", None, float("nan"), [1.0]):
        with pytest.raises(ValueError) as e:
            score(lambda p, t, bad=bad: bad, [P], ["x"])
        msg = str(e.value)
        assert "\n" not in msg and "'p1'" in msg and "finite real number" in msg
    assert score(lambda p, t: True, [P], ["x"]) == [1.0]          # a verdict is a fine reward
    assert score(lambda p, t: torch.tensor(0.5), [P], ["x"]) == [0.5]
    with pytest.raises(ValueError, match="cannot be imported"):
        make_reward("no_such_module.reward")


def test_random_reward_control_shuffles_within_the_step():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    a = shuffle_rewards(r, torch.Generator().manual_seed(5))
    b = shuffle_rewards(r, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)                               # seeded: a resumed run shuffles the same way
    assert sorted(a.tolist()) == sorted(r.tolist())        # same rewards, other owners
    assert any(not torch.equal(shuffle_rewards(r, torch.Generator().manual_seed(s)), r) for s in range(5))
