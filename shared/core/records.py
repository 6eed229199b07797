"""What a grant delivery says of itself, pure: its status record, its outcome line and its outcome event.

- `grant_status`: the `StatusRecord` of one attempt (``GET /api/grants/{requestId}``): how it ended, what the
  command asks and who asked, and what the message's properties say (its bulk job or HR event and row, for an
  expiry removal the grant it ends).
- `accepted_status`: the record of a request just queued (the webhook's ``accepted``, an HR event's
  ``scheduled`` or ``accepted``).
- `outcome_line`: the outcome line's record (the status record with ``outcome``, ``terminal``, ``finishedAt``),
  which is also the outcome event's body.
- `outcome_event`: the keyword arguments of `OutcomePublisher.publish` for a terminal outcome.
- `hr_event_line`, `callback_line`: the outcome lines of an HR event's and a callback's delivery.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Final

from shared.core.contract import (
    AdministrativeUnit,
    DirectoryRole,
    GrantCommand,
    RoleAssignment,
    RoleEligibility,
    ScopedRole,
)
from shared.core.hr_events import HrEvent
from shared.core.messaging import (
    BULK_JOB,
    CALLBACK_URL,
    EVENT_HR_EVENT_ID,
    EVENT_JOB_ID,
    EVENT_OUTCOME,
    EVENT_PRODUCER,
    EVENT_REASON,
    EVENT_REQUEST_ID,
    EVENT_SOURCE_SYSTEM,
    EXPIRY_OF,
    HR_EVENT,
    JOB_ROW,
    JOB_ROWS,
    RESUBMISSION,
    Delivery,
    PropertyValue,
    outcome_event_id,
    whole_row,
)
from shared.core.statuses import Settled, Status, StatusRecord, seen_by
from shared.core.times import intent_time

__all__ = [
    "accepted_status",
    "callback_line",
    "grant_status",
    "hr_event_line",
    "outcome_event",
    "outcome_line",
    "target_fields",
]

_TARGET_TYPES: Final = {
    AdministrativeUnit: "administrativeUnit",
    DirectoryRole: "directoryRole",
    ScopedRole: "scopedRole",
    RoleEligibility: "roleEligibility",
    RoleAssignment: "roleAssignment",
}


def target_fields(command: GrantCommand) -> dict[str, Any]:
    """The `StatusRecord` fields of what `command` asks and who asked (without ``requestedAt`` and ``intentAt``). A
    PIM target's ``targetId`` is the administrative unit of its scope (None at the tenant's)."""
    target = command.target
    schedule = target if isinstance(target, RoleEligibility | RoleAssignment) else None
    return {
        "action": command.action.value,
        "source_system": command.source.system.value,
        "source_reference": command.source.reference,
        "requested_by": command.requested_by,
        "target_type": _TARGET_TYPES[type(target)],
        "target_id": getattr(target, "id", None)
        or getattr(target, "administrative_unit_id", None)
        or (schedule.unit if schedule else None),
        "role_template_id": getattr(target, "role_template_id", None),
        "role_definition_id": schedule.role_definition_id if schedule else None,
        "directory_scope_id": schedule.directory_scope_id if schedule else None,
        "member_id": command.member.id,
        "expires_at": command.expires_at,
    }


def grant_status(
    delivery: Delivery,
    *,
    producer: str | None,
    command: GrantCommand | None,
    request_id: str | None,
    settled: Settled,
    started: datetime,
    finished: datetime,
    graph_request_id: str | None = None,
    role_template_id: str | None = None,
    next_retry_at: datetime | None = None,
) -> StatusRecord:
    """The status record of one attempt of `producer`'s grant delivery (started at `started`, ended `settled` at
    `finished`; `producer` None when who sent it could not be established).

    ``firstAttemptAt`` is the message's ``firstAttemptAt`` on a retry, else `started`; ``intentAt`` is when the
    intent counts as made, as the ledger orders it (`intent_time`: the command's ``requestedAt`` unless that is later
    than the request's first arrival); ``requestedAt`` stays the producer's own, for the audit."""
    first = delivery.first_attempt_at(started) if delivery.attempt > 1 else started
    fields: dict[str, Any] = {}
    requested_at = None
    if command is not None:
        requested_at = command.requested_at
        fields = target_fields(command) | {
            "request_reason": command.reason,
            "member_type": command.member.type.value if command.member.type else None,
            "dry_run": command.dry_run,
        }
        if role_template_id is not None:
            fields["role_template_id"] = role_template_id
    return StatusRecord(
        request_id=request_id,
        producer=producer,
        status=settled.outcome,
        reason=settled.reason,
        description=settled.description,
        attempts=settled.attempts,
        message_id=delivery.message_id,
        original_message_id=delivery.original_message_id,
        graph_request_id=graph_request_id,
        started_at=started,
        first_attempt_at=first,
        last_attempt_at=finished,
        next_retry_at=next_retry_at,
        requested_at=requested_at,
        intent_at=intent_time(requested_at, arrived_at=delivery.arrived_at(started)),
        job_id=delivery.text_property(BULK_JOB),
        hr_event_id=delivery.text_property(HR_EVENT),
        job_row=whole_row(delivery.application_property(JOB_ROW)),
        job_rows=whole_row(delivery.application_property(JOB_ROWS)),
        expiry_of=delivery.text_property(EXPIRY_OF),
        **fields,
    )


def accepted_status(
    command: GrantCommand, *, producer: str, received: datetime, status: Status = Status.ACCEPTED
) -> StatusRecord:
    """The status record of `producer`'s request just queued (at `received`): `status`, what it asks, who asked, and
    when the intent counts as made (its ``requestedAt``, unless that is later than `received`)."""
    return StatusRecord(
        request_id=command.request_id,
        producer=producer,
        status=status,
        requested_at=command.requested_at,
        intent_at=intent_time(command.requested_at, arrived_at=received),
        **target_fields(command),
    )


def outcome_line(status: StatusRecord, settled: Settled, *, finished: datetime) -> dict[str, Any]:
    """The outcome line's record of a grant delivery: its status record with ``outcome``, ``terminal`` and
    ``finishedAt`` (also the body of its outcome event)."""
    return status.to_json() | {
        "outcome": settled.outcome.value,
        "terminal": settled.terminal,
        "finishedAt": finished.isoformat(),
    }


#: Ends after which no callback is made, whatever the request named: who asked was not established, or the callback
#: URL was refused.
_NO_CALLBACK: Final = frozenset({"UnknownProducer", "SourceMismatch", "CallbackNotAllowed"})


def outcome_event(
    delivery: Delivery, command: GrantCommand | None, settled: Settled, record: dict[str, Any]
) -> dict[str, Any]:
    """The keyword arguments of `OutcomePublisher.publish` for a terminal outcome: `record` as compact JSON, a
    derived MessageId (`outcome_event_id`) and the application properties subscriptions filter on: ``outcome``
    and, when known, ``reason``, ``producer``, ``sourceSystem``, ``requestId``, ``jobId``, ``hrEventId`` and
    ``callbackUrl``."""
    if record.get("heldBy"):  # the producer's callback carries it: other producers' grants by name only
        record = record | {"heldBy": seen_by(record["heldBy"], record.get("producer"))}
    properties: dict[str, PropertyValue] = {EVENT_OUTCOME: settled.outcome.value}
    request_id = command.request_id if command is not None else record.get("requestId")
    producer = record.get("producer")
    optional = {
        EVENT_REASON: settled.reason,
        EVENT_PRODUCER: producer,
        EVENT_SOURCE_SYSTEM: command.source.system.value if command is not None else None,
        EVENT_REQUEST_ID: request_id if isinstance(request_id, str) else None,
        EVENT_JOB_ID: delivery.application_property(BULK_JOB),
        EVENT_HR_EVENT_ID: delivery.application_property(HR_EVENT),
        CALLBACK_URL: command.callback_url if command is not None and settled.reason not in _NO_CALLBACK else None,
    }
    properties.update({name: str(value) for name, value in optional.items() if value})
    resubmission = delivery.application_property(RESUBMISSION)
    return {
        "body": json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode(),
        "message_id": outcome_event_id(
            producer=producer if isinstance(producer, str) else None,
            original_message_id=delivery.original_message_id,
            resubmission=str(resubmission) if resubmission else None,
            outcome=settled.outcome.value,
            reason=settled.reason,
        ),
        "application_properties": properties,
    }


def hr_event_line(
    delivery: Delivery, event: HrEvent | None, sent: tuple[str, ...], settled: Settled, finished: datetime
) -> dict[str, Any]:
    """The outcome line's record of an HR event's delivery: the event (its MessageId as ``eventId`` when it could
    not be read), how it ended, and the grant messages it sent."""
    return {
        "messageId": delivery.message_id,
        "eventId": event.event_id if event else delivery.message_id,
        "eventType": event.kind if event else None,
        "employeeId": event.employee_id if event else None,
        "userObjectId": event.user_id if event else None,
        "outcome": settled.outcome.value,
        "reason": settled.reason,
        "description": settled.description,
        "attempts": settled.attempts,
        "terminal": settled.terminal,
        "grantRequestIds": list(sent),
    }


def callback_line(
    delivery: Delivery, started: datetime, host: str | None, status: int | None, settled: Settled, finished: datetime
) -> dict[str, Any]:
    """The outcome line's record of a callback's delivery: the event, the callback's host (never its URL: a query
    may hold a token), the receiver's HTTP status, and how it ended."""
    return {
        "eventId": delivery.original_message_id,
        "messageId": delivery.message_id,
        "requestId": delivery.text_property(EVENT_REQUEST_ID),
        "grantOutcome": delivery.text_property(EVENT_OUTCOME),
        "producer": delivery.text_property(EVENT_PRODUCER),
        "sourceSystem": delivery.text_property(EVENT_SOURCE_SYSTEM),
        "callbackHost": host,
        "status": status,
        "attempts": settled.attempts,
        "startedAt": started.isoformat(),
        "outcome": settled.outcome.value,
        "reason": settled.reason,
        "description": settled.description,
        "terminal": settled.terminal,
        "finishedAt": finished.isoformat(),
    }
