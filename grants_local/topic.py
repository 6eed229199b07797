"""An in-process Service Bus topic: duplicate detection at the topic, subscriptions with SQL filters.

`LocalTopic.send` drops a message whose MessageId it accepted within the duplicate-detection window (as a topic
with ``requiresDuplicateDetection``), and otherwise gives a copy to every subscription whose filter matches
(`grants_local.sqlfilter`: EXISTS, IS [NOT] NULL, comparisons, IN, AND / OR / NOT over the application
properties); a message no subscription takes is gone, as in Service Bus. Each subscription is a `LocalQueue`
(peek-lock, delivery count, abandon, dead-letter sub-queue, MaxDeliveryCount) without duplicate detection of
its own. `LocalPublisher` is the app's `OutcomePublisher` on a topic, and can be told to fail.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from grants_local.queue import DEFAULT_MAX_DELIVERY_COUNT, LocalQueue, SendFailedError
from grants_local.sqlfilter import Predicate, compile_filter
from shared.core.messaging import PropertyValue

__all__ = ["CALLBACKS_FILTER", "CALLBACKS_SUBSCRIPTION", "LocalPublisher", "LocalTopic", "TopicStats", "outcomes_topic"]

DEFAULT_TOPIC_DUPLICATE_WINDOW: Final = 3600.0  # infra: PT1H
#: The callback trigger's subscription and its filter, as infra/modules/servicebus.bicep declares them.
CALLBACKS_SUBSCRIPTION: Final = "callbacks"
CALLBACKS_FILTER: Final = "EXISTS(callbackUrl)"


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicStats:
    """Counters since the topic was created."""

    sent: int = 0
    duplicates_dropped: int = 0
    unmatched: int = 0  # accepted, but no subscription's filter took it


@dataclass(frozen=True, slots=True)
class _Subscription:
    name: str
    sql_filter: str
    matches: Predicate
    queue: LocalQueue


class LocalTopic:
    """A thread-safe in-process topic whose subscriptions are `LocalQueue`s."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        duplicate_detection_window: float | None = DEFAULT_TOPIC_DUPLICATE_WINDOW,
        max_delivery_count: int = DEFAULT_MAX_DELIVERY_COUNT,
    ) -> None:
        self._clock = clock
        self._window = duplicate_detection_window
        self._max_delivery_count = max_delivery_count
        self._mutex = threading.Lock()
        self._seen: dict[str, float] = {}
        self._subscriptions: dict[str, _Subscription] = {}
        self._counts: Counter[str] = Counter()
        self.accepted: list[tuple[str, Mapping[str, PropertyValue], bytes]] = []  # what was published, in order

    def add_subscription(self, name: str, *, sql_filter: str = "1=1") -> LocalQueue:
        """Add subscription `name` taking the messages `sql_filter` matches (raises on a filter it cannot read)."""
        matches = compile_filter(sql_filter)
        with self._mutex:
            if name in self._subscriptions:
                raise ValueError(f"subscription {name!r} exists")
            queue = LocalQueue(
                clock=self._clock, max_delivery_count=self._max_delivery_count, duplicate_detection_window=None
            )
            self._subscriptions[name] = _Subscription(name, sql_filter, matches, queue)
            return queue

    def subscription(self, name: str) -> LocalQueue:
        """The queue of subscription `name`."""
        return self._subscriptions[name].queue

    @property
    def subscriptions(self) -> Mapping[str, str]:
        """Subscription name -> its SQL filter."""
        return {name: subscription.sql_filter for name, subscription in self._subscriptions.items()}

    def send(
        self,
        body: bytes,
        *,
        message_id: str,
        application_properties: Mapping[str, PropertyValue] | None = None,
        content_type: str | None = "application/json",
    ) -> bool:
        """Publish one message now; False when duplicate detection dropped it."""
        properties = dict(application_properties or {})
        with self._mutex:
            now = self._clock()
            if self._is_duplicate(message_id, now):
                self._counts["duplicates_dropped"] += 1
                return False
            self._counts["sent"] += 1
            self.accepted.append((message_id, properties, bytes(body)))
            takers = [s for s in self._subscriptions.values() if s.matches(properties)]
            if not takers:
                self._counts["unmatched"] += 1
        for subscription in takers:
            subscription.queue.send(
                body, message_id=message_id, application_properties=properties, content_type=content_type
            )
        return True

    def _is_duplicate(self, message_id: str, now: float) -> bool:
        if self._window is None:
            return False
        for seen_id, accepted_at in list(self._seen.items()):
            if now - accepted_at < self._window:
                break
            del self._seen[seen_id]
        if message_id in self._seen:
            return True
        self._seen[message_id] = now
        return False

    @property
    def stats(self) -> TopicStats:
        with self._mutex:
            return TopicStats(**self._counts)

    def snapshot(self) -> dict[str, Any]:
        """The topic as JSON-ready data (see `restore`): duplicate-detection history, subscriptions and their queues."""
        with self._mutex:
            return {
                "seen": dict(self._seen),
                "subscriptions": {
                    name: {"filter": s.sql_filter, "queue": s.queue.snapshot()}
                    for name, s in self._subscriptions.items()
                },
            }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Load what `snapshot` returned into this topic (subscriptions it has already keep their filters)."""
        self._seen = {str(key): float(value) for key, value in state.get("seen", {}).items()}
        for name, saved in state.get("subscriptions", {}).items():
            if name not in self._subscriptions:
                self.add_subscription(name, sql_filter=saved["filter"])
            self.subscription(name).restore(saved["queue"])


def outcomes_topic(clock: Callable[[], float] = time.time) -> LocalTopic:
    """The outcomes topic as infra declares it: duplicate detection over an hour, the callbacks subscription."""
    topic = LocalTopic(clock=clock)
    topic.add_subscription(CALLBACKS_SUBSCRIPTION, sql_filter=CALLBACKS_FILTER)
    return topic


class LocalPublisher:
    """The app's `OutcomePublisher` on a `LocalTopic`; can be told to fail."""

    def __init__(self, topic: LocalTopic) -> None:
        self._topic = topic
        self._failures_left = 0
        self.failed = 0

    def fail_next(self, count: int = 1) -> None:
        """Make the next `count` publishes raise `SendFailedError` without publishing anything."""
        self._failures_left = count

    async def publish(
        self, *, body: bytes, message_id: str, application_properties: Mapping[str, PropertyValue]
    ) -> None:
        if self._failures_left:
            self._failures_left -= 1
            self.failed += 1
            raise SendFailedError(f"local publisher told to fail: event {message_id} not published")
        self._topic.send(body, message_id=message_id, application_properties=application_properties)
