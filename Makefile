# Two commands do all set-up: `make demo` and `make test`. Both build the pinned environment
# (scripts/bootstrap_env.sh, ~10 minutes once; seconds afterwards) before they run.
SHELL := /bin/bash
PYTHON := .venv/bin/python
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help env env-current test-jobs test test-current demo demo-full bench lint image image-test image-current image-test-current clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{gsub(/[$$][$$]/, "$$", $$2); printf "  make %-18s %s\n", $$1, $$2}'

env:  ## create the pinned venv (torch 2.6.0, onnxruntime-training 1.19.2, torch-ort) if missing
	@scripts/bootstrap_env.sh >/dev/null

# Test processes (pytest-xdist; 0 = one process). A file's tests stay in one process (--dist loadfile),
# so module fixtures (the Slurm cluster, the installed wheel) start once. On the 2-core CI machine
# 2 processes took the pinned suite from 23:01 to 15:33 (most of a test is starting Python processes).
PYTEST_JOBS ?= 2
PYTEST_PARALLEL := -n $(PYTEST_JOBS) --dist loadfile

test-jobs:
	@[[ "$(PYTEST_JOBS)" =~ ^([0-9]+|auto|logical)$$ ]] || { echo "make: PYTEST_JOBS must be a number of test processes (0: one process) or auto, got '$(PYTEST_JOBS)'" >&2; exit 2; }

test: test-jobs env lint  ## lint, then the test suite (PYTEST_ARGS="-k lamb" to select; PYTEST_JOBS=0 for one process)
	$(PYTHON) -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

env-current:  ## create the current-stack venv .venv-current (recent torch, transformers 5.x, no ORT)
	@BERT_STACK=current scripts/bootstrap_env.sh >/dev/null

# The tests of what depends on the stack (models, objectives, the training loop, exact resume,
# fine-tuning, export, inference, the installed wheel), on the current stack: tests that need ONNX
# Runtime training skip there with the reason. Deselected: `stack_free` tests (data_prep, launchers,
# Slurm, multi-node and kill orchestration, Azure ML, Docker files: they ran once, in `make test`).
# Not collected: the environment check (it pins the ORT stack) and the image's in-image checks.
test-current: test-jobs env-current  ## the test suite on the current stack (PYTEST_ARGS as for test)
	.venv-current/bin/python -m pytest $(PYTEST_PARALLEL) -m "not stack_free" --ignore=tests/test_environment.py \
		--ignore=tests/integration/test_docker_image.py $(PYTEST_ARGS)

lint: env  ## ruff (configured in pyproject.toml)
	$(PYTHON) -m ruff check .

demo: env  ## PubMed sample -> HDF5 / packed -> BERT (ORT), ModernBERT, continued pretraining, Llama on EHR timelines, T5 -> linear probe of every start -> 1 fine-tune -> ORT int8 scoring
	bash scripts/demo.sh $(DEMO_ARGS)

demo-full: env  ## the demo plus the six-row fine-tuning table over 3 seeds (DEMO_FULL=1)
	DEMO_FULL=1 bash scripts/demo.sh $(DEMO_ARGS)

bench: env  ## benchmarks: data_prep throughput/memory and training backends side by side
	$(PYTHON) benchmarks/bench_data_prep.py
	$(PYTHON) benchmarks/bench_backends.py

image:  ## build the CPU image (docker, else buildah) from docker/Dockerfile.cpu
	bash docker/test_image.sh --build-only

image-test:  ## build the CPU image and run the checks inside it (~15 min on 2 cores)
	bash docker/test_image.sh

image-current:  ## build the current-stack GPU image (PyPI's CUDA torch, no NVIDIA base) from docker/Dockerfile.current
	bash docker/test_image.sh --current --build-only

image-test-current:  ## build the current-stack GPU image and run its checks inside it (CPU; no GPU needed)
	bash docker/test_image.sh --current

clean:  ## remove demo outputs (the shared venv stays; delete it with `rm -rf "$$(readlink .venv)"`)
	rm -rf demo_output
