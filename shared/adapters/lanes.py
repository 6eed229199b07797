"""Retry copies go back to the queue of the lane their message came from (a bulk row's retry stays bulk)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from shared.adapters.governor import Lane, current_lane
from shared.core.messaging import MessageSender

__all__ = ["LaneSender"]


class LaneSender:
    """Sends through `senders[current_lane()]`; work outside any lane (the webhook, HR events) is interactive."""

    def __init__(self, senders: Mapping[Lane, MessageSender]) -> None:
        self._senders = dict(senders)

    async def schedule(
        self,
        *,
        body: bytes,
        message_id: str,
        application_properties: Mapping[str, str | int],
        scheduled_enqueue_time: datetime,
    ) -> None:
        """Send one message on the current lane's queue, deliverable at `scheduled_enqueue_time`."""
        await self._senders[current_lane()].schedule(
            body=body,
            message_id=message_id,
            application_properties=application_properties,
            scheduled_enqueue_time=scheduled_enqueue_time,
        )

    async def close(self) -> None:
        for sender in self._senders.values():
            close = getattr(sender, "close", None)
            if close is not None:
                await close()
