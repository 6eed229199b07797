"""HR joiner / mover / leaver events, pure: validate an event and derive its grant messages and when they are due.

An event (JSON object; other fields are ignored)::

    {"eventId": "evt-981", "eventType": "hire", "employeeId": "EMP-4711",
     "userObjectId": "<GUID>", "department": "IT", "location": "EMEA", "jobCode": "HD1",
     "effectiveDate": "2026-12-01", "previous": {"location": "APAC"}}

- ``eventType``: ``hire`` / ``joiner``, ``move`` / ``mover`` (``previous``, required, holds the old values of the
  attributes that changed), ``leave`` / ``leaver``; what each sends: `derive_messages`.
- ``eventId``: 1 to 100 letters, digits and ``. _ : @ -``; when absent it is derived as
  ``<employeeId>.<eventType>.<effectiveDate>.<8 hex of occurredAt, else of the event's MessageId>``
  (``effectiveDate`` is then required), so a hire, a leave and a rehire on one day are three events.
- ``effectiveDate`` (``YYYY-MM-DD``) and ``occurredAt`` (optional, RFC 3339 with offset) lie in the app's time domain
  (`shared.core.times`); the event's JSON is read as a grant message's is (no key twice).
- Where an event stands among its person's events is its `Placement` (`place`): its effective moment, then its
  ``occurredAt`` (never later than its first arrival) and first arrival. Its grant messages are its intents at that
  place, so of two HR intents for one target the later effective one wins, whatever the entry order.
- Each grant message has requestId (and MessageId, keyed as the app sends it) ``~hr:<eventId>:<first 16 hex of
  sha256(action, target, member)>`` (the app's own namespace: no producer can send one): two people under one
  eventId get different ids, and every copy of an event (placed and derived as first recorded, `KnownEvent`) the same
  ones (duplicate detection, then the ledger, absorbs them; a joiner carried again after the leaver is superseded).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
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
    Target,
    derived_request_id,
    encode,
    load_json,
    parse_guid,
    target_document,
)
from shared.core.errors import ContractError, Reason
from shared.core.hr_rules import ATTRIBUTES, HrRules
from shared.core.times import EARLIEST, LATEST, TimeRefused, intent_time, parse_date, parse_timestamp

__all__ = [
    "GrantMessage",
    "HrEvent",
    "KnownEvent",
    "Placement",
    "derive_messages",
    "effective_at",
    "gives",
    "parse_event",
    "place",
    "tiebreak_text",
]

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
_TICK: Final = timedelta(microseconds=1)


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    """Where an HR event's intents stand among every intent for the person's pairs (`Intent.order`): at `moment`, their
    ``requestedAt`` (the event's effective moment, `place`), then at `tiebreak` (its ``occurredAt``, else its first
    arrival; then its first arrival)."""

    moment: datetime
    tiebreak: tuple[datetime, datetime]


@dataclass(frozen=True, slots=True, kw_only=True)
class KnownEvent:
    """One HR event of a person as the ledger first recorded it (`shared.adapters.ledger.Ledger.hr_events`): the event,
    its `placement`, the person's other events its grant messages are derived against (`considered`: fixed by its
    first derivation, so every copy of it derives the same messages; None until then), and what the rules gave the
    person by it then (`gives`: each target with its rules' names, fixed with `considered`; a later leaver ends them
    even when no rule gives them any more)."""

    event: HrEvent
    placement: Placement
    considered: tuple[str, ...] | None = None
    gives: tuple[tuple[Target, tuple[str, ...]], ...] = ()

    @property
    def order(self) -> tuple[datetime, tuple[datetime, ...], str]:
        """The event's place among the person's events: as its intents' `Intent.order` (their request ids begin with
        ``~hr:<eventId>:``, so the last resort, the event id, orders them as it orders its intents)."""
        return (self.placement.moment, self.placement.tiebreak, f"{self.event.event_id}:")


@dataclass(frozen=True, slots=True, kw_only=True)
class GrantMessage:
    """One grant message an HR event sends: the request (`command`, encoded as `body`) and its `placement` (the
    request's ``requestedAt`` is its moment; the tiebreak travels sealed beside it: `tiebreak_text`)."""

    request_id: str
    command: GrantCommand
    body: bytes
    placement: Placement


def place(event: HrEvent, *, first_arrival: datetime, zone: str, leavers: str) -> Placement:
    """Where `event` stands (`Placement`), from its first arrival (the earliest the app knew of it).

    The moment is the start of ``effectiveDate`` in `zone` for a joiner or mover, its end (the next midnight) for a
    leaver, and with ``"leavers": "immediately"`` the leaver's first arrival when that is earlier; without an
    ``effectiveDate``, its ``occurredAt``, else its first arrival. ``occurredAt`` counts only when it is not later than
    the first arrival (`intent_time`: no producer's clock dates an intent in the future). Kept inside the app's time
    domain."""
    occurred = intent_time(event.occurred_at, arrived_at=first_arrival)
    if event.effective_date is None:
        moment = occurred
    else:
        day = date.fromisoformat(event.effective_date) + timedelta(days=1 if event.kind == "leaver" else 0)
        moment = datetime.combine(day, time.min, tzinfo=ZoneInfo(zone)).astimezone(UTC)
        if event.kind == "leaver" and leavers == "immediately":
            moment = min(moment, first_arrival)
    return Placement(moment=min(max(moment, EARLIEST), LATEST - _TICK), tiebreak=(occurred, first_arrival))


def effective_at(placement: Placement, *, now: datetime) -> datetime:
    """When a grant message placed at `placement` is due: its moment, `now` when that has passed."""
    return max(placement.moment, now)


def tiebreak_text(placement: Placement) -> str:
    """`placement`'s tiebreak as the sealed property ``hrTiebreak`` (`shared.core.messaging.HR_TIEBREAK`)."""
    return " ".join(moment.isoformat() for moment in placement.tiebreak)


def derive_messages(
    event: HrEvent, rules: HrRules, *, placement: Placement, known: Sequence[KnownEvent] = ()
) -> list[GrantMessage]:
    """The grant messages for `event` placed at `placement`, derived against the person's other `known` events, in a
    stable order; each passes the contract.

    - A leaver: a revoke-all of every target any rule can give (`HrRules.every_target`), and of every target the
      person's older events (since their last leaver) were given under rules since removed (`KnownEvent.gives`).
    - A joiner or mover sets what HR gives the person to what the rules give its attributes: an end of each target
      the person's older events (since their last leaver) gave or a mover's ``previous`` gives, that they do not, and
      an add of each they give.
    - And for each of the person's newer events (up to a newer leaver, which ends everything): an end, placed as that
      event, of each target this one gives and that one does not (it was derived before this event was known).

    Each request id names the event, the action, the target and the member (an end for a newer event also that
    event): ``~hr:<eventId>:<16 hex>``; ``requestedAt`` is the moment of the placement it carries."""
    me = KnownEvent(event=event, placement=placement)
    others = sorted(
        (k for k in known if k.event.event_id != event.event_id and k.event.user_id == event.user_id),
        key=lambda known_event: known_event.order,
    )
    older = [k for k in others if k.order < me.order]
    since = older[max((i + 1 for i, k in enumerate(older) if k.event.kind == "leaver"), default=0) :]
    if event.kind == "leaver":
        ending = rules.every_target()
        for earlier in since:
            for target, recorded in earlier.gives:
                ending.setdefault(target, list(recorded))
        return [_message(event, placement, "remove", target, names) for target, names in ending.items()]
    given = rules.targets_for(event.attributes)
    held: dict[Target, list[str]] = {}
    for source in [*(k.event for k in since), event]:
        for attributes in (source.attributes, source.previous) if source.kind == "mover" else (source.attributes,):
            for target, names in rules.targets_for(attributes).items():
                held.setdefault(target, names)
    messages = [_message(event, placement, "remove", t, names) for t, names in held.items() if t not in given]
    messages += [_message(event, placement, "add", target, names) for target, names in given.items()]
    for newer in (k for k in others if k.order > me.order):
        if newer.event.kind == "leaver":
            break
        theirs = rules.targets_for(newer.event.attributes)
        for target, names in given.items():
            if target not in theirs:
                messages.append(_message(event, newer.placement, "remove", target, names, newer=newer.event))
    return messages


def gives(event: HrEvent, rules: HrRules) -> tuple[tuple[Target, tuple[str, ...]], ...]:
    """What `rules` give the person by `event` (`KnownEvent.gives`): a joiner's or mover's targets, a leaver nothing."""
    if event.kind == "leaver":
        return ()
    return tuple((target, tuple(names)) for target, names in rules.targets_for(event.attributes).items())


def _message(
    event: HrEvent,
    placement: Placement,
    action: str,
    target: Target,
    names: list[str],
    *,
    newer: HrEvent | None = None,
) -> GrantMessage:
    """One grant message of `event`: `action` of `target` for its person, placed at `placement` (for a `newer` event
    of the person: an end on its behalf)."""
    canonical = json.dumps(target_document(target), sort_keys=True)
    what = f"{action}|{canonical}|{event.user_id}" + (f"|{newer.event_id}" if newer is not None else "")
    request_id = derived_request_id("hr", event.event_id, hashlib.sha256(what.encode()).hexdigest()[:16])
    effective = f", effective {event.effective_date}" if event.effective_date else ""
    why = f"{event.kind} event {event.event_id}{effective}"
    if newer is not None:
        why = f"{newer.kind} event {newer.event_id} does not give what {why} gives"
    command = GrantCommand(
        request_id=request_id,
        action=Action(action),
        target=target,
        member=Member(id=event.user_id, type=MemberType.USER),
        source=Source(system=SourceSystem.HR, reference=event.employee_id),
        requested_by="hr-events",
        reason=f"{why}; rules: {', '.join(names)}"[:1024],
        requested_at=placement.moment,
        revoke_all=event.kind == "leaver",
    )
    return GrantMessage(request_id=request_id, command=command, body=encode(command), placement=placement)


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
