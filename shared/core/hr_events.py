"""HR joiner / mover / leaver events, pure: validate an event and derive its grant messages and when they are due.

An event (JSON object; other fields are ignored)::

    {"eventId": "evt-981", "eventType": "hire", "employeeId": "EMP-4711",
     "userObjectId": "<GUID>", "department": "IT", "location": "EMEA", "jobCode": "HD1",
     "effectiveDate": "2026-12-01", "previous": {"location": "APAC"}}

- ``eventType``: ``hire`` / ``joiner`` (adds of what the rules give), ``move`` / ``mover`` (removes of what
  the old attributes gave and not the new ones, adds of what only the new ones give; ``previous`` holds the
  old values of the attributes that changed, and is required), ``leave`` / ``leaver`` (revoke-alls of every
  target any rule can give: every producer's grant of the person there ends, and the membership whoever made it;
  the HR producer needs the policy's ``revokeAll`` right, which the built-in policy gives it).
- ``eventId``: 1 to 100 letters, digits and ``. _ : @ -``; when absent it is derived as
  ``<employeeId>.<eventType>.<effectiveDate>.<8 hex of occurredAt, else of the event's MessageId>``
  (``effectiveDate`` is then required), so a hire, a leave and a rehire on one day are three events.
- ``occurredAt`` (optional, RFC 3339 with offset, inside the app's time domain): when the event happened; the grant
  messages' ``requestedAt`` (else the time the event was enqueued), so of two HR intents for one target the later
  wins. ``effectiveDate`` too lies in the domain (`shared.core.times`); the event's JSON is read as a grant
  message's is (no key twice).
- Each grant message has requestId (and MessageId, keyed as the app sends it) ``~hr:<eventId>:<first 16 hex of
  sha256(action, target, member)>`` (the app's own namespace: no producer can send one): two people under one
  eventId get different ids,
  and a replayed event the same ones (duplicate detection, then the ledger, absorbs them; a joiner replayed after
  the leaver is superseded).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

from shared.core.contract import (
    Action,
    GrantCommand,
    Guid,
    Member,
    MemberType,
    Source,
    SourceSystem,
    derived_request_id,
    encode,
    load_json,
    parse_guid,
    target_document,
)
from shared.core.errors import ContractError, Reason
from shared.core.hr_rules import ATTRIBUTES, HrRules
from shared.core.times import TimeRefused, parse_date, parse_timestamp

__all__ = ["HrEvent", "derive_messages", "effective_at", "parse_event"]

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
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")
_MAX_ATTRIBUTE_CHARS: Final = 128


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
    occurred_at: datetime | None = None


def parse_event(body: bytes, *, message_id: str = "") -> HrEvent:
    """Validate an event body; raise `ContractError(InvalidHrEvent)` naming the first bad field. `message_id` (the
    event's MessageId) tells apart events without an ``eventId`` or ``occurredAt`` that are otherwise alike."""
    try:
        document = load_json(body)  # the contract's reader: no key twice, no NaN, no BOM
    except ContractError as error:
        raise _invalid(f"the event is not JSON (UTF-8) as the app reads it: {error.description}") from None
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
    occurred = document.get("occurredAt")
    try:
        if effective is not None:
            parse_date(effective, field="effectiveDate")
        occurred_at = parse_timestamp(occurred, field="occurredAt") if occurred is not None else None
    except TimeRefused as refused:
        raise _invalid(str(refused)) from None
    event_id = document.get("eventId")
    if event_id is None:
        if effective is None:
            raise _invalid("eventId is required, or effectiveDate to derive it from")
        distinct = hashlib.sha256((occurred if isinstance(occurred, str) else message_id).encode()).hexdigest()[:8]
        event_id = f"{employee_id}.{raw_type}.{effective}.{distinct}"
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
        occurred_at=occurred_at,
    )


def derive_messages(event: HrEvent, rules: HrRules, *, received_at: datetime | None = None) -> list[tuple[str, bytes]]:
    """The grant messages for `event`: (requestId, body), in a stable order; each passes the contract.

    Each request id names the event, the action, the target and the member; ``requestedAt`` is the event's
    ``occurredAt``, else `received_at` (when the event was enqueued), so the newest HR event wins per target."""
    if event.kind == "joiner":
        changes = [("add", rules.targets_for(event.attributes))]
    elif event.kind == "mover":
        old, new = rules.targets_for(event.previous), rules.targets_for(event.attributes)
        changes = [
            ("remove", {t: names for t, names in old.items() if t not in new}),
            ("add", {t: names for t, names in new.items() if t not in old}),
        ]
    else:  # a leaver ends every grant of the person, whoever made it
        changes = [("remove", rules.every_target())]
    leaver = event.kind == "leaver"
    messages: list[tuple[str, bytes]] = []
    for action, targets in changes:
        for target, names in targets.items():
            canonical = json.dumps(target_document(target), sort_keys=True)
            what = f"{action}|{canonical}|{event.user_id}"
            request_id = derived_request_id("hr", event.event_id, hashlib.sha256(what.encode()).hexdigest()[:16])
            effective = f", effective {event.effective_date}" if event.effective_date else ""
            command = GrantCommand(
                request_id=request_id,
                action=Action(action),
                target=target,
                member=Member(id=event.user_id, type=MemberType.USER),
                source=Source(system=SourceSystem.HR, reference=event.employee_id),
                requested_by="hr-events",
                reason=f"{event.kind} event {event.event_id}{effective}; rules: {', '.join(names)}"[:1024],
                requested_at=event.occurred_at or received_at,
                revoke_all=leaver,
            )
            messages.append((request_id, encode(command)))
    return messages


def effective_at(event: HrEvent, *, zone: str, leavers: str, now: datetime) -> datetime:
    """When the event's grant messages are due: the start of ``effectiveDate`` in `zone` (a leaver's at its end,
    i.e. the next midnight, unless `leavers` is ``immediately``); `now` when that has passed or there is none."""
    if event.effective_date is None or (event.kind == "leaver" and leavers == "immediately"):
        return now
    day = date.fromisoformat(event.effective_date) + timedelta(days=1 if event.kind == "leaver" else 0)
    start = datetime.combine(day, time.min, tzinfo=ZoneInfo(zone)).astimezone(UTC)
    return max(start, now)


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


def _invalid(problem: str) -> ContractError:
    return ContractError(Reason.INVALID_HR_EVENT, problem)
