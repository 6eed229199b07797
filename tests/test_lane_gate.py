"""Interactive first on the CPU (`LaneGate`): a process's bulk messages give way while interactive ones are in it,
and never stop. No clock: the gate counts messages, it does not time them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from shared.adapters.ledger import LEASE_FOR
from shared.adapters.settlement import DEFAULT_SETTLEMENT_TIMEOUT
from shared.core.messaging import Lane
from shared.service.lane_gate import BULK_BESIDE_INTERACTIVE, BULK_MAX_WAIT, LaneGate
from tests.conftest import AU, Run, body


async def ticks(count: int = 5) -> None:
    """Let every ready callback run (no time passes)."""
    for _ in range(count):
        await asyncio.sleep(0)


@asynccontextmanager
async def inside(gate: LaneGate, *lanes: Lane) -> AsyncIterator[None]:
    """Messages of `lanes` in the process's work for the block."""
    async with AsyncExitStack() as stack:
        for lane in lanes:
            await stack.enter_async_context(gate.enter(lane))
        yield


async def enters(gate: LaneGate, lane: Lane, done: asyncio.Event) -> None:
    async with gate.enter(lane):
        await done.wait()


async def test_with_no_interactive_message_in_bulk_messages_are_not_held() -> None:
    gate = LaneGate()
    done = asyncio.Event()
    bulk = [asyncio.create_task(enters(gate, Lane.BULK, done)) for _ in range(16)]
    await ticks()
    assert (gate.inside(Lane.BULK), gate.held()) == (16, 0)
    done.set()
    await asyncio.gather(*bulk)
    assert gate.inside(Lane.BULK) == 0


async def test_beside_an_interactive_message_only_two_bulk_messages_go_in() -> None:
    """The bulk messages already in go on (each holds its pair's lease); new ones wait until the interactive message
    has left, or until fewer than two bulk ones are in."""
    gate = LaneGate()
    done = asyncio.Event()
    async with inside(gate, Lane.BULK, Lane.BULK, Lane.BULK):  # three in before the interactive one came
        async with gate.enter(Lane.INTERACTIVE):  # an interactive message never waits
            bulk = [asyncio.create_task(enters(gate, Lane.BULK, done)) for _ in range(5)]
            await ticks()
            assert (gate.inside(Lane.BULK), gate.held()) == (3, 5)
        await ticks()  # the interactive message left: every held one goes in
        assert (gate.inside(Lane.BULK), gate.held()) == (8, 0)
    done.set()
    await asyncio.gather(*bulk)


async def test_bulk_work_gives_way_but_never_stops() -> None:
    """While interactive messages keep coming, bulk messages go in as bulk ones leave, two at a time."""
    gate = LaneGate()
    finish = [asyncio.Event() for _ in range(4)]
    async with gate.enter(Lane.INTERACTIVE):
        bulk = [asyncio.create_task(enters(gate, Lane.BULK, event)) for event in finish]
        await ticks()
        assert (gate.inside(Lane.BULK), gate.held()) == (BULK_BESIDE_INTERACTIVE, 2)
        finish[0].set()  # one bulk grant is done: a held one takes its place
        await ticks()
        assert (gate.inside(Lane.BULK), gate.held()) == (2, 1)
        for event in finish:
            event.set()
        await asyncio.gather(*bulk)
    assert gate.inside(Lane.BULK) == gate.inside(Lane.INTERACTIVE) == 0


async def test_a_gate_that_would_stop_bulk_work_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        LaneGate(bulk_beside_interactive=0)
    with pytest.raises(ValueError, match="more than 0"):
        LaneGate(max_wait=0)


async def test_a_bulk_row_waits_at_the_gate_while_an_interactive_grant_is_in_beside_two_bulk_ones(
    make_run: Callable[..., Any],
) -> None:
    """Through the registered bulk function (producer ops, on the bulk queue): the row is not carried out (no Graph
    write) while the process holds an interactive grant and two bulk ones; it is granted once the interactive one has
    left."""
    run: Run = await make_run()
    gate = run.app.services.lanes
    run.queue_of("ops").send(body(), message_id="m-1")
    async with inside(gate, Lane.INTERACTIVE, Lane.BULK, Lane.BULK):
        drained = asyncio.create_task(run.app.drain())
        for _ in range(200):  # the local host hands the row to the function, which reaches the gate
            if gate.held():
                break
            await asyncio.sleep(0)
        assert gate.held() == 1
        assert run.writes() == []
    await drained
    assert run.app.outcomes()["m-1"]["outcome"] == "granted"
    assert len(run.writes()) == 1


async def test_a_bulk_message_held_past_its_longest_wait_goes_in_beside_the_interactive_one() -> None:
    """The gate holds a bulk message at most `max_wait` seconds (its lock, renewed by the host for a limited time, must
    outlast its work after the gate): past it, it goes in though an interactive one is still in, and the others held
    go on waiting their own time."""
    gate = LaneGate(max_wait=0.05)
    done, went_in = asyncio.Event(), asyncio.Event()

    async def bulk() -> None:
        async with gate.enter(Lane.BULK):
            went_in.set()
            await done.wait()

    async with inside(gate, Lane.INTERACTIVE, Lane.BULK, Lane.BULK):
        held = asyncio.create_task(bulk())
        await ticks()
        assert (gate.inside(Lane.BULK), gate.held()) == (2, 1)
        await asyncio.wait_for(went_in.wait(), timeout=5)  # the gate's own timer lets it in
        assert (gate.inside(Lane.INTERACTIVE), gate.inside(Lane.BULK), gate.held()) == (1, 3, 0)
        done.set()
        await held
    assert gate.inside(Lane.BULK) == 0


def test_a_bulk_message_s_longest_wait_and_its_work_fit_in_the_host_s_lock_renewal() -> None:
    """host.json's maxAutoLockRenewalDuration must outlast the longest wait at the gate, the pair's lease the work may
    hold after it, and the settlement's deadline: else a held message's lock expires while it waits, Service Bus
    delivers it again (counting a delivery: enough of them dead-letter it MaxDeliveryCountExceeded, with no reason of
    the app's) and the held invocation's settlement is refused."""
    host = json.loads((Path(__file__).parents[1] / "host.json").read_text())
    hours, minutes, seconds = host["extensions"]["serviceBus"]["maxAutoLockRenewalDuration"].split(":")
    renewal = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    assert BULK_MAX_WAIT + LEASE_FOR.total_seconds() + DEFAULT_SETTLEMENT_TIMEOUT < renewal
    assert LaneGate()._max_wait == BULK_MAX_WAIT


async def test_a_bulk_row_whose_lock_expired_while_held_at_the_gate_is_granted_once_and_never_lost(
    make_run: Callable[..., Any],
) -> None:
    """Through the registered bulk function: a row held at the gate while the run's clock moves past the host's lock
    renewal and the lock's own minute. Once let in it is carried out (one Graph write); its settlement is refused (the
    lock is gone) and Service Bus delivers it again: that delivery finds it done (already_member, the status stays
    granted), nothing is dead-lettered. (`BULK_MAX_WAIT` keeps a real wait well short of this.)"""
    run: Run = await make_run()
    gate = run.app.services.lanes
    run.queue_of("ops").send(body(), message_id="m-1")
    async with inside(gate, Lane.INTERACTIVE, Lane.BULK, Lane.BULK):
        drained = asyncio.create_task(run.app.drain())
        for _ in range(200):
            if gate.held():
                break
            await asyncio.sleep(0)
        assert gate.held() == 1
        run.clock.advance(300 + 60 + 1)
    await drained
    records = [r for r in run.app.recorder.records if r["messageId"] == "m-1"]
    assert [(r["outcome"], r["attempts"]) for r in records] == [("unsettled", 1), ("already_member", 2)]
    assert "status stays granted" in records[-1]["description"]
    assert set(run.writes()) == {("POST", f"/directory/administrativeUnits/{AU}/members/$ref")}
    assert run.queue_of("ops").dead_letters() == []
