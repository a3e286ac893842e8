"""`spine` tool subcommands (spine.commands.main) run in-process on tiny checkpoints."""
from __future__ import annotations

import json

import pytest
import torch

from spine.checkpoint import load_checkpoint, save_checkpoint
from spine.commands import COMMANDS, main
from spine.engine import Engine, SamplingParams
from spine.model import GPT
from spine.tokenizer import get_tokenizer


@pytest.fixture(scope="module")
def byte_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("byte") / "ck"
    save_checkpoint(d, GPT.from_preset("gpt2-tiny", vocab_size=257), get_tokenizer("byte"))
    return d


@pytest.fixture(scope="module")
def gpt2_ckpt(tmp_path_factory, gpt2_vocab_dir):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("gpt2") / "ck"
    save_checkpoint(d, GPT.from_preset("gpt2-tiny"), get_tokenizer("gpt2", vocab_dir=gpt2_vocab_dir))
    return d


def _run(capsys, argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _expected(ckpt, prompts, **kw):
    """What the library's one generation door gives for these prompts: (token ids, texts)."""
    model, tok = load_checkpoint(ckpt)
    out = Engine(model, tok).generate(prompts, SamplingParams(**kw))
    return [row[0].token_ids for row in out], [row[0].text for row in out]


def test_generate_gpt2_matches_the_library(capsys, gpt2_ckpt):
    code, out, err = _run(capsys, ["generate", "--checkpoint", gpt2_ckpt, "--prompt", "Every effort moves you",
                                   "--sampling.max_new_tokens", 6, "--device", "cpu"])
    assert code == 0, err
    _, texts = _expected(gpt2_ckpt, ["Every effort moves you"], max_new_tokens=6)
    assert out == texts[0] + "\n"


def test_generate_several_prompts_jsonl(capsys, byte_ckpt):
    prompts = ["Hello", "a much longer prompt, padded on the left"]
    code, out, err = _run(capsys, ["generate", "--checkpoint", byte_ckpt, "--prompt", prompts[0],
                                   f"--prompt={prompts[1]}", "--sampling.max_new_tokens", 5, "--output", "jsonl"])
    assert code == 0, err
    rows = [json.loads(line) for line in out.split("\n") if line]
    expected, texts = _expected(byte_ckpt, prompts, max_new_tokens=5)
    assert [r["prompt"] for r in rows] == prompts
    assert [r["tokens"] for r in rows] == expected
    assert [r["completion"] for r in rows] == texts
    assert all(r["finish_reason"] == "length" for r in rows)


def test_generate_sampling_seeded_and_text_that_looks_like_yaml(capsys, byte_ckpt):
    argv = ["generate", "--checkpoint", byte_ckpt, "--prompt", "[1, 2]", "--prompt", "key: value",
            "--sampling.max_new_tokens", 8, "--sampling.temperature", 1.0, "--sampling.top_k", 50,
            "--sampling.seed", 11, "--output", "jsonl", "--device", "cpu"]
    a, b = _run(capsys, argv), _run(capsys, argv)
    assert a[0] == 0 and a[1] == b[1]
    rows = [json.loads(line) for line in a[1].split("\n") if line]
    assert [r["prompt"] for r in rows] == ["[1, 2]", "key: value"]  # prompts are text, never parsed
    expected, _ = _expected(byte_ckpt, ["[1, 2]", "key: value"], max_new_tokens=8, temperature=1.0, top_k=50, seed=11)
    assert [r["tokens"] for r in rows] == expected


def test_generate_from_yaml_config(capsys, tmp_path, byte_ckpt):
    cfg = tmp_path / "gen.yaml"
    cfg.write_text(f"checkpoint: {byte_ckpt}\nprompt: [Hi, There]\nsampling: {{max_new_tokens: 3, temperature: 0.7, n: 2}}\n"
                   "output: jsonl\n")
    code, out, err = _run(capsys, ["generate", "--config", cfg, "--sampling.max_new_tokens", 4])
    assert code == 0, err
    rows = [json.loads(line) for line in out.split("\n") if line]
    assert [r["prompt"] for r in rows] == ["Hi", "Hi", "There", "There"] and [r["index"] for r in rows] == [0, 1] * 2
    assert all(len(r["tokens"]) == 4 for r in rows)  # the flag overrides the file; temperature and n stay


@pytest.mark.parametrize("argv_tail,message", [
    (["--prompt", "x" * 200], "exceeds the model's context_length (128)"),
    (["--prompt", ""], "prompt 0 is empty"),
    (["--prompt", "hi", "--sampling.top_p", 1.5], "top_p must be in (0, 1]"),
    (["--prompt", "hi", "--sampling.temperature", -1], "temperature must be a finite number >= 0"),
    (["--prompt", "hi", "--tokenizer", "gpt2-typo"], "unknown tokenizer 'gpt2-typo'"),
    (["--prompt", "hi", "--bogus", 1], "unrecognized arguments"),
    (["--prompt", "hi", "--sampling.max_new_tokens", "many"], "max_new_tokens"),
])
def test_generate_errors_are_one_line_exit_2(capsys, byte_ckpt, argv_tail, message):
    code, out, err = _run(capsys, ["generate", "--checkpoint", byte_ckpt, *argv_tail])
    assert code == 2 and message in err and "Traceback" not in err


def test_generate_truncate_policy(capsys, byte_ckpt):
    code, out, err = _run(capsys, ["generate", "--checkpoint", byte_ckpt, "--prompt", "x" * 200,
                                   "--sampling.max_new_tokens", 8, "--on_overflow", "truncate", "--output", "jsonl"])
    assert code == 0, err
    assert len(json.loads(out)["tokens"]) == 8


def test_missing_checkpoint_and_no_tokenizer(capsys, tmp_path):
    code, _, err = _run(capsys, ["generate", "--checkpoint", tmp_path / "nope", "--prompt", "hi"])
    assert code == 2 and "checkpoint directory not found" in err
    save_checkpoint(tmp_path / "bare", GPT.from_preset("gpt2-tiny", vocab_size=257))
    code, _, err = _run(capsys, ["generate", "--checkpoint", tmp_path / "bare", "--prompt", "hi"])
    assert code == 2 and "has no tokenizer; pass --tokenizer" in err
    code, out, err = _run(capsys, ["generate", "--checkpoint", tmp_path / "bare", "--prompt", "hi",
                                   "--tokenizer", "byte", "--sampling.max_new_tokens", 2])
    assert code == 0, err


def test_usage(capsys):
    assert {"generate", "import-hf", "export-hf"} <= set(COMMANDS)
    code, out, _ = _run(capsys, ["generate", "--help"])
    assert code == 0 and "--sampling.max_new_tokens" in out and "--sampling.top_p" in out
    code, _, err = _run(capsys, [])
    assert code == 2 and "subcommand" in err
    code, _, err = _run(capsys, ["frobnicate"])
    assert code == 2


def test_import_export_round_trip_via_cli(capsys, tmp_path, gpt2_vocab_dir):
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=50257, n_positions=32, n_embd=16, n_layer=2, n_head=2)).eval()
    src = tmp_path / "hf"
    hf.save_pretrained(src)
    (src / "vocab.json").write_text((gpt2_vocab_dir / "encoder.json").read_text())
    (src / "merges.txt").write_text((gpt2_vocab_dir / "vocab.bpe").read_text(encoding="utf-8"), encoding="utf-8")
    ids = torch.randint(0, 50257, (2, 9))
    with torch.no_grad():
        ref = hf(ids).logits

    code, out, err = _run(capsys, ["import-hf", src, tmp_path / "ck"])
    assert code == 0 and "tokenizer gpt2" in out, err
    model, tok = load_checkpoint(tmp_path / "ck")
    with torch.no_grad():
        assert (model(ids) - ref).abs().max() <= 1e-5
    assert tok.encode("Hello there") == get_tokenizer("gpt2", vocab_dir=gpt2_vocab_dir).encode("Hello there")

    code, _, err = _run(capsys, ["import-hf", src, tmp_path / "ck"])  # refuses to clobber
    assert code == 2 and "--overwrite" in err
    code, _, err = _run(capsys, ["import-hf", src, tmp_path / "ck", "--overwrite", "true", "--dtype", "bfloat16"])
    assert code == 0, err
    assert load_checkpoint(tmp_path / "ck")[0].tok_emb.weight.dtype == torch.bfloat16

    code, _, err = _run(capsys, ["import-hf", src, tmp_path / "ck32", "--dtype", "float32"])
    assert code == 0, err
    code, out, err = _run(capsys, ["export-hf", tmp_path / "ck32", tmp_path / "out"])
    assert code == 0 and "HF gpt2" in out, err
    hf2 = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        assert (hf2(ids).logits - ref).abs().max() <= 1e-5
    code, _, err = _run(capsys, ["import-hf", tmp_path / "out", tmp_path / "ck2"])
    assert code == 0, err
    again, tok2 = load_checkpoint(tmp_path / "ck2")
    for k, v in model.float().state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    assert tok2.encode("Hello there") == tok.encode("Hello there")

    code, _, err = _run(capsys, ["import-hf", tmp_path / "missing", tmp_path / "x"])
    assert code == 2 and "not found" in err


@pytest.mark.parametrize("argv, message", [
    (["fit", "--config", "configs/spam-scratch.yaml", "--data.init_args.path=/nope/sms.tsv",
      "--data.init_args.tokenizer=byte"],  # no GPT-2 files needed to reach the data error
     "spine fit: error: FileNotFoundError: classification data file not found: /nope/sms.tsv"),
    (["validate", "--config", "configs/quickstart.yaml", "--ckpt_path", "/nope/last.ckpt"],
     "spine validate: error: FileNotFoundError: --ckpt_path: checkpoint not found: /nope/last.ckpt"),
])
def test_trainer_commands_report_bad_input_in_one_line(capsys, monkeypatch, tmp_path, argv, message):
    from pathlib import Path

    from modules.cli import main as spine_main

    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the configs' relative paths
    monkeypatch.delenv("SPINE_DEBUG", raising=False)
    argv = [*argv, f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"]
    assert spine_main(argv) == 2
    err = capsys.readouterr().err
    # (not `"Traceback" not in err`: a logging handler left over from an earlier in-process Trainer may
    # print one about its closed capture stream) the error itself appears once, as the one-line message
    assert message in err and err.count("FileNotFoundError") == 1
    monkeypatch.setenv("SPINE_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        spine_main(argv)
