"""A hostile environment, against the real parts: a ledger (Azurite) or a queue that is down or stalls, settlement
left to lock expiry, outages longer than the queue's MaxDeliveryCount lock durations. Each test pins what the app
does (or, marked xfail, what it should do)."""

from __future__ import annotations

import pytest

from grants_local.azurite import AzuriteTables
from grants_local.queue import MAX_DELIVERY_COUNT_EXCEEDED
from grants_local.unreachable import refusing_port
from tests.conftest import USER_2
from tests.test_hostile_producers import instance
from tests.test_trust_boundary import App, app, make_app, rules_file, ticket

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
    app.put(ticket("BAD-1", colour="blue"), message_id="m-bad")
    with refusing_port() as port:
        async with instance(app, endpoint=f"http://127.0.0.1:{port}/devstoreaccount1") as cold:
            await cold.host().drain(until=app.clock() + 5)
    assert app.queue.dead_letters() == []
    assert app.queue.stats.abandoned == 0
    app.clock.advance(LOCK_DURATION + 1)
    await app.due()
    [dead] = app.queue.dead_letters()
    assert dead.reason == "SchemaViolation"


@pytest.mark.xfail(
    strict=True,
    reason="open (design): a delivery no copy can retry (a cold instance cannot seal one while the ledger is down) "
    "is left to its lock expiry; an outage longer than MaxDeliveryCount (10) lock durations then ends in the "
    "dead-letter queue as Service Bus's MaxDeliveryCountExceeded ('could not be consumed after 10 delivery "
    "attempts'), nothing saying the ledger was out of reach. The app should dead-letter the last delivery itself "
    "with LedgerUnavailable and a description naming the outage (it needs the queue's maxDeliveryCount as a setting, "
    "and a dead-letter whose status cannot be recorded), or keep the message waiting",
)
async def test_an_outage_of_the_ledger_longer_than_ten_lock_durations_dead_letters_with_a_reason_a_person_can_act_on(
    app: App, azurite: AzuriteTables
) -> None:
    app.put(ticket("LONG-1", member={"id": USER_2, "type": "user"}), message_id="m-long")
    with refusing_port() as port:
        async with instance(app, endpoint=f"http://127.0.0.1:{port}/devstoreaccount1") as cold:
            await cold.host().drain(until=app.clock() + 11 * LOCK_DURATION)
    dead = app.queue.dead_letters()
    assert [letter.reason for letter in dead] in ([], ["LedgerUnavailable"]), [
        (letter.reason, letter.description) for letter in dead
    ]
    assert all(letter.reason != MAX_DELIVERY_COUNT_EXCEEDED for letter in dead)
