"""The local Service Bus emulation: queue semantics, the binding round trip, settlement over real gRPC."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from azure.servicebus import ServiceBusReceivedMessage as SdkReceivedMessage
from azurefunctions.extensions.bindings.servicebus import ServiceBusClientConverter, ServiceBusMessageActions
from azurefunctions.extensions.bindings.servicebus.serviceBusMessageActions import SettlementError
from hypothesis import given, settings
from hypothesis import strategies as st

from grants_local.binding import LOCK_TOKEN_MARKER, to_model_binding_data, to_received_message
from grants_local.queue import (
    MAX_DELIVERY_COUNT_EXCEEDED,
    LocalQueue,
    LocalSender,
    LockedMessage,
    LockLostError,
    ManualClock,
    SendFailedError,
)
from grants_local.settlement_server import LocalSettlementServer, SettlementCall, point_message_actions_at

START = 1_700_000_000.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def queue(clock: ManualClock) -> LocalQueue:
    return LocalQueue(clock=clock, lock_duration=60.0, max_delivery_count=3)


def receive(queue: LocalQueue) -> LockedMessage:
    message = queue.receive()
    assert message is not None, "expected a deliverable message"
    return message


def body_of(message: SdkReceivedMessage) -> bytes:
    body = message.body
    return body if isinstance(body, bytes) else b"".join(body)


# -- queue semantics ---------------------------------------------------------------------------------------


def test_first_delivery_is_locked_with_count_one(queue: LocalQueue, clock: ManualClock) -> None:
    """Given a sent message, when received, then it carries a fresh lock, delivery_count 1 and its metadata."""
    queue.send(b"a", message_id="m-1", application_properties={"attempt": 1}, content_type="application/json")
    queue.send(b"b", message_id="m-2")

    first, second = receive(queue), receive(queue)

    assert (first.body, first.message_id, first.delivery_count, first.sequence_number) == (b"a", "m-1", 1, 1)
    assert dict(first.application_properties) == {"attempt": 1}
    assert first.content_type == "application/json"
    assert first.enqueued_time == datetime.fromtimestamp(START, UTC)
    assert first.locked_until == datetime.fromtimestamp(START + 60, UTC)
    assert first.scheduled_enqueue_time is None
    assert second.sequence_number == 2
    assert first.lock_token != second.lock_token
    assert queue.receive() is None
    assert (queue.active_count, queue.locked_count, queue.stats.received) == (2, 2, 2)


def test_message_without_id_gets_one(queue: LocalQueue) -> None:
    """Given no message_id, the queue assigns a unique one (and never treats it as a duplicate)."""
    queue.send(b"x")
    queue.send(b"x")

    assert receive(queue).message_id != receive(queue).message_id


def test_scheduled_message_is_delivered_at_its_time(queue: LocalQueue, clock: ManualClock) -> None:
    """Given a message scheduled in 30 s, it is not deliverable before then and is at that time."""
    when = clock.utcnow() + timedelta(seconds=30)
    queue.send(b"later", message_id="s-1", scheduled_enqueue_time=when)

    assert queue.receive() is None
    assert (queue.scheduled_count, queue.active_count) == (1, 0)
    assert queue.next_due_time() == START + 30

    clock.advance(29.999)
    assert queue.receive() is None

    clock.advance_to(queue.next_due_time() or 0.0)
    message = receive(queue)
    assert message.message_id == "s-1"
    assert message.scheduled_enqueue_time == when
    assert message.enqueued_time == when
    assert queue.scheduled_count == 0


def test_delivery_order_follows_enqueued_time(queue: LocalQueue, clock: ManualClock) -> None:
    """Given a due scheduled message and a later plain one, the earlier enqueued time comes first."""
    queue.send(b"scheduled", scheduled_enqueue_time=clock.utcnow() + timedelta(seconds=10))
    clock.advance(20)
    queue.send(b"plain")

    assert [receive(queue).body, receive(queue).body] == [b"scheduled", b"plain"]


def test_unsettled_lock_expires_and_message_is_redelivered(queue: LocalQueue, clock: ManualClock) -> None:
    """Given a delivery never settled (a crashed invocation), after lock_duration it comes back with count 2."""
    queue.send(b"a", message_id="m-1")
    first = receive(queue)
    assert queue.next_due_time(include_locks=False) is None
    assert queue.next_due_time() == START + 60

    clock.advance(59.9)
    assert queue.receive() is None
    clock.advance(0.1)
    second = receive(queue)

    assert second.message_id == "m-1"
    assert second.delivery_count == 2
    assert second.lock_token != first.lock_token
    assert queue.stats.locks_expired == 1
    with pytest.raises(LockLostError):
        queue.complete(first.lock_token)
    queue.complete(second.lock_token)
    assert queue.stats.completed == 1


def test_a_lock_renewed_while_invoked_outlives_its_duration_and_expires_one_duration_after_renewal_stops(
    queue: LocalQueue, clock: ManualClock
) -> None:
    """As the host renews a running invocation's lock (up to maxAutoLockRenewalDuration): time moved by others'
    waits never takes the message away; once the invocation ends unsettled, the lock lasts one duration more."""
    queue.send(b"{}", message_id="m-1")
    first = receive(queue)
    queue.renew_while_invoked(first.lock_token, seconds=300)
    clock.advance(200)
    assert queue.receive() is None
    queue.stop_renewing(first.lock_token)
    clock.advance(59.9)
    assert queue.receive() is None
    clock.advance(0.1)
    assert receive(queue).delivery_count == 2
    assert queue.stats.locks_expired == 1


def test_a_renewed_lock_expires_one_duration_after_the_renewal_limit(queue: LocalQueue, clock: ManualClock) -> None:
    queue.send(b"{}", message_id="m-1")
    first = receive(queue)
    queue.renew_while_invoked(first.lock_token, seconds=300)
    assert queue.next_due_time() == START + 360
    clock.advance(360)
    assert receive(queue).delivery_count == 2
    with pytest.raises(LockLostError):
        queue.complete(first.lock_token)


def test_abandon_redelivers_at_once_with_count_incremented(queue: LocalQueue) -> None:
    """Given an abandoned delivery, it is deliverable immediately, ahead of later messages, with count 2."""
    queue.send(b"a", message_id="m-1")
    queue.send(b"b", message_id="m-2")
    queue.abandon(receive(queue).lock_token)

    again = receive(queue)

    assert (again.message_id, again.delivery_count) == ("m-1", 2)
    assert queue.stats.abandoned == 1


def test_duplicate_message_id_within_window_is_dropped(clock: ManualClock) -> None:
    """Given duplicate detection (10 min), a resend within the window is dropped and counted; later it is not."""
    queue = LocalQueue(clock=clock)
    queue.send(b"a", message_id="m-1")
    clock.advance(599)
    queue.send(b"a again", message_id="m-1")
    assert (queue.stats.sent, queue.stats.duplicates_dropped, queue.active_count) == (1, 1, 1)

    clock.advance(1)
    queue.send(b"a later", message_id="m-1")
    assert (queue.stats.sent, queue.stats.duplicates_dropped, queue.active_count) == (2, 1, 2)


def test_duplicate_detection_can_be_off(clock: ManualClock) -> None:
    """Given duplicate_detection_window=None, the same message_id is accepted twice."""
    queue = LocalQueue(clock=clock, duplicate_detection_window=None)
    queue.send(b"a", message_id="m-1")
    queue.send(b"a", message_id="m-1")

    assert (queue.stats.sent, queue.stats.duplicates_dropped) == (2, 0)


def test_max_delivery_count_moves_message_to_dead_letter(queue: LocalQueue, clock: ManualClock) -> None:
    """Given max_delivery_count 3, the third failed delivery (abandon or lock expiry) dead-letters the message."""
    queue.send(b"poison", message_id="p-1", application_properties={"attempt": 4})
    queue.abandon(receive(queue).lock_token)
    queue.abandon(receive(queue).lock_token)
    assert receive(queue).delivery_count == 3
    clock.advance(60)  # the third delivery's lock expires

    assert queue.receive() is None
    [dead] = queue.dead_letters()
    assert dead.message_id == "p-1"
    assert dead.body == b"poison"
    assert dict(dead.application_properties) == {"attempt": 4}
    assert dead.delivery_count == 3
    assert dead.reason == MAX_DELIVERY_COUNT_EXCEEDED
    assert dead.description == "Message could not be consumed after 3 delivery attempts."
    assert (queue.stats.abandoned, queue.stats.locks_expired, queue.stats.dead_lettered) == (2, 1, 1)


def test_deadletter_keeps_message_reason_and_description(queue: LocalQueue) -> None:
    """Given an explicit dead-letter, the DLQ entry keeps body, properties, count, reason and description."""
    queue.send(b"bad", message_id="b-1", application_properties={"source": "hr", "flag": True}, subject="grant")
    queue.deadletter(receive(queue).lock_token, reason="InvalidMessage", description="member.id is not a GUID")

    [dead] = queue.dead_letters()
    assert (dead.message_id, dead.body, dead.delivery_count) == ("b-1", b"bad", 1)
    assert dict(dead.application_properties) == {"source": "hr", "flag": True}
    assert (dead.reason, dead.description) == ("InvalidMessage", "member.id is not a GUID")
    assert queue.active_count == 0
    assert queue.stats.dead_lettered == 1


def test_settling_twice_or_with_unknown_lock_raises_lock_lost(queue: LocalQueue) -> None:
    """Given a completed delivery, settling it again, or any unknown token, raises LockLostError."""
    queue.send(b"a")
    token = receive(queue).lock_token
    queue.complete(token)

    with pytest.raises(LockLostError, match=str(token)):
        queue.abandon(token)
    with pytest.raises(LockLostError):
        queue.deadletter(str(uuid.uuid4()), reason="r", description="d")
    with pytest.raises(LockLostError):
        queue.complete("not-a-lock-token")
    assert queue.stats.completed == 1


def test_renew_lock_extends_it(queue: LocalQueue, clock: ManualClock) -> None:
    """Given a lock renewed at 50 s, it still holds at 100 s and expires at 110 s."""
    queue.send(b"a")
    token = receive(queue).lock_token
    clock.advance(50)

    assert queue.renew_lock(token) == datetime.fromtimestamp(START + 110, UTC)
    clock.advance(50)
    assert queue.locked_count == 1
    clock.advance(10)
    assert queue.locked_count == 0


def test_dead_letter_queue_can_be_received_and_completed(queue: LocalQueue) -> None:
    """Given a dead-lettered message, DLQ tooling receives it (with its reason) and completes it away."""
    queue.send(b"bad", message_id="b-1")
    queue.deadletter(receive(queue).lock_token, reason="InvalidMessage", description="nope")

    dead = queue.receive_dead_letter()
    assert dead is not None
    assert (dead.message_id, dead.dead_letter_reason, dead.dead_letter_error_description) == (
        "b-1",
        "InvalidMessage",
        "nope",
    )
    assert queue.receive_dead_letter() is None  # locked
    with pytest.raises(ValueError, match="dead-letter"):
        queue.deadletter(dead.lock_token, reason="again", description="again")

    queue.abandon(dead.lock_token)
    dead = queue.receive_dead_letter()
    assert dead is not None
    queue.complete(dead.lock_token)
    assert queue.dead_letters() == []
    assert queue.stats.completed == 0  # counters describe the active sub-queue only


def test_send_rejects_naive_times_and_unsupported_properties(queue: LocalQueue) -> None:
    """Given a naive scheduled time or a property that AMQP cannot carry here, send refuses it."""
    with pytest.raises(ValueError, match="timezone-aware"):
        queue.send(b"a", scheduled_enqueue_time=datetime(2030, 1, 1))
    with pytest.raises(TypeError):
        queue.send(b"a", application_properties={"list": [1]})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="64 bits"):
        queue.send(b"a", application_properties={"big": 2**64})
    assert queue.stats.sent == 0


async def test_local_sender_schedules_copies_and_can_fail(queue: LocalQueue, clock: ManualClock) -> None:
    """Given fail_next(1), the first copy is refused (nothing enqueued) and the next is scheduled."""
    sender = LocalSender(queue)
    sender.fail_next(1)
    copy = {
        "body": b"copy",
        "message_id": "r-1:2",
        "application_properties": {"attempt": 2, "originalMessageId": "m-1"},
        "scheduled_enqueue_time": clock.utcnow() + timedelta(seconds=5),
    }

    with pytest.raises(SendFailedError):
        await sender.schedule(**copy)  # type: ignore[arg-type]
    assert (queue.stats.sent, sender.failed) == (0, 1)

    await sender.schedule(**copy)  # type: ignore[arg-type]
    assert queue.scheduled_count == 1
    clock.advance(5)
    message = receive(queue)
    assert (message.message_id, dict(message.application_properties)) == (
        "r-1:2",
        {"attempt": 2, "originalMessageId": "m-1"},
    )


# -- binding round trip ------------------------------------------------------------------------------------


def test_model_binding_data_layout(queue: LocalQueue) -> None:
    """The content is lock token (bytes_le) + b"x-opt-lock-token" + AMQP, with the host's header fields."""
    queue.send(b"payload")
    locked = receive(queue)

    data = to_model_binding_data(locked)

    assert (data.version, data.source, data.content_type) == (
        "1.0",
        "AzureServiceBusReceivedMessage",
        "application/octet-stream",
    )
    assert data.content[:16] == locked.lock_token.bytes_le
    assert data.content[16:32] == LOCK_TOKEN_MARKER
    assert data.content.find(LOCK_TOKEN_MARKER) == 16


def test_real_converter_yields_sdk_message_with_everything(queue: LocalQueue, clock: ManualClock) -> None:
    """Given a scheduled, redelivered message, the real converter exposes body, ids, properties and times."""
    when = clock.utcnow() + timedelta(seconds=1.5)
    queue.send(
        b'{"requestId": "r-1"}',
        message_id="m-1",
        application_properties={"attempt": 2, "firstAttemptAt": "2024-01-01T00:00:00+00:00", "ok": True, "f": 0.5},
        scheduled_enqueue_time=when,
        content_type="application/json",
        subject="grant",
        correlation_id="c-1",
    )
    clock.advance(2)
    queue.abandon(receive(queue).lock_token)
    locked = receive(queue)

    message = to_received_message(locked)

    assert type(message) is SdkReceivedMessage
    assert body_of(message) == b'{"requestId": "r-1"}'
    assert message.message_id == "m-1"
    # Keys arrive as bytes; str values as bytes too; int, bool and float keep their types.
    assert message.application_properties == {
        b"attempt": 2,
        b"firstAttemptAt": b"2024-01-01T00:00:00+00:00",
        b"ok": True,
        b"f": 0.5,
    }
    assert message.delivery_count == 2
    assert message.sequence_number == locked.sequence_number == 1
    assert isinstance(message.lock_token, uuid.UUID)
    assert str(message.lock_token) == str(locked.lock_token)
    assert message.enqueued_time_utc == when
    assert message.enqueued_time_utc is not None
    assert message.enqueued_time_utc.tzinfo is not None
    assert message.enqueued_time_utc.utcoffset() == timedelta(0)
    assert message.scheduled_enqueue_time_utc == when
    assert message.locked_until_utc == locked.locked_until
    assert (message.content_type, message.subject, message.correlation_id) == ("application/json", "grant", "c-1")
    assert message.dead_letter_reason is None


def test_dead_letter_delivery_exposes_reason_and_description(queue: LocalQueue) -> None:
    """Given a DLQ delivery, the SDK message reports dead_letter_reason and description as str."""
    queue.send(b"bad", message_id="b-1")
    queue.deadletter(receive(queue).lock_token, reason="InvalidMessage", description="member.id is not a GUID")
    dead = queue.receive_dead_letter()
    assert dead is not None

    message = to_received_message(dead)

    assert message.dead_letter_reason == "InvalidMessage"
    assert message.dead_letter_error_description == "member.id is not a GUID"


def test_strings_with_nul_are_refused_not_truncated(queue: LocalQueue) -> None:
    """Given a NUL in a string uamqp would cut short, encoding raises instead of losing the rest."""
    queue.send(b"a", message_id="m\x00-1")
    queue.send(b"b", application_properties={"note": "a\x00b"})

    for locked in (receive(queue), receive(queue)):
        with pytest.raises(ValueError, match="NUL"):
            to_model_binding_data(locked)


#: Text an AMQP peer can carry: no NUL (uamqp would cut the string short) and no lone surrogate (not UTF-8
#: encodable, so no producer can send one). Naming excluded characters turns off Hypothesis's own surrogate
#: exclusion, hence the explicit category.
_AMQP_TEXT = st.characters(exclude_characters="\x00", exclude_categories=("Cs",))


@settings(max_examples=40, deadline=None)
@given(
    body=st.binary(max_size=2048),
    message_id=st.text(_AMQP_TEXT, min_size=1, max_size=128),
    attempt=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    note=st.text(_AMQP_TEXT, max_size=64),
)
def test_round_trip_preserves_arbitrary_body_id_and_properties(
    body: bytes, message_id: str, attempt: int, note: str
) -> None:
    """Any body, message id (AMQP-encodable text) and int/str property survive encode + the real converter's decode."""
    queue = LocalQueue(clock=ManualClock(START))
    queue.send(body, message_id=message_id, application_properties={"attempt": attempt, "note": note})

    message = to_received_message(receive(queue))

    assert body_of(message) == body
    assert message.message_id == message_id
    assert message.application_properties == {b"attempt": attempt, b"note": note.encode()}


# -- settlement through the real ServiceBusMessageActions --------------------------------------------------


@pytest.fixture
def server(queue: LocalQueue) -> Iterator[LocalSettlementServer]:
    previous = ServiceBusMessageActions._instance
    with LocalSettlementServer(queue) as running:
        yield running
    ServiceBusMessageActions._instance = previous


@pytest.fixture
def actions(server: LocalSettlementServer) -> ServiceBusMessageActions:
    return point_message_actions_at(server.address)


def deliver(queue: LocalQueue, body: bytes = b"grant", message_id: str = "m-1") -> SdkReceivedMessage:
    queue.send(body, message_id=message_id)
    return to_received_message(receive(queue))


async def test_complete_through_grpc_removes_message(
    queue: LocalQueue, server: LocalSettlementServer, actions: ServiceBusMessageActions
) -> None:
    """Given the real actions pointed at the server, complete() inside async code settles the queue."""
    message = deliver(queue)

    result = actions.complete(message)  # synchronous: a blocking unary gRPC call

    assert result is None
    assert ServiceBusClientConverter.get_client() is actions
    assert server.calls == (SettlementCall(method="Complete", lock_token=str(message.lock_token)),)
    assert (queue.stats.completed, queue.active_count, queue.locked_count) == (1, 0, 0)


def test_abandon_through_grpc_redelivers(
    queue: LocalQueue, server: LocalSettlementServer, actions: ServiceBusMessageActions
) -> None:
    """Given abandon() over gRPC, the message is redelivered with delivery_count 2."""
    actions.abandon(deliver(queue))

    assert to_received_message(receive(queue)).delivery_count == 2
    assert [call.method for call in server.calls] == ["Abandon"]
    assert queue.stats.abandoned == 1


def test_deadletter_through_grpc_keeps_reason_and_description(
    queue: LocalQueue, server: LocalSettlementServer, actions: ServiceBusMessageActions
) -> None:
    """Given deadletter(reason, description) over gRPC, the DLQ entry and the call log carry both."""
    message = deliver(queue, body=b"bad")

    actions.deadletter(
        message, deadletter_reason="InvalidMessage", deadletter_error_description="member.id is not a GUID"
    )

    [dead] = queue.dead_letters()
    assert (dead.body, dead.reason, dead.description) == (b"bad", "InvalidMessage", "member.id is not a GUID")
    assert server.calls == (
        SettlementCall(
            method="Deadletter",
            lock_token=str(message.lock_token),
            reason="InvalidMessage",
            description="member.id is not a GUID",
        ),
    )


def test_settling_a_lost_lock_raises_settlement_error(
    queue: LocalQueue, clock: ManualClock, server: LocalSettlementServer, actions: ServiceBusMessageActions
) -> None:
    """Given a settled or expired lock, the real client raises SettlementError wrapping FAILED_PRECONDITION."""
    settled = deliver(queue, message_id="m-1")
    actions.complete(settled)
    with pytest.raises(SettlementError) as twice:
        actions.complete(settled)

    expired = deliver(queue, message_id="m-2")
    clock.advance(60)
    with pytest.raises(SettlementError) as late:
        actions.deadletter(expired, deadletter_reason="r", deadletter_error_description="d")

    for error in (twice.value, late.value):
        assert isinstance(error.original, grpc.RpcError)
        assert error.original.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert twice.value.method == "complete"
    assert [(call.method, call.code) for call in server.calls] == [
        ("Complete", "OK"),
        ("Complete", "FAILED_PRECONDITION"),
        ("Deadletter", "FAILED_PRECONDITION"),
    ]
    assert queue.stats.completed == 1
    assert receive(queue).message_id == "m-2"  # the expired delivery is back


def test_renew_lock_through_grpc_and_defer_is_unimplemented(
    queue: LocalQueue, clock: ManualClock, server: LocalSettlementServer, actions: ServiceBusMessageActions
) -> None:
    """Given renew_message_lock() the lock is extended; defer() answers UNIMPLEMENTED and is recorded."""
    message = deliver(queue)
    clock.advance(50)
    actions.renew_message_lock(message)
    clock.advance(50)
    assert queue.locked_count == 1

    with pytest.raises(SettlementError) as deferred:
        actions.defer(message)

    assert deferred.value.original.code() is grpc.StatusCode.UNIMPLEMENTED
    assert [(call.method, call.code) for call in server.calls] == [
        ("RenewMessageLock", "OK"),
        ("Defer", "UNIMPLEMENTED"),
    ]


def test_several_servers_in_one_process(queue: LocalQueue, clock: ManualClock, server: LocalSettlementServer) -> None:
    """Given the singleton already pointed at one server, re-pointing sends settlements to the next one."""
    point_message_actions_at(server.address)
    other_queue = LocalQueue(clock=clock)
    with LocalSettlementServer(other_queue) as other:
        actions = point_message_actions_at(other.address)
        assert ServiceBusMessageActions.get_instance() is actions

        actions.complete(deliver(other_queue))

        assert [call.method for call in other.calls] == ["Complete"]
    assert server.calls == ()
    assert other_queue.stats.completed == 1


def test_stopped_server_makes_settlement_fail(queue: LocalQueue) -> None:
    """Given the server has stopped, the real client raises SettlementError (UNAVAILABLE)."""
    previous = ServiceBusMessageActions._instance
    try:
        with LocalSettlementServer(queue) as stopped:
            actions = point_message_actions_at(stopped.address)
        with pytest.raises(SettlementError) as failed:
            actions.complete(deliver(queue))
        assert failed.value.original.code() is grpc.StatusCode.UNAVAILABLE
        with pytest.raises(RuntimeError, match="not started"):
            _ = stopped.address
    finally:
        ServiceBusMessageActions._instance = previous
    assert queue.locked_count == 1
