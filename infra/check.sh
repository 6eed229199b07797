#!/usr/bin/env bash
# Infrastructure checks (part of `make test`): checkov over infra/ with our Service Bus checks, then the Bicep
# parse tests. checkov pins many packages, so both run from their own virtual environment, .venv-infra, built
# on first use and rebuilt only when requirements-infra.txt changes.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-infra
stamp="$venv/.requirements-infra.txt"
if ! cmp -s requirements-infra.txt "$stamp"; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r requirements-infra.txt
  cp requirements-infra.txt "$stamp"
fi

# --skip-download: offline (no vendor API); a failed check or a parse error exits non-zero.
"$venv/bin/checkov" -d infra --framework bicep --skip-download --external-checks-dir infra/checks --compact --quiet

# -c: pytest reads infra/tests/pytest.ini only, not the root pyproject (its asyncio settings need a plugin
# this venv does not have).
"$venv/bin/python" -m pytest -c infra/tests/pytest.ini --rootdir infra infra/tests
