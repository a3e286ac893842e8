"""spine.qwen_tokenizer.Qwen3Tokenizer on a tiny tokenizer.json built here (offline)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from spine.qwen_tokenizer import Qwen3Tokenizer
from spine.tokenizer import TOKENIZER_SPEC_FILE, Tokenizer, get_tokenizer, load_tokenizer

SENTENCES = [
    "Hello world, the quick brown fox jumps over the lazy dog.",
    "What is 2 + 3? The answer is 5. Let me think step by step.",
    "You are a helpful assistant. Please reason carefully.",
] * 5


def _build_tokenizer_json(path: Path, added: tuple[str, ...] = ("<think>", "</think>")) -> Path:
    """A Qwen3-shaped tokenizer.json: byte-level BPE, 3 special + <think> tokens (special=False as in Qwen3)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(SENTENCES, trainer)
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in added])
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    return path / "tokenizer.json"


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    return _build_tokenizer_json(tmp_path_factory.mktemp("qwen")).parent


@pytest.fixture(scope="module")
def qwen(tok_dir: Path) -> Qwen3Tokenizer:
    return Qwen3Tokenizer(tok_dir / "tokenizer.json")


def _plain(q: Qwen3Tokenizer, text: str) -> list[int]:
    return q.encode(text)  # no special tokens allowed: ordinary BPE pieces


def test_attributes_and_special_ids(qwen):
    assert isinstance(qwen, Tokenizer) and qwen.name == "qwen3"
    base = qwen._tok.get_vocab_size(with_added_tokens=False)
    st = qwen.special_tokens
    # added tokens come right after the BPE vocabulary, in the order they were added
    assert [st[t] for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")] == list(range(base, base + 5))
    assert qwen.vocab_size == base + 5
    assert qwen.eos_id == st["<|im_end|>"] and qwen.pad_id == st["<|endoftext|>"] and qwen.bos_id is None
    assert qwen.think_ids == (st["<think>"], st["</think>"])
    assert qwen.stop_ids == (st["<|im_end|>"], st["<|endoftext|>"])
    for t, i in st.items():
        assert qwen.encode(t, allowed_special="all") == [i]  # one id each
        assert len(qwen.encode(t)) > 1  # and plain text when not allowed
        assert qwen.decode([i]) == t


def test_chat_template_strings(qwen):
    msgs = [{"role": "user", "content": "What is 2 + 3?"}]
    assert qwen.apply_chat_template(msgs) == "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
    assert qwen.apply_chat_template(msgs, enable_thinking=False) == (
        "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    conv = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>\nsay hello\n</think>\n\nHello!"},
        {"role": "user", "content": "2+3?"},
    ]
    assert qwen.apply_chat_template(conv, add_generation_prompt=False) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nsay hello\n</think>\n\nHello!<|im_end|>\n"
        "<|im_start|>user\n2+3?<|im_end|>\n"
    )
    # enable_thinking only changes the generation prompt
    assert qwen.apply_chat_template(conv, add_generation_prompt=False, enable_thinking=False) == \
        qwen.apply_chat_template(conv, add_generation_prompt=False)
    assert qwen.apply_chat_template([]) == "<|im_start|>assistant\n"


def test_encode_chat_ids(qwen):
    st = qwen.special_tokens
    s, e = st["<|im_start|>"], st["<|im_end|>"]
    t0, t1 = qwen.think_ids
    msgs = [{"role": "user", "content": "Hello world"}]
    # specials split the text; each piece in between is ordinary BPE
    expected = [s, *_plain(qwen, "user\nHello world"), e, *_plain(qwen, "\n"), s, *_plain(qwen, "assistant\n")]
    assert qwen.encode_chat(msgs) == expected
    assert qwen.encode_chat(msgs, enable_thinking=False) == expected + [t0, *_plain(qwen, "\n\n"), t1, *_plain(qwen, "\n\n")]
    assert qwen.decode(qwen.encode_chat(msgs, enable_thinking=False)) == qwen.apply_chat_template(msgs, enable_thinking=False)


def test_subset_path_equals_hf_path(qwen):
    """Splitting on allowed specials ourselves must agree with `tokenizers`' own added-token matching."""
    text = qwen.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Quick fox? <think>"}], enable_thinking=False)
    subset = {"<|im_start|>", "<|im_end|>", "<think>", "</think>"}
    assert qwen.encode(text, allowed_special=subset) == qwen.encode(text, allowed_special="all")
    assert qwen.encode_batch([text, "fox"], allowed_special=subset) == qwen.encode_batch([text, "fox"], allowed_special="all")


def test_partial_allowed_and_round_trips(qwen):
    st = qwen.special_tokens
    text = "<|im_start|>x<|im_end|>"
    ids = qwen.encode(text, allowed_special={"<|im_end|>"})
    assert ids[-1] == st["<|im_end|>"] and st["<|im_start|>"] not in ids
    assert qwen.decode(ids) == text
    for t in ["", " ", "héllo wörld 😀 中文", "  two  spaces\n\ttab\r\n", "The answer is 5.", "a<|endoftext|>b"]:
        assert qwen.decode(qwen.encode(t)) == t
        assert qwen.decode(qwen.encode(t, allowed_special="all")) == t
    assert qwen.encode_batch(["Hello", "world"]) == [qwen.encode("Hello"), qwen.encode("world")]
    with pytest.raises(ValueError, match="not special tokens"):
        qwen.encode("x", allowed_special={"<|fim_prefix|>"})


def test_explicit_vocab_size(tok_dir, qwen):
    big = Qwen3Tokenizer(tok_dir, vocab_size=151936)
    assert big.vocab_size == 151936
    assert big.decode([qwen.vocab_size + 10, *big.encode("fox")]) == "fox"  # embedding padding ids decode to ''
    with pytest.raises(ValueError, match="outside the vocabulary"):
        big.decode([151936])
    with pytest.raises(ValueError, match="smaller than"):
        Qwen3Tokenizer(tok_dir, vocab_size=qwen.vocab_size - 1)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        qwen.decode([qwen.vocab_size])


def test_eos_token_choice(tok_dir):
    base = Qwen3Tokenizer(tok_dir, eos_token="<|endoftext|>")
    assert base.eos_id == base.pad_id == base.special_tokens["<|endoftext|>"]
    with pytest.raises(ValueError, match="eos_token"):
        Qwen3Tokenizer(tok_dir, eos_token="</s>")


def test_save_load(qwen, tok_dir, tmp_path):
    tok = Qwen3Tokenizer(tok_dir / "tokenizer.json", vocab_size=1024, eos_token="<|endoftext|>")
    tok.save(tmp_path)
    assert (tmp_path / "tokenizer.json").read_bytes() == (tok_dir / "tokenizer.json").read_bytes()
    spec = json.loads((tmp_path / TOKENIZER_SPEC_FILE).read_text())
    assert spec["kind"] == "qwen3" and spec["vocab_size"] == 1024
    for loaded in (load_tokenizer(tmp_path), get_tokenizer(tmp_path), get_tokenizer("qwen3", vocab_dir=tmp_path)):
        assert isinstance(loaded, Qwen3Tokenizer)
        assert (loaded.vocab_size, loaded.eos_id) == (1024, tok.eos_id)
        msgs = [{"role": "user", "content": "Quick brown fox?"}]
        assert loaded.encode_chat(msgs) == qwen.encode_chat(msgs)
    # a plain HF folder (tokenizer.json only) dispatches to Qwen3 too
    for t in (get_tokenizer(tok_dir), get_tokenizer("qwen3", vocab_dir=tok_dir), get_tokenizer(tok_dir / "tokenizer.json")):
        assert isinstance(t, Qwen3Tokenizer) and t.vocab_size == qwen.vocab_size


def test_errors(tmp_path, qwen):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Qwen3Tokenizer(tmp_path / "none" / "tokenizer.json")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tokenizer.json").write_text("{\"version\": ")
    with pytest.raises(ValueError, match="not a valid HF tokenizers"):
        Qwen3Tokenizer(bad)
    no_think = _build_tokenizer_json(tmp_path / "nothink", added=())
    with pytest.raises(ValueError, match=r"lacks added tokens \['<think>', '</think>'\]"):
        Qwen3Tokenizer(no_think)
    with pytest.raises(ValueError, match=r"messages\[1\] has role 'robot'"):
        qwen.apply_chat_template([{"role": "user", "content": "x"}, {"role": "robot", "content": "y"}])
    with pytest.raises(ValueError, match=r"messages\[0\]"):
        qwen.apply_chat_template([{"role": "user", "content": None}])
    with pytest.raises(ValueError, match="list of"):
        qwen.apply_chat_template("hello")


def test_hub_download_offline_error(monkeypatch):
    import huggingface_hub

    def offline(**kwargs):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(RuntimeError, match="vocab_dir"):
        get_tokenizer("qwen3")


def test_pickle(qwen):
    import pickle

    text = qwen.apply_chat_template([{"role": "user", "content": "fox <think>"}], enable_thinking=False)
    clone = pickle.loads(pickle.dumps(qwen))
    assert clone.encode(text, allowed_special="all") == qwen.encode(text, allowed_special="all")
    assert clone.encode(text) == qwen.encode(text)
