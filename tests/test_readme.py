"""The README's setup and test commands are exactly what CI runs, and its placeholders are filled."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _block_after(text: str, heading: str) -> list[str]:
    section = text.split(heading, 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_setup_and_test_commands():
    readme = (ROOT / "README.md").read_text()
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    for cmd in _block_after(readme, "## Setup") + _block_after(readme, "## Tests"):
        assert cmd in ci, f"README command not run by .ci/run: {cmd}"


def test_readme_has_no_placeholders():
    readme = (ROOT / "README.md").read_text()
    assert not re.search(r"\b[A-Z]{3,}_(RESULTS?|RESULT)\b|STAGES\n|TODO", readme)
