"""The evaluation surface end to end on a tiny checkpoint: `spine eval`, `spine report`,
`spine validate --config configs/eval/synthetic.yaml` and the `ReasoningEval` callback during fit.

Accuracies of an untrained model are whatever they are; the tests check that each path runs,
writes well-formed traces, resumes, and turns each kind of bad input into exit code 2 and one line.
"""
from __future__ import annotations

import csv
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
from tests.support.tiny_lm import tiny_lm as _tiny_lm

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
