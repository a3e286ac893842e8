"""The README's setup and test commands are exactly what CI runs, and its placeholders are filled.

CI runs `make test` (.ci/run); the Makefile's recipes are the README's Setup/Tests commands, so a
README command counts as run by CI when it is in .ci/run or in what `make test` / `make quickstart`
would execute on a fresh clone (`make -n -B`, which runs nothing)."""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _block_after(text: str, heading: str) -> list[str]:
    section = text.split(heading, 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


def _make_dry_run(target: str) -> list[str]:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    # run as CI does, inside `make test`: a sub-make would print "Entering/Leaving directory" lines
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    out = subprocess.run(["make", "--no-print-directory", "-n", "-B", target], cwd=ROOT, capture_output=True,
                         text=True, check=True, env=env).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def test_ci_runs_the_readme_setup_and_test_commands():
    readme = (ROOT / "README.md").read_text()
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    test_run = _make_dry_run("test")
    assert "make test" in ci
    # `make TARGET` itself counts when TARGET is a Makefile target CI's make can dry-run
    ran = set(ci) | set(test_run) | set(_make_dry_run("quickstart")) | {"make test", "make quickstart"}
    for cmd in _block_after(readme, "## Setup") + _block_after(readme, "## Tests"):
        assert cmd in ran, f"README command not run by .ci/run (directly or through make): {cmd}"


def test_make_test_creates_the_venv_with_torch_first():
    steps = _make_dry_run("test")
    venv = steps.index("python3 -m venv .venv")
    torch_pin = next(i for i, s in enumerate(steps) if re.fullmatch(r"\.venv/bin/pip install torch==[\d.]+", s))
    project = steps.index(".venv/bin/pip install -e '.[dev]'")
    assert venv < torch_pin < project < steps.index(".venv/bin/python -m pytest -q")
    assert "torch>=" in (ROOT / "pyproject.toml").read_text()  # the pin lives in the Makefile, not pyproject
    quick = _make_dry_run("quickstart")
    assert quick[-1] == ".venv/bin/spine fit --config configs/quickstart.yaml" and quick[:3] == steps[:3]


def test_readme_has_no_placeholders():
    readme = (ROOT / "README.md").read_text()
    assert not re.search(r"\b[A-Z]{3,}_(RESULTS?|RESULT)\b|STAGES\n|TODO", readme)
