# Set-up, run and test in one place. Every target creates the virtual environment and installs what it
# needs first, and does nothing more when that is already done.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# PyTorch is installed before the rest, pinned, so pip never swaps in another build: from PyPI this is the
# CUDA build; on a CPU-only machine point pip at the CPU wheels first, e.g.
#   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu make run
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
DATASET ?= ../shared/data/cranfield

.PHONY: setup run test lint quality benchmarks clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

setup: $(STAMP)

## Start the app on the sample corpus (pass flags with ARGS="--corpus DIR ...").
run: setup
	$(BIN)/python app.py $(ARGS)

## Lint, then the whole test suite.
test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .

## First-stage quality floors on a BEIR collection (default: the shared Cranfield copy).
quality: setup
	$(BIN)/python benchmarks/quality.py $(DATASET)

## Speed and memory figures quoted in the README.
benchmarks: setup
	$(BIN)/python benchmarks/bm25_engines.py $(DATASET)
	$(BIN)/python benchmarks/retrieval.py $(DATASET)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
