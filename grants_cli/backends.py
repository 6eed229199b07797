"""Where the operator commands (``submit``, ``dlq``) send and settle: Service Bus, or the local namespace's queue.

`Backend` is what `grants_cli.bulk` and `grants_cli.dlq` need: send batches, send one message, peek the dead-letter
sub-queue, peek-lock the next dead letter and complete or abandon it. `ServiceBusBackend` does it with
azure-servicebus (synchronous client, `DefaultAzureCredential`: managed identity, environment, Azure CLI
``az login`` …, never an interactive browser), imported only when used; `LocalBackend` with a `LocalQueue`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Protocol, TextIO

from grants_local.queue import LocalQueue, PropertyValue

if TYPE_CHECKING:
    from azure.servicebus import ServiceBusMessage

__all__ = [
    "Backend",
    "DeadLetterInfo",
    "HeldDeadLetter",
    "LocalBackend",
    "Outgoing",
    "SendReport",
    "ServiceBusBackend",
    "UsageError",
    "dead_letter_info",
    "fill_batches",
    "open_backend",
    "to_service_bus_message",
]

CONTENT_TYPE: Final = "application/json"
NAMESPACE_SETTING: Final = "ServiceBusConnection__fullyQualifiedNamespace"
_PEEK_PAGE: Final = 250


@dataclass(frozen=True, slots=True, kw_only=True)
class Outgoing:
    """A message to send: body, MessageId and application properties."""

    body: bytes
    message_id: str
    application_properties: Mapping[str, PropertyValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class SendReport:
    """What a batched send did; ``duplicates`` is known only where the queue tells (the local one)."""

    sent: int
    batches: int
    duplicates: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetterInfo:
    """One dead-lettered message as the operator sees it."""

    sequence_number: int
    message_id: str
    body: bytes
    application_properties: Mapping[str, PropertyValue]
    reason: str | None
    description: str | None
    delivery_count: int
    enqueued_time: datetime | None

    @property
    def request_id(self) -> str | None:
        """The body's ``requestId`` when the body is a JSON object with a string one."""
        try:
            document = json.loads(self.body)
        except ValueError:
            return None
        value = document.get("requestId") if isinstance(document, dict) else None
        return value if isinstance(value, str) else None

    @property
    def attempts(self) -> int:
        """The app's attempt count: the copy's ``attempt`` property plus this copy's redeliveries."""
        value = self.application_properties.get("attempt", 1)
        base = value if isinstance(value, int) and not isinstance(value, bool) else 1
        return max(base, 1) + max(self.delivery_count - 1, 0)


@dataclass(frozen=True, slots=True)
class HeldDeadLetter:
    """A peek-locked dead letter: settle it with `Backend.complete` or `Backend.abandon`."""

    info: DeadLetterInfo
    handle: Any


class Backend(Protocol):
    def send_batches(self, messages: Sequence[Outgoing], *, progress: Callable[[int], None]) -> SendReport:
        """Send `messages` in as few batches as fit; call `progress` with the count after each batch."""
        ...

    def send(self, message: Outgoing) -> None:
        """Send one message; raise if it was not accepted."""
        ...

    def peek_dead_letters(self) -> list[DeadLetterInfo]:
        """The dead-letter sub-queue, without locking anything."""
        ...

    def lock_next_dead_letter(self) -> HeldDeadLetter | None:
        """Peek-lock the next unlocked dead letter, or None when there is none."""
        ...

    def complete(self, held: HeldDeadLetter) -> None: ...

    def abandon(self, held: HeldDeadLetter) -> None: ...

    def close(self) -> None: ...


class LocalBackend:
    """The `Backend` over a `LocalQueue` (the local namespace's queue)."""

    def __init__(self, queue: LocalQueue, *, clock: Callable[[], float] = time.time, batch_size: int = 100) -> None:
        self.queue = queue
        self.clock = clock
        self._batch_size = batch_size

    async def process(self, out: TextIO) -> None:
        """Deliver the queue to the registered function through the local host (as ``run-local`` does, against
        ``GRAPH_BASE_URL`` or the built-in doubles); print each message's terminal outcome."""
        from grants_local.run import graph_environment, process_queue

        with graph_environment(os.environ, clock=self.clock) as env:
            recorder = await process_queue(self.queue, env=env, clock=self.clock)
        records = list(recorder.terminal().values())
        out.write(f"\nProcessed by the local host: {len(records)} message(s)\n")
        header = f"{'requestId':<28} {'outcome':<15} {'reason':<22} {'tries':>5}  description"
        out.write(header + "\n" + "-" * len(header) + "\n")
        for record in records:
            description = str(record.get("description", ""))
            out.write(
                f"{str(record.get('requestId') or '-')[:28]:<28} {record['outcome']:<15} "
                f"{record.get('reason') or '-':<22} {record.get('attempts', 0):>5}  "
                f"{description if len(description) <= 70 else description[:69] + '…'}\n"
            )
        out.write(f"Dead-letter queue now holds {len(self.queue.dead_letters())} message(s).\n")

    def send_batches(self, messages: Sequence[Outgoing], *, progress: Callable[[int], None]) -> SendReport:
        dropped_before = self.queue.stats.duplicates_dropped
        batches = 0
        for start in range(0, len(messages), self._batch_size):
            for message in messages[start : start + self._batch_size]:
                self.send(message)
            batches += 1
            progress(min(start + self._batch_size, len(messages)))
        return SendReport(
            sent=len(messages), batches=batches, duplicates=self.queue.stats.duplicates_dropped - dropped_before
        )

    def send(self, message: Outgoing) -> None:
        self.queue.send(
            message.body,
            message_id=message.message_id,
            application_properties=message.application_properties,
            content_type=CONTENT_TYPE,
        )

    def peek_dead_letters(self) -> list[DeadLetterInfo]:
        return [
            DeadLetterInfo(
                sequence_number=entry.sequence_number,
                message_id=entry.message_id,
                body=entry.body,
                application_properties=entry.application_properties,
                reason=entry.reason,
                description=entry.description,
                delivery_count=entry.delivery_count,
                enqueued_time=entry.enqueued_time,
            )
            for entry in self.queue.dead_letters()
        ]

    def lock_next_dead_letter(self) -> HeldDeadLetter | None:
        locked = self.queue.receive_dead_letter()
        if locked is None:
            return None
        info = DeadLetterInfo(
            sequence_number=locked.sequence_number,
            message_id=locked.message_id,
            body=locked.body,
            application_properties=locked.application_properties,
            reason=locked.dead_letter_reason,
            description=locked.dead_letter_error_description,
            delivery_count=locked.delivery_count - 1,  # this lock is the operator's, not a delivery to the app
            enqueued_time=locked.enqueued_time,
        )
        return HeldDeadLetter(info, locked.lock_token)

    def complete(self, held: HeldDeadLetter) -> None:
        self.queue.complete(held.handle)

    def abandon(self, held: HeldDeadLetter) -> None:
        self.queue.abandon(held.handle)

    def close(self) -> None:
        return None


def to_service_bus_message(message: Outgoing) -> ServiceBusMessage:
    """The `azure.servicebus.ServiceBusMessage` for `message` (JSON content type)."""
    from azure.servicebus import ServiceBusMessage

    return ServiceBusMessage(
        message.body,
        message_id=message.message_id,
        application_properties={key: value for key, value in message.application_properties.items()},
        content_type=CONTENT_TYPE,
    )


def fill_batches(
    messages: Iterable[ServiceBusMessage], *, new_batch: Callable[[], Any], send_batch: Callable[[Any], None]
) -> int:
    """Add `messages` to batches from `new_batch`, sending each when the next message does not fit (and the
    last one); return the number of batches sent. A message too large for an empty batch raises."""
    from azure.servicebus.exceptions import MessageSizeExceededError

    batch = new_batch()
    sent = 0
    for message in messages:
        try:
            batch.add_message(message)
        except MessageSizeExceededError:
            if len(batch) == 0:
                raise
            send_batch(batch)
            sent += 1
            batch = new_batch()
            batch.add_message(message)
    if len(batch):
        send_batch(batch)
        sent += 1
    return sent


class ServiceBusBackend:
    """The `Backend` on a Service Bus queue, as the signed-in identity (`DefaultAzureCredential`)."""

    def __init__(self, *, namespace: str, queue: str, credential: Any = None) -> None:
        self._namespace = namespace
        self._queue = queue
        self._credential = credential
        self._client: Any = None
        self._receiver: Any = None

    def _open(self) -> Any:
        if self._client is None:
            from azure.servicebus import ServiceBusClient

            credential = self._credential
            if credential is None:
                from azure.identity import DefaultAzureCredential

                credential = DefaultAzureCredential(exclude_interactive_browser_credential=True)
            self._client = ServiceBusClient(self._namespace, credential)
        return self._client

    def _dead_letter_receiver(self) -> Any:
        if self._receiver is None:
            from azure.servicebus import ServiceBusReceiveMode, ServiceBusSubQueue

            self._receiver = self._open().get_queue_receiver(
                self._queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER, receive_mode=ServiceBusReceiveMode.PEEK_LOCK
            )
        return self._receiver

    def send_batches(self, messages: Sequence[Outgoing], *, progress: Callable[[int], None]) -> SendReport:
        done = 0
        with self._open().get_queue_sender(self._queue) as sender:

            def send_batch(batch: Any) -> None:
                nonlocal done
                sender.send_messages(batch)
                done += len(batch)
                progress(done)

            batches = fill_batches(
                (to_service_bus_message(m) for m in messages),
                new_batch=sender.create_message_batch,
                send_batch=send_batch,
            )
        return SendReport(sent=done, batches=batches, duplicates=None)

    def send(self, message: Outgoing) -> None:
        with self._open().get_queue_sender(self._queue) as sender:
            sender.send_messages(to_service_bus_message(message))

    def peek_dead_letters(self) -> list[DeadLetterInfo]:
        receiver = self._dead_letter_receiver()
        found: list[DeadLetterInfo] = []
        next_sequence = 0
        while page := receiver.peek_messages(max_message_count=_PEEK_PAGE, sequence_number=next_sequence):
            found += [dead_letter_info(message) for message in page]
            next_sequence = found[-1].sequence_number + 1
        return found

    def lock_next_dead_letter(self) -> HeldDeadLetter | None:
        received = self._dead_letter_receiver().receive_messages(max_message_count=1, max_wait_time=5)
        return HeldDeadLetter(dead_letter_info(received[0]), received[0]) if received else None

    def complete(self, held: HeldDeadLetter) -> None:
        self._dead_letter_receiver().complete_message(held.handle)

    def abandon(self, held: HeldDeadLetter) -> None:
        self._dead_letter_receiver().abandon_message(held.handle)

    def close(self) -> None:
        if self._receiver is not None:
            self._receiver.close()
        if self._client is not None:
            self._client.close()


def dead_letter_info(message: Any) -> DeadLetterInfo:
    """A `DeadLetterInfo` from an azure-servicebus received (or peeked) message."""
    return DeadLetterInfo(
        sequence_number=int(message.sequence_number),
        message_id=str(message.message_id),
        body=b"".join(message.body) if not isinstance(message.body, bytes) else message.body,
        application_properties=_properties(message.application_properties or {}),
        reason=message.dead_letter_reason,
        description=message.dead_letter_error_description,
        delivery_count=int(message.delivery_count or 0),
        enqueued_time=message.enqueued_time_utc,
    )


def _properties(raw: Mapping[Any, Any]) -> dict[str, PropertyValue]:
    """Application properties with str keys and values (the AMQP layer may hand back bytes)."""
    properties: dict[str, PropertyValue] = {}
    for key, value in raw.items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        if isinstance(value, bytes):
            properties[name] = value.decode(errors="replace")
        elif isinstance(value, str | int | float | bool):
            properties[name] = value
        else:
            properties[name] = str(value)
    return properties


@contextmanager
def open_backend(*, local: bool, namespace: str | None, queue: str) -> Iterator[Backend]:
    """The local namespace's queue (``local``), or the Service Bus queue in `namespace` (``--namespace``, else
    ``ServiceBusConnection__fullyQualifiedNamespace``); raise `UsageError` when neither is given."""
    if local:
        from grants_local.namespace import LocalNamespace, namespace_directory

        with LocalNamespace(namespace_directory()).open(queue) as (local_queue, clock):
            yield LocalBackend(local_queue, clock=clock)
        return
    fqns = namespace or os.environ.get(NAMESPACE_SETTING)
    if not fqns:
        raise UsageError(
            "no Service Bus namespace: pass --namespace NAME.servicebus.windows.net, set "
            "ServiceBusConnection__fullyQualifiedNamespace, or use --local"
        )
    backend = ServiceBusBackend(namespace=fqns, queue=queue)
    try:
        yield backend
    finally:
        backend.close()


class UsageError(Exception):
    """The command cannot run as given (exit code 2)."""
