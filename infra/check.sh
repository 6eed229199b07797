#!/usr/bin/env bash
# Infrastructure checks (part of `make test`): checkov with our Service Bus checks, then the parse tests.
# checkov pins many packages, so it lives in its own virtual environment, .venv-infra.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-infra
if [ ! -f "$venv/.installed" ] || [ requirements-infra.txt -nt "$venv/.installed" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -r requirements-infra.txt
  touch "$venv/.installed"
fi
"$venv/bin/checkov" -d infra --framework bicep --skip-download --external-checks-dir infra/checks --quiet --compact
"$venv/bin/python" -m pytest -c infra/tests/pytest.ini --rootdir infra infra/tests
