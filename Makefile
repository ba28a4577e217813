# Two commands do all set-up: `make demo` and `make test`. Both build the pinned environment
# (scripts/bootstrap_env.sh, ~10 minutes once; seconds afterwards) before they run.
SHELL := /bin/bash
PYTHON := .venv/bin/python
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help env test demo bench lint clean

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-6s %s\n", $$1, $$2}'

env:  ## create the pinned venv (torch 2.6.0, onnxruntime-training 1.19.2, torch-ort) if missing
	@scripts/bootstrap_env.sh >/dev/null

test: env lint  ## lint, then the test suite (PYTEST_ARGS="-k lamb" to select)
	$(PYTHON) -m pytest $(PYTEST_ARGS)

lint: env  ## ruff (configured in pyproject.toml)
	$(PYTHON) -m ruff check .

demo: env  ## PubMed sample -> HDF5 -> phase 1 + 2 with ORT on CPU -> HF model -> fill-mask
	bash scripts/demo.sh $(DEMO_ARGS)

bench: env  ## benchmarks: data_prep throughput/memory and training backends side by side
	$(PYTHON) benchmarks/bench_data_prep.py
	$(PYTHON) benchmarks/bench_backends.py

clean:  ## remove demo outputs (the shared venv stays; delete it with `rm -rf "$$(readlink .venv)"`)
	rm -rf demo_output
