"""DPO: the pure loss (spine.dpo), the LoRA-disabled reference, the preference data and the stage."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from spine.dpo import dpo_loss, reduce_logprobs, sequence_scores
from spine.lora import apply_lora, lora_disabled, lora_modules, merge_lora
from spine.model import GPT
from spine.tokenizer import ByteTokenizer


def _tiny(seed=0, vocab=257):
    torch.manual_seed(seed)
    return GPT.from_preset("gpt2-tiny", vocab_size=vocab, d_model=32, n_layer=2, n_head=2, context_length=128).eval()


def test_dpo_loss_equals_hand_computation():
    pc, pr, rc, rr, beta = [-1.0, -2.0], [-1.5, -0.5], [-1.2, -2.5], [-1.4, -0.4], 0.3
    out = dpo_loss(torch.tensor(pc), torch.tensor(pr), torch.tensor(rc), torch.tensor(rr), beta=beta)
    want, margins = 0.0, []
    for a, b, c, d in zip(pc, pr, rc, rr):
        z = beta * ((a - c) - (b - d))
        want += -math.log(1 / (1 + math.exp(-z)))
        margins.append((a - c) - (b - d))
    assert int(out.count) == 2
    assert float(out.loss_sum) == pytest.approx(want, rel=1e-6)
    assert float(out.chosen_reward_sum) == pytest.approx((-1.0 + 1.2) + (-2.0 + 2.5))
    assert float(out.rejected_reward_sum) == pytest.approx((-1.5 + 1.4) + (-0.5 + 0.4))
    assert float(out.margin_sum) == pytest.approx(sum(margins))
    assert int(out.correct) == sum(m > 0 for m in margins) == 2
    m = out.means()
    assert m["accuracy"] == 1.0 and m["loss"] == pytest.approx(want / 2, rel=1e-6)


def test_dpo_gradient_flows_to_the_policy_only():
    pc, pr = torch.tensor([-1.0], requires_grad=True), torch.tensor([-2.0], requires_grad=True)
    rc, rr = torch.tensor([-1.0], requires_grad=True), torch.tensor([-2.0], requires_grad=True)
    out = dpo_loss(pc, pr, rc, rr, beta=0.5)
    out.loss_sum.backward()
    # d/dpc of -log sigmoid(beta * x) at x = 0 is -beta / 2; the reference is a constant
    assert float(pc.grad) == pytest.approx(-0.25) and float(pr.grad) == pytest.approx(0.25)
    assert rc.grad is None and rr.grad is None


def test_sequence_scores_sum_and_mean_by_hand():
    model = _tiny()
    ids = torch.randint(0, 257, (2, 8))
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, 3:] = True
    mask[1, 5:7] = True  # a padded row
    with torch.no_grad():
        lp = torch.log_softmax(model(ids).float(), -1)
        want_sum = [sum(float(lp[b, t - 1, ids[b, t]]) for t in range(8) if mask[b, t]) for b in range(2)]
        got_sum = sequence_scores(model, ids, mask, "sum")
        got_mean = sequence_scores(model, ids, mask, "mean")
    assert got_sum.tolist() == pytest.approx(want_sum, rel=1e-5)
    assert got_mean.tolist() == pytest.approx([want_sum[0] / 5, want_sum[1] / 2], rel=1e-5)
    with pytest.raises(ValueError, match="reduction"):
        reduce_logprobs(torch.zeros(1, 2), torch.ones(1, 3), "avg")


def _perturbed_lora(model):
    apply_lora(model, rank=4, alpha=8.0)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.5)
    return model


def test_lora_disabled_reference_equals_a_frozen_copy():
    base = _tiny()
    frozen = copy.deepcopy(base)
    model = _perturbed_lora(base)
    ids = torch.randint(0, 257, (3, 10))
    mask = torch.ones(3, 10, dtype=torch.bool)
    with torch.no_grad():
        want = sequence_scores(frozen, ids, mask)
        adapted = sequence_scores(model, ids, mask)
        with lora_disabled(model):
            got = sequence_scores(model, ids, mask)
        after = sequence_scores(model, ids, mask)
        merge_lora(model)  # merged adapters are taken out for the block and put back after it
        with lora_disabled(model):
            got_merged = sequence_scores(model, ids, mask)
        after_merged = sequence_scores(model, ids, mask)
    assert not torch.allclose(adapted, want)  # the adapters do change the model
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(after, adapted)
    torch.testing.assert_close(got_merged, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after_merged, adapted, rtol=1e-5, atol=1e-5)
    assert all(m.merged for m in lora_modules(model).values())
    with pytest.raises(ValueError, match="no LoRA"):
        with lora_disabled(frozen):
            pass


def _pair_batch(B=3, T=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = {"chosen_ids": torch.randint(0, 257, (B, T), generator=g), "rejected_ids": torch.randint(0, 257, (B, T), generator=g)}
    for k in ("chosen", "rejected"):
        m = torch.zeros(B, T, dtype=torch.bool)
        m[:, 4:T - 1 - (k == "rejected")] = True
        b[f"{k}_mask"] = m
    return b


def _ckpt(tmp_path):
    from spine.checkpoint import save_checkpoint

    return str(save_checkpoint(tmp_path / "policy", _tiny(), ByteTokenizer()))


@pytest.mark.parametrize("reference,lora", [("copy", None), ("copy", {"rank": 4}), ("lora", {"rank": 4})])
def test_dpo_stage_starts_at_log2(tmp_path, reference, lora):
    from modules.dpo import DPOModule

    m = DPOModule(init_from=_ckpt(tmp_path), reference=reference, lora=lora, beta=0.1)
    m.model.eval()
    with torch.no_grad():
        out = m.dpo_step(_pair_batch())
    assert float(out.loss_sum) / int(out.count) == pytest.approx(math.log(2), abs=1e-6)
    assert float(out.margin_sum) == pytest.approx(0.0, abs=1e-6) and int(out.correct) == 0


def test_dpo_stage_lora_reference_equals_copy_reference_after_training(tmp_path):
    from modules.dpo import DPOModule

    path = _ckpt(tmp_path)
    a = DPOModule(init_from=path, reference="lora", lora={"rank": 4})
    b = DPOModule(init_from=path, reference="copy", lora={"rank": 4})
    batch = _pair_batch()
    opt = torch.optim.SGD([p for p in a.model.parameters() if p.requires_grad], lr=1.0)
    for _ in range(3):  # move the policy away from the reference
        opt.zero_grad()
        out = a.dpo_step(batch)
        out.loss_sum.backward()
        opt.step()
    ids = torch.cat([batch["chosen_ids"], batch["rejected_ids"]])
    mask = torch.cat([batch["chosen_mask"], batch["rejected_mask"]])
    torch.testing.assert_close(a._reference_scores(ids, mask), b._reference_scores(ids, mask))
    after = a.dpo_step(batch)
    assert float(after.loss_sum.detach()) / 3 < math.log(2) - 1e-3 and float(after.margin_sum) > 0  # DPO moved it


def test_dpo_stage_bad_settings_are_one_line(tmp_path):
    from modules.dpo import DPOModule

    path = _ckpt(tmp_path)
    for kw, match in [({"reference": "lora"}, "needs lora"), ({"beta": 0.0}, "beta"), ({"reduction": "avg"}, "reduction"),
                      ({"reference": "self"}, "reference")]:
        with pytest.raises(ValueError, match=match) as e:
            DPOModule(init_from=path, **kw)
        assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- data
def test_book_preference_data_split_and_masks(shared_data, gpt2_vocab_dir):
    from datamodules.preference import PreferenceDataModule

    path = shared_data / "dpo-preference" / "instruction-data-with-preference.json"
    dm = PreferenceDataModule(path=str(path), tokenizer="gpt2", vocab_dir=str(gpt2_vocab_dir), batch_size=4)
    assert [len(dm.pairs(s)) for s in ("train", "val", "test")] == [935, 55, 110]
    records = json.loads(path.read_text())
    batch = next(iter(dm.val_dataloader()))
    tok = dm.tokenizer
    for b in range(4):
        r = records[935 + 110 + b]  # val = the last 5%, in file order
        for k in ("chosen", "rejected"):
            ids, mask = batch[f"{k}_ids"][b], batch[f"{k}_mask"][b]
            assert tok.decode(ids[mask].tolist()) == r[k]  # exactly the response is scored
            assert tok.decode(ids[:int(mask.nonzero()[0])].tolist()).endswith("### Response:\n")
    assert batch["chosen_ids"].shape == batch["rejected_ids"].shape


def test_book_preference_data_bad_record(tmp_path):
    from datamodules.preference import PreferenceDataModule

    p = tmp_path / "prefs.json"
    p.write_text(json.dumps([{"instruction": "a", "input": "", "output": "b", "chosen": "c"}]))
    with pytest.raises(ValueError, match="record 0 needs a string field 'rejected'"):
        PreferenceDataModule(path=str(p), tokenizer="byte")


def test_trace_preference_pairs_module(tmp_path):
    from datamodules.preference import PreferenceDataModule
    from spine.traces import TraceWriter

    path = tmp_path / "t.jsonl"
    with TraceWriter(path, run_config={"x": 1}) as w:
        for pid in range(6):
            for i, (c, ok) in enumerate([(" 7.", True), (" 8.", False)]):
                w.write(w.make_record(problem_id=f"p{pid}", sample_index=i, prompt=f"Q{pid}:", completion=c,
                                      extracted=None, extraction_method="boxed", gold="7", correct=ok, rule="x",
                                      tokens=2, seconds=0.0))
    dm = PreferenceDataModule(traces=str(path), tokenizer="byte", val_frac=0.5, batch_size=2)
    assert len(dm.pairs("train")) + len(dm.pairs("val")) == 6
    batch = next(iter(dm.train_dataloader()))
    tok = ByteTokenizer()
    assert tok.decode(batch["chosen_ids"][0][batch["chosen_mask"][0]].tolist()[:-1]) == " 7."
    assert batch["chosen_ids"][0][batch["chosen_mask"][0]].tolist()[-1] == tok.eos_id


def test_dpo_book_recipe_runs_from_the_cli_and_plots(tmp_path, shared_data):
    """`spine fit` with DPOModule + PreferenceDataModule(book data) + DPOPlot: the sanity check is the
    plot's step-0 point at log 2."""
    from tests.support.fit_runner import run_in_process

    path = _ckpt(tmp_path)
    data = shared_data / "dpo-preference" / "instruction-data-with-preference.json"
    cfg = tmp_path / "dpo.yaml"
    cfg.write_text(f"""
trainer: {{max_steps: 2, accelerator: cpu, devices: 1, enable_checkpointing: false, enable_progress_bar: false,
          enable_model_summary: false, num_sanity_val_steps: -1, limit_val_batches: 1, val_check_interval: 2,
          default_root_dir: {tmp_path},
          logger: {{class_path: lightning.pytorch.loggers.CSVLogger, init_args: {{save_dir: {tmp_path}, name: logs}}}},
          callbacks: [{{class_path: callbacks.dpo_plot.DPOPlot, init_args: {{dirpath: {tmp_path}}}}}]}}
model:
  class_path: modules.dpo.DPOModule
  init_args: {{init_from: {path}, reference: lora, lora: {{rank: 2}}, lr: 1.0e-3}}
data:
  class_path: datamodules.preference.PreferenceDataModule
  init_args: {{path: {data}, tokenizer: {path}, limit: 40, max_length: 64, batch_size: 2}}
""")
    code, _ = run_in_process(["fit", "--config", str(cfg)])
    assert code in (0, None)
    assert (tmp_path / "dpo_curves.png").stat().st_size > 0
    curves = json.loads((tmp_path / "dpo_curves.json").read_text())
    assert curves["val"]["loss"][0] == [0, pytest.approx(math.log(2), abs=1e-5)]
    assert len(curves["val"]["loss"]) == 2 and set(curves["train"]) >= {"margin", "accuracy", "chosen_reward"}
