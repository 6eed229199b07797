"""The Bicep in infra/, as pycep parses it: templates, resources, and the few expression shapes the tests read."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from pycep import BicepParser

INFRA = Path(__file__).resolve().parent.parent
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))


@cache
def parse(path: Path) -> dict[str, Any]:
    template: dict[str, Any] = BicepParser().parse(file_path=path)
    return template


def module(name: str) -> dict[str, Any]:
    return parse(INFRA / "modules" / f"{name}.bicep")


def resource(module_name: str, name: str) -> dict[str, Any]:
    config: dict[str, Any] = module(module_name)["resources"][name]["config"]
    return config


def accessor(expression: Any) -> list[str]:
    """``a.b.c`` as pycep parses it -> ``["a", "b", "c"]``."""
    if isinstance(expression, str):
        return [expression]
    operands = expression["operator"]["operands"]
    assert expression["operator"]["type"] == "property_accessor", expression
    return [*accessor(operands["operand_1"]), *accessor(operands["operand_2"])]


def loop(config: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """``[for item in array: {body}]`` -> ``(item, array, body)``."""
    detail = config["loop_type"]["detail"]
    return detail["item_name"], detail["array_name"], config["config"]
