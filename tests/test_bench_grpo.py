"""bench/grpo_throughput.py compares like with like: its two tokenizers of the synthetic vocabulary give
spine and TRL the same prompt ids and the shared reward the same text, and a run whose completions were
not all full length is refused rather than reported."""
from types import SimpleNamespace

import pytest
from conftest import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("grpo_throughput")


def test_spine_and_hf_tokenizers_agree_on_ids_and_text(bench):
    pytest.importorskip("transformers")
    V = 1000
    words = bench.WordTokenizer(V)
    hf = bench.hf_word_tokenizer(V, eos_id=V - 1)
    every = list(range(V))
    assert words.encode(words.decode(every)) == every  # one distinct word per id
    assert hf(words.decode(every))["input_ids"] == every
    for p in bench.make_prompts(3, 20, V):
        assert 0 not in p and V - 1 not in p  # neither pad nor TRL's EOS appears in a prompt
        assert hf(words.decode(p))["input_ids"] == p
        assert hf.decode(p) == words.decode(p)  # the reward sees the same completion text on both sides
    # TRL decodes completions with skip_special_tokens: only the EOS/pad word disappears
    assert hf.decode([5, V - 1, 7], skip_special_tokens=True) == words.decode([5, 7])


def test_short_completions_are_refused(bench):
    args = SimpleNamespace(warmup=1, steps=1, prompts=1, n=2, new_tokens=4)
    raw = {"step_s": [2.0, 1.0], "rollout_s": [0.5, 0.25], "lengths": [4, 4, 4, 4]}
    row = bench.summarise("spine", raw, args)
    assert (row["rollout_s"], row["update_s"], row["step_s"]) == (0.25, 0.75, 1.0)  # warm-up step dropped
    with pytest.raises(SystemExit, match="not all 4 tokens"):
        bench.summarise("trl", dict(raw, lengths=[4, 4, 3, 4]), args)


def test_variants_and_spine_compile(bench):
    assert bench.choose_variants("spine, spine_compiled,trl") == ["spine", "spine_compiled", "trl"]
    assert bench.choose_variants("spine,trl", spine_compile=True) == ["spine_compiled", "trl"]
    assert bench.choose_variants("spine,spine_compiled", spine_compile=True) == ["spine_compiled"]
    with pytest.raises(SystemExit, match="unknown \\['vllm'\\]"):
        bench.choose_variants("spine,vllm")
    with pytest.raises(SystemExit, match="none given"):
        bench.choose_variants(" , ")
