"""HR mapping rules (``GRANTS_HR_RULES``, JSON): which grants a person's HR attributes give.

```json
{"rules": [
  {"name": "emea-unit", "when": {"location": "EMEA"},
   "grants": [{"type": "administrativeUnit", "id": "ae000000-0000-4000-8000-000000000001"}]},
  {"name": "helpdesk", "when": {"jobCode": ["HD1", "HD2"], "department": "IT"},
   "grants": [{"type": "directoryRole", "roleTemplateId": "729827e3-9c14-49f7-bb1b-9608f156bbb8"}]}
]}
```

``"leavers": "immediately"`` (optional; default ``"endOfDay"``) removes a leaver's access as soon as the event
arrives instead of at the end of its effective date.

A rule applies when every attribute in ``when`` matches (``department``, ``location``, ``jobCode``; a value
or a list of values, any of which may match; compared case-insensitively); an empty ``when`` applies to
everyone. ``grants`` are targets in the message contract's shapes (administrativeUnit, directoryRole by id
or roleTemplateId, scopedRole), checked by the contract's own parser. `HrRules.load` raises `ConfigError`
naming the file, the rule and the field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from shared.core.contract import Target, parse_target
from shared.core.errors import ConfigError, ContractError

__all__ = ["ATTRIBUTES", "HrRules", "Rule"]

#: The HR attributes a rule may test.
ATTRIBUTES: Final = ("department", "location", "jobCode")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}", re.ASCII)


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule: attribute → accepted values (case-folded), and the targets it gives."""

    name: str
    when: Mapping[str, frozenset[str]]
    targets: tuple[Target, ...]

    def applies(self, attributes: Mapping[str, str | None]) -> bool:
        return all((attributes.get(key) or "").casefold() in values for key, values in self.when.items())


@dataclass(frozen=True, slots=True)
class HrRules:
    """The validated rules file."""

    rules: tuple[Rule, ...]
    #: When a leaver loses access: ``endOfDay`` (default: at the end of the effective date) or ``immediately``.
    leavers: str = "endOfDay"

    @classmethod
    def load(cls, path: str | Path) -> HrRules:
        """Read and validate the rules file; raise `ConfigError` naming the file, rule and field."""
        where = f"GRANTS_HR_RULES file {str(path)!r}"
        try:
            document = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as error:
            raise ConfigError(f"{where} cannot be read: {error.strerror}") from None
        except ValueError as error:
            raise ConfigError(f"{where} is not JSON: {error}") from None
        return cls.parse(document, where=where)

    @classmethod
    def parse(cls, document: Any, *, where: str) -> HrRules:
        """Validate a parsed rules document (see the module docstring)."""
        if (
            not isinstance(document, dict)
            or "rules" not in document
            or not set(document) <= {"rules", "leavers"}
            or not isinstance(document["rules"], list)
        ):
            raise ConfigError(f'{where} must be an object with "rules" (a list of rules) and optionally "leavers"')
        leavers = document.get("leavers", "endOfDay")
        if leavers not in ("endOfDay", "immediately"):
            raise ConfigError(f'{where}: "leavers" must be "endOfDay" or "immediately", got {leavers!r}')
        rules: list[Rule] = []
        names: set[str] = set()
        for index, raw in enumerate(document["rules"], start=1):
            rule = _rule(raw, f"{where}, rule {index}")
            if rule.name in names:
                raise ConfigError(f"{where}, rule {index}: the name {rule.name!r} is used by an earlier rule")
            names.add(rule.name)
            rules.append(rule)
        return cls(tuple(rules), leavers=leavers)

    def targets_for(self, attributes: Mapping[str, str | None]) -> dict[Target, list[str]]:
        """The targets the rules give a person with `attributes`: canonical target → names of the rules."""
        given: dict[Target, list[str]] = {}
        for rule in self.rules:
            if rule.applies(attributes):
                for target in rule.targets:
                    given.setdefault(target, []).append(rule.name)
        return given

    def every_target(self) -> dict[Target, list[str]]:
        """Every target any rule can give (what a leaver loses)."""
        given: dict[Target, list[str]] = {}
        for rule in self.rules:
            for target in rule.targets:
                given.setdefault(target, []).append(rule.name)
        return given


def _rule(raw: Any, where: str) -> Rule:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be an object")
    unknown = sorted(set(raw) - {"name", "when", "grants"})
    if unknown:
        raise ConfigError(f"{where}: {unknown[0]!r} is not a field of a rule (name, when, grants)")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"{where}: name is required: 1 to 64 letters, digits, spaces and . _ -")
    where = f"{where} ({name})"
    when = raw.get("when", {})
    if not isinstance(when, dict):
        raise ConfigError(f"{where}: when must be an object of attribute: value(s)")
    matches: dict[str, frozenset[str]] = {}
    for key, value in when.items():
        if key not in ATTRIBUTES:
            raise ConfigError(f"{where}: when.{key} is not an HR attribute (use {', '.join(ATTRIBUTES)})")
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
            raise ConfigError(f"{where}: when.{key} must be a non-empty string or a non-empty list of them")
        matches[key] = frozenset(v.casefold() for v in values)
    grants = raw.get("grants")
    if not isinstance(grants, list) or not grants:
        raise ConfigError(f"{where}: grants must be a non-empty list of targets")
    return Rule(
        name=name, when=matches, targets=tuple(_target(t, f"{where}: grants[{i}]") for i, t in enumerate(grants))
    )


def _target(raw: Any, where: str) -> Target:
    """The target, validated by the contract's own parser (for a user, the member HR events are about)."""
    try:
        return parse_target(raw)
    except ContractError as error:
        raise ConfigError(f"{where}: {error.description}") from None
