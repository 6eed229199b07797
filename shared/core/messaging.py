"""What travels with a message besides its body, and the ports that send and settle messages.

One place for the bookkeeping every reader and writer of the queues shares (the trigger, the HR path, the
webhook, the operator CLI and the local queue): the application property names the app writes, how the
attempt number is counted, the dead-letter record, Service Bus's size limits, and the `MessageSender` /
`MessageActions` protocols the app is written against (azure-servicebus and the Functions extension in
Azure; the in-process queue locally).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, Protocol, TypeAlias

from shared.core.times import read_time

__all__ = [
    "ARRIVED_AT",
    "ATTEMPT",
    "BULK_JOB",
    "CALLBACK_URL",
    "DEAD_LETTER_ERROR_DESCRIPTION",
    "DEAD_LETTER_REASON",
    "DERIVED_PREFIX",
    "EVENT_HR_EVENT_ID",
    "EVENT_JOB_ID",
    "EVENT_OUTCOME",
    "EVENT_PRODUCER",
    "EVENT_REASON",
    "EVENT_REQUEST_ID",
    "EVENT_SOURCE_SYSTEM",
    "EXPIRY_OF",
    "FIRST_ATTEMPT_AT",
    "HR_EVENT",
    "INTERNAL",
    "JOB_PROPERTIES",
    "JOB_ROW",
    "JOB_ROWS",
    "LANES",
    "MAX_DESCRIPTION_CHARS",
    "MAX_JOB_ROWS",
    "MAX_MESSAGE_ID_CHARS",
    "MAX_REASON_CHARS",
    "NOT_BEFORE",
    "NOT_FOUND_ANSWERS",
    "NOT_FOUND_SINCE",
    "ORIGINAL_MESSAGE_ID",
    "PRODUCER",
    "RESUBMISSION",
    "RESUBMITTED_FROM",
    "SEAL",
    "DeadLetter",
    "Delivery",
    "Lane",
    "MessageActions",
    "MessageSender",
    "OutcomePublisher",
    "PropertyValue",
    "attempt_of",
    "callback_copy_id",
    "clip",
    "derived_message_id",
    "job_row_problem",
    "not_before_text",
    "original_message_id",
    "outcome_event_id",
    "property_of",
    "whole_row",
]

PropertyValue: TypeAlias = str | int | float | bool


class Lane(StrEnum):
    """Which queue a grant message came from, and so its priority: a bulk job's rows wait behind interactive grants
    (the governor), go to Graph at ``x-ms-throttle-priority: Low``, and their retry copies stay in the bulk queue."""

    INTERACTIVE = "interactive"
    BULK = "bulk"


#: The lanes, served in this order.
LANES: Final = (Lane.INTERACTIVE, Lane.BULK)

#: Application properties the app writes on the messages it sends itself (its bookkeeping: `INTERNAL`).
ATTEMPT: Final = "attempt"  # a retry copy's attempt number (the first delivery is attempt 1)
FIRST_ATTEMPT_AT: Final = "firstAttemptAt"  # when attempt 1 started (ISO 8601)
ARRIVED_AT: Final = "arrivedAt"  # when the request's first message was enqueued (ISO 8601): its first arrival
ORIGINAL_MESSAGE_ID: Final = "originalMessageId"  # the producer's MessageId, carried by every copy
EXPIRY_OF: Final = "expiryOf"  # on a scheduled removal: the request whose grant it ends
HR_EVENT: Final = "hrEvent"  # on an HR event's grant messages: the event id
BULK_JOB: Final = "bulkJob"  # on a bulk job's messages: the job id (set by `grants submit`, carried by copies)
JOB_ROW: Final = "jobRow"  # on a bulk job's or HR event's messages: this message's row (from 1)
JOB_ROWS: Final = "jobRows"  # on a bulk job's or HR event's messages: how many messages the job or event sent
SEAL: Final = "seal"  # the app's seal over the message and its internal properties (`shared.core.seal`)
#: On every message the app sends: the earliest time it may run (`not_before_text`: its scheduled enqueue time, UTC,
#: whole milliseconds), set by the one sender that seals (`shared.adapters.seal.SealingSender`): a copy delivered
#: sooner waits for it (`Delivery.early`).
NOT_BEFORE: Final = "notBefore"
#: On a retry copy after a member was not found (replication): how many such answers the request has had, and when
#: the first came (ISO 8601); nothing else counts toward giving up on it (`shared.core.retry.Waiting`).
NOT_FOUND_ANSWERS: Final = "notFoundAnswers"
NOT_FOUND_SINCE: Final = "notFoundSince"
#: On every message the app sends: the producer whose request it carries (`shared.core.producers`), as established
#: when the request arrived (its entry point or credential): never a producer's to say.
PRODUCER: Final = "producer"
RESUBMISSION: Final = "resubmission"  # set by `dlq resubmit`: its copies' MessageIds are its own
RESUBMITTED_FROM: Final = "resubmittedFrom"  # set by `dlq resubmit` on a sealed dead letter's copy: its MessageId
#: The app's bookkeeping: honoured only on a message the app sealed (`Delivery.trusted`), except a bulk job's
#: `JOB_PROPERTIES`, which `grants submit` sets on the messages it sends to its producer's own queue (its jobs are
#: its own: `shared.core.producers`).
JOB_PROPERTIES: Final = (BULK_JOB, JOB_ROW, JOB_ROWS)
INTERNAL: Final = (
    ATTEMPT,
    FIRST_ATTEMPT_AT,
    ARRIVED_AT,
    ORIGINAL_MESSAGE_ID,
    EXPIRY_OF,
    HR_EVENT,
    PRODUCER,
    NOT_BEFORE,
    NOT_FOUND_ANSWERS,
    NOT_FOUND_SINCE,
    *JOB_PROPERTIES,
)
#: Application properties of an outcome event (the grant-outcomes topic), for subscription SQL filters.
EVENT_SOURCE_SYSTEM: Final = "sourceSystem"  # hr | ticketing | bulk | other; absent when the body was unreadable
EVENT_PRODUCER: Final = "producer"  # the producer whose request it was (its callback goes to its hosts, its secret)
EVENT_OUTCOME: Final = "outcome"  # granted | already_member | revoked | not_member | would_* | dead_lettered
EVENT_REASON: Final = "reason"  # the reason code of a dead letter; absent otherwise
EVENT_JOB_ID: Final = "jobId"  # a bulk job's id (the grant message's BULK_JOB); absent otherwise
EVENT_HR_EVENT_ID: Final = "hrEventId"  # the HR event's id (the grant message's HR_EVENT); absent otherwise
EVENT_REQUEST_ID: Final = "requestId"  # the producer's request id, when it could be read
CALLBACK_URL: Final = "callbackUrl"  # the request's callback URL; the callbacks subscription filters on it
#: Where Service Bus keeps a dead letter's reason and description among its application properties.
DEAD_LETTER_REASON: Final = "DeadLetterReason"
DEAD_LETTER_ERROR_DESCRIPTION: Final = "DeadLetterErrorDescription"

#: Service Bus limits: the dead-letter reason and description are message properties; keep both short.
MAX_REASON_CHARS: Final = 128
MAX_DESCRIPTION_CHARS: Final = 1024
MAX_MESSAGE_ID_CHARS: Final = 128


def property_of(properties: Mapping[Any, Any], name: str) -> Any:
    """An application property by name, whether its key and str value arrived as str or bytes (AMQP)."""
    value = properties.get(name, properties.get(name.encode()))
    return value.decode() if isinstance(value, bytes) else value


def attempt_of(properties: Mapping[Any, Any], delivery_count: int) -> int:
    """This attempt's number: the copy's `ATTEMPT` (1 when absent or unreadable) plus its redeliveries."""
    try:
        base = int(property_of(properties, ATTEMPT) or 1)
    except (TypeError, ValueError):
        base = 1
    return max(base, 1) + max(delivery_count - 1, 0)


def not_before_text(when: datetime) -> str:
    """`when` as the `NOT_BEFORE` property: UTC, ISO 8601, cut to whole milliseconds (what Service Bus keeps of a
    scheduled enqueue time), so never later than `when` nor than the enqueue time the broker gives the message."""
    utc = when.astimezone(UTC) if when.tzinfo is not None else when.replace(tzinfo=UTC)
    return utc.replace(microsecond=utc.microsecond - utc.microsecond % 1000).isoformat(timespec="milliseconds")


def original_message_id(properties: Mapping[Any, Any], message_id: str | None) -> str:
    """The producer's MessageId: `ORIGINAL_MESSAGE_ID` on a copy the app made, else on a `dlq resubmit` copy of a
    sealed message the dead letter's (`RESUBMITTED_FROM`), else the message's own."""
    value = property_of(properties, ORIGINAL_MESSAGE_ID)
    if not value and property_of(properties, RESUBMISSION):
        value = property_of(properties, RESUBMITTED_FROM)
    return str(value) if value else str(message_id or "")


#: The first character of every MessageId the app derives; no honest producer's MessageId starts with it (request
#: ids, bulk ``<job>:<row>`` and HR ids start with a letter or digit), and the app keys a derived id as it sends it
#: (`shared.core.seal.keyed_message_id`), so no producer can send a message under one first.
DERIVED_PREFIX: Final = "~"


def derived_message_id(kind: str, *sources: str, suffix: str = "") -> str:
    """``~<kind>:<digest>[:<suffix>]`` for a message the app sends itself (retry copy, expiry removal, HR grant,
    resubmission): the digest is 40 hex digits of the SHA-256 of `sources` (what makes it unique: the original
    MessageId and the content), so two ids are equal only when kind, sources and suffix all are."""
    digest = hashlib.sha256("\x1f".join(sources).encode("utf-8", "surrogatepass")).hexdigest()[:40]
    return f"{DERIVED_PREFIX}{kind}:{digest}" + (f":{suffix}" if suffix else "")


#: The most rows a job (or HR event) may have: a row number is a whole number from 1 to this.
MAX_JOB_ROWS: Final = 1_000_000


def job_row_problem(properties: Mapping[Any, Any]) -> str | None:
    """What is wrong with a bulk job's row properties (`BULK_JOB`, `JOB_ROW`, `JOB_ROWS`), or None: a row of a job
    is a whole number from 1 to the job's row count (at most `MAX_JOB_ROWS`), both given; a row without a job is no
    row. Without any of them, nothing."""
    job, row_text, rows_text = (property_of(properties, name) for name in (BULK_JOB, JOB_ROW, JOB_ROWS))
    if job in (None, "") and row_text is None and rows_text is None:
        return None
    if job in (None, ""):
        return f"{JOB_ROW} and {JOB_ROWS} name a row of a job, but {BULK_JOB} names none"
    row, rows = whole_row(row_text), whole_row(rows_text)
    if row is None or rows is None:
        return f"a row of job {job} needs {JOB_ROW} and {JOB_ROWS}, whole numbers from 1 to {MAX_JOB_ROWS}"
    if row > rows:
        return f"{JOB_ROW} {row} is past the job's {JOB_ROWS} {rows}"
    return None


def whole_row(value: object) -> int | None:
    """A row number or count: a whole number from 1 to `MAX_JOB_ROWS` (an int, or its decimal text), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.isdecimal() and len(value) <= 9:
        value = int(value)
    return value if isinstance(value, int) and 1 <= value <= MAX_JOB_ROWS else None


def clip(text: str, limit: int) -> str:
    """`text`, cut to `limit` characters with an ellipsis when longer."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """What the app needs from one received message; `message` is what `MessageActions` settle."""

    message: Any
    body: bytes
    message_id: str | None
    delivery_count: int
    application_properties: Mapping[Any, Any]
    enqueued_time: datetime | None = None
    own: bool = False  # sealed by the app (`trusted`): its internal properties are the app's own

    @classmethod
    def of(cls, message: Any) -> Delivery:
        """Read an `azure.servicebus.ServiceBusReceivedMessage` (the SDK-type binding's message)."""
        body = message.body
        raw = body if isinstance(body, bytes) else b"".join(bytes(part) for part in body)
        return cls(
            message=message,
            body=raw,
            message_id=message.message_id,
            delivery_count=message.delivery_count or 1,
            application_properties=message.application_properties or {},
            enqueued_time=getattr(message, "enqueued_time_utc", None),
        )

    def application_property(self, name: str) -> Any:
        """An application property by name (see `property_of`)."""
        return property_of(self.application_properties, name)

    def text_property(self, name: str) -> str | None:
        """An application property's text: None when it is absent or empty."""
        value = self.application_property(name)
        return str(value) if value not in (None, "") else None

    @property
    def attempt(self) -> int:
        """This delivery's attempt number (see `attempt_of`)."""
        return attempt_of(self.application_properties, self.delivery_count)

    @property
    def original_message_id(self) -> str:
        """The producer's MessageId (see `original_message_id`)."""
        return original_message_id(self.application_properties, self.message_id)

    def first_attempt_at(self, default: datetime) -> datetime:
        """When attempt 1 started (`FIRST_ATTEMPT_AT`, set on retry copies; naive means UTC), else `default`."""
        return read_time(self.application_property(FIRST_ATTEMPT_AT)) or default

    @property
    def not_before(self) -> datetime | None:
        """The earliest time this message may run (`NOT_BEFORE`), on a message the app sealed; else None."""
        return read_time(self.application_property(NOT_BEFORE)) if self.own else None

    def early(self, now: datetime) -> datetime | None:
        """`not_before` when this delivery came before it, else None. Early means that neither clock has reached it:
        not the app's (`now`), nor the broker's (the enqueue time: a scheduled message is enqueued when it becomes
        due, so a message the broker held until its time is never early, even when the app's clock runs behind)."""
        until = self.not_before
        if until is None or now >= until:
            return None
        enqueued = self.enqueued_time if self.enqueued_time is not None and self.enqueued_time.tzinfo else None
        return None if enqueued is not None and enqueued >= until else until

    def arrived_at(self, default: datetime) -> datetime:
        """When the request's first message was enqueued: `ARRIVED_AT` on a copy the app made (on a `dlq resubmit`
        copy of a producer's message, only when not later than this message's enqueue time), else this message's
        enqueue time (the broker's), else `default`."""
        enqueued = self.enqueued_time if self.enqueued_time is not None and self.enqueued_time.tzinfo else None
        stated = read_time(self.application_property(ARRIVED_AT))
        if stated is not None and not self.own and enqueued is not None:
            stated = min(stated, enqueued)  # a producer's copy may make its intent older, never newer
        return stated or enqueued or default

    def trusted(self, *, sealed: bool, job_properties: bool, restarted: bool = False) -> Delivery:
        """This delivery as the app believes it: with `sealed` (the app's seal checks out) as it is, marked `own`
        (`restarted`, a `dlq resubmit` copy of a sealed message: without its `ATTEMPT`, `FIRST_ATTEMPT_AT` and
        member-not-found answers, it counts its attempts again; its `NOT_BEFORE` stays); otherwise without the
        `INTERNAL` properties a producer may not set (its `PRODUCER` above all: who sent it is its entry point's to
        say). Kept: a bulk job's `JOB_PROPERTIES` when `job_properties` (on a producer's own queue: its jobs are its
        own), and on a `dlq resubmit` copy its `ORIGINAL_MESSAGE_ID` and `ARRIVED_AT` (so the ledger knows it for the
        same request again, as first made: at most it carries that request out once more, and never as a newer
        intent)."""
        if sealed:
            reset = {ATTEMPT, FIRST_ATTEMPT_AT, NOT_FOUND_ANSWERS, NOT_FOUND_SINCE} if restarted else set()
            return replace(self, application_properties=self._without(reset), own=True)
        kept: tuple[str, ...] = JOB_PROPERTIES if job_properties else ()
        if self.application_property(RESUBMISSION):  # an operator's `dlq resubmit`: the request it carries again
            kept = (*kept, ORIGINAL_MESSAGE_ID, ARRIVED_AT)
        names = {name for name in INTERNAL if name not in kept} | {SEAL}
        return replace(self, application_properties=self._without(names), own=False)

    def _without(self, names: set[str]) -> Mapping[Any, Any]:
        """The application properties but `names` (keys as str or bytes)."""
        return {
            key: value
            for key, value in self.application_properties.items()
            if (key.decode() if isinstance(key, bytes) else key) not in names
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    """A message in a dead-letter sub-queue, with why it is there; `delivery_count` counts the app's deliveries."""

    sequence_number: int
    message_id: str
    body: bytes
    application_properties: Mapping[str, PropertyValue]
    reason: str | None
    description: str | None
    delivery_count: int
    enqueued_time: datetime | None

    @property
    def request_id(self) -> str | None:
        """The body's ``requestId`` when the body is a JSON object with a string one."""
        try:
            document = json.loads(self.body)
        except ValueError:
            return None
        value = document.get("requestId") if isinstance(document, dict) else None
        return value if isinstance(value, str) else None

    @property
    def attempts(self) -> int:
        """How many attempts the app made (see `attempt_of`)."""
        return attempt_of(self.application_properties, self.delivery_count)

    @property
    def original_message_id(self) -> str:
        """The producer's MessageId (see `original_message_id`)."""
        return original_message_id(self.application_properties, self.message_id)


class MessageSender(Protocol):
    """Sends one message to the grants queue, deliverable at `scheduled_enqueue_time` (retry copies, expiry
    removals, HR grants, webhook requests); raises when it was not sent."""

    async def schedule(
        self,
        *,
        body: bytes,
        message_id: str,
        application_properties: Mapping[str, str | int],
        scheduled_enqueue_time: datetime,
    ) -> None: ...


class OutcomePublisher(Protocol):
    """Publishes one outcome event to the outcomes topic now; raises when it was not published."""

    async def publish(
        self, *, body: bytes, message_id: str, application_properties: Mapping[str, PropertyValue]
    ) -> None: ...


#: Outcome events' MessageIds start with this. "/" is in no producer's id: request ids are letters, digits and
#: ``. _ : @ -`` (the contract), and every id the app derives from one joins it with ``:`` and hex digits.
OUTCOME_EVENT_PREFIX: Final = "outcome/"
#: Terminal outcomes with the same effect: a redelivery after a crash between publishing and settling may find
#: the membership already in place (already_member after granted); it is the same event.
_EFFECTS: Final[Mapping[str, str]] = {
    "granted": "added",
    "already_member": "added",
    "revoked": "removed",
    "not_member": "removed",
}


def outcome_event_id(
    *, producer: str | None, original_message_id: str, resubmission: str | None, outcome: str, reason: str | None
) -> str:
    """The MessageId of the outcome event for one grant message's terminal outcome: ``outcome/<64 hex>``.

    The hex is SHA-256 over the JSON array [originalMessageId, resubmission, effect, reason] (with the producer
    first when known: two producers' messages may share a MessageId, each on its own queue), where effect is
    ``added`` for granted and already_member, ``removed`` for revoked and not_member, else the outcome itself.
    So a redelivered settlement with the same effect publishes the same id (the topic's duplicate detection
    drops the second), and a different end (a dead letter, or the same message resubmitted from the
    dead-letter queue) gets an id of its own.
    """
    key = [original_message_id, resubmission, _EFFECTS.get(outcome, outcome), reason]
    if producer is not None:
        key.insert(0, producer)
    digest = hashlib.sha256(json.dumps(key, separators=(",", ":")).encode()).hexdigest()
    return OUTCOME_EVENT_PREFIX + digest


def callback_copy_id(event_id: str, attempt: int) -> str:
    """The MessageId of attempt `attempt` of an outcome event's callback: ``<event id>/callback/<attempt>``."""
    return f"{event_id}/callback/{attempt}"


class MessageActions(Protocol):
    """Settlement, as `azurefunctions.extensions.bindings.servicebus.ServiceBusMessageActions` offers it."""

    def complete(self, message: Any) -> None: ...
    def abandon(self, message: Any) -> None: ...
    def deadletter(self, message: Any, deadletter_reason: str, deadletter_error_description: str) -> None: ...
