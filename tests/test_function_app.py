"""The function app end to end: the registered function object, the extension's real message and settlement
classes over gRPC, the in-process queue, the Graph double and the real managed-identity credential."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest

import function_app
from grants_local.app import LocalApp, local_app
from grants_local.binding import to_received_message
from grants_local.graph_double import Fault, GraphDouble
from grants_local.host import LocalHost, registered_function
from grants_local.queue import ManualClock
from grants_local.run import run_local
from shared.core.errors import ConfigError
from shared.core.messaging import Delivery
from shared.core.statuses import Settled
from shared.service.settle import Ending, settle
from tests.conftest import AU, LATE_USER, UNKNOWN, USER, USER_2, body, settings_for

GRANT = registered_function(function_app.app, "grant_membership")


def grant(request_id: str = "req-1", member: str = USER, **extra: Any) -> bytes:
    return body(requestId=request_id, member={"id": member, "type": "user"}, **extra)


@pytest.fixture
async def harness(graph: GraphDouble) -> AsyncIterator[LocalApp]:
    """The app on the local host, four attempts 10 s apart (doubling, with jitter), on a manual clock."""
    settings = settings_for(graph, GRANTS_MAX_ATTEMPTS="4", GRANTS_RETRY_BASE_SECONDS="10")
    async with local_app(settings) as app:
        yield app


async def test_a_grant_is_completed_once(harness: LocalApp, graph: GraphDouble) -> None:
    harness.queue.send(grant(), message_id="m-1")
    await harness.host().drain()
    outcome = harness.outcomes()["m-1"]
    assert (outcome["outcome"], outcome["attempts"], outcome["graphRequestId"] is not None) == ("granted", 1, True)
    assert harness.calls() == ["Complete"]
    assert graph.members_of(AU) == {USER}
    assert harness.queue.dead_letters() == []


async def test_two_transient_failures_then_success_takes_three_attempts(harness: LocalApp, graph: GraphDouble) -> None:
    graph.inject(Fault.status(503), Fault.status(429, retry_after=30))
    harness.queue.send(grant(), message_id="m-1")
    await harness.host().drain()
    outcome = harness.outcomes()["m-1"]
    assert (outcome["outcome"], outcome["attempts"]) == ("granted", 3)
    assert harness.calls() == ["Complete", "Complete", "Complete"]  # the original, then each copy
    assert harness.queue.stats.sent == 3
    assert harness.queue.dead_letters() == []
    assert graph.members_of(AU) == {USER}


async def test_the_retry_copy_carries_the_next_attempt_and_a_new_message_id(
    harness: LocalApp, graph: GraphDouble
) -> None:
    graph.inject(Fault.status(503))
    harness.queue.send(grant("req-9"), message_id="m-1")
    first = harness.queue.receive()
    assert first is not None
    started = harness.clock()
    await GRANT(receivedmessage=to_received_message(first), message_actions=harness.actions)
    due = harness.queue.next_due_time()
    assert due is not None
    assert started <= due <= started + 10
    harness.clock.advance_to(due)
    copy = harness.queue.receive()
    assert copy is not None
    assert copy.message_id.startswith("~retry:")  # the app's own namespace: no producer id collides with it
    assert ":2~" in copy.message_id  # attempt 2, keyed by the app (no producer can send under it first)
    assert copy.application_properties["attempt"] == 2
    assert copy.application_properties["originalMessageId"] == "m-1"
    assert datetime.fromisoformat(str(copy.application_properties["firstAttemptAt"])).timestamp() == started


async def test_retries_exhausted_dead_letter_with_the_last_error(harness: LocalApp, graph: GraphDouble) -> None:
    graph.inject(*[Fault.status(503)] * 4)
    harness.queue.send(grant(), message_id="m-1")
    await harness.host().drain()
    [dead] = harness.queue.dead_letters()
    assert dead.reason == "GraphUnavailable"
    assert dead.description is not None
    assert "gave up after 4 attempts" in dead.description
    assert "Last Graph answer: 503 serviceNotAvailable" in dead.description
    assert harness.outcomes()["m-1"]["attempts"] == 4
    assert graph.members_of(AU) == set()


async def test_a_member_that_never_appears_is_dead_lettered_after_the_window(
    harness: LocalApp, graph: GraphDouble
) -> None:
    harness.queue.send(grant(member=UNKNOWN), message_id="m-1")
    await harness.host().drain()
    [dead] = harness.queue.dead_letters()
    assert dead.reason == "MemberNotFound"


async def test_a_member_that_replicates_late_is_granted_on_a_later_attempt(
    harness: LocalApp, graph: GraphDouble
) -> None:
    harness.queue.send(grant(member=LATE_USER), message_id="m-1")
    await harness.host().drain()
    assert (harness.outcomes()["m-1"]["outcome"], harness.outcomes()["m-1"]["attempts"]) == ("granted", 3)


async def test_permanent_failure_is_dead_lettered_at_once(harness: LocalApp, graph: GraphDouble) -> None:
    graph.deny("administrativeUnit")
    harness.queue.send(grant(), message_id="m-1")
    await harness.host().drain()
    [dead] = harness.queue.dead_letters()
    assert dead.reason == "Forbidden"
    assert dead.description is not None
    assert "AdministrativeUnit.ReadWrite.All" in dead.description
    assert harness.calls() == ["Deadletter"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "InvalidJson"),
        (b"\xef\xbb\xbf{}", "InvalidJson"),
        (b"x" * 70_000, "MessageTooLarge"),
        (json.dumps({"schemaVersion": 3}).encode(), "UnsupportedSchemaVersion"),
        (grant(extra_field=1), "SchemaViolation"),
        (grant(member="../../users/" + USER), "InvalidId"),
        (grant(member=USER.replace("-", "%2F", 1)), "InvalidId"),
    ],
)
async def test_bad_input_is_dead_lettered_without_a_graph_call(
    harness: LocalApp, graph: GraphDouble, body: bytes, reason: str
) -> None:
    harness.queue.send(body, message_id="m-1")
    await harness.host().drain()
    [dead] = harness.queue.dead_letters()
    assert dead.reason == reason
    assert graph.requests == []
    assert harness.calls() == ["Deadletter"]


async def test_a_crash_after_graph_succeeded_is_redelivered_and_already_member(
    harness: LocalApp, graph: GraphDouble
) -> None:
    """Settlement fails once (the host died after the grant): the delivery logs unsettled (the ladder catches the
    failure: the function does not raise), the lock expires, the message comes back."""
    harness.queue.send(grant(), message_id="m-1")
    crashed = CrashingActions(harness.actions, crash_on="complete")
    host = LocalHost(queue=harness.queue, function=GRANT, actions=crashed, clock=harness.clock)
    await host.drain()
    assert host.failed_invocations == 0
    assert harness.recorder.records[0]["outcome"] == "unsettled"
    outcome = harness.outcomes()["m-1"]
    assert (outcome["outcome"], outcome["attempts"]) == ("already_member", 2)
    assert graph.members_of(AU) == {USER}
    assert [r.status for r in graph.requests if r.method == "POST"] == [204, 400]


async def test_a_copy_that_cannot_be_sent_leaves_the_original_to_its_lock_expiry(
    harness: LocalApp, graph: GraphDouble
) -> None:
    """Not abandoned (delivered again at once, so an outage would spend MaxDeliveryCount in seconds): no settlement
    call, the lock expires and the redelivery grants."""
    graph.inject(Fault.status(503))
    harness.sender.fail_next(1)
    harness.queue.send(grant(), message_id="m-1")
    await harness.host().drain()
    assert harness.calls() == ["Complete"]
    assert (harness.queue.stats.locks_expired, harness.queue.stats.abandoned) == (1, 0)
    assert harness.outcomes()["m-1"]["outcome"] == "granted"
    assert graph.members_of(AU) == {USER}


async def test_the_copy_is_scheduled_before_the_original_is_completed(harness: LocalApp, graph: GraphDouble) -> None:
    graph.inject(Fault.status(503))
    seen: list[list[str]] = []
    real_schedule = harness.sender.schedule

    async def schedule(**kwargs: Any) -> None:
        seen.append(app.calls())
        await real_schedule(**kwargs)

    async with local_app(
        settings_for(graph, GRANTS_MAX_ATTEMPTS="4"), queue=harness.queue, sender=lambda _: _Sender(schedule)
    ) as app:
        app.queue.send(grant(), message_id="m-1")
        await app.drain()
    assert seen == [[]]  # when the copy was sent, nothing had been settled yet
    assert app.calls() == ["Complete", "Complete"]


async def test_an_unexpected_exception_abandons_and_never_completes(harness: LocalApp) -> None:
    harness.queue.send(grant(), message_id="m-1")
    locked = harness.queue.receive()
    assert locked is not None

    settled: Settled = await settle(
        Delivery.of(to_received_message(locked)),
        RuntimeError("a bug"),
        Ending(kind="grant", line=lambda settled, finished: {"outcome": settled.outcome.value}),
        actions=harness.actions,
        policy=harness.services.retry_policy,
        now=harness.clock.utcnow,
        deadline=5.0,
    )
    assert (settled.outcome, settled.terminal) == ("abandoned", False)
    assert harness.calls() == ["Abandon"]  # and no Complete


async def test_every_input_line_yields_one_terminal_outcome_under_faults(graph: GraphDouble) -> None:
    graph.inject(Fault.status(503), Fault.drop(), Fault.status(429, retry_after=5), Fault.status(504))
    lines = [grant(f"r-{n}", member=[USER, USER_2, LATE_USER, UNKNOWN][n % 4]) for n in range(20)]
    lines += [b"{broken", b"", grant("r-bad", member="nope")]
    clock = ManualClock()
    run = await run_local(
        lines,
        env={"GRAPH_BASE_URL": graph.base_url, "GRANTS_MEMBER_NOT_FOUND_WINDOW_SECONDS": "60"},
        clock=clock,
        producer="bulk",
    )
    assert run.complete
    assert [o.line for o in run.outcomes] == [n for n in range(1, 24) if n != 22]  # the blank line is no message
    # five requests per member and unit: an older one still retrying when a newer one ran ends superseded
    assert {o.outcome for o in run.outcomes} <= {"granted", "already_member", "superseded", "dead_lettered"}
    assert graph.members_of(AU) == {USER, USER_2, LATE_USER}
    dead = {o.line: o.reason for o in run.outcomes if o.outcome == "dead_lettered"}
    assert set(dead.values()) == {"MemberNotFound", "InvalidJson", "InvalidId"}


class _Sender:
    def __init__(self, schedule: Any) -> None:
        self.schedule = schedule


class CrashingActions:
    """The real message actions, except that one settlement call raises, as if the host died before it."""

    def __init__(self, actions: Any, *, crash_on: str) -> None:
        self._actions = actions
        self._crash_on = crash_on
        self.crashed = False

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._actions, name)
        if name != self._crash_on or self.crashed:
            return method

        def crash(*args: Any, **kwargs: Any) -> None:
            self.crashed = True
            raise ConnectionError("the host went away before settling")

        return crash


async def test_run_local_refuses_a_local_graph_without_a_local_token_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without IDENTITY_ENDPOINT the credential would probe Azure's metadata service: never from a local run."""
    monkeypatch.delenv("IDENTITY_ENDPOINT", raising=False)
    with pytest.raises(ConfigError, match="IDENTITY_ENDPOINT"):
        await run_local([grant()], env={"GRAPH_BASE_URL": "http://127.0.0.1:9/v1.0"})
