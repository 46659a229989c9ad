# The TRL and verl plug-ins (src/entropy_rl/integrations, docs/scaling.md), each checked in its own environment on
# the CPU. Included from the Makefile; opt-in: not part of `make test`.
#   make trl-check    .venv-trl: trl 1.16 + the project; tests/test_integrations_trl.py (tiny Llama, GRPOTrainer)
#   make verl-check   .venv-verl: verl 0.9.1 (pins transformers < 5.11, so the project goes in with --no-deps);
#                     tests/test_integrations_verl.py (verl's policy-loss and advantage registries)
#   make bench-rl-step  .venv-trl: benchmarks/bench_rl_step.py, the project's RL step against TRL's GRPOTrainer on
#                     the tiny profile's SFT model and data (runs/tiny: `dvc repro sft@tiny`), alternating, 1 thread;
#                     rows appended to benchmarks/results/rl_step.csv, summary in rl_step.md (minutes on 2 cores).
#                     BENCH_ARGS passes options, e.g. make bench-rl-step BENCH_ARGS="--quick --out /tmp/rlbench"
PYTHON ?= python3
TRL_VENV ?= .venv-trl
VERL_VENV ?= .venv-verl
# the stamps carry a checksum of what the environment is built from, so a change reinstalls it
TRL_STAMP := $(TRL_VENV)/.installed-$(shell cat pyproject.toml constraints.txt integrations.mk | cksum | cut -d' ' -f1)
VERL_STAMP := $(VERL_VENV)/.installed-$(shell cat pyproject.toml integrations.mk | cksum | cut -d' ' -f1)

.PHONY: trl-check verl-check trl-venv verl-venv integrations-check bench-rl-step

trl-venv: $(TRL_STAMP)
$(TRL_STAMP):
	@test -x $(TRL_VENV)/bin/python || $(PYTHON) -m venv $(TRL_VENV)
	$(TRL_VENV)/bin/python -m pip install --quiet --upgrade pip
	# torch is pinned in the same command: an unpinned torch resolves a multi-GB CUDA build.
	$(TRL_VENV)/bin/python -m pip install --quiet -c constraints.txt "torch==2.13.0" "trl==1.16.0" "peft==0.21.2" \
		datasets "pytest>=8" -e .
	@rm -f $(TRL_VENV)/.installed-* && touch $@

verl-venv: $(VERL_STAMP)
$(VERL_STAMP):
	@test -x $(VERL_VENV)/bin/python || $(PYTHON) -m venv $(VERL_VENV)
	$(VERL_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VERL_VENV)/bin/python -m pip install --quiet "torch==2.13.0" "verl==0.9.1" numpy pyyaml "pytest>=8"
	# the project requires transformers >= 5.19, verl 0.9.1 < 5.11: the project without its deps (its objectives,
	# token statistics and config need only torch, numpy and pyyaml)
	$(VERL_VENV)/bin/python -m pip install --quiet --no-deps -e .
	@rm -f $(VERL_VENV)/.installed-* && touch $@

trl-check: trl-venv
	$(TRL_VENV)/bin/python -m pytest -q -p no:cacheprovider -W ignore::FutureWarning tests/test_integrations_trl.py

verl-check: verl-venv
	$(VERL_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_integrations_verl.py

integrations-check: trl-check verl-check

BENCH_ARGS ?=
bench-rl-step: trl-venv
	$(TRL_VENV)/bin/python benchmarks/bench_rl_step.py $(BENCH_ARGS)
