"""HR events as HR systems mean them, through the registered functions (``hr_events``, ``grant_membership``,
``hr_event_status``) on the local host, the ledger in Azurite and the Graph double: effective dates decide (a leaver
and a mover entered in either order, effective in either order), copies of an event are never newer than it, every
person under an event id is followed, a mover sets what HR gives, and an event's sends are retried until the queue's
last delivery. HR events are entered at the run's clock; time moves on only when a test says so."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

import function_app
from grants_cli.dlq import Selector, resubmit
from grants_local.backend import LocalBackend
from grants_local.host import LocalHost, OutcomeRecorder, registered_function
from grants_local.queue import LocalQueue, LocalSender
from grants_local.settlement_server import LocalSettlementServer, point_message_actions_at
from tests.conftest import AU, AU_OTHER, HELPDESK_ROLE, HELPDESK_TEMPLATE, UNKNOWN, USER, Run, as_operator

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

        async def make(**env: str) -> Hr:
            hr = Hr(await make_run(GRANTS_HR_RULES=str(rules), **env), stack)
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
