"""HR joiner / mover / leaver events → grant messages on the grants queue (the ``hr_events`` trigger).

An event (JSON object; other fields are ignored)::

    {"eventId": "evt-981", "eventType": "hire", "employeeId": "EMP-4711",
     "userObjectId": "<GUID>", "department": "IT", "location": "EMEA", "jobCode": "HD1",
     "effectiveDate": "2026-12-01", "previous": {"location": "APAC"}}

- ``eventType``: ``hire`` / ``joiner`` (adds of what the rules give), ``move`` / ``mover`` (removes of what
  the old attributes gave and not the new ones, adds of what only the new ones give; ``previous`` holds the
  old values of the attributes that changed, and is required), ``leave`` / ``leaver`` (removes of every
  target any rule can give).
- ``eventId``: 1 to 100 letters, digits and ``. _ : @ -``; when absent it is derived as
  ``<employeeId>.<eventType>.<effectiveDate>`` (``effectiveDate`` is then required).
- Each grant message has requestId = MessageId ``hr:<eventId>:<first 16 hex of sha256(action + target)>``,
  so a replayed event produces the same ids and Service Bus duplicate detection drops the copies.

Settlement: every message sent → complete; an invalid event → dead-letter ``InvalidHrEvent`` (no rules
file configured: ``HrRulesNotConfigured``); a send that fails → abandon (the redelivery sends again, and
duplicate detection absorbs what had been sent). One ``hr-event <outcome> {json}`` line per delivery.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Final

from shared.core.contract import (
    Action,
    GrantCommand,
    Guid,
    Member,
    MemberType,
    Source,
    SourceSystem,
    encode,
    parse_guid,
    target_document,
)
from shared.core.errors import ContractError, Reason
from shared.core.messaging import MAX_DESCRIPTION_CHARS, Delivery, MessageActions, MessageSender, clip
from shared.producers.hr_rules import ATTRIBUTES, HrRules
from shared.service.settlement import Settled, abandon, complete, deadletter, log_outcome

__all__ = ["HrEvent", "derive_messages", "parse_event", "settle_hr_event"]

_EVENT_TYPES: Final = {
    "hire": "joiner",
    "joiner": "joiner",
    "move": "mover",
    "mover": "mover",
    "leave": "leaver",
    "leaver": "leaver",
}
_EVENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,99}", re.ASCII)
_EMPLOYEE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}", re.ASCII)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")
_MAX_ATTRIBUTE_CHARS: Final = 128

_logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class HrEvent:
    """A validated HR event; `kind` is joiner, mover or leaver."""

    event_id: str
    kind: str
    employee_id: str
    user_id: Guid
    attributes: Mapping[str, str | None]
    previous: Mapping[str, str | None]
    effective_date: str | None


def parse_event(body: bytes) -> HrEvent:
    """Validate an event body; raise `ContractError(InvalidHrEvent)` naming the first bad field."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise _invalid("the event is not JSON (UTF-8)") from None
    if not isinstance(document, dict):
        raise _invalid("the event must be a JSON object")
    raw_type = document.get("eventType")
    kind = _EVENT_TYPES.get(raw_type) if isinstance(raw_type, str) else None
    if kind is None:
        raise _invalid("eventType must be one of hire, move, leave (or joiner, mover, leaver)")
    employee_id = document.get("employeeId")
    if not isinstance(employee_id, str) or not _EMPLOYEE_ID.fullmatch(employee_id):
        raise _invalid("employeeId is required: 1 to 64 letters, digits and . _ @ -")
    user = document.get("userObjectId")
    if not isinstance(user, str):
        raise _invalid("userObjectId is required (the person's Entra object id, a GUID)")
    try:
        user_id = parse_guid(user, field="userObjectId")
    except ContractError as error:
        raise _invalid(error.description) from None
    effective = document.get("effectiveDate")
    if effective is not None and not (isinstance(effective, str) and _valid_date(effective)):
        raise _invalid("effectiveDate must be a date, YYYY-MM-DD")
    event_id = document.get("eventId")
    if event_id is None:
        if effective is None:
            raise _invalid("eventId is required, or effectiveDate to derive it from")
        event_id = f"{employee_id}.{raw_type}.{effective}"
    if not isinstance(event_id, str) or not _EVENT_ID.fullmatch(event_id):
        raise _invalid("eventId must be 1 to 100 letters, digits and . _ : @ -")
    attributes = _attributes(document, "")
    previous_doc = document.get("previous")
    if kind == "mover" and not isinstance(previous_doc, dict):
        raise _invalid("a move event needs previous: the old values of the attributes that changed")
    previous = {**attributes, **_attributes(previous_doc, "previous.")} if isinstance(previous_doc, dict) else {}
    return HrEvent(
        event_id=event_id,
        kind=kind,
        employee_id=employee_id,
        user_id=user_id,
        attributes=attributes,
        previous=previous,
        effective_date=effective,
    )


def derive_messages(event: HrEvent, rules: HrRules) -> list[tuple[str, bytes]]:
    """The grant messages for `event`: (requestId, body), in a stable order; each passes the contract."""
    if event.kind == "joiner":
        changes = [("add", rules.targets_for(event.attributes))]
    elif event.kind == "mover":
        old, new = rules.targets_for(event.previous), rules.targets_for(event.attributes)
        changes = [
            ("remove", {t: names for t, names in old.items() if t not in new}),
            ("add", {t: names for t, names in new.items() if t not in old}),
        ]
    else:
        changes = [("remove", rules.every_target())]
    messages: list[tuple[str, bytes]] = []
    for action, targets in changes:
        for target, names in targets.items():
            canonical = json.dumps(target_document(target), sort_keys=True)
            request_id = f"hr:{event.event_id}:{hashlib.sha256(f'{action}|{canonical}'.encode()).hexdigest()[:16]}"
            effective = f", effective {event.effective_date}" if event.effective_date else ""
            command = GrantCommand(
                request_id=request_id,
                action=Action(action),
                target=target,
                member=Member(id=event.user_id, type=MemberType.USER),
                source=Source(system=SourceSystem.HR, reference=event.employee_id),
                requested_by="hr-events",
                reason=f"{event.kind} event {event.event_id}{effective}; rules: {', '.join(names)}"[:1024],
            )
            messages.append((request_id, encode(command)))
    return messages


async def settle_hr_event(
    delivery: Delivery,
    *,
    rules: HrRules | None,
    actions: MessageActions,
    sender: MessageSender,
    now: Callable[[], datetime],
) -> Settled:
    """Turn one HR event into grant messages on the grants queue and settle it; return how it ended (logged)."""
    event: HrEvent | None = None
    sent: list[str] = []
    try:
        if rules is None:
            raise ContractError(Reason.HR_RULES_NOT_CONFIGURED, "GRANTS_HR_RULES is not set")
        event = parse_event(delivery.body)
        messages = derive_messages(event, rules)
    except ContractError as error:
        deadletter(actions, delivery, reason=error.reason.value, description=error.description)
        return _logged(delivery, event, sent, "dead_lettered", error.reason.value, error.description)
    try:
        for request_id, body in messages:
            await sender.schedule(
                body=body, message_id=request_id, application_properties={}, scheduled_enqueue_time=now()
            )
            sent.append(request_id)
    except Exception:
        _logger.exception("could not send the grants of HR event %s; abandoning it", json.dumps(event.event_id))
        abandon(actions, delivery)
        description = f"sent {len(sent)} of {len(messages)} grant messages; Service Bus will redeliver the event"
        return _logged(delivery, event, sent, "abandoned", None, description)
    complete(actions, delivery)
    return _logged(delivery, event, sent, "completed", None, f"{event.kind}: {len(messages)} grant message(s) sent")


def _logged(
    delivery: Delivery, event: HrEvent | None, sent: list[str], outcome: str, reason: str | None, description: str
) -> Settled:
    """How the event's delivery ended, logged as its ``hr-event`` outcome line."""
    settled = Settled(
        outcome=outcome,
        reason=reason,
        description=clip(description, MAX_DESCRIPTION_CHARS),
        attempts=delivery.delivery_count,
        terminal=outcome != "abandoned",
    )
    record: dict[str, Any] = {
        "messageId": delivery.message_id,
        "eventId": event.event_id if event else None,
        "eventType": event.kind if event else None,
        "employeeId": event.employee_id if event else None,
        "userObjectId": event.user_id if event else None,
        "outcome": settled.outcome,
        "reason": settled.reason,
        "description": settled.description,
        "attempts": settled.attempts,
        "terminal": settled.terminal,
        "grantRequestIds": sent,
    }
    log_outcome("hr-event", settled, record)
    return settled


def _attributes(document: Mapping[str, Any], prefix: str) -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    for name in ATTRIBUTES:
        value = document.get(name)
        if value is None:
            if prefix == "" or name in document:  # absent from previous: unchanged; null: had none
                values[name] = None
            continue
        if not isinstance(value, str) or len(value) > _MAX_ATTRIBUTE_CHARS or _CONTROL.search(value):
            raise _invalid(f"{prefix}{name} must be a string of at most {_MAX_ATTRIBUTE_CHARS} characters")
        values[name] = value
    return values


def _valid_date(value: str) -> bool:
    if not _DATE.fullmatch(value):
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


def _invalid(problem: str) -> ContractError:
    return ContractError(Reason.INVALID_HR_EVENT, problem)
