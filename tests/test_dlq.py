"""Dead-letter tooling: resubmit moves exactly the selected messages, an interruption loses none, purge."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from azure.servicebus import ServiceBusReceivedMessage

from grants_cli.backends import dead_letter_info, to_service_bus_message
from grants_cli.dlq import Selector, purge, resubmit, resubmitted_copy, run_dlq
from grants_common.queues import HeldDeadLetter, Outgoing
from grants_local.backend import LocalBackend, open_local_backend
from grants_local.binding import to_received_message
from grants_local.namespace import LocalNamespace
from grants_local.queue import LocalQueue, ManualClock

ROOT = Path(__file__).resolve().parent.parent


def dead_lettered(queue: LocalQueue, *reasons: str) -> None:
    """One message per reason (requestId r-1, r-2, …), each delivered as a third attempt and dead-lettered."""
    for number, reason in enumerate(reasons, start=1):
        body = json.dumps({"schemaVersion": 1, "requestId": f"r-{number}"}).encode()
        properties = {"attempt": 3, "firstAttemptAt": "2026-11-23T09:00:00+00:00", "originalMessageId": f"m-{number}"}
        queue.send(body, message_id=f"r-{number}:3", application_properties=properties)
        locked = queue.receive()
        assert locked is not None
        queue.deadletter(locked.lock_token, reason=reason, description=f"{reason} for r-{number}")


def request_ids(bodies: list[bytes]) -> list[str]:
    return sorted(json.loads(body)["requestId"] for body in bodies)


def active(queue: LocalQueue) -> list[tuple[str, bytes, dict[str, object]]]:
    found = []
    while (locked := queue.receive()) is not None:
        found.append((locked.message_id, locked.body, dict(locked.application_properties)))
    return found


def test_given_mixed_dead_letters_when_resubmitting_by_reason_then_exactly_those_move_with_attempts_reset() -> None:
    queue = LocalQueue(clock=ManualClock())
    dead_lettered(queue, "MemberNotFound", "TargetNotFound", "MemberNotFound", "PolicyDenied", "MemberNotFound")
    sent = resubmit(LocalBackend(queue), Selector(reason="MemberNotFound"))
    assert len(sent) == 3
    assert queue.locked_count == 0  # the skipped ones were abandoned, not left locked
    assert [(d.reason, json.loads(d.body)["requestId"]) for d in queue.dead_letters()] == [
        ("TargetNotFound", "r-2"),
        ("PolicyDenied", "r-4"),
    ]
    moved = active(queue)
    assert request_ids([body for _, body, _ in moved]) == ["r-1", "r-3", "r-5"]
    for message_id, body, properties in moved:
        request_id = json.loads(body)["requestId"]
        assert message_id.startswith("~resubmit:")
        assert message_id.endswith(f":{properties['resubmission']}")
        assert properties["originalMessageId"] == "m" + request_id[1:]
        assert "attempt" not in properties
        assert "firstAttemptAt" not in properties


class InterruptedOnSend(LocalBackend):
    """The local backend, but Ctrl-C arrives during the k-th send (before the message is accepted)."""

    def __init__(self, queue: LocalQueue, *, interrupt_at: int) -> None:
        super().__init__(queue)
        self._interrupt_at = interrupt_at
        self.sends = 0

    def send(self, message: Outgoing) -> None:
        self.sends += 1
        if self.sends == self._interrupt_at:
            raise KeyboardInterrupt
        super().send(message)


class InterruptedBeforeComplete(LocalBackend):
    """Ctrl-C arrives after the k-th copy was sent, before its dead letter is completed."""

    def __init__(self, queue: LocalQueue, *, interrupt_at: int) -> None:
        super().__init__(queue)
        self._interrupt_at = interrupt_at
        self.completions = 0

    def complete(self, held: HeldDeadLetter) -> None:
        self.completions += 1
        if self.completions == self._interrupt_at:
            raise KeyboardInterrupt
        super().complete(held)


@pytest.mark.parametrize("interrupt_at", [1, 2, 4])
@pytest.mark.parametrize("backend_type", [InterruptedOnSend, InterruptedBeforeComplete])
def test_given_an_interrupted_resubmit_then_every_message_is_still_dead_lettered_or_resubmitted(
    interrupt_at: int, backend_type: Callable[..., LocalBackend]
) -> None:
    clock = ManualClock()
    queue = LocalQueue(clock=clock)
    dead_lettered(queue, *["GraphUnavailable"] * 4)
    with pytest.raises(KeyboardInterrupt):
        resubmit(backend_type(queue, interrupt_at=interrupt_at), Selector())
    clock.advance(61)  # a lock the interrupted command held expires (the local namespace also drops it on save)
    assert queue.locked_count == 0
    still_dead = request_ids([d.body for d in queue.dead_letters()])
    resubmitted = request_ids([body for _, body, _ in active(queue)])
    assert sorted(set(still_dead) | set(resubmitted)) == ["r-1", "r-2", "r-3", "r-4"]
    duplicated = set(still_dead) & set(resubmitted)
    # Interrupted between send and complete, that one message exists twice (harmless: grants are idempotent).
    assert duplicated == (set() if backend_type is InterruptedOnSend else {f"r-{interrupt_at}"})


def test_given_dead_letters_when_purging_by_reason_then_only_those_are_deleted_and_no_yes_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = LocalQueue(clock=ManualClock())
    dead_lettered(queue, "InvalidJson", "TargetNotFound", "InvalidJson")
    deleted = purge(LocalBackend(queue), Selector(reason="InvalidJson"))
    assert [d.message_id for d in deleted] == ["r-1:3", "r-3:3"]
    assert [d.reason for d in queue.dead_letters()] == ["TargetNotFound"]
    assert queue.locked_count == 0

    monkeypatch.setenv("GRANTS_LOCAL_NAMESPACE", str(tmp_path / "ns"))
    out = io.StringIO()
    code = run_dlq(
        action="purge",
        selector=Selector(),
        dry_run=False,
        yes=False,
        open_backend=lambda: open_local_backend("grant-membership"),
        queue="grant-membership",
        out=out,
    )
    assert code == 2
    assert "add --yes" in out.getvalue()


def test_given_a_namespace_when_reopened_then_messages_dead_letters_and_duplicate_history_persist(
    tmp_path: Path,
) -> None:
    namespace = LocalNamespace(tmp_path / "ns")
    with namespace.open("grant-membership") as (queue, _):
        dead_lettered(queue, "MemberNotFound")
        queue.send(b"{}", message_id="pending", application_properties={"attempt": 2})
        assert queue.receive() is not None  # locked when the command ends: saved as deliverable again
    with namespace.open("grant-membership") as (queue, _):
        assert [(d.message_id, d.reason, d.application_properties["attempt"]) for d in queue.dead_letters()] == [
            ("r-1:3", "MemberNotFound", 3)
        ]
        queue.send(b"{}", message_id="pending")  # within the duplicate-detection window
        assert queue.stats.duplicates_dropped == 1
        locked = queue.receive()
        assert locked is not None
        assert (locked.message_id, locked.delivery_count, dict(locked.application_properties)) == (
            "pending",
            2,
            {"attempt": 2},
        )


def test_given_a_local_bulk_job_when_dead_letters_are_resubmitted_then_they_run_again_through_the_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Separate commands share the local namespace; a resubmitted message's retries are not deduplicated away.
    A bulk job goes to the bulk queue (its own lane), so its dead letters are that queue's."""
    from grants_cli.main import main

    monkeypatch.setenv("GRANTS_LOCAL_NAMESPACE", str(tmp_path / "ns"))
    for name in ("GRAPH_BASE_URL", "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "AZURE_CLIENT_ID", "MSI_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    job = str(ROOT / "examples" / "bulk-job.csv")
    assert main(["submit", job, "--job-id", "t", "--local"]) == 0
    out = capsys.readouterr().out
    assert "t:1                          granted" in out
    # a member not found yet is given up after its window and at least 5 such answers (how many: the backoff's jitter)
    tries = re.search(r"t:4 +dead_lettered +MemberNotFound +(\d+) ", out)
    assert tries is not None
    assert int(tries[1]) >= 5

    assert main(["dlq", "list", "--local", "--queue", "grant-membership-bulk"]) == 0
    listed = capsys.readouterr().out
    assert re.search(rf"t:4 +MemberNotFound +{tries[1]} ", listed), (out, listed)
    assert "1 dead letter(s)" in listed

    assert main(["dlq", "resubmit", "--local", "--queue", "grant-membership-bulk", "--reason", "MemberNotFound"]) == 0
    out = capsys.readouterr().out
    assert "resubmitted t:4 (MemberNotFound) as ~resubmit:" in out
    # the member still does not exist: five fresh attempts at least (their retry copies were not dropped), then back
    again = re.search(r"t:4 +dead_lettered +MemberNotFound +(\d+) ", out)
    assert again is not None
    assert int(again[1]) >= 5
    with LocalNamespace(tmp_path / "ns").open("grant-membership-bulk") as (queue, _):
        (dead,) = queue.dead_letters()
        assert str(dead.application_properties["originalMessageId"]).startswith("t:4:")
        assert str(dead.message_id).startswith("~retry:")  # the resubmission's own last attempt


def test_given_a_real_received_dead_letter_when_read_by_the_service_bus_adapter_then_the_copy_is_clean() -> None:
    """`dead_letter_info` reads azure.servicebus's ServiceBusReceivedMessage (built by the extension's converter)."""
    queue = LocalQueue(clock=ManualClock())
    dead_lettered(queue, "MemberNotFound")
    locked = queue.receive_dead_letter()
    assert locked is not None
    message = to_received_message(locked)
    assert isinstance(message, ServiceBusReceivedMessage)
    info = dead_letter_info(message)
    assert (info.message_id, info.request_id, info.reason, info.description, info.attempts) == (
        "r-1:3",
        "r-1",
        "MemberNotFound",
        "MemberNotFound for r-1",
        4,  # attempt 3, and this dead letter has now been delivered twice (once to the app, once to us)
    )
    copy = resubmitted_copy(info, suffix="abcd1234")
    assert copy.message_id.startswith("~resubmit:")
    assert copy.message_id.endswith(":abcd1234")
    assert info.enqueued_time is not None
    assert dict(copy.application_properties) == {  # when the request arrived: the copy is never a newer intent
        "originalMessageId": "m-1",
        "resubmission": "abcd1234",
        "arrivedAt": info.enqueued_time.isoformat(),
    }
    sdk_copy = to_service_bus_message(copy)
    assert (sdk_copy.message_id, sdk_copy.application_properties) == (copy.message_id, copy.application_properties)
