"""FSDP2 on CPU: the real `spine fit` with Lightning's ModelParallelStrategy (data_parallel_size=2,
tensor_parallel_size=1), two gloo processes, each holding half of every parameter and optimizer state.

Checked against a single-process run with the same global batch (2 ranks x 4 vs 1 x 8, as tests/test_ddp.py):
- the loss trajectory, val_loss (synced) and final weights, with gradient clipping on (the clip norm
  is computed over the shards of all ranks);
- the Lightning checkpoint is a sharded directory (one shard file per rank); `spine consolidate`
  turns it, offline in one process, into a spine checkpoint whose logits on one device equal the
  live sharded model's logits bitwise, and whose weights equal SpineCheckpoint's gathered export;
- resume from the sharded checkpoint after SIGKILL gives bitwise the uninterrupted run;
- ReasoningEval and SampleGeneration run per rank on a gathered copy; ReasoningEval's records are
  gathered to rank 0, which writes the one trace file; rank 1 writes nothing but its checkpoint shards.
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
from fit_runner import EVERY, STEPS, callback, final_weights, records, run, spine_fit  # noqa: E402

FSDP = {"class_path": "lightning.pytorch.strategies.ModelParallelStrategy",
        "init_args": {"data_parallel_size": 2, "tensor_parallel_size": 1}}
WORLD, BATCH = 2, 4
# FSDP reduce-scatters gradient shards: like DDP, a different float32 summation order than one batch of 8
LOSS_ATOL, WEIGHT_ATOL = 1e-5, 1e-5
N_EVAL = 12
# the evaluation's prompts (up to 87 tokens) + 6 new tokens need a context of 128; the data windows stay 32
MODEL = {"context_length": 128}
REASONING = [callback("callbacks.ReasoningEval", problems=f"synthetic:level=1,n={N_EVAL},seed=123,split=eval",
                      template="synthetic", sampling={"max_new_tokens": 6, "stop": ["\nQuestion:"]}, batch_size=4)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("fsdp")
    fsdp = run(base, "fsdp", devices=WORLD, batch=BATCH, strategy=FSDP, callbacks=REASONING, model_overrides=MODEL)
    assert fsdp[0].returncode == 0, fsdp[0].stderr[-4000:]
    single = run(base, "single", devices=1, batch=WORLD * BATCH, strategy="auto", model_overrides=MODEL)
    assert single[0].returncode == 0, single[0].stderr[-4000:]
    return {"base": base, "fsdp": fsdp, "single": single}


def test_fsdp_matches_a_single_process(runs):
    _, root, probe = runs["fsdp"]
    _, single_root, single_probe = runs["single"]
    r0, r1 = records(probe, WORLD)
    (one,) = records(single_probe, 1)
    assert len(r0["train"]) == len(one["train"]) == STEPS
    diffs = []
    for a, b, s in zip(r0["train"], r1["train"], one["train"]):
        assert sorted(a["idx"] + b["idx"]) == sorted(s["idx"])  # the same global batch, split in two
        diffs.append(abs((a["loss_sum"] + b["loss_sum"]) / (a["n"] + b["n"]) - s["loss_sum"] / s["n"]))
    assert max(diffs) <= LOSS_ATOL, diffs
    assert one["train"][-1]["loss_sum"] / one["train"][-1]["n"] < one["train"][0]["loss_sum"] / one["train"][0]["n"] - 0.1
    # val_loss: a synced torchmetrics value, the same on both ranks and equal to the single process's
    assert [v["val_loss"] for v in r0["val"]] == [v["val_loss"] for v in r1["val"]]
    for d, s in zip(r0["val"], one["val"]):
        assert abs(d["val_loss"] - s["val_loss"]) <= LOSS_ATOL
    a, b = final_weights(root), final_weights(single_root)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=WEIGHT_ATOL, rtol=0, msg=lambda m: f"{k}: {m}")


def test_sharded_checkpoint_consolidates_to_identical_logits(runs, tmp_path, capsys):
    from spine.checkpoint import load_checkpoint
    from spine.commands import main
    from callbacks.checkpoint import probe_logits

    _, root, probe = runs["fsdp"]
    shards = root / "ckpt" / f"epoch=1-step={STEPS}.ckpt"
    assert shards.is_dir(), sorted(p.name for p in (root / "ckpt").iterdir())
    files = {p.name: p.stat().st_size for p in shards.iterdir()}
    assert {".metadata", "meta.pt", "__0_0.distcp", "__1_0.distcp"} <= files.keys(), files
    # each rank wrote its own half of the weights and optimizer state (sizes within 30-70% of the total)
    share = files["__0_0.distcp"] / (files["__0_0.distcp"] + files["__1_0.distcp"])
    assert 0.3 < share < 0.7, files

    out = tmp_path / "consolidated"
    assert main(["consolidate", str(shards), str(out)]) == 0
    assert f"step {STEPS}, with tokenizer" in capsys.readouterr().out
    model, tok = load_checkpoint(out)
    assert tok is not None and tok.name == "byte"
    rec = records(probe, WORLD)[0]
    live = torch.tensor(rec["probe_logits"])
    # one process, one device (rank 0's) == the sharded forward of both ranks together
    assert torch.equal(probe_logits(model.to(rec["probe_device"])), live)
    exported = final_weights(root)  # SpineCheckpoint's gathered export at fit end
    got = load_file(out / "model.safetensors")
    assert got.keys() == exported.keys() and all(torch.equal(got[k], exported[k]) for k in got)
    # the same command reads a plain (single-process) Lightning checkpoint file
    _, single_root, _ = runs["single"]
    out2 = tmp_path / "from-file"
    assert main(["consolidate", str(single_root / "ckpt" / "last.ckpt"), str(out2)]) == 0
    a, b = load_file(out2 / "model.safetensors"), final_weights(single_root)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_rank_one_writes_only_its_own_shards(runs):
    _, root, probe = runs["fsdp"]
    writes = records(probe, WORLD)[1]["writes"]
    assert writes, "the audit hook saw no writes at all (rank 1 must write its shards)"
    for event, *paths in writes:
        rel = Path(paths[0]).resolve().relative_to(root.resolve())
        # every rank creates the checkpoint directory (exist_ok) and writes its own shard file into it
        own_shard = rel.parts[0] == "ckpt" and (rel.name == "__1_0.distcp" or
                                                (event == "os.mkdir" and rel.suffix == ".ckpt"))
        assert own_shard, (event, str(rel))
    assert sorted(p.name for p in root.glob("logs/*")) == ["latest", "version_0"]  # latest: rank 0's link


def test_reasoning_eval_splits_problems_and_gathers_once(runs):
    import json

    _, root, probe = runs["fsdp"]
    traces = sorted((root / "logs" / "version_0" / "traces").iterdir())
    assert [p.name for p in traces] == [f"greedy-step{STEPS}.jsonl"]  # one file, written by rank 0 only
    recs = [json.loads(line) for line in traces[0].read_text().split("\n")[1:] if line]
    ids = [r["problem_id"] for r in recs]
    assert len(ids) == len(set(ids)) == N_EVAL  # each problem exactly once
    correct = sum(r["correct"] for r in recs)
    # logged once (rank 0's logger), from the gathered records; both ranks got the same summary
    rows = [line.split(",") for line in (root / "logs" / "version_0" / "metrics.csv").read_text().splitlines()]
    col = rows[0].index("reasoning/greedy_acc")
    logged = [float(r[col]) for r in rows[1:] if r[col]]
    assert logged == [pytest.approx(correct / N_EVAL)]


def test_resume_from_sharded_checkpoint_is_bitwise(runs):
    base = runs["base"]
    _, ref_root, ref_probe = runs["fsdp"]
    killed, root, probe = run(base, "killed", "--trainer.callbacks+=ddp_probe.KillGroupAtStep",
                              "--trainer.callbacks.step=6", devices=WORLD, batch=BATCH, strategy=FSDP,
                              callbacks=REASONING, model_overrides=MODEL)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-3000:])
    assert (root / "ckpt" / "last.ckpt" / "meta.pt").is_file()
    resumed = spine_fit((root / "config.yaml").read_text(), root, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    ref0, _ = records(ref_probe, WORLD)
    res0, _ = records(probe, WORLD)
    assert [r["idx"] for r in res0["train"]] == [r["idx"] for r in ref0["train"][EVERY:]]
    assert [r["loss_sum"] for r in res0["train"]] == [r["loss_sum"] for r in ref0["train"][EVERY:]]
    a = final_weights(ref_root)
    b = load_file(next(root.glob("logs/version_1/spine/final/model.safetensors")))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ clear errors, no processes needed
class _Mesh:
    """Stands in for a DeviceMesh in the checks that run before any sharding."""

    def __init__(self, dp: int, tp: int):
        self.mesh_dim_names, self._sizes = ("data_parallel", "tensor_parallel"), {"data_parallel": dp,
                                                                                 "tensor_parallel": tp}

    def size(self):
        return self._sizes["data_parallel"] * self._sizes["tensor_parallel"]

    def __getitem__(self, name):
        return type("Sub", (), {"size": lambda _self, n=self._sizes[name]: n})()


TINY = {"model": "gpt2-tiny", "model_overrides": {"d_model": 32, "n_layer": 1, "n_head": 2},
        "vocab_size": 64, "context_length": 16}


def test_stages_that_call_the_model_outside_forward_refuse_fsdp():
    from modules.classifier import ClassifierModule

    m = ClassifierModule(num_classes=2, **TINY)
    m._device_mesh = _Mesh(2, 1)
    with pytest.raises(ValueError, match=r"ClassifierModule does not support ModelParallelStrategy.*strategy=ddp"):
        m.configure_model()


def test_tensor_parallel_mesh_and_chunked_ce_are_refused_with_the_fix():
    from modules import PretrainModule

    m = PretrainModule(**TINY)
    m._device_mesh = _Mesh(1, 2)  # Lightning's default sizes on one node: all devices tensor-parallel
    with pytest.raises(ValueError, match=r"data_parallel_size=2 --trainer.strategy.tensor_parallel_size=1"):
        m.configure_model()
    m = PretrainModule(chunked_ce=True, **TINY)
    m._sharded = True  # as after sharding
    with pytest.raises(ValueError, match="chunked_ce is not supported with ModelParallelStrategy"):
        m.configure_model()


def test_consolidate_errors_name_the_path(tmp_path, capsys):
    from spine.commands import main

    assert main(["consolidate", str(tmp_path / "nope.ckpt"), str(tmp_path / "o1")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "__0_0.distcp").write_bytes(b"x")
    assert main(["consolidate", str(tmp_path / "shards"), str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "shards" in err and ".metadata" in err and "meta.pt" in err
    torch.save({"state_dict": {}, "global_step": 3}, tmp_path / "foreign.ckpt")
    assert main(["consolidate", str(tmp_path / "foreign.ckpt"), str(tmp_path / "o3")]) == 2
    assert "foreign.ckpt: has no 'spine_model_config'" in capsys.readouterr().err
    (tmp_path / "junk.ckpt").write_bytes(b"not a pickle")
    assert main(["consolidate", str(tmp_path / "junk.ckpt"), str(tmp_path / "o4")]) == 2
    assert "junk.ckpt (12 bytes) is truncated or not a PyTorch checkpoint" in capsys.readouterr().err
    from spine.config import ModelConfig
    from spine.distributed import MODEL_CONFIG_KEY, TOKENIZER_FILES_KEY
    from spine.model import GPT

    cfg = ModelConfig.from_preset("gpt2-tiny", vocab_size=64, context_length=16, d_model=32, n_layer=1, n_head=2)
    weights = {f"model.{k}": v for k, v in GPT(cfg).state_dict().items()}
    torch.save({"state_dict": weights, MODEL_CONFIG_KEY: cfg.to_dict(),
                TOKENIZER_FILES_KEY: {"../escape.json": torch.zeros(3, dtype=torch.uint8)}}, tmp_path / "evil.ckpt")
    assert main(["consolidate", str(tmp_path / "evil.ckpt"), str(tmp_path / "o5")]) == 2
    assert "tokenizer file name '../escape.json' must be a plain file name" in capsys.readouterr().err
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 6)) and not (tmp_path / "escape.json").exists()
