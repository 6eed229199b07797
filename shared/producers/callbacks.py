"""Signed callbacks: POST a grant's outcome event to the URL its request named (the ``grant_callbacks`` trigger).

An outcome event with a ``callbackUrl`` property reaches the ``callbacks`` subscription of the outcomes topic.
`settle_callback` checks the URL again against the callback policy (the event may come from any producer's
message, not only the webhook's), signs the event's body exactly as the webhook checks inbound requests
(`shared.producers.webhook.sign`: HMAC-SHA256 over ``<timestamp>.<body>`` with the source system's secret) and
POSTs it with `CallbackClient`:

- a 2xx answer: ``complete`` (outcome ``delivered``); no ``callbackUrl`` at all: ``complete`` (``skipped``);
- a failure retrying may help, with attempts left on the app's retry policy: a **copy** of the event is
  scheduled on the callback queue (``GRANTS_CALLBACK_QUEUE``) at now + delay, MessageId
  ``<event id>/callback/<attempt>`` (a name no producer's id can take: see `outcome_event_id`), *then* the
  delivery is completed; if the copy cannot be sent, ``abandon``;
- a failure retrying cannot help (the URL is refused, the host resolves to a private address, a redirect or
  another 4xx), or the last attempt failed: ``deadletter`` with reason ``CallbackFailed``.

The grant itself is never affected. Headers sent: ``Content-Type: application/json``, ``X-Grants-Timestamp``,
``X-Grants-Signature: sha256=<hex>``, ``X-Grants-Event-Id`` (the same on every attempt: the receiver's
idempotency key) and ``X-Grants-Delivery-Attempt``. One ``callback <outcome> {json}`` line per delivery; it names
the callback's host, never its full URL (a query may hold a token).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Final

from shared.adapters.callbacks import CallbackClient
from shared.core.callbacks import SIGNING_SECRETS, CallbackPolicy, CallbackRefused, CallbackTarget
from shared.core.errors import GrantError, PermanentError, Reason, TransientError
from shared.core.messaging import (
    ATTEMPT,
    CALLBACK_URL,
    EVENT_JOB_ID,
    EVENT_OUTCOME,
    EVENT_REASON,
    EVENT_REQUEST_ID,
    EVENT_SOURCE_SYSTEM,
    FIRST_ATTEMPT_AT,
    MAX_DESCRIPTION_CHARS,
    ORIGINAL_MESSAGE_ID,
    Delivery,
    MessageActions,
    MessageSender,
    callback_copy_id,
    clip,
)
from shared.core.retry import GiveUp, RetryPolicy
from shared.producers.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from shared.service.settlement import (
    DEFAULT_SETTLEMENT_TIMEOUT,
    Settled,
    Settlement,
    abandon,
    complete,
    deadletter,
    log_outcome,
    settle_within,
)

__all__ = ["ATTEMPT_HEADER", "EVENT_ID_HEADER", "settle_callback"]

EVENT_ID_HEADER: Final = "X-Grants-Event-Id"
ATTEMPT_HEADER: Final = "X-Grants-Delivery-Attempt"
#: The event's properties a retry copy carries on (the SQL-filter ones included, for whoever reads the queue).
_CARRIED: Final = (EVENT_SOURCE_SYSTEM, EVENT_OUTCOME, EVENT_REASON, EVENT_REQUEST_ID, EVENT_JOB_ID, CALLBACK_URL)

_log = logging.getLogger(__name__)


async def settle_callback(
    delivery: Delivery,
    *,
    policy: CallbackPolicy,
    secret_for: Callable[[str | None], str | None],
    client: CallbackClient,
    actions: MessageActions,
    sender: MessageSender | None,
    retry_policy: RetryPolicy,
    now: Callable[[], datetime],
    settlement_timeout: float = DEFAULT_SETTLEMENT_TIMEOUT,
) -> Settled:
    """Deliver one outcome event's callback and settle the delivery; return how it ended (also logged)."""
    started = now()
    attempt = delivery.attempt
    source = _text(delivery.application_property(EVENT_SOURCE_SYSTEM))
    record: dict[str, Any] = {
        "eventId": delivery.original_message_id,
        "messageId": delivery.message_id,
        "requestId": _text(delivery.application_property(EVENT_REQUEST_ID)),
        "grantOutcome": _text(delivery.application_property(EVENT_OUTCOME)),
        "sourceSystem": source,
        "callbackHost": None,
        "status": None,
        "attempts": attempt,
        "startedAt": started.isoformat(),
    }

    def logged(how: Settled) -> None:
        log_outcome(
            "callback",
            how,
            record
            | {
                "outcome": how.outcome,
                "reason": how.reason,
                "description": how.description,
                "terminal": how.terminal,
                "finishedAt": now().isoformat(),
            },
        )

    settlement: Settlement
    url = delivery.application_property(CALLBACK_URL)
    if not url:  # the subscription's filter lets none through, but a rule being replaced might: nothing to call
        settled = Settled(outcome="skipped", reason=None, description="no callbackUrl", attempts=attempt, terminal=True)
        settled = await settle_within(
            functools.partial(complete, actions, delivery), settled, deadline=settlement_timeout, late=logged
        )
        logged(settled)
        return settled
    try:
        target = _target(url, policy, source)
        record["callbackHost"] = target.host_header
        secret = secret_for(source)
        if source not in SIGNING_SECRETS:
            raise PermanentError(
                Reason.CALLBACK_FAILED,
                f"source {source} has no signing secret of its own; only {', '.join(SIGNING_SECRETS)} requests get "
                "callbacks",
            )
        if secret is None:
            raise TransientError(
                Reason.CALLBACK_FAILED,
                f"source {source} has no signing secret (GRANTS_WEBHOOK_SECRET unset or its Key Vault reference "
                "unresolved); callbacks are never sent unsigned",
            )
        timestamp = str(int(now().timestamp()))
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(secret=secret, timestamp=timestamp, body=delivery.body),
            EVENT_ID_HEADER: delivery.original_message_id,
            ATTEMPT_HEADER: str(attempt),
        }
        answer = await client.post(target, body=delivery.body, headers=headers)
    except PermanentError as error:
        settled, settlement = _deadletter(actions, delivery, error, why=None, attempt=attempt)
    except TransientError as error:
        decision = retry_policy.decide(attempt=attempt, error=error, elapsed=_elapsed(delivery, started))
        if isinstance(decision, GiveUp):
            settled, settlement = _deadletter(actions, delivery, error, why=decision.why, attempt=attempt)
        else:
            settled, settlement = await _schedule_retry(
                actions, sender, delivery, error, started, decision.delay, attempt
            )
    except Exception as error:
        _log.exception("unexpected error while delivering callback %s; abandoning it", delivery.original_message_id)
        settlement = functools.partial(abandon, actions, delivery)
        settled = Settled(
            outcome="abandoned",
            reason=None,
            description=f"unexpected {type(error).__name__}; Service Bus will redeliver the event",
            attempts=attempt,
            terminal=False,
        )
    else:
        record["status"] = answer.status
        settlement = functools.partial(complete, actions, delivery)
        settled = Settled(
            outcome="delivered",
            reason=None,
            description=f"the receiver answered {answer.status}",
            attempts=attempt,
            terminal=True,
        )
    settled = await settle_within(settlement, settled, deadline=settlement_timeout, late=logged)
    logged(settled)
    return settled


def _target(url: object, policy: CallbackPolicy, source: str | None) -> CallbackTarget:
    try:
        return policy.check(url, source=source)
    except CallbackRefused as error:
        raise PermanentError(Reason.CALLBACK_FAILED, f"the callback URL is not allowed: {error}") from None


def _deadletter(
    actions: MessageActions, delivery: Delivery, error: GrantError, *, why: str | None, attempt: int
) -> tuple[Settled, Settlement]:
    parts = [error.description, *([why] if why else []), f"Attempts: {attempt}. The grant itself is unaffected."]
    description = clip(" ".join(_sentence(part) for part in parts), MAX_DESCRIPTION_CHARS)
    settlement = functools.partial(
        deadletter, actions, delivery, reason=Reason.CALLBACK_FAILED.value, description=description
    )
    return Settled(
        outcome="dead_lettered",
        reason=Reason.CALLBACK_FAILED.value,
        description=description,
        attempts=attempt,
        terminal=True,
    ), settlement


async def _schedule_retry(
    actions: MessageActions,
    sender: MessageSender | None,
    delivery: Delivery,
    error: TransientError,
    started: datetime,
    delay: float,
    attempt: int,
) -> tuple[Settled, Settlement]:
    when = started + timedelta(seconds=delay)
    properties: dict[str, str | int] = {
        name: str(value) for name in _CARRIED if (value := delivery.application_property(name)) is not None
    }
    properties |= {
        ATTEMPT: attempt + 1,
        FIRST_ATTEMPT_AT: delivery.first_attempt_at(started).isoformat(),
        ORIGINAL_MESSAGE_ID: delivery.original_message_id,
    }
    try:
        if sender is None:
            raise RuntimeError("no callback queue sender is configured")
        await sender.schedule(
            body=delivery.body,
            message_id=callback_copy_id(delivery.original_message_id, attempt + 1),
            application_properties=properties,
            scheduled_enqueue_time=when,
        )
    except Exception:
        _log.exception(
            "could not schedule the next callback attempt of %s; abandoning it", delivery.original_message_id
        )
        return Settled(
            outcome="abandoned",
            reason=error.reason.value,
            description=f"{_sentence(error.description)} The retry copy could not be sent; Service Bus will redeliver.",
            attempts=attempt,
            terminal=False,
        ), functools.partial(abandon, actions, delivery)
    return Settled(
        outcome="retry_scheduled",
        reason=error.reason.value,
        description=f"{_sentence(error.description)} Attempt {attempt + 1} scheduled for {when.isoformat()}.",
        attempts=attempt,
        terminal=False,
    ), functools.partial(complete, actions, delivery)


def _elapsed(delivery: Delivery, started: datetime) -> float:
    return (started - delivery.first_attempt_at(started)).total_seconds()


def _text(value: object) -> str | None:
    return str(value) if value is not None else None


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."
