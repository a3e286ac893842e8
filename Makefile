# Two commands for a fresh clone: `make quickstart` and `make test`. Each creates .venv on first use
# (torch first, so pip does not pick a torch build for you; see README "Setup"), then runs.
# The recipe lines are the README's own commands, and .ci/run calls `make test` (tests/test_readme.py).
# Another torch build: make TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126" setup
.PHONY: setup quickstart test

TORCH_SPEC ?= torch==2.13.0

.venv/.installed: pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install $(TORCH_SPEC)
	.venv/bin/pip install -e '.[dev]'
	touch .venv/.installed

setup: .venv/.installed

quickstart: setup
	.venv/bin/spine fit --config configs/quickstart.yaml

test: setup
	.venv/bin/python -m pytest -q
