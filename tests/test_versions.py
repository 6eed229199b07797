"""The versions docs/core-tools.md states are the ones the project pins and deploys."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = (ROOT / "docs" / "core-tools.md").read_text(encoding="utf-8")


def stated(what: str) -> str:
    """The version the docs' table states for `what` (its first row naming it)."""
    for line in DOCS.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 3 and what in cells[0]:
            return cells[1]
    raise AssertionError(f"docs/core-tools.md states no version for {what}")


def pinned(package: str) -> str:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        if name.strip() == package:
            return version.strip()
    raise AssertionError(f"requirements.txt does not pin {package}")


def test_python_is_the_one_the_project_requires_type_checks_and_deploys() -> None:
    assert stated("Python") == "3.11"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["requires-python"] == ">=3.11"
    assert project["tool"]["mypy"]["python_version"] == "3.11"
    functionapp = (ROOT / "infra" / "modules" / "functionapp.bicep").read_text()
    assert re.search(r"runtime: \{ name: 'python', version: '3\.11' \}", functionapp)


def test_the_service_bus_binding_is_the_pinned_preview() -> None:
    package = "azurefunctions-extensions-bindings-servicebus"
    assert f"`{package}`" in DOCS
    version = pinned(package)
    assert stated(package).startswith(f"{version}, **a preview**")
    assert re.search(r"b\d+$", version), "a beta: the docs call it a preview"


def test_the_extension_bundle_range_is_host_jsons() -> None:
    host = json.loads((ROOT / "host.json").read_text())
    assert host["extensionBundle"]["id"] == "Microsoft.Azure.Functions.ExtensionBundle"
    assert stated("extension bundle") == f"`{host['extensionBundle']['version']}`"
    assert host["extensions"]["serviceBus"]["autoCompleteMessages"] is False  # explicit settlement needs it off


def test_the_worker_and_host_versions_name_their_sources() -> None:
    assert stated("Python worker") == "4.40.0 or later"
    assert "PR #1763" in DOCS
    assert "#11391" in DOCS


def test_the_flex_consumption_notes_match_the_bicep() -> None:
    """Flex Consumption: the runtime is a property of the app (no FUNCTIONS_WORKER_RUNTIME setting) and the host's
    storage is reached by identity (no AzureWebJobsStorage connection string), as docs/core-tools.md says."""
    functionapp = (ROOT / "infra" / "modules" / "functionapp.bicep").read_text()
    assert "tier: 'FlexConsumption'" in functionapp
    assert "FUNCTIONS_WORKER_RUNTIME" not in functionapp
    assert "name: 'AzureWebJobsStorage__accountName'" in functionapp
    assert "name: 'AzureWebJobsStorage'" not in functionapp
    assert "no `FUNCTIONS_WORKER_RUNTIME` or `AzureWebJobsStorage` connection string" in DOCS
