"""The callback triggers (``grant_callbacks``, ``grant_callback_retries``): POST a grant's outcome event to the URL
its request named, signed, settled by the one ladder (`shared.service.settle`).

An outcome event with a ``callbackUrl`` property reaches the ``callbacks`` subscription of the outcomes topic.
The event names, sealed by the app, the producer whose request it was. The URL is checked again against the
callback policy for **that producer's own hosts** (a producer's callback never goes to another's), the event's body
is signed exactly as the webhook checks inbound requests (`shared.core.signing.sign`: HMAC-SHA256 over
``<timestamp>.<body>``) with **that producer's own secret**, and POSTed with `CallbackClient`:

- a 2xx answer: ``complete`` (outcome ``delivered``); no ``callbackUrl`` at all: ``complete`` (``skipped``);
- a failure retrying may help, with attempts left on the app's retry policy: a **copy** of the event is scheduled
  on the callback queue (``GRANTS_CALLBACK_QUEUE``), MessageId ``<event id>/callback/<attempt>`` (a name no
  producer's id can take: see `outcome_event_id`), *then* the delivery is completed; if the copy cannot be sent,
  ``abandon``;
- a retry copy delivered before the time it was sealed for (`Delivery.early`): nothing is POSTed; it is queued
  again for that time (`NotYet`);
- a failure retrying cannot help (the URL is refused, the host resolves to a private address, a redirect or
  another 4xx), or the last attempt failed: ``deadletter`` with reason ``CallbackFailed``.

The grant itself is never affected. Headers sent: ``Content-Type: application/json``, ``X-Grants-Timestamp``,
``X-Grants-Signature: sha256=<hex>``, ``X-Grants-Event-Id`` (the same on every attempt: the receiver's
idempotency key) and ``X-Grants-Delivery-Attempt``. One ``callback <outcome> {json}`` line per delivery; it names
the callback's host, never its full URL (a query may hold a token).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

from shared.adapters.callbacks import CallbackClient
from shared.adapters.seal import Sealer
from shared.core.callbacks import CallbackPolicy, CallbackRefused, CallbackTarget
from shared.core.errors import PermanentError, Reason, TransientError
from shared.core.messaging import (
    CALLBACK_URL,
    EVENT_JOB_ID,
    EVENT_OUTCOME,
    EVENT_PRODUCER,
    EVENT_REASON,
    EVENT_REQUEST_ID,
    EVENT_SOURCE_SYSTEM,
    Delivery,
    MessageActions,
    MessageSender,
    callback_copy_id,
)
from shared.core.records import callback_line
from shared.core.retry import RetryPolicy
from shared.core.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from shared.core.statuses import Settled, Status
from shared.service.settle import Done, Ending, NotYet, RetryCopy, settle

__all__ = ["ATTEMPT_HEADER", "EVENT_ID_HEADER", "CallbackHandler"]

EVENT_ID_HEADER: Final = "X-Grants-Event-Id"
ATTEMPT_HEADER: Final = "X-Grants-Delivery-Attempt"
#: The event's properties a retry copy carries on (the SQL-filter ones included, for whoever reads the queue).
_CARRIED: Final = (
    EVENT_PRODUCER,
    EVENT_SOURCE_SYSTEM,
    EVENT_OUTCOME,
    EVENT_REASON,
    EVENT_REQUEST_ID,
    EVENT_JOB_ID,
    CALLBACK_URL,
)


class CallbackHandler:
    """Handles callback deliveries for one process (built by the composition root)."""

    def __init__(
        self,
        *,
        sealer: Sealer,
        policy: CallbackPolicy,
        secret_for: Callable[[str | None], str | None],
        client: CallbackClient,
        sender: MessageSender | None,
        retry_policy: RetryPolicy,
        now: Callable[[], datetime],
        deadline: float,
    ) -> None:
        self._sealer = sealer
        self._policy = policy
        self._secret_for = secret_for
        self._client = client
        self._sender = sender
        self._retry_policy = retry_policy
        self._now = now
        self._deadline = deadline

    async def __call__(self, message: Any, actions: MessageActions) -> Settled:
        """Deliver one outcome event's callback and settle the delivery; return how it ended (also logged)."""
        delivery = Delivery.of(message)
        started = self._now()
        try:  # an attempt's bookkeeping is believed only on the app's own (sealed) retry copies
            delivery = await self._sealer.trusted(delivery)
        except Exception as error:  # the seal's key cannot be read now: abandoned, never copied
            return await settle(
                delivery.trusted(sealed=False, job_properties=False),
                error,
                Ending(kind="callback", line=functools.partial(callback_line, delivery, started, None, None)),
                actions=actions,
                policy=self._retry_policy,
                now=self._now,
                deadline=self._deadline,
            )
        producer = delivery.text_property(EVENT_PRODUCER) if delivery.own else None
        target: CallbackTarget | None = None
        status: int | None = None
        outcome: Done | NotYet | Exception
        url = delivery.application_property(CALLBACK_URL)
        try:
            if (until := delivery.early(started)) is not None:  # a retry copy delivered before its time: not now
                outcome = NotYet(until=until)
            elif not url:  # the subscription's filter lets none through, but a rule being replaced might
                outcome = Done(status=Status.SKIPPED, description="no callbackUrl")
            else:
                target = _target(url, self._policy, producer)
                status = await self._post(delivery, target, producer)
                outcome = Done(status=Status.DELIVERED, description=f"the receiver answered {status}")
        except Exception as error:  # the ladder decides by its class
            outcome = error
        host = target.host_header if target else None
        retry = RetryCopy(
            sender=self._sender,
            message_id=functools.partial(callback_copy_id, delivery.original_message_id),
            carried={
                name: str(value) for name in _CARRIED if (value := delivery.application_property(name)) is not None
            },
        )
        return await settle(
            delivery,
            outcome,
            Ending(
                kind="callback",
                line=functools.partial(callback_line, delivery, started, host, status),
                retry=retry,
                note="The grant itself is unaffected.",
            ),
            actions=actions,
            policy=self._retry_policy,
            now=self._now,
            deadline=self._deadline,
        )

    async def _post(self, delivery: Delivery, target: CallbackTarget, producer: str | None) -> int:
        """POST the event's body to `target`, signed with `producer`'s secret; the receiver's 2xx status."""
        if producer is None:
            raise PermanentError(
                Reason.CALLBACK_FAILED,
                "the event names no producer the app sealed it for: a callback goes only to its own producer's hosts",
            )
        secret = self._secret_for(producer)
        if secret is None:
            raise TransientError(
                Reason.CALLBACK_FAILED,
                f"producer {producer} has no signing secret (its secretSetting unset, or its Key Vault reference "
                "unresolved); callbacks are never sent unsigned",
            )
        timestamp = str(int(self._now().timestamp()))
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(secret=secret, timestamp=timestamp, body=delivery.body),
            EVENT_ID_HEADER: delivery.original_message_id,
            ATTEMPT_HEADER: str(delivery.attempt),
        }
        answer = await self._client.post(target, body=delivery.body, headers=headers)
        return answer.status


def _target(url: object, policy: CallbackPolicy, producer: str | None) -> CallbackTarget:
    try:
        return policy.check(url, producer=producer)
    except CallbackRefused as error:
        raise PermanentError(Reason.CALLBACK_FAILED, f"the callback URL is not allowed: {error}") from None
