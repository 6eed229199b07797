"""Service Bus for Azure: azure-servicebus's async senders on the managed identity, each built once per process.

`ServiceBusSender` schedules messages on a queue (retry copies, expiries, HR grants, webhook requests, callback
retries); `ServiceBusPublisher` publishes outcome events to the outcomes topic.

The sender fails fast: a namespace that cannot be reached (connections refused, or accepted and never answered)
makes a send raise within `SEND_DEADLINE_SECONDS`, so that the webhook answers 503 and the HR path abandons the
event while their callers still listen (azure-servicebus's defaults took 11 s against a refusing address, and
never gave up against one that stalls). The client's own retries are few and short (`RETRY_OPTIONS`), the send
has an operation timeout, and the whole send a deadline; a send that hits the deadline closes the client, so
that the next one connects afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential
    from azure.servicebus import ServiceBusMessage

__all__ = [
    "PUBLISH_RETRY_TOTAL",
    "PUBLISH_TIMEOUT_SECONDS",
    "RETRY_OPTIONS",
    "SEND_DEADLINE_SECONDS",
    "ServiceBusPublisher",
    "ServiceBusSender",
    "outgoing_message",
]

#: azure-servicebus retries a failed send itself; the publisher bounds that: 2 more tries (backoff 0.5 s, 1 s,
#: capped at 2 s), each send bounded by a timeout, so a publish that cannot succeed fails within seconds and
#: the grant message is abandoned while its lock is still held.
PUBLISH_RETRY_TOTAL: Final = 2
PUBLISH_TIMEOUT_SECONDS: Final = 10.0

#: azure-servicebus's retry options for the client (its defaults: 3 retries, exponential from 0.8 s, up to 120 s):
#: one retry after 0.5 s, each try bounded to 1 s.
RETRY_OPTIONS: Final[Mapping[str, Any]] = {
    "retry_total": 1,
    "retry_backoff_factor": 0.5,
    "retry_backoff_max": 0.5,
    "retry_mode": "fixed",
    "try_timeout": 1.0,
}
#: The send's operation timeout (azure-servicebus: all tries included), and the deadline on the whole send.
SEND_TIMEOUT_SECONDS: Final = 2.5
SEND_DEADLINE_SECONDS: Final = 3.0


def outgoing_message(
    *,
    body: bytes,
    message_id: str,
    application_properties: Mapping[str, str | int],
    scheduled_enqueue_time: datetime,
) -> ServiceBusMessage:
    """The `azure.servicebus.ServiceBusMessage` for a retry copy, scheduled at `scheduled_enqueue_time`."""
    from azure.servicebus import ServiceBusMessage

    return ServiceBusMessage(
        body,
        message_id=message_id,
        application_properties={key: value for key, value in application_properties.items()},
        scheduled_enqueue_time_utc=scheduled_enqueue_time,
        content_type="application/json",
    )


class ServiceBusSender:
    """Schedules retry copies on `queue` in the namespace; connects on first use, then reuses the link.

    azure-servicebus is imported on the first retry, not at cold start: most messages never need it.
    """

    def __init__(
        self,
        *,
        namespace: str,
        queue: str,
        credential: AsyncTokenCredential,
        custom_endpoint_address: str | None = None,
    ) -> None:
        """`custom_endpoint_address` (``sb://host:port``): where to connect instead of the namespace, over AMQP."""
        self._namespace = namespace
        self._queue = queue
        self._credential = credential
        self._endpoint = custom_endpoint_address
        self._lock = asyncio.Lock()
        self._client: Any = None
        self._sender: Any = None
        self._closing: set[asyncio.Task[None]] = set()

    async def schedule(
        self,
        *,
        body: bytes,
        message_id: str,
        application_properties: Mapping[str, str | int],
        scheduled_enqueue_time: datetime,
    ) -> None:
        """Send one message that becomes deliverable at `scheduled_enqueue_time`; raise if it was not sent."""
        message = outgoing_message(
            body=body,
            message_id=message_id,
            application_properties=application_properties,
            scheduled_enqueue_time=scheduled_enqueue_time,
        )
        sender = await self._open()
        try:
            await asyncio.wait_for(sender.send_messages(message, timeout=SEND_TIMEOUT_SECONDS), SEND_DEADLINE_SECONDS)
        except TimeoutError:
            await self._reset(sender)
            raise TimeoutError(f"Service Bus did not accept the message within {SEND_DEADLINE_SECONDS:g} s") from None

    async def _open(self) -> Any:
        async with self._lock:
            if self._sender is None:
                from azure.servicebus import TransportType
                from azure.servicebus.aio import ServiceBusClient

                endpoint: dict[str, Any] = {}
                if self._endpoint:  # azure-servicebus would use websockets for a custom endpoint otherwise
                    endpoint = {"custom_endpoint_address": self._endpoint, "transport_type": TransportType.Amqp}
                self._client = ServiceBusClient(self._namespace, self._credential, **RETRY_OPTIONS, **endpoint)
                self._sender = self._client.get_queue_sender(self._queue)
            return self._sender

    async def _reset(self, sender: Any) -> None:
        """Drop the client that `sender` came from (a send hung on it), closing it in the background; the next send
        builds a new one."""
        async with self._lock:
            if self._sender is not sender:
                return
            client, self._client, self._sender = self._client, None, None
        closing = asyncio.create_task(_close_quietly(client))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


class ServiceBusPublisher:
    """Publishes outcome events to `topic`; connects on first use (a process that never publishes never
    connects), then reuses the one link. Sends are retried by the SDK within `PUBLISH_RETRIES`."""

    def __init__(self, *, namespace: str, topic: str, credential: AsyncTokenCredential) -> None:
        self._namespace = namespace
        self._topic = topic
        self._credential = credential
        self._lock = asyncio.Lock()
        self._client: Any = None
        self._sender: Any = None

    async def publish(
        self, *, body: bytes, message_id: str, application_properties: Mapping[str, str | int | float | bool]
    ) -> None:
        """Send one event now; raise if it was not sent (a duplicate MessageId is dropped by the topic)."""
        from azure.servicebus import ServiceBusMessage

        message = ServiceBusMessage(
            body,
            message_id=message_id,
            application_properties={key: value for key, value in application_properties.items()},
            content_type="application/json",
        )
        sender = await self._open()
        await sender.send_messages(message, timeout=PUBLISH_TIMEOUT_SECONDS)

    async def _open(self) -> Any:
        async with self._lock:
            if self._sender is None:
                from azure.servicebus.aio import ServiceBusClient

                self._client = ServiceBusClient(
                    self._namespace,
                    self._credential,
                    retry_total=PUBLISH_RETRY_TOTAL,
                    retry_backoff_factor=0.5,
                    retry_backoff_max=2.0,
                )
                self._sender = self._client.get_topic_sender(self._topic)
            return self._sender

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


async def _close_quietly(client: Any) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.close(), SEND_DEADLINE_SECONDS)
