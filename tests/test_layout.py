"""The floor plan: only the app ships, and imports run one way (entry → service → core, adapters at the edge)."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GIT = shutil.which("git") or "git"

#: Which of the app's layers each layer may import (besides itself, the standard library and third parties).
LAYERS: dict[str, set[str]] = {
    "shared.core": set(),
    "shared.adapters": {"shared.core"},
    "shared.service": {"shared.core", "shared.adapters"},
    "shared.handlers": {"shared.core", "shared.adapters", "shared.service"},
    "shared.config": {"shared.core"},
    "shared.bootstrap": {"shared.core", "shared.adapters", "shared.service", "shared.handlers", "shared.config"},
    "shared.runtime": {"shared"},
}
NOT_SHIPPED = ("grants_common", "grants_cli", "grants_local", "grants_client", "tests", "benchmarks", "infra")


def git(*args: str, stdin: str | None = None) -> str:
    """What git prints (check-ignore exits 1 when nothing is ignored, so the exit code is not checked)."""
    return subprocess.run([GIT, *args], cwd=ROOT, input=stdin, capture_output=True, text=True).stdout  # noqa: S603


def deployed_files() -> set[str]:
    """The tracked files `.funcignore` lets through to Azure (as the deploy tools read it: gitignore syntax)."""
    checked = git(
        "-c",
        "core.excludesFile=.funcignore",
        "check-ignore",
        "--no-index",
        "--stdin",
        "-v",
        "-n",
        stdin=git("ls-files"),
    )
    return {line.split("\t", 1)[1] for line in checked.splitlines() if line.startswith("::\t")}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> Iterator[str]:
    """Every module `path` imports, at the top or inside a function."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def app_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted((ROOT / "shared").rglob("*.py")) if path.name != "__main__.py"}


def test_only_the_app_is_deployed() -> None:
    """function_app.py, host.json, requirements.txt and the shared/ package; no CLI, double, test or doc."""
    app = {name for name in git("ls-files", "shared").split() if name != "shared/__main__.py"}
    assert deployed_files() == {"function_app.py", "host.json", "requirements.txt", *app}


@pytest.mark.parametrize("name", [*sorted(app_modules()), "function_app"])
def test_the_app_imports_nothing_that_is_not_deployed(name: str) -> None:
    path = ROOT / "function_app.py" if name == "function_app" else app_modules()[name]
    leaks = [module for module in imports(path) if module.split(".")[0] in NOT_SHIPPED]
    assert leaks == [], f"{name} imports what is not deployed"


@pytest.mark.parametrize("name", sorted(app_modules()))
def test_imports_run_one_way(name: str) -> None:
    """Core imports no other layer; adapters only core; the service core and adapters; and so on."""
    layer = next((prefix for prefix in LAYERS if name == prefix or name.startswith(prefix + ".")), None)
    if layer is None:
        assert name == "shared"
        return
    allowed = LAYERS[layer] | {layer}
    for module in imports(app_modules()[name]):
        if module.split(".")[0] != "shared" or module == "shared":
            continue
        assert any(module == prefix or module.startswith(prefix + ".") for prefix in allowed), (
            f"{name} ({layer}) may not import {module}"
        )


#: The packages beside the app, each above the ones after it: the CLI may use the local host and the common
#: floor, the local host only the common floor, the floor neither (all three may use the app, `shared`).
TOOLS = ("grants_cli", "grants_local", "grants_common")


@pytest.mark.parametrize("package", TOOLS)
def test_the_tools_import_one_way_cli_then_local_then_common(package: str) -> None:
    """grants_cli → grants_local → grants_common: what both need lives below both, so neither imports the other
    back."""
    above = set(TOOLS[: TOOLS.index(package)])
    for path in sorted((ROOT / package).rglob("*.py")):
        upward = sorted({module for module in imports(path) if module.split(".")[0] in above})
        assert upward == [], f"{module_name(path)} imports {upward}"


#: The producer client's distribution (client/pyproject.toml) and what it may import besides the standard library and
#: itself: its declared dependencies, by import name.
CLIENT = ROOT / "client"
CLIENT_IMPORTS = ("httpx", "azure")


def test_the_client_imports_only_itself_the_standard_library_and_its_dependencies() -> None:
    """grants_client is installed on its own by producers: never the app (`shared`), the tools or the doubles."""
    for path in sorted((CLIENT / "grants_client").rglob("*.py")):
        foreign = sorted(
            {
                module
                for module in imports(path)
                if module.split(".")[0] not in {"grants_client", *CLIENT_IMPORTS}
                and module.split(".")[0] not in sys.stdlib_module_names
            }
        )
        assert foreign == [], f"{path.relative_to(ROOT)} imports {foreign}"


def test_the_clients_dependencies_are_httpx_and_the_service_bus_and_identity_sdks_pinned_for_the_app_too() -> None:
    """Its own pyproject names exactly those; requirements.txt pins each, so the repository's venv tests the client on
    the versions the app runs."""
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    named = {re.split(r"[<>=!~ \[]", requirement, maxsplit=1)[0] for requirement in project["dependencies"]}
    assert named == {"httpx", "azure-servicebus", "azure-identity"}
    pinned = {line.split("==")[0] for line in (ROOT / "requirements.txt").read_text().splitlines() if "==" in line}
    assert named <= pinned


def test_no_import_cycles() -> None:
    """Between the modules of the app, the CLI and the local doubles (top-level and deferred imports alike)."""
    modules = {
        module_name(path): path
        for package in ("shared", *TOOLS)
        for path in (ROOT / package).rglob("*.py")
        if path.name != "__main__.py"
    }
    graph = {name: {m for m in imports(path) if m in modules and m != name} for name, path in modules.items()}
    done: set[str] = set()

    def visit(name: str, trail: tuple[str, ...]) -> None:
        if name in trail:
            raise AssertionError("import cycle: " + " -> ".join((*trail[trail.index(name) :], name)))
        if name in done:
            return
        for other in sorted(graph[name]):
            visit(other, (*trail, name))
        done.add(name)

    for name in sorted(graph):
        visit(name, ())
