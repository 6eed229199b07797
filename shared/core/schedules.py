"""PIM schedule requests, pure: what the app asks Graph for a PIM target, and what PIM's refusals mean.

A `RoleEligibility` target is carried out with ``POST /roleManagement/directory/roleEligibilityScheduleRequests``, a
`RoleAssignment` with ``.../roleAssignmentScheduleRequests`` (`ScheduleKind`). `schedule_request` is the body: action
``adminAssign`` (add) or ``adminRemove`` (remove), ``principalId`` (the member), ``roleDefinitionId``,
``directoryScopeId``; an add's ``scheduleInfo`` starts when the request is carried out (`now`) and expires
``afterDateTime`` at the command's ``expiresAt``, else ``noExpiration``; ``justification`` is the command's
``reason`` (or, without one, a sentence naming who asked: a role whose settings require a justification would refuse
an empty one); ``ticketInfo`` is the command's ``source`` (``ticketSystem`` the source system, ``ticketNumber`` its
reference). `failed_rules` reads which of the role's PIM settings refused a request from Graph's message, and
`describe_rules` says what each means.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from shared.core.contract import Action, GrantCommand, RoleEligibility, RoleSchedule

__all__ = [
    "ASSIGNMENT",
    "ELIGIBILITY",
    "POLICY_VALIDATION_FAILED",
    "ROLE_ASSIGNMENT_DOES_NOT_EXIST",
    "ROLE_ASSIGNMENT_EXISTS",
    "ROLE_NOT_FOUND",
    "ScheduleKind",
    "describe_rules",
    "failed_rules",
    "graph_time",
    "kind_of",
    "schedule_label",
    "schedule_request",
]

#: Graph's error codes for schedule requests (``400``): an assignment or eligibility that exists already, a removal
#: of one that does not, the role's PIM settings refusing the request, and a role definition it does not know.
ROLE_ASSIGNMENT_EXISTS: Final = "RoleAssignmentExists"
ROLE_ASSIGNMENT_DOES_NOT_EXIST: Final = "RoleAssignmentDoesNotExist"
POLICY_VALIDATION_FAILED: Final = "RoleAssignmentRequestPolicyValidationFailed"
ROLE_NOT_FOUND: Final = "RoleNotFound"


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleKind:
    """One of PIM's two assignment kinds: its schedule requests and schedules (navigation properties of
    ``/roleManagement/directory``), the least-privileged application permissions that write and read them, and how
    its holding is told to a person."""

    requests: str
    schedules: str
    permission: str
    read_permission: str
    holding: str  # "eligible for" / "assigned"
    noun: str  # "eligibility" / "active assignment"


ELIGIBILITY: Final = ScheduleKind(
    requests="roleEligibilityScheduleRequests",
    schedules="roleEligibilitySchedules",
    permission="RoleEligibilitySchedule.ReadWrite.Directory",
    read_permission="RoleEligibilitySchedule.Read.Directory",
    holding="eligible for",
    noun="eligibility",
)
ASSIGNMENT: Final = ScheduleKind(
    requests="roleAssignmentScheduleRequests",
    schedules="roleAssignmentSchedules",
    permission="RoleAssignmentSchedule.ReadWrite.Directory",
    read_permission="RoleAssignmentSchedule.Read.Directory",
    holding="assigned",
    noun="active assignment",
)


def kind_of(target: RoleSchedule) -> ScheduleKind:
    """`ELIGIBILITY` for a `RoleEligibility`, `ASSIGNMENT` for a `RoleAssignment`."""
    return ELIGIBILITY if isinstance(target, RoleEligibility) else ASSIGNMENT


def schedule_label(target: RoleSchedule) -> str:
    """The target for a person, e.g. ``role definition <id> at scope /administrativeUnits/<id>``."""
    return f"role definition {target.role_definition_id} at scope {target.directory_scope_id}"


def graph_time(value: datetime) -> str:
    """`value` in UTC as Graph writes times: ISO 8601 with ``Z``."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def schedule_request(command: GrantCommand, target: RoleSchedule, *, now: datetime) -> dict[str, Any]:
    """The body of the schedule request carrying out `command` for `target` (its own target) at `now` (see the
    module docstring)."""
    add = command.action is Action.ADD
    body: dict[str, Any] = {
        "action": "adminAssign" if add else "adminRemove",
        "principalId": command.member.id,
        "roleDefinitionId": target.role_definition_id,
        "directoryScopeId": target.directory_scope_id,
        "justification": command.reason or _justification(command),
    }
    if add:
        expiration: dict[str, Any] = (
            {"type": "afterDateTime", "endDateTime": graph_time(command.expires_at)}
            if command.expires_at is not None
            else {"type": "noExpiration"}
        )
        body["scheduleInfo"] = {"startDateTime": graph_time(now), "expiration": expiration}
    ticket: dict[str, Any] = {"ticketSystem": command.source.system.value}
    if command.source.reference is not None:
        ticket["ticketNumber"] = command.source.reference
    body["ticketInfo"] = ticket
    return body


def _justification(command: GrantCommand) -> str:
    reference = f" {command.source.reference}" if command.source.reference else ""
    return f"{command.source.system.value}{reference}: request {command.request_id} (entra-grants)"[:1024]


#: What each PIM role-setting rule that refuses an admin's request means (Graph names them in its message).
_RULES: Final[Mapping[str, str]] = {
    "ExpirationRule": "the role's settings require an expiry (no permanent assignment), or allow a shorter one than "
    "asked",
    "EligibilityRule": "the role's settings do not allow this assignment without an eligibility",
    "EnablementRule": "the role's settings require something this request does not carry (a justification, ticket "
    "information or multifactor authentication)",
    "ApprovalRule": "the role's settings require an approval",
}
_FAILED: Final = re.compile(r"rules? failed:\s*(\[[^\]]*\])", re.IGNORECASE)
_RULE_NAME: Final = re.compile(r"\b([A-Z][A-Za-z]*Rule)\b")


def failed_rules(message: str | None) -> tuple[str, ...]:
    """The rule names in Graph's ``RoleAssignmentRequestPolicyValidationFailed`` message (``The following policy
    rules failed: ["ExpirationRule"]``), in its order; any ``...Rule`` word when the list cannot be read."""
    text = message or ""
    listed = _FAILED.search(text)
    if listed is not None:
        try:
            names = json.loads(listed.group(1))
        except ValueError:
            names = None
        if isinstance(names, list) and all(isinstance(name, str) for name in names):
            return tuple(dict.fromkeys(names))
    return tuple(dict.fromkeys(_RULE_NAME.findall(text)))


def describe_rules(rules: tuple[str, ...]) -> str:
    """The failed rules for a person: each name and, when known, what it means."""
    if not rules:
        return "a rule Graph did not name"
    return "; ".join(f"{rule} ({_RULES[rule]})" if rule in _RULES else rule for rule in rules)
