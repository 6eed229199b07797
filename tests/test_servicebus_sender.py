"""The Azure retry-copy sender builds real azure.servicebus messages with our ids, schedule and properties."""

from __future__ import annotations

from datetime import UTC, datetime

from shared.adapters.servicebus import outgoing_message
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


def test_retry_message_ids_fit_service_bus_limits() -> None:
    assert retry_message_id("hr-4711", 2) == "hr-4711:2"
    long_id = retry_message_id("x" * 128, 10)
    assert len(long_id) <= 128
    assert long_id.endswith(":10")
    assert long_id != retry_message_id("y" * 128, 10)
