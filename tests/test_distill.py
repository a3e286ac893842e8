"""Logit KD (spine.distill), the KD stage's teacher checks, and teacher traces -> SFT data (spine.trace_data)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from spine.distill import check_same_tokenizer, kd_loss_from_logits, kd_loss_sum
from spine.tokenizer import ByteTokenizer
from spine.trace_data import (LengthBucketSampler, apply_overflow, collate_masked, preference_pairs, render_example,
                              select_traces)
from spine.traces import TraceRecord
from spine.training import cross_entropy_sum

DIVS = ("forward_kl", "reverse_kl", "jsd")


def _probs(logits, tau=1.0):
    m = max(x / tau for x in logits)
    e = [math.exp(x / tau - m) for x in logits]
    return [x / sum(e) for x in e]


# ----------------------------------------------------------------------------- the loss
@pytest.mark.parametrize("div", DIVS)
def test_kd_loss_equals_hand_computation(div):
    s, t, y, alpha, tau = [1.0, 2.0, 0.5], [0.2, 3.0, -1.0], 1, 0.3, 2.0
    ce = -math.log(_probs(s)[y])
    ps, pt = _probs(s, tau), _probs(t, tau)
    kl = lambda p, q: sum(a * math.log(a / b) for a, b in zip(p, q))  # noqa: E731
    d = {"forward_kl": kl(pt, ps), "reverse_kl": kl(ps, pt),
         "jsd": 0.5 * kl(pt, [(a + b) / 2 for a, b in zip(pt, ps)]) + 0.5 * kl(ps, [(a + b) / 2 for a, b in zip(pt, ps)])}[div]
    want = alpha * ce + (1 - alpha) * tau ** 2 * d
    got, n = kd_loss_from_logits(torch.tensor([[s]]), torch.tensor([[t]]), torch.tensor([[y]]), alpha=alpha,
                                 temperature=tau, divergence=div)
    assert int(n) == 1
    assert float(got) == pytest.approx(want, rel=1e-5)


def _setup(seed=0, B=2, T=7, D=8, Dt=12, V=11, Vpad=16):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(B, T, D, generator=g, requires_grad=True)
    ht = torch.randn(B, T, Dt, generator=g)
    s_head, t_head = nn.Linear(D, Vpad, bias=False), nn.Linear(Dt, Vpad, bias=False)
    with torch.no_grad():
        s_head.weight.copy_(torch.randn(Vpad, D, generator=g))
        t_head.weight.copy_(torch.randn(Vpad, Dt, generator=g))
    y = torch.randint(0, V, (B, T), generator=g)
    y[0, :3] = -100  # a masked prompt
    y[1, -2:] = -100  # padding
    return hs, ht, s_head, t_head, y, V


@pytest.mark.parametrize("div", DIVS)
@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_chunked_equals_unchunked_value_and_gradients(div, chunk):
    hs, ht, s_head, t_head, y, V = _setup()
    kw = dict(alpha=0.4, temperature=1.7, divergence=div, vocab_size=V)
    ref, n_ref = kd_loss_from_logits(s_head(hs), t_head(ht), y, **kw)
    g_ref = torch.autograd.grad(ref, [hs, s_head.weight])
    got, n = kd_loss_sum(hs, s_head, ht, t_head, y, chunk_size=chunk, **kw)
    g = torch.autograd.grad(got, [hs, s_head.weight])
    assert int(n) == int(n_ref) == int((y != -100).sum())
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert t_head.weight.grad is None  # the teacher never gets gradients


def test_padded_vocab_rows_are_excluded():
    hs, ht, s_head, t_head, y, V = _setup()
    with torch.no_grad():
        s_head.weight[V:] = 50.0  # huge logits in padding rows would dominate if they were included
    a, _ = kd_loss_sum(hs, s_head, ht, t_head, y, alpha=0.5, vocab_size=V)
    b, _ = kd_loss_from_logits(s_head(hs)[..., :V], t_head(ht)[..., :V], y, alpha=0.5)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_alpha_one_is_plain_cross_entropy_and_needs_no_teacher():
    hs, ht, s_head, _, y, V = _setup()
    got, n = kd_loss_sum(hs, s_head, None, None, y, alpha=1.0, vocab_size=V, chunk_size=4)
    ref, n_ref = cross_entropy_sum(s_head(hs)[..., :V], y)
    torch.testing.assert_close(got, ref)
    assert int(n) == int(n_ref)
    with pytest.raises(ValueError, match="teacher"):
        kd_loss_sum(hs, s_head, None, None, y, alpha=0.5)


@pytest.mark.parametrize("div", DIVS)
def test_alpha_interpolates_linearly_and_zero_when_student_is_teacher(div):
    g = torch.Generator().manual_seed(1)
    s, t, y = torch.randn(1, 5, 9, generator=g), torch.randn(1, 5, 9, generator=g), torch.randint(0, 9, (1, 5), generator=g)
    f = lambda a: float(kd_loss_from_logits(s, t, y, alpha=a, temperature=2.0, divergence=div)[0])  # noqa: E731
    assert f(0.3) == pytest.approx(0.3 * f(1.0) + 0.7 * f(0.0), rel=1e-5)
    assert float(kd_loss_from_logits(s, s, y, alpha=0.0, divergence=div)[0]) == pytest.approx(0.0, abs=1e-6)


def test_temperature_scaling_matches_hintons_high_temperature_limit():
    # for large tau, tau^2 * KL(p_t^tau || p_s^tau) -> sum_v (dz_v - mean dz)^2 / (2V), dz = t - s
    g = torch.Generator().manual_seed(2)
    V = 7
    s, t = torch.randn(1, 1, V, generator=g), torch.randn(1, 1, V, generator=g)
    dz = (t - s).flatten()
    limit = float(((dz - dz.mean()) ** 2).sum() / (2 * V))
    for div in ("forward_kl", "reverse_kl"):
        got = float(kd_loss_from_logits(s.double(), t.double(), torch.tensor([[0]]), alpha=0.0, temperature=1e3,
                                        divergence=div)[0])
        assert got == pytest.approx(limit, rel=1e-2)
    # and the tau^2 factor is there: at tau = 2 the loss is 4x the bare KL of the softened distributions
    bare = float(kd_loss_from_logits(s / 2, t / 2, torch.tensor([[0]]), alpha=0.0, temperature=1.0)[0])
    scaled = float(kd_loss_from_logits(s, t, torch.tensor([[0]]), alpha=0.0, temperature=2.0)[0])
    assert scaled == pytest.approx(4 * bare, rel=1e-5)


def test_jsd_is_symmetric_and_bounded_by_log2():
    g = torch.Generator().manual_seed(3)
    s, t, y = torch.randn(2, 6, 13, generator=g), torch.randn(2, 6, 13, generator=g), torch.zeros(2, 6, dtype=torch.long)
    a = kd_loss_from_logits(s, t, y, alpha=0.0, divergence="jsd")[0]
    b = kd_loss_from_logits(t, s, y, alpha=0.0, divergence="jsd")[0]
    torch.testing.assert_close(a, b)
    # disjoint one-hot-like distributions reach the bound, never exceed it
    s2 = torch.tensor([[[60.0, 0.0, 0.0]]])
    t2 = torch.tensor([[[0.0, 60.0, 0.0]]])
    v = float(kd_loss_from_logits(s2, t2, torch.tensor([[0]]), alpha=0.0, divergence="jsd")[0])
    assert v <= math.log(2) + 1e-6 and v == pytest.approx(math.log(2), abs=1e-4)
    assert float(a) / 12 <= math.log(2)


@pytest.mark.parametrize("kw,match", [({"alpha": 1.5}, "alpha"), ({"temperature": 0.0}, "temperature"),
                                      ({"divergence": "kl"}, "divergence")])
def test_bad_kd_arguments_are_one_line_errors(kw, match):
    s = torch.zeros(1, 2, 3)
    with pytest.raises(ValueError, match=match) as e:
        kd_loss_from_logits(s, s, torch.zeros(1, 2, dtype=torch.long), **kw)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- teacher checks
class _ShiftedBytes(ByteTokenizer):
    """Same size and eos as the byte tokenizer, different ids: must be refused."""

    def encode(self, text, **kw):
        return [(i + 1) % 256 if i < 256 else i for i in super().encode(text, **kw)]


def test_tokenizer_check_compares_behaviour():
    check_same_tokenizer(ByteTokenizer(), ByteTokenizer())
    with pytest.raises(ValueError, match="probe") as e:
        check_same_tokenizer(ByteTokenizer(), _ShiftedBytes(), "teacher X")
    assert str(e.value).startswith("teacher X:") and "\n" not in str(e.value)


def _save_tiny(path, tokenizer, vocab_size, seed):
    from spine.checkpoint import save_checkpoint
    from spine.model import GPT

    torch.manual_seed(seed)
    model = GPT.from_preset("gpt2-tiny", vocab_size=vocab_size, d_model=32, n_layer=1, n_head=2, context_length=128)
    save_checkpoint(path, model, tokenizer)
    return path


def test_distill_module_refuses_a_teacher_with_another_tokenizer(tmp_path):
    from modules.distill import DistillModule
    from spine.bpe import BPETokenizer

    # same vocabulary size (257) and the same byte ids, but another end-of-turn token: ids of a KD
    # target would not mean the same thing (a checkpoint cannot hold a tokenizer smaller than its vocab)
    other = BPETokenizer.train("hello world hello", 257, special_tokens=("<|im_end|>",))
    assert other.vocab_size == ByteTokenizer().vocab_size
    student = _save_tiny(tmp_path / "student", ByteTokenizer(), 257, 0)
    teacher = _save_tiny(tmp_path / "teacher", other, 257, 1)
    with pytest.raises(ValueError, match="tokenizer") as e:
        DistillModule(init_from=str(student), teacher=str(teacher))
    assert "\n" not in str(e.value) and "teacher" in str(e.value)


def test_distill_module_loss_is_the_kd_loss_of_both_models(tmp_path):
    from modules.distill import DistillModule
    from spine.engine import load_model

    student = _save_tiny(tmp_path / "student", ByteTokenizer(), 257, 0)
    teacher = _save_tiny(tmp_path / "teacher", ByteTokenizer(), 257, 1)
    m = DistillModule(init_from=str(student), teacher=str(teacher), alpha=0.25, temperature=2.0,
                      divergence="reverse_kl", kd_chunk_size=5)
    m.model.eval()
    x = torch.randint(0, 257, (2, 9))
    y = x.roll(-1, 1)
    y[:, :3] = -100
    got, n = m._loss({"input_ids": x, "targets": y})
    t_model, _ = load_model(str(teacher))
    with torch.no_grad():
        ref, n_ref = kd_loss_from_logits(m.model(x), t_model(x), y, alpha=0.25, temperature=2.0,
                                         divergence="reverse_kl", vocab_size=257)
    torch.testing.assert_close(got.detach(), ref, rtol=1e-5, atol=1e-5)
    assert int(n) == int(n_ref) == 12
    assert not any(p.requires_grad for p in m.teacher.parameters())
    assert not any("teacher" in k for k in m.state_dict())  # the teacher is not saved with the student


# ----------------------------------------------------------------------------- traces -> SFT data
def _rec(pid, idx, completion, correct, prompt="Question: q\nAnswer:", gold="7"):
    return TraceRecord(run_id="r", config_hash="h", checkpoint_sha256=None, problem_id=pid, sample_index=idx,
                       prompt=prompt, completion=completion, extracted=None, extraction_method="boxed", gold=gold,
                       correct=correct, rule="exact", tokens=3, seconds=0.0)


def test_select_traces_keeps_correct_unique_and_counts_every_drop():
    recs = [_rec("a", 0, " 3 + 4 = 7.", True), _rec("a", 1, " 3 + 4  = 7. ", True),  # whitespace duplicate
            _rec("a", 2, " 3 + 4 = 8.", False), _rec("b", 0, " x", True), _rec("b", 1, "  ", True),
            _rec("b", 2, " y", True), _rec("c", 0, " z", False)]
    kept, rep = select_traces(recs, max_per_problem=1)
    assert [(r.problem_id, r.sample_index) for r in kept] == [("a", 0), ("b", 0)]
    assert (rep.incorrect, rep.duplicates, rep.empty, rep.over_cap, rep.kept) == (2, 1, 1, 1, 2)
    assert rep.incorrect + rep.duplicates + rep.empty + rep.over_cap + rep.kept == rep.total == 7
    assert (rep.problems_total, rep.problems_kept) == (3, 2)
    kept_all, rep2 = select_traces(recs, correct_only=False, dedupe=False)
    assert len(kept_all) == 6 and rep2.empty == 1
    assert "2 incorrect" in rep.format()


def test_render_plain_masks_the_prompt_and_trains_the_end_token():
    tok = ByteTokenizer()
    e = render_example(tok, "Q:", " 12", key="p")
    assert e.ids == tok.encode("Q:") + tok.encode(" 12") + [tok.eos_id]
    assert e.mask == [False, False, True, True, True, True]
    batch = collate_masked([e, render_example(tok, "Q", "1")], pad_id=tok.pad_id)
    x, y = batch["input_ids"], batch["targets"]
    assert x[0].tolist() == e.ids[:-1]
    assert y[0].tolist() == [-100, *e.ids[2:]]  # y[j] predicts ids[j+1]; only completion ids are targets
    assert y[1].tolist() == [ord("1"), tok.eos_id, -100, -100, -100]


def test_render_chat_qwen3_think_format(tmp_path):
    from spine.qwen_tokenizer import Qwen3Tokenizer
    from tests.test_qwen_tokenizer import _build_tokenizer_json

    tok = Qwen3Tokenizer(_build_tokenizer_json(tmp_path / "q"))
    # a completion without its own think block: reasoning in <think>, the boxed answer after it
    e = render_example(tok, "What is 3+4?", "3 + 4 = 7.", chat=True, thinking=True, answer="7")
    text = tok.decode(e.ids)
    assert text == ("<|im_start|>user\nWhat is 3+4?<|im_end|>\n<|im_start|>assistant\n"
                    "<think>\n3 + 4 = 7.\n</think>\n\nThe answer is \\boxed{7}.<|im_end|>")
    prompt_ids = tok.encode_chat([{"role": "user", "content": "What is 3+4?"}])
    assert e.ids[:len(prompt_ids)] == prompt_ids and e.mask.index(True) == len(prompt_ids)
    assert e.ids[-1] == tok.im_end_id and e.mask[-1]
    assert tok.think_ids[0] in e.ids and tok.think_ids[1] in e.ids
    # a prompt the teacher saw in ChatML is unwrapped; its own think block is kept; no-thinking mode
    seen = tok.apply_chat_template([{"role": "user", "content": "Hi <|im_end|>"}])
    e2 = render_example(tok, seen, "<think>\nhm\n</think>\n\nok", chat=True, thinking=False)
    assert tok.decode(e2.ids).endswith("assistant\n<think>\n\n</think>\n\nok<|im_end|>")
    assert tok.im_end_id not in e2.ids[:4 + len(tok.encode("Hi <|im_end|>"))][3:]  # typed text stays text
    assert tok.decode([i for i, m in zip(e2.ids, e2.mask) if m]) == "ok<|im_end|>"
    with pytest.raises(ValueError, match="ChatML"):
        render_example(ByteTokenizer(), "q", "a", chat=True)


def test_long_traces_are_bucketed_not_dropped():
    lengths = [10] * 6 + [100, 300, 1000]
    s = LengthBucketSampler(lengths, batch_size=4, max_tokens=600, shuffle=True, seed=0)
    batches = list(s)
    assert sorted(i for b in batches for i in b) == list(range(9))  # every example, once
    for b in batches:
        assert len(b) <= 4 and max(lengths[i] for i in b) * len(b) <= max(600, max(lengths[i] for i in b))
        assert len({min(lengths[i], 64) == lengths[i] for i in b}) == 1  # one bucket per batch
    assert [8] in batches  # the 1000-token trace trains alone
    assert len(s) == len(batches)
    tok = ByteTokenizer()
    exs = [render_example(tok, "q", "a" * n, key=str(n)) for n in (3, 50)]
    from spine.trace_data import SelectionReport

    rep = SelectionReport()
    assert len(apply_overflow(exs, 20, "drop", rep)) == 1 and rep.too_long == 1
    assert [len(e.ids) for e in apply_overflow(exs, 20, "truncate", rep)] == [5, 21] and rep.truncated == 1
    with pytest.raises(ValueError, match="max_length"):
        apply_overflow(exs, 20, "error")


def test_preference_pairs_from_correct_and_incorrect_samples():
    recs = [_rec("a", 0, "good", True), _rec("a", 1, "bad", False), _rec("a", 2, "bad", False),
            _rec("a", 3, "worse", False), _rec("b", 0, "ok", True), _rec("c", 0, "no", False)]
    pairs, stats = preference_pairs(recs, max_pairs_per_problem=3)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("good", "bad"), ("good", "worse")]
    assert stats == {"problems": 3, "with_pairs": 1, "all_correct": 1, "all_incorrect": 1}


def _write_traces(path, n=24):
    from spine.reasoning.synthetic import ArithmeticProblems, format_prompt
    from spine.traces import TraceWriter

    probs = ArithmeticProblems(seed=1, level=1, split="train").take(n)
    with TraceWriter(path, run_config={"teacher": "test"}) as w:
        for i, sp in enumerate(probs):
            for j in range(2):  # a duplicate sample, and every 4th problem answered wrongly
                ok = i % 4 != 0
                w.write(w.make_record(problem_id=sp.id, sample_index=j, prompt=format_prompt(sp),
                                      completion=" " + sp.solution if ok else " 1 + 1 = 3.", extracted=None,
                                      extraction_method="boxed", gold=sp.answer, correct=ok, rule="x", tokens=9,
                                      seconds=0.0))
    return path


def test_kd_stage_fits_on_teacher_traces_from_the_cli(tmp_path):
    """`spine fit` with DistillModule + TraceSFTDataModule: wiring, selection report, export."""
    from spine.checkpoint import load_checkpoint
    from tests.support.fit_runner import run_in_process

    teacher = _save_tiny(tmp_path / "teacher", ByteTokenizer(), 257, 1)
    traces = _write_traces(tmp_path / "t.jsonl")
    cfg = tmp_path / "kd.yaml"
    cfg.write_text(f"""
trainer: {{max_steps: 2, accelerator: cpu, devices: 1, logger: false, enable_checkpointing: false,
          enable_progress_bar: false, enable_model_summary: false, num_sanity_val_steps: 0,
          default_root_dir: {tmp_path}}}
model:
  class_path: modules.distill.DistillModule
  init_args: {{teacher: {teacher}, alpha: 0.5, temperature: 2.0, divergence: jsd, kd_chunk_size: 16,
              model: gpt2-tiny, model_overrides: {{d_model: 16, n_layer: 1, n_head: 2, context_length: 128}},
              export_dir: {tmp_path}/student}}
data:
  class_path: datamodules.trace_sft.TraceSFTDataModule
  init_args: {{traces: [{traces}], tokenizer: byte, max_length: 128, batch_size: 4, val_frac: 0.2}}
""")
    code, _ = run_in_process(["fit", "--config", str(cfg)])
    assert code in (0, None)
    model, tok = load_checkpoint(tmp_path / "student")
    assert model.config.d_model == 16 and tok.name == "byte"
