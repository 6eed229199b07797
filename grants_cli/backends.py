"""Where the operator commands (``submit``, ``dlq``) send and settle: a Service Bus queue, or a local one.

`Backend` is what `grants_cli.bulk` and `grants_cli.dlq` need: send batches, send one message, peek the
dead-letter sub-queue, peek-lock the next dead letter and complete or abandon it, and `Backend.drain` (deliver
what was sent and print the outcomes: in Azure the deployed app drains the queue, so it does nothing).
`ServiceBusBackend` does it with azure-servicebus (synchronous client, `DefaultAzureCredential`: managed
identity, environment, Azure CLI ``az login`` …, never an interactive browser), imported only when used. The
local backends (`grants_local.backend`, `grants_local.serve_backend`) plug into the same interface
(`grants_common.queues.Backend`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, TextIO

from grants_common.queues import CONTENT_TYPE, HeldDeadLetter, Outgoing, SendReport
from shared.core.errors import ConfigError
from shared.core.messaging import DeadLetter, PropertyValue

if TYPE_CHECKING:
    from azure.servicebus import ServiceBusMessage

__all__ = [
    "ServiceBusBackend",
    "dead_letter_info",
    "fill_batches",
    "servicebus_backend",
    "to_service_bus_message",
]

NAMESPACE_SETTING: Final = "ServiceBusConnection__fullyQualifiedNamespace"
_PEEK_PAGE: Final = 250


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

    def peek_dead_letters(self) -> list[DeadLetter]:
        receiver = self._dead_letter_receiver()
        found: list[DeadLetter] = []
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

    def drain(self, out: TextIO) -> None:
        return None  # the deployed app drains the queue

    def follow(self, job_id: str) -> str | None:
        return f"grants job {job_id} --watch"  # with --url/--key, or GRANTS_APP_URL and GRANTS_FUNCTION_KEY

    def close(self) -> None:
        if self._receiver is not None:
            self._receiver.close()
        if self._client is not None:
            self._client.close()


def dead_letter_info(message: Any) -> DeadLetter:
    """A `DeadLetter` from an azure-servicebus received (or peeked) message."""
    return DeadLetter(
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
def servicebus_backend(*, namespace: str | None, queue: str) -> Iterator[ServiceBusBackend]:
    """The backend on `queue` in `namespace` (else ``ServiceBusConnection__fullyQualifiedNamespace``); raise
    `ConfigError` when neither names one."""
    fqns = namespace or os.environ.get(NAMESPACE_SETTING)
    if not fqns:
        raise ConfigError(
            "no Service Bus namespace: pass --namespace NAME.servicebus.windows.net, set "
            "ServiceBusConnection__fullyQualifiedNamespace, or use --local"
        )
    backend = ServiceBusBackend(namespace=fqns, queue=queue)
    try:
        yield backend
    finally:
        backend.close()
