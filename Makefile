# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint types unit infra bench soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.runtime: requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@ $(VENV)/.runtime

demo: $(VENV)/.runtime
	$(BIN)/grants demo

test: lint types unit infra

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(VENV)/.dev
	$(BIN)/mypy --strict shared grants_cli grants_local

unit: $(VENV)/.dev
	$(BIN)/python -m pytest

# checkov and the Bicep parse tests, in their own venv (.venv-infra): checkov pins many packages.
infra:
	bash infra/check.sh

# Not part of `make test`: throughput, CPU vs msgraph-sdk, cold start, installed size (ARGS="--quick" for a
# short run). msgraph-sdk is only compared against, in its own venv (.venv-msgraph).
.venv-msgraph/.installed: benchmarks/requirements-msgraph.txt
	$(PYTHON) -m venv .venv-msgraph
	.venv-msgraph/bin/python -m pip install -q -r benchmarks/requirements-msgraph.txt
	touch $@

bench: $(VENV)/.dev .venv-msgraph/.installed
	GRPC_VERBOSITY=ERROR $(BIN)/python -m benchmarks.bench $(ARGS)

# Not part of `make test` (its 500-message variant is, in tests/test_soak.py): 10,000 messages with seeded faults,
# invariants checked (ARGS="--messages 2000 --seed 7"); exits non-zero when one fails.
soak: $(VENV)/.dev
	GRPC_VERBOSITY=ERROR $(BIN)/python -m grants_local.soak $(ARGS)

clean:
	rm -rf $(VENV) .venv-infra .venv-msgraph .mypy_cache .ruff_cache .pytest_cache .hypothesis
