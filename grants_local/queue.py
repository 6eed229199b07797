"""An in-process Service Bus queue with the peek-lock semantics the app relies on.

Time comes from an injectable ``clock: Callable[[], float]`` returning **epoch seconds** (UTC), like
``time.time`` (the default). `ManualClock` is such a clock that only moves when told to, so tests and the
local driver jump to `LocalQueue.next_due_time` instead of sleeping. Datetimes in and out are timezone-aware
UTC; a naive datetime is refused.

Semantics (as on a queue with ``requiresDuplicateDetection`` and peek-lock receive):

- `LocalQueue.send` drops a message whose ``message_id`` was accepted within the duplicate-detection window
  (counted in `QueueStats.duplicates_dropped`). A message sent without one gets a fresh uuid4 id.
- `LocalQueue.receive` returns the next deliverable message (FIFO by enqueued time; a scheduled message is
  enqueued at its scheduled time) locked for ``lock_duration`` seconds under a fresh uuid4 lock token, its
  ``delivery_count`` incremented (1 on the first delivery).
- A lock that is not settled in time expires: the message is deliverable again. `abandon` makes it
  deliverable at once. Either way, a message that has already been delivered ``max_delivery_count`` times
  goes to the dead-letter sub-queue with reason ``MaxDeliveryCountExceeded``.
- Settling an unknown, settled or expired lock raises `LockLostError`.

Every method is non-blocking and thread-safe (one short critical section each), so it may be called from an
event loop and from the gRPC settlement server's threads alike.
"""

from __future__ import annotations

import asyncio
import base64
import heapq
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final

from shared.core.messaging import DeadLetter, PropertyValue

__all__ = [
    "DEFAULT_DUPLICATE_DETECTION_WINDOW",
    "DEFAULT_LOCK_DURATION",
    "DEFAULT_MAX_DELIVERY_COUNT",
    "MAX_DELIVERY_COUNT_EXCEEDED",
    "LocalQueue",
    "LocalSender",
    "LockLostError",
    "LockedMessage",
    "ManualClock",
    "QueueStats",
    "SendFailedError",
]


DEFAULT_LOCK_DURATION: Final = 60.0
DEFAULT_MAX_DELIVERY_COUNT: Final = 10
DEFAULT_DUPLICATE_DETECTION_WINDOW: Final = 600.0
#: The dead-letter reason Service Bus uses when a message was delivered too often.
MAX_DELIVERY_COUNT_EXCEEDED: Final = "MaxDeliveryCountExceeded"

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


class LockLostError(Exception):
    """The lock token is unknown, already settled, or its lock expired."""

    def __init__(self, lock_token: uuid.UUID | str) -> None:
        super().__init__(f"lock {lock_token} is unknown, already settled, or expired (MessageLockLost)")
        self.lock_token = str(lock_token)


class SendFailedError(Exception):
    """`LocalSender` was told to fail this send."""


class ManualClock:
    """Epoch seconds that change only through `advance` / `advance_to`; use it as a `LocalQueue` clock."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start

    def __call__(self) -> float:
        """The current time in epoch seconds."""
        return self._now

    def utcnow(self) -> datetime:
        """The current time as an aware UTC datetime."""
        return datetime.fromtimestamp(self._now, UTC)

    def advance(self, seconds: float) -> None:
        """Move forward by ``seconds`` (>= 0)."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self._now += seconds

    def advance_to(self, when: float) -> None:
        """Move forward to ``when``; a time in the past leaves the clock as it is."""
        self._now = max(self._now, when)

    async def sleep(self, seconds: float) -> None:
        """Virtual ``asyncio.sleep``: move the clock forward, then yield to other tasks once."""
        self.advance(max(seconds, 0.0))
        await asyncio.sleep(0)


@dataclass(frozen=True, slots=True, kw_only=True)
class LockedMessage:
    """One delivery: a snapshot of the message plus the lock that settles it."""

    lock_token: uuid.UUID
    locked_until: datetime
    sequence_number: int
    message_id: str
    body: bytes
    application_properties: Mapping[str, PropertyValue]
    content_type: str | None
    subject: str | None
    correlation_id: str | None
    delivery_count: int
    enqueued_time: datetime
    scheduled_enqueue_time: datetime | None
    #: Set only on a delivery from the dead-letter sub-queue.
    dead_letter_reason: str | None
    dead_letter_error_description: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueStats:
    """Counters since the queue was created (active sub-queue only)."""

    sent: int = 0
    duplicates_dropped: int = 0
    received: int = 0
    completed: int = 0
    abandoned: int = 0
    dead_lettered: int = 0
    locks_expired: int = 0


@dataclass(slots=True, kw_only=True)
class _Entry:
    sequence_number: int
    message_id: str
    body: bytes
    application_properties: Mapping[str, PropertyValue]
    content_type: str | None
    subject: str | None
    correlation_id: str | None
    enqueued_at: float
    scheduled_at: float | None
    delivery_count: int = 0
    dead_lettered: bool = False
    dead_letter_reason: str | None = None
    dead_letter_error_description: str | None = None


@dataclass(slots=True)
class _Lock:
    entry: _Entry
    locked_until: float
    renewed_until: float | None = None  # a host renews it until then (`renew_while_invoked`)

    def expires_at(self, lock_duration: float) -> float:
        """When the lock expires: renewed by a host, one lock duration after its renewals stop."""
        if self.renewed_until is None:
            return self.locked_until
        return max(self.locked_until, self.renewed_until + lock_duration)


class LocalQueue:
    """A thread-safe in-process queue with duplicate detection, scheduling, peek-lock and a dead-letter sub-queue."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        lock_duration: float = DEFAULT_LOCK_DURATION,
        max_delivery_count: int = DEFAULT_MAX_DELIVERY_COUNT,
        duplicate_detection_window: float | None = DEFAULT_DUPLICATE_DETECTION_WINDOW,
    ) -> None:
        """``duplicate_detection_window=None`` turns duplicate detection off; durations are in seconds."""
        if lock_duration <= 0:
            raise ValueError("lock_duration must be positive")
        if max_delivery_count < 1:
            raise ValueError("max_delivery_count must be at least 1")
        self._clock = clock
        self._lock_duration = lock_duration
        self._max_delivery_count = max_delivery_count
        self._window = duplicate_detection_window
        self._mutex = threading.Lock()
        self._next_sequence = 1
        self._seen: dict[str, float] = {}  # message_id -> accepted at, oldest first
        self._ready: list[tuple[float, int, _Entry]] = []  # heap of unlocked active messages, due or scheduled
        self._dead: dict[int, _Entry] = {}  # dead-letter sub-queue, locked or not, in dead-lettering order
        self._locks: dict[uuid.UUID, _Lock] = {}
        self._counts: Counter[str] = Counter()  # QueueStats field -> count

    @property
    def clock(self) -> Callable[[], float]:
        """The queue's clock (epoch seconds)."""
        return self._clock

    # -- sending ---------------------------------------------------------------------------------------

    def send(
        self,
        body: bytes,
        *,
        message_id: str | None = None,
        application_properties: Mapping[str, PropertyValue] | None = None,
        scheduled_enqueue_time: datetime | None = None,
        content_type: str | None = None,
        subject: str | None = None,
        correlation_id: str | None = None,
    ) -> None:
        """Enqueue a message now, or at ``scheduled_enqueue_time``; silently drop a duplicate ``message_id``."""
        properties = _checked_properties(application_properties or {})
        scheduled_at = None if scheduled_enqueue_time is None else _epoch(scheduled_enqueue_time)
        with self._mutex:
            now = self._clock()
            if message_id is not None and self._is_duplicate(message_id, now):
                self._counts["duplicates_dropped"] += 1
                return
            entry = _Entry(
                sequence_number=self._next_sequence,
                message_id=message_id if message_id is not None else uuid.uuid4().hex,
                body=bytes(body),
                application_properties=MappingProxyType(properties),
                content_type=content_type,
                subject=subject,
                correlation_id=correlation_id,
                enqueued_at=now if scheduled_at is None else max(now, scheduled_at),
                scheduled_at=scheduled_at,
            )
            self._next_sequence += 1
            self._counts["sent"] += 1
            heapq.heappush(self._ready, (entry.enqueued_at, entry.sequence_number, entry))

    def _is_duplicate(self, message_id: str, now: float) -> bool:
        if self._window is None:
            return False
        while self._seen:
            oldest_id, accepted_at = next(iter(self._seen.items()))
            if now - accepted_at < self._window:
                break
            del self._seen[oldest_id]
        if message_id in self._seen:
            return True
        self._seen[message_id] = now
        return False

    # -- receiving -------------------------------------------------------------------------------------

    def receive(self) -> LockedMessage | None:
        """Lock and return the next deliverable active message, or None if none is deliverable now."""
        with self._mutex:
            now = self._expire_locks()
            if not self._ready or self._ready[0][0] > now:
                return None
            _, _, entry = heapq.heappop(self._ready)
            self._counts["received"] += 1
            return self._lock(entry, now)

    def receive_dead_letter(self) -> LockedMessage | None:
        """Lock and return the oldest unlocked dead-lettered message, or None; settle it like any other."""
        with self._mutex:
            now = self._expire_locks()
            locked = {lock.entry.sequence_number for lock in self._locks.values()}
            for entry in self._dead.values():
                if entry.sequence_number not in locked:
                    return self._lock(entry, now)
            return None

    def _lock(self, entry: _Entry, now: float) -> LockedMessage:
        entry.delivery_count += 1
        token = uuid.uuid4()
        locked_until = now + self._lock_duration
        self._locks[token] = _Lock(entry, locked_until)
        return LockedMessage(
            lock_token=token,
            locked_until=_utc(locked_until),
            sequence_number=entry.sequence_number,
            message_id=entry.message_id,
            body=entry.body,
            application_properties=entry.application_properties,
            content_type=entry.content_type,
            subject=entry.subject,
            correlation_id=entry.correlation_id,
            delivery_count=entry.delivery_count,
            enqueued_time=_utc(entry.enqueued_at),
            scheduled_enqueue_time=None if entry.scheduled_at is None else _utc(entry.scheduled_at),
            dead_letter_reason=entry.dead_letter_reason,
            dead_letter_error_description=entry.dead_letter_error_description,
        )

    # -- settling --------------------------------------------------------------------------------------

    def complete(self, lock_token: uuid.UUID | str) -> None:
        """Remove the locked message for good (from whichever sub-queue it came)."""
        with self._mutex:
            entry = self._take_lock(lock_token)
            if entry.dead_lettered:
                del self._dead[entry.sequence_number]
            else:
                self._counts["completed"] += 1

    def abandon(self, lock_token: uuid.UUID | str) -> None:
        """Release the lock: the message is deliverable again now (or dead-lettered past max_delivery_count)."""
        with self._mutex:
            entry = self._take_lock(lock_token)
            if not entry.dead_lettered:
                self._counts["abandoned"] += 1
            self._release(entry)

    def deadletter(self, lock_token: uuid.UUID | str, *, reason: str | None, description: str | None) -> None:
        """Move the locked active message to the dead-letter sub-queue with ``reason`` and ``description``."""
        with self._mutex:
            self._expire_locks()
            lock = self._locks.get(_token(lock_token))
            if lock is not None and lock.entry.dead_lettered:
                raise ValueError("a message received from the dead-letter queue cannot be dead-lettered again")
            entry = self._take_lock(lock_token)
            self._dead_letter(entry, reason=reason, description=description)

    def renew_lock(self, lock_token: uuid.UUID | str) -> datetime:
        """Extend the lock by ``lock_duration`` from now; return the new expiry."""
        with self._mutex:
            now = self._expire_locks()
            lock = self._locks.get(_token(lock_token))
            if lock is None:
                raise LockLostError(lock_token)
            lock.locked_until = now + self._lock_duration
            return _utc(lock.locked_until)

    def renew_while_invoked(self, lock_token: uuid.UUID | str, *, seconds: float) -> None:
        """A host renews the lock while its invocation runs, for at most `seconds` from now (host.json's
        ``maxAutoLockRenewalDuration``); `stop_renewing` when the invocation ends. Unknown locks are ignored."""
        with self._mutex:
            now = self._expire_locks()
            lock = self._locks.get(_token(lock_token))
            if lock is not None:
                lock.renewed_until = now + seconds

    def stop_renewing(self, lock_token: uuid.UUID | str) -> None:
        """The invocation ended: the lock, if still held, lasts one lock duration from its last renewal (now)."""
        with self._mutex:
            now = self._expire_locks()
            lock = self._locks.get(_token(lock_token))
            if lock is not None and lock.renewed_until is not None:
                lock.locked_until = max(lock.locked_until, min(now, lock.renewed_until) + self._lock_duration)
                lock.renewed_until = None

    def lose_lock(self, lock_token: uuid.UUID | str) -> bool:
        """The lock ends now, as when it expires: the message is deliverable again (or dead-lettered past
        max_delivery_count) and its lock token is unknown from then on; False when it was not held."""
        with self._mutex:
            self._expire_locks()
            lock = self._locks.pop(_token(lock_token), None)
            if lock is None:
                return False
            if not lock.entry.dead_lettered:
                self._counts["locks_expired"] += 1
            self._release(lock.entry)
            return True

    def _take_lock(self, lock_token: uuid.UUID | str) -> _Entry:
        self._expire_locks()
        lock = self._locks.pop(_token(lock_token), None)
        if lock is None:
            raise LockLostError(lock_token)
        return lock.entry

    def _expire_locks(self) -> float:
        now = self._clock()
        for token, lock in list(self._locks.items()):
            if lock.expires_at(self._lock_duration) <= now:
                del self._locks[token]
                if not lock.entry.dead_lettered:
                    self._counts["locks_expired"] += 1
                self._release(lock.entry)
        return now

    def _release(self, entry: _Entry) -> None:
        if entry.dead_lettered:
            return  # it never left self._dead
        if entry.delivery_count >= self._max_delivery_count:
            self._dead_letter(
                entry,
                reason=MAX_DELIVERY_COUNT_EXCEEDED,
                description=f"Message could not be consumed after {entry.delivery_count} delivery attempts.",
            )
        else:
            heapq.heappush(self._ready, (entry.enqueued_at, entry.sequence_number, entry))

    def _dead_letter(self, entry: _Entry, *, reason: str | None, description: str | None) -> None:
        entry.dead_lettered = True
        entry.dead_letter_reason = reason
        entry.dead_letter_error_description = description
        self._dead[entry.sequence_number] = entry
        self._counts["dead_lettered"] += 1

    # -- inspection ------------------------------------------------------------------------------------

    @property
    def active_count(self) -> int:
        """Active messages that are due: deliverable now or locked by a receiver."""
        with self._mutex:
            now = self._expire_locks()
            due = sum(1 for enqueued_at, _, _ in self._ready if enqueued_at <= now)
            return due + sum(1 for lock in self._locks.values() if not lock.entry.dead_lettered)

    @property
    def scheduled_count(self) -> int:
        """Messages scheduled for a time that has not come yet."""
        with self._mutex:
            now = self._expire_locks()
            return sum(1 for enqueued_at, _, _ in self._ready if enqueued_at > now)

    @property
    def locked_count(self) -> int:
        """Messages (active or dead-lettered) currently locked by a receiver."""
        with self._mutex:
            self._expire_locks()
            return len(self._locks)

    @property
    def stats(self) -> QueueStats:
        """A snapshot of the counters."""
        with self._mutex:
            self._expire_locks()
            return QueueStats(**self._counts)

    def dead_letters(self) -> list[DeadLetter]:
        """The dead-letter sub-queue (locked entries included), oldest dead-lettering first."""
        with self._mutex:
            self._expire_locks()
            return [
                DeadLetter(
                    sequence_number=entry.sequence_number,
                    message_id=entry.message_id,
                    body=entry.body,
                    application_properties=entry.application_properties,
                    delivery_count=entry.delivery_count,
                    enqueued_time=_utc(entry.enqueued_at),
                    reason=entry.dead_letter_reason,
                    description=entry.dead_letter_error_description,
                )
                for entry in self._dead.values()
            ]

    def snapshot(self) -> dict[str, Any]:
        """The queue's messages as JSON-ready data (see `restore`); a locked message is saved as unlocked.

        Active and scheduled messages, the dead-letter sub-queue and the duplicate-detection history are
        kept; counters and locks are not (a lock does not outlive the process that took it).
        """
        with self._mutex:
            self._expire_locks()
            active = [entry for _, _, entry in sorted(self._ready, key=lambda item: item[:2])]
            active += [lock.entry for lock in self._locks.values() if not lock.entry.dead_lettered]
            return {
                "nextSequence": self._next_sequence,
                "seen": dict(self._seen),
                "active": [_entry_json(entry) for entry in sorted(active, key=lambda e: e.sequence_number)],
                "deadLetters": [_entry_json(entry) for entry in self._dead.values()],
            }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Load what `snapshot` returned into this (empty) queue."""
        with self._mutex:
            if self._next_sequence != 1:
                raise ValueError("restore needs an empty queue")
            self._next_sequence = int(state["nextSequence"])
            self._seen = {str(key): float(value) for key, value in state["seen"].items()}
            for item in state["active"]:
                entry = _entry_from_json(item)
                heapq.heappush(self._ready, (entry.enqueued_at, entry.sequence_number, entry))
            for item in state["deadLetters"]:
                entry = _entry_from_json(item)
                entry.dead_lettered = True
                self._dead[entry.sequence_number] = entry

    def next_due_time(self, *, include_locks: bool = True) -> float | None:
        """When an active message is, or next becomes, deliverable (epoch seconds); None if none ever will.

        A value <= ``clock()`` means `receive` returns a message now. With ``include_locks`` the expiry of an
        unsettled lock counts too (that is when a crashed delivery comes back).
        """
        with self._mutex:
            self._expire_locks()
            candidates = [self._ready[0][0]] if self._ready else []
            if include_locks:
                candidates += [
                    lock.expires_at(self._lock_duration)
                    for lock in self._locks.values()
                    if not lock.entry.dead_lettered
                ]
            return min(candidates, default=None)


class LocalSender:
    """The app's `MessageSender` on a `LocalQueue`; can be told to fail."""

    def __init__(self, queue: LocalQueue) -> None:
        self._queue = queue
        self._failures_left = 0
        self._refused: Callable[[bytes], bool] | None = None
        self.failed = 0

    def fail_next(self, count: int = 1) -> None:
        """Make the next ``count`` calls to `schedule` raise `SendFailedError` without enqueueing anything."""
        if count < 0:
            raise ValueError("count must be >= 0")
        self._failures_left = count

    def fail_when(self, refused: Callable[[bytes], bool] | None) -> None:
        """Make every call to `schedule` whose body `refused` picks raise `SendFailedError` (None: no more)."""
        self._refused = refused

    async def schedule(
        self,
        *,
        body: bytes,
        message_id: str,
        application_properties: Mapping[str, str | int],
        scheduled_enqueue_time: datetime,
    ) -> None:
        """Enqueue ``body`` at ``scheduled_enqueue_time`` (subject to duplicate detection), or fail as told."""
        told = self._failures_left > 0
        if told or (self._refused is not None and self._refused(body)):
            self._failures_left -= 1 if told else 0
            self.failed += 1
            raise SendFailedError(f"local sender told to fail: message {message_id} not sent")
        self._queue.send(
            body,
            message_id=message_id,
            application_properties=application_properties,
            scheduled_enqueue_time=scheduled_enqueue_time,
        )


def _entry_json(entry: _Entry) -> dict[str, Any]:
    return {
        "sequenceNumber": entry.sequence_number,
        "messageId": entry.message_id,
        "body": base64.b64encode(entry.body).decode("ascii"),
        "applicationProperties": dict(entry.application_properties),
        "contentType": entry.content_type,
        "subject": entry.subject,
        "correlationId": entry.correlation_id,
        "enqueuedAt": entry.enqueued_at,
        "scheduledAt": entry.scheduled_at,
        "deliveryCount": entry.delivery_count,
        "deadLetterReason": entry.dead_letter_reason,
        "deadLetterErrorDescription": entry.dead_letter_error_description,
    }


def _entry_from_json(item: Mapping[str, Any]) -> _Entry:
    return _Entry(
        sequence_number=int(item["sequenceNumber"]),
        message_id=str(item["messageId"]),
        body=base64.b64decode(item["body"]),
        application_properties=MappingProxyType(_checked_properties(item["applicationProperties"])),
        content_type=item["contentType"],
        subject=item["subject"],
        correlation_id=item["correlationId"],
        enqueued_at=float(item["enqueuedAt"]),
        scheduled_at=None if item["scheduledAt"] is None else float(item["scheduledAt"]),
        delivery_count=int(item["deliveryCount"]),
        dead_letter_reason=item["deadLetterReason"],
        dead_letter_error_description=item["deadLetterErrorDescription"],
    )


def _checked_properties(properties: Mapping[str, PropertyValue]) -> dict[str, PropertyValue]:
    checked: dict[str, PropertyValue] = {}
    for key, value in properties.items():
        untyped_key: object = key
        untyped_value: object = value
        if not isinstance(untyped_key, str):
            raise TypeError(f"application property keys must be str, got {key!r}")
        if not isinstance(untyped_value, str | int | float | bool):
            raise TypeError(f"application property {key!r} must be str, int, float or bool, got {type(value)}")
        if isinstance(value, int) and not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"application property {key!r} does not fit in 64 bits")
        checked[key] = value
    return checked


def _token(lock_token: uuid.UUID | str) -> uuid.UUID:
    if isinstance(lock_token, uuid.UUID):
        return lock_token
    try:
        return uuid.UUID(lock_token)
    except ValueError:
        raise LockLostError(lock_token) from None


def _epoch(when: datetime) -> float:
    if when.tzinfo is None:
        raise ValueError("scheduled_enqueue_time must be timezone-aware (UTC)")
    return when.timestamp()


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)
