"""A hostile pass on convergence: writes in doubt and their confirming copies, scheduled work that must not run early,
units that refuse the app's writes, pending removals and the expiry sweep, and settlement errors; through the
registered functions, the ledger in Azurite and the Graph double over loopback.

Each pins an attack that is defeated and was not pinned elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from grants_local.binding import to_received_message
from grants_local.graph_double import Fault, GraphDouble
from grants_local.queue import ManualClock
from shared.adapters.ledger import table_key
from shared.adapters.ledger.pairs import LEASE_FOR, UNCERTAIN_WINDOW
from shared.core.contract import Action
from shared.core.intents import Effect, Intent
from shared.core.pairs import Applied, Grant, PairState, Superseded, admit
from shared.core.statuses import Status
from shared.service.gate import SWEEP_PAGE, IntentGate
from tests.conftest import AU, USER, Run, body
from tests.test_function_app import GRANT


def add_of(request_id: str, **fields: Any) -> bytes:
    return body(requestId=request_id, member={"id": USER, "type": "user"}, source={"system": "bulk"}, **fields)


def remove_of(request_id: str, **fields: Any) -> bytes:
    return add_of(request_id, action="remove", **fields)


async def deliver_one(run: Run) -> bool:
    """Receive one due message from the run's grant queue and invoke the registered function on it; False when none
    is due."""
    locked = run.queue.receive()
    if locked is None:
        return False
    await GRANT(receivedmessage=to_received_message(locked), message_actions=run.actions)
    return True


def clock_of(run: Run) -> ManualClock:
    """The run's clock: Service Bus's, and the app's unless a test lags the gate's."""
    assert isinstance(run.clock, ManualClock)
    return run.clock


def deletes(graph: GraphDouble) -> int:
    return sum(1 for request in graph.requests if request.method == "DELETE")


async def add_in_doubt(run: Run, graph: GraphDouble, request_id: str) -> Fault:
    """Send `request_id`'s add and let its POST be held past the client's timeout (its answer never comes: the add is
    in doubt, its retry an hour away); the held POST, to release."""
    run.app.services.http.timeout = httpx.Timeout(1.0, connect=5.0, pool=30.0)
    held = Fault.hold(method="POST", path=AU)
    graph.inject(held)
    run.queue.send(add_of(request_id), message_id=f"m-{request_id}")
    assert await deliver_one(run)
    assert run.app.outcomes() == {}
    return held


# =====================================================================================================================
# Doubts: a write of the other action is confirmed once the last doubt can no longer land
# =====================================================================================================================


async def test_a_confirming_copy_delivered_on_time_to_a_worker_whose_clock_is_behind_is_not_scheduled_again(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    """The world: Service Bus delivers the remove's confirming copy at the end of the add's doubt window by its clock;
    the worker's clock is 3 s behind (the window is still open by it). The copy is carried out (the late add's
    landing removed), and ends there: it must not schedule itself again for the moment that has already come, which
    Service Bus delivers at once, again and again, each a Graph DELETE, until the worker's clock catches up."""
    run: Run = await make_run(GRANTS_RETRY_BASE_SECONDS="3600", GRANTS_RETRY_MAX_SECONDS="3600")
    held = await add_in_doubt(run, graph, "ADD-C")
    run.queue.send(remove_of("REMOVE-C"), message_id="m-remove")
    assert await deliver_one(run)
    assert run.app.outcomes()["m-remove"]["outcome"] == Status.NOT_MEMBER
    held.release()
    assert held.wait_landed()
    assert graph.members_of(AU) == {USER}

    clock = clock_of(run)
    clock.advance(300)  # the add's doubt window has ended by Service Bus's clock: the confirming copy is due
    gate = run.app.services.gate
    gate._now = lambda: clock.utcnow() - timedelta(seconds=3)  # the worker's clock: 3 s behind
    before = deletes(graph)
    assert await deliver_one(run)
    assert graph.members_of(AU) == set()
    assert run.app.outcomes()["m-remove"]["outcome"] == Status.REVOKED
    for _ in range(5):  # what else is due now, by Service Bus's clock (the add's retry is an hour away)
        if not await deliver_one(run):
            break
    assert deletes(graph) - before == 1, "the confirming copy scheduled itself again for a moment that had come"


# =====================================================================================================================
# Pending removals: the expiry sweep
# =====================================================================================================================


async def test_a_pending_removal_recorded_on_a_grant_that_never_expires_does_not_crash_its_removal(
    make_run: Callable[..., Any], graph: GraphDouble, caplog: pytest.LogCaptureFixture
) -> None:
    """A hand-edited (or half-migrated) pair row: a grant whose newest add has no expiresAt carries a pending removal
    that is due. The sweep sent its removal, which failed an assertion in the gate: abandoned delivery after delivery,
    dead-lettered MaxDeliveryCountExceeded, and sent again every sweep. The sweep skips it (an error line names the
    pair), the membership stays (nothing says it expired), and an expiry delivered for it ends superseded."""
    run: Run = await make_run()
    graph.add_member(AU, USER)
    ledger = run.app.services.ledger
    past = clock_of(run).utcnow() - timedelta(hours=1)
    newest = {"requestId": "NE-1", "contentHash": "c", "action": "add", "requestedAt": past.isoformat()}
    pair = f"au.{AU}.{USER}"
    await ledger._table.create_entity(
        {
            "PartitionKey": table_key("pair", pair),
            "RowKey": "pair",
            "pair": pair,
            "grants": json.dumps([{"producer": "bulk", "newest": newest, "removalDue": past.isoformat()}]),
            "removalDue": past,
            "appliedRequestId": "NE-1",
            "appliedAction": "add",
            "appliedAt": past,
        }
    )
    with caplog.at_level(logging.ERROR, logger="shared.service.gate"):
        assert await run.app.services.expiry_sweep() == 0
    assert 'a grant of "bulk" that never expires' in caplog.text
    await run.app.host().drain(until=run.clock())
    assert run.queue.stats.abandoned == 0
    assert USER in graph.members_of(AU)
    state = await ledger.pair(pair)
    assert state is not None
    ends = Intent(
        request_id="~expire:NE-1",
        content_hash="e",
        action=Action.REMOVE,
        requested_at=state.grants[0].newest.requested_at + timedelta(microseconds=1),
        producer="bulk",
        kind=Effect.EXPIRE,
        ends="NE-1",
    )
    decided = admit(state, ends, token="t", now=clock_of(run).utcnow(), lease_for=LEASE_FOR, window=UNCERTAIN_WINDOW)
    assert isinstance(decided, Superseded)


class Recorded:
    """A queue that keeps what is sent to it (the sweep's removals), by the pair each removal ends."""

    def __init__(self, *, clock: ManualClock | None = None, seconds_each: float = 0.0) -> None:
        self.pairs: list[str] = []
        self._clock = clock
        self._seconds_each = seconds_each

    async def schedule(
        self,
        *,
        body: bytes,
        message_id: str,
        application_properties: Mapping[str, str | int],
        scheduled_enqueue_time: datetime,
    ) -> None:
        if self._clock is not None:  # each send takes this long: a sweep that runs out of time
            self._clock.advance(self._seconds_each)
        document = json.loads(body)
        self.pairs.append(f"au.{document['target']['id']}.{document['member']['id']}")


async def due_pairs(run: Run, count: int) -> list[str]:
    """`count` pairs (a unit each, one user) whose bulk grant expired an hour ago and whose pending removal is due,
    written straight to the ledger (nothing here carries a removal out: they stay due), in key order."""
    ledger = run.app.services.ledger
    past = clock_of(run).utcnow() - timedelta(hours=1)
    limit = asyncio.Semaphore(32)

    async def due_pair(pair: str) -> None:
        timed = Intent(
            request_id=f"T-{pair}",
            content_hash="c",
            action=Action.ADD,
            requested_at=past - timedelta(days=1),
            expires_at=past,
            producer="bulk",
        )
        state = PairState(
            grants=(Grant(producer="bulk", newest=timed, removal_due=past),),
            applied=Applied(request_id=timed.request_id, action=Action.ADD, at=timed.requested_at),
        )
        async with limit:
            assert await ledger._write_pair(pair, state, None) is not None

    pairs = [f"au.{uuid.UUID(int=n + 1)}.{USER}" for n in range(count)]
    await asyncio.gather(*(due_pair(pair) for pair in pairs))
    return sorted(pairs, key=lambda pair: table_key("pair", pair))


async def test_one_sweep_pages_through_every_due_removal(make_run: Callable[..., Any]) -> None:
    """1,001 pairs whose pending removal is due (and keeps failing): one sweep sends every one, not the first page."""
    run: Run = await make_run()
    pairs = await due_pairs(run, SWEEP_PAGE + 1)
    sent = Recorded()
    assert await run.app.services.gate.sweep(sent) == SWEEP_PAGE + 1
    assert sorted(sent.pairs) == sorted(pairs)


async def test_a_sweep_out_of_time_leaves_its_cursor_for_the_next_whichever_process_runs_it(
    make_run: Callable[..., Any],
) -> None:
    """A sweep that has paged for `SWEEP_BUDGET` stops after its page; the next, run by a fresh process (its own
    IntentGate, as bootstrap builds one), starts after that page and comes round to it: every due pair is sent within
    two sweeps however many keep failing first in key order, and the second, having gone round, clears the cursor."""
    run: Run = await make_run()
    services = run.app.services
    pairs = await due_pairs(run, SWEEP_PAGE + 1)
    slow = Recorded(clock=clock_of(run), seconds_each=1.0)  # 1,000 sends: past the 4 minutes
    assert await services.gate.sweep(slow) == SWEEP_PAGE
    assert slow.pairs == pairs[:SWEEP_PAGE]
    assert await services.ledger.sweep_cursor() == pairs[SWEEP_PAGE - 1]
    restarted = IntentGate(ledger=services.ledger, grants=services.grants, now=clock_of(run).utcnow)
    second = Recorded()
    assert await restarted.sweep(second) == SWEEP_PAGE + 1
    assert second.pairs == [pairs[SWEEP_PAGE], *pairs[:SWEEP_PAGE]]
    assert await services.ledger.sweep_cursor() is None
