# Two commands for a fresh clone: `make quickstart` and `make test`.
# Both create .venv (with every dependency) when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/biasbench: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(BIN)/biasbench

.PHONY: setup quickstart test test-slow bench lint
setup: $(BIN)/biasbench

quickstart: setup
	$(BIN)/biasbench train recipes/quickstart.yaml --out runs --overwrite

test: setup
	$(BIN)/python -m pytest

test-slow: setup
	$(BIN)/python -m pytest -m slow

lint: setup
	$(BIN)/ruff check biasbench tests benchmarks
