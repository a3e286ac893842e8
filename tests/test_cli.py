"""What a new user meets first at the `spine` command: help listings, one-line option errors with a
"did you mean", no option prefixes, `--data.help`, and the `latest` run link."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from modules.cli import link_latest, main, short_error

ROOT = Path(__file__).resolve().parents[1]


def _run(capsys, argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # LightningCLI's parser exits on --help / errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)  # the configs' relative paths
    monkeypatch.delenv("SPINE_DEBUG", raising=False)


def test_top_level_help_lists_trainer_stages_and_tools(capsys):
    code, out, _ = _run(capsys, ["--help"])
    assert code == 0
    commands = {line.split()[0] for line in out.splitlines() if line.startswith("  ") and line.split()}
    assert {"fit", "validate", "test", "predict", "generate", "import-hf", "export-hf", "eval", "report",
            "configs", "classify"} <= commands


def test_unknown_command_suggests_the_nearest(capsys):
    code, _, err = _run(capsys, ["fitt"])
    assert code == 2 and "did you mean fit?" in err and len(err.strip().splitlines()) == 2


@pytest.mark.parametrize("flag, expected", [
    # a typo in a class option: one line naming the class and the nearest option
    (["--model.init_args.lrr", "2"], "spine fit: error: --model: modules.PretrainModule has no option 'lrr'; did you mean lr?"),
    (["--data.init_args.sourc", "x"], "has no option 'sourc'; did you mean source?"),
    # a prefix of a real option is not that option
    (["--trainer.max_step", "2"], "spine fit: error: unknown option --trainer.max_step; did you mean --trainer.max_steps?"),
    (["--model.init_args.lr", "abc"], "--model.init_args.lr (modules.PretrainModule): Expected a <class 'float'>"),
    (["--model", "modules.PretrainModul"], "did you mean modules.PretrainModule?"),
])
def test_option_errors_are_one_line(capsys, in_repo, flag, expected):
    code, out, err = _run(capsys, ["fit", "--config", "configs/quickstart.yaml", *flag, "--print_config"])
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], err
    assert "Union" not in err and out == ""


def test_data_help_by_short_class_name(capsys, in_repo):
    code, out, _ = _run(capsys, ["fit", "--data.help", "PretrainDataModule"])
    assert code == 0 and "--data.source" in out and "--data.context_length" in out


def test_fit_help_lists_the_data_modules_and_describes_options(capsys, in_repo):
    code, out, _ = _run(capsys, ["fit", "--help"])
    assert code == 0 and "datamodules.PretrainDataModule" in out and "datamodules.ClassificationDataModule" in out
    code, out, _ = _run(capsys, ["fit", "--model.help", "PretrainModule"])
    flat = " ".join(out.split())
    assert code == 0 and "gpt2-124m" in flat and "warmup" in flat  # preset names, scheduler described
    code, out, _ = _run(capsys, ["fit", "--data.help", "PretrainDataModule"])
    flat = " ".join(out.split())
    assert "URL#sha256=" in flat and "synthetic" in flat  # the source syntax


def test_short_error_keeps_unknown_messages_short():
    assert short_error("something odd\nhappened\nhere\nand more", []) == "something odd happened"


def test_latest_link_points_at_the_run_and_never_replaces_a_folder(tmp_path):
    v0, v1 = tmp_path / "version_0", tmp_path / "version_1"
    v0.mkdir(), v1.mkdir()
    (v1 / "metrics.csv").write_text("x")
    link = link_latest(v0)
    assert link.resolve() == v0.resolve()
    link_latest(v1)
    assert (tmp_path / "latest" / "metrics.csv").read_text() == "x"
    assert link_latest(tmp_path / "missing") is None
    other = tmp_path / "b"
    (other / "latest").mkdir(parents=True)
    (other / "version_0").mkdir()
    assert link_latest(other / "version_0") is None and (other / "latest").is_dir()


def test_configs_lists_every_shipped_recipe_with_its_header(capsys, monkeypatch):
    """Every recipe, in two lines (name + summary; cpu and gpu) no wider than the terminal: long fields cut
    with an ellipsis, shown whole with --verbose true. Every shipped recipe has a summary header."""
    from spine.recipes import read_header

    shipped = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml"))
    for cols in (40, 100):
        monkeypatch.setenv("COLUMNS", str(cols))
        code, out, err = _run(capsys, ["configs"])
        assert code == 0, err
        lines = out.splitlines()
        listed = [line.split()[0] for line in lines if line.startswith("configs/")]
        assert listed == shipped
        assert all(len(line) <= cols for line in lines), max(lines, key=len)
    i = next(i for i, line in enumerate(lines) if line.startswith("configs/quickstart.yaml"))
    header = read_header(ROOT / "configs" / "quickstart.yaml")
    summary, times = lines[i], lines[i + 1]
    assert header["summary"][:40] in summary and times.strip().startswith("cpu: " + header["cpu"][:20])
    long = next((name, h) for name, h in ((p, read_header(ROOT / p)) for p in shipped) if len(h.get("cpu", "")) > 60)
    j = lines.index(next(line for line in lines if line.startswith(long[0])))
    assert "…" in lines[j + 1] and long[1]["cpu"] not in lines[j + 1]
    for path in shipped:  # every recipe says what it does in its own header, and no field swallowed a command line
        text = (ROOT / path).read_text()
        assert text.startswith("# summary:") or "\n# summary:" in text.split("\n\n")[0], path
        assert not any(re.search(r"spine fit --config|-> runs/", v) for v in read_header(ROOT / path).values()), path
    code, out, err = _run(capsys, ["configs", "--verbose", "true"])
    assert code == 0 and f"  cpu:     {long[1]['cpu']}" in out


def test_config_header_fields_continue_on_indented_comment_lines(tmp_path):
    from spine.recipes import read_header

    (tmp_path / "r.yaml").write_text("# summary: one\n#   two\n# cpu: 3 s\n# a comment, not a field\n#   three\nx: 1\n")
    assert read_header(tmp_path / "r.yaml") == {"summary": "one two", "cpu": "3 s"}
    # an empty value continued; a repeated key (its continuation dropped too); a bare '#' ends a field
    (tmp_path / "e.yaml").write_text("# summary: s\n# gpu:\n#   on a GPU\n# gpu: again\n#   not this\n# cpu: 1 s\n#\n"
                                     "#   spine fit\n")
    assert read_header(tmp_path / "e.yaml") == {"summary": "s", "gpu": "on a GPU", "cpu": "1 s"}


def test_configs_tolerates_recipes_without_a_header(capsys, tmp_path):
    (tmp_path / "plain.yaml").write_text("# Just a comment saying what it does.\n# more\nseed_everything: 1\n")
    (tmp_path / "bare.yaml").write_text("trainer: {}\n")
    (tmp_path / "partial.yml").write_text("# summary: half a header\n# gpu: 3 s, H100\nmodel: {}\n")
    code, out, err = _run(capsys, ["configs", "--config_dir", tmp_path, "--verbose", "true"])
    assert code == 0, err
    blocks = out.split(f"{tmp_path.name}/")
    text = {b.splitlines()[0]: b for b in blocks[1:]}
    assert "summary: Just a comment saying what it does." in text["plain.yaml"] and "cpu:     -" in text["plain.yaml"]
    assert "summary: -" in text["bare.yaml"]
    assert "gpu:     3 s, H100" in text["partial.yml"] and "summary: half a header" in text["partial.yml"]


def test_verdict_offline_without_source_is_one_line(capsys, in_repo, tmp_path, monkeypatch, gpt2_vocab_dir):
    import urllib.error
    import urllib.request

    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    code, out, err = _run(capsys, ["fit", "--config", "configs/verdict.yaml", "--model.init_args.model", "gpt2-tiny",
                                   f"--data.init_args.vocab_dir={gpt2_vocab_dir}", f"--data.init_args.cache_dir={tmp_path}",
                                   f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false",
                                   "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu"])
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("spine fit: error")]
    assert len(lines) == 1 and "could not download https://raw.githubusercontent.com/" in lines[0]
    assert "Traceback" not in err and "local path as the source" in lines[0]
    assert not any((tmp_path / "downloads").glob("*.part")) if (tmp_path / "downloads").exists() else True


def test_default_threads_follow_the_cpus_this_process_may_use(monkeypatch):
    import os

    import torch

    from modules.cli import default_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.delenv("SPINE_NUM_THREADS", raising=False)
        torch.set_num_threads(4)
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
        assert default_threads() == 2 and torch.get_num_threads() == 2  # pinned to 2 CPUs (taskset)
        torch.set_num_threads(2)
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
        assert default_threads() is None and torch.get_num_threads() == 2  # never more than torch's default
        monkeypatch.setenv("OMP_NUM_THREADS", "8")
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
        assert default_threads() is None and torch.get_num_threads() == 2  # the user's setting wins
        monkeypatch.setenv("SPINE_NUM_THREADS", "1")
        assert default_threads() == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("SPINE_NUM_THREADS", "zero")
        with pytest.raises(ValueError, match="SPINE_NUM_THREADS"):
            default_threads()
    finally:
        torch.set_num_threads(before)


def test_tool_options_are_not_prefixes(capsys, tmp_path):
    code, _, err = _run(capsys, ["generate", "--checkpoint", tmp_path, "--prompt", "a", "--max_new_token", "3"])
    assert code == 2 and "unrecognized arguments: --max_new_token" in err


def test_latest_link_never_deletes_a_users_file_named_latest(tmp_path):
    (tmp_path / "version_0").mkdir()
    (tmp_path / "latest").write_text("my notes")
    assert link_latest(tmp_path / "version_0") is None
    assert (tmp_path / "latest").read_text() == "my notes"


def test_fit_never_writes_its_config_over_a_file_in_the_working_directory(capsys, tmp_path, monkeypatch):
    import sys

    sys.path.insert(0, str(ROOT / "tests" / "support"))
    from fit_runner import fit_yaml, synthetic_data, tiny_pretrain_model

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "config.yaml").write_text("mine: true\n")
    cfg = tmp_path / "fit.yaml"
    for root in (work, tmp_path / "run"):  # no run folder of its own (log_dir = cwd), then one
        cfg.write_text(fit_yaml(root, tiny_pretrain_model(), synthetic_data(tmp_path / "cache"), logger=False,
                                max_steps=1, limit_val_batches=0, enable_checkpointing=False,
                                enable_progress_bar=False))
        code, out, err = _run(capsys, ["fit", "--config", cfg])
        assert code in (0, None), err[-2000:]
    assert (work / "config.yaml").read_text() == "mine: true\n"
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "PretrainModule" in saved and "max_steps: 1" in saved  # a run folder still gets its config


def test_output_cut_short_by_a_closed_pipe_is_not_an_error(tmp_path):
    """`spine configs | head -1`: the reader stops early; spine exits 0 with nothing on stderr."""
    import subprocess
    import sys

    for i in range(1000):  # ~300 KB of listing: more than a pipe holds, so the writer does meet the closed end
        (tmp_path / f"r{i:04d}.yaml").write_text(f"# summary: recipe {i} {'x' * 200}\nx: 1\n")
    code = "import sys; from modules.cli import main; sys.exit(main())"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # buffered, as a terminal user has it
    proc = subprocess.Popen([sys.executable, "-c", code, "configs", "--verbose", "true", "--config_dir", str(tmp_path)],
                            cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # like `head -1` exiting
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and "Broken pipe" not in err and "Error" not in err, err
