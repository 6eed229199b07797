"""What a drift check says of itself, pure: each finding's record, each target's record, and their outcome events.

- `finding_record`: one finding (``missing``, ``lingering``, ``unmanaged``), the newest intent it was judged by,
  what the sweep does about it (`Handling`), the repair's request id and description ("restores RITM123's
  grant") and, for a repair not sent, why (``refusal``: reason, description, the refused request).
- `target_record`: one target's check: its mode and `TargetState`, the counts, the guard's held set (its digest
  and the command that confirms it), the findings when asked for; the body of ``GET /api/drift`` per target and,
  without findings, the ``drift <state> {json}`` log line.
- `drift_event`: the keyword arguments of `OutcomePublisher.publish` for a finding (``drift_detected``) or a
  held set (``drift_held``), with the application properties subscriptions filter on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from shared.core.contract import AdministrativeUnit, Guid, RoleAssignment, RoleEligibility, Target, target_document
from shared.core.drift import Finding, Lingering, Missing, Plan, Refusal, Repair
from shared.core.messaging import EVENT_OUTCOME, EVENT_REQUEST_ID, OUTCOME_EVENT_PREFIX, PropertyValue

__all__ = [
    "DRIFT_DETECTED",
    "DRIFT_HELD",
    "EVENT_DRIFT_FINDING",
    "EVENT_DRIFT_HANDLING",
    "EVENT_TARGET_ID",
    "Handling",
    "TargetState",
    "confirm_command",
    "drift_event",
    "finding_kind",
    "finding_record",
    "handlings",
    "target_fields",
    "target_record",
]

#: The ``outcome`` of a drift finding's event, and of a held set's.
DRIFT_DETECTED: Final = "drift_detected"
DRIFT_HELD: Final = "drift_held"
#: Application properties of a drift event, besides ``outcome`` and (when an intent is known) ``requestId``.
EVENT_DRIFT_FINDING: Final = "driftFinding"  # missing | lingering | unmanaged
EVENT_DRIFT_HANDLING: Final = "driftHandling"  # repair | held | not_repairable | report | tier0
EVENT_TARGET_ID: Final = "targetId"  # the unit's id, the role's template id, or a PIM target's role definition id


class Handling(StrEnum):
    """What a sweep does about a finding: sends its `REPAIR` (the policy's mode asks for it), `HELD` by the
    blast-radius guard until a confirm, `NOT_REPAIRABLE` (the directory refuses the repair: not sent, see the
    finding's ``refusal``), `REPORT` only (report mode; an unmanaged member unless authoritative), `TIER0` (a tier-0
    role: never touched)."""

    REPAIR = "repair"
    HELD = "held"
    NOT_REPAIRABLE = "not_repairable"
    REPORT = "report"
    TIER0 = "tier0"


class TargetState(StrEnum):
    """How a target's check ended: `IN_STEP` (no finding), `DRIFTED` (findings, none held), `HELD` (the guard
    holds removals), `FAILED` (the target could not be read)."""

    IN_STEP = "in_step"
    DRIFTED = "drifted"
    HELD = "held"
    FAILED = "failed"


def finding_kind(finding: Finding) -> str:
    """``missing``, ``lingering`` or ``unmanaged``."""
    if isinstance(finding, Missing):
        return "missing"
    return "lingering" if isinstance(finding, Lingering) else "unmanaged"


def handlings(plan: Plan) -> dict[Guid, tuple[Handling, Repair | None, Refusal | None]]:
    """What `plan` does about each finding's member: its handling, the repair (planned, held, or not sent) and, for
    one not sent, its refusal."""
    handled: dict[Guid, tuple[Handling, Repair | None, Refusal | None]] = {}
    for finding in plan.reported:
        handled[finding.member_id] = (Handling.TIER0 if plan.tier0 else Handling.REPORT, None, None)
    for repair in plan.repairs:
        handled[repair.member_id] = (Handling.REPAIR, repair, None)
    for repair in plan.held.repairs if plan.held is not None else ():
        handled[repair.member_id] = (Handling.HELD, repair, None)
    for refused in plan.not_repairable:
        handled[refused.repair.member_id] = (Handling.NOT_REPAIRABLE, refused.repair, refused.refusal)
    return handled


def target_fields(target: Target) -> dict[str, Any]:
    """``target`` (the v1 target object), ``targetType``, ``targetId`` (a unit's or role's id; a scoped role's
    unit; a PIM target's scope's unit), ``roleTemplateId``, and a PIM target's ``roleDefinitionId`` and
    ``directoryScopeId``, as in a request's status record."""
    document = target_document(target)
    schedule = target if isinstance(target, RoleEligibility | RoleAssignment) else None
    return {
        "target": document,
        "targetType": document["type"],
        "targetId": getattr(target, "id", None)
        or getattr(target, "administrative_unit_id", None)
        or (schedule.unit if schedule else None),
        "roleTemplateId": getattr(target, "role_template_id", None),
        "roleDefinitionId": schedule.role_definition_id if schedule else None,
        "directoryScopeId": schedule.directory_scope_id if schedule else None,
    }


def finding_record(
    finding: Finding, handling: Handling, repair: Repair | None, refusal: Refusal | None = None
) -> dict[str, Any]:
    """One finding: the member, the newest intent it was judged by (none for an unmanaged member), its handling,
    the repair planned, held or not sent for it, and why one is not sent (`refusal`)."""
    intent = None if not isinstance(finding, Missing | Lingering) else finding.intent
    return {
        "finding": finding_kind(finding),
        "memberId": finding.member_id,
        "requestId": intent.request_id if intent else None,
        "action": intent.action.value if intent else None,
        "requestedAt": _iso(intent.requested_at) if intent else None,
        "expiresAt": _iso(intent.expires_at) if intent else None,
        "expired": isinstance(finding, Lingering) and finding.expired,
        "handling": handling.value,
        "repair": None
        if repair is None
        else {
            "requestId": repair.request_id,
            "action": repair.action.value,
            "restores": repair.restores,
            "description": repair.describe(),
        },
        "refusal": None
        if refusal is None
        else {"reason": refusal.reason, "description": refusal.description, "requestId": refusal.request_id},
    }


def confirm_command(target: Target, digest: str) -> str:
    """The operator's command that releases `target`'s held set `digest`: ``grants drift --target <id> --repair
    --confirm <digest>`` (a unit's id, a role's template id, a PIM target's role definition id)."""
    if isinstance(target, RoleEligibility | RoleAssignment):
        named: object = target.role_definition_id
    else:
        named = target.id if isinstance(target, AdministrativeUnit) else getattr(target, "role_template_id", None)
    return f"grants drift --target {named or getattr(target, 'id', '')} --repair --confirm {digest}"


def target_record(
    target: Target,
    *,
    state: TargetState,
    mode: str,
    checked_at: datetime,
    members: int | None = None,
    in_flight: int = 0,
    findings: Iterable[Mapping[str, Any]] = (),
    repairs: int = 0,
    not_repairable: int = 0,
    repairs_sent: bool = False,
    held: Mapping[str, Any] | None = None,
    tier0: bool = False,
    reason: str | None = None,
    description: str | None = None,
    with_findings: bool = True,
) -> dict[str, Any]:
    """One target's check (see the module docstring); the findings' list only `with_findings`, their counts always
    (`not_repairable`: the repairs not sent because the directory refuses them)."""
    listed = list(findings)
    counts = {kind: sum(1 for f in listed if f["finding"] == kind) for kind in ("missing", "lingering", "unmanaged")}
    record: dict[str, Any] = target_fields(target) | {
        "state": state.value,
        "mode": mode,
        "tier0": tier0,
        "members": members,
        "inFlight": in_flight,
        **counts,
        "repairs": repairs,
        "notRepairable": not_repairable,
        "repairsSent": repairs_sent,
        "held": dict(held) if held is not None else None,
        "reason": reason,
        "description": description,
        "checkedAt": _iso(checked_at),
    }
    if with_findings:
        record["findings"] = listed
    return record


def drift_event(record: Mapping[str, Any], *, outcome: str, pair: str, key: str, at: datetime) -> dict[str, Any]:
    """The keyword arguments of `OutcomePublisher.publish` for a drift event: `record` (with ``outcome`` and
    ``detectedAt``) as compact JSON, MessageId ``outcome/drift/<64 hex>`` (SHA-256 of the outcome, `pair` (the
    finding's pair, or the target's), `key` (what the finding or held set is) and the sweep's time `at`: one event
    per sweep, a redelivered publish the same), and the properties ``outcome``, ``targetId``, ``driftFinding``,
    ``driftHandling`` and ``requestId`` when the record has them."""
    body = dict(record) | {"outcome": outcome, "detectedAt": _iso(at)}
    properties: dict[str, PropertyValue] = {EVENT_OUTCOME: outcome}
    optional = {
        EVENT_TARGET_ID: record.get("roleTemplateId") or record.get("roleDefinitionId") or record.get("targetId"),
        EVENT_DRIFT_FINDING: record.get("finding"),
        EVENT_DRIFT_HANDLING: record.get("handling"),
        EVENT_REQUEST_ID: record.get("requestId"),
    }
    properties.update({name: str(value) for name, value in optional.items() if value})
    digest = hashlib.sha256(json.dumps([outcome, pair, key, _iso(at)]).encode()).hexdigest()
    return {
        "body": json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode(),
        "message_id": f"{OUTCOME_EVENT_PREFIX}drift/{digest}",
        "application_properties": properties,
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
