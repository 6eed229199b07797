"""A persistent local Service Bus namespace: queues that outlive one command, kept as JSON files.

A directory (``GRANTS_LOCAL_NAMESPACE``, default ``.local/servicebus``) holds one ``<queue>.json`` per queue
(active and scheduled messages, the dead-letter sub-queue, the duplicate-detection history, see
`LocalQueue.snapshot`) and the namespace's clock. `LocalNamespace.open` takes an exclusive lock on
``.lock`` (so two commands never interleave), loads the queue, and on exit saves it back atomically
(a temporary file renamed over the old one), also when the command was interrupted; `LocalNamespace.save` saves
it before then (``dlq resubmit`` does after each move, so that what it reports is on disk even if it is killed).

A topic (`LocalNamespace.open_topic`, ``<topic>.topic.json``) is kept the same way: its duplicate-detection
history and each subscription's filter and queue; a new one gets the outcomes topic's ``callbacks``
subscription, as infra declares it.

Each command's clock is a `ManualClock` starting at the wall clock: processing jumps over retry backoff
(and over anything else scheduled) within the command, and that virtual time is not kept, so the next
command starts at the wall clock again (times from a jump may lie in its future).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from grants_local.queue import LocalQueue, ManualClock
from grants_local.topic import LocalTopic, outcomes_topic

__all__ = ["DEFAULT_NAMESPACE", "LocalNamespace", "namespace_directory"]

DEFAULT_NAMESPACE: Final = Path(".local/servicebus")
_QUEUE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,259}", re.ASCII)


def namespace_directory(env: Mapping[str, str] = os.environ) -> Path:
    """The local namespace directory: ``GRANTS_LOCAL_NAMESPACE`` or ``.local/servicebus``."""
    return Path(env.get("GRANTS_LOCAL_NAMESPACE") or DEFAULT_NAMESPACE)


class LocalNamespace:
    """A directory of `LocalQueue` states shared by separate CLI invocations."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @contextmanager
    def open(self, queue: str) -> Iterator[tuple[LocalQueue, ManualClock]]:
        """The queue named `queue` and the namespace clock, locked for this command; saved on exit."""
        if not _QUEUE_NAME.fullmatch(queue):
            raise ValueError(f"not a queue name: {queue!r}")
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / ".lock", "a+b") as lock_file:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
            try:
                state = self._load(queue)
                clock = ManualClock(start=time.time())
                local_queue = LocalQueue(clock=clock)
                if "queue" in state:
                    local_queue.restore(state["queue"])
                try:
                    yield local_queue, clock
                finally:
                    self.save(queue, local_queue)
            finally:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)

    @contextmanager
    def open_topic(self, topic: str) -> Iterator[tuple[LocalTopic, ManualClock]]:
        """The topic named `topic` (with its subscriptions) and the namespace clock, locked; saved on exit."""
        if not _QUEUE_NAME.fullmatch(topic):
            raise ValueError(f"not a topic name: {topic!r}")
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / ".lock", "a+b") as lock_file:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
            try:
                state = self._load(f"{topic}.topic")
                clock = ManualClock(start=time.time())
                local_topic = outcomes_topic(clock)
                if "topic" in state:
                    local_topic.restore(state["topic"])
                try:
                    yield local_topic, clock
                finally:
                    self._save(f"{topic}.topic", {"topic": local_topic.snapshot()})
            finally:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)

    def _load(self, queue: str) -> dict[str, Any]:
        path = self.directory / f"{queue}.json"
        if not path.exists():
            return {}
        state: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return state

    def save(self, queue: str, local_queue: LocalQueue) -> None:
        """Write `local_queue`'s state as the queue named `queue`, atomically (call it while `open` holds the lock)."""
        self._save(queue, {"queue": local_queue.snapshot()})

    def _save(self, queue: str, state: Mapping[str, Any]) -> None:
        path = self.directory / f"{queue}.json"
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(state, indent=1), encoding="utf-8")
        os.replace(temporary, path)
