"""bench/decode_nsamples.py: its per-step profile subtracts a short run from a long one, so the fixed
setup cancels and what is left is exactly the ops of one step; and the bench runs end to end on CPU."""
import json
import sys

import pytest
from conftest import load_bench
import torch

@pytest.fixture(scope="module")
def bench():
    return load_bench("decode_nsamples")


def test_per_step_profile_counts_the_ops_of_one_step(bench):
    x, y = torch.ones(4), torch.full((4,), 2.0)  # tensor operands: a Python scalar adds a conversion op

    def run(n):
        torch.zeros(3).sum()  # setup, once per call: must cancel out
        for _ in range(n):
            torch.add(x, y)
            torch.mul(x, y)
            torch.mul(y, x)

    p = bench.per_step_profile(run, 6, 2, cuda=False)
    assert p["ops"] == {"aten::add": 1.0, "aten::mul": 2.0} and p["aten_ops"] == 3.0
    assert p["kernels"] == 0 and p["syncs"] == 0
    with pytest.raises(ValueError, match="lo < hi"):
        bench.per_step_profile(run, 2, 2, cuda=False)


def test_cpu_smoke_run_reports_every_variant(bench, tmp_path, monkeypatch):
    out = tmp_path / "r.json"
    monkeypatch.setattr(sys, "argv", ["decode_nsamples.py", "--device", "cpu", "--preset", "gpt2-tiny", "--prompts",
                                      "2", "--n", "3", "--prompt_len", "8", "--new_tokens", "4", "--reps", "1",
                                      "--warmup", "0", "--variants", "shared,replicated", "--profile",
                                      "--out", str(out)])
    bench.main()
    res = json.loads(out.read_text())
    assert [r["variant"] for r in res["rows"]] == ["shared", "replicated"]
    assert all(r["rows"] == 6 and r["tokens_per_s"] > 0 for r in res["rows"])
    # after the prefill the two paths decode the same way: the same ops per step
    assert res["profile"]["shared"]["ops"] == res["profile"]["replicated"]["ops"]
