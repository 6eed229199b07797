"""HR joiner / mover / leaver events through the registered ``hr_events`` function (local host, real settlement
over gRPC, an in-process hr-events queue), then the grants queue through ``grant_membership`` against the Graph
double: the memberships are what the rules file says."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import function_app
from grants_local.demo import EXAMPLES
from grants_local.host import LocalHost, OutcomeRecorder, registered_function
from grants_local.queue import LocalQueue, LocalSender
from grants_local.settlement_server import LocalSettlementServer, point_message_actions_at
from shared.core.contract import Target, parse_grant
from shared.core.errors import ConfigError, ContractError, Reason
from shared.core.hr_events import HrEvent, KnownEvent, derive_messages, effective_at, parse_event, place
from shared.core.hr_rules import HrRules
from shared.runtime import check_configuration
from tests.conftest import AU, AU_OTHER, HELPDESK_TEMPLATE, USER, USER_2, Run

HR = registered_function(function_app.app, "hr_events")
HELPDESK_ROLE = "a1b2c3d4-0000-4000-8000-000000000001"

RULES = {
    "rules": [
        {"name": "emea", "when": {"location": "EMEA"}, "grants": [{"type": "administrativeUnit", "id": AU}]},
        {
            "name": "apac",
            "when": {"location": ["APAC", "ANZ"]},
            "grants": [{"type": "administrativeUnit", "id": AU_OTHER}],
        },
        {
            "name": "helpdesk",
            "when": {"jobCode": "HD1", "department": "IT"},
            "grants": [{"type": "directoryRole", "roleTemplateId": HELPDESK_TEMPLATE.upper()}],
        },
    ]
}


def event(event_type: str, event_id: str = "evt-1", **attributes: Any) -> bytes:
    document = {
        "eventId": event_id,
        "eventType": event_type,
        "employeeId": "EMP-4711",
        "userObjectId": USER,
        "department": "IT",
        "location": "EMEA",
        "jobCode": "HD1",
        "effectiveDate": "2026-12-01",
        "displayName": "ignored",
        **attributes,
    }
    return json.dumps({key: value for key, value in document.items() if value is not ...}).encode()


class HrRun:
    """The hr-events queue and its settlement server, next to the grants-queue run."""

    def __init__(self, run: Run, queue: LocalQueue, actions: Any) -> None:
        self.run, self.queue, self.actions, self.sent = run, queue, actions, 0
        self.recorder = OutcomeRecorder("hrEvent")

    async def publish(self, *bodies: bytes) -> dict[str, dict[str, Any]]:
        """Send each event (MessageIds e-1, e-2, …), deliver them all; each HR outcome record by MessageId."""
        for body in bodies:
            self.sent += 1
            self.queue.send(body, message_id=f"e-{self.sent}")
        with self.recorder.attached():
            await LocalHost(queue=self.queue, function=HR, actions=self.actions, clock=self.run.clock).drain()
        return {str(record["messageId"]): record for record in self.recorder.records}


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "hr-rules.json"
    path.write_text(json.dumps(RULES))
    return path


@pytest.fixture
async def hr(make_run: Callable[..., Any], rules_file: Path) -> AsyncIterator[HrRun]:
    run: Run = await make_run(GRANTS_HR_RULES=str(rules_file))
    queue = LocalQueue(clock=run.clock)
    with ExitStack() as stack:
        server = stack.enter_context(LocalSettlementServer(queue))
        yield HrRun(run, queue, point_message_actions_at(server.address))


def memberships(hr: HrRun) -> dict[str, bool]:
    graph = hr.run.graph
    return {
        "emea": USER in graph.members_of(AU),
        "apac": USER in graph.members_of(AU_OTHER),
        "helpdesk": USER in graph.members_of(HELPDESK_ROLE),
    }


async def test_given_a_joiner_when_processed_then_the_rules_grants_are_added(hr: HrRun) -> None:
    records = await hr.publish(event("hire"))
    assert records["e-1"]["outcome"] == "completed"
    assert len(records["e-1"]["grantRequestIds"]) == 2
    outcomes = await hr.run.deliver()
    assert sorted(o["outcome"] for o in outcomes.values()) == ["granted", "granted"]
    assert {o["sourceSystem"] for o in outcomes.values()} == {"hr"}
    assert {o["sourceReference"] for o in outcomes.values()} == {"EMP-4711"}
    ids = {key: o["requestId"] for key, o in outcomes.items()}
    assert all(key.startswith(f"{request_id}:hr~") for key, request_id in ids.items())  # the MessageId, keyed
    assert all(id.startswith("~hr:evt-1:") and len(id) == len("~hr:evt-1:") + 16 for id in ids.values())
    assert memberships(hr) == {"emea": True, "apac": False, "helpdesk": True}
    assert hr.queue.stats.completed == 1


async def test_given_a_mover_when_processed_then_old_grants_are_removed_and_new_ones_added(hr: HrRun) -> None:
    await hr.publish(event("hire"))
    await hr.run.deliver()
    hr.run.graph.reset_log()
    await hr.publish(event("move", "evt-2", location="apac", previous={"location": "EMEA"}))
    outcomes = await hr.run.deliver()
    moved = {
        o["targetId"] or o["roleTemplateId"]: o["outcome"]
        for key, o in outcomes.items()
        if key.startswith("~hr:evt-2:")
    }
    assert moved == {AU: "revoked", AU_OTHER: "granted", HELPDESK_TEMPLATE: "already_member"}  # the role stays
    assert memberships(hr) == {"emea": False, "apac": True, "helpdesk": True}


async def test_given_a_mover_that_leaves_the_department_when_processed_then_the_role_is_removed(hr: HrRun) -> None:
    await hr.publish(event("hire"))
    await hr.run.deliver()
    await hr.publish(event("mover", "evt-2", department="Sales", previous={"department": "IT"}))
    await hr.run.deliver()
    assert memberships(hr) == {"emea": True, "apac": False, "helpdesk": False}


async def test_given_a_leaver_when_processed_then_everything_the_rules_can_give_is_removed(hr: HrRun) -> None:
    await hr.publish(event("hire"))
    await hr.run.deliver()
    records = await hr.publish(event("leave", "evt-3", location=None, jobCode=None))
    assert len(records["e-2"]["grantRequestIds"]) == 3
    outcomes = await hr.run.deliver()
    left = sorted(o["outcome"] for key, o in outcomes.items() if key.startswith("~hr:evt-3:"))
    assert left == ["not_member", "revoked", "revoked"]
    assert memberships(hr) == {"emea": False, "apac": False, "helpdesk": False}


async def test_given_a_replayed_event_when_processed_then_duplicate_detection_drops_its_grants(hr: HrRun) -> None:
    records = await hr.publish(event("hire"), event("hire"))
    assert records["e-1"]["grantRequestIds"] == records["e-2"]["grantRequestIds"]
    assert hr.run.queue.stats.duplicates_dropped == 2
    await hr.run.deliver()
    assert len(hr.run.writes()) == 2


async def test_given_an_event_without_an_id_when_processed_then_the_id_is_derived_and_stable(hr: HrRun) -> None:
    """Without eventId, the id is derived from the employee, type, date and occurredAt: a resent event is the same."""
    at = "2026-12-01T08:00:00+01:00"
    records = await hr.publish(event("hire", event_id=..., occurredAt=at), event("hire", event_id=..., occurredAt=at))
    assert records["e-1"]["eventId"].startswith("EMP-4711.hire.2026-12-01.")
    assert records["e-1"]["eventId"] == records["e-2"]["eventId"]
    assert hr.run.queue.stats.duplicates_dropped == 2


async def test_a_hire_leave_and_rehire_entered_on_one_day_without_event_ids_are_three_events_and_the_rehire_wins(
    hr: HrRun,
) -> None:
    """Three events entered on one day, no eventId: three events (their own ids); the rehire, effective after the
    leaver's end of day, wins."""
    await hr.publish(event("hire", event_id=..., occurredAt="2026-12-01T08:00:00Z"))
    await hr.run.deliver()
    await hr.publish(event("leave", event_id=..., occurredAt="2026-12-01T12:00:00Z"))
    await hr.run.deliver()
    await hr.publish(event("hire", event_id=..., occurredAt="2026-12-01T16:00:00Z", effectiveDate="2026-12-02"))
    await hr.run.deliver()
    assert memberships(hr)["emea"] is True


async def test_issue13_4_one_event_id_for_two_hires_grants_both(hr: HrRun) -> None:
    records = await hr.publish(event("hire", "evt-9"), event("hire", "evt-9", userObjectId=USER_2))
    assert set(records["e-1"]["grantRequestIds"]).isdisjoint(records["e-2"]["grantRequestIds"])
    outcomes = await hr.run.deliver()
    assert sorted(o["outcome"] for o in outcomes.values()) == ["granted"] * 4
    assert hr.run.graph.members_of(AU) == {USER, USER_2}


async def test_issue13_4_a_joiner_replayed_after_the_leaver_is_superseded(hr: HrRun) -> None:
    """The joiner event replayed (a new MessageId, after duplicate detection's window) after the leaver: its
    grants are older than the leaver's removals, so nothing is re-granted."""
    joiner = event("hire", "evt-20", occurredAt="2026-12-01T08:00:00Z")
    await hr.publish(joiner)
    await hr.run.deliver()
    await hr.publish(event("leave", "evt-21", occurredAt="2026-12-02T08:00:00Z"))
    await hr.run.deliver()
    hr.run.clock.advance(3600)  # past duplicate detection's 10 minutes
    await hr.publish(joiner)
    outcomes = await hr.run.deliver()
    assert {o["outcome"] for o in outcomes.values() if o["requestId"].startswith("~hr:evt-20:")} <= {
        "superseded",
        "duplicate",
    }
    assert not any(memberships(hr).values())


@pytest.mark.parametrize(
    ("body", "description"),
    [
        (b"not json", "the event is not JSON (UTF-8)"),
        (event("promote"), "eventType must be one of hire, move, leave (or joiner, mover, leaver)"),
        (event("hire", userObjectId="../me"), "userObjectId must be a GUID"),
        (event("hire", employeeId="EMP 1"), "employeeId is required"),
        (event("move"), "a move event needs previous"),
        (event("hire", event_id=..., effectiveDate=...), "eventId is required, or effectiveDate"),
        (event("hire", effectiveDate="2026-02-30"), "effectiveDate must be a date, YYYY-MM-DD"),
        (event("hire", location="EMEA\nforged line"), "location must be a string of at most 128 characters"),
    ],
)
async def test_given_an_invalid_event_when_processed_then_it_is_dead_lettered_invalid_hr_event(
    hr: HrRun, body: bytes, description: str
) -> None:
    records = await hr.publish(body)
    assert (records["e-1"]["outcome"], records["e-1"]["reason"]) == ("dead_lettered", "InvalidHrEvent")
    [dead] = hr.queue.dead_letters()
    assert dead.reason == "InvalidHrEvent"
    assert (dead.description or "").startswith(description)
    assert hr.run.queue.stats.sent == 0


async def test_given_a_send_failure_when_processed_then_left_to_its_lock_expiry_and_the_redelivery_completes(
    hr: HrRun,
) -> None:
    sender = hr.run.app.sender
    assert isinstance(sender, LocalSender)
    sender.fail_next()
    await hr.publish(event("hire"))
    assert [r["outcome"] for r in hr.recorder.records] == ["unsettled", "completed"]
    assert (hr.queue.stats.locks_expired, hr.queue.stats.abandoned) == (1, 0)
    await hr.run.deliver()
    assert memberships(hr)["emea"]


async def test_given_no_rules_file_when_an_event_arrives_then_it_is_dead_lettered_rules_not_configured(
    make_run: Callable[..., Any],
) -> None:
    run: Run = await make_run()
    queue = LocalQueue(clock=run.clock)
    with LocalSettlementServer(queue) as server:
        hr = HrRun(run, queue, point_message_actions_at(server.address))
        records = await hr.publish(event("hire"))
    assert records["e-1"]["reason"] == "HrRulesNotConfigured"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"rule": []}, 'must be an object with "rules"'),
        ({"rules": [], "leavers": "never"}, '"leavers" must be "endOfDay" or "immediately"'),
        ({"rules": [{"when": {}, "grants": []}]}, "rule 1: name is required"),
        (
            {"rules": [{"name": "x", "when": {"site": "EMEA"}, "grants": [{}]}]},
            "rule 1 (x): when.site is not an HR attribute",
        ),
        (
            {"rules": [{"name": "x", "when": {"location": []}, "grants": [{}]}]},
            "rule 1 (x): when.location must be a non-empty",
        ),
        ({"rules": [{"name": "x", "grants": []}]}, "rule 1 (x): grants must be a non-empty list"),
        (
            {"rules": [{"name": "x", "grants": [{"type": "administrativeUnit", "id": "EMEA"}]}]},
            "rule 1 (x): grants[0]: target.id must be a GUID",
        ),
        (
            {"rules": [{"name": "x", "grants": [{"type": "group", "id": AU}]}]},
            'rule 1 (x): grants[0]: target.type "group" is not supported',
        ),
        (
            {
                "rules": [
                    {"name": "x", "grants": [{"type": "administrativeUnit", "id": AU}]},
                    {"name": "x", "grants": [{"type": "administrativeUnit", "id": AU}]},
                ]
            },
            "rule 2: the name 'x' is used by an earlier rule",
        ),
        (
            {"rules": [{"name": "x", "grants": [{"type": "administrativeUnit", "id": AU}], "then": 1}]},
            "'then' is not a field of a rule",
        ),
    ],
)
def test_given_an_invalid_rules_file_when_the_app_starts_then_the_error_names_file_rule_and_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, document: Any, message: str
) -> None:
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(document))
    monkeypatch.setenv("GRANTS_HR_RULES", str(path))
    with pytest.raises(ConfigError) as caught:
        check_configuration()
    assert str(caught.value).startswith(f"GRANTS_HR_RULES file {str(path)!r}")
    assert message in str(caught.value)


@pytest.mark.parametrize(("content", "message"), [(None, "cannot be read"), ("{", "is not JSON")])
def test_given_an_unreadable_rules_file_then_configuration_fails(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "rules.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        HrRules.load(path)


def test_given_the_example_rules_and_events_then_they_are_valid() -> None:
    rules = HrRules.load(EXAMPLES / "hr-rules.json")
    assert rules.rules
    for line in (EXAMPLES / "hr-events.jsonl").read_bytes().splitlines():
        parse_event(line)


# Properties of the event parser and the derivation, over drawn events and rules.

_values = st.sampled_from(["EMEA", "APAC", "emea", "IT", "Sales", "HD1", "HD2", ""])
_attributes = st.fixed_dictionaries(
    {}, optional={name: _values | st.none() for name in ("department", "location", "jobCode")}
)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None)
@given(
    body=st.one_of(
        st.binary(max_size=100),
        _json_values.map(lambda value: json.dumps(value).encode()),
        st.dictionaries(
            st.sampled_from(
                ["eventId", "eventType", "employeeId", "userObjectId", "location", "previous", "effectiveDate"]
            ),
            _json_values,
        ).map(lambda extra: event("hire", **extra)),
    )
)
def test_property_the_event_parser_returns_an_event_or_names_the_problem(body: bytes) -> None:
    try:
        parsed = parse_event(body)
    except ContractError as error:
        assert (error.reason, bool(error.description)) == (Reason.INVALID_HR_EVENT, True)
    else:
        assert parsed.kind in ("joiner", "mover", "leaver")


@settings(max_examples=200, deadline=None)
@given(old=_attributes, new=_attributes, event_id=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,99}", fullmatch=True))
def test_property_joiner_then_mover_gives_what_the_new_attributes_give_and_leaver_takes_all(
    old: dict[str, str | None], new: dict[str, str | None], event_id: str
) -> None:
    rules = HrRules.parse(RULES, where="rules")
    held: set[Target] = set()
    known: list[KnownEvent] = []
    arrival = datetime(2026, 11, 1, tzinfo=UTC)

    def apply(body: bytes) -> list[str]:
        nonlocal arrival
        arrival += timedelta(days=1)
        parsed = parse_event(body)
        placement = place(parsed, first_arrival=arrival, zone="UTC", leavers="endOfDay")
        ids = []
        for message in derive_messages(parsed, rules, placement=placement, known=known):
            command = parse_grant(message.body, own=True)
            assert message.request_id == command.request_id
            assert command.source.reference == "EMP-4711"
            assert command.requested_at == placement.moment
            if command.action.value == "add":
                held.add(command.target)
            else:
                held.discard(command.target)
            ids.append(message.request_id)
        assert len(set(ids)) == len(ids)
        known.append(KnownEvent(event=parsed, placement=placement))
        return ids

    names = ("department", "location", "jobCode")
    dated = {name: None for name in names} | {"effectiveDate": ..., "occurredAt": ...}
    hire = event("hire", event_id, **dated | {key: old.get(key) for key in names})
    assert apply(hire) == apply(hire)  # deterministic: a replay has the same ids
    known.pop()
    assert held == set(rules.targets_for(old))
    previous = {key: old.get(key) for key in names}
    apply(event("move", "m" + event_id[:99], **dated | {key: new.get(key) for key in names}, previous=previous))
    assert held == set(rules.targets_for(new))
    apply(event("leave", "l" + event_id[:99], **dated))
    assert held == set()


# --- effective dates (issue 13, 5) -----------------------------------------------------------------------------------


def test_a_future_hire_is_due_at_the_start_of_its_day_and_a_leaver_at_the_end_of_its_day_in_the_hr_time_zone() -> None:
    now = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    hire = parse_event(event("hire", effectiveDate="2026-12-01"))
    leave = parse_event(event("leave", effectiveDate="2026-11-27"))
    berlin = "Europe/Berlin"  # UTC+1 in winter

    def due(parsed: HrEvent, leavers: str = "endOfDay") -> datetime:
        return effective_at(place(parsed, first_arrival=now, zone=berlin, leavers=leavers), now=now)

    assert due(hire) == datetime(2026, 11, 30, 23, 0, tzinfo=UTC)
    assert due(leave) == datetime(2026, 11, 27, 23, 0, tzinfo=UTC)
    assert due(leave, "immediately") == now
    assert due(parse_event(event("hire", effectiveDate="2026-01-01"))) == now


async def test_given_a_hire_effective_next_month_then_nothing_is_granted_before_that_day(
    make_run: Callable[..., Any], rules_file: Path
) -> None:
    """Issue 13, 5: the grant messages are scheduled for the effective date (start of day, HR_TIME_ZONE)."""
    run: Run = await make_run(GRANTS_HR_RULES=str(rules_file), HR_TIME_ZONE="Europe/Berlin")
    queue = LocalQueue(clock=run.clock)
    effective = (datetime.fromtimestamp(run.clock(), UTC) + timedelta(days=35)).date()
    with LocalSettlementServer(queue) as server:
        hr = HrRun(run, queue, point_message_actions_at(server.address))
        records = await hr.publish(event("hire", "evt-future", effectiveDate=effective.isoformat()))
    assert "scheduled for" in records["e-1"]["description"]
    assert run.queue.active_count == 0
    assert run.queue.scheduled_count == 2
    due = run.queue.next_due_time()
    assert due is not None
    start = datetime.combine(effective, datetime.min.time(), tzinfo=ZoneInfo("Europe/Berlin"))
    assert datetime.fromtimestamp(due, UTC) == start
    assert not any(memberships(hr).values())
    await run.deliver()  # the virtual clock moves to the effective date
    assert memberships(hr)["emea"] is True


async def test_given_a_host_that_does_not_answer_in_time_when_an_event_is_completed_then_unsettled_and_redelivered(
    make_run: Callable[..., Any], rules_file: Path
) -> None:
    run: Run = await make_run(GRANTS_HR_RULES=str(rules_file), GRANTS_SETTLEMENT_TIMEOUT_SECONDS="0.2")
    queue = LocalQueue(clock=run.clock)
    with LocalSettlementServer(queue) as server:
        hold = server.hold("Complete", seconds=3.0)
        hr = HrRun(run, queue, point_message_actions_at(server.address))
        await hr.publish(event("hire"))
        hold.release.set()
    assert [(r["outcome"], r["terminal"]) for r in hr.recorder.records] == [("unsettled", False), ("completed", True)]
    assert "the host did not answer complete within 0.2 s" in hr.recorder.records[0]["description"]
    assert run.queue.stats.sent == 2  # the redelivery's grant messages were absorbed as duplicates
    assert run.queue.stats.duplicates_dropped == 2
