"""A sender per lane: a grant's retry copy and its expiry removal go back to the queue of the lane it came from."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from shared.adapters.seal import Sealer, SealingSender
from shared.core.messaging import LANES, Lane, MessageSender

__all__ = ["LaneSender"]


class LaneSender:
    """One `MessageSender` per lane (`lane`); as a sender itself, the interactive lane's (the webhook, HR events,
    the expiry sweep)."""

    def __init__(self, senders: Mapping[Lane, MessageSender]) -> None:
        self._senders = {lane: senders[lane] for lane in LANES}

    @classmethod
    def single(cls, sender: MessageSender) -> LaneSender:
        """Every lane on one sender (a local queue, a test's)."""
        return sender if isinstance(sender, LaneSender) else cls(dict.fromkeys(LANES, sender))

    @classmethod
    def sealed(cls, senders: LaneSender, sealer: Sealer) -> LaneSender:
        """`senders`, each lane's sealing every message it sends (`SealingSender`)."""
        wrapped: dict[int, MessageSender] = {}
        for lane in LANES:
            inner = senders.lane(lane)
            wrapped.setdefault(id(inner), SealingSender(inner, sealer))
        return cls({lane: wrapped[id(senders.lane(lane))] for lane in LANES})

    def lane(self, lane: Lane) -> MessageSender:
        """The sender of `lane`'s queue."""
        return self._senders[lane]

    async def schedule(
        self,
        *,
        body: bytes,
        message_id: str,
        application_properties: Mapping[str, str | int],
        scheduled_enqueue_time: datetime,
    ) -> None:
        """Send one message on the interactive lane's queue, deliverable at `scheduled_enqueue_time`."""
        await self._senders[Lane.INTERACTIVE].schedule(
            body=body,
            message_id=message_id,
            application_properties=application_properties,
            scheduled_enqueue_time=scheduled_enqueue_time,
        )

    async def close(self) -> None:
        for sender in {id(sender): sender for sender in self._senders.values()}.values():
            close = getattr(sender, "close", None)
            if close is not None:
                await close()
