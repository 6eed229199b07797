"""The app's seal on the messages it sends, and the check of it on the messages it receives (`shared.core.seal`).

The key is the app's own secret, kept in the grant ledger (`Ledger.seal_keys`: created at random on first use,
readable only with the ledger's identity), read once per process on first use: every instance of the app seals
and checks with the same key, and no producer holds it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime

from shared.core.errors import Reason, TransientError
from shared.core.messaging import (
    NOT_BEFORE,
    RESUBMISSION,
    RESUBMITTED_FROM,
    SEAL,
    Delivery,
    MessageSender,
    OutcomePublisher,
    PropertyValue,
    not_before_text,
)
from shared.core.seal import keyed_message_id, seal, verify

__all__ = ["Sealer", "SealingPublisher", "SealingSender"]


class Sealer:
    """Seals and checks messages with the app's keys (newest first), fetched once from `keys`."""

    def __init__(self, *, keys: Callable[[], Awaitable[Sequence[bytes]]]) -> None:
        self._fetch = keys
        self._keys: Sequence[bytes] | None = None
        self._lock = asyncio.Lock()
        self._failed: TransientError | None = None  # the last read's failure

    async def keys(self) -> Sequence[bytes]:
        """The keys (raises `TransientError(LedgerUnavailable)` while the ledger cannot give them, or gives none
        that can be read: an operator's rotation that wrote something other than base64). Callers that waited for
        a read that failed share its failure (a stalled ledger costs them one timeout, not one each in turn)."""
        if self._keys is None:
            failed_before = self._failed
            async with self._lock:
                if self._keys is None:
                    if self._failed is not failed_before and self._failed is not None:
                        raise TransientError(self._failed.reason, self._failed.description)
                    try:
                        self._keys = await self._read()
                    except TransientError as error:
                        self._failed = error
                        raise
        return self._keys

    async def _read(self) -> Sequence[bytes]:
        try:
            keys = tuple(await self._fetch())
        except (ValueError, TypeError) as error:  # binascii.Error is a ValueError
            raise _unreadable(f"{type(error).__name__}: {error}") from error
        if not keys:
            raise _unreadable("it holds no key")
        return keys

    async def sealed(
        self, *, message_id: str, body: bytes, properties: Mapping[str, PropertyValue]
    ) -> dict[str, PropertyValue]:
        """`properties` with the seal of this message added (under the newest key)."""
        keys = await self.keys()
        return {**properties, SEAL: seal(key=keys[0], message_id=message_id, body=body, properties=properties)}

    async def message_id(self, message_id: str) -> str:
        """`message_id` as the app sends it (`keyed_message_id`: a derived id keyed under the newest key)."""
        return keyed_message_id(key=(await self.keys())[0], message_id=message_id)

    async def trusted(self, delivery: Delivery, *, job_properties: bool = False) -> Delivery:
        """`delivery` as the app believes it (`Delivery.trusted`): its internal properties kept only when sealed.
        A message with no seal at all is a producer's, and needs no key. A `dlq resubmit` copy of a message the app
        sealed carries that seal and the dead letter's MessageId (`RESUBMITTED_FROM`): it checks out against that
        id (the same body and properties: the app's own message, carried again, its attempts counted afresh). A
        trusted delivery knows the earliest time it may run (`Delivery.early`): the handler checks it first."""
        if delivery.application_property(SEAL) is None:
            return delivery.trusted(sealed=False, job_properties=job_properties)
        keys, body, properties = await self.keys(), delivery.body, delivery.application_properties
        if verify(keys=keys, message_id=delivery.message_id, body=body, properties=properties):
            return delivery.trusted(sealed=True, job_properties=job_properties)
        source = delivery.text_property(RESUBMITTED_FROM) if delivery.application_property(RESUBMISSION) else None
        restarted = source is not None and verify(keys=keys, message_id=source, body=body, properties=properties)
        return delivery.trusted(sealed=restarted, job_properties=job_properties, restarted=restarted)


class SealingSender:
    """A `MessageSender` that keys every derived MessageId (`Sealer.message_id`) and seals every message it sends
    (`Sealer.sealed`), with the time it is scheduled for as the earliest it may run (`NOT_BEFORE`), before `sender`
    sends it: the one place the app's scheduled messages get their time, so a copy delivered sooner (resent by
    someone who can read the queue, or resubmitted) is known for one (`Delivery.early`)."""

    def __init__(self, sender: MessageSender, sealer: Sealer) -> None:
        self._sender = sender
        self._sealer = sealer

    async def schedule(
        self,
        *,
        body: bytes,
        message_id: str,
        application_properties: Mapping[str, str | int],
        scheduled_enqueue_time: datetime,
    ) -> None:
        """Key a derived MessageId and seal the message with the earliest time it may run (`NOT_BEFORE`: its
        `scheduled_enqueue_time`, whatever `application_properties` said), then send it, deliverable then."""
        message_id = await self._sealer.message_id(message_id)
        properties = {**application_properties, NOT_BEFORE: not_before_text(scheduled_enqueue_time)}
        sealed = await self._sealer.sealed(message_id=message_id, body=body, properties=properties)
        await self._sender.schedule(
            body=body,
            message_id=message_id,
            application_properties={name: value for name, value in sealed.items() if isinstance(value, str | int)},
            scheduled_enqueue_time=scheduled_enqueue_time,
        )

    async def close(self) -> None:
        close = getattr(self._sender, "close", None)
        if close is not None:
            await close()


class SealingPublisher:
    """An `OutcomePublisher` that seals every outcome event (`Sealer.sealed`) before `publisher` publishes it: its
    ``producer`` (whose callback hosts and secret its callback uses) is then the app's word, as on a queue."""

    def __init__(self, publisher: OutcomePublisher, sealer: Sealer) -> None:
        self._publisher = publisher
        self._sealer = sealer

    async def publish(
        self, *, body: bytes, message_id: str, application_properties: Mapping[str, PropertyValue]
    ) -> None:
        """Seal the event, then publish it now."""
        await self._publisher.publish(
            body=body,
            message_id=message_id,
            application_properties=await self._sealer.sealed(
                message_id=message_id, body=body, properties=application_properties
            ),
        )

    async def close(self) -> None:
        close = getattr(self._publisher, "close", None)
        if close is not None:
            await close()


def _unreadable(why: str) -> TransientError:
    return TransientError(
        Reason.LEDGER_UNAVAILABLE, f"the app's seal key in the grant ledger (row app/seal) cannot be read: {why}"
    )
