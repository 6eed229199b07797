"""Settle one delivery so that nothing is lost, and say how it ended in one outcome line.

A grant message (`settle`):

- granted / already_member / revoked / not_member (or, dry run, would_grant / would_revoke): ``complete``.
- transient failure with attempts left: schedule a **copy** (attempt + 1, new MessageId) at now + delay,
  *then* ``complete`` the original. A crash in between duplicates the grant (harmless: grants are
  idempotent) instead of losing it. If the copy cannot be sent: ``abandon`` (Service Bus redelivers; its
  MaxDeliveryCount is the backstop).
- permanent failure, or retries exhausted: ``deadletter`` with the reason code and a description.
- an unexpected exception (a bug): ``abandon``, logged with the stack; never ``complete``.

`complete`, `abandon` and `deadletter` are the only calls to `MessageActions` in the app (the HR path uses
them too), and `log_outcome` writes every outcome line, on the ``shared.outcome`` logger.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from shared.core.contract import (
    AdministrativeUnit,
    DirectoryRole,
    GrantCommand,
    ScopedRole,
    derived_request_id,
    parse_grant,
)
from shared.core.errors import ContractError, GrantError, PermanentError, TransientError
from shared.core.messaging import (
    ATTEMPT,
    FIRST_ATTEMPT_AT,
    MAX_DESCRIPTION_CHARS,
    MAX_MESSAGE_ID_CHARS,
    MAX_REASON_CHARS,
    ORIGINAL_MESSAGE_ID,
    RESUBMISSION,
    Delivery,
    MessageActions,
    MessageSender,
    clip,
)
from shared.core.retry import GiveUp, RetryPolicy
from shared.service.membership import Result

__all__ = [
    "Settled",
    "abandon",
    "complete",
    "deadletter",
    "log_outcome",
    "outcome_log",
    "retry_message_id",
    "settle",
]

outcome_log = logging.getLogger("shared.outcome")
_TARGET_TYPES: Final = {
    AdministrativeUnit: "administrativeUnit",
    DirectoryRole: "directoryRole",
    ScopedRole: "scopedRole",
}
_log = logging.getLogger(__name__)

Handler = Callable[[GrantCommand], Awaitable[Result]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Settled:
    """How one delivery ended: the outcome line's fields."""

    outcome: str  # granted | already_member | … | retry_scheduled | dead_lettered | abandoned | completed (HR)
    reason: str | None
    description: str
    attempts: int
    terminal: bool


def complete(actions: MessageActions, delivery: Delivery) -> None:
    """Remove the message from the queue for good."""
    actions.complete(delivery.message)


def abandon(actions: MessageActions, delivery: Delivery) -> None:
    """Release the message's lock: Service Bus delivers it again (and counts the delivery)."""
    actions.abandon(delivery.message)


def deadletter(actions: MessageActions, delivery: Delivery, *, reason: str, description: str) -> None:
    """Move the message to the dead-letter sub-queue with `reason` and `description`, clipped to Service Bus's
    limits."""
    actions.deadletter(
        delivery.message,
        deadletter_reason=clip(reason, MAX_REASON_CHARS),
        deadletter_error_description=clip(description, MAX_DESCRIPTION_CHARS),
    )


def log_outcome(kind: str, settled: Settled, record: dict[str, Any]) -> None:
    """One outcome line: ``<kind> <outcome> <record as JSON>``, the record also as the log record's `kind`
    attribute (e.g. ``grant``, ``hrEvent``); a warning when the delivery was dead-lettered or abandoned."""
    level = logging.WARNING if settled.outcome in ("dead_lettered", "abandoned") else logging.INFO
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
) -> Settled:
    """Process one grant delivery with `handle` and settle it; return how it ended (also logged)."""
    attempt = _Attempt(delivery, delivery.attempt, now())
    try:
        attempt.command = parse_grant(delivery.body)
        attempt.request_id = attempt.command.request_id
        result = await handle(attempt.command)
    except ContractError as error:
        attempt.request_id = error.request_id
        settled = _deadletter(actions, attempt, error, why=None)
    except PermanentError as error:
        settled = _deadletter(actions, attempt, attempt.noting(error), why=None)
    except TransientError as error:
        attempt.noting(error)
        first_attempt_at = _first_attempt_at(delivery, attempt.started)
        elapsed = (attempt.started - first_attempt_at).total_seconds()
        decision = retry_policy.decide(attempt=attempt.number, error=error, elapsed=elapsed)
        if isinstance(decision, GiveUp):
            settled = _deadletter(actions, attempt, error, why=decision.why)
        else:
            when = attempt.started + timedelta(seconds=decision.delay)
            settled = await _schedule_retry(actions, sender, attempt, error, first_attempt_at, when)
    except Exception as error:
        _log.exception("unexpected error while processing message %s; abandoning it", _safe(delivery.message_id))
        abandon(actions, delivery)
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
        complete(actions, delivery)
        settled = Settled(
            outcome=result.outcome.value,
            reason=None,
            description=result.description,
            attempts=attempt.number,
            terminal=True,
        )
    log_outcome("grant", settled, _record(attempt, settled, now()))
    return settled


def _deadletter(actions: MessageActions, attempt: _Attempt, error: GrantError, *, why: str | None) -> Settled:
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
    deadletter(actions, attempt.delivery, reason=error.reason.value, description=description)
    return Settled(
        outcome="dead_lettered",
        reason=error.reason.value,
        description=description,
        attempts=attempt.number,
        terminal=True,
    )


async def _schedule_retry(
    actions: MessageActions,
    sender: MessageSender,
    attempt: _Attempt,
    error: TransientError,
    first_attempt_at: datetime,
    when: datetime,
) -> Settled:
    delivery, command = attempt.delivery, attempt.command
    assert command is not None
    properties: dict[str, str | int] = {
        ATTEMPT: attempt.number + 1,
        FIRST_ATTEMPT_AT: first_attempt_at.isoformat(),
        ORIGINAL_MESSAGE_ID: delivery.original_message_id,
    }
    retry_base = command.request_id
    if resubmission := delivery.application_property(RESUBMISSION):
        properties[RESUBMISSION] = str(resubmission)
        retry_base = derived_request_id(command.request_id, f"resubmit:{resubmission}")
    try:
        await sender.schedule(
            body=delivery.body,
            message_id=retry_message_id(retry_base, attempt.number + 1),
            application_properties=properties,
            scheduled_enqueue_time=when,
        )
    except Exception:
        _log.exception("could not schedule the retry copy of %s; abandoning it", command.request_id)
        abandon(actions, delivery)
        return Settled(
            outcome="abandoned",
            reason=error.reason.value,
            description=f"{_sentence(error.description)} The retry copy could not be sent; Service Bus will redeliver.",
            attempts=attempt.number,
            terminal=False,
        )
    complete(actions, delivery)
    return Settled(
        outcome="retry_scheduled",
        reason=error.reason.value,
        description=f"{_sentence(error.description)} Attempt {attempt.number + 1} scheduled for {when.isoformat()}.",
        attempts=attempt.number,
        terminal=False,
    )


def retry_message_id(request_id: str, attempt: int) -> str:
    """``<requestId>:<attempt>``, hashed to fit Service Bus's 128-character MessageId when too long."""
    candidate = f"{request_id}:{attempt}"
    if len(candidate) <= MAX_MESSAGE_ID_CHARS:
        return candidate
    return f"{hashlib.sha256(request_id.encode()).hexdigest()}:{attempt}"


def _first_attempt_at(delivery: Delivery, default: datetime) -> datetime:
    value = delivery.application_property(FIRST_ATTEMPT_AT)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return default
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return default


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
