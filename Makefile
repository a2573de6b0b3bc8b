# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Both create the local virtualenv .venv and install the project into it on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# pipefail: a command piped through a filter (pip through grep) fails the rule when the command fails.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# pip's "WARNING: Location ..." lines (a venv on another path) are noise; grep exits 1 when it prints nothing.
QUIET_PIP := { grep -v '^WARNING: Location' || true; }

.PHONY: venv test lint demo simulate bench al-benchmark reliability mutation clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip 2>&1 | $(QUIET_PIP)
	$(BIN)/python -m pip install --quiet -e '.[dev]' 2>&1 | $(QUIET_PIP)
	$(BIN)/python -c 'import torch, torchvision, model, ls_backend'
	touch $(STAMP)

lint: venv
	$(BIN)/ruff check .

# Redis: the one at 127.0.0.1:6379, else a private redis-server for the run (tests/services.py).
test: lint
	$(BIN)/python -m pytest -q

demo: venv
	$(BIN)/rgbt-al demo

# Every benchmark (about 20 minutes on 2 CPU cores): benchmarks/results/<device>.json and the README's
# performance table. BENCH_ARGS=--quick for a smoke run, BENCH_ARGS="--only push" for some.
bench: venv
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

# Active learning on the synthetic generator (detection + segmentation, 3 seeds, 5 strategies; about 25-30 minutes
# per task on 2 idle CPU cores): resumable; writes benchmarks/results/al_synthetic/ and the README's results
# section. On a GPU: .venv/bin/python benchmarks/al_synthetic.py --preset paper --parallel (the paper's b, B).
al-benchmark: venv
	$(BIN)/python benchmarks/al_synthetic.py

# The fault and fuzz tests' figures into benchmarks/results/reliability.json (a plain test run writes them to
# a temporary file instead). Needs what `make test` needs; a few minutes.
reliability: venv
	RGBT_RELIABILITY_RESULTS=$(CURDIR)/benchmarks/results/reliability.json $(BIN)/python -m pytest -q \
		tests/unit/test_app_fuzz.py tests/integration/test_faults.py tests/e2e/test_faults.py

# Mutation testing (mutmut) of the core modules against their unit tests; not in CI (long on a small CPU).
# Scratch copies and cached results in build/mutation/; MUTATION_ARGS="model/postprocess.py" for one module.
mutation: venv
	$(BIN)/python tests/mutation.py $(MUTATION_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build/mutation
