"""spine.bpe.BPETokenizer: tiktoken parity with GPT-2's merges, training, save/load, errors."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from spine.bpe import BPE_FILE, BPETokenizer
from spine.tokenizer import TOKENIZER_SPEC_FILE, Tokenizer, get_tokenizer, load_tokenizer

EDGE_CASES = [
    "", " ", "  ", "\t", "\n", "\n\n\n", "\r\n", "line one\r\nline two\r\n",
    "trailing spaces   ", "trailing newline\n", "   leading", "a \n b\t\tc \t\n", "x  \n\n  y  \n ",
    "\t\ttabs\tinside\t", "spaces     between", " \u00a0nbsp\u2003em space\u3000ideographic",
    "café naïve résumé Ångström Œuvre", "e\u0301 combining acute", "Ω≈ç√∫˜µ≤≥÷ ¡™£¢∞§¶•ªº",
    "中文字符测试，日本語のテキスト、한국어 텍스트", "Привет, мир! Γειά σου", "مرحبا بالعالم", "हिन्दी",
    "emoji 😀👍🏽 🇫🇷 ❤️ 👨‍👩‍👧‍👦 👩🏾‍💻 🏳️‍🌈", "zero\u200bwidth\u200djoiner\ufeffbom",
    "1234567890123456789012345 3.14159 1,000,000 -42 0x1F 2024-01-01 ١٢٣ ½ ²",
    "I'm you're he's we've she'll they'd can't it's",
    "I'M YOU'RE HE'S WE'VE SHE'LL THEY'D CAN'T IT'S", "'s 't 're 've 'm 'll 'd ''' 'x",
    "!!!??? ... --- *** ((( ))) {}[]<> ~~~ ``` @#$%^&*", "a+b=c; x->y => {k: v}",
    "<|endoftext|>", "a<|endoftext|>b", "<|endoftext", "<|endoftext|><|endoftext|>",
    "def f(x):\n    return x**2  # comment\n\n\n", "\x00\x01\x7f control",
]


@pytest.fixture(scope="module")
def tiktoken_gpt2(gpt2_vocab_dir: Path):
    return get_tokenizer("gpt2", vocab_dir=gpt2_vocab_dir)


@pytest.fixture(scope="module")
def gpt2_bpe(gpt2_vocab_dir: Path) -> BPETokenizer:
    return BPETokenizer.from_gpt2_files(gpt2_vocab_dir / "encoder.json", gpt2_vocab_dir / "vocab.bpe")


@pytest.fixture(scope="module")
def verdict(shared_data: Path) -> str:
    p = shared_data / "the-verdict" / "the-verdict.txt"
    if not p.is_file():
        pytest.skip(f"{p} missing")
    return p.read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- GPT-2 parity
def test_gpt2_attributes(gpt2_bpe):
    assert isinstance(gpt2_bpe, Tokenizer)
    assert (gpt2_bpe.name, gpt2_bpe.vocab_size, gpt2_bpe.eos_id, gpt2_bpe.pad_id) == ("bpe", 50257, 50256, 50256)
    assert gpt2_bpe.special_tokens == {"<|endoftext|>": 50256}
    assert len(gpt2_bpe.merges) == 50000
    assert gpt2_bpe.token_bytes(gpt2_bpe.merges[0][2]) == b" t"  # GPT-2's first merge: "Ġ t"


def test_gpt2_parity_on_the_verdict(gpt2_bpe, tiktoken_gpt2, verdict):
    ids = gpt2_bpe.encode(verdict)
    assert len(ids) == 5145
    assert ids == tiktoken_gpt2.encode(verdict)
    assert gpt2_bpe.decode(ids) == verdict


@pytest.mark.parametrize("text", EDGE_CASES, ids=range(len(EDGE_CASES)))
def test_gpt2_parity_edge_cases(gpt2_bpe, tiktoken_gpt2, text):
    assert gpt2_bpe.encode(text) == tiktoken_gpt2.encode(text)
    assert gpt2_bpe.decode(gpt2_bpe.encode(text)) == text
    allowed = gpt2_bpe.encode(text, allowed_special="all")
    assert allowed == tiktoken_gpt2.encode(text, allowed_special="all")
    assert gpt2_bpe.decode(allowed) == text


def test_gpt2_parity_special_tokens_and_batch(gpt2_bpe, tiktoken_gpt2):
    assert gpt2_bpe.encode("<|endoftext|>", allowed_special={"<|endoftext|>"}) == [50256]
    assert gpt2_bpe.encode("<|endoftext|>") == [27, 91, 437, 1659, 5239, 91, 29]  # plain text
    assert gpt2_bpe.encode("Akwirw ier") == [33901, 86, 343, 86, 220, 959]  # book, ch. 2
    texts = EDGE_CASES[:10] + ["Hello world"]
    assert gpt2_bpe.encode_batch(texts) == tiktoken_gpt2.encode_batch(texts)
    # lone surrogates become U+FFFD on both sides
    assert gpt2_bpe.encode("a\ud800b") == tiktoken_gpt2.encode("a\ud800b")


def test_decode_invalid_utf8_and_unknown_id(gpt2_bpe):
    emoji = gpt2_bpe.encode("😀")
    assert len(emoji) > 1 and gpt2_bpe.decode(emoji[:1]).endswith("\ufffd")  # partial char, replaced
    with pytest.raises(ValueError, match="60000"):
        gpt2_bpe.decode([60000])


# ----------------------------------------------------------------------------- training
def test_train_hand_checked_merges():
    # Wikipedia's BPE example. Pairs: aa x4, ab x2 -> merge (a, a) first; then (a, b) and (aa, a)
    # tie at 2 and (b"a", b"b") < (b"aa", b"a") wins; then (aa, ab) x2. Nothing occurs twice after.
    with pytest.warns(UserWarning, match="stopped early"):
        tok = BPETokenizer.train("aaabdaaabac", vocab_size=300)
    a, b, c, d = map(ord, "abcd")
    assert tok.merges == [(a, a, 256), (a, b, 257), (256, 257, 258)]
    assert tok.encode("aaabdaaabac") == [258, d, 258, a, c]
    assert tok.vocab_size == 260 and tok.eos_id == tok.pad_id == 259
    assert tok.training_stats["stopped_early"] and tok.training_stats["merges"] == 3


def test_train_tie_break_prefers_smaller_bytes_and_min_frequency():
    # every pair occurs once: with min_frequency=1 ties break by bytes, " " (0x20) < letters
    tok = BPETokenizer.train("ab cd", vocab_size=256 + 3 + 1, min_frequency=1)
    assert [tok.token_bytes(m[2]) for m in tok.merges] == [b" c", b" cd", b"ab"]
    with pytest.warns(UserWarning):
        assert BPETokenizer.train("ab cd", vocab_size=260).merges == []


def _naive_train(words: dict[str, int], n_merges: int) -> list[bytes]:
    """Reference trainer: recount every pair from scratch at each step (slow, obviously right)."""
    seqs = {w: [bytes([x]) for x in w.encode()] for w in words}
    out = []
    for _ in range(n_merges):
        counts: dict[tuple[bytes, bytes], int] = {}
        for w, s in seqs.items():
            for p in zip(s, s[1:]):
                counts[p] = counts.get(p, 0) + words[w]
        if not counts or max(counts.values()) < 2:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        out.append(best[0] + best[1])
        for w, s in seqs.items():
            i, new = 0, []
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    new.append(best[0] + best[1])
                    i += 2
                else:
                    new.append(s[i])
                    i += 1
            seqs[w] = new
    return out


def test_incremental_training_equals_naive(verdict):
    import regex

    from spine.tokenizer import GPT2_PATTERN

    text = verdict[:4000]
    words: dict[str, int] = {}
    for w in regex.findall(GPT2_PATTERN, text):
        words[w] = words.get(w, 0) + 1
    tok = BPETokenizer.train(text, vocab_size=256 + 80 + 1)
    assert [tok.token_bytes(m[2]) for m in tok.merges] == _naive_train(words, 80)


def test_train_vocab_size_round_trip_and_determinism(verdict, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reaching the size must not warn
        tok = BPETokenizer.train(verdict, vocab_size=600, special_tokens=("<|endoftext|>", "<|pad|>"))
    assert tok.vocab_size == 600 and len(tok.merges) == 600 - 256 - 2
    assert tok.special_tokens == {"<|endoftext|>": 598, "<|pad|>": 599} and tok.eos_id == 598
    ids = tok.encode(verdict)
    assert max(ids) < 600 and len(ids) < len(verdict.encode()) // 2
    assert tok.decode(ids) == verdict
    for text in EDGE_CASES:
        assert tok.decode(tok.encode(text)) == text
    # documents in a different order give the same merges (counts and tie-break ignore order)
    paras = verdict.split("\n\n")
    assert BPETokenizer.train(paras[::-1], vocab_size=600, special_tokens=("<|endoftext|>", "<|pad|>")).merges == tok.merges

    tok.save(tmp_path)
    assert (tmp_path / BPE_FILE).is_file() and json.loads((tmp_path / TOKENIZER_SPEC_FILE).read_text())["kind"] == "bpe"
    for loaded in (load_tokenizer(tmp_path), get_tokenizer(tmp_path), get_tokenizer("bpe", vocab_dir=tmp_path)):
        assert isinstance(loaded, BPETokenizer)
        assert loaded.encode(verdict) == ids
        assert loaded.encode("x<|pad|>", allowed_special="all") == tok.encode("x<|pad|>", allowed_special="all")
        assert (loaded.vocab_size, loaded.eos_id) == (600, 598)


def test_special_tokens_are_not_learned():
    with pytest.warns(UserWarning, match="stopped early"):
        tok = BPETokenizer.train(["ab<|endoftext|>"] * 50, vocab_size=270, min_frequency=2)
    learned = [tok.token_bytes(m[2]) for m in tok.merges]
    assert learned == [b"ab"]  # "<|" etc. never counted: the special token is cut out first
    assert tok.encode("ab<|endoftext|>", allowed_special="all") == [256, tok.eos_id]


def test_gpt2_save_load_round_trip(gpt2_bpe, tmp_path, verdict):
    gpt2_bpe.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, BPETokenizer) and loaded.encode(verdict) == gpt2_bpe.encode(verdict)


def test_train_errors():
    with pytest.raises(ValueError, match=r"at least 256 \(bytes\) \+ 1"):
        BPETokenizer.train("hello", vocab_size=256)
    with pytest.raises(ValueError, match="at least 256"):
        BPETokenizer.train("hello", vocab_size=257, special_tokens=("<a>", "<b>"))
    with pytest.raises(ValueError, match="iterable of str"):
        BPETokenizer.train([b"bytes"], vocab_size=300)
    with pytest.raises(ValueError, match="special token"):
        BPETokenizer.train("hello", vocab_size=300, special_tokens=())


def test_load_errors(tmp_path):
    tok = BPETokenizer.train("hello hello hello world world", vocab_size=262)
    tok.save(tmp_path)
    data = json.loads((tmp_path / BPE_FILE).read_text())
    data["vocab"]["256"] = "ffff"
    (tmp_path / BPE_FILE).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="'vocab' disagrees"):
        BPETokenizer.load(tmp_path)
    with pytest.raises(ValueError, match=r"bpe\.json.*sha256"):  # the spec notices the edit first
        load_tokenizer(tmp_path)
    (tmp_path / BPE_FILE).write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        BPETokenizer.load(tmp_path)
    (tmp_path / BPE_FILE).write_text(json.dumps({"format": "spine-bpe", "pattern": "x"}))
    with pytest.raises(ValueError, match="'byte_ids'"):
        BPETokenizer.load(tmp_path)
    with pytest.raises(FileNotFoundError, match=BPE_FILE):
        BPETokenizer.load(tmp_path / "nowhere")


def test_from_gpt2_files_errors(tmp_path, gpt2_vocab_dir):
    (tmp_path / "encoder.json").write_text(json.dumps({"a": 0}))
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\na b\n")
    with pytest.raises(ValueError, match="missing from encoder.json"):
        BPETokenizer.from_gpt2_files(tmp_path / "encoder.json", tmp_path / "vocab.bpe", verify_sha256=False)
    with pytest.raises(ValueError, match=r"vocab\.bpe.*sha256"):
        BPETokenizer.from_gpt2_files(gpt2_vocab_dir / "encoder.json", tmp_path / "vocab.bpe")
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\na b c\n")
    with pytest.raises(ValueError, match=r"vocab\.bpe:2"):
        BPETokenizer.from_gpt2_files(tmp_path / "encoder.json", tmp_path / "vocab.bpe", verify_sha256=False)


def test_pickle(verdict):
    import pickle

    tok = BPETokenizer.train(verdict, vocab_size=300)
    assert pickle.loads(pickle.dumps(tok)).encode(verdict) == tok.encode(verdict)
