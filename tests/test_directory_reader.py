"""Reading who holds a target from the Graph double, over real HTTP with the managed-identity token flow."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from grants_local.graph_double import Fault, GraphDouble
from grants_local.queue import ManualClock
from grants_local.token_endpoint import TokenEndpoint
from shared.adapters.directory import DirectoryReader, ReadPacer
from shared.adapters.governor import WriteGovernor
from shared.adapters.graph import GraphClient, new_http_client
from shared.adapters.identity import ManagedIdentityTokens, managed_identity_credential
from shared.core.contract import AdministrativeUnit, DirectoryRole, Guid, ScopedRole, Target
from shared.core.errors import PermanentError, Reason, TransientError
from tests.conftest import (
    AU,
    AU_OTHER,
    HELPDESK_ROLE,
    HELPDESK_TEMPLATE,
    SEED,
    UNKNOWN,
    USER,
    USER_2,
    USER_ADMIN_TEMPLATE,
)

UNIT = AdministrativeUnit(id=Guid(AU))
BY_ID = DirectoryRole(id=Guid(HELPDESK_ROLE))
BY_TEMPLATE = DirectoryRole(role_template_id=Guid(HELPDESK_TEMPLATE))
SCOPED = ScopedRole(role_template_id=Guid(HELPDESK_TEMPLATE), administrative_unit_id=Guid(AU))
IDLE = DirectoryRole(role_template_id=Guid(USER_ADMIN_TEMPLATE))  # not activated in the seed


class Wire:
    """What went over the wire: method, URL (as sent) and x-ms-throttle-priority of each request to Graph."""

    def __init__(self, graph: GraphDouble) -> None:
        self.graph = graph
        self.sent: list[tuple[str, str, str]] = []

    async def __call__(self, request: httpx.Request) -> None:
        url = str(request.url)
        if url.startswith(self.graph.base_url):
            self.sent.append(
                (request.method, url[len(self.graph.base_url) :], request.headers["x-ms-throttle-priority"])
            )


@asynccontextmanager
async def reading(
    graph: GraphDouble, *, governor: WriteGovernor | None = None, pacer: ReadPacer | None = None, **options: Any
) -> AsyncIterator[tuple[DirectoryReader, Wire]]:
    """A reader on the app's own parts: httpx client, managed-identity credential, `GraphClient`."""
    http = new_http_client()
    wire = Wire(graph)
    http.event_hooks["request"].append(wire)
    credential = managed_identity_credential(http=http, client_id=None)
    tokens = ManagedIdentityTokens(credential, scope=graph.scope)
    client = GraphClient(http=http, tokens=tokens, base_url=graph.base_url, governor=governor)
    try:
        yield DirectoryReader(graph=client, pacer=pacer or ReadPacer(rate=1000.0), **options), wire
    finally:
        await credential.close()
        await http.aclose()


def principals(graph: GraphDouble, count: int) -> list[Guid]:
    return sorted(Guid(graph.add_user(f"{n:08x}-2000-4000-8000-000000000000")) for n in range(count))


# --- is M a member of T ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [UNIT, BY_ID, BY_TEMPLATE, SCOPED], ids=["unit", "role", "template", "scoped"])
async def test_is_member_answers_for_every_target_kind(graph: GraphDouble, target: Target) -> None:
    if isinstance(target, ScopedRole):
        graph.assign_scoped_role(AU, HELPDESK_TEMPLATE, USER)
    else:
        graph.add_member(AU if target is UNIT else HELPDESK_ROLE, USER)
    async with reading(graph) as (reader, wire):
        assert await reader.is_member(target=target, member=Guid(USER))
        assert not await reader.is_member(target=target, member=Guid(USER_2))

    assert {method for method, _, _ in wire.sent} == {"GET"}
    assert graph.write_count == 0


async def test_nobody_holds_a_role_template_that_is_not_activated(graph: GraphDouble) -> None:
    async with reading(graph) as (reader, _):
        assert not await reader.is_member(target=IDLE, member=Guid(USER))
        assert await reader.member_set(target=IDLE) == frozenset()
        scoped = ScopedRole(role_template_id=Guid(USER_ADMIN_TEMPLATE), administrative_unit_id=Guid(AU))
        assert not await reader.is_member(target=scoped, member=Guid(USER))


@pytest.mark.parametrize(
    "target",
    [
        AdministrativeUnit(id=Guid(UNKNOWN)),
        DirectoryRole(id=Guid(UNKNOWN)),
        ScopedRole(role_template_id=Guid(HELPDESK_TEMPLATE), administrative_unit_id=Guid(UNKNOWN)),
    ],
    ids=["unit", "role", "scoped role's unit"],
)
async def test_a_target_that_does_not_exist_is_target_not_found(graph: GraphDouble, target: Target) -> None:
    async with reading(graph) as (reader, _):
        for read in (reader.is_member(target=target, member=Guid(USER)), reader.member_set(target=target)):
            with pytest.raises(PermanentError) as raised:
                await read
            assert raised.value.reason is Reason.TARGET_NOT_FOUND


# --- listing -----------------------------------------------------------------------------------------------------


async def test_a_units_members_are_streamed_page_by_page_with_select_id_and_top_999(graph: GraphDouble) -> None:
    members = principals(graph, 2_500)
    for member in members:
        graph.add_member(AU, member)
    async with reading(graph) as (reader, wire):
        pages = [page async for page in reader.members(target=UNIT)]

    assert [len(page) for page in pages] == [999, 999, 502]
    assert [m for page in pages for m in page] == members
    first = wire.sent[0]
    assert first == ("GET", f"/directory/administrativeUnits/{AU}/members?$select=id&$top=999", "Low")
    assert all(priority == "Low" for _, _, priority in wire.sent), "a sweep reads at Low priority"
    assert graph.read_units == 3


async def test_a_roles_members_are_one_page_whether_named_by_id_or_template(graph: GraphDouble) -> None:
    members = principals(graph, 40)
    for member in members:
        graph.add_member(HELPDESK_ROLE, member)
    async with reading(graph) as (reader, wire):
        by_id = [page async for page in reader.members(target=BY_ID)]
        by_template = await reader.member_set(target=BY_TEMPLATE)

    assert by_id == [tuple(members)]
    assert by_template == frozenset(members)
    assert [url for _, url, _ in wire.sent] == [
        f"/directoryRoles/{HELPDESK_ROLE}/members?$select=id",
        f"/directoryRoles(roleTemplateId='{HELPDESK_TEMPLATE}')",
        f"/directoryRoles/{HELPDESK_ROLE}/members?$select=id",
    ], "a template's role is read by its id, found once with Graph's alternate key"


async def test_a_role_listing_that_may_have_been_cut_is_refused(graph: GraphDouble) -> None:
    """Graph lists at most 1,000 members of a role, without a next link: a full page cannot be trusted."""
    for member in principals(graph, 1_000):
        graph.add_member(HELPDESK_ROLE, member)
    async with reading(graph) as (reader, _):
        with pytest.raises(PermanentError, match="may be cut"):
            await reader.member_set(target=BY_ID)


async def test_a_scoped_roles_members_are_that_roles_memberships_in_the_unit(graph: GraphDouble) -> None:
    graph.add_role_template("62e90394-69f5-4237-9190-012177145e10", activated=True)
    graph.assign_scoped_role(AU, HELPDESK_TEMPLATE, USER)
    graph.assign_scoped_role(AU, "62e90394-69f5-4237-9190-012177145e10", USER_2)  # another role
    graph.assign_scoped_role(AU_OTHER, HELPDESK_TEMPLATE, USER_2)  # another unit
    async with reading(graph) as (reader, wire):
        assert await reader.member_set(target=SCOPED) == {USER}
        assert await reader.is_member(target=SCOPED, member=Guid(USER))

    role_lookups = [url for _, url, _ in wire.sent if url.startswith("/directoryRoles")]
    assert role_lookups == [f"/directoryRoles(roleTemplateId='{HELPDESK_TEMPLATE}')"], "the role's id is remembered"


# --- reads and writes: separate budgets ----------------------------------------------------------------------------


async def test_reads_never_wait_for_the_write_governor(graph: GraphDouble) -> None:
    """The write bucket is empty for the next million seconds; a sweep's reads go through all the same."""
    governor = WriteGovernor(rate=1e-6)
    await governor.acquire()  # the one token there was
    for member in principals(graph, 30):
        graph.add_member(AU, member)
    async with reading(graph, governor=governor, page_size=10) as (reader, _):
        listed = await asyncio.wait_for(reader.member_set(target=UNIT), timeout=10)
        assert await asyncio.wait_for(reader.is_member(target=UNIT, member=min(listed)), timeout=10)

    assert len(listed) == 30
    assert governor.pauses == 0


async def test_a_read_throttled_by_the_read_limit_does_not_pause_writers_one_of_unknown_scope_does(
    graph: GraphDouble,
) -> None:
    governor = WriteGovernor(rate=0)
    graph.read_budget = (1, 60.0)
    async with reading(graph, governor=governor, throttle_retries=0) as (reader, _):
        await reader.is_member(target=UNIT, member=Guid(USER))
        with pytest.raises(TransientError):
            await reader.is_member(target=UNIT, member=Guid(USER))  # 429, scope .../Read/...
        assert governor.pauses == 0
        graph.read_budget = None
        graph.inject(Fault.status(429, retry_after=1))  # no x-ms-throttle-scope: it may be the shared quota
        reader.pacer = ReadPacer(rate=1000.0)
        with pytest.raises(TransientError):
            await reader.is_member(target=UNIT, member=Guid(USER))
        assert governor.pauses == 1


# --- pacing and throttling -----------------------------------------------------------------------------------------


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def timed_graph(token_endpoint: TokenEndpoint, clock: ManualClock) -> Iterator[GraphDouble]:
    """The seeded double on the test's clock (its read budget's window moves only with it)."""
    with GraphDouble(token_endpoint, clock=clock) as double:
        double.load(SEED)
        yield double


def pacer_on(clock: ManualClock, **options: Any) -> ReadPacer:
    return ReadPacer(clock=clock, sleep=clock.sleep, **options)


async def test_a_sweep_starts_at_most_rate_reads_per_second(timed_graph: GraphDouble, clock: ManualClock) -> None:
    for member in principals(timed_graph, 50):
        timed_graph.add_member(AU, member)
    started = clock()
    async with reading(timed_graph, pacer=pacer_on(clock, rate=5.0), page_size=5) as (reader, _):
        assert len(await reader.member_set(target=UNIT)) == 50

    assert timed_graph.read_count == 10
    assert clock() - started == pytest.approx(9 / 5.0)


async def test_a_read_429_is_waited_out_for_its_retry_after_then_sent_again(
    timed_graph: GraphDouble, clock: ManualClock
) -> None:
    """Given 2 units per 10 s: the third page is throttled; the reader waits Graph's Retry-After and goes on."""
    for member in principals(timed_graph, 3):
        timed_graph.add_member(AU, member)
    timed_graph.read_budget = (2, 10.0)
    pacer = pacer_on(clock, rate=100.0)
    started = clock()
    async with reading(timed_graph, pacer=pacer, page_size=1) as (reader, _):
        assert len(await reader.member_set(target=UNIT)) == 3

    assert (timed_graph.reads_throttled, pacer.waits) == (1, 1)
    assert clock() - started >= 10.0
    assert pacer.rate < 100.0, "and it slowed down"


async def test_reads_throttled_past_the_retries_are_a_transient_throttled_error_with_a_bounded_delay(
    timed_graph: GraphDouble, clock: ManualClock
) -> None:
    timed_graph.inject(*[Fault.status(429, retry_after=3600) for _ in range(3)])
    async with reading(timed_graph, pacer=pacer_on(clock, max_wait=60.0), throttle_retries=2) as (reader, _):
        with pytest.raises(TransientError) as raised:
            await reader.is_member(target=UNIT, member=Guid(USER))

    assert raised.value.reason is Reason.THROTTLED
    assert raised.value.retry_after == 60.0
    assert timed_graph.pending_faults == 0


async def test_the_pace_halves_while_graph_says_the_quota_is_over_four_fifths_used(
    timed_graph: GraphDouble, clock: ManualClock
) -> None:
    timed_graph.read_budget = (10, 100.0)
    pacer = pacer_on(clock, rate=8.0)
    rates: list[float] = []
    async with reading(timed_graph, pacer=pacer) as (reader, _):
        for _ in range(10):
            await reader.is_member(target=UNIT, member=Guid(USER))
            rates.append(pacer.rate)

    assert rates[:8] == [8.0] * 8  # up to 0.8 of the quota: no signal
    assert rates[8] == 4.0
    assert rates[9] <= 4.0


def test_the_pacers_wait_is_bounded_and_defaults_when_graph_names_none() -> None:
    pacer = pacer_on(ManualClock(), max_wait=30.0, default_wait=5.0)

    assert pacer.throttled(None) == 5.0
    assert pacer.throttled(500.0) == 30.0
