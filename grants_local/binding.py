"""Turn a `LockedMessage` into what the Functions worker hands to an SDK-type Service Bus trigger.

The host sends the worker a ``ModelBindingData`` (version ``"1.0"``, source ``"AzureServiceBusReceivedMessage"``,
content type ``"application/octet-stream"``) whose content the extension's `ServiceBusConverter` decodes as::

    lock token (16 bytes, .NET Guid order = uuid bytes_le) + b"x-opt-lock-token" + AMQP 1.0 message bytes

The AMQP message is encoded with uamqp (the library the converter decodes with): a data body; properties
message-id, content-type, subject, correlation-id; header delivery-count (1 on the first delivery, as the
host reports it); message annotations x-opt-enqueued-time, x-opt-sequence-number, x-opt-locked-until and,
for a scheduled message, x-opt-scheduled-enqueue-time; the application properties, plus ``DeadLetterReason``
and ``DeadLetterErrorDescription`` for a delivery from the dead-letter sub-queue (where Service Bus keeps them).

What the converter returns is an ``azure.servicebus.ServiceBusReceivedMessage`` (the SDK class; the extension's
class of the same name only builds it). Observed on it: ``body`` is bytes; ``application_properties`` has
**bytes keys** (``b"attempt"``) and str values as **bytes** (int, float and bool stay as they are);
``lock_token`` is a ``uuid.UUID`` (its ``str()`` is what `ServiceBusMessageActions` sends); ``enqueued_time_utc``,
``locked_until_utc`` and ``scheduled_enqueue_time_utc`` are aware UTC datetimes at millisecond precision;
``dead_letter_reason`` / ``dead_letter_error_description`` are str.

uamqp encodes strings as C strings, which would silently cut them at the first NUL; `encode_content` raises
ValueError for a string (id, content type, subject, property key or value, dead-letter text) containing one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, cast

import uamqp
from azure.servicebus import ServiceBusReceivedMessage as SdkReceivedMessage
from azurefunctions.extensions.base import Datum
from azurefunctions.extensions.bindings.servicebus import ServiceBusConverter, ServiceBusReceivedMessage
from uamqp.message import MessageHeader, MessageProperties
from uamqp.types import AMQPLong

from grants_local.queue import LockedMessage

__all__ = [
    "LOCK_TOKEN_MARKER",
    "ModelBindingData",
    "encode_content",
    "to_datum",
    "to_model_binding_data",
    "to_received_message",
]

#: Separates the lock token from the AMQP message in the binding content (the converter looks for it).
LOCK_TOKEN_MARKER: Final = b"x-opt-lock-token"
_DEAD_LETTER_REASON: Final = "DeadLetterReason"
_DEAD_LETTER_ERROR_DESCRIPTION: Final = "DeadLetterErrorDescription"


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelBindingData:
    """The fields of the worker's ``ModelBindingData`` protobuf message that the converter reads."""

    version: str = "1.0"
    source: str = "AzureServiceBusReceivedMessage"
    content_type: str = "application/octet-stream"
    content: bytes


def encode_content(message: LockedMessage) -> bytes:
    """The binding content for one delivery: lock token (bytes_le), marker, AMQP-encoded message.

    Raises ValueError if a string to encode contains NUL (uamqp would truncate it).
    """
    properties = MessageProperties(
        message_id=message.message_id,
        content_type=message.content_type,
        subject=message.subject,
        correlation_id=message.correlation_id,
        encoding="UTF-8",
    )
    header = MessageHeader()
    header.delivery_count = message.delivery_count
    annotations: dict[bytes, datetime | AMQPLong] = {
        b"x-opt-enqueued-time": message.enqueued_time,
        b"x-opt-sequence-number": AMQPLong(message.sequence_number),
        b"x-opt-locked-until": message.locked_until,
    }
    if message.scheduled_enqueue_time is not None:
        annotations[b"x-opt-scheduled-enqueue-time"] = message.scheduled_enqueue_time
    application_properties: dict[str, Any] = dict(message.application_properties)
    if message.dead_letter_reason is not None:
        application_properties[_DEAD_LETTER_REASON] = message.dead_letter_reason
    if message.dead_letter_error_description is not None:
        application_properties[_DEAD_LETTER_ERROR_DESCRIPTION] = message.dead_letter_error_description
    _refuse_nul(
        message.message_id,
        message.content_type,
        message.subject,
        message.correlation_id,
        *application_properties,
        *(value for value in application_properties.values() if isinstance(value, str)),
    )
    amqp = uamqp.Message(
        body=message.body,
        properties=properties,
        header=header,
        application_properties=application_properties or None,
        annotations=annotations,
    )
    return message.lock_token.bytes_le + LOCK_TOKEN_MARKER + cast(bytes, amqp.encode_message())


def to_model_binding_data(message: LockedMessage) -> ModelBindingData:
    """The ``ModelBindingData`` the host would send for this delivery."""
    return ModelBindingData(content=encode_content(message))


def to_datum(message: LockedMessage) -> Datum:
    """The trigger ``Datum`` the worker passes to the converter (type ``"model_binding_data"``)."""
    return Datum(to_model_binding_data(message), "model_binding_data")


def to_received_message(message: LockedMessage) -> SdkReceivedMessage:
    """Decode this delivery through the extension's real `ServiceBusConverter`, as the worker does."""
    decoded = ServiceBusConverter.decode(to_datum(message), trigger_metadata={}, pytype=ServiceBusReceivedMessage)
    if not isinstance(decoded, SdkReceivedMessage):
        raise TypeError(f"ServiceBusConverter returned {type(decoded)!r}")
    return decoded


def _refuse_nul(*texts: str | None) -> None:
    for text in texts:
        if text is not None and "\x00" in text:
            raise ValueError(f"cannot encode {text!r}: uamqp truncates strings at NUL")
