"""Settle one delivery of a grant message so that nothing is lost.

- granted / already_member / revoked / not_member: ``complete``.
- transient failure with attempts left: schedule a **copy** (attempt + 1, new MessageId) at now + delay,
  *then* ``complete`` the original. A crash in between duplicates the grant (harmless: grants are
  idempotent) instead of losing it. If the copy cannot be sent: ``abandon`` (Service Bus redelivers; its
  MaxDeliveryCount is the backstop).
- permanent failure, or retries exhausted: ``deadletter`` with the reason code and a description.
- an unexpected exception (a bug): ``abandon``, logged with the stack; never ``complete``.

Every delivery ends with one structured outcome line on the ``shared.outcome`` logger.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

from shared.core.contract import (
    AdministrativeUnit,
    DirectoryRole,
    GrantCommand,
    ScopedRole,
    derived_request_id,
    parse_grant,
)
from shared.core.errors import ContractError, GrantError, GraphAnswer, PermanentError, TransientError
from shared.core.retry import GiveUp, RetryPolicy
from shared.service.membership import Result

__all__ = [
    "ATTEMPT",
    "FIRST_ATTEMPT_AT",
    "ORIGINAL_MESSAGE_ID",
    "RESUBMISSION",
    "Delivery",
    "MessageActions",
    "RetrySender",
    "Settled",
    "settle",
]

#: Application properties the app writes on retry copies (and reads back, tolerating bytes keys).
ATTEMPT: Final = "attempt"
FIRST_ATTEMPT_AT: Final = "firstAttemptAt"
ORIGINAL_MESSAGE_ID: Final = "originalMessageId"
#: Set by ``dlq resubmit``: its retry copies get MessageIds of their own, not the earlier run's (deduplicated).
RESUBMISSION: Final = "resubmission"

#: Service Bus keeps dead-letter reason and description as message properties; keep both short.
MAX_REASON_CHARS: Final = 128
MAX_DESCRIPTION_CHARS: Final = 1024
MAX_MESSAGE_ID_CHARS: Final = 128

outcome_log = logging.getLogger("shared.outcome")
_TARGET_TYPES: Final = {
    AdministrativeUnit: "administrativeUnit",
    DirectoryRole: "directoryRole",
    ScopedRole: "scopedRole",
}
_log = logging.getLogger(__name__)


class MessageActions(Protocol):
    """Settlement, as `azurefunctions.extensions.bindings.servicebus.ServiceBusMessageActions` offers it."""

    def complete(self, message: Any) -> None: ...
    def abandon(self, message: Any) -> None: ...
    def deadletter(self, message: Any, deadletter_reason: str, deadletter_error_description: str) -> None: ...


class RetrySender(Protocol):
    """Sends the scheduled retry copy (azure-servicebus in Azure, the in-process queue locally)."""

    async def schedule(
        self,
        *,
        body: bytes,
        message_id: str,
        application_properties: Mapping[str, str | int],
        scheduled_enqueue_time: datetime,
    ) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """What settlement needs from one received message; `message` is what the actions settle."""

    message: Any
    body: bytes
    message_id: str | None
    delivery_count: int
    application_properties: Mapping[Any, Any]

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
        )

    def property(self, name: str) -> Any:
        """An application property by name, whether its key arrived as str or bytes."""
        properties = self.application_properties
        value = properties.get(name, properties.get(name.encode()))
        return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True, slots=True, kw_only=True)
class Settled:
    """How one delivery ended: the outcome line's fields."""

    outcome: str  # granted | already_member | revoked | not_member | retry_scheduled | dead_lettered | abandoned
    reason: str | None
    description: str
    attempts: int
    terminal: bool


Handler = Callable[[GrantCommand], Awaitable[Result]]


async def settle(
    delivery: Delivery,
    *,
    handle: Handler,
    actions: MessageActions,
    sender: RetrySender,
    policy: RetryPolicy,
    now: Callable[[], datetime],
) -> Settled:
    """Process one delivery with `handle` and settle it; return how it ended (also logged)."""
    started = now()
    attempt = _attempt(delivery)
    command: GrantCommand | None = None
    request_id: str | None = None
    graph_request_id: str | None = None
    role_template_id: str | None = None
    try:
        command = parse_grant(delivery.body)
        request_id = command.request_id
        result = await handle(command)
    except ContractError as error:
        request_id = error.request_id
        settled = _deadletter(delivery, actions, error, attempt, why=None)
    except PermanentError as error:
        graph_request_id, role_template_id = _request_id_of(error.graph), error.role_template_id
        settled = _deadletter(delivery, actions, error, attempt, why=None)
    except TransientError as error:
        graph_request_id, role_template_id = _request_id_of(error.graph), error.role_template_id
        first_attempt_at = _first_attempt_at(delivery, started)
        elapsed = (started - first_attempt_at).total_seconds()
        decision = policy.decide(attempt=attempt, error=error, elapsed=elapsed)
        if isinstance(decision, GiveUp):
            settled = _deadletter(delivery, actions, error, attempt, why=decision.why)
        else:
            assert command is not None
            when = started + timedelta(seconds=decision.delay)
            settled = await _schedule_retry(delivery, actions, sender, command, error, attempt, first_attempt_at, when)
    except Exception as error:
        _log.exception("unexpected error while processing message %s; abandoning it", _safe(delivery.message_id))
        actions.abandon(delivery.message)
        settled = Settled(
            outcome="abandoned",
            reason=None,
            description=f"unexpected {type(error).__name__}; Service Bus will redeliver the message",
            attempts=attempt,
            terminal=False,
        )
    else:
        graph_request_id = _request_id_of(result.graph)
        role_template_id = result.role_template_id
        actions.complete(delivery.message)
        settled = Settled(
            outcome=result.outcome.value, reason=None, description=result.description, attempts=attempt, terminal=True
        )
    _log_outcome(delivery, command, request_id, settled, graph_request_id, started, now(), role_template_id)
    return settled


def _deadletter(
    delivery: Delivery, actions: MessageActions, error: GrantError, attempt: int, *, why: str | None
) -> Settled:
    parts = [error.description]
    if why:
        parts.append(why)
    graph = error.graph
    if graph is not None:
        parts.append(
            f"Last Graph answer: {graph.status} {graph.code or ''} {graph.message or ''}; request-id {graph.request_id}"
        )
    parts.append(f"Attempts: {attempt}.")
    description = _clip(" ".join(_sentence(part) for part in parts), MAX_DESCRIPTION_CHARS)
    actions.deadletter(
        delivery.message,
        deadletter_reason=_clip(error.reason.value, MAX_REASON_CHARS),
        deadletter_error_description=description,
    )
    return Settled(
        outcome="dead_lettered", reason=error.reason.value, description=description, attempts=attempt, terminal=True
    )


async def _schedule_retry(
    delivery: Delivery,
    actions: MessageActions,
    sender: RetrySender,
    command: GrantCommand,
    error: TransientError,
    attempt: int,
    first_attempt_at: datetime,
    when: datetime,
) -> Settled:
    properties: dict[str, str | int] = {
        ATTEMPT: attempt + 1,
        FIRST_ATTEMPT_AT: first_attempt_at.isoformat(),
        ORIGINAL_MESSAGE_ID: _original_message_id(delivery),
    }
    retry_base = command.request_id
    if resubmission := delivery.property(RESUBMISSION):
        properties[RESUBMISSION] = str(resubmission)
        retry_base = derived_request_id(command.request_id, f"resubmit:{resubmission}")
    try:
        await sender.schedule(
            body=delivery.body,
            message_id=retry_message_id(retry_base, attempt + 1),
            application_properties=properties,
            scheduled_enqueue_time=when,
        )
    except Exception:
        _log.exception("could not schedule the retry copy of %s; abandoning it", command.request_id)
        actions.abandon(delivery.message)
        return Settled(
            outcome="abandoned",
            reason=error.reason.value,
            description=f"{_sentence(error.description)} The retry copy could not be sent; Service Bus will redeliver.",
            attempts=attempt,
            terminal=False,
        )
    actions.complete(delivery.message)
    return Settled(
        outcome="retry_scheduled",
        reason=error.reason.value,
        description=f"{_sentence(error.description)} Attempt {attempt + 1} scheduled for {when.isoformat()}.",
        attempts=attempt,
        terminal=False,
    )


def retry_message_id(request_id: str, attempt: int) -> str:
    """``<requestId>:<attempt>``, hashed to fit Service Bus's 128-character MessageId when too long."""
    candidate = f"{request_id}:{attempt}"
    if len(candidate) <= MAX_MESSAGE_ID_CHARS:
        return candidate
    return f"{hashlib.sha256(request_id.encode()).hexdigest()}:{attempt}"


def _attempt(delivery: Delivery) -> int:
    """This attempt's number: the copy's ``attempt`` property plus Service Bus redeliveries of this copy."""
    try:
        base = int(delivery.property(ATTEMPT) or 1)
    except (TypeError, ValueError):
        base = 1
    return max(base, 1) + max(delivery.delivery_count - 1, 0)


def _first_attempt_at(delivery: Delivery, default: datetime) -> datetime:
    value = delivery.property(FIRST_ATTEMPT_AT)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return default
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return default


def _original_message_id(delivery: Delivery) -> str:
    value = delivery.property(ORIGINAL_MESSAGE_ID)
    return str(value) if value else str(delivery.message_id or "")


def _log_outcome(
    delivery: Delivery,
    command: GrantCommand | None,
    request_id: str | None,
    settled: Settled,
    graph_request_id: str | None,
    started: datetime,
    finished: datetime,
    role_template_id: str | None,
) -> None:
    record: dict[str, Any] = {
        "requestId": request_id,
        "messageId": delivery.message_id,
        "originalMessageId": _original_message_id(delivery),
        "outcome": settled.outcome,
        "reason": settled.reason,
        "description": settled.description,
        "attempts": settled.attempts,
        "terminal": settled.terminal,
        "graphRequestId": graph_request_id,
        "startedAt": started.isoformat(),
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
            roleTemplateId=role_template_id or getattr(target, "role_template_id", None),
            memberId=command.member.id,
            memberType=command.member.type.value if command.member.type else None,
            expiresAt=command.expires_at.isoformat() if command.expires_at else None,
            dryRun=command.dry_run,
        )
    level = logging.WARNING if settled.outcome in ("dead_lettered", "abandoned") else logging.INFO
    outcome_log.log(level, "grant %s %s", settled.outcome, json.dumps(record), extra={"grant": record})


def _request_id_of(answer: GraphAnswer | None) -> str | None:
    return answer.request_id if answer is not None else None


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _safe(value: object) -> str:
    return json.dumps(str(value), ensure_ascii=True)
