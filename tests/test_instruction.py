"""Instruction fine-tuning: the book's collate example, exact prompt strings, splits, errors, a 2-step fit."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch

from spine.instruct import collate, encode_records, format_input, full_text, prompt_text, split_records
from spine.tokenizer import get_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))
from fit_runner import run_in_process  # noqa: E402  (shared with the other CLI tests)

PAD = 50256


def test_collate_reproduces_the_books_worked_example():
    out = collate([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]], pad_id=PAD)
    # printed in the book, section 7.3
    assert torch.equal(out["input_ids"], torch.tensor([[0, 1, 2, 3, 4], [5, 6, PAD, PAD, PAD], [7, 8, 9, PAD, PAD]]))
    assert torch.equal(out["targets"], torch.tensor([[1, 2, 3, 4, PAD], [6, PAD, -100, -100, -100],
                                                     [8, 9, PAD, -100, -100]]))


def test_collate_prompt_mask_and_max_length():
    out = collate([[10, 11, 12, 13, 14], [20, 21, 22]], pad_id=PAD, prompt_lens=[3, 2], max_length=4)
    # row 0: targets 11 12 13 14 eos; prompt = 10 11 12 → targets predicting 11, 12 are masked
    assert out["targets"].tolist() == [[-100, -100, 13, 14], [-100, 22, PAD, -100]]
    assert out["input_ids"].tolist() == [[10, 11, 12, 13], [20, 21, 22, PAD]]


ALPACA_WITH_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                     "the request.\n\n### Instruction:\nIdentify the correct spelling of the following word."
                     "\n\n### Input:\nOcassion")
REC = {"instruction": "Identify the correct spelling of the following word.", "input": "Ocassion",
       "output": "The correct spelling is 'Occasion.'"}


def test_prompt_formats_exact_strings():
    assert format_input(REC) == ALPACA_WITH_INPUT
    assert full_text(REC) == ALPACA_WITH_INPUT + "\n\n### Response:\nThe correct spelling is 'Occasion.'"
    no_input = dict(REC, input="")
    assert "### Input" not in format_input(no_input)
    assert prompt_text(no_input).endswith("the following word.\n\n### Response:\n")
    assert full_text(REC, "phi3") == ("<|user|>\nIdentify the correct spelling of the following word.\nOcassion"
                                      "\n<|assistant|>\nThe correct spelling is 'Occasion.'")
    assert prompt_text(no_input, "phi3") == "<|user|>\nIdentify the correct spelling of the following word.\n<|assistant|>\n"
    with pytest.raises(ValueError, match="template"):
        format_input(REC, "chatml")


def test_book_split_sizes_on_shared_data(shared_data):
    from spine.instruct import load_records

    records = load_records(shared_data / "instruction-ft" / "instruction-data.json")
    train, val, test = split_records(records)
    assert (len(train), len(test), len(val)) == (935, 110, 55)
    assert train[0] == records[0] and test[0] == records[935] and val[0] == records[1045]


def test_prompt_length_and_truncation_policy():
    tok = get_tokenizer("byte")
    rec = {"instruction": "Say hi.", "input": "", "output": "hi"}
    (enc,) = encode_records([rec], tok)
    assert enc.ids == tok.encode(full_text(rec)) and enc.prompt_len == len(tok.encode(prompt_text(rec)))
    with pytest.raises(ValueError, match=r"record 7 has \d+ tokens, more than max_length=20"):
        encode_records([rec], tok, max_length=20, offset=7)
    (cut,) = encode_records([rec], tok, max_length=20, truncate=True)
    batch = collate([cut.ids], pad_id=tok.eos_id, max_length=20)
    assert batch["input_ids"].shape == (1, 20)
    assert batch["targets"][0].tolist() == enc.ids[1:21]  # true next tokens, no end-of-text target


@pytest.mark.parametrize("max_length", [5, 20, 40])
def test_truncated_long_prompt_never_trains_on_prompt_tokens(max_length):
    # A prompt longer than max_length: after the cut, every target predicts a prompt token, so
    # all of them must be masked (the last one used to slip through).  Invariant checked from
    # the uncut encoding: an unmasked target at column j is token j+1, which must be an output token.
    tok = get_tokenizer("byte")
    rec = {"instruction": "Say hi. " * 20, "input": "", "output": "hi"}
    (full,) = encode_records([rec], tok)
    assert full.prompt_len > max_length + 1  # the prompt alone overflows the cut
    (cut,) = encode_records([rec], tok, max_length=max_length, truncate=True)
    batch = collate([cut.ids], pad_id=tok.eos_id, prompt_lens=[cut.prompt_len], max_length=max_length)
    targets = batch["targets"][0].tolist()
    assert len(targets) == max_length
    unmasked = [j for j, t in enumerate(targets) if t != -100]
    assert all(j + 1 >= full.prompt_len for j in unmasked), unmasked
    assert unmasked == []


def test_truncation_inside_the_output_keeps_output_targets():
    # The cut falls inside the output: prompt targets masked, output targets kept (true next tokens).
    tok = get_tokenizer("byte")
    rec = {"instruction": "Say hi.", "input": "", "output": "hello there, friend"}
    (full,) = encode_records([rec], tok)
    max_length = full.prompt_len + 5
    (cut,) = encode_records([rec], tok, max_length=max_length, truncate=True)
    batch = collate([cut.ids], pad_id=tok.eos_id, prompt_lens=[cut.prompt_len], max_length=max_length)
    targets = batch["targets"][0].tolist()
    expected = [-100 if j + 1 < full.prompt_len else full.ids[j + 1] for j in range(max_length)]
    assert targets == expected


def _write(tmp_path, obj, name="d.json"):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(p)


def test_data_module_errors(tmp_path):
    from datamodules.instruction import InstructionDataModule as DM

    with pytest.raises(ValueError, match="empty"):
        DM(_write(tmp_path, ""), tokenizer="byte")
    with pytest.raises(ValueError, match="expected a JSON list of records, got a JSON dict"):
        DM(_write(tmp_path, {"instruction": "x"}), tokenizer="byte")
    with pytest.raises(ValueError, match=r"record 1 is missing field 'output'; fields present: \['input', 'instruction'\]"):
        DM(_write(tmp_path, [dict(REC), {"instruction": "a", "input": ""}]), tokenizer="byte")
    with pytest.raises(FileNotFoundError):
        DM(str(tmp_path / "nope.json"), tokenizer="byte")
    with pytest.raises(ValueError, match=r"record \d+ has \d+ tokens, more than max_length=16"):
        DM(_write(tmp_path, [REC] * 20), tokenizer="byte", max_length=16)


def _records(n=40):
    return [{"instruction": f"Add {i} and {i}.", "input": "" if i % 2 else f"{i}+{i}", "output": str(2 * i)}
            for i in range(n)]


def test_instruction_module_fit_two_steps_and_response_writer(tmp_path):
    from callbacks.responses import ResponseWriter
    from datamodules.instruction import InstructionDataModule
    from modules.instruction import InstructionModule
    from spine.engine import Engine, SamplingParams

    dm = InstructionDataModule(_write(tmp_path, _records()), tokenizer="byte", batch_size=4, mask_prompt=True)
    assert dm.context_length == max(len(e.ids) for s in ("train", "val", "test") for e in dm.encoded(s))
    first = dm.encoded("val")[0]
    batch = next(iter(dm.val_dataloader()))
    assert (batch["targets"][0, :first.prompt_len - 1] == -100).all()  # mask_prompt: no loss on the prompt
    assert batch["targets"][0, first.prompt_len - 1] == first.ids[first.prompt_len]
    model = InstructionModule(model="gpt2-tiny", vocab_size=dm.vocab_size, context_length=256, pad_id=dm.pad_id,
                              lr=1e-3, export_dir=str(tmp_path / "export"))
    writer = ResponseWriter(json_path=str(tmp_path / "r.json"), traces_path=str(tmp_path / "r.jsonl"),
                            sampling=SamplingParams(max_new_tokens=4), limit=3)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1, val_check_interval=2,
                        default_root_dir=tmp_path, callbacks=[writer])
    trainer.fit(model, dm)
    assert trainer.global_step == 2 and "val_loss" in trainer.callback_metrics
    out = json.loads((tmp_path / "r.json").read_text())
    assert len(out) == 3 and all("model_response" in r and r["instruction"] for r in out)
    from spine.traces import read_traces

    header, recs = read_traces(tmp_path / "r.jsonl")
    assert len(recs) == 3 and recs[0].prompt.endswith("### Response:\n") and recs[0].gold == out[0]["output"]
    # the responses are the engine's greedy completions of the trained model
    expected = Engine(model.model, dm.tokenizer).generate([r.prompt for r in recs], SamplingParams(max_new_tokens=4))
    assert [r.completion for r in recs] == [row[0].text for row in expected]
    assert [r.tokens for r in recs] == [row[0].generated_tokens for row in expected]
    from spine.checkpoint import load_checkpoint

    loaded, tok = load_checkpoint(tmp_path / "export")
    assert tok is not None and tok.vocab_size == 257
    ids = torch.randint(0, 257, (1, 8))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model.model.eval()(ids))


def test_instruction_lora_optimizer_holds_only_adapters(tmp_path):
    from datamodules.instruction import InstructionDataModule
    from modules.instruction import InstructionModule

    dm = InstructionDataModule(_write(tmp_path, _records(20)), tokenizer="byte", batch_size=4)
    model = InstructionModule(model="gpt2-tiny", vocab_size=dm.vocab_size, context_length=256,
                              lora={"rank": 4, "alpha": 8, "targets": ["qkv", "proj"]}, scheduler="constant",
                              export_dir=str(tmp_path / "export"))
    trainer = L.Trainer(max_steps=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, dm)
    in_opt = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    names = {n for n, p in model.model.named_parameters() if id(p) in in_opt}
    assert names and all(n.endswith((".lora_A", ".lora_B")) for n in names)
    assert len(names) == 2 * 2 * 3  # 2 blocks × (qkv, attn.proj, mlp.proj) × (A, B)
    assert (tmp_path / "export.lora.safetensors").is_file()
    from spine.checkpoint import load_checkpoint

    plain, _ = load_checkpoint(tmp_path / "export")  # merged, plain names
    ids = torch.randint(0, 257, (1, 8))
    with torch.no_grad():
        assert (plain(ids) - model.model.eval()(ids)).abs().max() < 1e-5


def test_vocab_larger_than_checkpoint_is_a_clear_error(tmp_path):
    from modules.instruction import InstructionModule
    from spine.checkpoint import save_checkpoint
    from spine.model import GPT

    save_checkpoint(tmp_path / "ck", GPT.from_preset("gpt2-tiny", vocab_size=257), get_tokenizer("byte"))
    with pytest.raises(ValueError, match="50257 ids but the checkpoint .* embeds only 257"):
        InstructionModule(init_from=str(tmp_path / "ck"), vocab_size=50257)


def test_tokenizer_differs_from_checkpoint_is_a_clear_error(tmp_path, gpt2_vocab_dir):
    from datamodules.instruction import InstructionDataModule
    from modules.instruction import InstructionModule
    from spine.checkpoint import save_checkpoint
    from spine.model import GPT

    save_checkpoint(tmp_path / "ck", GPT.from_preset("gpt2-tiny", vocab_size=50257),
                    get_tokenizer("gpt2", gpt2_vocab_dir))
    dm = InstructionDataModule(_write(tmp_path, _records(20)), tokenizer="byte", batch_size=4)
    model = InstructionModule(init_from=str(tmp_path / "ck"), vocab_size=dm.vocab_size)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match="tokenizer .* is not the checkpoint's"):
        trainer.fit(model, dm)


@pytest.mark.parametrize("name", ["instruct-gpt2-355m", "instruct-small", "instruct-lora"])
def test_instruct_configs_parse(name):
    import yaml

    code, out = run_in_process(["fit", "--config", f"configs/{name}.yaml", "--print_config"])
    cfg = yaml.safe_load(out)
    assert code == 0 and cfg["model"]["class_path"] == "modules.instruction.InstructionModule"
    if name == "instruct-gpt2-355m":  # the book's chapter-7 recipe
        m = cfg["model"]["init_args"]
        assert (m["lr"], m["weight_decay"], cfg["trainer"]["max_epochs"]) == (5e-5, 0.1, 2)
        assert cfg["data"]["init_args"]["batch_size"] == 8 and m["init_from"].startswith("hf:")
    if name == "instruct-lora":
        assert cfg["model"]["init_args"]["lora"]["rank"] == 16
