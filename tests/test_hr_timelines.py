"""HR events as HR systems mean them, through the registered functions (``hr_events``, ``grant_membership``,
``hr_event_status``) on the local host, the ledger in Azurite and the Graph double: effective dates decide (a leaver
and a mover entered in either order, effective in either order), copies of an event are never newer than it, every
person under an event id is followed, a mover sets what HR gives, and an event's sends are retried until the queue's
last delivery. HR events are entered at the run's clock; time moves on only when a test says so."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import azure.functions as func
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import function_app
from grants_cli.dlq import Selector, resubmit
from grants_local.backend import LocalBackend
from grants_local.graph_double import GraphDouble
from grants_local.host import LocalHost, OutcomeRecorder, registered_function
from grants_local.queue import LocalQueue, LocalSender
from grants_local.settlement_server import LocalSettlementServer, point_message_actions_at
from shared.core.hr_events import KnownEvent, Placement, parse_event
from shared.core.hr_rules import HrRules
from tests.conftest import AU, AU_OTHER, HELPDESK_ROLE, HELPDESK_TEMPLATE, UNKNOWN, USER, Run, as_operator
from tests.conftest import body as grant_body

HR = registered_function(function_app.app, "hr_events")
HR_EVENT_STATUS = registered_function(function_app.app, "hr_event_status")

RULES = {
    "rules": [
        {"name": "emea", "when": {"location": "EMEA"}, "grants": [{"type": "administrativeUnit", "id": AU}]},
        {"name": "apac", "when": {"location": "APAC"}, "grants": [{"type": "administrativeUnit", "id": AU_OTHER}]},
        {
            "name": "helpdesk",
            "when": {"jobCode": "HD1", "department": "IT"},
            "grants": [{"type": "directoryRole", "roleTemplateId": HELPDESK_TEMPLATE}],
        },
    ]
}
#: Where the rules put a person, by rule name.
PLACES = {"emea": AU, "apac": AU_OTHER, "helpdesk": HELPDESK_ROLE}


def hr_event(
    kind: str,
    event_id: str,
    *,
    effective: str | None = None,
    occurred: str | None = None,
    member: str = USER,
    **attributes: Any,
) -> bytes:
    """An HR event for `member` (EMP-4711, in IT at EMEA as HD1 unless `attributes` say otherwise)."""
    document: dict[str, Any] = {
        "eventId": event_id,
        "eventType": kind,
        "employeeId": "EMP-4711",
        "userObjectId": member,
        "department": "IT",
        "location": "EMEA",
        "jobCode": "HD1",
        **attributes,
    }
    if effective is not None:
        document["effectiveDate"] = effective
    if occurred is not None:
        document["occurredAt"] = occurred
    return json.dumps(document).encode()


def adds(body: bytes, target: str) -> bool:
    """True when the grant message `body` adds its member to `target` (a unit's id or a role's template)."""
    document = json.loads(body)
    return bool(document["action"] == "add" and target in document["target"].values())


def at(text: str) -> float:
    """A date (midnight UTC) or an RFC 3339 time, as clock seconds."""
    moment = datetime.fromisoformat(text if "T" in text else f"{text}T00:00:00+00:00")
    return moment.astimezone(UTC).timestamp()


class Hr:
    """The run with its hr-events queue (and settlement server): events are entered at the run's clock, their grants
    due then are carried out at once, and later ones when the clock is moved on."""

    def __init__(self, run: Run, stack: ExitStack) -> None:
        self.run = run
        self.queue = LocalQueue(clock=run.clock)
        server = stack.enter_context(LocalSettlementServer(self.queue))
        self.actions = point_message_actions_at(server.address)
        self.recorder = stack.enter_context(OutcomeRecorder("hrEvent").attached())
        sender = run.app.sender
        assert isinstance(sender, LocalSender)
        self.sender = sender
        self.entered = 0

    async def enter(self, body: bytes, *, message_id: str | None = None) -> list[dict[str, Any]]:
        """The HR system sends `body` now (MessageId e-1, e-2, … unless given); every delivery of it is handled (a
        redelivery a lock duration later), then the grants due are carried out; its outcome records."""
        self.entered += 1
        message_id = message_id or f"e-{self.entered}"
        self.queue.send(body, message_id=message_id)
        return await self.handle(message_id)

    async def handle(self, message_id: str) -> list[dict[str, Any]]:
        """Deliver the hr-events queue until it is empty, then the grants due by now; `message_id`'s outcome
        records."""
        await LocalHost(queue=self.queue, function=HR, actions=self.actions, clock=self.run.clock).drain()
        await self.until(self.run.clock())
        return [record for record in self.recorder.records if record["messageId"] == message_id]

    async def until(self, when: float | str) -> None:
        """Carry out every grant due by `when` (clock seconds, a date or a time), then move the clock there."""
        moment = at(when) if isinstance(when, str) else when
        await self.run.app.host().drain(until=moment)
        self.run.clock.advance_to(moment)

    async def finish(self) -> None:
        """Carry out everything scheduled, however far ahead."""
        await self.run.app.drain()

    def holds(self, member: str = USER) -> set[str]:
        """Where `member` is, by rule name."""
        return {name for name, place in PLACES.items() if member in self.run.graph.members_of(place)}

    def outcome(self, event_id: str, target: str) -> str:
        """The outcome of `event_id`'s grant of `target` (a unit's id or the role's template)."""
        found = [
            str(record["outcome"])
            for record in self.run.app.outcomes().values()
            if str(record["requestId"]).startswith(f"~hr:{event_id}:")
            and target in (record["targetId"], record["roleTemplateId"])
        ]
        assert len(found) == 1, found
        return found[0]

    async def status(self, event_id: str) -> dict[str, Any]:
        """``GET /api/hr-events/{event_id}`` as an operator."""
        request = func.HttpRequest(
            "GET",
            f"http://localhost/api/hr-events/{event_id}",
            headers=as_operator(),
            body=b"",
            route_params={"eventId": event_id},
        )
        response = await HR_EVENT_STATUS(request)
        assert response.status_code == 200, response.get_body()
        document: dict[str, Any] = json.loads(response.get_body())
        return document


@pytest.fixture
async def hr_run(make_run: Callable[..., Any], tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps(RULES))
    with ExitStack() as stack:

        async def make(*, leavers: str | None = None, **env: str) -> Hr:
            """A run with the test's rules (and `leavers` as given: ``endOfDay`` or ``immediately``), unless `env` names
            a rules file of its own."""
            path = rules
            if leavers is not None:
                path = tmp_path / f"rules-{leavers}.json"
                path.write_text(json.dumps({**RULES, "leavers": leavers}))
            hr = Hr(await make_run(**{"GRANTS_HR_RULES": str(path), **env}), stack)
            hr.run.clock.advance_to(at("2026-11-01T09:00:00Z"))
            return hr

        yield make


# --- effective dates decide -------------------------------------------------------------------------------------------

BOTH = {"apac", "helpdesk"}


@pytest.mark.parametrize(
    ("entered_first", "leaver_day", "mover_day", "between", "then"),
    [
        # the leaver entered ahead of its date, a transfer effective today recorded that evening: the leaver wins
        ("leaver", "2026-11-20", "2026-11-10", BOTH, set()),
        ("mover", "2026-11-20", "2026-11-10", BOTH, set()),
        # a mover effective after the leaver's last day is the person's state from then on, whenever it was entered
        ("leaver", "2026-11-10", "2026-11-25", set(), BOTH),
        ("mover", "2026-11-10", "2026-11-25", set(), BOTH),
        # effective on one day: the mover at its start, the leaver at its end (the person is gone by the next day)
        ("leaver", "2026-11-20", "2026-11-20", {"emea", "helpdesk"}, set()),
        ("mover", "2026-11-20", "2026-11-20", {"emea", "helpdesk"}, set()),
        # both effective already when entered (a leaver entered late): the later effective one, the mover, stands
        ("leaver", "2026-11-05", "2026-11-08", BOTH, BOTH),
        ("mover", "2026-11-05", "2026-11-08", BOTH, BOTH),
    ],
)
async def test_a_leaver_and_a_mover_end_as_the_later_effective_one_says_in_either_entry_order(
    hr_run: Callable[..., Any],
    entered_first: str,
    leaver_day: str,
    mover_day: str,
    between: set[str],
    then: set[str],
) -> None:
    """Hired on the 1st (EMEA, helpdesk); on the 10th at noon and in the evening HR enters a leaver and a transfer to
    APAC, in either order, effective on the given days: on the 15th the person has what the event effective by then
    gives, and once both days have passed what the later effective one gives (a leaver ends at the end of its day)."""
    hr: Hr = await hr_run()
    await hr.enter(hr_event("hire", "evt-hire", effective="2026-11-01"))
    assert hr.holds() == {"emea", "helpdesk"}
    leaver = hr_event("leave", "evt-leave", effective=leaver_day)
    mover = hr_event("move", "evt-move", effective=mover_day, location="APAC", previous={"location": "EMEA"})
    first, second = (leaver, mover) if entered_first == "leaver" else (mover, leaver)
    await hr.until("2026-11-10T12:00:00Z")
    await hr.enter(first)
    await hr.until("2026-11-10T18:00:00Z")
    await hr.enter(second)
    await hr.until("2026-11-15")
    assert hr.holds() == between
    await hr.finish()
    assert hr.holds() == then
    if not then:  # the leaver's removal of the unit the transfer gave is carried out, never superseded by it
        assert hr.outcome("evt-leave", AU_OTHER) == "revoked"


@pytest.mark.parametrize(
    ("leaver_id", "leaver_occurred", "rehire_id", "rehire_occurred", "entered_first", "then"),
    [
        ("zz-leave", "2026-11-10T10:00:00Z", "aa-rehire", "2026-11-12T10:00:00Z", "leaver", {"emea", "helpdesk"}),
        ("aa-leave", "2026-11-12T10:00:00Z", "zz-rehire", "2026-11-10T10:00:00Z", "leaver", set()),
        # the same occurredAt: the one that arrived later wins
        ("zz-leave", "2026-11-12T10:00:00Z", "aa-rehire", "2026-11-12T10:00:00Z", "leaver", {"emea", "helpdesk"}),
        ("aa-leave", "2026-11-12T10:00:00Z", "zz-rehire", "2026-11-12T10:00:00Z", "rehire", set()),
    ],
)
async def test_a_leaver_and_a_rehire_of_one_moment_are_ordered_by_when_they_occurred_never_by_their_ids(
    hr_run: Callable[..., Any],
    leaver_id: str,
    leaver_occurred: str,
    rehire_id: str,
    rehire_occurred: str,
    entered_first: str,
    then: set[str],
) -> None:
    """A leaver effective on the 20th ends at midnight, the moment a rehire effective on the 21st starts: the one that
    occurred later wins, else the one that arrived later, whichever id sorts first."""
    hr: Hr = await hr_run()
    await hr.enter(hr_event("hire", "evt-hire", effective="2026-11-01"))
    await hr.until("2026-11-15")
    leaver = hr_event("leave", leaver_id, effective="2026-11-20", occurred=leaver_occurred)
    rehire = hr_event("hire", rehire_id, effective="2026-11-21", occurred=rehire_occurred)
    for body in (leaver, rehire) if entered_first == "leaver" else (rehire, leaver):
        await hr.enter(body)
        await hr.until(hr.run.clock() + 60)
    await hr.finish()
    assert hr.holds() == then


# --- no copy of an event is newer than the event ----------------------------------------------------------------------


@pytest.mark.parametrize("copy", ["dlq resubmit", "sent again by the HR system"])
async def test_a_mover_whose_add_could_not_be_sent_keeps_its_time_when_carried_again_after_the_leaver(
    hr_run: Callable[..., Any], copy: str
) -> None:
    """A transfer to APAC (no effective date, no occurredAt: it is placed at its first arrival) whose APAC add cannot
    be sent is dead-lettered QueueUnavailable, its status saying what was sent and what not; the person then leaves and
    loses everything; the transfer carried again (an operator's resubmission, or the HR system sending it again past
    duplicate detection's window) is the same event at the same time: its APAC add is superseded by the leaver."""
    hr: Hr = await hr_run()
    await hr.enter(hr_event("hire", "evt-hire"))
    await hr.until("2026-11-05")
    hr.sender.fail_when(lambda body: adds(body, AU_OTHER))
    moved = hr_event("move", "evt-move", location="APAC", previous={"location": "EMEA"})
    records = await hr.enter(moved)
    assert [record["outcome"] for record in records] == ["unsettled"] * 9 + ["dead_lettered"]
    assert records[-1]["reason"] == "QueueUnavailable"
    status = await hr.status("evt-move")  # its end of EMEA went; the adds from the failed one on did not
    assert (status["rows"], status["notSent"], status["done"], status["event"]["outcome"]) == (
        3,
        2,
        False,
        "incomplete",
    )
    assert [(row["jobRow"], row["action"], *row["target"].values()) for row in status["people"][0]["notSent"]] == [
        (2, "add", "administrativeUnit", AU_OTHER),
        (3, "add", "directoryRole", HELPDESK_TEMPLATE),
    ]
    assert hr.holds() == {"helpdesk"}
    await hr.until("2026-11-06")
    await hr.enter(hr_event("leave", "evt-leave"))
    assert hr.holds() == set()
    await hr.until("2026-11-07")
    hr.sender.fail_when(None)
    if copy == "dlq resubmit":
        [resubmitted] = resubmit(LocalBackend(hr.queue), Selector(reason="QueueUnavailable"))
        await hr.handle(resubmitted.message_id)
    else:
        await hr.enter(moved, message_id="e-again")
    await hr.finish()
    assert hr.holds() == set()
    assert hr.outcome("evt-move", AU_OTHER) == "superseded"
    status = await hr.status("evt-move")
    assert (status["notSent"], status["done"], status["event"]["outcome"]) == (0, True, "completed")


# --- every person under an event id -----------------------------------------------------------------------------------


async def test_two_people_under_one_event_id_are_followed_each_with_their_own_grants_and_failures(
    hr_run: Callable[..., Any],
) -> None:
    """Two hires under evt-9, one of a user the directory does not have: the event counts all four grants, two
    succeeded and two dead-lettered MemberNotFound, and names the failures per person."""
    hr: Hr = await hr_run(GRANTS_MEMBER_NOT_FOUND_MIN_ATTEMPTS="2")
    await hr.enter(hr_event("hire", "evt-9"))
    await hr.enter(hr_event("hire", "evt-9", member=UNKNOWN))
    await hr.finish()
    status = await hr.status("evt-9")
    assert (status["rows"], status["terminal"], status["done"], status["succeeded"]) == (4, 4, True, 2)
    assert sorted((row["memberId"], row["reason"]) for row in status["failed"]) == [(UNKNOWN, "MemberNotFound")] * 2
    people = {person["userObjectId"]: person for person in status["people"]}
    assert {name: (p["rows"], p["succeeded"], len(p["failed"]), p["done"]) for name, p in people.items()} == {
        USER: (2, 2, 0, True),
        UNKNOWN: (2, 0, 2, True),
    }
    assert "event" not in status  # two people: each has their own record
    assert hr.holds() == {"emea", "helpdesk"}


# --- a mover sets what HR gives ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("hire_entered", ["before the mover", "after the mover"])
async def test_a_mover_ends_what_the_person_s_older_events_gave_that_it_does_not_whatever_its_previous_says(
    hr_run: Callable[..., Any], hire_entered: str
) -> None:
    """Hired in IT at EMEA (EMEA, helpdesk); a transfer to Sales was lost; a move to APAC whose previous names only the
    location: the person ends in APAC alone (helpdesk is ended too), whether the hire was entered before the move or,
    effective earlier, only after it."""
    hr: Hr = await hr_run()
    hire = hr_event("hire", "evt-hire", effective="2026-11-01")
    mover = hr_event(
        "move", "evt-move", effective="2026-11-10", location="APAC", department="Sales", previous={"location": "EMEA"}
    )
    if hire_entered == "before the mover":
        await hr.enter(hire)
        await hr.until("2026-11-09")
        await hr.enter(mover)
    else:
        await hr.until("2026-11-09")
        await hr.enter(mover)
        await hr.enter(hire)
    assert hr.holds() == {"emea", "helpdesk"}
    await hr.finish()
    assert hr.holds() == {"apac"}


# --- the queue's retry budget -----------------------------------------------------------------------------------------


async def test_an_event_whose_sends_keep_failing_is_retried_until_the_queue_s_last_delivery_and_says_what_was_sent(
    hr_run: Callable[..., Any],
) -> None:
    """A hire whose second grant can never be sent: with GRANTS_MAX_ATTEMPTS 8 and the queue's 10 deliveries, it is
    delivered 10 times and dead-lettered on the last; the event's status says 1 of 2 sent, which one was not, and
    is not done."""
    hr: Hr = await hr_run(GRANTS_MAX_ATTEMPTS="8", GRANTS_MAX_DELIVERY_COUNT="10")
    hr.sender.fail_when(lambda body: adds(body, HELPDESK_TEMPLATE))
    records = await hr.enter(hr_event("hire", "evt-stuck"))
    assert [record["outcome"] for record in records] == ["unsettled"] * 9 + ["dead_lettered"]
    assert "sent 1 of 2 grant messages" in records[-1]["description"]
    assert "delivery 10, the last the queue allows" in records[-1]["description"]
    await hr.finish()
    status = await hr.status("evt-stuck")
    assert (status["rows"], status["terminal"], status["notSent"], status["done"]) == (2, 1, 1, False)
    assert (status["event"]["outcome"], status["event"]["sent"], status["event"]["attempts"]) == ("incomplete", 1, 10)
    assert [row["target"]["roleTemplateId"] for row in status["event"]["notSent"]] == [HELPDESK_TEMPLATE]
    assert hr.holds() == {"emea"}


# --- any sequence of one person's events ------------------------------------------------------------------------------

#: Examples of the property below, per zone: few by default (the suite stays fast); ``HR_SEQUENCES=200`` runs more.
SEQUENCES = int(os.environ.get("HR_SEQUENCES", "8"))
_RULES = HrRules.parse(RULES, where="test rules")


@dataclass(frozen=True, slots=True)
class Planned:
    """One event of a drawn sequence: its kind and attributes, its effective day (offset from the sequence's first
    day; None: none), whether it says when it occurred, how many of its sends are refused (each refusal fails one
    delivery, which is retried; 10, the queue's deliveries: dead-lettered, then resubmitted by an operator), and
    whether the HR system sends it again, as a new message past duplicate detection's window."""

    kind: str
    location: str
    department: str
    day: int | None
    occurred: bool
    refused: int
    resent: bool


planned_events = st.builds(
    Planned,
    kind=st.sampled_from(["hire", "move", "leave"]),
    location=st.sampled_from(["EMEA", "APAC", "LATAM"]),
    department=st.sampled_from(["IT", "Sales"]),
    day=st.one_of(st.none(), st.integers(-2, 6)),
    occurred=st.booleans(),
    refused=st.sampled_from([0, 0, 0, 1, 3, 10]),
    resent=st.booleans(),
)

#: How long after a moment its grants have all run: one that found another grant of its pair being carried out waits
#: for it (a retry a few minutes on); the effective moments still ahead are midnights, far more than this apart.
SETTLE = timedelta(hours=1)

#: Where an event stands among a person's events, as docs/hr-events.md says: its effective moment, when it occurred
#: (else its first arrival), its first arrival, its id.
Order = tuple[datetime, datetime, datetime, str]


@pytest.fixture
async def shared_run(hr_run: Callable[..., Any]) -> Callable[..., Awaitable[Hr]]:
    """One run for every example of a property (each follows a person of its own), made when first asked for (one
    app is installed at a time: a test has one run); replaced once its clock nears the end of the app's time domain."""
    made: list[Hr] = []

    async def get(**settings: str) -> Hr:
        if not made or made[-1].run.clock() > at("2090-01-01"):
            made.append(await hr_run(**settings))
        return made[-1]

    return get


@pytest.mark.parametrize(
    ("zone", "leavers"),
    [("UTC", "endOfDay"), ("America/Los_Angeles", "immediately"), ("Pacific/Kiritimati", "endOfDay")],
)
@settings(
    max_examples=SEQUENCES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=st.lists(planned_events, min_size=2, max_size=5), data=st.data())
async def test_property_any_sequence_of_a_person_s_events_ends_with_what_the_rules_give_the_latest_effective_state(
    shared_run: Callable[..., Awaitable[Hr]],
    graph: GraphDouble,
    zone: str,
    leavers: str,
    plan: list[Planned],
    data: st.DataObject,
) -> None:
    """Hires (a rehire is a hire after a leaver), moves and leaves of one person, entered in a random order at random
    times around their effective days (or with none), some saying when they occurred, some sent together (delivered at
    once), some whose sends fail for a few deliveries (retried) or for all of them (dead-lettered, then resubmitted by
    an operator), some sent again by the HR system later (past duplicate detection's window): once every event is in,
    at every effective moment reached from then on, and at the end, the person holds exactly what the rules give the
    latest event effective by then (by effective moment, then occurredAt, then first arrival; nothing after a
    leaver)."""
    hr = await shared_run(leavers=leavers, HR_TIME_ZONE=zone)
    copies = [number for number, event in enumerate(plan) for _ in range(2 if event.resent else 1)]
    entries = data.draw(st.permutations(copies), label="entered (the second of a number: sent again)")
    gaps = data.draw(st.lists(st.sampled_from([0, 60, 3600, 6 * 3600, 86_400, 2 * 86_400]), min_size=len(entries)))
    batches: list[tuple[int, list[int]]] = []  # a gap of 0: sent with the one before, delivered together
    for gap, number in zip(gaps, entries, strict=False):
        if gap == 0 and batches:
            batches[-1][1].append(number)
        else:
            batches.append((gap, [number]))
    person = str(uuid.uuid4())
    graph.add_user(person)
    first_day = (datetime.fromtimestamp(hr.run.clock(), UTC) + timedelta(days=2)).date()
    orders: dict[int, Order] = {}
    bodies: dict[int, bytes] = {}
    dead: list[str] = []
    for gap, numbers in batches:
        await hr.until(hr.run.clock() + gap)
        entered = datetime.fromtimestamp(hr.run.clock(), UTC)
        refusing: list[Callable[[bytes], bool]] = []
        originals: list[tuple[int, str]] = []
        for number in numbers:
            event, message_id = plan[number], f"{person[:8]}-m{number}"
            if number in bodies:  # the HR system sends it again: a new message, the same event
                hr.queue.send(bodies[number], message_id=f"{message_id}-again")
                continue
            occurred = entered - timedelta(hours=12, seconds=number) if event.occurred else None
            bodies[number] = _planned_body(event, number, person=person, first_day=first_day, occurred=occurred)
            refusing.append(_refusing(f"{person[:8]}-{number}", event.refused))
            originals.append((number, message_id))
            hr.queue.send(bodies[number], message_id=message_id)
            orders[number] = _order_of(
                event,
                number,
                person=person,
                entered=entered,
                occurred=occurred,
                first_day=first_day,
                zone=zone,
                leavers=leavers,
            )
        hr.sender.fail_when(lambda grant, refusing=refusing: any(refuse(grant) for refuse in refusing))
        try:
            await hr.handle("")
        finally:
            hr.sender.fail_when(None)
        for number, message_id in originals:
            last = [record for record in hr.recorder.records if record["messageId"] == message_id][-1]
            if last["outcome"] == "dead_lettered":  # refused at every delivery (unless it sends nothing)
                assert (plan[number].refused, last["reason"]) == (10, "QueueUnavailable")
                dead.append(message_id)
            else:
                assert last["outcome"] == "completed"
    await hr.until(hr.run.clock() + 3600)
    for message_id in dead:  # the operator's resubmission, once the queue is back
        [copy] = resubmit(LocalBackend(hr.queue), Selector(id=message_id))
        assert (await hr.handle(copy.message_id))[-1]["outcome"] == "completed"
    now = datetime.fromtimestamp(hr.run.clock(), UTC)
    moments = [now, *sorted({order[0] for order in orders.values() if order[0] > now})]
    for moment, following in zip(moments, [*moments[1:], None], strict=True):
        settled = moment + SETTLE  # the grants due then have run (one waiting for another on its pair, too)
        if following is not None and following <= settled:
            continue
        await hr.until(settled.timestamp())
        effective = [number for number, order in orders.items() if order[0] <= settled]
        latest = max(effective, key=orders.__getitem__) if effective else None
        wanted = _given(plan[latest]) if latest is not None else set()
        assert _held(graph, person) == wanted, (settled, latest, batches, orders)
    await hr.finish()
    assert _held(graph, person) == _given(plan[max(orders, key=orders.__getitem__)])


def _refusing(event_id: str, refusals: int) -> Callable[[bytes], bool]:
    """A `LocalSender.fail_when` predicate refusing the first `refusals` sends of `event_id`'s grant messages."""
    left = [refusals]

    def refuse(grant: bytes) -> bool:
        if left[0] <= 0 or not json.loads(grant)["requestId"].startswith(f"~hr:{event_id}:"):
            return False
        left[0] -= 1
        return True

    return refuse


def _planned_body(event: Planned, number: int, *, person: str, first_day: date, occurred: datetime | None) -> bytes:
    effective = (first_day + timedelta(days=event.day)).isoformat() if event.day is not None else None
    previous = {"location": "EMEA" if event.location != "EMEA" else "APAC"}
    return hr_event(
        event.kind,
        f"{person[:8]}-{number}",
        effective=effective,
        occurred=occurred.isoformat() if occurred is not None else None,
        member=person,
        location=event.location,
        department=event.department,
        **({"previous": previous} if event.kind == "move" else {}),
    )


def _order_of(
    event: Planned,
    number: int,
    *,
    person: str,
    entered: datetime,
    occurred: datetime | None,
    first_day: date,
    zone: str,
    leavers: str,
) -> Order:
    """Where `event` stands, as docs/hr-events.md says: its effective moment (midnight in `zone` starting its day, for
    a leaver the one ending it, or its first arrival when earlier with leavers ``immediately``; without a day, when it
    occurred, else its first arrival), then when it occurred (else its first arrival), then its first arrival, then
    its id."""
    when = occurred or entered
    if event.day is None:
        moment = when
    else:
        day = first_day + timedelta(days=event.day + (1 if event.kind == "leave" else 0))
        moment = datetime.combine(day, time.min, tzinfo=ZoneInfo(zone)).astimezone(UTC)
        if event.kind == "leave" and leavers == "immediately":
            moment = min(moment, entered)
    return (moment, when, entered, f"{person[:8]}-{number}:")


def _given(event: Planned) -> set[str]:
    """Where the rules put a person in `event`'s state, by rule name: nowhere after a leaver."""
    if event.kind == "leave":
        return set()
    attributes = {"location": event.location, "department": event.department, "jobCode": "HD1"}
    return {name for target, names in _RULES.targets_for(attributes).items() for name in names}


def _held(graph: GraphDouble, person: str) -> set[str]:
    """Where `person` is, by rule name."""
    return {name for name, place in PLACES.items() if person in graph.members_of(place)}


# --- a hostile HR system, a careless operator -------------------------------------------------------------------------


def sent_grants(hr: Hr) -> int:
    """How many grant messages the app has sent to the grants queue so far."""
    return hr.run.app.queue.stats.sent


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("effectiveDate", "0001-01-01"),
        ("effectiveDate", "9999-12-31"),
        ("effectiveDate", "1999-12-31"),
        ("effectiveDate", "2100-01-01"),
        ("effectiveDate", "2026-02-30"),
        ("effectiveDate", "2026-11-1"),
        ("effectiveDate", "20261101"),
        ("effectiveDate", "2026-11-01T00:00:00Z"),
        ("effectiveDate", "\uff12\uff10\uff12\uff16-11-01"),
        ("effectiveDate", 20261101),
        ("effectiveDate", ""),
        ("occurredAt", "2100-01-01T00:00:00Z"),
        ("occurredAt", "9999-12-31T23:59:59Z"),
        ("occurredAt", "0001-01-01T00:00:00+14:00"),
        ("occurredAt", "9999-12-31T23:59:59-14:00"),
        ("occurredAt", "2026-11-01T00:00:00"),
        ("occurredAt", "2026-11-01"),
        ("occurredAt", 1_790_000_000),
    ],
)
async def test_a_date_outside_the_time_domain_or_malformed_is_dead_lettered_invalid_naming_the_field(
    hr_run: Callable[..., Any], field: str, value: object
) -> None:
    """Years 1 and 9999, a day before 2000 or from 2100 on, a day that does not exist, a date that is not YYYY-MM-DD (a
    time, full-width digits, a number), a time without an offset or past year 9999 in UTC: dead-lettered
    InvalidHrEvent on its first delivery, naming the field; nothing is sent or recorded for the person."""
    hr: Hr = await hr_run()
    document = json.loads(hr_event("hire", "evt-odd", effective="2026-11-20"))
    records = await hr.enter(json.dumps(document | {field: value}).encode())
    assert [(record["outcome"], record["reason"]) for record in records] == [("dead_lettered", "InvalidHrEvent")]
    assert records[0]["description"].startswith(f"{field} must be")
    [dead] = hr.queue.dead_letters()
    assert (dead.reason, dead.description) == ("InvalidHrEvent", records[0]["description"])
    assert sent_grants(hr) == 0
    await hr.finish()
    assert hr.holds() == set()


@pytest.mark.parametrize("zone", ["UTC", "America/Los_Angeles", "Pacific/Kiritimati"])
async def test_effective_dates_at_both_ends_of_the_time_domain_are_carried_out_at_those_ends(
    hr_run: Callable[..., Any], zone: str
) -> None:
    """A hire effective 2000-01-01 (in UTC+14 its midnight is before the domain: it starts at the domain's start) is
    granted now; a leaver effective 2099-12-31 (its end, the next midnight, lies at or past the domain's end: it ends
    a microsecond before) waits, scheduled, and when the clock gets there it removes everything, revoked."""
    hr: Hr = await hr_run(HR_TIME_ZONE=zone)
    await hr.enter(hr_event("hire", "evt-hire", effective="2000-01-01"))
    assert hr.holds() == {"emea", "helpdesk"}
    hire = await hr.status("evt-hire")
    assert (
        hire["event"]["effectiveAt"]
        == max(
            datetime(2000, 1, 1, tzinfo=ZoneInfo(zone)).astimezone(UTC), datetime(2000, 1, 1, tzinfo=UTC)
        ).isoformat()
    )
    records = await hr.enter(hr_event("leave", "evt-leave", effective="2099-12-31"))
    assert records[-1]["outcome"] == "completed"
    leaver = await hr.status("evt-leave")
    end = min(datetime(2100, 1, 1, tzinfo=ZoneInfo(zone)).astimezone(UTC), datetime(2100, 1, 1, tzinfo=UTC))
    end -= timedelta(microseconds=1 if end == datetime(2100, 1, 1, tzinfo=UTC) else 0)
    assert (leaver["event"]["effectiveAt"], leaver["event"]["scheduledFor"]) == (end.isoformat(), end.isoformat())
    assert leaver["totals"] == {"scheduled": 3}
    await hr.until("2099-12-30")
    assert hr.holds() == {"emea", "helpdesk"}
    await hr.finish()
    assert hr.holds() == set()
    assert {hr.outcome("evt-leave", target) for target in (AU, HELPDESK_TEMPLATE)} == {"revoked"}
    assert (await hr.status("evt-leave"))["done"] is True


async def test_an_occurred_at_in_the_future_counts_as_the_event_s_first_arrival_and_cannot_win_a_tie(
    hr_run: Callable[..., Any],
) -> None:
    """A rehire effective the 21st whose occurredAt says 2099 is entered on the 15th, a leaver effective the 20th with
    an honest occurredAt on the 16th: both take effect at midnight on the 21st, and the leaver, which occurred later,
    wins (an HR clock ahead cannot date an event in the future). An event without a date whose occurredAt is in the
    future takes effect at its arrival, not then."""
    hr: Hr = await hr_run()
    await hr.enter(hr_event("hire", "evt-hire", effective="2026-11-01"))
    await hr.until("2026-11-15")
    await hr.enter(hr_event("hire", "evt-rehire", effective="2026-11-21", occurred="2099-01-01T00:00:00Z"))
    await hr.until("2026-11-16")
    await hr.enter(hr_event("leave", "evt-leave", effective="2026-11-20", occurred="2026-11-16T00:00:00Z"))
    rehire = await hr.status("evt-rehire")
    assert rehire["event"]["occurredAt"] == "2099-01-01T00:00:00+00:00"  # kept for the audit, not believed
    await hr.finish()
    assert hr.holds() == set()
    # due at one moment, the two run in either order: the rehire's add finds the hire's grant, or the leaver's end
    assert hr.outcome("evt-rehire", AU) in {"already_member", "superseded"}
    assert hr.outcome("evt-leave", AU) == "revoked"

    other: Hr = await hr_run()
    await other.enter(hr_event("hire", "evt-future", occurred="2099-01-01T00:00:00Z"))
    assert other.holds() == {"emea", "helpdesk"}
    status = await other.status("evt-future")
    assert status["event"]["effectiveAt"] == status["event"]["firstArrivedAt"] == "2026-11-01T09:00:00+00:00"


@pytest.mark.parametrize(
    "altered",
    [
        {"effectiveDate": "2026-12-31"},  # an HR system replaying the leaver, its date moved on
        {"effectiveDate": None},
        {"eventType": "hire"},
        {"location": "APAC"},
        {"occurredAt": "2026-11-09T10:00:00Z"},
        {"employeeId": "EMP-9999"},
    ],
)
async def test_the_same_event_id_with_other_content_past_the_duplicate_window_is_refused_and_changes_nothing(
    hr_run: Callable[..., Any], altered: dict[str, Any]
) -> None:
    """A leaver effective the 20th; a day later, past duplicate detection's window, a message under the same eventId
    with other content (its date moved, dropped, another type, attribute, occurredAt or employee): dead-lettered
    InvalidHrEvent naming the event it was first used for, nothing sent for it; the person still leaves on the 20th and
    the event's status is the first one's. The same content again is the same event (completed, nothing new)."""
    hr: Hr = await hr_run()
    await hr.enter(hr_event("hire", "evt-hire", effective="2026-11-01"))
    await hr.until("2026-11-09")
    leaver = hr_event("leave", "evt-leave", effective="2026-11-20", occurred="2026-11-09T09:00:00Z")
    await hr.enter(leaver)
    before = (sent_grants(hr), await hr.status("evt-leave"))
    await hr.until("2026-11-10")
    document = json.loads(leaver) | altered
    records = await hr.enter(json.dumps({key: value for key, value in document.items() if value is not None}).encode())
    assert [(record["outcome"], record["reason"]) for record in records] == [("dead_lettered", "InvalidHrEvent")]
    assert (
        "eventId evt-leave was first used for another event of this person (leaver, effective 2026-11-20)"
        in (records[0]["description"])
    )
    assert (sent_grants(hr), await hr.status("evt-leave")) == before
    assert (await hr.enter(leaver))[-1]["outcome"] == "completed"
    assert sent_grants(hr) == before[0] + 3  # the same three, absorbed by the ledger as the same requests
    await hr.until("2026-11-20T12:00:00Z")
    assert hr.holds() == {"emea", "helpdesk"}
    await hr.until("2026-11-21T00:00:00Z")
    assert hr.holds() == set()


async def test_a_mover_whose_previous_lies_ends_what_hr_gave_and_never_another_producer_s_grant(
    hr_run: Callable[..., Any],
) -> None:
    """Hired in IT at EMEA (EMEA, helpdesk); a bulk job grants APAC too. A move to LATAM in Sales whose previous claims
    APAC and Sales (a lie: it was EMEA and IT): HR's EMEA and helpdesk end (HR's own record of the person, not the
    claim), its end of APAC ends no grant of HR's (released: the bulk job's grant holds it), and the person keeps
    APAC."""
    hr: Hr = await hr_run()
    await hr.enter(hr_event("hire", "evt-hire"))
    await hr.run.deliver(grant_body(requestId="job-apac", target={"type": "administrativeUnit", "id": AU_OTHER}))
    assert hr.holds() == {"emea", "apac", "helpdesk"}
    await hr.until(hr.run.clock() + 3600)
    previous = {"location": "APAC", "department": "Sales"}
    await hr.enter(hr_event("move", "evt-move", location="LATAM", department="Sales", previous=previous))
    await hr.finish()
    assert hr.holds() == {"apac"}
    assert (hr.outcome("evt-move", AU), hr.outcome("evt-move", HELPDESK_TEMPLATE)) == ("revoked", "revoked")
    assert hr.outcome("evt-move", AU_OTHER) == "released"


@pytest.mark.parametrize("entered_first", ["leaver", "rehire"])
async def test_with_leavers_immediately_a_leaver_ends_access_at_its_arrival_and_a_rehire_effective_later_stands(
    hr_run: Callable[..., Any], entered_first: str
) -> None:
    """Rules with leavers "immediately": a leaver effective the 20th entered on the 12th takes effect on the 12th (its
    arrival), not at the end of the 20th; a rehire effective the 20th (entered before or after it) gives access back on
    the 20th."""
    hr: Hr = await hr_run(leavers="immediately")
    await hr.enter(hr_event("hire", "evt-hire", effective="2026-11-01"))
    await hr.until("2026-11-12")
    leaver = hr_event("leave", "evt-leave", effective="2026-11-20")
    rehire = hr_event("hire", "evt-rehire", effective="2026-11-20", location="APAC")
    await hr.enter(leaver if entered_first == "leaver" else rehire)
    await hr.until("2026-11-12T01:00:00Z")
    await hr.enter(rehire if entered_first == "leaver" else leaver)
    assert hr.holds() == set()
    await hr.until("2026-11-19")
    assert hr.holds() == set()
    await hr.finish()
    assert hr.holds() == {"apac", "helpdesk"}


async def test_many_people_under_one_event_id_are_each_followed_and_counted(hr_run: Callable[..., Any]) -> None:
    """Twenty hires under one eventId (a department's start), delivered at once, two of them of users the directory does
    not have: the event counts every person's two grants, names each failure under its person, and says done."""
    hr: Hr = await hr_run(GRANTS_MEMBER_NOT_FOUND_MIN_ATTEMPTS="2")
    people = [str(uuid.UUID(int=0x40000000_0000_4000_8000_000000000000 + n)) for n in range(20)]
    for person in people[2:]:
        hr.run.graph.add_user(person)
    for person in people:
        hr.queue.send(hr_event("hire", "evt-start", member=person), message_id=f"start-{person}")
    await hr.handle("")
    await hr.finish()
    status = await hr.status("evt-start")
    assert (status["rows"], status["terminal"], status["succeeded"], status["done"], status["notSent"]) == (
        40,
        40,
        36,
        True,
        0,
    )
    assert len(status["people"]) == 20
    failed = {person["userObjectId"]: len(person["failed"]) for person in status["people"] if person["failed"]}
    assert failed == {people[0]: 2, people[1]: 2}
    assert all(hr.holds(person) == {"emea", "helpdesk"} for person in people[2:])


@pytest.mark.parametrize(
    "people",
    [
        {"userObjectId": [USER, UNKNOWN]},
        {"userObjectId": None, "userObjectIds": [USER, UNKNOWN]},
        {"userObjectId": f"{USER},{UNKNOWN}"},
    ],
)
async def test_an_event_naming_several_people_in_one_message_is_refused_naming_the_field(
    hr_run: Callable[..., Any], people: dict[str, Any]
) -> None:
    """One event is one person: a list, a second field or two ids in one string is dead-lettered InvalidHrEvent
    naming userObjectId, and nobody is granted anything."""
    hr: Hr = await hr_run()
    document = json.loads(hr_event("hire", "evt-two")) | people
    records = await hr.enter(json.dumps({key: value for key, value in document.items() if value is not None}).encode())
    assert [(record["outcome"], record["reason"]) for record in records] == [("dead_lettered", "InvalidHrEvent")]
    assert records[0]["description"].startswith("userObjectId")
    assert sent_grants(hr) == 0


async def test_an_operator_resubmitting_a_hire_s_grants_after_the_leaver_gives_nothing_back(
    hr_run: Callable[..., Any],
) -> None:
    """A hire of a user not in the directory yet: its grants are dead-lettered MemberNotFound. The person then leaves;
    the user appears; an operator resubmits the dead letters (twice, by mistake): each grant is the hire's intent, older
    than the leaver, so it ends superseded and the person holds nothing."""
    hr: Hr = await hr_run(GRANTS_MEMBER_NOT_FOUND_MIN_ATTEMPTS="2")
    person = str(uuid.UUID(int=0x77000000_0000_4000_8000_000000000000))
    await hr.enter(hr_event("hire", "evt-hire", member=person))
    await hr.finish()
    assert {hr.outcome("evt-hire", target) for target in (AU, HELPDESK_TEMPLATE)} == {"dead_lettered"}
    await hr.until(hr.run.clock() + 86_400)
    await hr.enter(hr_event("leave", "evt-leave", member=person))
    await hr.finish()
    hr.run.graph.add_user(person)
    await hr.until(hr.run.clock() + 86_400)
    for _ in range(2):
        for copy in resubmit(LocalBackend(hr.run.queue), Selector(reason="MemberNotFound")):
            assert copy.message_id
        await hr.finish()
    assert hr.holds(person) == set()
    assert {hr.outcome("evt-hire", target) for target in (AU, HELPDESK_TEMPLATE)} == {"superseded"}


async def test_an_hr_event_derived_against_hundreds_of_the_person_s_events_is_recorded_and_read_back(
    hr_run: Callable[..., Any],
) -> None:
    """A person with 400 other HR events whose ids are 100 characters long (what one index column cannot hold): the
    event's derivation is fixed and read back whole, so the event is not retried as the ledger unavailable until it is
    dead-lettered, for every event of that person from then on."""
    hr: Hr = await hr_run()
    ledger = hr.run.app.services.ledger
    now = datetime(2026, 11, 1, tzinfo=UTC)
    known = KnownEvent(
        event=parse_event(hr_event("move", "evt-400", previous={"location": "APAC"})),
        placement=Placement(moment=now, tiebreak=(now, now)),
    )
    await ledger.hr_events(producer="hr", event=known, now=now)
    others = tuple(f"{n:03d}".ljust(100, "x") for n in range(400))
    assert await ledger.consider(producer="hr", event=known, considered=others) == others
    [found] = await ledger.hr_events(producer="hr", event=known, now=now)
    assert (found.event, found.placement, found.considered) == (known.event, known.placement, others)
    assert await ledger.consider(producer="hr", event=known, considered=()) == others  # fixed: the first stays


async def test_a_leaver_none_of_whose_hundreds_of_grants_can_be_sent_says_which_were_not_sent(
    hr_run: Callable[..., Any], tmp_path: Path
) -> None:
    """Rules giving 300 units; a leaver whose sends the grants queue refuses at every delivery: dead-lettered
    QueueUnavailable on the queue's last delivery, and its status (a record larger than one column holds) says 0 of
    300 sent and names every one not sent, for the operator who resubmits it."""
    units = [str(uuid.UUID(int=0xAE100000_0000_4000_8000_000000000000 + n)) for n in range(300)]
    rules = tmp_path / "many.json"
    grants = [{"type": "administrativeUnit", "id": unit} for unit in units]
    rules.write_text(json.dumps({"rules": [{"name": "everywhere", "when": {}, "grants": grants}]}))
    hr: Hr = await hr_run(GRANTS_HR_RULES=str(rules))
    hr.sender.fail_when(lambda grant: True)
    records = await hr.enter(hr_event("leave", "evt-big"))
    assert (records[-1]["outcome"], records[-1]["reason"]) == ("dead_lettered", "QueueUnavailable")
    assert "sent 0 of 300 grant messages" in records[-1]["description"]
    status = await hr.status("evt-big")
    assert (status["rows"], status["notSent"], status["done"], status["event"]["outcome"]) == (
        300,
        300,
        False,
        "incomplete",
    )
    assert [row["target"]["id"] for row in status["event"]["notSent"]] == units
