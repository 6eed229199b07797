"""The grant ledger against Azurite: what it records, ETag races, lease expiry, hostile ids, round trips, failures."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from grants_local._http import LoopbackServer, Request, Response
from grants_local.azurite import AzuriteTables
from shared.adapters.ledger import LEASE_FOR, Absorbed, Admitted, Group, GroupKind, Ledger, table_client, table_key
from shared.core.contract import Action
from shared.core.errors import PermanentError, Reason, TransientError
from shared.core.intents import Effect, Intent
from shared.core.pairs import Applied, Doubt, Grant, Lease, PairState, Released, Superseded, Wait
from shared.core.statuses import StatusRecord, StatusWrite
from tests.conftest import AU, USER

if TYPE_CHECKING:
    from azure.data.tables.aio import TableClient

    from tests.conftest import StorageCalls

T0 = datetime(2026, 5, 1, 9, 0, 0, 123456, tzinfo=UTC)
PAIR = "au.3f2504e0-4f89-11d3-9a0c-0305e82c3301.15c1a2d5-9101-44b2-83ab-885db8a647ca"


PRODUCER = "bulk"


def intent(
    request_id: str, action: Action = Action.ADD, *, at: float = 0, content: str = "c", producer: str = PRODUCER
) -> Intent:
    return Intent(
        request_id=request_id,
        content_hash=content,
        action=action,
        requested_at=T0 + timedelta(seconds=at),
        expires_at=T0 + timedelta(days=30) if action is Action.ADD else None,
        producer=producer,
    )


@pytest.fixture
def ledger(ledger_table: TableClient) -> Ledger:
    return Ledger(ledger_table, legacy=False)  # a table created after producers had names: no legacy rows to read


async def admitted(ledger: Ledger, item: Intent, *, origin: str = "m-1", now: datetime = T0) -> Admitted:
    decision = await ledger.begin(item, pair=PAIR, origin=origin, now=now)
    assert isinstance(decision, Admitted), decision
    return decision


# --- what is recorded, and what it costs ---------------------------------------------------------------------------


async def test_an_add_for_a_new_pair_is_recorded_in_three_requests_and_three_round_trips(
    ledger: Ledger, storage_calls: StorageCalls
) -> None:
    """Given a new add for a new pair, when it is admitted and finished, then the pair records it as its producer's
    grant, applied, with no lease and nothing in doubt; the request id records its content and origin; three
    requests were sent (the pair is created, never read)."""
    ticket = (await admitted(ledger, intent("r1"))).ticket
    assert await ledger.finish(ticket, applied=Action.ADD, now=T0 + timedelta(seconds=1)) is True
    methods = [method for method, _ in storage_calls.requests]
    # the request's insert; the pair's insert with the lease; its replace, If-Match, returning it
    assert methods == ["POST", "POST", "PUT"]
    assert await ledger.pair(PAIR) == PairState(
        grants=(Grant(producer=PRODUCER, newest=intent("r1"), removal_due=T0 + timedelta(days=30)),),
        applied=Applied(request_id="r1", action=Action.ADD, at=T0 + timedelta(seconds=1)),
    )
    record = await ledger.request("r1", producer=PRODUCER)
    assert record is not None
    assert (record.content_hash, record.origin, record.pair) == ("c", "m-1", PAIR)


async def test_a_removal_of_a_known_pair_reads_it_at_once_with_the_claim(
    ledger: Ledger, storage_calls: StorageCalls
) -> None:
    """Given a recorded pair, a removal costs four requests in three round trips: the request's insert and the pair's
    read at once, the pair's replace with the lease, and its replace returning it."""
    await ledger.finish((await admitted(ledger, intent("r1"))).ticket, applied=Action.ADD, now=T0)
    storage_calls.requests.clear()
    ticket = (await admitted(ledger, intent("r2", Action.REMOVE, at=60))).ticket
    await ledger.finish(ticket, applied=Action.REMOVE, now=T0)
    methods = [method for method, _ in storage_calls.requests]
    assert sorted(methods[:2]) == ["GET", "POST"]
    assert methods[2:] == ["PUT", "PUT"]
    state = await ledger.pair(PAIR)
    assert state is not None
    assert state.latest == intent("r2", Action.REMOVE, at=60)
    assert state.applied == Applied(request_id="r2", action=Action.REMOVE, at=T0)


async def test_an_add_for_a_known_pair_reads_it_after_its_insert_is_refused(
    ledger: Ledger, storage_calls: StorageCalls
) -> None:
    """Given a recorded pair, a newer add costs five requests: the request's insert, the pair's insert (refused),
    its read, its replace with the lease, and its replace returning it; the pair then records the add as newest."""
    await ledger.finish((await admitted(ledger, intent("r1"))).ticket, applied=Action.ADD, now=T0)
    storage_calls.requests.clear()
    ticket = (await admitted(ledger, intent("r2", at=60))).ticket
    await ledger.finish(ticket, applied=Action.ADD, now=T0)
    assert [method for method, _ in storage_calls.requests] == ["POST", "POST", "GET", "PUT", "PUT"]
    state = await ledger.pair(PAIR)
    assert state is not None
    assert (state.latest, state.lease) == (intent("r2", at=60), None)


async def test_a_repairs_re_grant_reads_the_pair_with_its_claim_and_is_admitted_while_a_grant_holds_it(
    ledger: Ledger, storage_calls: StorageCalls
) -> None:
    """Given a pair a producer's grant holds, a drift repair's re-grant (the app's, changing no grant) is decided on
    the grants recorded: the pair is read at once with the claim (never decided on a pair it has not read, which
    holds no grant), so it is admitted to write the add and leaves the grants as they were."""
    await ledger.finish((await admitted(ledger, intent("r1"))).ticket, applied=Action.ADD, now=T0)
    storage_calls.requests.clear()
    repair = replace(intent("~drift-add:r1", at=1e-6, producer="app"), kind=Effect.REPAIR)
    ticket = (await admitted(ledger, repair, now=T0 + timedelta(seconds=5))).ticket
    assert ticket.write is Action.ADD
    methods = [method for method, _ in storage_calls.requests]
    assert sorted(methods[:2]) == ["GET", "POST"]
    assert methods[2:] == ["PUT"]
    assert ticket.state.grants == (Grant(producer=PRODUCER, newest=intent("r1"), removal_due=T0 + timedelta(days=30)),)


async def test_times_round_trip_to_the_microsecond(ledger: Ledger) -> None:
    item = intent("r1", at=0.000001)
    await admitted(ledger, item)
    state = await ledger.pair(PAIR)
    assert state is not None
    assert state.latest == item


async def test_every_part_of_a_pair_s_state_round_trips(ledger: Ledger) -> None:
    """Grants of several producers (one time-bound, one ended by an expiry), a revoke-all, the lease, the last
    answered write, writes in doubt and a membership the app did not make are read back as written."""
    add = intent("a1", producer="hr")
    ended = Intent(
        request_id="~expire:b1",
        content_hash="e",
        action=Action.REMOVE,
        requested_at=T0,
        producer="bulk",
        kind=Effect.EXPIRE,
        ends="b1",
    )
    state = PairState(
        grants=(
            Grant(producer="bulk", newest=ended, removal_due=T0),
            Grant(producer="hr", newest=add, removal_due=T0 + timedelta(days=30)),
        ),
        floor=intent("t9", Action.REMOVE, at=-5, producer="ticketing"),
        lease=Lease(token="t", request_id="a1", until=T0 + LEASE_FOR),
        applied=Applied(request_id="a1", action=Action.ADD, at=T0),
        doubts=(Doubt(token="t0", request_id="a0", action=Action.ADD, until=T0 + timedelta(minutes=7)),),
        preexisting=True,
    )
    assert await ledger._write_pair(PAIR, state, None) is not None
    assert await ledger.pair(PAIR) == state
    (due,) = await ledger.due_removals(now=T0)
    assert due == (PAIR, state)


async def test_a_pair_recorded_before_grants_had_owners_reads_as_one_grant_of_its_newest_request_s_producer(
    ledger: Ledger, ledger_table: TableClient
) -> None:
    """A pair entity with one newest intent (its producer, or before producers had names its request's source
    system), a pending removal and one uncertain write reads as that producer's grant and one doubt."""
    columns = {
        "pair": PAIR,
        "newestRequestId": "OLD-1",
        "newestContentHash": "c",
        "newestAction": "add",
        "newestRequestedAt": T0,
        "newestExpiresAt": T0 + timedelta(days=1),
        "removalDue": T0 + timedelta(days=1),
        "uncertainRequestId": "OLD-1",
        "uncertainAction": "add",
        "uncertainSince": T0,
    }
    await ledger_table.create_entity({"PartitionKey": table_key("pair", PAIR), "RowKey": "pair", **columns})
    await ledger_table.create_entity(
        {
            "PartitionKey": table_key("request", "OLD-1"),
            "RowKey": "status",
            "requestId": "OLD-1",
            "status": "granted",
            "record": json.dumps({"requestId": "OLD-1", "status": "granted", "sourceSystem": "hr"}),
        }
    )
    state = await ledger.pair(PAIR)
    assert state is not None
    (grant,) = state.grants
    assert (grant.producer, grant.newest.request_id, grant.removal_due) == ("hr", "OLD-1", T0 + timedelta(days=1))
    assert [(d.request_id, d.action, d.until) for d in state.doubts] == [
        ("OLD-1", Action.ADD, T0 + ledger.uncertain_window)
    ]


# --- request ids -----------------------------------------------------------------------------------------------------


async def test_the_same_request_in_another_message_is_absorbed_without_touching_the_pair(
    ledger: Ledger, storage_calls: StorageCalls
) -> None:
    await ledger.finish((await admitted(ledger, intent("r1"), origin="m-1")).ticket, applied=Action.ADD, now=T0)
    before = await ledger.pair(PAIR)
    storage_calls.requests.clear()
    decision = await ledger.begin(intent("r1"), pair=PAIR, origin="m-2", now=T0 + timedelta(minutes=20))
    assert isinstance(decision, Absorbed)
    assert decision.record.origin == "m-1"
    assert len(storage_calls) == 2  # the insert refused, the record read (an add's pair is not read first)
    assert await ledger.pair(PAIR) == before


async def test_a_retry_copy_of_the_first_message_proceeds(ledger: Ledger) -> None:
    first = await admitted(ledger, intent("r1"), origin="m-1")
    await ledger.finish(first.ticket, applied=None, now=T0)  # a transient Graph failure
    again = await admitted(ledger, intent("r1"), origin="m-1", now=T0 + timedelta(seconds=10))
    assert again.ticket.token != first.ticket.token


async def test_a_retry_copy_keeps_the_time_first_recorded_and_cannot_overtake_a_newer_intent(ledger: Ledger) -> None:
    """Given an add without requestedAt (its stand-in: the first enqueue time) that failed, and a newer remove of the
    same producer recorded since (it ends a grant the add never wrote: nothing to remove), the add's retry copy
    (enqueued later, a later stand-in) is superseded, not newer."""
    first = await admitted(ledger, intent("add", at=0), origin="m-1")
    await ledger.finish(first.ticket, applied=None, now=T0)
    remove = await ledger.begin(intent("remove", Action.REMOVE, at=60), pair=PAIR, origin="m-2", now=T0)
    assert isinstance(remove, Released)
    retry = await ledger.begin(intent("add", at=600), pair=PAIR, origin="m-1", now=T0 + timedelta(seconds=600))
    assert retry == Superseded(intent("remove", Action.REMOVE, at=60))


async def test_a_request_id_reused_for_other_content_is_a_conflict_and_changes_nothing(ledger: Ledger) -> None:
    await ledger.finish((await admitted(ledger, intent("r1"))).ticket, applied=Action.ADD, now=T0)
    before = await ledger.pair(PAIR)
    with pytest.raises(PermanentError) as caught:
        await ledger.begin(intent("r1", Action.REMOVE, at=60, content="other"), pair=PAIR, origin="m-2", now=T0)
    assert caught.value.reason is Reason.REQUEST_ID_CONFLICT
    assert "m-1" in caught.value.description
    assert await ledger.pair(PAIR) == before


HOSTILE_IDS = [
    "a/b",
    "a\\b",
    "a#b",
    "a?b",
    "a_b",
    "'; DROP TABLE x; --",
    "it's",
    "%2F%00",
    "tab\there",
    "nul\x00byte",
    "\x7f\x9f",
    "..",
    " ",
    "ümlaut-🔥",
    "lone\ud800surrogate",
    "x" * 1000,
    "x" * 999 + "y",
]


def test_table_keys_are_safe_bounded_and_distinct() -> None:
    keys = {table_key("request", value) for value in HOSTILE_IDS}
    assert len(keys) == len(HOSTILE_IDS)
    for key in keys:
        assert len(key) <= 80
        assert not set(key) & set("/\\#?'\"%"), key
        assert all(0x20 < ord(char) < 0x7F for char in key), key


async def test_hostile_request_ids_are_recorded_and_read_back_exactly(ledger: Ledger) -> None:
    """Given request ids no producer should send (/ \\ # ?, quotes, control characters, 1,000 characters), each is
    recorded under its own key and read back unchanged; none collides with another."""
    for number, request_id in enumerate(HOSTILE_IDS):
        decision = await ledger.begin(
            intent(request_id, at=number, content=f"c{number}"), pair=PAIR, origin=f"m-{number}", now=T0
        )
        assert isinstance(decision, Admitted)
        await ledger.finish(decision.ticket, applied=Action.ADD, now=T0)
    for number, request_id in enumerate(HOSTILE_IDS):
        record = await ledger.request(request_id, producer=PRODUCER)
        assert record is not None
        assert (record.request_id, record.content_hash) == (request_id, f"c{number}")


# --- newest intent wins within a grant, leases ------------------------------------------------------------------------


async def test_an_older_intent_is_superseded_and_writes_nothing(ledger: Ledger, storage_calls: StorageCalls) -> None:
    leaver = await ledger.begin(intent("leaver", Action.REMOVE, at=60), pair=PAIR, origin="m-1", now=T0)
    assert isinstance(leaver, Released)
    before = await ledger.pair(PAIR)
    storage_calls.requests.clear()
    decision = await ledger.begin(intent("joiner", at=0), pair=PAIR, origin="m-2", now=T0)
    assert decision == Superseded(intent("leaver", Action.REMOVE, at=60))
    # the request's insert, the pair's insert (refused: it is there), its read
    assert [method for method, _ in storage_calls.requests] == ["POST", "POST", "GET"]
    assert await ledger.pair(PAIR) == before


async def test_a_held_lease_makes_a_newer_intent_wait_until_it_expires(ledger: Ledger) -> None:
    """Given a worker that took the lease and crashed, a newer intent waits until the lease's expiry, then takes
    over; the crashed worker, back late, records nothing."""
    crashed = await admitted(ledger, intent("add"))
    newer = intent("remove", Action.REMOVE, at=1)
    decision = await ledger.begin(newer, pair=PAIR, origin="m-2", now=T0 + timedelta(seconds=5))
    assert decision == Wait(until=T0 + LEASE_FOR, holder="add")
    takeover = await admitted(ledger, newer, origin="m-2", now=T0 + LEASE_FOR)
    assert await ledger.finish(crashed.ticket, applied=Action.ADD, now=T0 + LEASE_FOR) is False
    assert await ledger.finish(takeover.ticket, applied=Action.REMOVE, now=T0 + LEASE_FOR) is True
    state = await ledger.pair(PAIR)
    assert state is not None
    assert state.applied == Applied(request_id="remove", action=Action.REMOVE, at=T0 + LEASE_FOR)
    assert state.lease is None


async def test_concurrent_intents_for_one_pair_admit_exactly_one(ledger: Ledger) -> None:
    """Given eight intents for one pair begun at once (ETag races in Azurite), exactly one holds the lease and
    every other waits for it or is superseded by it; the record names the holder as newest or older."""
    items = [intent(f"r{n}", at=n % 3, content=f"c{n}") for n in range(8)]
    decisions = await asyncio.gather(
        *(ledger.begin(item, pair=PAIR, origin=f"m-{n}", now=T0) for n, item in enumerate(items))
    )
    winners = [decision for decision in decisions if isinstance(decision, Admitted)]
    assert len(winners) == 1
    assert all(isinstance(decision, Admitted | Wait | Superseded) for decision in decisions)
    state = await ledger.pair(PAIR)
    assert state is not None
    assert state.lease == winners[0].ticket.state.lease


async def test_finish_survives_a_write_in_between_and_keeps_it(ledger: Ledger) -> None:
    """Given the pair's entity changed after the lease was taken (a newer intent recorded by a takeover that then
    returned its lease), the late holder's finish re-reads, finds its lease gone and records nothing."""
    held = await admitted(ledger, intent("a"))
    later = T0 + LEASE_FOR
    takeover = await admitted(ledger, intent("b", at=1), origin="m-2", now=later)
    await ledger.finish(takeover.ticket, applied=Action.ADD, now=later)
    assert await ledger.finish(held.ticket, applied=Action.ADD, now=later) is False
    state = await ledger.pair(PAIR)
    assert state is not None
    assert state.applied == Applied(request_id="b", action=Action.ADD, at=later)


# --- pending removals ------------------------------------------------------------------------------------------------


async def test_due_removals_lists_time_bound_grants_past_their_expiry_until_removed(ledger: Ledger) -> None:
    """Given a time-bound grant, the sweep's query finds it once expired, and no longer once a removal is applied;
    a grant without expiry on another pair is never listed."""
    granted = await admitted(ledger, intent("add"))
    await ledger.finish(granted.ticket, applied=Action.ADD, now=T0)
    forever = replace(intent("other"), expires_at=None)
    other = await ledger.begin(forever, pair=PAIR + "x", origin="m-9", now=T0)
    assert isinstance(other, Admitted)
    await ledger.finish(other.ticket, applied=Action.ADD, now=T0)
    expiry = T0 + timedelta(days=30)
    assert await ledger.due_removals(now=expiry - timedelta(seconds=1)) == []
    due = await ledger.due_removals(now=expiry)
    assert [pair for pair, _ in due] == [PAIR]
    assert due[0][1].removal_due == expiry
    removal = await admitted(ledger, intent("add:expire", Action.REMOVE), origin="m-3", now=expiry)
    await ledger.finish(removal.ticket, applied=Action.REMOVE, now=expiry)
    assert await ledger.due_removals(now=expiry + timedelta(days=1)) == []


async def test_due_removals_go_on_after_a_cursor_so_stuck_pairs_cannot_hide_the_rest(ledger: Ledger) -> None:
    """Three due pairs read two at a time: the second read, after the first page's last pair, finds the third."""
    pairs = [f"{PAIR[:-3]}{n:03d}" for n in range(3)]
    for pair in pairs:
        state = PairState(grants=(Grant(producer=PRODUCER, newest=intent("a"), removal_due=T0),))
        assert await ledger._write_pair(pair, state, None) is not None
    first = await ledger.due_removals(now=T0, limit=2)
    rest = await ledger.due_removals(now=T0, limit=2, after=first[-1][0])
    assert sorted(pair for pair, _ in [*first, *rest]) == sorted(pairs)
    assert len(first) == 2
    assert len(rest) == 1


# --- failures are transient ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        yield probe.getsockname()[1]


@contextlib.asynccontextmanager
async def ledger_at(endpoint: str, azurite: AzuriteTables, *, table: str = "ledger") -> AsyncIterator[Ledger]:
    async with httpx.AsyncClient() as http:
        client = table_client(endpoint=endpoint, table=table, credential=azurite.credential(), http=http)
        ledger = Ledger(client, legacy=False)
        yield ledger
        await ledger.aclose()


async def test_unreachable_storage_is_transient(azurite: AzuriteTables) -> None:
    with closed_port() as port:
        async with ledger_at(f"http://127.0.0.1:{port}/devstoreaccount1", azurite) as ledger:
            with pytest.raises(TransientError) as caught:
                await ledger.begin(intent("r1"), pair=PAIR, origin="m-1", now=T0)
    assert caught.value.reason is Reason.LEDGER_UNAVAILABLE


async def test_a_missing_table_is_transient_and_named(azurite: AzuriteTables) -> None:
    async with ledger_at(azurite.endpoint, azurite, table="neverCreated") as ledger:
        with pytest.raises(TransientError) as caught:
            await ledger.begin(intent("r1"), pair=PAIR, origin="m-1", now=T0)
    assert caught.value.reason is Reason.LEDGER_UNAVAILABLE
    assert "TableNotFound" in caught.value.description


@pytest.mark.parametrize(("status", "code"), [(503, "ServerBusy"), (500, "InternalError"), (429, "TooManyRequests")])
async def test_throttled_or_failing_storage_is_transient_with_its_retry_after(
    azurite: AzuriteTables, status: int, code: str
) -> None:
    """Given storage answering 5xx or 429 with Retry-After, begin raises LedgerUnavailable carrying the delay,
    after one try (the SDK's own retries are off)."""
    seen: list[str] = []

    def busy(request: Request) -> Response:
        seen.append(request.method)
        body = {"odata.error": {"code": code, "message": {"lang": "en-US", "value": "busy"}}}
        return Response(status, body, headers={"Retry-After": "7", "x-ms-error-code": code})

    with contextlib.closing(LoopbackServer(busy)) as server:
        async with ledger_at(f"http://127.0.0.1:{server.port}/devstoreaccount1", azurite) as ledger:
            with pytest.raises(TransientError) as caught:
                await ledger.begin(intent("r1"), pair=PAIR, origin="m-1", now=T0)
    assert caught.value.reason is Reason.LEDGER_UNAVAILABLE
    assert caught.value.retry_after == 7.0
    assert f"HTTP {status} {code}" in caught.value.description
    assert seen.count("POST") == 1  # not retried by the SDK (the pair's read, sent at once, may not have arrived)
    assert seen.count("GET") <= 1


async def record_status(
    ledger: Ledger, request_id: str, document: dict[str, Any], *, now: datetime, write: StatusWrite = StatusWrite.FINAL
) -> bool:
    """`Ledger.record` of the status record `document` (its JSON, as the API shows it) of `request_id` (of producer
    bulk unless it names one)."""
    record = StatusRecord.from_json({"requestId": request_id, "producer": PRODUCER, **document})
    return await ledger.record(record, now=now, write=write)


async def status_json(ledger: Ledger, request_id: str, producer: str = PRODUCER) -> dict[str, Any] | None:
    """`Ledger.status` as the API shows it (JSON)."""
    record = await ledger.status(request_id, producer=producer)
    return None if record is None else record.to_json()


async def group(ledger: Ledger, kind: GroupKind, group_id: str, producer: str = PRODUCER) -> Group:
    """`producer`'s group (an empty one when it has none)."""
    found = await ledger.group(kind, group_id, producer=producer)
    assert len(found) <= 1
    return found[0] if found else Group(rows=[])


async def history_json(ledger: Ledger, **scope: Any) -> list[dict[str, Any]]:
    """`Ledger.history` as the API shows it (JSON)."""
    return [record.to_json() for record in await ledger.history(**scope)]


# --- request status ---------------------------------------------------------------------------------------------


async def test_a_status_is_recorded_beside_the_request_and_accepted_never_replaces_a_later_one(ledger: Ledger) -> None:
    """accepted (first only) then granted (final): the record is the last one, acceptedAt kept; an accepted that
    comes late changes nothing; the idempotency record of the same id is untouched; a job's rows are listed."""
    hostile = 'RITM/1?#"\x00'
    assert await status_json(ledger, hostile) is None
    assert await record_status(ledger, hostile, {"status": "accepted", "attempts": 0}, now=T0, write=StatusWrite.FIRST)
    await admitted(ledger, intent(hostile))
    later = T0 + timedelta(seconds=3)
    granted = {"status": "granted", "attempts": 1, "jobId": "job-1", "jobRow": 1, "jobRows": 1, "graphRequestId": "g"}
    assert await record_status(ledger, hostile, granted, now=later)
    assert not await record_status(ledger, hostile, {"status": "accepted"}, now=later, write=StatusWrite.FIRST)
    record = await status_json(ledger, hostile)
    assert record is not None
    assert (record["requestId"], record["status"], record["attempts"], record["graphRequestId"]) == (
        hostile,
        "granted",
        1,
        "g",
    )
    assert (record["acceptedAt"], record["updatedAt"]) == (T0.isoformat(), later.isoformat())
    recorded = await ledger.request(hostile, producer=PRODUCER)
    assert recorded is not None
    assert recorded.origin == "m-1"
    assert [row["requestId"] for row in (await group(ledger, "job", "job-1")).rows] == [hostile]
    assert await ledger.group("job", "job-2", producer=PRODUCER) == []


async def test_a_pending_status_never_replaces_a_terminal_one(ledger: Ledger) -> None:
    """in_progress and retry_scheduled (progress) move a request forward, never back: once granted, a retry of a
    copy racing it leaves granted in the status, the member's and target's history and the job's row."""
    record = {"memberId": USER, "targetId": AU, "jobId": "job-9", "jobRow": 3, "jobRows": 5}
    progress = StatusWrite.PROGRESS
    assert await record_status(ledger, "r", {**record, "status": "in_progress"}, now=T0, write=progress)
    assert await record_status(ledger, "r", {**record, "status": "retry_scheduled"}, now=T0, write=progress)
    assert await record_status(ledger, "r", {**record, "status": "granted"}, now=T0)
    assert not await record_status(ledger, "r", {**record, "status": "in_progress"}, now=T0, write=progress)
    status = await status_json(ledger, "r")
    assert status is not None
    assert status["status"] == "granted"
    assert [row["status"] for row in await history_json(ledger, member=USER)] == ["granted"]
    assert [row["status"] for row in await history_json(ledger, target=AU)] == ["granted"]
    [row] = (await group(ledger, "job", "job-9")).rows
    assert (row["status"], row["jobRow"], row["jobRows"]) == ("granted", 3, 5)


async def test_history_lists_every_request_for_a_member_or_target_newest_intent_first(ledger: Ledger) -> None:
    """A joiner, a mover and a leaver for one member, recorded out of order: the member's history lists them
    newest intent first; each target's lists its own; since narrows by intent time; a role is found by its id and
    by its template."""
    role, template = "9b1c4d2e-0000-4000-8000-000000000001", "62e90394-69f5-4237-9190-012177145e10"
    for request_id, target, hours, status in (
        ("leave", {"targetId": AU}, 48, "revoked"),
        ("join", {"targetId": AU}, 0, "granted"),
        ("move", {"targetId": role, "roleTemplateId": template}, 24, "granted"),
    ):
        at = (T0 + timedelta(hours=hours)).isoformat()
        await record_status(ledger, request_id, {"status": status, "memberId": USER, "intentAt": at, **target}, now=T0)
    assert [row["requestId"] for row in await history_json(ledger, member=USER)] == ["leave", "move", "join"]
    assert [row["requestId"] for row in await history_json(ledger, target=AU)] == ["leave", "join"]
    assert [row["requestId"] for row in await history_json(ledger, target=template)] == ["move"]
    assert [row["requestId"] for row in await history_json(ledger, target=role)] == ["move"]
    since = T0 + timedelta(hours=1)
    assert [row["requestId"] for row in await history_json(ledger, member=USER, since=since)] == ["leave", "move"]
    exactly = T0 + timedelta(hours=24)
    assert [row["requestId"] for row in await history_json(ledger, member=USER, since=exactly)] == ["leave", "move"]
    assert [row["requestId"] for row in await history_json(ledger, member=USER, limit=1)] == ["leave"]
    assert await history_json(ledger, member=AU) == []


async def test_an_expiry_removal_is_noted_on_the_grant_it_ends(ledger: Ledger) -> None:
    """A granted time-bound request shows its removal as scheduled until the removal's own status is recorded."""
    expires = (T0 + timedelta(days=1)).isoformat()
    await record_status(ledger, "g", {"status": "granted", "expiresAt": expires}, now=T0)
    status = await status_json(ledger, "g")
    assert status is not None
    assert status["removal"] == {"status": "scheduled", "dueAt": expires}
    later = T0 + timedelta(days=1)
    removal = {"status": "revoked", "requestId": "~expire:1", "expiryOf": "g"}
    await record_status(ledger, "~expire:1", removal, now=later)
    status = await status_json(ledger, "g")
    assert status is not None
    assert status["status"] == "granted"
    assert status["removal"] == {
        "status": "revoked",
        "requestId": "~expire:1",
        "reason": None,
        "updatedAt": later.isoformat(),
    }
    await record_status(ledger, "~expire:2", {"status": "revoked", "expiryOf": "unknown"}, now=later)
    assert await status_json(ledger, "unknown") is None  # a removal never creates the status of a grant it cannot find


async def test_a_job_row_is_written_only_by_the_request_that_first_recorded_it(ledger: Ledger) -> None:
    """Another request naming the same job and row (a forged or mistaken one) never changes that row, whatever it
    reports: the job keeps showing its own row's dead letter."""
    row = {"memberId": USER, "targetId": AU, "jobId": "job-7", "jobRow": 1, "jobRows": 1}
    assert await record_status(ledger, "job-7:1", {**row, "status": "dead_lettered", "reason": "Forbidden"}, now=T0)
    await record_status(ledger, "forged", {**row, "status": "granted"}, now=T0)
    await record_status(ledger, "forged", {**row, "status": "in_progress"}, now=T0, write=StatusWrite.PROGRESS)
    found = await group(ledger, "job", "job-7")
    assert [(r["requestId"], r["status"]) for r in found.rows] == [("job-7:1", "dead_lettered")]
    assert [r.request_id for r in found.failed] == ["job-7:1"]
    assert await record_status(ledger, "job-7:1", {**row, "status": "granted"}, now=T0)  # its own: written
    assert [r["status"] for r in (await group(ledger, "job", "job-7")).rows] == ["granted"]
