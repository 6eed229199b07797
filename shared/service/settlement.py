"""Settle one delivery so that nothing is lost, and say how it ended in one outcome line.

A grant message (`settle`):

- granted / already_member / revoked / not_member (or, dry run, would_grant / would_revoke): ``complete``.
- transient failure with attempts left: schedule a **copy** (attempt + 1, new MessageId) at now + delay,
  *then* ``complete`` the original. A crash in between duplicates the grant (harmless: grants are
  idempotent) instead of losing it. If the copy cannot be sent: ``abandon`` (Service Bus redelivers; its
  MaxDeliveryCount is the backstop).
- permanent failure, or retries exhausted: ``deadletter`` with the reason code and a description.
- an unexpected exception (a bug): ``abandon``, logged with the stack; never ``complete``.

With an outcomes topic (``GRANTS_OUTCOMES_TOPIC``), every terminal outcome (not retry_scheduled, not abandoned)
is first published as an event (`outcome_event`: the outcome record and the status record as JSON, with
filterable properties and a MessageId derived from the message and its effect), and only *then* is the message
completed or dead-lettered.
A crash in between republishes the same event id on redelivery (the topic's duplicate detection drops it); a
publish that fails abandons the message (Service Bus redelivers; the grant is idempotent): never settled
without its event.

With a status `recorder` (the grant ledger's `record_status`), every terminal outcome's status record
(`status_record`) is written before the message is settled too, in parallel with the event's publish (one more
storage request, no more round trips). A write that fails abandons the message like a failed publish: a status
the API shows as terminal is always one the message really ended with, and a redelivery carries the request out
again through the ledger (the grant is idempotent: it ends already_member). The status of a *duplicate* and of a
message that could not be parsed or whose id names another request (``RequestIdConflict``) is only written when
the request id has none yet: such a message never overwrites the status of the request that owns the id.

`complete`, `abandon` and `deadletter` are the only calls to `MessageActions` in the app (the HR path uses
them too), and `log_outcome` writes every outcome line, on the ``shared.outcome`` logger.

Settlement calls block: the extension's `ServiceBusMessageActions` makes a synchronous gRPC call to the host,
without a deadline. So each runs on a thread of its own (`SETTLEMENT_THREADS` daemon threads at most, shared by
the process; a call beyond them waits its turn), and the event loop waits for it at most `deadline` seconds
(``GRANTS_SETTLEMENT_TIMEOUT_SECONDS``). A call that does not answer in time raises `SettlementTimeout`: the
delivery's outcome line is ``unsettled`` (a warning, not terminal, naming what had been decided) and the message
is left to its lock expiry, after which Service Bus delivers it again (grants are idempotent). A call still
waiting on its thread may finish later: if it succeeds, the delivery's outcome line as decided is written then;
if it fails, one info line says so. A call that had not started when its deadline passed never runs.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import queue
import threading
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from shared.core.contract import (
    AdministrativeUnit,
    DirectoryRole,
    GrantCommand,
    ScopedRole,
    parse_grant,
)
from shared.core.errors import ContractError, GrantError, PermanentError, TransientError
from shared.core.messaging import (
    ATTEMPT,
    BULK_JOB,
    CALLBACK_URL,
    EVENT_HR_EVENT_ID,
    EVENT_JOB_ID,
    EVENT_OUTCOME,
    EVENT_REASON,
    EVENT_REQUEST_ID,
    EVENT_SOURCE_SYSTEM,
    EXPIRY_OF,
    FIRST_ATTEMPT_AT,
    HR_EVENT,
    JOB_ROW,
    JOB_ROWS,
    MAX_DESCRIPTION_CHARS,
    MAX_REASON_CHARS,
    ORIGINAL_MESSAGE_ID,
    RESUBMISSION,
    Delivery,
    MessageActions,
    MessageSender,
    OutcomePublisher,
    PropertyValue,
    clip,
    derived_message_id,
    outcome_event_id,
)
from shared.core.retry import GiveUp, RetryPolicy
from shared.core.statuses import StatusWrite
from shared.service.membership import Result

__all__ = [
    "DEFAULT_SETTLEMENT_TIMEOUT",
    "SETTLEMENT_THREADS",
    "Settled",
    "Settlement",
    "SettlementTimeout",
    "abandon",
    "complete",
    "deadletter",
    "log_outcome",
    "outcome_event",
    "outcome_log",
    "progress_record",
    "retry_message_id",
    "settle",
    "settle_within",
    "status_record",
]

outcome_log = logging.getLogger("shared.outcome")
_TARGET_TYPES: Final = {
    AdministrativeUnit: "administrativeUnit",
    DirectoryRole: "directoryRole",
    ScopedRole: "scopedRole",
}
_log = logging.getLogger(__name__)

Handler = Callable[[GrantCommand], Awaitable[Result]]
#: Writes a request's status record: ``(request_id, record, write)`` (`Ledger.record_status`, bound to a clock).
StatusRecorder = Callable[[str, dict[str, Any], StatusWrite], Awaitable[object]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Settled:
    """How one delivery ended: the outcome line's fields."""

    outcome: str  # granted | already_member | … | retry_scheduled | dead_lettered | abandoned | completed (HR)
    reason: str | None
    description: str
    attempts: int
    terminal: bool


#: Seconds a settlement call may take (``GRANTS_SETTLEMENT_TIMEOUT_SECONDS``); the host answers in milliseconds.
DEFAULT_SETTLEMENT_TIMEOUT: Final = 5.0
#: Threads for settlement calls: two triggers x host.json's maxConcurrentCalls (16), so that calls the host never
#: answers hold threads of their own and later calls still get one (beyond it, a call waits within its deadline).
SETTLEMENT_THREADS: Final = 32


class SettlementTimeout(Exception):
    """The host did not answer a settlement call within its deadline; the message is left to its lock expiry.

    `late` is the call still running on its thread (None when it never started and never will).
    """

    def __init__(self, method: str, seconds: float, late: Future[None] | None) -> None:
        super().__init__(f"the host did not answer {method} within {seconds:g} s")
        self.method = method
        self.seconds = seconds
        self.late = late


class _SettlementThreads:
    """A small pool of daemon threads for blocking settlement calls: one the host never answers holds its
    thread, never the event loop, and never keeps the process from exiting (unlike concurrent.futures')."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._work: queue.SimpleQueue[tuple[Future[None], Callable[[], None]]] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)  # one release per thread waiting for work
        self._lock = threading.Lock()
        self._threads = 0

    def submit(self, call: Callable[[], None]) -> Future[None]:
        future: Future[None] = Future()
        self._work.put((future, call))
        if not self._idle.acquire(blocking=False):
            with self._lock:
                if self._threads < self._size:
                    self._threads += 1
                    threading.Thread(target=self._serve, name=f"settlement-{self._threads}", daemon=True).start()
        return future

    def _serve(self) -> None:
        while True:
            future, call = self._work.get()
            if future.set_running_or_notify_cancel():
                try:
                    call()
                except BaseException as error:  # handed to the caller, as concurrent.futures does
                    future.set_exception(error)
                else:
                    future.set_result(None)
            self._idle.release()


_threads = _SettlementThreads(SETTLEMENT_THREADS)


async def _call(method: str, call: Callable[[], None], deadline: float) -> None:
    """Run `call` on a settlement thread; wait for it at most `deadline` seconds (then `SettlementTimeout`)."""
    future = _threads.submit(call)
    try:
        await asyncio.wait_for(asyncio.wrap_future(future), deadline)
    except TimeoutError:
        # wait_for cancelled the wrapper, and with it the call if it had not started yet
        raise SettlementTimeout(method, deadline, None if future.cancelled() else future) from None


async def complete(
    actions: MessageActions, delivery: Delivery, *, deadline: float = DEFAULT_SETTLEMENT_TIMEOUT
) -> None:
    """Remove the message from the queue for good."""
    await _call("complete", functools.partial(actions.complete, delivery.message), deadline)


async def abandon(actions: MessageActions, delivery: Delivery, *, deadline: float = DEFAULT_SETTLEMENT_TIMEOUT) -> None:
    """Release the message's lock: Service Bus delivers it again (and counts the delivery)."""
    await _call("abandon", functools.partial(actions.abandon, delivery.message), deadline)


async def deadletter(
    actions: MessageActions,
    delivery: Delivery,
    *,
    reason: str,
    description: str,
    deadline: float = DEFAULT_SETTLEMENT_TIMEOUT,
) -> None:
    """Move the message to the dead-letter sub-queue with `reason` and `description`, clipped to Service Bus's
    limits."""
    call = functools.partial(
        actions.deadletter,
        delivery.message,
        deadletter_reason=clip(reason, MAX_REASON_CHARS),
        deadletter_error_description=clip(description, MAX_DESCRIPTION_CHARS),
    )
    await _call("deadletter", call, deadline)


#: A settlement still to make: `complete`, `abandon` or `deadletter` with its arguments but the `deadline`.
Settlement = Callable[..., Awaitable[None]]


async def settle_within(
    settlement: Settlement, settled: Settled, *, deadline: float, late: Callable[[Settled], None]
) -> Settled:
    """Make `settlement` (decided as `settled`) within `deadline` seconds and return `settled`; if the host does not
    answer in time, return it as ``unsettled`` (not terminal; the message is left to its lock expiry) and call
    `late` with `settled` should the call still succeed later (from the settlement's thread)."""
    try:
        await settlement(deadline=deadline)
    except SettlementTimeout as stalled:
        if stalled.late is not None:
            stalled.late.add_done_callback(functools.partial(_finished_late, settled, stalled.method, late))
        return Settled(
            outcome="unsettled",
            reason=settled.reason,
            description=clip(
                f"{settled.outcome}: {_sentence(settled.description)} But {stalled}: the message is left to its "
                "lock expiry and Service Bus delivers it again; should the call still succeed, this outcome is "
                "logged then.",
                MAX_DESCRIPTION_CHARS,
            ),
            attempts=settled.attempts,
            terminal=False,
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


def log_outcome(kind: str, settled: Settled, record: dict[str, Any]) -> None:
    """One outcome line: ``<kind> <outcome> <record as JSON>``, the record also as the log record's `kind`
    attribute (e.g. ``grant``, ``hrEvent``); a warning when the delivery was dead-lettered or abandoned."""
    level = logging.WARNING if settled.outcome in ("dead_lettered", "abandoned", "unsettled") else logging.INFO
    attribute = "hrEvent" if kind == "hr-event" else kind
    outcome_log.log(level, "%s %s %s", kind, settled.outcome, json.dumps(record), extra={attribute: record})


@dataclass(slots=True)
class _Attempt:
    """One delivery being processed: what the outcome line and a retry copy need to know about it."""

    delivery: Delivery
    number: int
    started: datetime
    command: GrantCommand | None = None
    request_id: str | None = None
    graph_request_id: str | None = None
    role_template_id: str | None = None
    record: dict[str, Any] | None = None  # the terminal outcome's record, once published

    def noting(self, error: GrantError) -> GrantError:
        """`error`, with what it tells about Graph and the role noted for the outcome line."""
        self.graph_request_id = error.graph.request_id if error.graph else None
        self.role_template_id = error.role_template_id
        return error


async def settle(
    delivery: Delivery,
    *,
    handle: Handler,
    actions: MessageActions,
    sender: MessageSender,
    retry_policy: RetryPolicy,
    now: Callable[[], datetime],
    publisher: OutcomePublisher | None = None,
    settlement_timeout: float = DEFAULT_SETTLEMENT_TIMEOUT,
    recorder: StatusRecorder | None = None,
) -> Settled:
    """Process one grant delivery with `handle` and settle it (a terminal outcome published first, with a
    `publisher`); return how it ended (also logged)."""
    attempt = _Attempt(delivery, delivery.attempt, now())
    settlement: Settlement
    try:
        attempt.command = parse_grant(delivery.body)
        attempt.request_id = attempt.command.request_id
        result = await handle(attempt.command)
    except ContractError as error:
        attempt.request_id = error.request_id
        settled, settlement = _deadletter(actions, attempt, error, why=None)
    except PermanentError as error:
        settled, settlement = _deadletter(actions, attempt, attempt.noting(error), why=None)
    except TransientError as error:
        attempt.noting(error)
        first_attempt_at = delivery.first_attempt_at(attempt.started)
        elapsed = (attempt.started - first_attempt_at).total_seconds()
        decision = retry_policy.decide(attempt=attempt.number, error=error, elapsed=elapsed)
        if isinstance(decision, GiveUp):
            settled, settlement = _deadletter(actions, attempt, error, why=decision.why)
        else:
            when = attempt.started + timedelta(seconds=decision.delay)
            settled, settlement = await _schedule_retry(actions, sender, attempt, error, first_attempt_at, when)
            if settled.outcome == "retry_scheduled" and recorder is not None:
                await _note_retry(recorder, attempt, settled, when, now)
    except Exception as error:
        _log.exception("unexpected error while processing message %s; abandoning it", _safe(delivery.message_id))
        settlement = functools.partial(abandon, actions, delivery)
        settled = Settled(
            outcome="abandoned",
            reason=None,
            description=f"unexpected {type(error).__name__}; Service Bus will redeliver the message",
            attempts=attempt.number,
            terminal=False,
        )
    else:
        attempt.graph_request_id = result.graph.request_id if result.graph else None
        attempt.role_template_id = result.role_template_id
        settlement = functools.partial(complete, actions, delivery)
        settled = Settled(
            outcome=result.outcome.value,
            reason=None,
            description=result.description,
            attempts=attempt.number,
            terminal=True,
        )

    if settled.terminal and (publisher is not None or recorder is not None):
        failed = await _announced(publisher, recorder, attempt, settled, now)
    else:
        failed = None
    if failed is not None:
        settlement = functools.partial(abandon, actions, delivery)
        settled = Settled(
            outcome="abandoned",
            reason=settled.reason,
            description=f"{_sentence(settled.description)} Its {settled.outcome} {failed}; "
            "Service Bus will redeliver the message.",
            attempts=settled.attempts,
            terminal=False,
        )

    def logged(how: Settled) -> None:
        published = attempt.record if attempt.record is not None and how.terminal else None
        log_outcome("grant", how, published or _record(attempt, how, now()))

    settled = await settle_within(settlement, settled, deadline=settlement_timeout, late=logged)
    logged(settled)
    return settled


async def _announced(
    publisher: OutcomePublisher | None,
    recorder: StatusRecorder | None,
    attempt: _Attempt,
    settled: Settled,
    now: Callable[[], datetime],
) -> str | None:
    """Publish the terminal outcome's event and record its status, at once; None when both succeeded, else what
    failed (logged)."""
    attempt.record = _record(attempt, settled, now())
    status = status_record(attempt.delivery, attempt.command, attempt.record)
    calls: dict[str, Awaitable[object]] = {}
    if publisher is not None:  # the event's body: the outcome line's record and the status record, in one
        calls["event could not be published"] = publisher.publish(
            **outcome_event(attempt.delivery, attempt.command, settled, attempt.record | status)
        )
    if recorder is not None and attempt.request_id:
        owner = attempt.command is not None and settled.outcome != "duplicate" and settled.reason != "RequestIdConflict"
        write = StatusWrite.FINAL if owner else StatusWrite.FIRST
        calls["status could not be recorded"] = recorder(attempt.request_id, status, write)
    results = await asyncio.gather(*calls.values(), return_exceptions=True)
    failed = None
    for what, result in zip(calls, results, strict=True):
        if isinstance(result, BaseException):
            _log.error(
                "the %s %s for %s; abandoning it",
                settled.outcome,
                what,
                _safe(attempt.request_id),
                exc_info=result if isinstance(result, Exception) else None,
            )
            if isinstance(result, Exception):
                failed = failed or what
            else:
                raise result
    return failed


async def _note_retry(
    recorder: StatusRecorder, attempt: _Attempt, settled: Settled, when: datetime, now: Callable[[], datetime]
) -> None:
    """Record ``retry_scheduled`` with ``nextRetryAt`` (never over a terminal status); a failure is only logged: the
    retry copy is queued already, and its outcome will be recorded."""
    assert attempt.command is not None
    record = status_record(attempt.delivery, attempt.command, _record(attempt, settled, now()))
    record["nextRetryAt"] = when.isoformat()
    try:
        await recorder(attempt.command.request_id, record, StatusWrite.PROGRESS)
    except Exception:
        _log.warning("could not record the retry of %s", _safe(attempt.command.request_id), exc_info=True)


def status_record(delivery: Delivery, command: GrantCommand | None, record: Mapping[str, Any]) -> dict[str, Any]:
    """The status record of an outcome (what ``GET /api/grants/{requestId}`` answers): the outcome line's `record`
    with ``status`` (its outcome), ``firstAttemptAt``, ``lastAttemptAt``, ``requestedAt``, ``intentAt``
    (``requestedAt``, else when the first attempt started), and what the message's properties say: its bulk job or
    HR event and row (``jobId`` or ``hrEventId``, ``jobRow``, ``jobRows``) and, for an expiry removal, the grant it
    ends (``expiryOf``)."""
    status = {name: value for name, value in record.items() if name not in ("outcome", "terminal", "finishedAt")}
    requested_at = command.requested_at if command is not None else None
    intent_at = requested_at or delivery.first_attempt_at(delivery.enqueued_time or datetime.now(UTC))
    started = record.get("startedAt")
    first = delivery.application_property(FIRST_ATTEMPT_AT) if delivery.attempt > 1 else None
    status.update(
        status=record["outcome"],
        firstAttemptAt=first if isinstance(first, str) and first else started,
        lastAttemptAt=record.get("finishedAt"),
        requestedAt=requested_at.isoformat() if requested_at else None,
        intentAt=intent_at.isoformat(),
        jobId=_text(delivery.application_property(BULK_JOB)),
        hrEventId=_text(delivery.application_property(HR_EVENT)),
        jobRow=_count(delivery.application_property(JOB_ROW)),
        jobRows=_count(delivery.application_property(JOB_ROWS)),
        expiryOf=_text(delivery.application_property(EXPIRY_OF)),
    )
    return status


def progress_record(delivery: Delivery, command: GrantCommand, *, now: datetime) -> dict[str, Any]:
    """The ``in_progress`` status record of an attempt that holds its pair's lease and is writing to Graph."""
    attempt = _Attempt(delivery, delivery.attempt, now, command=command, request_id=command.request_id)
    settled = Settled(
        outcome="in_progress",
        reason=None,
        description=f"attempt {attempt.number} is being carried out",
        attempts=attempt.number,
        terminal=False,
    )
    return status_record(delivery, command, _record(attempt, settled, now))


def _text(value: object) -> str | None:
    return str(value) if value not in (None, "") else None


def _count(value: object) -> int | None:
    """A positive whole number from a message property (Service Bus may hand back int or str), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str) and value.isdecimal() and len(value) <= 9:
        return int(value) or None
    return None


def outcome_event(
    delivery: Delivery, command: GrantCommand | None, settled: Settled, record: Mapping[str, Any]
) -> dict[str, Any]:
    """The keyword arguments of `OutcomePublisher.publish` for a terminal outcome: `record` as compact JSON (its
    shape is the caller's), a derived MessageId (`outcome_event_id`) and the application properties
    subscriptions filter on: ``outcome`` and, when known, ``reason``, ``sourceSystem``, ``requestId``, ``jobId``,
    ``hrEventId`` and ``callbackUrl``."""
    properties: dict[str, PropertyValue] = {EVENT_OUTCOME: settled.outcome}
    request_id = command.request_id if command is not None else record.get("requestId")
    optional = {
        EVENT_REASON: settled.reason,
        EVENT_SOURCE_SYSTEM: command.source.system.value if command is not None else None,
        EVENT_REQUEST_ID: request_id if isinstance(request_id, str) else None,
        EVENT_JOB_ID: delivery.application_property(BULK_JOB),
        EVENT_HR_EVENT_ID: delivery.application_property(HR_EVENT),
        CALLBACK_URL: command.callback_url if command is not None else None,
    }
    properties.update({name: str(value) for name, value in optional.items() if value})
    resubmission = delivery.application_property(RESUBMISSION)
    return {
        "body": json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode(),
        "message_id": outcome_event_id(
            original_message_id=delivery.original_message_id,
            resubmission=str(resubmission) if resubmission else None,
            outcome=settled.outcome,
            reason=settled.reason,
        ),
        "application_properties": properties,
    }


def _deadletter(
    actions: MessageActions, attempt: _Attempt, error: GrantError, *, why: str | None
) -> tuple[Settled, Settlement]:
    parts = [error.description]
    if why:
        parts.append(why)
    graph = error.graph
    if graph is not None:
        parts.append(
            f"Last Graph answer: {graph.status} {graph.code or ''} {graph.message or ''}; request-id {graph.request_id}"
        )
    parts.append(f"Attempts: {attempt.number}.")
    description = clip(" ".join(_sentence(part) for part in parts), MAX_DESCRIPTION_CHARS)
    settlement = functools.partial(
        deadletter, actions, attempt.delivery, reason=error.reason.value, description=description
    )
    return Settled(
        outcome="dead_lettered",
        reason=error.reason.value,
        description=description,
        attempts=attempt.number,
        terminal=True,
    ), settlement


async def _schedule_retry(
    actions: MessageActions,
    sender: MessageSender,
    attempt: _Attempt,
    error: TransientError,
    first_attempt_at: datetime,
    when: datetime,
) -> tuple[Settled, Settlement]:
    """Send the retry copy; then the original is to be completed (or abandoned, when the copy was not sent)."""
    delivery, command = attempt.delivery, attempt.command
    assert command is not None
    properties: dict[str, str | int] = {
        ATTEMPT: attempt.number + 1,
        FIRST_ATTEMPT_AT: first_attempt_at.isoformat(),
        ORIGINAL_MESSAGE_ID: delivery.original_message_id,
    }
    resubmission = delivery.application_property(RESUBMISSION)
    if resubmission:
        properties[RESUBMISSION] = str(resubmission)
    for name in (BULK_JOB, HR_EVENT, JOB_ROW, JOB_ROWS):  # the copy is still the job's row (its status says so)
        value = delivery.application_property(name)
        if isinstance(value, str | int) and not isinstance(value, bool) and value != "":
            properties[name] = value
    try:
        await sender.schedule(
            body=delivery.body,
            message_id=retry_message_id(delivery, attempt.number + 1),
            application_properties=properties,
            scheduled_enqueue_time=when,
        )
    except Exception:
        _log.exception("could not schedule the retry copy of %s; abandoning it", command.request_id)
        return Settled(
            outcome="abandoned",
            reason=error.reason.value,
            description=f"{_sentence(error.description)} The retry copy could not be sent; Service Bus will redeliver.",
            attempts=attempt.number,
            terminal=False,
        ), functools.partial(abandon, actions, delivery)
    return Settled(
        outcome="retry_scheduled",
        reason=error.reason.value,
        description=f"{_sentence(error.description)} Attempt {attempt.number + 1} scheduled for {when.isoformat()}.",
        attempts=attempt.number,
        terminal=False,
    ), functools.partial(complete, actions, delivery)


def retry_message_id(delivery: Delivery, attempt: int) -> str:
    """``~retry:<digest>:<attempt>``: the digest of the original MessageId, the body and the resubmission (if
    any), so retry copies of two messages never share an id, whatever their request ids."""
    resubmission = str(delivery.application_property(RESUBMISSION) or "")
    body_hash = hashlib.sha256(delivery.body).hexdigest()
    return derived_message_id("retry", delivery.original_message_id, body_hash, resubmission, suffix=str(attempt))


def _record(attempt: _Attempt, settled: Settled, finished: datetime) -> dict[str, Any]:
    """The outcome line's fields: how the delivery ended, and the audit fields of its command."""
    delivery, command = attempt.delivery, attempt.command
    record: dict[str, Any] = {
        "requestId": attempt.request_id,
        "messageId": delivery.message_id,
        "originalMessageId": delivery.original_message_id,
        "outcome": settled.outcome,
        "reason": settled.reason,
        "description": settled.description,
        "attempts": settled.attempts,
        "terminal": settled.terminal,
        "graphRequestId": attempt.graph_request_id,
        "startedAt": attempt.started.isoformat(),
        "finishedAt": finished.isoformat(),
    }
    if command is not None:
        target = command.target
        record.update(
            action=command.action.value,
            sourceSystem=command.source.system.value,
            sourceReference=command.source.reference,
            requestedBy=command.requested_by,
            requestReason=command.reason,
            targetType=_TARGET_TYPES[type(target)],
            targetId=getattr(target, "id", None) or getattr(target, "administrative_unit_id", None),
            roleTemplateId=attempt.role_template_id or getattr(target, "role_template_id", None),
            memberId=command.member.id,
            memberType=command.member.type.value if command.member.type else None,
            expiresAt=command.expires_at.isoformat() if command.expires_at else None,
            dryRun=command.dry_run,
        )
    return record


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def _safe(value: object) -> str:
    return json.dumps(str(value), ensure_ascii=True)
