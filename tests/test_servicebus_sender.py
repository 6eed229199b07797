"""The Azure retry-copy sender builds real azure.servicebus messages with our ids, schedule and properties."""

from __future__ import annotations

from datetime import UTC, datetime

from shared.adapters.servicebus import outgoing_message
from shared.core.messaging import Delivery
from shared.service.settlement import retry_message_id


def test_retry_copy_is_a_scheduled_service_bus_message_with_a_new_id() -> None:
    when = datetime(2027, 1, 1, 12, 0, tzinfo=UTC)
    message = outgoing_message(
        body=b'{"schemaVersion": 1}',
        message_id="hr-4711:3",
        application_properties={"attempt": 3, "originalMessageId": "m-1"},
        scheduled_enqueue_time=when,
    )
    assert message.message_id == "hr-4711:3"
    assert message.scheduled_enqueue_time_utc == when
    assert message.application_properties == {"attempt": 3, "originalMessageId": "m-1"}
    assert b"".join(message.body) == b'{"schemaVersion": 1}'
    assert message.content_type == "application/json"


def delivery(body: bytes, message_id: str, **properties: str) -> Delivery:
    return Delivery(message=None, body=body, message_id=message_id, delivery_count=1, application_properties=properties)


def test_retry_message_ids_are_derived_short_and_unique_per_message_and_content() -> None:
    """Retry copies of two messages with the same requestId (bulk rows, or a bulk row and a webhook request) get
    distinct MessageIds, in the app's own namespace, within Service Bus's 128 characters."""
    first = retry_message_id(delivery(b'{"requestId": "CHG0042", "member": 1}', "job:1"), 2)
    assert first.startswith("~retry:")
    assert first.endswith(":2")
    assert len(retry_message_id(delivery(b"x", "m" * 128, resubmission="ab12cd34"), 10)) <= 128
    others = {
        retry_message_id(delivery(b'{"requestId": "CHG0042", "member": 2}', "job:2"), 2),
        retry_message_id(delivery(b'{"requestId": "CHG0042", "member": 1}', "job:2"), 2),
        retry_message_id(delivery(b'{"requestId": "CHG0042", "member": 1}', "job:1", resubmission="ab12cd34"), 2),
        retry_message_id(delivery(b'{"requestId": "CHG0042", "member": 1}', "job:1"), 3),
    }
    assert first not in others
    assert len(others) == 4
    copy = delivery(b'{"requestId": "CHG0042", "member": 1}', first, originalMessageId="job:1")
    assert retry_message_id(copy, 2) == first  # a copy's copies derive from the original MessageId
