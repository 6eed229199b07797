"""Through the local host, the Graph double and the ledger in Azurite: request ids that name one request, intents
that cannot be lost or reordered (newest intent wins), and expiries that cannot fail open."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from grants_local.binding import to_received_message
from grants_local.graph_double import Fault, GraphDouble
from grants_local.queue import LocalSender
from grants_local.run import run_local
from shared.runtime import services
from tests.conftest import AU, LATE_USER, USER, USER_2, ManualClock, body
from tests.test_function_app import GRANT

DELETE = "DELETE"


def at(run: Any, seconds: float = 0) -> str:
    """An RFC 3339 time `seconds` after the run's clock now."""
    return datetime.fromtimestamp(run.clock() + seconds, UTC).isoformat().replace("+00:00", "Z")


def by_request(outcomes: dict[str, dict[str, Any]], request_id: str) -> list[dict[str, Any]]:
    return [record for record in outcomes.values() if record["requestId"] == request_id]


# --- 1. silent loss ----------------------------------------------------------------------------------------------


async def test_a_request_id_reused_for_another_member_is_refused_not_lost(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    """Two bulk rows with one requestId and different members, both hit by a 503: the first is granted after its
    retry, the second is dead-lettered RequestIdConflict; neither disappears."""
    graph.inject(Fault.status(503, method="POST"), Fault.status(503, method="POST"))
    run = await make_run()
    outcomes = await run.deliver(
        body(requestId="CHG0042", member={"id": USER}), body(requestId="CHG0042", member={"id": USER_2})
    )
    results = sorted((o["outcome"], o["reason"]) for o in outcomes.values())
    assert results == [("dead_lettered", "RequestIdConflict"), ("granted", None)]
    assert len(graph.members_of(AU)) == 1
    assert run.queue.active_count + run.queue.scheduled_count == 0


async def test_an_add_and_a_remove_under_one_request_id_are_a_conflict(make_run: Callable[..., Any]) -> None:
    run = await make_run()
    outcomes = await run.deliver(body(requestId="CHG7"), body(requestId="CHG7", action="remove"))
    first, second = sorted(o["reason"] or o["outcome"] for o in outcomes.values())
    assert first == "RequestIdConflict"  # whichever came second; the first did what it asked
    assert second in ("granted", "released")  # the remove first ends a grant that made nothing: released, unwritten


async def test_a_bulk_job_named_like_a_ticket_does_not_swallow_the_tickets_retry(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    """A webhook request RITM7 (MessageId RITM7) retried after a 503, and bulk job RITM7's rows (MessageIds and
    request ids RITM7:1, RITM7:2): the retry copy's MessageId is the app's own, so all three are granted."""
    graph.inject(Fault.status(503, method="POST"))
    run = await make_run()
    run.queue.send(body(requestId="RITM7", member={"id": USER}, source={"system": "bulk"}), message_id="RITM7")
    run.queue.send(body(requestId="RITM7:1", member={"id": USER_2}), message_id="RITM7:1")
    run.queue.send(body(requestId="RITM7:2", member={"id": LATE_USER}), message_id="RITM7:2")
    await run.app.drain()
    outcomes = run.app.outcomes()
    assert {key: o["outcome"] for key, o in outcomes.items()} == {
        "RITM7": "granted",
        "RITM7:1": "granted",
        "RITM7:2": "granted",
    }
    assert run.queue.stats.duplicates_dropped == 0
    assert graph.members_of(AU) == {USER, USER_2, LATE_USER}


async def test_a_duplicate_of_a_request_mid_retry_gets_the_outcome_of_the_request(graph: GraphDouble) -> None:
    """run-local with one request twice, the first hit by a 503: both lines end with the request's outcome."""
    graph.inject(Fault.status(503, method="POST"))
    line = body(requestId="INC1")
    run = await run_local([line, line], env={"GRAPH_BASE_URL": graph.base_url}, clock=ManualClock(), producer="bulk")
    assert run.complete
    assert [(o.line, o.outcome) for o in run.outcomes] == [(1, "granted"), (2, "granted")]
    assert [r.method for r in graph.requests if r.method == "POST" and r.status == 204] == ["POST"]


# --- 2. access that outlives an expiry -------------------------------------------------------------------------------


async def test_the_same_time_bound_request_twice_still_ends_at_its_expiry(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    run = await make_run()
    grant = body(requestId="TMP1", expiresAt=at(run, 3600))
    outcomes = await run.deliver(grant, grant)
    assert sorted(o["outcome"] for o in outcomes.values() if o["requestId"] == "TMP1") == ["duplicate", "granted"]
    assert [o["outcome"] for o in by_request(outcomes, "~expire:TMP1")] == ["revoked"]
    assert graph.members_of(AU) == set()


async def test_an_expiry_removal_runs_even_where_the_source_may_only_add(
    make_run: Callable[..., Any], graph: GraphDouble, tmp_path: Path
) -> None:
    """A source whose policy allows only add: its time-bound grant is still removed at expiry (the app's own act,
    confirmed by the ledger), while its own remove requests stay denied."""
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"sources": {"bulk": {"actions": ["add"], "administrativeUnits": ["*"]}}}))
    run = await make_run(GRANTS_POLICY=str(policy))
    outcomes = await run.deliver(body(requestId="B1", expiresAt=at(run, 600)))
    assert [o["outcome"] for o in by_request(outcomes, "~expire:B1")] == ["revoked"]
    assert graph.members_of(AU) == set()
    denied = await run.deliver(body(requestId="B2", member={"id": USER_2}, action="remove"))
    assert by_request(denied, "B2")[0]["reason"] == "PolicyDenied"


async def test_a_removal_that_keeps_failing_stays_pending_and_the_sweep_removes_the_member(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    """The expiry removal fails eight times (dead-lettered): the ledger still holds the pending removal, and the
    next sweep's removal ends the membership."""
    run = await make_run(GRANTS_MAX_ATTEMPTS="8")
    graph.inject(*(Fault.status(503, method=DELETE) for _ in range(8)))
    outcomes = await run.deliver(body(requestId="T9", expiresAt=at(run, 60)))
    assert [o["reason"] for o in by_request(outcomes, "~expire:T9")] == ["GraphUnavailable"]
    assert graph.members_of(AU) == {USER}  # fail-open without the sweep
    assert await services().expiry_sweep() == 1
    outcomes = await run.deliver()
    assert [o["outcome"] for o in by_request(outcomes, "~expire:~expire:T9")] == ["revoked"]
    assert graph.members_of(AU) == set()
    assert await services().expiry_sweep() == 0  # nothing pending any more


async def test_a_removal_that_can_never_be_scheduled_is_done_by_the_sweep(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    """Scheduling the removal fails every time (the add ends dead-lettered ExpiryNotScheduled, the member in);
    once the grant has expired, the sweep removes the member."""
    run = await make_run(GRANTS_MAX_ATTEMPTS="3")
    sender = run.app.sender
    assert isinstance(sender, LocalSender)
    real = sender.schedule

    async def no_expiry(**kwargs: Any) -> None:
        if str(kwargs["message_id"]).startswith("~expire:"):
            raise RuntimeError("the queue refuses it")
        await real(**kwargs)

    sender.schedule = no_expiry  # type: ignore[method-assign]
    outcomes = await run.deliver(body(requestId="T10", expiresAt=at(run, 3600)))
    assert by_request(outcomes, "T10")[0]["reason"] == "ExpiryNotScheduled"
    assert graph.members_of(AU) == {USER}
    assert await services().expiry_sweep() == 0  # not expired yet
    run.clock.advance(3600)
    assert await services().expiry_sweep() == 1
    outcomes = await run.deliver()
    assert [o["outcome"] for o in by_request(outcomes, "~expire:T10")] == ["revoked"]
    assert graph.members_of(AU) == set()


async def refuse_the_first_expiry(run: Any) -> list[str]:
    """Make the run's sender refuse the first expiry removal it is asked to schedule; the ids it refused."""
    sender = run.app.sender
    assert isinstance(sender, LocalSender)
    real = sender.schedule
    refused: list[str] = []

    async def refuse_once(**kwargs: Any) -> None:
        if str(kwargs["message_id"]).startswith("~expire:") and not refused:
            refused.append(str(kwargs["message_id"]))
            raise RuntimeError("the queue refuses it once")
        await real(**kwargs)

    sender.schedule = refuse_once  # type: ignore[method-assign]
    return refused


async def test_a_time_bound_add_whose_removal_could_not_be_scheduled_once_is_still_removed_at_expiry(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    """The add is made, then scheduling its removal fails once (retried): the retry finds the member there, which
    is the app's own add, not a membership that was there before; at expiry the member is removed."""
    run = await make_run(GRANTS_RETRY_BASE_SECONDS="10")
    refused = await refuse_the_first_expiry(run)
    outcomes = await run.deliver(body(requestId="T11", expiresAt=at(run, 3600)))
    assert refused
    assert [o["outcome"] for o in by_request(outcomes, "T11")] == ["already_member"]  # its first attempt made it
    assert [(o["outcome"], o["heldBy"]) for o in by_request(outcomes, "~expire:T11")] == [("revoked", None)]
    assert graph.members_of(AU) == set()


async def test_a_time_bound_add_over_a_membership_made_outside_the_app_keeps_it_though_its_removal_was_retried(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    """The member was there before the app; the add finds it there, then scheduling its removal fails once: the
    retry finds it there again, still a membership the app did not make, which stays at expiry."""
    graph.add_member(AU, USER)
    run = await make_run(GRANTS_RETRY_BASE_SECONDS="10")
    refused = await refuse_the_first_expiry(run)
    outcomes = await run.deliver(body(requestId="T12", expiresAt=at(run, 3600)))
    assert refused
    assert [o["outcome"] for o in by_request(outcomes, "T12")] == ["already_member"]
    expiry = by_request(outcomes, "~expire:T12")
    assert [(o["outcome"], o["heldBy"]) for o in expiry] == [("released", [{"preexisting": True}])]
    assert graph.members_of(AU) == {USER}


# --- 3. access that outlives a leaver --------------------------------------------------------------------------------


async def deliver_one(run: Any, payload: bytes | None = None, *, message_id: str = "") -> None:
    """Send `payload` (if any) and process exactly the next due message, as one Functions invocation."""
    if payload is not None:
        run.queue.send(payload, message_id=message_id)
    locked = run.queue.receive()
    assert locked is not None
    await GRANT(receivedmessage=to_received_message(locked), message_actions=run.actions)


async def test_a_joiners_retried_add_does_not_land_after_the_leaver(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    """A new hire not yet replicated (the joiner's add is retried), then the leaver (the same producer's remove: it
    ends the grant, with nothing of the app's to remove): the joiner's retry is older than the leaver, so it ends
    superseded and the person stays out."""
    run = await make_run(GRANTS_RETRY_BASE_SECONDS="10")  # the retry copy waits on the manual clock
    joined, left = at(run, -60), at(run, -30)
    await deliver_one(run, body(requestId="join", member={"id": LATE_USER}, requestedAt=joined), message_id="j")
    assert run.queue.scheduled_count + run.queue.active_count == 1  # its retry copy
    await deliver_one(
        run, body(requestId="leave", member={"id": LATE_USER}, action="remove", requestedAt=left), message_id="l"
    )
    outcomes = await run.deliver()
    assert outcomes["l"]["outcome"] == "released"  # the joiner's add never landed: nothing of the app's to remove
    assert outcomes["j"]["outcome"] == "superseded"
    assert graph.members_of(AU) == set()


async def test_a_ticket_add_hit_by_a_503_then_a_remove_ends_removed(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    """A ticket's add meets a 503 and is retried; the ticket's remove runs meanwhile (not_member); the add's retry
    is superseded instead of granting access after the remove."""
    graph.inject(Fault.status(503, method="POST"))
    run = await make_run(GRANTS_RETRY_BASE_SECONDS="10")  # the retry copy waits on the manual clock
    await deliver_one(run, body(requestId="add-1", requestedAt=at(run, -20)), message_id="a")
    await deliver_one(run, body(requestId="remove-1", action="remove", requestedAt=at(run, -10)), message_id="r")
    outcomes = await run.deliver()
    assert (outcomes["r"]["outcome"], outcomes["a"]["outcome"]) == ("not_member", "superseded")
    assert graph.members_of(AU) == set()


async def test_an_older_intent_arriving_late_is_superseded_whatever_the_order(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    run = await make_run()
    await run.deliver(body(requestId="new-remove", action="remove", requestedAt=at(run, -10)))
    outcomes = await run.deliver(body(requestId="old-add", requestedAt=at(run, -20)))
    assert by_request(outcomes, "old-add")[0]["outcome"] == "superseded"
    assert graph.members_of(AU) == set()
    assert [r for r in graph.requests if r.method == "POST"] == []


async def test_the_sweep_leaves_grants_without_expiry_alone(make_run: Callable[..., Any], graph: GraphDouble) -> None:
    run = await make_run()
    await run.deliver(body(requestId="forever"))
    run.clock.advance(timedelta(days=400).total_seconds())
    assert await services().expiry_sweep() == 0
    assert graph.members_of(AU) == {USER}
