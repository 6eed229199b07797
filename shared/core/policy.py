"""Guardrails: which producer may grant or remove what, checked before any Graph write.

A policy file (JSON; path in ``GRANTS_POLICY``) lists, per producer (``producers``, by the producer registry's
names: `shared.core.producers`), the actions it may take (``add``, ``remove``, and ``revokeAll``: ending every
producer's grant of a member and target, a right given only by name) and the administrative units, directory roles
(by **template** id), AU-scoped roles, PIM eligibilities (``roleEligibilities``) and active PIM assignments
(``roleAssignments``, both by **role definition** id: a built-in role's template id or a custom role's id) it may
touch; ``"*"`` means any. A PIM target scoped to an administrative unit also needs the unit under
``administrativeUnits``. ``sources`` gives the same rules per source
system, for every producer of that system the file does not name under ``producers`` (a file written before
producers had names keeps working). With a file, a producer it gives no rules is refused everything. Tier-0 roles
(`TIER0_ROLE_TEMPLATES`) are never covered by ``"*"``: a producer may grant one only if the policy names that
template explicitly for it; the same list applies to a PIM target's role definition, eligible and active alike.
Without a policy file the built-in default allows every producer administrative units and every non-tier-0 role
(PIM targets included), and producers of the ``hr`` system revokeAll (a leaver).

A refused command raises `PermanentError(PolicyDenied)` whose description names the rule. A role given by
object id is checked by its template (`shared.service.roles` looks it up).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from shared.core.contract import (
    Action,
    AdministrativeUnit,
    GrantCommand,
    Guid,
    RoleAssignment,
    RoleEligibility,
    ScopedRole,
    SourceSystem,
    parse_guid,
)
from shared.core.errors import ConfigError, ContractError, PermanentError, Reason
from shared.core.producers import PRODUCER_NAME, Producer, Producers

__all__ = ["TIER0_ROLE_TEMPLATES", "GrantPolicy", "SourceRules", "policy_document"]

ANY: Final = "*"

#: Built-in deny list: roles that control the tenant, its sign-in or its credentials, or are reserved for Microsoft's
#: own services. Template ids, from Microsoft's "Microsoft Entra built-in roles" page; why each is here, and why
#: some roles Microsoft labels PRIVILEGED are not: docs/guardrails.md.
TIER0_ROLE_TEMPLATES: Final[Mapping[str, str]] = {
    "62e90394-69f5-4237-9190-012177145e10": "Global Administrator",
    "e8611ab8-c189-46e8-94e1-60213ab1f814": "Privileged Role Administrator",
    "7be44c8a-adaf-4e2a-84d6-ab2649e08a13": "Privileged Authentication Administrator",
    "194ae4cb-b126-40b2-bd5b-6091b380977d": "Security Administrator",
    "9b895d92-2cd3-44c7-9d02-a6ac2d5ea5c3": "Application Administrator",
    "158c047a-c907-4556-b7ef-446551a6b5f7": "Cloud Application Administrator",
    "b1be1c3e-b65d-4f19-8427-f6fa0d97feb9": "Conditional Access Administrator",
    "8ac3fc64-6eca-42ea-9e69-59f4c7b60eb2": "Hybrid Identity Administrator",
    "c4e39bd9-1100-46d3-8c65-fb160da0071f": "Authentication Administrator",
    "fe930be7-5e62-47db-91af-98c3a49a38b1": "User Administrator",
    "e00e864a-17c5-4a4b-9c06-f5b95a8d5bd8": "Partner Tier2 Support",
    "4ba39ca4-527c-499a-b93d-d9b492c50246": "Partner Tier1 Support",
    "d29b2b05-8046-44ba-8758-1e26182fcf32": "Directory Synchronization Accounts",
    "9360feb5-f418-4baa-8175-e2a00bac4301": "Directory Writers",
    "3a2c62db-5318-420d-8d74-23affee5d9d5": "Intune Administrator",
    "0526716b-113d-4c15-b2c8-68e3c22b9f80": "Authentication Policy Administrator",
    "25a516ed-2fa0-40ea-a2d0-12923a21473a": "Authentication Extensibility Administrator",
    "8329153b-31d0-4727-b945-745eb3bc5f31": "Domain Name Administrator",
    "be2f45a1-457d-42af-a067-6ec1fa63bc45": "External Identity Provider Administrator",
    "aaf43236-0c0d-4d5f-883a-6955382ac081": "B2C IEF Keyset Administrator",
    "db506228-d27e-4b7d-95e5-295956d6615f": "Agent ID Administrator",
    "59d46f88-662b-457b-bceb-5c3809e5908f": "Lifecycle Workflows Administrator",
    "5f2222b1-57c3-48ba-8ad5-d4759f1fde6f": "Security Operator",
}

_RULE_KEYS: Final = (
    "actions",
    "administrativeUnits",
    "directoryRoles",
    "scopedRoles",
    "roleEligibilities",
    "roleAssignments",
)
_REVOKE_ALL: Final = "revokeAll"


@dataclass(frozen=True, slots=True)
class SourceRules:
    """What one producer (or every producer of one source system) may do. Id sets hold lower-case GUIDs or
    ``"*"``."""

    actions: frozenset[Action] = frozenset(Action)
    #: The right to end every producer's grant of a pair, and a membership the app did not make (``revokeAll`` in
    #: ``actions``); never implied by ``remove``.
    revoke_all: bool = False
    administrative_units: frozenset[str] = frozenset()
    directory_roles: frozenset[str] = frozenset()
    scoped_roles: frozenset[str] = frozenset()
    role_eligibilities: frozenset[str] = frozenset()  # PIM, by role definition id
    role_assignments: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class GrantPolicy:
    """Rules per producer name, and per source system for producers without rules of their own; `origin` says
    where they came from (a file path, or the built-in default)."""

    producers: Mapping[str, SourceRules]
    systems: Mapping[SourceSystem, SourceRules]
    origin: str

    @classmethod
    def default(cls) -> GrantPolicy:
        """Every producer: add and remove, any administrative unit, any non-tier-0 role (scoped or not, eligible or
        active through PIM); producers of the ``hr`` system also revoke-all (a leaver ends every grant of the
        person)."""
        rules = SourceRules(
            administrative_units=frozenset({ANY}),
            directory_roles=frozenset({ANY}),
            scoped_roles=frozenset({ANY}),
            role_eligibilities=frozenset({ANY}),
            role_assignments=frozenset({ANY}),
        )
        systems = {system: rules for system in SourceSystem} | {SourceSystem.HR: replace(rules, revoke_all=True)}
        return cls(producers={}, systems=systems, origin="built-in default")

    @classmethod
    def load(cls, file: str | Path) -> GrantPolicy:
        """Read and validate a policy file; raise `ConfigError` naming the first problem."""
        producers, systems = _parse_rules(policy_document(file), str(file))
        return cls(producers=producers, systems=systems, origin=str(file))

    def rules_for(self, producer: Producer) -> SourceRules | None:
        """What `producer` may do: its own rules, else its source system's, else None (nothing)."""
        return self.producers.get(producer.name) or self.systems.get(producer.system)

    def check_registry(self, registry: Producers) -> None:
        """Raise `ConfigError` when the policy gives rules to a producer the registry does not have (a misspelt
        name would otherwise leave that producer refused everything, silently)."""
        unknown = sorted(set(self.producers) - {producer.name for producer in registry})
        if unknown:
            known = ", ".join(producer.name for producer in registry)
            raise ConfigError(
                f"GRANTS_POLICY: {self.origin}: producers.{unknown[0]} is not in the producer registry (it has {known})"
            )

    def check_leavers(self, hr_producers: Iterable[Producer]) -> None:
        """Raise `ConfigError` when a producer that sends HR events may grant but lacks the ``revokeAll`` right: its
        leavers end every grant of the person (`shared.core.hr_events`), and would all be refused while its joiners
        are granted."""
        for producer in hr_producers:
            rules = self.rules_for(producer)
            if rules is not None and Action.ADD in rules.actions and not rules.revoke_all:
                raise ConfigError(
                    f"GRANTS_POLICY: {self.origin}: producer {producer.name!r} sends HR events, whose leavers end "
                    'every grant of the person: its rules need "revokeAll" in "actions" (docs/guardrails.md)'
                )

    def check(self, command: GrantCommand, *, producer: Producer, role_template_id: Guid | None) -> None:
        """Raise `PermanentError(PolicyDenied)` unless `producer` may do this command.

        `role_template_id` is the template of a directory role target (given or looked up).
        """
        rules = self.rules_for(producer)
        who = f"producer {producer.name!r}"
        where = f"(policy: {self.origin})"
        if rules is None:
            raise _denied(f"{who} may not grant or remove anything {where}")
        if command.action not in rules.actions:
            raise _denied(f"{who} may not {command.action.value} memberships {where}")
        if command.revoke_all and not rules.revoke_all:
            raise _denied(
                f"{who} may not revoke every grant of a member and target (revokeAll: a right the policy gives by "
                f'name, "actions": [..., "revokeAll"]) {where}'
            )
        target = command.target
        if isinstance(target, AdministrativeUnit):
            if not _allows(rules.administrative_units, target.id):
                raise _denied(f"{who} may not change administrative unit {target.id} {where}")
            return
        if isinstance(target, RoleEligibility | RoleAssignment):
            self._check_schedule(target, rules, who=who, where=where)
            return
        template = target.role_template_id if isinstance(target, ScopedRole) else role_template_id
        assert template is not None
        allowed = rules.scoped_roles if isinstance(target, ScopedRole) else rules.directory_roles
        kind = "AU-scoped role" if isinstance(target, ScopedRole) else "directory role"
        if template in TIER0_ROLE_TEMPLATES and template not in allowed:
            raise _denied(
                f"{TIER0_ROLE_TEMPLATES[template]} ({template}) is a tier-0 role: {who} may change it only if the "
                f"policy names this template explicitly under its {_key(target)} {where}"
            )
        if not _allows(allowed, template):
            raise _denied(f"{who} may not change the {kind} with template {template} {where}")
        if isinstance(target, ScopedRole) and not _allows(rules.administrative_units, target.administrative_unit_id):
            raise _denied(f"{who} may not assign roles in administrative unit {target.administrative_unit_id} {where}")

    @staticmethod
    def _check_schedule(target: RoleEligibility | RoleAssignment, rules: SourceRules, *, who: str, where: str) -> None:
        """A PIM target: its role definition under the rule key of its kind (tier-0 only when named), its scope's
        unit (if any) under ``administrativeUnits``."""
        eligible = isinstance(target, RoleEligibility)
        key, allowed = (
            ("roleEligibilities", rules.role_eligibilities)
            if eligible
            else (
                "roleAssignments",
                rules.role_assignments,
            )
        )
        kind = "eligibility for" if eligible else "active assignment of"
        definition = target.role_definition_id
        if definition in TIER0_ROLE_TEMPLATES and definition not in allowed:
            raise _denied(
                f"{TIER0_ROLE_TEMPLATES[definition]} ({definition}) is a tier-0 role: {who} may grant an {kind} it "
                f"only if the policy names this role definition explicitly under its {key} {where}"
            )
        if not _allows(allowed, definition):
            raise _denied(f"{who} may not change the {kind} role definition {definition} ({key}) {where}")
        if target.unit is not None and not _allows(rules.administrative_units, target.unit):
            raise _denied(f"{who} may not assign roles in administrative unit {target.unit} {where}")

    def describe(self) -> str:
        """One line for the start-up log."""
        if self.origin == "built-in default":
            return (
                "GRANTS_POLICY is not set: using the built-in default policy (every producer may change "
                "administrative units and non-tier-0 directory roles, PIM eligibilities and assignments included; "
                "tier-0 roles are refused; HR producers may revoke every grant of a member)"
            )
        named = [*sorted(self.producers), *(f"{s.value} (by system)" for s in sorted(self.systems))]
        return f"grant policy from {self.origin}: rules for {', '.join(named) or 'no producer'}"


def policy_document(file: str | Path) -> Any:
    """The policy file's JSON (its ``drift`` section is `shared.core.drift_policy`'s); `ConfigError` when it cannot
    be read or is not JSON."""
    try:
        return json.loads(Path(file).read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"GRANTS_POLICY: cannot read {file}: {error.strerror}") from None
    except ValueError as error:
        raise ConfigError(f"GRANTS_POLICY: {file} is not valid JSON: {error}") from None


def _allows(allowed: frozenset[str], object_id: str) -> bool:
    return ANY in allowed or object_id in allowed


def _key(target: object) -> str:
    return "scopedRoles" if isinstance(target, ScopedRole) else "directoryRoles"


def _denied(rule: str) -> PermanentError:
    return PermanentError(Reason.POLICY_DENIED, f"refused by the grant policy: {rule}.")


def _parse_rules(document: Any, file: str) -> tuple[dict[str, SourceRules], dict[SourceSystem, SourceRules]]:
    if (
        not isinstance(document, dict)
        or set(document) - {"producers", "sources", "drift"}
        or not ({"producers", "sources"} & set(document))
        or not all(isinstance(document.get(key, {}), dict) for key in ("producers", "sources"))
    ):
        raise ConfigError(
            f'GRANTS_POLICY: {file} must be an object with "producers" (rules by producer name) and/or "sources" '
            '(rules by source system), each holding an object (and optionally "drift": docs/drift.md)'
        )
    producers: dict[str, SourceRules] = {}
    for name, rules in document.get("producers", {}).items():
        if not isinstance(name, str) or not PRODUCER_NAME.fullmatch(name):
            raise ConfigError(f"GRANTS_POLICY: {file}: producers.{name}: not a producer name")
        producers[name] = _rules(rules, f"GRANTS_POLICY: {file}: producers.{name}")
    systems: dict[SourceSystem, SourceRules] = {}
    for name, rules in document.get("sources", {}).items():
        where = f"GRANTS_POLICY: {file}: sources.{name}"
        try:
            system = SourceSystem(name)
        except ValueError:
            known = ", ".join(s.value for s in SourceSystem)
            raise ConfigError(f"{where}: unknown source system (known: {known})") from None
        systems[system] = _rules(rules, where)
    return producers, systems


def _rules(rules: Any, where: str) -> SourceRules:
    if not isinstance(rules, dict):
        raise ConfigError(f"{where} must be an object")
    unknown = set(rules) - set(_RULE_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(_RULE_KEYS)})")
    actions = rules.get("actions", ["add", "remove"])
    return SourceRules(
        actions=_actions(actions, f"{where}.actions"),
        revoke_all=isinstance(actions, list) and _REVOKE_ALL in actions,
        administrative_units=_ids(rules.get("administrativeUnits", []), f"{where}.administrativeUnits"),
        directory_roles=_ids(rules.get("directoryRoles", []), f"{where}.directoryRoles"),
        scoped_roles=_ids(rules.get("scopedRoles", []), f"{where}.scopedRoles"),
        role_eligibilities=_ids(rules.get("roleEligibilities", []), f"{where}.roleEligibilities"),
        role_assignments=_ids(rules.get("roleAssignments", []), f"{where}.roleAssignments"),
    )


def _actions(value: Any, where: str) -> frozenset[Action]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{where} must be a list of actions (add, remove, revokeAll)")
    try:
        actions = frozenset(Action(item) for item in value if item != _REVOKE_ALL)
    except ValueError:
        raise ConfigError(f"{where} must contain only add, remove and revokeAll") from None
    if _REVOKE_ALL in value and Action.REMOVE not in actions:
        raise ConfigError(f"{where}: revokeAll is a kind of remove: list remove too")
    return actions


def _ids(value: Any, where: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f'{where} must be a list of GUIDs or "*"')
    ids = set()
    for item in value:
        if item == ANY:
            ids.add(ANY)
            continue
        try:
            ids.add(parse_guid(item, field=where))
        except ContractError as error:
            raise ConfigError(error.description) from None
    return frozenset(ids)
