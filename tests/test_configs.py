"""Every YAML recipe in configs/ parses with the real CLI (`--print_config` validates class paths,
argument names and types without instantiating anything)."""
from pathlib import Path

import pytest
import yaml

from modules.cli import main

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
# configs/ladder/ holds `spine ladder` plans (chains of commands), not LightningCLI configs
CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if p.parent.name != "ladder")
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")


def test_there_are_configs():
    names = {p.name for p in CONFIGS}
    assert {"quickstart.yaml", "verdict.yaml", "gpt2-124m.yaml", "qwen3-tiny.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1] if p.parent.name == "eval" else p.parent)))
def test_config_parses(path, capsys):
    subcommand = "validate" if path.parent.name == "eval" else "fit"
    with pytest.raises(SystemExit) as exc:
        main([subcommand, "--config", str(path), "--print_config"])
    assert exc.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    original = yaml.safe_load(path.read_text())
    assert printed["model"]["class_path"].endswith(original["model"]["class_path"].split(".")[-1])
    assert printed["data"]["class_path"].endswith(original["data"]["class_path"].split(".")[-1])


def test_unknown_model_argument_is_reported(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text((CONFIG_DIR / "qwen3-tiny.yaml").read_text().replace("lr: 3.0e-3", "learning_rate: 3.0e-3"))
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(bad), "--print_config"])
    assert exc.value.code != 0
    assert "learning_rate" in capsys.readouterr().err
