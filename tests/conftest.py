"""Shared fixtures.

Caches are redirected to a temporary folder *before* anything imports `datasets` or
`transformers`, so tests never touch the user's caches or try the network.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

_CACHE = Path(tempfile.mkdtemp(prefix="spine-test-cache-"))
for _var, _sub in [
    ("HF_HOME", "hf"),
    ("HF_DATASETS_CACHE", "hf/datasets"),
    ("TRANSFORMERS_CACHE", "hf/transformers"),
    ("TIKTOKEN_CACHE_DIR", "tiktoken"),
    ("SPINE_CACHE_DIR", "spine"),
    ("MPLCONFIGDIR", "mpl"),
]:
    os.environ.setdefault(_var, str(_CACHE / _sub))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def _find_shared_data() -> Path | None:
    env = os.environ.get("SPINE_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates += [REPO_ROOT.parent / "shared" / "data", REPO_ROOT / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` (or $SPINE_SHARED_DATA); skips with a reason when it is absent."""
    path = _find_shared_data()
    if path is None:
        pytest.skip("../shared/data not found beside the checkout (set SPINE_SHARED_DATA to point at it)")
    return path


def load_bench(name: str):
    """Import `bench/NAME.py` as a module (bench/ is scripts, not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def gpt2_vocab_dir(shared_data: Path) -> Path:
    d = shared_data / "gpt2-bpe"
    if not (d / "encoder.json").is_file() or not (d / "vocab.bpe").is_file():
        pytest.skip(f"GPT-2 BPE files missing under {d}")
    return d


@pytest.fixture(autouse=True)
def _deterministic_torch():
    # tiny models on a shared 2-core machine: thread hand-offs cost more than they save
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
