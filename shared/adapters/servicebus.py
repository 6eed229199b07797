"""The retry-copy sender for Azure: azure-servicebus's async sender on the managed identity, built once."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential
    from azure.servicebus import ServiceBusMessage

__all__ = ["ServiceBusSender", "outgoing_message"]


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

    def __init__(self, *, namespace: str, queue: str, credential: AsyncTokenCredential) -> None:
        self._namespace = namespace
        self._queue = queue
        self._credential = credential
        self._lock = asyncio.Lock()
        self._client: Any = None
        self._sender: Any = None

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
        await sender.send_messages(message)

    async def _open(self) -> Any:
        async with self._lock:
            if self._sender is None:
                from azure.servicebus.aio import ServiceBusClient

                self._client = ServiceBusClient(self._namespace, self._credential)
                self._sender = self._client.get_queue_sender(self._queue)
            return self._sender

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
