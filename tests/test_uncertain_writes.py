"""A Graph write whose outcome is unknown (its client gave up, the connection dropped after sending, a 5xx) leaves
its member and target uncertain: a write of the other action is made at once and made again once the uncertain
write can no longer land, so a late landing never outlives a newer intent. The final directory is the newest
intent, and every status the app reports is true of the directory when it is reported."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from grants_local.binding import to_received_message
from grants_local.graph_double import Fault, GraphDouble
from shared.core.statuses import Status
from tests.conftest import AU, USER, Run, body
from tests.test_function_app import GRANT

T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
WINDOW = timedelta(minutes=5)


async def test_an_add_that_lands_after_its_client_gave_up_never_outlives_a_newer_remove(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    """The add's POST is held past the client's timeout (reported GraphUnavailable, the pair left uncertain); a newer
    remove runs (not_member: true then) and is confirmed later; the POST lands; the add's retry is superseded; the
    remove's confirmation removes the member the late write added (revoked). The directory ends as the newest intent,
    and each status was true of the directory when it was reported."""
    run: Run = await make_run(GRANTS_RETRY_BASE_SECONDS="3600", GRANTS_RETRY_MAX_SECONDS="3600")
    run.app.services.http.timeout = httpx.Timeout(1.0, connect=5.0, pool=30.0)
    held = Fault.hold(method="POST", path=AU)
    graph.inject(held)
    add = body(requestId="ADD-1", member={"id": USER, "type": "user"}, source={"system": "bulk"})
    run.queue.send(add, message_id="m-add")
    locked = run.queue.receive()
    assert locked is not None
    await GRANT(receivedmessage=to_received_message(locked), message_actions=run.actions)
    assert run.app.outcomes() == {}  # not terminal: GraphUnavailable, retried later (the POST is still held)

    remove = body(
        requestId="REMOVE-1",
        action="remove",
        member={"id": USER, "type": "user"},
        source={"system": "bulk"},
    )
    run.queue.send(remove, message_id="m-remove")
    locked = run.queue.receive()
    assert locked is not None
    await GRANT(receivedmessage=to_received_message(locked), message_actions=run.actions)
    first = run.app.outcomes()["m-remove"]
    assert first["outcome"] == Status.NOT_MEMBER  # true now; the add's write may still land: confirmed later
    assert "carried out once more at" in first["description"]
    assert graph.members_of(AU) == set()

    held.release()  # the add's POST lands after its client gave up
    assert held.wait_landed()
    assert graph.members_of(AU) == {USER}

    outcomes = await run.deliver()  # the retries, as their times come
    assert graph.members_of(AU) == set()  # the newest intent: removed
    assert outcomes["m-remove"]["outcome"] == Status.REVOKED  # true: it removed the member the late write added
    assert outcomes["m-add"]["outcome"] == Status.SUPERSEDED
    status = await run.app.services.ledger.status("REMOVE-1", producer="bulk")
    assert status is not None
    assert status.status is Status.REVOKED
    removal = [request for request in graph.requests if request.method == "DELETE"]
    assert len(removal) == 2  # the remove, and its confirmation once the add's write could no longer land


async def test_a_write_answered_5xx_leaves_the_pair_uncertain_and_its_retry_proceeds_at_once(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    """A 503 to a POST may have been applied: the add stays in doubt; the add's own retry (the same effect) does not
    wait, and its answered write does not end the first write's doubt, which may still land (a remove made before it
    can no longer would be confirmed then)."""
    run: Run = await make_run()
    graph.inject(Fault.status(503, method="POST"))
    outcomes = await run.deliver(body(requestId="ADD-2"))
    assert (outcomes["m-1"]["outcome"], outcomes["m-1"]["attempts"]) == (Status.GRANTED, 2)
    state = await run.app.services.ledger.pair(f"au.{AU}.{USER}")
    assert state is not None
    assert [(doubt.request_id, doubt.action.value) for doubt in state.doubts] == [("ADD-2", "add")]
    assert state.applied is not None
    assert (state.applied.request_id, state.applied.action.value) == ("ADD-2", "add")


async def test_a_confirmation_that_cannot_be_queued_waits_for_the_lock_expiry_and_the_directory_still_converges(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    """The newer remove on an uncertain pair cannot send its confirming copy (the queue refuses once): the remove is
    neither completed without it nor abandoned, but left to its lock expiry; redelivered, it is made again with its
    confirmation, and the late add's landing does not outlive it."""
    run: Run = await make_run(GRANTS_RETRY_BASE_SECONDS="3600", GRANTS_RETRY_MAX_SECONDS="3600")
    run.app.services.http.timeout = httpx.Timeout(1.0, connect=5.0, pool=30.0)
    held = Fault.hold(method="POST", path=AU)
    graph.inject(held)
    add = body(requestId="ADD-3", member={"id": USER, "type": "user"}, source={"system": "bulk"})
    run.queue.send(add, message_id="m-add")
    locked = run.queue.receive()
    assert locked is not None
    await GRANT(receivedmessage=to_received_message(locked), message_actions=run.actions)

    remove = body(requestId="REMOVE-3", action="remove", member={"id": USER, "type": "user"}, source={"system": "bulk"})
    run.app.sender.fail_next(1)  # the remove's confirming copy
    run.queue.send(remove, message_id="m-remove")
    locked = run.queue.receive()
    assert locked is not None
    await GRANT(receivedmessage=to_received_message(locked), message_actions=run.actions)
    assert "m-remove" not in run.app.outcomes()
    assert run.app.calls().count("Complete") == 1  # the add's original, after its retry copy; not the remove
    assert run.queue.stats.abandoned == 0

    held.release()
    assert held.wait_landed()
    await run.deliver()
    assert graph.members_of(AU) == set()
    assert run.queue.stats.locks_expired == 1
    status = await run.app.services.ledger.status("REMOVE-3", producer="bulk")
    assert status is not None
    assert status.status in (Status.REVOKED, Status.NOT_MEMBER)
