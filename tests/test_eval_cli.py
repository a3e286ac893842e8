"""The evaluation surface end to end on a tiny checkpoint: `spine eval`, `spine report`,
`spine validate --config configs/eval/synthetic.yaml` and the `ReasoningEval` callback during fit.

Accuracies of an untrained model are whatever they are; the tests check that each path runs,
writes well-formed traces, resumes, and turns each kind of bad input into exit code 2 and one line.
"""
from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from callbacks import ReasoningEval
from datamodules import PretrainDataModule, ReasoningDataModule
from modules import PretrainModule, ReasoningEvalModule
from modules.cli import main as cli_main
from spine.checkpoint import checkpoint_sha256, save_checkpoint
from spine.commands import main
from spine.config import ModelConfig
from spine.model import GPT
from spine.params import SamplingParams
from spine.reasoning import pipelines
from spine.reasoning.problems import load_problems
from spine.tokenizer import get_tokenizer
from spine.traces import read_traces

REPO = Path(__file__).resolve().parents[1]
SYNTH = "synthetic:level=1,n=6,seed=7,split=eval"
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter", "ignore:.*does not have many workers",
                                        "ignore:.*LeafSpec", "ignore:The number of training batches")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("ckpt")
    model = GPT(ModelConfig.from_preset("gpt2-tiny", vocab_size=257, context_length=256))
    save_checkpoint(d / "tiny", model, get_tokenizer("byte"))
    save_checkpoint(d / "no-tokenizer", model)
    return d / "tiny"


def _eval(capsys, *args) -> tuple[int, str, str]:
    code = main(["eval", *[str(a) for a in args]])
    out, err = capsys.readouterr()
    return code, out, err


def _base(ckpt: Path, traces: Path) -> list:
    return ["--checkpoint", ckpt, "--problems", SYNTH, "--template", "synthetic", "--sampling.max_new_tokens", 12,
            "--device", "cpu", "--traces", traces]


def test_eval_greedy_prints_summary_and_resumes(capsys, ckpt, tmp_path):
    traces = tmp_path / "greedy.jsonl"
    code, out, err = _eval(capsys, *_base(ckpt, traces), "--limit", 5)
    assert code == 0, err
    assert "| group | n | correct | accuracy | 95% CI |" in out and "| all | 5 |" in out
    assert f"traces: {traces}" in out
    header, records = read_traces(traces)
    assert len(records) == 5 and all(r.metadata["final"] for r in records)
    cfg = header["config"]
    assert cfg["source"] == SYNTH and len(cfg["checkpoint_sha256"]) == 64
    assert cfg["pipeline"]["sampling"]["stop"] == ["\nQuestion:"]  # the synthetic template's default
    assert cfg["pipeline"]["pipeline"] == "single" and cfg["pipeline"]["sampling"]["temperature"] == 0.0
    assert cfg["pipeline"]["sampling"]["max_new_tokens"] == 12
    assert cfg["extra"] == {"dtype": "float32"}
    # a rerun with a larger limit resumes: only the sixth problem is new
    code, out, err = _eval(capsys, *_base(ckpt, traces), "--limit", 6)
    assert code == 0, err
    assert "5 resumed from the trace file" in out and "| all | 6 |" in out
    assert len(read_traces(traces)[1]) == 6


def test_eval_self_consistency_then_report_png(capsys, ckpt, tmp_path):
    traces = tmp_path / "sc3.jsonl"
    code, out, err = _eval(capsys, *_base(ckpt, traces), "--pipeline", "sc", "--sampling.n", 3,
                           "--sampling.temperature", 1.0, "--sampling.seed", 5,
                           "--sampling.stop", json.dumps(["\nQuestion:", "\n\n"]))
    assert code == 0, err
    assert "sc3, temperature 1.0" in out and "| all | 6 |" in out
    header, records = read_traces(traces)
    assert len(records) == 18 and sum(r.metadata["final"] for r in records) == 6
    assert header["config"]["pipeline"] == {"pipeline": "self_consistency", "sampling": {
        "temperature": 1.0, "top_k": None, "top_p": None, "seed": 5, "max_new_tokens": 12,
        "stop": ["\nQuestion:", "\n\n"], "stop_token_ids": [], "n": 3}, "tiebreak": "logprob"}  # real newlines
    assert not any("\n\n" in r.completion or "\nQuestion:" in r.completion for r in records)
    png = tmp_path / "plots" / "acc.png"
    code = main(["report", str(traces), "--png", str(png)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "## sc3.jsonl" in out and "| k | 1 | 2 | 3 |" in out and f"plot: {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_of_a_missing_file_is_a_usage_error(capsys, tmp_path):
    assert main(["report", str(tmp_path / "nope.jsonl")]) == 2
    assert "trace file not found" in capsys.readouterr().err


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", ["template", "empty", "fields", "other-config", "no-tokenizer"])
def test_eval_bad_input_is_exit_2_with_one_line(capsys, ckpt, tmp_path, case):
    args = _base(ckpt, tmp_path / "t.jsonl")
    if case == "template":
        args += ["--template", "chatty"]
        expected = "unknown prompt template 'chatty'; known templates: math, math_cot, plain, synthetic"
    elif case == "empty":
        args[3] = _write(tmp_path / "empty.json", "")
        expected = "no problems in"
    elif case == "fields":
        args[3] = _write(tmp_path / "p.jsonl", json.dumps({"problem": "1+1?", "solution": "2"}) + "\n")
        args += ["--format", "math500"]
        expected = "record 0 has no field 'answer'"
    elif case == "other-config":
        assert _eval(capsys, *args, "--limit", 1)[0] == 0
        args += ["--dtype", "bfloat16"]
        expected = f"trace file {tmp_path / 't.jsonl'} was written by another run config"
    else:
        args[1] = ckpt.parent / "no-tokenizer"
        expected = f"checkpoint {ckpt.parent / 'no-tokenizer'} has no tokenizer; pass --tokenizer"
    code, out, err = _eval(capsys, *args)
    assert code == 2
    assert err.startswith("spine eval: error: ") and expected in err and err.count("\n") == 1
    assert "Traceback" not in err


def test_validate_with_the_eval_config(ckpt, tmp_path):
    traces = tmp_path / "val.jsonl"
    code = cli_main(["validate", "--config", str(REPO / "configs/eval/synthetic.yaml"),
                     "--model.init_args.init_from", str(ckpt), "--model.init_args.trace_path", str(traces),
                     "--data.init_args.source", SYNTH, "--trainer.accelerator", "cpu",
                     "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
                     "--trainer.logger", json.dumps({"class_path": "lightning.pytorch.loggers.CSVLogger",
                                                     "init_args": {"save_dir": str(tmp_path), "name": "logs"}})])
    assert code == 0
    rows = list(csv.DictReader(open(next(tmp_path.glob("logs/version_*/metrics.csv")))))
    assert len(rows) == 1 and 0.0 <= float(rows[0]["val_acc"]) <= 1.0 and float(rows[0]["val_problems"]) == 6
    header, records = read_traces(traces)
    assert len(records) == 6 and header["config"]["source"] == SYNTH
    assert header["config"]["checkpoint_sha256"] == checkpoint_sha256(ckpt)
    assert float(rows[0]["val_acc"]) == pytest.approx(sum(r.correct for r in records) / 6)


def _tiny_lm(tmp_path):
    """A seeded tiny byte-level GPT and its synthetic level-1 data: the fits the ReasoningEval tests run."""
    torch.manual_seed(0)
    dm = PretrainDataModule(source="synthetic", tokenizer="byte", context_length=128, batch_size=4,
                            synthetic_problems=200, synthetic_levels=[1], cache_dir=str(tmp_path / "cache"))
    module = PretrainModule(model="gpt2-tiny", vocab_size=dm.vocab_size, context_length=128, pad_id=dm.pad_id)
    return dm, module


def test_reasoning_eval_callback_during_fit(tmp_path):
    dm, module = _tiny_lm(tmp_path)
    callback = ReasoningEval(problems="synthetic:level=1,n=50,seed=7,split=eval", limit=4,
                             sampling=SamplingParams(max_new_tokens=8, stop=("\nQuestion:",)),
                             pipelines=[{"name": "greedy"}, {"name": "sc", "n": 2, "temperature": 1.0}])
    logger = CSVLogger(tmp_path, name="logs")
    trainer = L.Trainer(max_steps=3, accelerator="cpu", devices=1, default_root_dir=tmp_path, logger=logger,
                        use_distributed_sampler=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=[callback])
    trainer.fit(module, datamodule=dm)
    assert [r["pipeline"] for r in callback.results] == ["greedy", "sc2"]
    for r in callback.results:
        assert r["step"] == 3 and r["n"] == 4 and 0.0 <= r["accuracy"] <= 1.0
        assert Path(r["trace"]).is_file() and Path(r["trace"]).parent == Path(logger.log_dir) / "traces"
    assert len(read_traces(callback.results[0]["trace"])[1]) == 4
    assert len(read_traces(callback.results[1]["trace"])[1]) == 8
    metrics = Path(logger.log_dir) / "metrics.csv"
    rows = list(csv.DictReader(open(metrics)))
    logged = {k: float(v) for row in rows for k, v in row.items() if v and k.startswith("reasoning/")}
    assert logged == {"reasoning/greedy_acc": callback.results[0]["accuracy"],
                      "reasoning/sc2_acc": callback.results[1]["accuracy"]}
    _, greedy = read_traces(callback.results[0]["trace"])
    assert callback.results[0]["accuracy"] == sum(r.correct for r in greedy) / 4


def test_reasoning_eval_fills_its_batch_before_decoding(tmp_path, monkeypatch):
    # a check decodes its problems in as few generate calls as its batch allows: 70 problems at batch 200
    # in one call (chunks of 64 made two), sc with n=2 at batch 8 in chunks of 16 problems (5 calls)
    from spine.engine import Engine

    calls = []
    real = Engine.generate

    def counting(self, prompts, *args, **kwargs):
        calls.append(len(prompts))
        return real(self, prompts, *args, **kwargs)

    monkeypatch.setattr(Engine, "generate", counting)
    dm, module = _tiny_lm(tmp_path)
    sampling = SamplingParams(max_new_tokens=4, stop=("\nQuestion:",))
    wide = ReasoningEval(problems="synthetic:level=1,n=100,seed=7,split=eval", limit=70, sampling=sampling,
                         batch_size=200, name="wide")
    narrow = ReasoningEval(problems="synthetic:level=1,n=100,seed=7,split=eval", limit=70, sampling=sampling,
                           batch_size=8, name="narrow", pipelines=[{"name": "sc", "n": 2, "temperature": 1.0}])
    trainer = L.Trainer(max_steps=1, accelerator="cpu", devices=1, default_root_dir=tmp_path, logger=False,
                        use_distributed_sampler=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=[wide, narrow])
    trainer.fit(module, datamodule=dm)
    assert calls == [70] + [16, 16, 16, 16, 6]
    assert wide.results[0]["n"] == narrow.results[0]["n"] == 70


def test_reasoning_eval_refuses_prompts_that_do_not_fit_before_the_first_step(tmp_path):
    """The pipelines would cut such prompts from the left (scoring the model on cut questions); the callback
    refuses them in one line that names the source and the sizes, before any training step runs."""
    dm = PretrainDataModule(source="synthetic", tokenizer="byte", context_length=128, batch_size=4,
                            synthetic_problems=200, synthetic_levels=[1], cache_dir=str(tmp_path / "cache"))
    module = PretrainModule(model="gpt2-tiny", vocab_size=dm.vocab_size, context_length=128, pad_id=dm.pad_id)
    source = "synthetic:level=1,n=5,seed=7,split=eval"
    # these five prompts are 79-83 byte tokens: with 50 new tokens none fits the 128-token context
    callback = ReasoningEval(problems=source, every_n_steps=1,
                             sampling=SamplingParams(max_new_tokens=50, stop=("\nQuestion:",)))
    trainer = L.Trainer(max_steps=2, accelerator="cpu", devices=1, default_root_dir=tmp_path, logger=False,
                        use_distributed_sampler=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=[callback])
    with pytest.raises(ValueError, match=rf"ReasoningEval: {source}: 5 of 5 prompts do not fit: the longest, "
                                         rf"problem 0 \(id 'arith-eval-L1-s7-0'\), is 83 tokens, and with "
                                         rf"sampling.max_new_tokens 50 it does not fit the model's context of 128 "
                                         rf"tokens; set sampling.max_new_tokens to at most 45 to fit them all"):
        trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 0 and callback.results == []
    # a pipeline's own budget counts: 8 shared new tokens fit, sc's 50 do not
    per_pipeline = ReasoningEval(problems=source, every_n_steps=1,
                                 sampling=SamplingParams(max_new_tokens=8, stop=("\nQuestion:",)),
                                 pipelines=[{"name": "greedy"}, {"name": "sc", "n": 2, "max_new_tokens": 50}])
    trainer = L.Trainer(max_steps=2, accelerator="cpu", devices=1, default_root_dir=tmp_path, logger=False,
                        use_distributed_sampler=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=[per_pipeline])
    with pytest.raises(ValueError, match="with sampling.max_new_tokens 50 it does not fit"):
        trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 0 and per_pipeline.results == []


def test_named_reasoning_evals_keep_apart_and_stop_a_fit_at_the_check(tmp_path):
    """A stopping check and a held-out evaluation in one fit: separate metrics and trace files, and
    EarlyStopping on the check's metric ends the fit at the validation of the step the check ran."""
    from lightning.pytorch.callbacks import EarlyStopping

    dm, module = _tiny_lm(tmp_path)
    sampling = SamplingParams(max_new_tokens=4, stop=("\nQuestion:",))
    check = ReasoningEval(problems="synthetic:level=1,n=20,seed=99,split=train", limit=3, sampling=sampling,
                          every_n_steps=2, at_fit_end=False, name="check", start_step=4)
    heldout = ReasoningEval(problems="synthetic:level=1,n=20,seed=7,split=eval", limit=2, sampling=sampling,
                            name="heldout")
    stop = EarlyStopping(monitor="reasoning/check/greedy_acc", mode="max", stopping_threshold=-1.0, strict=False,
                         patience=1000, check_on_train_epoch_end=False)
    logger = CSVLogger(tmp_path, name="logs")
    trainer = L.Trainer(max_steps=8, accelerator="cpu", devices=1, default_root_dir=tmp_path, logger=logger,
                        val_check_interval=2, check_val_every_n_epoch=None, limit_val_batches=1,
                        use_distributed_sampler=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[check, heldout, stop])
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 4 and trainer.should_stop  # no check at step 2 (start_step 4)
    assert [(r["step"], r["n"]) for r in check.results] == [(4, 3)]
    assert [(r["step"], r["n"]) for r in heldout.results] == [(4, 2)]
    traces = Path(logger.log_dir) / "traces"
    assert sorted(p.name for p in traces.iterdir()) == ["check-greedy-step4.jsonl", "heldout-greedy-step4.jsonl"]
    rows = list(csv.DictReader(open(Path(logger.log_dir) / "metrics.csv")))
    logged = {k: float(v) for row in rows for k, v in row.items() if v and k.startswith("reasoning/")}
    assert logged == {"reasoning/check/greedy_acc": check.results[0]["accuracy"],
                      "reasoning/heldout/greedy_acc": heldout.results[0]["accuracy"]}
    with pytest.raises(ValueError, match="name must be letters"):
        ReasoningEval(name="a/b")
    with pytest.raises(ValueError, match="start_step must be >= 0"):
        ReasoningEval(start_step=-1)
    with pytest.raises(ValueError, match="start_step 5 needs every_n_steps > 0"):
        ReasoningEval(start_step=5)


def _scripted_accuracy_fit(tmp_path, monkeypatch, correct_of_4):
    """A tiny byte-level pretraining setup whose ReasoningEval checks report `correct_of_4[i]` / 4 at the
    i-th check (the real evaluation still runs). Returns (data module, module, {step: lm_head weight})."""
    import dataclasses

    import callbacks.reasoning_eval as rev

    real, scripted, weights = rev.evaluate, iter(correct_of_4), {}

    def scripted_evaluate(problems, engine, pipeline, **kw):
        report = real(problems, engine, pipeline, **kw)
        k = next(scripted)
        weights[kw["extra"]["global_step"]] = module.model.lm_head.weight.detach().clone()
        return dataclasses.replace(report, summary=dataclasses.replace(report.summary, n_correct=k, accuracy=k / 4))

    monkeypatch.setattr(rev, "evaluate", scripted_evaluate)
    dm, module = _tiny_lm(tmp_path)
    return dm, module, weights


def test_reasoning_eval_target_keeps_the_weights_closest_to_a_level(tmp_path, monkeypatch):
    """`target` logs |accuracy - target| beside the accuracy; ModelCheckpoint on that gap (mode min) keeps
    the step whose accuracy is nearest the level, whatever the curve does before and after it (and only
    warns at the steps before `start_step`, where the gap is not logged yet), and `spine consolidate` turns
    that .ckpt into the weights of that step."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from spine.checkpoint import load_checkpoint

    dm, module, weights = _scripted_accuracy_fit(tmp_path, monkeypatch, [1, 4, 2, 3, 0, 0])  # steps 3..8
    level = ReasoningEval(problems="synthetic:level=1,n=20,seed=99,split=train", limit=4, every_n_steps=1,
                          sampling=SamplingParams(max_new_tokens=4, stop=("\nQuestion:",)), at_fit_end=False,
                          name="level", target=0.6, start_step=3)
    keep = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="reasoning/level/greedy_gap", mode="min",
                           save_top_k=1, every_n_train_steps=1, filename="closest")
    logger = CSVLogger(tmp_path, name="logs")
    trainer = L.Trainer(max_steps=8, accelerator="cpu", devices=1, default_root_dir=tmp_path, logger=logger,
                        use_distributed_sampler=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=[level, keep])
    trainer.fit(module, datamodule=dm)
    rows = list(csv.DictReader(open(Path(logger.log_dir) / "metrics.csv")))
    gaps = {int(r["step"]): float(r["reasoning/level/greedy_gap"]) for r in rows if r.get("reasoning/level/greedy_gap")}
    # accuracies 0.25 / 1.0 / 0.5 / 0.75 / 0 / 0 -> gaps to 0.6: 0.35 / 0.4 / 0.1 / 0.15 / 0.6 / 0.6
    assert gaps == pytest.approx({3: 0.35, 4: 0.4, 5: 0.1, 6: 0.15, 7: 0.6, 8: 0.6})
    assert float(keep.best_model_score) == pytest.approx(0.1)
    assert torch.load(keep.best_model_path, weights_only=False, map_location="cpu")["global_step"] == 5
    assert main(["consolidate", keep.best_model_path, str(tmp_path / "closest")]) == 0
    model, _ = load_checkpoint(tmp_path / "closest")
    assert torch.equal(model.lm_head.weight, weights[5]) and not torch.equal(weights[5], weights[8])
    for bad in (30, True, "0.3"):
        with pytest.raises(ValueError, match="target must be an accuracy between 0 and 1"):
            ReasoningEval(target=bad)


def test_reasoning_eval_stop_above_ends_the_fit_at_the_first_check_that_reaches_it(tmp_path, monkeypatch):
    """`stop_above` stops the fit after the first periodic check at or above it, without validation, so it
    works beside the closest-level ModelCheckpoint (whose gap is missing before `start_step`) even with the
    validation Lightning runs at the stop; bad values are refused in one line."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    dm, module, weights = _scripted_accuracy_fit(tmp_path, monkeypatch, [1, 2, 3, 4, 4])  # steps 4, 6, 8, ...
    # stop_above equal to an accuracy reached: the comparison is >=
    level = ReasoningEval(problems="synthetic:level=1,n=20,seed=99,split=train", limit=4, every_n_steps=2,
                          sampling=SamplingParams(max_new_tokens=4, stop=("\nQuestion:",)), at_fit_end=False,
                          name="level", target=0.5, start_step=4, stop_above=0.75)
    keep = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="reasoning/level/greedy_gap", mode="min",
                           save_top_k=1, every_n_train_steps=2, filename="closest")
    trainer = L.Trainer(max_steps=20, accelerator="cpu", devices=1, default_root_dir=tmp_path, logger=False,
                        use_distributed_sampler=False, enable_progress_bar=False, enable_model_summary=False,
                        val_check_interval=20, check_val_every_n_epoch=None, limit_val_batches=1,
                        num_sanity_val_steps=0, callbacks=[level, keep])
    trainer.fit(module, datamodule=dm)
    # accuracies 0.25 / 0.5 / 0.75 at steps 4 / 6 / 8: the fit ends at step 8, nothing is checked after it,
    # and the weights kept are step 6's (gap 0), not the stop step's
    assert trainer.global_step == 8 and sorted(weights) == [4, 6, 8]
    assert torch.load(keep.best_model_path, weights_only=False, map_location="cpu")["global_step"] == 6
    for bad in (1.5, True, "0.5"):
        with pytest.raises(ValueError, match="stop_above must be an accuracy between 0 and 1"):
            ReasoningEval(stop_above=bad, every_n_steps=1)
    for every in (0, -1):
        with pytest.raises(ValueError, match="stop_above 0.5 needs every_n_steps > 0"):
            ReasoningEval(stop_above=0.5, every_n_steps=every)


def test_eval_module_resumes_and_counts_resumed_verdicts(ckpt, tmp_path, monkeypatch):
    """`spine validate`'s module on a checkpoint saved without a tokenizer (named instead), twice."""
    traces = tmp_path / "v.jsonl"
    no_tok = str(ckpt.parent / "no-tokenizer")

    def validate(limit: int, **kw) -> dict:
        module = ReasoningEvalModule(init_from=no_tok, template="synthetic", trace_path=str(traces),
                                     sampling=SamplingParams(max_new_tokens=8, stop=("\nQuestion:",)), **kw)
        trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path,
                            enable_progress_bar=False, enable_model_summary=False)
        return trainer.validate(module, datamodule=ReasoningDataModule(source=SYNTH, limit=limit, batch_size=3),
                                verbose=False)[0]

    with pytest.raises(ValueError, match=f"checkpoint {no_tok} has no tokenizer; pass model.init_args.tokenizer"):
        validate(4)
    first = validate(4, tokenizer="byte")
    assert first["val_problems"] == 4 and len(read_traces(traces)[1]) == 4
    second = validate(6, tokenizer="byte")
    _, records = read_traces(traces)
    assert second["val_problems"] == 6 and len(records) == 6
    assert second["val_acc"] == pytest.approx(sum(r.correct for r in records) / 6)

    def no_generation(*a, **k):
        raise AssertionError("a fully resumed run must not generate")

    monkeypatch.setattr(pipelines.Engine, "generate", no_generation)
    third = validate(6, tokenizer="byte")
    assert third == second


def test_reasoning_data_module_shards_without_repeats():
    """Under DDP rank r gets problems r, r+W, ...: disjoint, complete, none graded twice."""
    shards = []
    for rank in range(2):
        dm = ReasoningDataModule(source="synthetic:level=1,n=5,seed=1,split=eval", batch_size=2)
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        shards.append([p.id for batch in dm.val_dataloader() for p in batch])
    all_ids = [p.id for p in load_problems("synthetic:level=1,n=5,seed=1,split=eval")]
    assert shards == [all_ids[0::2], all_ids[1::2]]
    dm = ReasoningDataModule(source="synthetic:level=1,n=5,seed=1,split=eval", batch_size=2)
    assert [p.id for batch in dm.val_dataloader() for p in batch] == all_ids  # no trainer: everything


def test_reasoning_eval_rejects_bad_options_before_training():
    with pytest.raises(ValueError, match="bad options for pipeline 'sc'"):
        ReasoningEval(pipelines=[{"name": "sc", "samples": 4}])
    with pytest.raises(ValueError, match="unknown pipeline 'beam'"):
        ReasoningEval(pipelines=[{"name": "beam"}])
    with pytest.raises(ValueError, match="unknown prompt template"):
        ReasoningEval(template="nope")


def test_eval_of_an_hf_checkpoint_directory(capsys, ckpt, tmp_path):
    from spine.reasoning.evaluate import checkpoint_identity

    hf_dir = tmp_path / "hf"
    assert main(["export-hf", str(ckpt), str(hf_dir)]) == 0
    traces = tmp_path / "hf.jsonl"
    code, out, err = _eval(capsys, "--checkpoint", f"hf:{hf_dir}", "--problems", SYNTH, "--limit", 2, "--template",
                           "synthetic", "--sampling.max_new_tokens", 6, "--device", "cpu", "--traces", traces)
    assert code == 0, err
    header, records = read_traces(traces)
    assert len(records) == 2
    assert header["config"]["checkpoint_sha256"] == checkpoint_identity(f"hf:{hf_dir}")
    assert header["config"]["checkpoint_sha256"] != checkpoint_sha256(ckpt)  # another format, another identity


def test_eval_help_documents_every_option(capsys):
    assert main(["eval", "--help"]) == 0
    out = capsys.readouterr().out
    for text in ["hf:PATH", "synthetic:level=1,n=50,seed=7,split=eval", "majority vote", "resumes"]:
        assert text in " ".join(out.split()), text


def test_eval_module_needs_weights_and_a_known_template(ckpt):
    with pytest.raises(ValueError, match="needs init_from"):
        ReasoningEvalModule()
    with pytest.raises(ValueError, match="unknown prompt template 'nope'"):
        ReasoningEvalModule(init_from=str(ckpt), template="nope")


def test_reasoning_eval_forced_pipeline_checks_a_level_without_decoding(tmp_path, monkeypatch):
    """Pipeline `forced` logs the teacher-forced match rate (and its gap to `target`) of the fit's current
    weights on the problems' worked solutions, stops the fit through `stop_above` like a decoded check,
    writes no trace, and is refused with options or without worked solutions."""
    import callbacks.reasoning_eval as rev

    real, scripted, seen = rev.forced_matches_ids, iter([1, 3, 4]), []

    def scripted_forced(model, rows, **kw):
        out = real(model, rows, **kw)  # the real check runs on the fit's weights
        seen.append((len(rows), kw, out))
        k = next(scripted)
        return [True] * k + [False] * (len(rows) - k)

    monkeypatch.setattr(rev, "forced_matches_ids", scripted_forced)
    dm, module = _tiny_lm(tmp_path)
    level = ReasoningEval(problems="task:chain:level=2,n=20,seed=99,split=train", limit=4, every_n_steps=2,
                          pipelines=[{"name": "forced"}], sampling=SamplingParams(max_new_tokens=4),
                          at_fit_end=False, name="level", target=0.5, stop_above=1.0, batch_size=3)
    logger = CSVLogger(tmp_path, name="logs")
    trainer = L.Trainer(max_steps=20, accelerator="cpu", devices=1, default_root_dir=tmp_path, logger=logger,
                        use_distributed_sampler=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=[level])
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 6  # 1/4, 3/4, 4/4 at steps 2, 4, 6: stop_above 1.0 reached at step 6
    assert [(r["step"], r["pipeline"], r["accuracy"], r["trace"]) for r in level.results] == [
        (2, "forced", 0.25, None), (4, "forced", 0.75, None), (6, "forced", 1.0, None)]
    assert [(n, kw) for n, kw, _ in seen] == [(4, {"pad_id": 256, "batch_size": 3})] * 3
    assert all(out == [False] * 4 for _, _, out in seen)  # a tiny model after 6 steps writes no chain solution
    rows = list(csv.DictReader(open(Path(logger.log_dir) / "metrics.csv")))
    gaps = {int(r["step"]): float(r["reasoning/level/forced_gap"]) for r in rows if r.get("reasoning/level/forced_gap")}
    assert gaps == pytest.approx({2: 0.25, 4: 0.25, 6: 0.5})
    assert not (Path(logger.log_dir) / "traces").exists()
    with pytest.raises(ValueError, match="pipeline 'forced' takes no options"):
        ReasoningEval(pipelines=[{"name": "forced", "n": 4}])
    bare = ReasoningEval(problems="synthetic:level=1,n=4,seed=7,split=eval", pipelines=[{"name": "forced"}],
                         every_n_steps=1)
    bare._problems = None
    monkeypatch.setattr(rev, "load_problems", lambda src: [
        dataclasses.replace(p, metadata={}) for p in load_problems(src)])
    with pytest.raises(ValueError, match="has no worked solution"):
        bare._load(module)


def test_reasoning_eval_averaged_reads_the_weight_averaging_callbacks_weights(tmp_path, monkeypatch):
    """With `averaged`, each check decodes with the EMA weights of Lightning's EMAWeightAveraging (not the
    current ones), and the closest-level ModelCheckpoint then holds those same weights; without such a
    callback the fit is refused in one line."""
    from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint

    import callbacks.reasoning_eval as rev

    real, checked = rev.evaluate, {}

    def recording_evaluate(problems, engine, pipeline, **kw):
        step = kw["extra"]["global_step"]
        checked[step] = (engine.engine.model.lm_head.weight.detach().clone(),
                         module.model.lm_head.weight.detach().clone(),
                         ema._average_model.module.model.lm_head.weight.detach().clone())
        return real(problems, engine, pipeline, **kw)

    monkeypatch.setattr(rev, "evaluate", recording_evaluate)
    dm, module = _tiny_lm(tmp_path)
    ema = EMAWeightAveraging(decay=0.5)
    level = ReasoningEval(problems="synthetic:level=1,n=20,seed=99,split=train", limit=2, every_n_steps=2,
                          sampling=SamplingParams(max_new_tokens=2), at_fit_end=False, name="level", target=0.5,
                          averaged=True)
    keep = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="reasoning/level/greedy_gap", mode="min",
                           save_top_k=1, every_n_train_steps=2, filename="closest")
    trainer = L.Trainer(max_steps=4, accelerator="cpu", devices=1, default_root_dir=tmp_path, logger=False,
                        use_distributed_sampler=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=[ema, level, keep])
    trainer.fit(module, datamodule=dm)
    assert sorted(checked) == [2, 4]
    for evaluated, current, averaged in checked.values():
        assert torch.equal(evaluated, averaged) and not torch.equal(evaluated, current)
    saved = torch.load(keep.best_model_path, weights_only=False, map_location="cpu")
    assert torch.equal(saved["state_dict"]["model.lm_head.weight"], checked[saved["global_step"]][2])
    dm, module = _tiny_lm(tmp_path / "again")
    bare = L.Trainer(max_steps=1, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                     callbacks=[ReasoningEval(averaged=True)])
    with pytest.raises(ValueError, match="averaged=true evaluates the weights of a WeightAveraging callback"):
        bare.fit(module, datamodule=dm)
