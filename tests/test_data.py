"""spine.data: sources, token cache, windows, split and the resumable sampler (no Lightning)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from spine import data as D
from spine.data import (
    RandomWindows,
    ResumableSampler,
    TokenWindows,
    cache_key,
    load_tokens,
    num_windows,
    resolve_source,
    split_point,
    tokenize_to_cache,
)
from spine.tokenizer import get_tokenizer


# ----------------------------------------------------------------------------- windows
@pytest.mark.parametrize("n,ctx,stride,expected", [
    (10, 4, 4, 2),     # i in {0, 4}: 4 + 4 + 1 = 9 <= 10; i = 8 would need token 12
    (9, 4, 4, 2),      # i = 4 uses tokens 4..8 (the last one), still fits
    (8, 4, 4, 1),      # i = 4 would need token 8: only i = 0
    (5, 4, 1, 1),      # exactly ctx + 1 tokens: one window
    (4, 4, 1, 0),      # ctx tokens: no window (targets need one more)
    (20, 4, 1, 16),    # every i in 0..15
    (20, 4, 3, 6),     # i in {0, 3, 6, 9, 12, 15}
    (5145, 256, 256, 20),
])
def test_window_count_is_hand_computed(n, ctx, stride, expected):
    assert num_windows(n, ctx, stride) == expected
    assert len(TokenWindows(np.arange(n), ctx, stride)) == expected


def test_targets_are_inputs_shifted_and_boundaries():
    tokens = np.arange(100, 130)  # value = 100 + position, so contents reveal positions
    ds = TokenWindows(tokens, context_length=4, stride=3, start=5, end=27)
    # relative length 22: i in range(0, 18, 3) = 0, 3, ..., 15 -> 6 windows
    assert len(ds) == 6
    first, last = ds[0], ds[len(ds) - 1]
    assert first["input_ids"].tolist() == [105, 106, 107, 108]
    assert first["targets"].tolist() == [106, 107, 108, 109]
    assert last["input_ids"].tolist() == [120, 121, 122, 123]
    assert last["targets"].tolist() == [121, 122, 123, 124]
    for i in range(len(ds)):
        item = ds[i]
        assert item["input_ids"].dtype == torch.long and item["input_ids"].shape == (4,)
        assert torch.equal(item["input_ids"][1:], item["targets"][:-1])
        assert item["targets"].max().item() < 127  # never reads past `end`
    with pytest.raises(IndexError):
        ds[6]


def test_split_never_overlaps():
    n, ctx = 1000, 16
    cut = split_point(n, 0.1)
    assert cut == 900
    assert split_point(5145, 0.1) == 4630  # floor(4630.5)
    assert split_point(10, 0.3) == 7       # exact, despite 10 * 0.7 = 6.999... in floats
    tokens = np.arange(n)
    train = TokenWindows(tokens, ctx, stride=1, start=0, end=cut)
    val = TokenWindows(tokens, ctx, stride=ctx, start=cut, end=n)
    train_pos = {int(t) for i in range(len(train)) for k in ("input_ids", "targets") for t in train[i][k]}
    val_pos = {int(t) for i in range(len(val)) for k in ("input_ids", "targets") for t in val[i][k]}
    assert train_pos.isdisjoint(val_pos)
    assert max(train_pos) == cut - 1 and min(val_pos) == cut
    with pytest.raises(ValueError, match="val_fraction"):
        split_point(10, 1.0)


def test_random_windows_deterministic_and_in_range():
    tokens = np.arange(500)
    a = RandomWindows(tokens, 8, num_samples=50, seed=3, start=100, end=300)
    b = RandomWindows(tokens, 8, num_samples=50, seed=3, start=100, end=300)
    offs0 = [a.offset(0, i) for i in range(50)]
    assert offs0 == [b.offset(0, i) for i in range(50)]
    assert offs0 != [a.offset(1, i) for i in range(50)]
    assert offs0 != [RandomWindows(tokens, 8, 50, seed=4, start=100, end=300).offset(0, i) for i in range(50)]
    assert all(100 <= o and o + 8 + 1 <= 300 for e in range(3) for o in (a.offset(e, i) for i in range(50)))
    item = a[(2, 7)]
    assert item["input_ids"][0].item() == a.offset(2, 7)
    assert torch.equal(item["input_ids"][1:], item["targets"][:-1])
    a.set_epoch(2)
    assert torch.equal(a[7]["input_ids"], item["input_ids"])


def test_memmapped_windows_pickle_as_a_path(tmp_path):
    import pickle

    path = tokenize_to_cache(["x" * 5000], get_tokenizer("byte"), tmp_path, "pk")
    ds = TokenWindows(load_tokens(path), 64, start=100, end=4000)
    blob = pickle.dumps(ds)
    assert len(blob) < 2000  # the path, not 5000 tokens (what spawn-started DataLoader workers receive)
    back = pickle.loads(blob)
    assert len(back) == len(ds) and torch.equal(back[7]["targets"], ds[7]["targets"])


# ----------------------------------------------------------------------------- sampler
def test_sampler_deterministic_and_epoch_dependent():
    s1, s2 = ResumableSampler(100, seed=1), ResumableSampler(100, seed=1)
    assert list(s1) == list(s2)
    assert sorted(s1) == list(range(100))
    e0 = list(s1)
    s1.set_epoch(1)
    assert list(s1) != e0 and sorted(s1) == list(range(100))
    assert list(ResumableSampler(100, seed=2)) != e0
    assert list(ResumableSampler(10, shuffle=False)) == list(range(10))


def test_sampler_skip_resumes_at_next_sample():
    full = ResumableSampler(50, seed=7)
    full.set_epoch(3)
    order = list(full)
    s = ResumableSampler(50, seed=7)
    s.set_epoch(3)
    it = iter(s)
    seen = [next(it) for _ in range(17)]
    assert seen == order[:17] and s.consumed == 17
    state = s.state_dict()
    assert state["epoch"] == 3 and state["consumed"] == 17
    r = ResumableSampler(50, seed=7)
    r.load_state_dict(state)
    r.set_epoch(3)  # what Lightning does at epoch start: same epoch keeps the skip
    assert len(r) == 50  # the full epoch, so progress counters line up
    assert list(r) == order[17:]
    assert list(r) == order  # the skip applied to one iteration only
    r.skip(45)
    r.set_epoch(4)  # a new epoch clears a pending skip
    assert len(list(r)) == 50


def test_sampler_mismatched_state_warns_and_restarts_epoch():
    s = ResumableSampler(50, seed=7)
    with pytest.warns(UserWarning, match="restarts"):
        s.load_state_dict({"epoch": 2, "consumed": 10, "n": 60, "seed": 7, "shuffle": True})
    assert s.epoch == 2 and len(list(s)) == 50


@pytest.mark.parametrize("n,replicas", [(100, 4), (103, 4), (7, 3)])
def test_sampler_distributed_slices_are_disjoint(n, replicas):
    ranks = [ResumableSampler(n, seed=0, num_replicas=replicas, rank=r) for r in range(replicas)]
    lists = [list(s) for s in ranks]
    per_rank = -(-n // replicas)
    assert all(len(lst) == per_rank == len(s) for lst, s in zip(lists, ranks))
    assert set().union(*lists) == set(range(n))
    pad = per_rank * replicas - n
    # only the wrapped padding may repeat
    assert sum(len(lst) for lst in lists) - len(set().union(*lists)) == pad
    if pad == 0:
        for i in range(replicas):
            for j in range(i + 1, replicas):
                assert set(lists[i]).isdisjoint(lists[j])
    dropped = [list(ResumableSampler(n, num_replicas=replicas, rank=r, drop_last=True)) for r in range(replicas)]
    flat = [i for lst in dropped for i in lst]
    assert len(flat) == len(set(flat)) == n // replicas * replicas


def test_sampler_with_epoch_yields_pairs():
    s = ResumableSampler(5, shuffle=False, with_epoch=True)
    s.set_epoch(2)
    assert list(s) == [(2, i) for i in range(5)]


# ----------------------------------------------------------------------------- sources
def _write(p: Path, data: str | bytes) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


def test_sources_file_glob_directory(tmp_path):
    _write(tmp_path / "c" / "b.txt", "second")
    _write(tmp_path / "c" / "a.txt", "first")
    _write(tmp_path / "c" / "sub" / "z.txt", "third")
    _write(tmp_path / "c" / "skip.md", "not text")
    assert list(resolve_source(str(tmp_path / "c" / "a.txt")).documents) == ["first"]
    assert list(resolve_source(str(tmp_path / "c" / "*.txt")).documents) == ["first", "second"]
    assert list(resolve_source(str(tmp_path / "c")).documents) == ["first", "second", "third"]
    both = resolve_source([str(tmp_path / "c" / "b.txt"), str(tmp_path / "c" / "a.txt")])
    assert list(both.documents) == ["second", "first"]
    with pytest.raises(FileNotFoundError, match="glob matched no files: .*nothing"):
        resolve_source(str(tmp_path / "nothing*.txt"))
    with pytest.raises(FileNotFoundError, match="not found"):
        resolve_source(str(tmp_path / "missing.txt"))
    with pytest.raises(FileNotFoundError, match="no \\*.txt"):
        resolve_source(str(_write(tmp_path / "e" / "x.md", "x").parent))


def test_fingerprint_tracks_content_not_path(tmp_path):
    a = _write(tmp_path / "a.txt", "hello")
    b = _write(tmp_path / "b.txt", "hello")
    fa = resolve_source(str(a)).fingerprint
    assert fa == resolve_source(str(b)).fingerprint == resolve_source(str(a)).fingerprint
    _write(a, "hello!")
    assert resolve_source(str(a)).fingerprint != fa
    s1 = resolve_source("synthetic", synthetic_problems=5)
    assert s1.fingerprint == resolve_source("synthetic", synthetic_problems=5).fingerprint
    assert s1.fingerprint != resolve_source("synthetic", synthetic_problems=6).fingerprint
    assert len(list(s1.documents)) == 5 and list(s1.documents)[0].startswith("Question: ")


def test_non_utf8_policy(tmp_path):
    bad = _write(tmp_path / "bad.txt", b"ok text \xff\xfe more")
    with pytest.raises(ValueError, match=r"bad\.txt.*byte offset 8"):
        list(resolve_source(str(bad)).documents)
    (doc,) = resolve_source(str(bad), encoding_errors="replace").documents
    assert doc == "ok text \ufffd\ufffd more"
    bom = _write(tmp_path / "bom.txt", b"\xef\xbb\xbfhi")
    assert list(resolve_source(str(bom)).documents) == ["hi"]


def test_url_source_with_sha256(tmp_path):
    f = _write(tmp_path / "remote.txt", "downloaded text")
    digest = hashlib.sha256(f.read_bytes()).hexdigest()
    url = f.as_uri()
    src = resolve_source(f"{url}#sha256={digest}", cache_dir=tmp_path / "cache")
    assert list(src.documents) == ["downloaded text"]
    assert any((tmp_path / "cache" / "downloads").iterdir())
    assert resolve_source(url, sha256=digest, cache_dir=tmp_path / "cache").fingerprint == src.fingerprint
    wrong = "0" * 64
    with pytest.raises(ValueError) as e:
        resolve_source(f"{url}#sha256={wrong}", cache_dir=tmp_path / "cache2")
    assert url in str(e.value) and wrong in str(e.value) and digest in str(e.value)
    assert not [p for p in (tmp_path / "cache2" / "downloads").iterdir()]  # no partial file kept
    with pytest.raises(ValueError, match="needs its sha256"):
        resolve_source(url, cache_dir=tmp_path / "cache")


def test_hf_disk_source(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": ["one doc", "two doc"], "n": [1, 2]}).save_to_disk(str(tmp_path / "ds"))
    src = resolve_source(f"hf-disk:{tmp_path / 'ds'}")
    assert list(src.documents) == ["one doc", "two doc"]
    with pytest.raises(ValueError, match="no column 'body'.*'text'"):
        list(resolve_source(f"hf-disk:{tmp_path / 'ds'}", hf_text_column="body").documents)
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a"]}),
                          "test": datasets.Dataset.from_dict({"text": ["b"]})}).save_to_disk(str(tmp_path / "dd"))
    assert list(resolve_source(f"hf-disk:{tmp_path / 'dd'}", hf_split="test").documents) == ["b"]
    with pytest.raises(ValueError, match="no split 'dev'"):
        resolve_source(f"hf-disk:{tmp_path / 'dd'}", hf_split="dev")


def test_hf_hub_source_offline_gives_clear_error():
    pytest.importorskip("datasets")
    # conftest sets HF_DATASETS_OFFLINE=1: the hub cannot be reached, the error says what was asked
    with pytest.raises(RuntimeError, match="could not load Hugging Face dataset 'nobody/none'.*config='c'.*split='train'"):
        resolve_source("hf:nobody/none:c")


# ----------------------------------------------------------------------------- token cache
def test_tokenize_to_cache_joins_with_eos_and_reuses(tmp_path, monkeypatch):
    tok = get_tokenizer("byte")
    docs = ["ab", "", "c"]  # the empty document is skipped: no double separator
    path = tokenize_to_cache(docs, tok, tmp_path, "k1", source_fingerprint="fp")
    arr = load_tokens(path)
    assert arr.dtype == np.uint16 and arr.tolist() == [97, 98, 256, 99]
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["n_tokens"] == 4 and meta["dtype"] == "uint16" and meta["tokenizer"]["name"] == "byte"
    assert meta["source_fingerprint"] == "fp" and meta["tokenizer"]["vocab_size"] == 257
    assert not list((tmp_path / "tokens").glob(".*"))  # no temp files left behind

    def boom(*a, **k):
        raise AssertionError("re-tokenized")

    monkeypatch.setattr(tok, "encode", boom)
    monkeypatch.setattr(tok, "encode_batch", boom)
    assert tokenize_to_cache(iter(()), tok, tmp_path, "k1") == path


def test_big_vocab_uses_uint32(tmp_path):
    class Big:
        name, vocab_size, eos_id, pad_id, bos_id, special_tokens = "big", 70_000, 69_999, 69_999, None, {}

        def encode_batch(self, texts, **kw):
            return [[65_600 + len(t)] for t in texts]

        def save(self, directory):
            Path(directory, "spine_tokenizer.json").write_text("{}")

    path = tokenize_to_cache(["x", "yy"], Big(), tmp_path, "big")
    arr = load_tokens(path)
    assert arr.dtype == np.uint32 and arr.tolist() == [65_601, 69_999, 65_602]


def test_cache_key_depends_on_source_and_tokenizer(gpt2_vocab_dir):
    byte, gpt2 = get_tokenizer("byte"), get_tokenizer("gpt2", gpt2_vocab_dir)
    assert cache_key("a", byte) == cache_key("a", get_tokenizer("byte"))
    assert len({cache_key("a", byte), cache_key("b", byte), cache_key("a", gpt2)}) == 3


def test_long_documents_are_cut_without_changing_ids(shared_data, gpt2_vocab_dir):
    from spine.bpe import BPETokenizer

    text = (shared_data / "the-verdict" / "the-verdict.txt").read_text(encoding="utf-8")
    weird = "a  b\n\n c 12 34 x's  'll\t\tq ,. ;; Ünï ☃ " * 20 + text
    tokenizers = [get_tokenizer("gpt2", gpt2_vocab_dir), BPETokenizer.train(text, 400), get_tokenizer("byte")]
    for t in (text, weird):
        for max_chars in (7, 300, 5000):
            pieces = D._split_long(t, max_chars)
            assert "".join(pieces) == t and (len(pieces) > 1 or max_chars >= len(t))
            for tok in tokenizers:
                assert [i for p in pieces for i in tok.encode(p)] == tok.encode(t), (tok.name, max_chars)


def test_long_documents_in_cache_match_whole_encoding(tmp_path, monkeypatch, shared_data):
    from spine.bpe import BPETokenizer

    text = (shared_data / "the-verdict" / "the-verdict.txt").read_text(encoding="utf-8")
    tok = BPETokenizer.train(text, 400)
    monkeypatch.setattr(D, "MAX_CHUNK_CHARS", 500)  # many pieces and several groups
    docs = [text[:5000], text[5000:]]
    arr = load_tokens(tokenize_to_cache(docs, tok, tmp_path, "s"))
    assert arr.tolist() == tok.encode(text[:5000]) + [tok.eos_id] + tok.encode(text[5000:])
