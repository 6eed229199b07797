"""The Azure sender builds real azure.servicebus messages with our ids, schedule and properties, and gives up fast
when the namespace cannot be reached."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest

from grants_local.unreachable import StaticToken, refusing_port, stalling_port
from shared.adapters.servicebus import SEND_DEADLINE_SECONDS, ServiceBusSender, outgoing_message
from shared.core.messaging import Delivery
from shared.core.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from shared.handlers.grant import retry_message_id
from shared.handlers.webhook import receive
from tests.conftest import message, producers


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
    first = retry_message_id(delivery(b'{"requestId": "CHG0042", "member": 1}', "job:1"), "bulk", 2)
    assert first.startswith("~retry:")
    assert first.endswith(":2")
    assert len(retry_message_id(delivery(b"x", "m" * 128, resubmission="ab12cd34"), "bulk", 10)) <= 128
    others = {
        retry_message_id(delivery(b'{"requestId": "CHG0042", "member": 2}', "job:2"), "bulk", 2),
        retry_message_id(delivery(b'{"requestId": "CHG0042", "member": 1}', "job:2"), "bulk", 2),
        retry_message_id(
            delivery(b'{"requestId": "CHG0042", "member": 1}', "job:1", resubmission="ab12cd34"), "bulk", 2
        ),
        retry_message_id(delivery(b'{"requestId": "CHG0042", "member": 1}', "job:1"), "bulk", 3),
    }
    others.add(retry_message_id(delivery(b'{"requestId": "CHG0042", "member": 1}', "job:1"), "other", 2))
    assert first not in others
    assert len(others) == 5  # another producer's message with the same MessageId and body is another request
    copy = delivery(b'{"requestId": "CHG0042", "member": 1}', first, originalMessageId="job:1")
    assert retry_message_id(copy, "bulk", 2) == first  # a copy's copies derive from the original MessageId


# --- an unreachable namespace fails fast (loopback only) ---------------------------------------------------------


async def send_to(port: int) -> float:
    """Seconds until the app's sender, pointed at 127.0.0.1:`port`, raises."""
    sender = ServiceBusSender(
        namespace="127.0.0.1",
        queue="grant-membership",
        credential=StaticToken(),  # type: ignore[arg-type]
        custom_endpoint_address=f"sb://127.0.0.1:{port}",
    )
    started = time.perf_counter()
    try:
        with pytest.raises(Exception):  # noqa: B017, PT011 (whichever error azure-servicebus gives up with)
            await sender.schedule(
                body=b"{}", message_id="m-1", application_properties={}, scheduled_enqueue_time=datetime.now(UTC)
            )
        return time.perf_counter() - started
    finally:
        await sender.close()


@pytest.mark.parametrize("where", ["refused", "stalled"])
async def test_given_an_unreachable_namespace_when_sending_then_it_fails_within_the_deadline(where: str) -> None:
    """Refused: azure-servicebus's defaults took 11 s; stalled (accepted, never answered): they never gave up."""
    port_of = refusing_port if where == "refused" else stalling_port
    with port_of() as port:
        elapsed = await send_to(port)
    assert elapsed < SEND_DEADLINE_SECONDS + 2  # 0.6 s and 2.5 s here; generous for a loaded machine


async def test_given_an_unreachable_namespace_when_a_webhook_request_comes_then_503_at_once() -> None:
    secret = "s3cret-for-tests-only-0123456789abcdef"
    body = json.dumps(
        message(requestId="INC1", source={"system": "ticketing", "reference": "INC1"}), separators=(",", ":")
    ).encode()
    now = datetime.now(UTC)
    headers = {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: str(int(now.timestamp())),
        SIGNATURE_HEADER: sign(secret=secret, timestamp=int(now.timestamp()), body=body),
    }
    with refusing_port() as port:
        sender = ServiceBusSender(
            namespace="127.0.0.1",
            queue="grant-membership",
            credential=StaticToken(),  # type: ignore[arg-type]
            custom_endpoint_address=f"sb://127.0.0.1:{port}",
        )
        started = time.perf_counter()
        answer = await receive(headers=headers, body=body, producers=producers(secret), sender=sender, now=lambda: now)
        elapsed = time.perf_counter() - started
        await sender.close()
    assert (answer.status, json.loads(answer.body)["type"]) == (503, "urn:entra-grants:problem:enqueue-failed")
    assert answer.headers["Retry-After"] == "30"
    assert elapsed < SEND_DEADLINE_SECONDS + 2
