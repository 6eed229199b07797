"""HR joiner / mover / leaver events through the registered ``hr_events`` function (local host, real settlement
over gRPC, an in-process hr-events queue), then the grants queue through ``grant_membership`` against the Graph
double: the memberships are what the rules file says."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

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
from shared.producers.hr import derive_messages, parse_event
from shared.producers.hr_rules import HrRules
from shared.runtime import check_configuration, services
from tests.conftest import AU, AU_OTHER, HELPDESK_TEMPLATE, USER, Run

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
    assert all(key.startswith("hr:evt-1:") and len(key) == len("hr:evt-1:") + 16 for key in outcomes)
    assert memberships(hr) == {"emea": True, "apac": False, "helpdesk": True}
    assert hr.queue.stats.completed == 1


async def test_given_a_mover_when_processed_then_old_grants_are_removed_and_new_ones_added(hr: HrRun) -> None:
    await hr.publish(event("hire"))
    await hr.run.deliver()
    hr.run.graph.reset_log()
    await hr.publish(event("move", "evt-2", location="apac", previous={"location": "EMEA"}))
    outcomes = await hr.run.deliver()
    moved = {o["targetId"]: o["outcome"] for key, o in outcomes.items() if key.startswith("hr:evt-2:")}
    assert moved == {AU: "revoked", AU_OTHER: "granted"}  # the helpdesk role is untouched
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
    left = sorted(o["outcome"] for key, o in outcomes.items() if key.startswith("hr:evt-3:"))
    assert left == ["not_member", "revoked", "revoked"]
    assert memberships(hr) == {"emea": False, "apac": False, "helpdesk": False}


async def test_given_a_replayed_event_when_processed_then_duplicate_detection_drops_its_grants(hr: HrRun) -> None:
    records = await hr.publish(event("hire"), event("hire"))
    assert records["e-1"]["grantRequestIds"] == records["e-2"]["grantRequestIds"]
    assert hr.run.queue.stats.duplicates_dropped == 2
    await hr.run.deliver()
    assert len(hr.run.writes()) == 2


async def test_given_an_event_without_an_id_when_processed_then_the_id_is_derived_and_stable(hr: HrRun) -> None:
    records = await hr.publish(event("hire", event_id=...), event("hire", event_id=...))
    assert records["e-1"]["eventId"] == "EMP-4711.hire.2026-12-01"
    assert hr.run.queue.stats.duplicates_dropped == 2


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


async def test_given_a_send_failure_when_processed_then_abandoned_and_the_redelivery_completes(hr: HrRun) -> None:
    sender = services().sender
    assert isinstance(sender, LocalSender)
    sender.fail_next()
    await hr.publish(event("hire"))
    assert [r["outcome"] for r in hr.recorder.records] == ["abandoned", "completed"]
    assert hr.queue.stats.abandoned == 1
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
        ({"rule": []}, 'must be an object with one field, "rules"'),
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

    def apply(body: bytes) -> list[str]:
        ids = []
        for request_id, message in derive_messages(parse_event(body), rules):
            command = parse_grant(message)
            assert request_id == command.request_id
            assert command.source.reference == "EMP-4711"
            if command.action.value == "add":
                held.add(command.target)
            else:
                held.discard(command.target)
            ids.append(request_id)
        assert len(set(ids)) == len(ids)
        return ids

    names = ("department", "location", "jobCode")
    hire = event("hire", event_id, **{key: old.get(key) for key in names})
    assert apply(hire) == apply(hire)  # deterministic: a replay has the same ids
    assert held == set(rules.targets_for(old))
    previous = {key: old.get(key) for key in names}
    apply(event("move", "m" + event_id[:99], **{key: new.get(key) for key in names}, previous=previous))
    assert held == set(rules.targets_for(new))
    apply(event("leave", event_id))
    assert held == set()
