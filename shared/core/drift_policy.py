"""The grant policy's ``drift`` section: what a drift sweep may do to each target, and the blast-radius guard.

In the policy file (``GRANTS_POLICY``), beside ``sources``; every key is optional:

```json
"drift": {
  "defaultMode": "report",
  "guard": {"fraction": 0.2, "cap": 50},
  "targets": [
    {"target": {"type": "administrativeUnit", "id": "<unit id>"}, "mode": "restore"},
    {"target": {"type": "directoryRole", "roleTemplateId": "<template id>"}, "mode": "authoritative"},
    {"target": {"type": "scopedRole", "roleTemplateId": "<template id>", "administrativeUnitId": "<unit id>"},
     "mode": "report"}
  ]
}
```

A target is written as a message's ``target`` (the contract's parser reads it); a directory role by its template.
Every target named here is swept, even one the ledger has no request for (all its members are then *unmanaged*);
every other target the ledger knows gets ``defaultMode`` (``report`` unless set). A tier-0 role may be named only
with ``report``: drift never writes to one (`shared.core.drift.is_tier0`), and a policy saying otherwise is refused
at start-up rather than ignored. Without a policy file, or without a ``drift`` section: every target ``report``, the
default guard (20 % of a target's members, at most 50).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from shared.core.contract import DirectoryRole, Target, parse_target
from shared.core.drift import DEFAULT_GUARD, Guard, Mode, is_tier0
from shared.core.errors import ConfigError, ContractError
from shared.core.policy import policy_document

__all__ = ["DriftPolicy"]

_KEYS: Final = ("defaultMode", "guard", "targets")
_BUILT_IN: Final = "built-in default"


@dataclass(frozen=True, slots=True, kw_only=True)
class DriftPolicy:
    """Each named target's `Mode` (`modes`), every other target's (`default`), the `guard`, where it came from."""

    modes: Mapping[Target, Mode] = field(default_factory=dict)
    default: Mode = Mode.REPORT
    guard: Guard = DEFAULT_GUARD
    origin: str = _BUILT_IN

    def mode_of(self, target: Target) -> Mode:
        """The mode of `target` (a directory role by its template)."""
        return self.modes.get(target, self.default)

    @property
    def targets(self) -> tuple[Target, ...]:
        """The targets the policy names: swept even when the ledger knows none of their members."""
        return tuple(self.modes)

    @classmethod
    def load(cls, file: str | Path | None) -> DriftPolicy:
        """The ``drift`` section of policy file `file` (the built-in default when None or absent); `ConfigError`
        naming the first problem."""
        if file is None:
            return cls()
        document = policy_document(file)
        section = document.get("drift") if isinstance(document, dict) else None
        return cls() if section is None else cls.parse(section, origin=str(file))

    @classmethod
    def parse(cls, section: Any, *, origin: str) -> DriftPolicy:
        """Read a ``drift`` section (see the module docstring); `ConfigError` naming the first problem."""
        where = f"GRANTS_POLICY: {origin}: drift"
        if not isinstance(section, dict):
            raise ConfigError(f"{where} must be an object")
        unknown = sorted(set(section) - set(_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(_KEYS)})")
        default = _mode(section.get("defaultMode", Mode.REPORT.value), f"{where}.defaultMode")
        guard = _guard(section.get("guard", {}), f"{where}.guard")
        targets = section.get("targets", [])
        if not isinstance(targets, list):
            raise ConfigError(f"{where}.targets must be a list")
        modes: dict[Target, Mode] = {}
        for index, entry in enumerate(targets):
            at = f"{where}.targets[{index}]"
            if not isinstance(entry, dict) or set(entry) != {"target", "mode"}:
                raise ConfigError(f'{at} must be an object with "target" and "mode"')
            try:
                target = parse_target(entry["target"])
            except ContractError as error:
                raise ConfigError(f"{at}: {error.description}") from None
            if isinstance(target, DirectoryRole) and target.id is not None:
                raise ConfigError(f"{at}: name a directory role by its roleTemplateId")
            mode = _mode(entry["mode"], f"{at}.mode")
            if is_tier0(target) and mode is not Mode.REPORT:
                raise ConfigError(f"{at}: a tier-0 role is never repaired: its mode can only be report")
            if target in modes:
                raise ConfigError(f"{at}: this target is named twice")
            modes[target] = mode
        return cls(modes=modes, default=default, guard=guard, origin=origin)

    def describe(self) -> str:
        """One line for the start-up log."""
        named = ", ".join(f"{mode.value} {sum(1 for m in self.modes.values() if m is mode)}" for mode in Mode)
        return (
            f"drift policy from {self.origin}: default {self.default.value}, named targets: {named}; guard: "
            f"{self.guard.fraction:.0%} of a target's members, at most {self.guard.cap}"
        )


def _mode(value: Any, where: str) -> Mode:
    try:
        return Mode(value)
    except ValueError:
        raise ConfigError(f"{where} must be one of {', '.join(m.value for m in Mode)}, got {value!r}") from None


def _guard(value: Any, where: str) -> Guard:
    if not isinstance(value, dict) or set(value) - {"fraction", "cap"}:
        raise ConfigError(f'{where} must be an object with "fraction" and/or "cap"')
    fraction, cap = value.get("fraction", DEFAULT_GUARD.fraction), value.get("cap", DEFAULT_GUARD.cap)
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not (0 <= fraction <= 1):
        raise ConfigError(f"{where}.fraction must be a number from 0 to 1, got {fraction!r}")
    if not math.isfinite(fraction):
        raise ConfigError(f"{where}.fraction must be a number from 0 to 1, got {fraction!r}")
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
        raise ConfigError(f"{where}.cap must be a whole number of at least 0, got {cap!r}")
    return Guard(fraction=float(fraction), cap=cap)
