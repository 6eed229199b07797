"""A hostile environment, against the real parts: a ledger (Azurite) or a queue that is down or stalls, settlement
left to lock expiry, outages longer than the queue's MaxDeliveryCount lock durations. Each test pins what the app
does (or, marked xfail, what it should do)."""

from __future__ import annotations

import asyncio

from grants_local.azurite import AzuriteTables
from grants_local.queue import MAX_DELIVERY_COUNT_EXCEEDED
from grants_local.unreachable import refusing_port
from shared.adapters.seal import Sealer
from shared.core.errors import Reason, TransientError
from tests.conftest import USER_2, body
from tests.test_hostile_producers import instance
from tests.test_trust_boundary import App, app, make_app, rules_file

__all__ = ["app", "make_app", "rules_file"]  # fixtures used here

LOCK_DURATION = 60.0  # infra: lockDuration PT1M; the local queue's default


async def test_an_invalid_message_waits_for_a_ledger_that_is_down_instead_of_burning_its_deliveries(
    app: App, azurite: AzuriteTables
) -> None:
    """A message with a readable requestId and a field the contract does not know (dead-lettered
    `SchemaViolation`, its status written first) reaches a fresh instance whose ledger is down: the status cannot be
    recorded, so it must wait (left to its lock expiry, as a transient failure is), not be abandoned and delivered
    again at once until Service Bus dead-letters it MaxDeliveryCountExceeded within seconds; once the ledger is back
    it is dead-lettered `SchemaViolation`, with its status."""
    app.put(body(requestId="BAD-1", colour="blue"), message_id="m-bad")  # bulk's, on the grants queue
    with refusing_port() as port:
        async with instance(app, endpoint=f"http://127.0.0.1:{port}/devstoreaccount1") as cold:
            await cold.host().drain(until=app.clock() + 5)
    assert app.queue.dead_letters() == []
    assert app.queue.stats.abandoned == 0
    app.clock.advance(LOCK_DURATION + 1)
    await app.due()
    [dead] = app.queue.dead_letters()
    assert dead.reason == "SchemaViolation"


async def test_an_outage_of_the_ledger_longer_than_ten_lock_durations_dead_letters_with_a_reason_a_person_can_act_on(
    app: App, azurite: AzuriteTables
) -> None:
    """A cold instance cannot seal a retry copy while its ledger is down, so each delivery waits a lock duration;
    the tenth, the last the queue allows, is dead-lettered by the app with the outage's reason and what to do, not
    by Service Bus as MaxDeliveryCountExceeded."""
    app.put(body(requestId="LONG-1", member={"id": USER_2, "type": "user"}), message_id="m-long")
    with refusing_port() as port:
        async with instance(app, endpoint=f"http://127.0.0.1:{port}/devstoreaccount1") as cold:
            await cold.host().drain(until=app.clock() + 11 * LOCK_DURATION)
    [dead] = app.queue.dead_letters()
    assert dead.reason == "LedgerUnavailable", (dead.reason, dead.description)
    assert dead.reason != MAX_DELIVERY_COUNT_EXCEEDED
    assert dead.delivery_count == 10
    assert "GRANTS_MAX_DELIVERY_COUNT" in (dead.description or "")


async def test_an_invalid_message_whose_status_cannot_be_recorded_by_its_last_delivery_keeps_its_own_reason(
    app: App, azurite: AzuriteTables
) -> None:
    """Dead-lettered `SchemaViolation` by the app on the last delivery the queue allows, saying its status could not
    be recorded, rather than MaxDeliveryCountExceeded."""
    app.put(body(requestId="BAD-2", colour="blue"), message_id="m-bad-2")
    with refusing_port() as port:
        async with instance(app, endpoint=f"http://127.0.0.1:{port}/devstoreaccount1") as cold:
            await cold.host().drain(until=app.clock() + 11 * LOCK_DURATION)
    [dead] = app.queue.dead_letters()
    assert (dead.reason, dead.delivery_count) == ("SchemaViolation", 10)
    assert "status could not be recorded" in (dead.description or "")


async def test_invocations_waiting_for_the_seal_key_share_one_read_of_a_stalled_ledger() -> None:
    """A cold instance receives 16 deliveries while its ledger stalls (accepts, never answers: each read fails only
    at its 30 s timeout). Every invocation needs the seal key (to check a seal or to seal its retry copy): they must
    share the one read in flight and its failure, not queue behind it one 30 s read after another (the sixteenth
    would wait 8 minutes, past maxAutoLockRenewalDuration, holding every slot of maxConcurrentCalls meanwhile)."""
    stalled = asyncio.Event()
    reads = 0

    async def stalled_read() -> tuple[bytes, ...]:
        nonlocal reads
        reads += 1
        await stalled.wait()
        raise TransientError(Reason.LEDGER_UNAVAILABLE, "the grant ledger did not answer: ServiceResponseError")

    sealer = Sealer(keys=stalled_read)
    waiting = [asyncio.create_task(sealer.keys()) for _ in range(16)]
    await asyncio.sleep(0)
    stalled.set()  # the read times out
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, TransientError) and r.reason is Reason.LEDGER_UNAVAILABLE for r in results), results
    assert reads == 1
    stalled.clear()
    later = asyncio.create_task(sealer.keys())  # a later invocation tries the ledger again
    await asyncio.sleep(0)
    assert reads == 2
    later.cancel()
    await asyncio.gather(later, return_exceptions=True)
