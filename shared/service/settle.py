"""The one settlement ladder: given how a delivery's work ended, settle it so that nothing is lost, and log it.

Every trigger that reads a queue (grants, HR events, callbacks) does its work, then hands `settle` what came of it
(`Done`, or the exception it raised) and an `Ending` (how its outcome line, retry copy and, for a grant, status
record are made). `settle` climbs one ladder:

- `Done`: ``complete`` (with ``again_at``, its copy sent first; a copy that cannot be sent waits as a retry's);
- `NotYet` (the delivery came before the earliest time the app sealed it to run: `Delivery.early`; nothing was
  carried out): the message is sent again as it is, deliverable then, its attempt not counted (MessageId
  ``~wait:<digest>``: a second early copy of it is absorbed by duplicate detection), *then* ``complete``; a copy that
  cannot be sent, or an ending without copies, waits as a retry's does. Logged ``deferred``, nothing recorded;
- `PermanentError`: ``deadletter`` with its reason code and a description for a person;
- `TransientError`: the retry policy decides. Give up: ``deadletter``. Retry: send a **copy** (attempt + 1, the
  ending's MessageId, deliverable at now + delay) *then* ``complete`` the original, so that a crash in between
  duplicates the work instead of losing it; a copy that cannot be sent (the queue or the seal's key is out of
  reach), or an ending without retry copies: left ``unsettled``, so that Service Bus delivers it again when its
  lock expires (the lock duration is the delay: an outage of the ledger or the queue spends MaxDeliveryCount
  deliveries in that many lock durations, not in seconds, as ``abandon`` would), except on the last delivery the
  queue allows (`RetryPolicy.last_delivery`): ``deadletter`` with the failure's own reason, never Service Bus's
  bare MaxDeliveryCountExceeded;
- any other exception (a bug): ``abandon``, logged with its stack; never ``complete``.

With a status record (a grant's), a terminal end is first announced: its outcome event published (with an outcomes
topic) and its status written to the ledger, at once; either failing leaves it ``unsettled``, to its lock expiry,
as a copy that cannot be sent does (a status the API shows as terminal is always one the message really ended
with; an outage of the ledger or the topic does not spend MaxDeliveryCount in seconds; on the last delivery it is
dead-lettered ``LedgerUnavailable`` / ``QueueUnavailable``, or with its own reason if it was a dead letter). A retry
records
``retry_scheduled`` with ``nextRetryAt`` (best-effort: the copy is queued). A duplicate, a message that could not
be parsed, and one whose id names another request only write a status where the request id has none yet
(`owner_write`).

The settlement call is made within `deadline` seconds (`shared.adapters.settlement`): a host that does not answer
in time, or answers with a failure (a lock lost mid-work: `SettlementFailed`), leaves the delivery ``unsettled`` (not
terminal, logged as a warning naming what had been decided); should a late call still succeed, the decided outcome
line is logged then. One outcome line per delivery, on the ``shared.outcome`` logger (`log_outcome`), whatever the
settlement call does; nothing is raised.

A message delivered again after an earlier delivery of it recorded a change Graph made (granted, revoked) and then
failed to settle keeps that record: when this delivery's outcome made no change (already_member, …), the status is
not written over (`kept_over`: its Graph request id stays) and the outcome event published is the recorded one's
(the same MessageId as the earlier delivery's: the topic keeps one); the outcome line says both.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from shared.adapters.settlement import Settlement, SettlementFailed, SettlementTimeout, abandon, complete, deadletter
from shared.core.errors import GrantError, GraphAnswer, PermanentError, Reason, TransientError
from shared.core.messaging import (
    ATTEMPT,
    FIRST_ATTEMPT_AT,
    MAX_DESCRIPTION_CHARS,
    NOT_BEFORE,
    ORIGINAL_MESSAGE_ID,
    SEAL,
    Delivery,
    MessageActions,
    MessageSender,
    OutcomePublisher,
    clip,
    derived_message_id,
)
from shared.core.retry import GiveUp, RetryPolicy, Waiting
from shared.core.statuses import Settled, Status, StatusRecord, StatusWrite, kept_over

__all__ = ["Done", "Ending", "NotYet", "RetryCopy", "StatusLedger", "log_outcome", "outcome_log", "sentence", "settle"]

outcome_log = logging.getLogger("shared.outcome")
_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Done:
    """The work succeeded: with `status`, as `description` says; `again_at`: carry it out once more then (a copy
    is sent, as a retry's, before the message is completed)."""

    status: Status
    description: str
    again_at: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class NotYet:
    """The delivery came before `until`, the earliest time the app sealed it to run (`Delivery.early`): nothing was
    carried out, and it is to run then."""

    until: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryCopy:
    """How a delivery is tried again: its copy goes through `sender` (None: none is configured, the delivery waits
    for its lock expiry) with MessageId ``message_id(attempt)`` and the `carried` properties, besides the ladder's
    own ``attempt``, ``firstAttemptAt``, ``originalMessageId`` and member-not-found answers (`Waiting`). A delivery
    that came before its time goes through `sender` too, as it is (`NotYet`)."""

    sender: MessageSender | None
    message_id: Callable[[int], str]
    carried: Mapping[str, str | int]


#: Builds the outcome line's record of a delivery that ended as `Settled`, finished at the datetime (pure).
LineBuilder = Callable[[Settled, datetime], dict[str, Any]]
#: Builds a grant's status record: how it ended, when it finished, and the next attempt's time (pure).
StatusBuilder = Callable[[Settled, datetime, datetime | None], StatusRecord]


@dataclass(frozen=True, slots=True, kw_only=True)
class Ending:
    """What the ladder needs of a delivery besides how its work ended: the outcome line's `kind` (``grant``,
    ``hr-event``, ``callback``) and record (`line`), how it is tried again (`retry`, None: abandoned), what ends
    every dead letter's description (`note`); for a grant, its status record (`status`), its outcome event
    (`event`), whether the message could be read as its own request (`owner`: see `owner_write`) and its source
    system (`source`: the retry policy's window for a member not found yet)."""

    kind: str
    line: LineBuilder
    retry: RetryCopy | None = None
    note: str = ""
    status: StatusBuilder | None = None
    event: Callable[[Settled, dict[str, Any]], dict[str, Any]] | None = None
    owner: bool = False
    source: str | None = None


class StatusLedger(Protocol):
    """Where a grant's status records are written and read (`shared.adapters.ledger.Ledger`)."""

    async def record(self, record: StatusRecord, *, now: datetime, write: StatusWrite = ...) -> bool: ...

    async def status(self, request_id: str, *, producer: str) -> StatusRecord | None: ...


async def settle(
    delivery: Delivery,
    outcome: Done | NotYet | Exception,
    ending: Ending,
    *,
    actions: MessageActions,
    policy: RetryPolicy,
    now: Callable[[], datetime],
    deadline: float,
    publisher: OutcomePublisher | None = None,
    ledger: StatusLedger | None = None,
) -> Settled:
    """Settle `delivery`, whose work ended with `outcome`, as the ladder says (module docstring); return how it ended
    (also logged)."""
    started = now()
    attempt = delivery.attempt
    settlement: Settlement
    waiting = Waiting.read(delivery.application_properties)  # sealed, or nothing: `Delivery.trusted`
    if isinstance(outcome, NotYet):
        settled, settlement = await _defer(actions, delivery, ending, outcome.until, attempt=attempt, policy=policy)
    elif isinstance(outcome, Done):
        settlement = functools.partial(complete, actions, delivery)
        settled = Settled(outcome=outcome.status, reason=None, description=outcome.description, attempts=attempt)
        if outcome.again_at is not None:  # the copy first: a crash before the completion repeats the work, no more
            first = delivery.first_attempt_at(started)
            copied = await _send_copy(delivery, ending, first, outcome.again_at, attempt, waiting)
            if not copied:  # as a retry copy that cannot be sent: wait a lock duration, dead-letter on the last
                unsent = TransientError(
                    Reason.QUEUE_UNAVAILABLE,
                    f"{sentence(outcome.description)} The copy to carry it out once more could not be sent",
                )
                why = "It is carried out again when delivered again"
                settled, settlement = _wait(actions, delivery, ending, unsent, why=why, attempt=attempt, policy=policy)
    elif isinstance(outcome, PermanentError):
        settled, settlement = _dead(actions, delivery, ending, outcome, why=None, attempt=attempt)
    elif isinstance(outcome, TransientError):
        first_attempt_at = delivery.first_attempt_at(started)
        decision = policy.decide(attempt=attempt, error=outcome, now=started, waiting=waiting, source=ending.source)
        if isinstance(decision, GiveUp):
            settled, settlement = _dead(actions, delivery, ending, outcome, why=decision.why, attempt=attempt)
        else:
            when = started + timedelta(seconds=decision.delay)
            counted = waiting.after(outcome, at=started)
            settled, settlement = await _retry(
                actions, delivery, ending, outcome, first_attempt_at, when, attempt, counted, policy=policy
            )
            if settled.outcome is Status.RETRY_SCHEDULED and ending.status is not None and ledger is not None:
                await _note_retry(ledger, ending.status(settled, now(), when), now)
    else:
        _log.error(
            "unexpected error in %s message %s; abandoning it",
            ending.kind,
            _safe(delivery.message_id),
            exc_info=outcome,
        )
        settlement = functools.partial(abandon, actions, delivery)
        settled = Settled(
            outcome=Status.ABANDONED,
            reason=None,
            description=f"unexpected {type(outcome).__name__}; Service Bus will redeliver the message",
            attempts=attempt,
        )

    announced: dict[str, Any] | None = None
    if settled.terminal:
        finished = now()
        status = ending.status(settled, finished, None) if ending.status is not None else None
        kept = await _kept(delivery, settled, status, ledger)
        if kept is not None:  # an earlier delivery of this message recorded what Graph did: that record stays
            settled = replace(settled, description=_kept_note(settled, kept))
        announced = ending.line(settled, finished)
        told = settled if kept is None else replace(settled, outcome=kept.status, reason=kept.reason)
        failed = await _announce(
            settled,
            announced,
            status,
            ending,
            publisher=publisher,
            ledger=ledger,
            now=now,
            kind=ending.kind,
            kept=kept,
            told=(told, announced if kept is None else ending.line(told, finished)),
        )
        if failed is not None and policy.last_delivery(delivery.delivery_count):
            what, reason = failed  # the last delivery Service Bus allows: dead-lettered now, with its reason
            announced = None  # the outcome line is the dead letter's, not the announced one
            if settled.outcome is not Status.DEAD_LETTERED:
                reason_text = reason.value
            else:
                reason_text = settled.reason or reason.value
            last = "" if _last_words(policy) in settled.description else f" {_last_words(policy)}"
            description = clip(
                f"{sentence(settled.description)} Its {settled.outcome} {what}.{last} Resubmit it "
                "(grants dlq resubmit) once the store is back: its outcome is then recorded.",
                MAX_DESCRIPTION_CHARS,
            )
            settlement = functools.partial(deadletter, actions, delivery, reason=reason_text, description=description)
            settled = Settled(
                outcome=Status.DEAD_LETTERED, reason=reason_text, description=description, attempts=settled.attempts
            )
        elif failed is not None:  # the ledger or the topic is out of reach: wait a lock duration, as a retry would
            what, _ = failed
            announced = None
            settlement = _leave
            settled = Settled(
                outcome=Status.UNSETTLED,
                reason=settled.reason,
                description=f"{sentence(settled.description)} Its {settled.outcome} {what}: the message is left "
                "to its lock expiry, and Service Bus delivers it again then.",
                attempts=settled.attempts,
            )

    def logged(how: Settled) -> None:
        published = announced if announced is not None and how.terminal else None
        log_outcome(ending.kind, how, published or ending.line(how, now()))

    settled = await _within(settlement, settled, deadline=deadline, late=logged)
    logged(settled)
    return settled


def owner_write(settled: Settled, *, owner: bool) -> StatusWrite:
    """How a terminal status is written: `FINAL` for the request's own message (`owner`: it could be read) unless it
    is a duplicate or its id names another request; else `FIRST` (never over the status of the id's owner)."""
    if owner and settled.outcome is not Status.DUPLICATE and settled.reason != Reason.REQUEST_ID_CONFLICT:
        return StatusWrite.FINAL
    return StatusWrite.FIRST


def log_outcome(kind: str, settled: Settled, record: dict[str, Any]) -> None:
    """One outcome line: ``<kind> <outcome> <record as JSON>``, the record also as the log record's attribute for
    `kind` (``grant``, ``hrEvent``, ``callback``); a warning when the delivery was dead-lettered, abandoned or left
    unsettled."""
    warn = settled.outcome in (Status.DEAD_LETTERED, Status.ABANDONED, Status.UNSETTLED)
    attribute = "hrEvent" if kind == "hr-event" else kind
    outcome_log.log(
        logging.WARNING if warn else logging.INFO,
        "%s %s %s",
        kind,
        settled.outcome,
        json.dumps(record),
        extra={attribute: record},
    )


def sentence(text: str) -> str:
    """`text`, stripped, ending with a full stop unless it ends with one already (or ``!``, ``?``)."""
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


async def _announce(
    settled: Settled,
    line: dict[str, Any],
    status: StatusRecord | None,
    ending: Ending,
    *,
    publisher: OutcomePublisher | None,
    ledger: StatusLedger | None,
    now: Callable[[], datetime],
    kind: str,
    kept: StatusRecord | None = None,
    told: tuple[Settled, dict[str, Any]] | None = None,
) -> tuple[str, Reason] | None:
    """Publish a grant's outcome event and record its status, at once; None when both succeeded (or there is
    nothing to announce), else what failed (logged) and the reason of its store. The event tells `told` (how the
    request ended and its line; by default `settled` and `line`); with `kept` (the record an earlier delivery of the
    message made, which stays) no status is written."""
    if status is None:
        return None
    calls: dict[tuple[str, Reason], Awaitable[object]] = {}
    if publisher is not None and ending.event is not None:
        event_settled, event_line = told or (settled, line)
        calls["event could not be published", Reason.QUEUE_UNAVAILABLE] = publisher.publish(
            **ending.event(event_settled, event_line)
        )
    if ledger is not None and status.request_id and kept is None:
        calls["status could not be recorded", Reason.LEDGER_UNAVAILABLE] = ledger.record(
            status, now=now(), write=owner_write(settled, owner=ending.owner)
        )
    results = await asyncio.gather(*calls.values(), return_exceptions=True)
    failed: tuple[str, Reason] | None = None
    for (what, reason), result in zip(calls, results, strict=True):
        if isinstance(result, BaseException):
            _log.error(
                "the %s %s for %s %s; it waits for its lock expiry (dead-lettered if its last delivery)",
                settled.outcome,
                what,
                kind,
                _safe(status.request_id),
                exc_info=result if isinstance(result, Exception) else None,
            )
            if not isinstance(result, Exception):
                raise result
            failed = failed or (what, reason)
    return failed


async def _kept(
    delivery: Delivery, settled: Settled, status: StatusRecord | None, ledger: StatusLedger | None
) -> StatusRecord | None:
    """The status an earlier delivery of this message recorded, when it stays over this delivery's terminal outcome
    (`kept_over`); read only for a message delivered again. A read that fails keeps nothing (this delivery's status
    is then written, or its write fails and the message waits, as any)."""
    if status is None or ledger is None or not status.request_id or not status.producer or delivery.delivery_count <= 1:
        return None
    try:
        recorded = await ledger.status(status.request_id, producer=status.producer)
    except Exception:
        _log.warning("could not read the status of %s", _safe(status.request_id), exc_info=True)
        return None
    return recorded if kept_over(recorded, settled.outcome, message_id=delivery.message_id) else None


def _kept_note(settled: Settled, kept: StatusRecord) -> str:
    """This delivery's description, saying which earlier record stays."""
    return (
        f"{sentence(settled.description)} The request's status stays {kept.status}, as an earlier delivery of this "
        f"message recorded it (Graph request id {kept.graph_request_id}) before its settlement failed."
    )


async def _note_retry(ledger: StatusLedger, record: StatusRecord, now: Callable[[], datetime]) -> None:
    """Record ``retry_scheduled`` with ``nextRetryAt`` (never over a terminal status); a failure is only logged: the
    retry copy is queued already, and its outcome will be recorded."""
    if not record.request_id:
        return
    try:
        await ledger.record(record, now=now(), write=StatusWrite.PROGRESS)
    except Exception:
        _log.warning("could not record the retry of %s", _safe(record.request_id), exc_info=True)


def _dead(
    actions: MessageActions, delivery: Delivery, ending: Ending, error: GrantError, *, why: str | None, attempt: int
) -> tuple[Settled, Settlement]:
    parts = [error.description, why, _graph_line(error.graph), f"Attempts: {attempt}.", ending.note]
    description = clip(" ".join(sentence(part) for part in parts if part), MAX_DESCRIPTION_CHARS)
    settlement = functools.partial(deadletter, actions, delivery, reason=error.reason.value, description=description)
    settled = Settled(
        outcome=Status.DEAD_LETTERED, reason=error.reason.value, description=description, attempts=attempt
    )
    return settled, settlement


def _graph_line(graph: GraphAnswer | None) -> str | None:
    if graph is None:
        return None
    return f"Last Graph answer: {graph.status} {graph.code or ''} {graph.message or ''}; request-id {graph.request_id}"


async def _retry(
    actions: MessageActions,
    delivery: Delivery,
    ending: Ending,
    error: TransientError,
    first_attempt_at: datetime,
    when: datetime,
    attempt: int,
    waiting: Waiting,
    *,
    policy: RetryPolicy,
) -> tuple[Settled, Settlement]:
    """Send the retry copy (carrying `waiting`); then the original is to be completed (or left to wait, when no copy
    was sent)."""
    if ending.retry is None:  # the delivery's own redelivery is its retry
        return _wait(
            actions, delivery, ending, error, why="Its redelivery is its retry", attempt=attempt, policy=policy
        )
    if not await _send_copy(delivery, ending, first_attempt_at, when, attempt, waiting):
        why = "The retry copy could not be sent"
        return _wait(actions, delivery, ending, error, why=why, attempt=attempt, policy=policy)
    settled = Settled(
        outcome=Status.RETRY_SCHEDULED,
        reason=error.reason.value,
        description=f"{sentence(error.description)} Attempt {attempt + 1} scheduled for {when.isoformat()}.",
        attempts=attempt,
    )
    return settled, functools.partial(complete, actions, delivery)


async def _send_copy(
    delivery: Delivery, ending: Ending, first_attempt_at: datetime, when: datetime, attempt: int, waiting: Waiting
) -> bool:
    """Send the delivery's next attempt (attempt + 1, the ending's MessageId and properties, the member-not-found
    answers so far), deliverable at `when`; False (logged) when it could not be sent."""
    copy = ending.retry
    try:
        if copy is None or copy.sender is None:
            raise RuntimeError(f"no sender is configured for the copies of {ending.kind} messages")
        await copy.sender.schedule(
            body=delivery.body,
            message_id=copy.message_id(attempt + 1),
            application_properties={
                **copy.carried,
                ATTEMPT: attempt + 1,
                FIRST_ATTEMPT_AT: first_attempt_at.isoformat(),
                ORIGINAL_MESSAGE_ID: delivery.original_message_id,
                **waiting.properties(),
            },
            scheduled_enqueue_time=when,
        )
    except Exception:
        _log.exception("could not send the next attempt of %s message %s", ending.kind, _safe(delivery.message_id))
        return False
    return True


async def _defer(
    actions: MessageActions,
    delivery: Delivery,
    ending: Ending,
    until: datetime,
    *,
    attempt: int,
    policy: RetryPolicy,
) -> tuple[Settled, Settlement]:
    """A delivery that came before `until`: sent again as it is (`_send_again`), then to be completed; left to wait
    for its lock expiry when no copy was sent (and dead-lettered on its last delivery, as a retry's)."""
    if await _send_again(delivery, ending, until):
        settled = Settled(
            outcome=Status.DEFERRED,
            reason=None,
            description=f"Not before {until.isoformat()}, as the app sealed it: nothing was carried out; it is queued "
            "again for then, as it is (this delivery is not counted as an attempt).",
            attempts=attempt,
        )
        return settled, functools.partial(complete, actions, delivery)
    early = TransientError(
        Reason.QUEUE_UNAVAILABLE,
        f"Not before {until.isoformat()}, as the app sealed it: nothing was carried out",
    )
    why = "Its copy for then could not be sent" if ending.retry is not None else "It has no copy to wait in"
    return _wait(actions, delivery, ending, early, why=why, attempt=attempt, policy=policy)


async def _send_again(delivery: Delivery, ending: Ending, until: datetime) -> bool:
    """Send the (sealed) delivery again as it is, deliverable at `until`: its body and every property but the seal
    (its attempt, first attempt and member-not-found answers as they were), with its original MessageId, under
    ``~wait:<digest>`` of its MessageId, body and `until` (a second early copy of the same message is then a duplicate
    Service Bus drops); False (logged) when it could not be sent."""
    copy = ending.retry
    if copy is None:  # the delivery's own redelivery is its only way back
        return False
    properties: dict[str, str | int] = {}
    for key, value in delivery.application_properties.items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        value = value.decode() if isinstance(value, bytes) else value
        if name not in (SEAL, NOT_BEFORE) and isinstance(value, str | int) and not isinstance(value, bool):
            properties[name] = value
    properties[ORIGINAL_MESSAGE_ID] = delivery.original_message_id
    body_hash = hashlib.sha256(delivery.body).hexdigest()
    message_id = derived_message_id("wait", delivery.message_id or "", body_hash, until.isoformat())
    try:
        if copy.sender is None:
            raise RuntimeError(f"no sender is configured for the copies of {ending.kind} messages")
        await copy.sender.schedule(
            body=delivery.body, message_id=message_id, application_properties=properties, scheduled_enqueue_time=until
        )
    except Exception:
        _log.exception("could not queue %s message %s again for its time", ending.kind, _safe(delivery.message_id))
        return False
    return True


def _last_words(policy: RetryPolicy) -> str:
    return (
        f"This was its delivery {policy.max_deliveries}, the last the queue allows (GRANTS_MAX_DELIVERY_COUNT): "
        "dead-lettered by the app, with this reason, rather than left for Service Bus to dead-letter "
        "MaxDeliveryCountExceeded."
    )


def _wait(
    actions: MessageActions,
    delivery: Delivery,
    ending: Ending,
    error: TransientError,
    *,
    why: str,
    attempt: int,
    policy: RetryPolicy,
) -> tuple[Settled, Settlement]:
    """Left to its lock expiry (Service Bus delivers it again a lock duration later), `why` said; on the last
    delivery the queue allows, dead-lettered with `error`'s reason instead."""
    if policy.last_delivery(delivery.delivery_count):
        return _dead(actions, delivery, ending, error, why=f"{sentence(why)} {_last_words(policy)}", attempt=attempt)
    settled = Settled(
        outcome=Status.UNSETTLED,
        reason=error.reason.value,
        description=f"{sentence(error.description)} {why}: the message is left to its lock expiry, and Service Bus "
        "delivers it again then.",
        attempts=attempt,
    )
    return settled, _leave


async def _leave(*, deadline: float) -> None:
    """No settlement call: the delivery's lock expires and Service Bus delivers it again after the lock duration."""
    del deadline


async def _within(
    settlement: Settlement, settled: Settled, *, deadline: float, late: Callable[[Settled], None]
) -> Settled:
    """Make `settlement` (decided as `settled`) within `deadline` seconds and return `settled`; if the host does not
    answer in time, return it as ``unsettled`` and call `late` with `settled` should the call still succeed later
    (from the settlement's thread)."""
    try:
        await settlement(deadline=deadline)
    except SettlementFailed as refused:
        return Settled(
            outcome=Status.UNSETTLED,
            reason=settled.reason,
            description=clip(
                f"{settled.outcome}: {sentence(settled.description)} But {refused}: the message is not settled, and "
                "Service Bus delivers it again when its lock is gone"
                + ("; the status recorded stays what this delivery did." if settled.terminal else "."),
                MAX_DESCRIPTION_CHARS,
            ),
            attempts=settled.attempts,
        )
    except SettlementTimeout as stalled:
        if stalled.late is not None:
            stalled.late.add_done_callback(functools.partial(_finished_late, settled, stalled.method, late))
        return Settled(
            outcome=Status.UNSETTLED,
            reason=settled.reason,
            description=clip(
                f"{settled.outcome}: {sentence(settled.description)} But {stalled}: the message is left to its "
                "lock expiry and Service Bus delivers it again; should the call still succeed, this outcome is "
                "logged then.",
                MAX_DESCRIPTION_CHARS,
            ),
            attempts=settled.attempts,
        )
    return settled


def _finished_late(settled: Settled, method: str, late: Callable[[Settled], None], call: Future[None]) -> None:
    if call.cancelled():
        return
    if (error := call.exception()) is None:
        late(settled)
    else:
        _log.info(
            "a %s that answered after its deadline failed (%s); Service Bus delivers the message again",
            method,
            type(error).__name__,
        )


def _safe(value: object) -> str:
    return json.dumps(str(value), ensure_ascii=True)
