"""Statuses, pure: what a request or a delivery can say of itself, how it ended, and the request's status record.

- `Status`: the one vocabulary. A request moves through *pending* statuses (accepted, scheduled, in_progress,
  retry_scheduled) to one *terminal* one: succeeded (granted, already_member, revoked, not_member, released,
  would_grant, would_revoke, superseded, duplicate) or failed (dead_lettered). A delivery can also end completed
  (an HR event), delivered or skipped (a callback), or, not terminal, abandoned or unsettled (Service Bus delivers
  it again) or deferred (it came before its time: queued again for it).
- `Settled`: how one delivery ended (the outcome line's status, reason, description and attempts).
- `StatusRecord`: what ``GET /api/grants/{requestId}`` answers, frozen and typed; `StatusRecord.to_json` and
  `StatusRecord.from_json` are its only writer and reader (every field, ``null`` when unknown).
- `StatusWrite`: how a status record is written over what the ledger holds, so that a copy of a request (a
  duplicate, a retry racing a redelivery) never moves a finished request back to pending or overwrites its
  owner's outcome.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from shared.core.times import read_time

__all__ = ["Holder", "Removal", "Settled", "Status", "StatusRecord", "StatusWrite", "kept_over", "seen_by"]


class Status(StrEnum):
    """A request's status, or how a delivery ended. Stable: a public interface (the API, outcome lines, events)."""

    # a request's, pending
    ACCEPTED = "accepted"  # the webhook queued it
    SCHEDULED = "scheduled"  # an HR event queued it for a later effective time (``scheduledFor``)
    IN_PROGRESS = "in_progress"  # an attempt holds the member and target's lease and is writing to Graph
    RETRY_SCHEDULED = "retry_scheduled"  # an attempt failed transiently; ``nextRetryAt`` says when the next runs
    # a request's, terminal and succeeded
    GRANTED = "granted"
    ALREADY_MEMBER = "already_member"
    REVOKED = "revoked"
    NOT_MEMBER = "not_member"
    RELEASED = "released"  # the request ended its grant (or had none); the membership stays: ``heldBy`` says why
    WOULD_GRANT = "would_grant"  # dry run
    WOULD_REVOKE = "would_revoke"  # dry run
    SUPERSEDED = "superseded"  # a newer intent for the same member and target is recorded: nothing written
    DUPLICATE = "duplicate"  # the same request arrived before in another message: nothing written
    # terminal and failed
    DEAD_LETTERED = "dead_lettered"
    # a delivery's other ends (outcome lines, never a request's status)
    COMPLETED = "completed"  # an HR event whose grant messages were all sent
    DELIVERED = "delivered"  # a callback the receiver answered 2xx
    SKIPPED = "skipped"  # a callback event with no callback URL
    ABANDONED = "abandoned"  # not terminal: Service Bus delivers the message again
    DEFERRED = "deferred"  # not terminal: delivered before the earliest time the app sealed it to run (`notBefore`);
    # nothing carried out, queued again for then
    UNSETTLED = "unsettled"  # not terminal: left to its lock expiry (a transient failure no copy could retry, or a
    # settlement call the host did not answer in time); Service Bus delivers it again when the lock expires

    @property
    def pending(self) -> bool:
        """A request's status before its end."""
        return self in _PENDING

    @property
    def succeeded(self) -> bool:
        """A terminal status that is not a failure."""
        return self in _SUCCEEDED

    @property
    def terminal(self) -> bool:
        """The request (or delivery) ends with this status: succeeded or dead-lettered."""
        return self in _SUCCEEDED or self is Status.DEAD_LETTERED

    @classmethod
    def read(cls, value: object) -> Status | None:
        """The status named `value`, or None when it names none."""
        if not isinstance(value, str):
            return None
        try:
            return cls(value)
        except ValueError:
            return None


_PENDING: Final = frozenset({Status.ACCEPTED, Status.SCHEDULED, Status.IN_PROGRESS, Status.RETRY_SCHEDULED})
_SUCCEEDED: Final = frozenset(
    {
        Status.GRANTED,
        Status.ALREADY_MEMBER,
        Status.REVOKED,
        Status.NOT_MEMBER,
        Status.RELEASED,
        Status.WOULD_GRANT,
        Status.WOULD_REVOKE,
        Status.SUPERSEDED,
        Status.DUPLICATE,
        Status.COMPLETED,
        Status.DELIVERED,
        Status.SKIPPED,
    }
)
#: Statuses after which the member holds the membership (a time-bound grant's removal is then scheduled).
HOLDS: Final = frozenset({Status.GRANTED, Status.ALREADY_MEMBER})
#: Statuses that record a change Graph made for the request.
CHANGED: Final = frozenset({Status.GRANTED, Status.REVOKED})


class StatusWrite(StrEnum):
    """How a status record is written over what the ledger holds (decided for each stored copy on its own)."""

    FIRST = "first"  # only where nothing is recorded: accepted, scheduled, and what a duplicate or refused id says
    PROGRESS = "progress"  # unless a terminal status is recorded: in_progress, retry_scheduled
    FINAL = "final"  # always: the terminal outcome of the request's own message


def kept_over(recorded: StatusRecord | None, outcome: Status, *, message_id: str | None) -> bool:
    """Whether `recorded`, the status an earlier delivery of the same message (`message_id`) recorded, stays over
    `outcome`, this delivery's: a change Graph made (granted, revoked) is not replaced by an outcome that made none
    (a message delivered again after its settlement failed finds the change in place: already_member, not_member,
    or superseded, refused by then). The record keeps what Graph did, its Graph request id with it."""
    return (
        recorded is not None
        and message_id is not None
        and recorded.message_id == message_id
        and recorded.status in CHANGED
        and outcome not in CHANGED
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Settled:
    """How one delivery ended: the outcome line's status, reason code, description and attempt number."""

    outcome: Status
    reason: str | None
    description: str
    attempts: int

    @property
    def terminal(self) -> bool:
        """True when the delivery ended for good (see `Status.terminal`)."""
        return self.outcome.terminal


@dataclass(frozen=True, slots=True, kw_only=True)
class Removal:
    """A time-bound grant's removal: ``scheduled`` until it runs (`due_at`), then its own status."""

    status: Status
    due_at: datetime | None = None
    request_id: str | None = None
    reason: str | None = None
    updated_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        """The removal as JSON: ``{"status", "dueAt"}`` while scheduled, else its status, requestId, reason and
        updatedAt."""
        if self.status is Status.SCHEDULED:
            return {"status": self.status.value, "dueAt": _iso(self.due_at)}
        return {
            "status": self.status.value,
            "requestId": self.request_id,
            "reason": self.reason,
            "updatedAt": _iso(self.updated_at),
        }

    @classmethod
    def from_json(cls, document: object) -> Removal | None:
        """The removal `document` describes; None when it is not one."""
        if not isinstance(document, Mapping) or (status := Status.read(document.get("status"))) is None:
            return None
        return cls(
            status=status,
            due_at=read_time(document.get("dueAt")),
            request_id=_text(document.get("requestId")),
            reason=_text(document.get("reason")),
            updated_at=read_time(document.get("updatedAt")),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Holder:
    """What keeps a membership a request did not remove (``released``): a producer's grant (its producer, its request
    id, its expiry), or, with no producer, a membership the app did not make (``preexisting``)."""

    producer: str | None = None
    request_id: str | None = None
    expires_at: datetime | None = None
    preexisting: bool = False

    def to_json(self) -> dict[str, Any]:
        """``{"producer", "requestId", "expiresAt"}`` for a grant; ``{"preexisting": true}`` for a membership the app
        did not make."""
        if self.preexisting:
            return {"preexisting": True}
        return {"producer": self.producer, "requestId": self.request_id, "expiresAt": _iso(self.expires_at)}

    @classmethod
    def from_json(cls, document: object) -> Holder | None:
        """The holder `document` describes; None when it is not one."""
        if not isinstance(document, Mapping):
            return None
        if document.get("preexisting") is True:
            return cls(preexisting=True)
        producer = _text(document.get("producer"))
        if producer is None:
            return None
        return cls(
            producer=producer,
            request_id=_text(document.get("requestId")),
            expires_at=read_time(document.get("expiresAt")),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusRecord:
    """A request's status record: how far it got, what it asks, who asked, and the bookkeeping of its attempts.

    Times are aware datetimes; in JSON, ISO 8601 strings. `accepted_at` and `updated_at` are the ledger's (when it
    first and last recorded a status); `removal` is a time-bound grant's removal.
    """

    request_id: str | None
    #: Who asked (`shared.core.producers`): a request id is its producer's own.
    producer: str | None = None
    status: Status
    reason: str | None = None
    description: str | None = None
    attempts: int = 0
    message_id: str | None = None
    original_message_id: str | None = None
    graph_request_id: str | None = None
    started_at: datetime | None = None
    first_attempt_at: datetime | None = None
    last_attempt_at: datetime | None = None
    next_retry_at: datetime | None = None
    # what it asks, and who asked
    action: str | None = None
    source_system: str | None = None
    source_reference: str | None = None
    requested_by: str | None = None
    request_reason: str | None = None
    target_type: str | None = None
    target_id: str | None = None
    role_template_id: str | None = None
    role_definition_id: str | None = None  # a PIM target's (roleEligibility, roleAssignment)
    directory_scope_id: str | None = None
    member_id: str | None = None
    member_type: str | None = None
    dry_run: bool | None = None
    requested_at: datetime | None = None
    intent_at: datetime | None = None
    expires_at: datetime | None = None
    # where it belongs
    job_id: str | None = None
    hr_event_id: str | None = None
    job_row: int | None = None
    job_rows: int | None = None
    scheduled_for: datetime | None = None
    expiry_of: str | None = None
    # the ledger's
    accepted_at: datetime | None = None
    updated_at: datetime | None = None
    removal: Removal | None = None
    #: On a ``released`` request: what keeps the membership (each grant that holds it, or that it pre-existed).
    held_by: tuple[Holder, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON object: every field by its camelCase name, ``null`` when unknown."""
        document: dict[str, Any] = {}
        for name, key in _KEYS:
            value = getattr(self, name)
            if isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, Status):
                value = value.value
            elif isinstance(value, Removal):
                value = value.to_json()
            elif isinstance(value, tuple):
                value = [holder.to_json() for holder in value]
            document[key] = value
        return document

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> StatusRecord:
        """The record `document` holds; a field of the wrong type is read as unknown (None). Raises ValueError
        when ``status`` names no `Status`."""
        status = Status.read(document.get("status"))
        if status is None:
            raise ValueError(f"not a status: {document.get('status')!r}")
        values: dict[str, Any] = {}
        for name, key in _KEYS:
            kind, value = _FIELD_TYPES[name], document.get(key)
            if name == "status":
                continue
            if kind is datetime:
                values[name] = read_time(value)
            elif kind is Removal:
                values[name] = Removal.from_json(value)
            elif kind is Holder:
                holders = [Holder.from_json(item) for item in value] if isinstance(value, list) else None
                values[name] = tuple(h for h in holders if h is not None) if holders is not None else None
            elif kind is int:
                values[name] = value if isinstance(value, int) and not isinstance(value, bool) else None
            elif kind is bool:
                values[name] = value if isinstance(value, bool) else None
            else:
                values[name] = _text(value)
        values["attempts"] = values.get("attempts") or 0
        return cls(status=status, **values)

    def replace(self, **changes: Any) -> StatusRecord:
        """A copy with `changes`."""
        return dataclasses.replace(self, **changes)

    def seen_by(self, viewer: str | None) -> StatusRecord:
        """The record as producer `viewer` may read it: of the grants that hold a membership it did not remove, only
        each other producer's name (their request ids and expiries are theirs); unchanged for `viewer` None (a
        reader of every producer's records)."""
        if viewer is None or not self.held_by:
            return self
        return self.replace(
            held_by=tuple(h if h.producer in (None, viewer) else Holder(producer=h.producer) for h in self.held_by)
        )

    def with_removal_view(self) -> StatusRecord:
        """The record as the API shows it: a time-bound grant that holds, whose removal has no status of its own
        yet, shows ``removal`` ``scheduled`` at its expiry."""
        if self.removal is None and self.expires_at is not None and self.status in HOLDS:
            return self.replace(removal=Removal(status=Status.SCHEDULED, due_at=self.expires_at))
        return self


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


_KEYS: Final = tuple((field.name, _camel(field.name)) for field in dataclasses.fields(StatusRecord))
#: How each field is read from JSON, by its declared type (anything else is text).
_FIELD_TYPES: Final[Mapping[str, type]] = {
    field.name: {
        "datetime | None": datetime,
        "Removal | None": Removal,
        "bool | None": bool,
        "int": int,
        "tuple[Holder, ...] | None": Holder,
    }.get(str(field.type), int if str(field.type) == "int | None" else str)
    for field in dataclasses.fields(StatusRecord)
}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _text(value: object) -> str | None:
    """A non-empty string, else None (an empty property or field is unknown, not a value)."""
    return value if isinstance(value, str) and value != "" else None


def seen_by(held_by: object, viewer: str | None) -> object:
    """A status record's JSON ``heldBy`` as producer `viewer` may read it (`StatusRecord.seen_by`); anything else
    unchanged."""
    if viewer is None or not isinstance(held_by, list):
        return held_by
    return [
        item
        if not isinstance(item, Mapping) or item.get("producer") in (None, viewer)
        else {"producer": item.get("producer"), "requestId": None, "expiresAt": None}
        for item in held_by
    ]
