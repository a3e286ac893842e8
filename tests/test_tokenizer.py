"""spine.tokenizer: GPT-2 via tiktoken (offline), byte tokenizer, factory, save/load, errors."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from spine.tokenizer import (
    GPT2_FILE_SHA256,
    TOKENIZER_SPEC_FILE,
    ByteTokenizer,
    TiktokenTokenizer,
    Tokenizer,
    check_vocab_fits,
    get_tokenizer,
    load_tokenizer,
    tokenizer_fingerprint,
)

# Hand-known ids from "Build a LLM from Scratch", chapter 2 (tiktoken gpt2).
BOOK_TEXT = "Hello, do you like tea? <|endoftext|> In the sunlit terraces of someunknownPlace."
BOOK_IDS = [15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250, 8812, 2114, 286, 617, 34680, 27271, 13]
VERDICT_FIRST_IDS = [40, 367, 2885, 1464, 1807, 3619, 402, 271, 10899]  # "I HAD always thought Jack Gisburn"


@pytest.fixture(scope="module")
def gpt2(gpt2_vocab_dir: Path) -> TiktokenTokenizer:
    return get_tokenizer("gpt2", vocab_dir=gpt2_vocab_dir)


@pytest.fixture(scope="module")
def verdict(shared_data: Path) -> str:
    p = shared_data / "the-verdict" / "the-verdict.txt"
    if not p.is_file():
        pytest.skip(f"{p} missing")
    return p.read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- GPT-2
def test_gpt2_offline_matches_book(gpt2, verdict):
    assert isinstance(gpt2, Tokenizer)
    assert (gpt2.name, gpt2.vocab_size, gpt2.eos_id, gpt2.pad_id, gpt2.bos_id) == ("gpt2", 50257, 50256, 50256, None)
    assert gpt2.special_tokens == {"<|endoftext|>": 50256}
    ids = gpt2.encode(verdict)
    assert len(ids) == 5145 and ids[:9] == VERDICT_FIRST_IDS
    assert gpt2.decode(ids) == verdict
    assert gpt2.encode(BOOK_TEXT, allowed_special={"<|endoftext|>"}) == BOOK_IDS
    assert gpt2.encode(BOOK_TEXT, allowed_special="all") == BOOK_IDS
    assert gpt2.encode("Akwirw ier") == [33901, 86, 343, 86, 220, 959]


def test_gpt2_ranks_equal_tiktoken_loader(gpt2_vocab_dir):
    """Our offline build must equal tiktoken's own data-gym loader (an independent implementation)."""
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    ours = get_tokenizer("gpt2", vocab_dir=gpt2_vocab_dir).encoding._mergeable_ranks
    theirs = data_gym_to_mergeable_bpe_ranks(str(gpt2_vocab_dir / "vocab.bpe"), str(gpt2_vocab_dir / "encoder.json"))
    assert ours == theirs


def test_special_token_is_plain_text_unless_allowed(gpt2):
    text = "a<|endoftext|>b"
    plain = gpt2.encode(text)  # tiktoken would raise here; we must not
    assert 50256 not in plain
    assert plain == gpt2.encoding.encode_ordinary(text)
    assert gpt2.decode(plain) == text
    assert gpt2.encode(text, allowed_special={"<|endoftext|>"}) == [64, 50256, 65]
    with pytest.raises(ValueError, match=re.escape("['<|im_start|>']")):
        gpt2.encode(text, allowed_special={"<|im_start|>"})
    assert gpt2.encode_batch([text, "hi"], allowed_special="all") == [[64, 50256, 65], gpt2.encode("hi")]


def test_gpt2_decode_rejects_out_of_range(gpt2):
    with pytest.raises(ValueError, match="50257"):
        gpt2.decode([1, 50257])


def test_gpt2_env_var_and_tiktoken_path(gpt2_vocab_dir, monkeypatch, tmp_path, gpt2):
    monkeypatch.setenv("SPINE_GPT2_VOCAB_DIR", str(gpt2_vocab_dir))
    assert get_tokenizer("gpt2").encode("Hello world") == [15496, 995]
    # A tokenizer built from a (simulated) tiktoken download has no source files: save dumps the
    # ranks in tiktoken's format, which must be byte-identical to tiktoken's pinned gpt2 file.
    TiktokenTokenizer(gpt2.encoding).save(tmp_path)
    rank_file = tmp_path / "gpt2.tiktoken"
    assert json.loads((tmp_path / TOKENIZER_SPEC_FILE).read_text())["files"] == {"gpt2.tiktoken": GPT2_FILE_SHA256["gpt2.tiktoken"]}
    from tiktoken.load import load_tiktoken_bpe

    assert load_tiktoken_bpe(str(rank_file)) == gpt2.encoding._mergeable_ranks
    for tok in (get_tokenizer(rank_file), get_tokenizer("gpt2", vocab_dir=rank_file), load_tokenizer(tmp_path)):
        assert tok.encode(BOOK_TEXT, allowed_special="all") == BOOK_IDS


def test_gpt2_no_network_clear_error(monkeypatch):
    import tiktoken

    def offline(name):
        raise ConnectionError("no route to host")

    monkeypatch.delenv("SPINE_GPT2_VOCAB_DIR", raising=False)
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(RuntimeError, match="vocab_dir"):
        get_tokenizer("gpt2")


def test_gpt2_missing_file(tmp_path, gpt2_vocab_dir):
    shutil.copy(gpt2_vocab_dir / "vocab.bpe", tmp_path / "vocab.bpe")
    with pytest.raises(FileNotFoundError, match="encoder.json"):
        get_tokenizer("gpt2", vocab_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        get_tokenizer("gpt2", vocab_dir=tmp_path / "nope")


def test_gpt2_sha_mismatch_names_file(tmp_path, gpt2_vocab_dir):
    shutil.copy(gpt2_vocab_dir / "encoder.json", tmp_path / "encoder.json")
    data = (gpt2_vocab_dir / "vocab.bpe").read_bytes()
    (tmp_path / "vocab.bpe").write_bytes(data[:-2] + b"!\n")
    with pytest.raises(ValueError, match=r"vocab\.bpe.*sha256"):
        get_tokenizer("gpt2", vocab_dir=tmp_path)
    # and the tiktoken rank file is pinned too
    (tmp_path / "gpt2.tiktoken").write_bytes(b"IQ== 0\n")
    with pytest.raises(ValueError, match="sha256"):
        get_tokenizer(tmp_path / "gpt2.tiktoken")


def test_gpt2_corrupt_json(tmp_path, gpt2_vocab_dir):
    shutil.copy(gpt2_vocab_dir / "vocab.bpe", tmp_path / "vocab.bpe")
    (tmp_path / "encoder.json").write_text('{"!": 0, ')
    with pytest.raises(ValueError, match="sha256"):  # caught by the pin first
        get_tokenizer("gpt2", vocab_dir=tmp_path)
    with pytest.raises(ValueError, match="not valid JSON"):
        TiktokenTokenizer.from_gpt2_files(tmp_path / "encoder.json", tmp_path / "vocab.bpe", verify_sha256=False)


def test_gpt2_save_copies_files_and_loads(gpt2, tmp_path, verdict):
    gpt2.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"encoder.json", "vocab.bpe", TOKENIZER_SPEC_FILE}
    spec = json.loads((tmp_path / TOKENIZER_SPEC_FILE).read_text())
    assert spec["kind"] == "gpt2" and spec["vocab_size"] == 50257 and spec["eos_id"] == 50256
    assert spec["files"] == {"encoder.json": GPT2_FILE_SHA256["encoder.json"], "vocab.bpe": GPT2_FILE_SHA256["vocab.bpe"]}
    for tok in (load_tokenizer(tmp_path), get_tokenizer(tmp_path), get_tokenizer(str(tmp_path))):
        assert isinstance(tok, TiktokenTokenizer)
        assert tok.encode(verdict) == gpt2.encode(verdict)
    gpt2.save(tmp_path)  # saving over itself is fine
    assert tokenizer_fingerprint(load_tokenizer(tmp_path)) == tokenizer_fingerprint(gpt2)


def test_get_tokenizer_dispatches_on_gpt2_dir(gpt2_vocab_dir):
    assert isinstance(get_tokenizer(gpt2_vocab_dir), TiktokenTokenizer)


# ----------------------------------------------------------------------------- bytes
def test_byte_tokenizer():
    tok = get_tokenizer("byte")
    assert isinstance(tok, ByteTokenizer) and isinstance(tok, Tokenizer)
    assert (tok.vocab_size, tok.eos_id, tok.pad_id, tok.special_tokens) == (257, 256, 256, {"<|endoftext|>": 256})
    assert tok.encode("hé") == [104, 0xC3, 0xA9]
    assert tok.encode("a<|endoftext|>") == [97] + list(b"<|endoftext|>")
    assert tok.encode("a<|endoftext|>", allowed_special="all") == [97, 256]
    assert tok.decode([97, 256, 98]) == "a<|endoftext|>b"
    assert tok.decode([0xFF, 97]) == "\ufffda"  # invalid UTF-8 is replaced, never raises
    assert tok.decode([0xC3, 256, 0xA9]) == "\ufffd<|endoftext|>\ufffd"
    assert tok.encode("x\ud800y") == [120, 0xEF, 0xBF, 0xBD, 121]  # lone surrogate -> U+FFFD, like tiktoken
    assert tok.encode_batch(["a", "bc"]) == [[97], [98, 99]]
    with pytest.raises(ValueError, match="257"):
        tok.decode([257])


def test_byte_save_load(tmp_path):
    ByteTokenizer().save(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, ByteTokenizer) and tok.encode("ok") == [111, 107]


# ----------------------------------------------------------------------------- factory / errors
def test_unknown_name_lists_known():
    with pytest.raises(ValueError, match=r"gpt2.*byte.*bpe.*qwen3"):
        get_tokenizer("sentencepiece")


def test_bpe_name_needs_vocab_dir():
    with pytest.raises(ValueError, match="vocab_dir"):
        get_tokenizer("bpe")


def test_load_missing_spec(tmp_path):
    with pytest.raises(FileNotFoundError, match=TOKENIZER_SPEC_FILE):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match=TOKENIZER_SPEC_FILE):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="holds no tokenizer"):
        get_tokenizer(tmp_path)


def test_load_corrupt_or_unknown_spec(tmp_path):
    spec = tmp_path / TOKENIZER_SPEC_FILE
    spec.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_tokenizer(tmp_path)
    spec.write_text(json.dumps({"format_version": 1, "kind": "wordpiece", "files": {}}))
    with pytest.raises(ValueError, match="unknown tokenizer kind 'wordpiece'"):
        load_tokenizer(tmp_path)
    spec.write_text(json.dumps({"format_version": 1, "files": {}}))
    with pytest.raises(ValueError, match="missing field 'kind'"):
        load_tokenizer(tmp_path)
    spec.write_text(json.dumps({"format_version": 1, "kind": "byte", "files": {"../secret": "0"}}))
    with pytest.raises(ValueError, match="plain name"):
        load_tokenizer(tmp_path)
    spec.write_text(json.dumps({"format_version": 99, "kind": "byte", "files": {}}))
    with pytest.raises(ValueError, match="newer"):
        load_tokenizer(tmp_path)


def test_load_detects_tampered_or_missing_files(tmp_path, gpt2):
    gpt2.save(tmp_path)
    with open(tmp_path / "vocab.bpe", "ab") as f:
        f.write(b"x y\n")
    with pytest.raises(ValueError, match=r"vocab\.bpe.*sha256"):
        load_tokenizer(tmp_path)
    (tmp_path / "vocab.bpe").unlink()
    with pytest.raises(FileNotFoundError, match="vocab.bpe"):
        load_tokenizer(tmp_path)


def test_check_vocab_fits(gpt2):
    check_vocab_fits(gpt2, 50257)
    check_vocab_fits(gpt2, 50304)  # padded embedding tables are fine
    with pytest.raises(ValueError, match=r"ckpt.*50257.*50000"):
        check_vocab_fits(gpt2, 50000, where="ckpt")


def test_fingerprint_distinguishes(gpt2):
    assert tokenizer_fingerprint(ByteTokenizer()) == tokenizer_fingerprint(ByteTokenizer())
    assert tokenizer_fingerprint(ByteTokenizer()) != tokenizer_fingerprint(gpt2)


def test_allowed_special_must_be_set_or_all():
    with pytest.raises(ValueError, match="'all'"):
        ByteTokenizer().encode("x", allowed_special="<|endoftext|>")


def test_tokenizers_pickle(gpt2):
    """DataLoader workers receive tokenizers by pickling."""
    import pickle

    for tok in (gpt2, ByteTokenizer()):
        assert pickle.loads(pickle.dumps(tok)).encode(BOOK_TEXT, allowed_special="all") == tok.encode(BOOK_TEXT, allowed_special="all")
