"""Multi-process training through Lightning strategies, on CPU: real `spine fit` runs with
`--trainer.strategy=ddp --trainer.devices=2` (two gloo processes) in subprocesses.

What is checked, against a single-process run with the same global batch (2 ranks x 4 vs 1 x 8):
- the data: each rank gets disjoint windows and, step for step, the two ranks' batches together are
  exactly the single process's batch (ResumableSampler uses DistributedSampler's layout: rank r
  takes positions r, r + 2, ... of the shared permutation, so ranks' batch k is positions
  8k .. 8k + 7 of that permutation, which is the single process's batch k);
- the loss trajectory (global token-mean loss per step, from per-rank (sum, count) at the pre-step
  weights) and the final weights;
- val_loss (a torchmetrics MeanMetric, synced across ranks) equals the single-process value;
- only rank 0 writes: checkpoints, spine checkpoints, the plot, the logger's files (and a Python
  audit hook on rank 1 sees no file write under the run's directory at all);
- exact resume under DDP after SIGKILL of all ranks;
- token normalisation is global: with very different target-token counts per rank (and gradient
  accumulation) the gradient equals the single-process global token-mean gradient.
See docs/multi-gpu.md for the tolerances and why.
"""
from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "support"))
from fit_runner import ACCELERATOR, EVERY, STEPS, final_weights as _final_weights, records as _records, run as _run_fit  # noqa: E402,E501
from fit_runner import spine_fit as _spine_fit  # noqa: E402

# Tolerances (see docs/multi-gpu.md). DDP averages the two ranks' gradients (a different float summation
# order than one big batch), so trajectories agree to rounding, not bitwise.
LOSS_ATOL = 1e-5       # per-step global train loss and val_loss, nats/token
WEIGHT_ATOL = 1e-5     # final weights after 20 AdamW steps
VAL_INIT_ATOL = 1e-6   # val_loss at identical (initial) weights: only summation order differs
GRAD_RTOL, GRAD_ATOL = 1e-5, 5e-7  # DDP gradient vs single-process global token-mean gradient

# 150 train windows: 18 steps of 8 per epoch (drop_last), so 20 steps cross into epoch 1; 16 val windows
BATCH, WORLD, PER_EPOCH = 4, 2, 18

def _run(base: Path, name: str, *extra: str, devices: int, batch: int, steps: int = STEPS, dropout: float = 0.0):
    return _run_fit(base, name, *extra, devices=devices, batch=batch, steps=steps, dropout=dropout,
                    strategy="ddp" if devices > 1 else "auto")


RAGGED_CONFIG = """
seed_everything: 1
trainer:
  accelerator: {accelerator}
  devices: 2
  strategy: {strategy}
  max_steps: 1
  accumulate_grad_batches: 2
  limit_val_batches: 0
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
  use_distributed_sampler: false
  default_root_dir: {root}
model:
  class_path: ddp_probe.GradProbeModule
  init_args:
    probe_dir: {probe}
    pass_reference: {pass_reference}
    model: gpt2-tiny
    model_overrides: {{d_model: 32, n_layer: 2, n_head: 2, dropout: 0.0}}
    scheduler: constant
data:
  class_path: ddp_probe.RaggedData
  init_args: {{batch_size: 2}}
"""


def _epoch_orders(cache: Path):
    """(train window order of epochs 0 and 1 as one process sees it, n train windows, n val windows)."""
    from ddp_probe import IndexedPretrainData
    from spine.data import ResumableSampler

    dm = IndexedPretrainData(source="synthetic", tokenizer="byte", context_length=32, batch_size=2 * BATCH,
                             synthetic_problems=40, seed=5, cache_dir=str(cache))
    dm.setup("fit")
    sampler = ResumableSampler(dm.train_dataset, shuffle=True, seed=5)
    return [sampler.epoch_indices(e) for e in (0, 1)], len(dm.train_dataset), len(dm.val_dataset)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One 2-rank DDP run (batch 4 per rank) and one single-process run (batch 8), same data and seed."""
    base = tmp_path_factory.mktemp("ddp")
    ddp, ddp_root, ddp_probe = _run(base, "ddp", devices=WORLD, batch=BATCH)
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    single, single_root, single_probe = _run(base, "single", devices=1, batch=WORLD * BATCH)
    assert single.returncode == 0, single.stderr[-4000:]
    return {"base": base, "ddp": (ddp, ddp_root, _records(ddp_probe, WORLD)),
            "single": (single, single_root, _records(single_probe, 1)[0])}


def test_ranks_get_disjoint_samples_whose_union_is_the_single_process_batch(runs):
    from spine.data import ResumableSampler

    _, _, (r0, r1) = runs["ddp"]
    _, _, one = runs["single"]
    orders, n_train, n_val = _epoch_orders(runs["base"] / "cache")
    assert (r0["rank"], r1["rank"], r0["world_size"]) == (0, 1, 2)
    assert n_train // (WORLD * BATCH) == PER_EPOCH and PER_EPOCH < STEPS  # the runs cross an epoch boundary
    # sampler level: the two ranks' epochs partition the epoch's windows (150 is even: no padding)
    shards = [ResumableSampler(n_train, seed=5, num_replicas=WORLD, rank=r).epoch_indices(0) for r in range(WORLD)]
    assert not set(shards[0]) & set(shards[1]) and sorted(shards[0] + shards[1]) == list(range(n_train))
    # run level: what each rank actually trained on, step by step
    assert len(r0["train"]) == len(r1["train"]) == len(one["train"]) == STEPS
    for step, (a, b, s) in enumerate(zip(r0["train"], r1["train"], one["train"])):
        epoch, j = divmod(step, PER_EPOCH)
        block = orders[epoch][8 * j: 8 * j + 8]
        # DistributedSampler's layout: rank r takes positions r, r + 2, ... of the shared order ...
        assert a["idx"] == block[0::2] and b["idx"] == block[1::2], f"step {step}"
        # ... so each step's two rank batches together are the single process's batch of that step
        assert sorted(a["idx"] + b["idx"]) == sorted(s["idx"]), f"step {step}"
    for epoch, steps in ((0, range(PER_EPOCH)), (1, range(PER_EPOCH, STEPS))):
        seen0 = [i for k in steps for i in r0["train"][k]["idx"]]
        seen1 = [i for k in steps for i in r1["train"][k]["idx"]]
        assert not set(seen0) & set(seen1), f"ranks saw the same window in epoch {epoch}"
        assert len(set(seen0 + seen1)) == len(seen0 + seen1) == WORLD * BATCH * len(steps)
        if epoch == 0:  # the whole epoch but the 150 - 144 windows that drop_last leaves out
            assert set(seen0 + seen1) == set(orders[0][: PER_EPOCH * WORLD * BATCH])
    # validation: disjoint shards covering every val window once (16 windows: divisible by 2, no padding)
    assert n_val % WORLD == 0
    n_validations = sum(not v["sanity"] for v in r0["val"])
    assert n_validations == STEPS // EVERY
    per_val = n_val // WORLD // BATCH  # val batches per rank per validation
    assert len(r0["val_batches"]) == len(r1["val_batches"]) == n_validations * per_val
    for k in range(n_validations):
        v0 = [i for b in r0["val_batches"][k * per_val:(k + 1) * per_val] for i in b]
        v1 = [i for b in r1["val_batches"][k * per_val:(k + 1) * per_val] for i in b]
        assert not set(v0) & set(v1) and sorted(v0 + v1) == list(range(n_val))


def test_loss_trajectory_and_weights_match_single_process(runs):
    _, ddp_root, (r0, r1) = runs["ddp"]
    _, single_root, one = runs["single"]
    diffs = []
    for a, b, s in zip(r0["train"], r1["train"], one["train"]):
        assert a["step"] == b["step"] == s["step"]
        assert a["n"] + b["n"] == s["n"]
        ddp_loss = (a["loss_sum"] + b["loss_sum"]) / (a["n"] + b["n"])  # global token mean over both ranks
        diffs.append(abs(ddp_loss - s["loss_sum"] / s["n"]))
    assert max(diffs) <= LOSS_ATOL, diffs
    assert diffs[0] <= 1e-6  # step 0: identical initial weights, only summation order differs
    first, last = one["train"][0], one["train"][-1]
    assert last["loss_sum"] / last["n"] < first["loss_sum"] / first["n"] - 0.1  # it trained
    a, b = _final_weights(ddp_root), _final_weights(single_root)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=WEIGHT_ATOL, rtol=0, msg=lambda m: f"{k}: {m}")


def test_val_loss_is_synced_across_ranks(runs):
    ddp, _, (r0, r1) = runs["ddp"]
    _, _, one = runs["single"]
    # every rank reports the same (synced) value, and it is the value over all val windows
    assert [v["val_loss"] for v in r0["val"]] == [v["val_loss"] for v in r1["val"]]
    assert [v["sanity"] for v in r0["val"]] == [v["sanity"] for v in one["val"]] == [True] + [False] * (STEPS // EVERY)
    # sanity pass (num_sanity_val_steps=-1): identical initial weights, the whole val split
    assert abs(r0["val"][0]["val_loss"] - one["val"][0]["val_loss"]) <= VAL_INIT_ATOL
    for d, s in zip(r0["val"][1:], one["val"][1:]):
        assert d["step"] == s["step"] and abs(d["val_loss"] - s["val_loss"]) <= LOSS_ATOL
    # a rank-local value would differ from the synced one: make sure the two shards really differ
    assert r0["val_batches"][0] != r1["val_batches"][0]


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_only_rank_zero_writes(runs):
    ddp, root, (r0, r1) = runs["ddp"]
    files = _files(root)
    assert not [f for f in files if "rank" in f.lower()], files
    ckpts = [f"ckpt/epoch={k // PER_EPOCH}-step={k}.ckpt" for k in range(EVERY, STEPS + 1, EVERY)]
    assert [f for f in files if f.startswith("ckpt/")] == sorted([*ckpts, "ckpt/last.ckpt"])
    # `latest` is the link rank 0 makes to the finished run (modules/cli.py link_latest)
    assert sorted(d.name for d in (root / "logs").iterdir()) == ["latest", "version_0"], \
        "a second logger directory appeared"
    assert (root / "logs" / "latest").resolve() == (root / "logs" / "version_0").resolve()
    log = root / "logs" / "version_0"
    for name in ("metrics.csv", "hparams.yaml", "config.yaml", "loss_curve.png"):
        assert (log / name).is_file(), name
    spine_files = {"model.safetensors", "config.json", "manifest.json", "spine_tokenizer.json"}
    assert {p.name for p in (log / "spine" / "final").iterdir()} == spine_files
    assert {p.name for p in (log / "spine" / "last").iterdir()} == spine_files
    # nothing else, in particular no duplicates (+1: the test's own config.yaml)
    assert len(files) == len(ckpts) + 1 + 4 + 2 * len(spine_files) + 1, files
    # rank 1 wrote nothing at all under the run directory (a Python audit hook watched it)
    assert r1["writes"] == [], r1["writes"][:20]
    # the plot's validation points are the logged val_loss at the step they were logged
    ckpt = torch.load(root / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    (plot_state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("LossCurvePlot")]
    # (last.ckpt is written at the last step before that step's validation, so it lacks that point)
    assert ckpt["global_step"] == STEPS
    assert [(s, round(v, 6)) for s, v in plot_state["val"]] == \
        [(v["step"], round(v["val_loss"], 6)) for v in r0["val"] if not v["sanity"] and v["step"] < STEPS]
    assert len(plot_state["val"]) == STEPS // EVERY - 1
    assert len(plot_state["train"]) == STEPS


def test_logged_train_loss_is_the_global_token_mean(runs):
    """`train_loss` (progress bar, CSV, plot) is the step's token mean over both ranks, reduced together
    with the token count in the normaliser's one all-reduce; not rank 0's own micro-batch loss."""
    import csv

    _, root, (r0, r1) = runs["ddp"]
    (path,) = root.glob("logs/version_0/metrics.csv")
    logged = {int(row["step"]): float(row["train_loss"]) for row in csv.DictReader(path.open()) if row["train_loss"]}
    assert len(logged) == STEPS
    local_gap = []
    for k, (a, b) in enumerate(zip(r0["train"], r1["train"])):
        glob = (a["loss_sum"] + b["loss_sum"]) / (a["n"] + b["n"])  # dropout 0: same value as in training
        # Lightning logs a step's value under the step counter after the optimizer step
        assert logged[k] == pytest.approx(glob, abs=1e-5), k
        local_gap.append(abs(a["loss_sum"] / a["n"] - glob))
    assert max(local_gap) > 1e-3  # rank 0's own mean is distinguishable from the global one


def test_resume_after_sigkill_under_ddp_is_bitwise_identical(runs):
    """Dropout 0.1 (so the restored RNG matters), checkpoints every 4 steps, all ranks SIGKILLed after
    step 6, resumed from step 4 with `--ckpt_path last`: final weights equal the uninterrupted run's."""
    base = runs["base"]
    ref, ref_root, ref_probe = _run(base, "resume-ref", devices=WORLD, batch=BATCH, dropout=0.1)
    assert ref.returncode == 0, ref.stderr[-4000:]
    killed, root, probe = _run(base, "killed", "--trainer.callbacks+=ddp_probe.KillGroupAtStep",
                               "--trainer.callbacks.step=6", devices=WORLD, batch=BATCH, dropout=0.1)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-3000:])
    assert (root / "ckpt" / "last.ckpt").exists() and not list(root.glob("logs/*/spine/final"))
    assert torch.load(root / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == EVERY
    resumed = _spine_fit((root / "config.yaml").read_text(), root, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    # the resumed ranks trained on exactly the samples the uninterrupted run used for steps 5..20,
    # and their pre-step losses (so the weights at every step) are bitwise those of the reference
    ref0, ref1 = _records(ref_probe, WORLD)
    res0, res1 = _records(probe, WORLD)
    assert [r["idx"] for r in res0["train"]] == [r["idx"] for r in ref0["train"][EVERY:]]
    assert [r["idx"] for r in res1["train"]] == [r["idx"] for r in ref1["train"][EVERY:]]
    assert [r["loss_sum"] for r in res0["train"]] == [r["loss_sum"] for r in ref0["train"][EVERY:]]
    a, b = _final_weights(ref_root), load_file(next(root.glob("logs/version_1/spine/final/model.safetensors")))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after a DDP resume"
    # dropout really was on: the same data at dropout 0 gives other weights
    c = _final_weights(runs["ddp"][1])
    assert any(not torch.equal(a[k], c[k]) for k in a)


# FSDP2 through Lightning's ModelParallelStrategy (gloo on CPU): one shard per rank, no tensor parallelism
FSDP = "{class_path: lightning.pytorch.strategies.ModelParallelStrategy, " \
       "init_args: {data_parallel_size: 2, tensor_parallel_size: 1}}"


@pytest.mark.parametrize("strategy", ["ddp", FSDP], ids=["ddp", "fsdp2"])
def test_token_normalisation_is_global_under_ddp(tmp_path, strategy):
    """Ranks with 30+22 vs 4+6 target tokens, 2 micro-batches each: the step's gradient must be the
    gradient of (sum of all 62 token losses) / 62, identical on both ranks.

    No fixed reference is passed (as in the instruction and classifier stages), so each rank's first
    micro-batch token count (30 vs 4) would be its own divisor unless the ranks agree on one. With
    AdamW and clipping a uniformly mis-scaled gradient barely changes a trajectory, so the gradient
    itself is compared here. Under FSDP2 each rank holds a shard of the gradient; the probe saves
    the gathered full tensors, which must equal the same reference."""
    pass_reference = False
    from ddp_probe import GradProbeModule, RAGGED_VALID, ragged_samples
    from spine.training import cross_entropy_sum

    probe = tmp_path / "probe"
    cfg = RAGGED_CONFIG.format(root=tmp_path, probe=probe, pass_reference=str(pass_reference).lower(),
                               strategy=strategy, accelerator=ACCELERATOR)
    done = _spine_fit(cfg, tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    g0, g1 = (load_file(probe / f"grads.rank{r}.safetensors") for r in range(2))
    assert g0.keys() == g1.keys() and all(torch.equal(g0[k], g1[k]) for k in g0), "ranks hold different grads"

    ref = GradProbeModule(model="gpt2-tiny", model_overrides={"d_model": 32, "n_layer": 2, "n_head": 2,
                                                               "dropout": 0.0}, vocab_size=64, context_length=16)
    ref.model.load_state_dict(load_file(probe / "init.safetensors"))
    ref.model.train()
    batch = {k: torch.stack([s[k] for s in ragged_samples()]) for k in ("input_ids", "targets")}
    loss_sum, n = cross_entropy_sum(ref.model(batch["input_ids"]), batch["targets"])
    assert int(n) == sum(RAGGED_VALID)
    (loss_sum / n).backward()
    expected = {k: p.grad for k, p in ref.model.named_parameters() if p.grad is not None}
    assert expected.keys() == g0.keys()
    for k in expected:
        torch.testing.assert_close(g0[k], expected[k], rtol=GRAD_RTOL, atol=GRAD_ATOL, msg=lambda m: f"{k}: {m}")
    # a per-rank token mean (what a missing all-reduce would give) is far from it
    local = {}
    for rank in range(2):
        ref.model.zero_grad()
        s = [x for i, x in enumerate(ragged_samples()) if i % 2 == rank]
        ls, nn_ = cross_entropy_sum(ref.model(torch.stack([x["input_ids"] for x in s])),
                                    torch.stack([x["targets"] for x in s]))
        (ls / nn_ / 2).backward()
        for k, p in ref.model.named_parameters():
            if p.grad is not None:
                local[k] = local.get(k, 0) + p.grad.clone()
    assert max((local[k] - expected[k]).abs().max().item() for k in expected) > 100 * GRAD_ATOL
