"""Roles the way Entra recommends: PIM eligibilities and active assignments (``roleEligibility``, ``roleAssignment``)
at the tenant's or a unit's scope, for built-in and custom roles, end to end through the registered functions (each
message on its producer's own queue, the ledger in Azurite, Graph on the double over HTTP), asserting on the schedule
request Graph received, the directory the double holds afterwards, and the outcome of each request."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

import function_app
from grants_local.graph_double import Fault, GraphDouble, RoleSettings
from grants_local.host import registered_function
from grants_local.producers import LOCAL_PRODUCERS
from grants_local.queue import LocalQueue
from grants_local.settlement_server import LocalSettlementServer, point_message_actions_at
from shared.core.contract import parse_grant, parse_target
from shared.core.drift import is_tier0
from shared.core.drift_policy import DriftPolicy
from shared.core.errors import ConfigError, PermanentError
from shared.core.policy import GrantPolicy
from shared.core.producers import Producers
from shared.core.schedules import graph_time
from tests.conftest import (
    AU,
    GLOBAL_ADMIN,
    GROUP_ASSIGNABLE,
    HELPDESK_TEMPLATE,
    LATE_USER,
    USER,
    USER_2,
    Run,
    as_operator,
    as_producer,
    message,
)
from tests.test_hr_events import HrRun
from tests.test_hr_events import event as hr_event
from tests.test_webhook import SECRET as WEBHOOK_SECRET
from tests.test_webhook import call as call_webhook
from tests.test_webhook import ticket as webhook_ticket

CUSTOM = "c0570000-0000-4000-8000-00000000c057"  # a custom role's definition id
NOT_A_ROLE = "d0000000-0000-4000-8000-00000000dead"
NO_UNIT = "a0000000-0000-4000-8000-00000000dead"
TENANT = "/"
UNIT = f"/administrativeUnits/{AU}"
NOT_ASSIGNABLE = "65c1a2d5-9101-44b2-83ab-885db8a647cf"
#: The double's name for each kind, and where its requests go.
KINDS = {"roleEligibility": "eligibility", "roleAssignment": "assignment"}
REQUESTS = {
    "roleEligibility": "/roleManagement/directory/roleEligibilityScheduleRequests",
    "roleAssignment": "/roleManagement/directory/roleAssignmentScheduleRequests",
}
PERMISSIONS = {
    "roleEligibility": "RoleEligibilitySchedule.ReadWrite.Directory",
    "roleAssignment": "RoleAssignmentSchedule.ReadWrite.Directory",
}


@pytest.fixture
def pim(graph: GraphDouble) -> GraphDouble:
    """The tests' directory with a custom role's definition and a group that is not role-assignable."""
    graph.add_role_definition(CUSTOM, display_name="Helpdesk (custom)")
    graph.add_group(NOT_ASSIGNABLE)
    return graph


def policy(tmp_path: Path, **rules: Any) -> str:
    """A policy file giving producer ``ticketing`` `rules` (by default: any unit, any non-tier-0 role definition,
    eligible and active)."""
    everything = {"administrativeUnits": ["*"], "roleEligibilities": ["*"], "roleAssignments": ["*"]}
    file = tmp_path / f"policy-{len(list(tmp_path.glob('policy-*.json')))}.json"
    file.write_text(json.dumps({"producers": {"ticketing": rules or everything}}))
    return str(file)


def grant(
    request_id: str,
    kind: str,
    definition: str,
    scope: str,
    member: str,
    *,
    action: str = "add",
    expires_at: datetime | None = None,
    member_type: str | None = "user",
    **fields: Any,
) -> bytes:
    """A ticket's request for `member` to be `kind` of role `definition` at `scope`."""
    return json.dumps(
        message(
            requestId=request_id,
            action=action,
            target={"type": kind, "roleDefinitionId": definition, "directoryScopeId": scope},
            member={"id": member, "type": member_type} if member_type else {"id": member},
            source={"system": "ticketing", "reference": request_id},
            reason=f"Ticket {request_id}",
            expiresAt=graph_time(expires_at) if expires_at is not None else None,
            **fields,
        )
    ).encode()


def ended(outcomes: dict[str, dict[str, Any]], request_id: str) -> dict[str, Any]:
    [record] = [r for r in outcomes.values() if r["requestId"] == request_id]
    return record


def asked(graph: GraphDouble, kind: str) -> list[Any]:
    """The bodies of the schedule requests Graph received for `kind`, oldest first."""
    return [r.body for r in graph.requests if (r.method, r.path) == ("POST", REQUESTS[kind])]


@pytest.mark.parametrize("kind", ["roleEligibility", "roleAssignment"])
@pytest.mark.parametrize("scope", [TENANT, UNIT], ids=["tenant", "unit"])
@pytest.mark.parametrize("definition", [HELPDESK_TEMPLATE, CUSTOM], ids=["built-in", "custom"])
async def test_a_ticket_makes_a_member_eligible_or_assigned_until_its_expiry_or_for_good(
    make_run: Callable[..., Any], pim: GraphDouble, tmp_path: Path, kind: str, scope: str, definition: str
) -> None:
    """Given a ticket with expiresAt and one without, when delivered, then Graph received one adminAssign each (the
    member, role, scope, justification from the reason, ticketInfo from the source, a schedule from now until
    expiresAt or without expiration) and both are granted; at expiresAt Entra ends the first itself, so the app's
    own removal finds nothing (not_member). Asked again: already_member; removed: revoked; removed again:
    not_member."""
    run: Run = await make_run(GRANTS_POLICY=policy(tmp_path))
    now = run.clock.utcnow()
    expires = now + timedelta(days=7)

    first = await run.deliver(
        grant("T-1", kind, definition, scope, USER, expires_at=expires),
        grant("P-1", kind, definition, scope, USER_2),
        producer="ticketing",
    )

    assert ended(first, "T-1")["outcome"] == ended(first, "P-1")["outcome"] == "granted"
    assert ended(first, "T-1")["roleDefinitionId"] == definition
    assert ended(first, "T-1")["directoryScopeId"] == scope
    assert ended(first, "T-1")["targetType"] == kind
    expiry = ended(first, "~expire:T-1")
    assert (expiry["outcome"], expiry["reason"]) == ("not_member", None), "Entra ended it at its expiry already"
    base = {"principalId": USER, "roleDefinitionId": definition, "directoryScopeId": scope}
    assert sorted(asked(pim, kind), key=json.dumps) == sorted(
        [
            {
                "action": "adminAssign",
                **base,
                "justification": "Ticket T-1",
                "scheduleInfo": {
                    "startDateTime": graph_time(now),
                    "expiration": {"type": "afterDateTime", "endDateTime": graph_time(expires)},
                },
                "ticketInfo": {"ticketSystem": "ticketing", "ticketNumber": "T-1"},
            },
            {
                "action": "adminAssign",
                **base,
                "principalId": USER_2,
                "justification": "Ticket P-1",
                "scheduleInfo": {"startDateTime": graph_time(now), "expiration": {"type": "noExpiration"}},
                "ticketInfo": {"ticketSystem": "ticketing", "ticketNumber": "P-1"},
            },
            {
                "action": "adminRemove",
                **base,
                "justification": "Expiry of T-1",
                "ticketInfo": {"ticketSystem": "other", "ticketNumber": "T-1"},
            },
        ],
        key=json.dumps,
    )
    assert asked(pim, kind)[-1]["action"] == "adminRemove", "the expiry's removal comes last"
    assert pim.schedules_of(KINDS[kind], definition, scope) == {USER_2}
    held = pim.schedule_of(KINDS[kind], definition, scope, USER_2)
    assert held is not None
    assert held.end is None

    again = await run.deliver(grant("P-2", kind, definition, scope, USER_2), producer="ticketing")
    removed = await run.deliver(grant("P-3", kind, definition, scope, USER_2, action="remove"), producer="ticketing")
    twice = await run.deliver(grant("P-4", kind, definition, scope, USER_2, action="remove"), producer="ticketing")

    assert ended(again, "P-2")["outcome"] == "already_member"
    assert ended(removed, "P-3")["outcome"] == "revoked"
    assert ended(twice, "P-4")["outcome"] == "released"  # its grant ended already: nothing of the app's to remove
    assert pim.schedules_of(KINDS[kind], definition, scope) == set()
    assert asked(pim, kind)[-1] == {
        "action": "adminRemove",
        **base,
        "principalId": USER_2,
        "justification": "Ticket P-3",
        "ticketInfo": {"ticketSystem": "ticketing", "ticketNumber": "P-3"},
    }


@pytest.mark.parametrize("kind", ["roleEligibility", "roleAssignment"])
async def test_the_apps_removal_at_expiry_ends_what_entra_has_not_ended_yet(
    make_run: Callable[..., Any], pim: GraphDouble, tmp_path: Path, kind: str
) -> None:
    """Given PIM's clock a second behind the app's, when the expiry removal runs at expiresAt, then it ends the
    schedule itself (revoked): the app's removal is the backstop either way."""
    run: Run = await make_run(GRANTS_POLICY=policy(tmp_path))
    pim.now = lambda: run.clock.utcnow() - timedelta(seconds=1)

    outcomes = await run.deliver(
        grant("T-9", kind, HELPDESK_TEMPLATE, UNIT, USER, expires_at=run.clock.utcnow() + timedelta(hours=8)),
        producer="ticketing",
    )

    assert ended(outcomes, "T-9")["outcome"] == "granted"
    assert ended(outcomes, "~expire:T-9")["outcome"] == "revoked"
    assert pim.schedules_of(KINDS[kind], HELPDESK_TEMPLATE, UNIT) == set()


@pytest.mark.parametrize("kind", ["roleEligibility", "roleAssignment"])
async def test_role_settings_that_refuse_permanent_or_too_long_requests_are_dead_lettered_naming_the_rule(
    make_run: Callable[..., Any], pim: GraphDouble, tmp_path: Path, kind: str
) -> None:
    """Given a role whose PIM settings allow at most 30 days and nothing permanent, when asked for ever and for 60
    days, then both are dead-lettered RolePolicyViolation naming ExpirationRule from Graph's message, and 7 days
    is granted."""
    limits = {"max": timedelta(days=30), "permanent": False}
    settings = (
        RoleSettings(eligible_max=limits["max"], eligible_permanent=False)  # type: ignore[arg-type]
        if kind == "roleEligibility"
        else RoleSettings(active_max=limits["max"], active_permanent=False)  # type: ignore[arg-type]
    )
    pim.set_role_settings(CUSTOM, settings)
    run: Run = await make_run(GRANTS_POLICY=policy(tmp_path))
    now = run.clock.utcnow()

    outcomes = await run.deliver(
        grant("F-1", kind, CUSTOM, TENANT, USER),
        grant("L-1", kind, CUSTOM, UNIT, USER, expires_at=now + timedelta(days=60)),
        grant("W-1", kind, CUSTOM, TENANT, USER_2, expires_at=now + timedelta(days=7)),
        producer="ticketing",
    )

    for request_id in ("F-1", "L-1"):
        record = ended(outcomes, request_id)
        assert (record["outcome"], record["reason"]) == ("dead_lettered", "RolePolicyViolation")
        assert "ExpirationRule (the role's settings require an expiry" in record["description"]
        assert f"PIM's settings for role definition {CUSTOM} refused" in record["description"]
    assert ended(outcomes, "W-1")["outcome"] == "granted"
    assert {d.reason for d in run.queue_of("ticketing").dead_letters()} == {"RolePolicyViolation"}


@pytest.mark.parametrize("kind", ["roleEligibility", "roleAssignment"])
async def test_a_role_definition_or_a_scope_that_does_not_exist_is_target_not_found(
    make_run: Callable[..., Any], pim: GraphDouble, tmp_path: Path, kind: str
) -> None:
    """Given an unknown role definition (Graph's RoleNotFound) and a unit scope whose unit does not exist (a 400 Graph
    gives no reason for: a read of the definition and the unit tells), then each is dead-lettered TargetNotFound
    naming what is missing; a dry run finds the same before writing anything."""
    run: Run = await make_run(GRANTS_POLICY=policy(tmp_path))

    outcomes = await run.deliver(
        grant("N-1", kind, NOT_A_ROLE, TENANT, USER),
        grant("N-2", kind, HELPDESK_TEMPLATE, f"/administrativeUnits/{NO_UNIT}", USER),
        grant("N-3", kind, NOT_A_ROLE, TENANT, USER_2, dryRun=True),
        producer="ticketing",
    )

    assert ended(outcomes, "N-1")["reason"] == "TargetNotFound"
    assert f"role definition {NOT_A_ROLE} does not exist" in ended(outcomes, "N-1")["description"]
    assert ended(outcomes, "N-2")["reason"] == "TargetNotFound"
    assert (
        f"administrative unit {NO_UNIT} (the scope /administrativeUnits/{NO_UNIT}) does not exist"
        in (ended(outcomes, "N-2")["description"])
    )
    assert ended(outcomes, "N-3")["reason"] == "TargetNotFound"
    assert len(asked(pim, kind)) == 2, "the dry run wrote nothing"


async def test_a_member_created_moments_ago_is_retried_until_graph_knows_it(
    make_run: Callable[..., Any], pim: GraphDouble, tmp_path: Path
) -> None:
    """Given a user Graph does not know for its first two look-ups, then the eligibility request is retried
    (MemberNotFound is transient) and granted."""
    run: Run = await make_run(GRANTS_POLICY=policy(tmp_path))

    outcomes = await run.deliver(grant("R-1", "roleEligibility", CUSTOM, UNIT, LATE_USER), producer="ticketing")

    record = ended(outcomes, "R-1")
    assert (record["outcome"], record["attempts"]) == ("granted", 2)
    assert pim.schedules_of("eligibility", CUSTOM, UNIT) == {LATE_USER}


@pytest.mark.parametrize("kind", ["roleEligibility", "roleAssignment"])
async def test_a_missing_permission_is_forbidden_naming_the_schedule_permission(
    make_run: Callable[..., Any], pim: GraphDouble, tmp_path: Path, kind: str
) -> None:
    pim.deny(kind)  # type: ignore[arg-type]
    run: Run = await make_run(GRANTS_POLICY=policy(tmp_path))

    outcomes = await run.deliver(grant("D-1", kind, HELPDESK_TEMPLATE, TENANT, USER), producer="ticketing")

    record = ended(outcomes, "D-1")
    assert (record["outcome"], record["reason"]) == ("dead_lettered", "Forbidden")
    assert f"needs the application permission {PERMISSIONS[kind]}" in record["description"]
    assert "PermissionScopeNotGranted" in record["description"]


async def test_a_response_at_another_scope_is_dead_lettered_never_reported_as_the_scoped_grant(
    make_run: Callable[..., Any], pim: GraphDouble, tmp_path: Path
) -> None:
    """Given PIM that does not know a unit yet (it carries the request out tenant-wide and answers "/"), then the
    request is dead-lettered ScopeMismatch naming the scope PIM answered, not granted."""
    pim.pim_scope_unknown(AU)
    run: Run = await make_run(GRANTS_POLICY=policy(tmp_path))

    outcomes = await run.deliver(grant("S-1", "roleEligibility", HELPDESK_TEMPLATE, UNIT, USER), producer="ticketing")

    record = ended(outcomes, "S-1")
    assert (record["outcome"], record["reason"]) == ("dead_lettered", "ScopeMismatch")
    assert "with directoryScopeId '/' (tenant-wide), not '/administrativeUnits/" in record["description"]
    assert pim.schedules_of("eligibility", HELPDESK_TEMPLATE, TENANT) == {USER}, "what PIM did, for a person to undo"
    assert [d.reason for d in run.queue_of("ticketing").dead_letters()] == ["ScopeMismatch"]


async def test_a_group_that_is_not_role_assignable_is_unsupported_member(
    make_run: Callable[..., Any], pim: GraphDouble, tmp_path: Path
) -> None:
    run: Run = await make_run(GRANTS_POLICY=policy(tmp_path))

    outcomes = await run.deliver(
        grant("G-1", "roleAssignment", CUSTOM, TENANT, NOT_ASSIGNABLE, member_type="group"),
        grant("G-2", "roleAssignment", CUSTOM, TENANT, GROUP_ASSIGNABLE, member_type="group"),
        producer="ticketing",
    )

    assert ended(outcomes, "G-1")["reason"] == "UnsupportedMember"
    assert ended(outcomes, "G-2")["outcome"] == "granted"


@pytest.mark.parametrize("kind", ["roleEligibility", "roleAssignment"])
async def test_tier0_role_definitions_are_refused_under_any_unless_named_for_the_producer(
    make_run: Callable[..., Any], pim: GraphDouble, tmp_path: Path, kind: str
) -> None:
    """Global Administrator's definition is never covered by "*", eligible or active; named under the producer's
    key of that kind it is allowed; another producer of the same system (itsm) gets no rules of ticketing's."""
    key = "roleEligibilities" if kind == "roleEligibility" else "roleAssignments"
    run: Run = await make_run(GRANTS_POLICY=policy(tmp_path))
    refused = await run.deliver(grant("Z-1", kind, GLOBAL_ADMIN, TENANT, USER), producer="ticketing")
    named: Run = await make_run(GRANTS_POLICY=policy(tmp_path, administrativeUnits=["*"], **{key: [GLOBAL_ADMIN, "*"]}))
    other = await named.deliver(grant("Z-3", kind, CUSTOM, TENANT, USER_2), producer="itsm")
    allowed = await named.deliver(grant("Z-2", kind, GLOBAL_ADMIN, UNIT, USER), producer="ticketing")

    record = ended(refused, "Z-1")
    assert (record["outcome"], record["reason"]) == ("dead_lettered", "PolicyDenied")
    assert f"Global Administrator ({GLOBAL_ADMIN}) is a tier-0 role" in record["description"]
    assert f"explicitly under its {key}" in record["description"]
    assert ended(other, "Z-3")["reason"] == "PolicyDenied"
    assert ended(allowed, "Z-2")["outcome"] == "granted"
    assert pim.schedules_of(KINDS[kind], GLOBAL_ADMIN, UNIT) == {USER}
    assert pim.schedules_of(KINDS[kind], GLOBAL_ADMIN, TENANT) == set()


async def test_a_unit_scope_needs_the_unit_under_administrative_units(
    make_run: Callable[..., Any], pim: GraphDouble, tmp_path: Path
) -> None:
    run: Run = await make_run(GRANTS_POLICY=policy(tmp_path, administrativeUnits=[NO_UNIT], roleEligibilities=[CUSTOM]))

    outcomes = await run.deliver(
        grant("U-1", "roleEligibility", CUSTOM, UNIT, USER),
        grant("U-2", "roleEligibility", CUSTOM, TENANT, USER),
        grant("U-3", "roleAssignment", CUSTOM, TENANT, USER),
        producer="ticketing",
    )

    assert f"may not assign roles in administrative unit {AU}" in ended(outcomes, "U-1")["description"]
    assert ended(outcomes, "U-2")["outcome"] == "granted"
    assert "(roleAssignments)" in ended(outcomes, "U-3")["description"]


async def test_a_dry_run_reads_the_schedules_and_writes_nothing(
    make_run: Callable[..., Any], pim: GraphDouble, tmp_path: Path
) -> None:
    """would_grant before, already_member and would_revoke once granted, not_member for someone else: GETs of the
    member's schedules (filtered by role, scope and principal) only."""
    run: Run = await make_run(GRANTS_POLICY=policy(tmp_path))
    before = await run.deliver(grant("Y-1", "roleEligibility", CUSTOM, UNIT, USER, dryRun=True), producer="ticketing")
    await run.deliver(grant("Y-2", "roleEligibility", CUSTOM, UNIT, USER), producer="ticketing")
    pim.reset_log()

    after = await run.deliver(
        grant("Y-3", "roleEligibility", CUSTOM, UNIT, USER, dryRun=True),
        grant("Y-4", "roleEligibility", CUSTOM, UNIT, USER, action="remove", dryRun=True),
        grant("Y-5", "roleEligibility", CUSTOM, UNIT, USER_2, action="remove", dryRun=True),
        producer="ticketing",
    )

    assert ended(before, "Y-1")["outcome"] == "would_grant"
    assert [ended(after, r)["outcome"] for r in ("Y-3", "Y-4", "Y-5")] == [
        "already_member",
        "would_revoke",
        "not_member",
    ]
    assert {r.method for r in pim.requests} == {"GET"}
    listing = [r for r in pim.requests if r.path == "/roleManagement/directory/roleEligibilitySchedules"]
    assert listing[0].query == {
        "$filter": f"roleDefinitionId eq '{CUSTOM}' and directoryScopeId eq '{UNIT}' and principalId eq '{USER}'",
        "$select": "principalId",
    }
    assert pim.schedules_of("eligibility", CUSTOM, UNIT) == {USER}


async def test_schedule_requests_count_against_the_write_quota_a_429_pausing_every_writer(
    make_run: Callable[..., Any], pim: GraphDouble, tmp_path: Path
) -> None:
    """Schedule requests are writes of the app's identity like membership writes: they wait for the write governor,
    and Graph's 429 on one pauses every writer for its Retry-After; the request is retried and granted."""
    run: Run = await make_run(GRANTS_POLICY=policy(tmp_path))
    governor = run.app.services.graph._governor
    assert governor is not None
    pim.inject(Fault.status(429, retry_after=30, method="POST", path="roleEligibilityScheduleRequests"))

    outcomes = await run.deliver(grant("Q-1", "roleEligibility", CUSTOM, TENANT, USER), producer="ticketing")

    record = ended(outcomes, "Q-1")
    assert (record["outcome"], record["attempts"]) == ("granted", 2)
    assert governor.pauses == 1
    assert [r.status for r in pim.requests if r.method == "POST"] == [429, 201]


# --- HR rules, drift -------------------------------------------------------------------------------------------


async def test_an_hr_joiner_rule_makes_the_new_hire_eligible(
    make_run: Callable[..., Any], pim: GraphDouble, tmp_path: Path
) -> None:
    """An HR rule may grant an eligibility: a hire in IT is made eligible for the custom role at the unit's scope,
    with the HR event's employee as the ticket (source hr); a leaver's event ends it."""
    rules = {
        "rules": [
            {
                "name": "it-eligible",
                "when": {"department": "IT"},
                "grants": [{"type": "roleEligibility", "roleDefinitionId": CUSTOM, "directoryScopeId": UNIT}],
            }
        ]
    }
    rules_file = tmp_path / "hr-rules.json"
    rules_file.write_text(json.dumps(rules))
    policy_file = tmp_path / "hr-policy.json"
    policy_file.write_text(
        json.dumps(
            {
                "producers": {
                    "hr": {
                        "actions": ["add", "remove", "revokeAll"],  # its leavers end every grant of the person
                        "administrativeUnits": ["*"],
                        "roleEligibilities": ["*"],
                    }
                }
            }
        )
    )
    run: Run = await make_run(GRANTS_HR_RULES=str(rules_file), GRANTS_POLICY=str(policy_file))
    queue = LocalQueue(clock=run.clock)
    with LocalSettlementServer(queue) as server:
        hr = HrRun(run, queue, point_message_actions_at(server.address))
        await hr.publish(hr_event("hire", effectiveDate=run.clock.utcnow().date().isoformat()))
        joined = await run.deliver()
        [record] = joined.values()
        assert (record["outcome"], record["targetType"], record["sourceSystem"]) == ("granted", "roleEligibility", "hr")
        assert pim.schedules_of("eligibility", CUSTOM, UNIT) == {USER}
        [body] = asked(pim, "roleEligibility")
        assert body["ticketInfo"] == {"ticketSystem": "hr", "ticketNumber": "EMP-4711"}
        assert body["scheduleInfo"]["expiration"] == {"type": "noExpiration"}

        await hr.publish(hr_event("leave", event_id="evt-2", effectiveDate=run.clock.utcnow().date().isoformat()))
        left = await run.deliver()
    assert "revoked" in {r["outcome"] for r in left.values()}
    assert pim.schedules_of("eligibility", CUSTOM, UNIT) == set()


async def report(definition: str) -> list[dict[str, Any]]:
    request = func.HttpRequest(
        "GET", "http://localhost/api/drift", headers=as_operator(), body=b"", params={"target": definition}
    )
    response = await registered_function(function_app.app, "drift_report")(request)
    [target] = json.loads(response.get_body())["targets"]
    return list(target["findings"])


async def test_the_drift_sweep_reads_a_pim_targets_schedules_page_by_page_and_restores_a_missing_eligibility(
    make_run: Callable[..., Any], pim: GraphDouble, tmp_path: Path
) -> None:
    """Given a custom role's eligibility at a unit in restore mode, an eligibility the app granted and removed behind
    its back, and 120 eligibilities nobody asked the app for: the sweep lists the role's schedules at that scope
    (filtered by role and scope, two pages), re-grants the missing one through the bulk queue and reports the
    unmanaged ones."""
    target = {"type": "roleEligibility", "roleDefinitionId": CUSTOM, "directoryScopeId": UNIT}
    drift = {"guard": {"fraction": 1, "cap": 1000}, "targets": [{"target": target, "mode": "restore"}]}
    file = tmp_path / "drift-policy.json"
    rules = {"administrativeUnits": ["*"], "roleEligibilities": ["*"]}
    file.write_text(json.dumps({"producers": {"ticketing": rules}, "drift": drift}))
    run: Run = await make_run(GRANTS_POLICY=str(file))
    await run.deliver(grant("E-1", "roleEligibility", CUSTOM, UNIT, USER), producer="ticketing")
    for n in range(120):
        other = pim.add_user(f"{n:08x}-0000-4000-8000-0000000e119b")
        pim.assign_schedule("eligibility", CUSTOM, UNIT, other)
    pim.remove_schedule("eligibility", CUSTOM, UNIT, USER)
    pim.reset_log()

    await registered_function(function_app.app, "drift_sweep")(timer=None)
    await run.app.host(function="grant_membership_bulk").drain(until=run.clock() + 1)

    assert USER in pim.schedules_of("eligibility", CUSTOM, UNIT)
    [repair] = [r for r in run.app.outcomes().values() if r["requestId"] == "~drift-add:E-1"]
    assert repair["outcome"] == "granted"
    listings = [r for r in pim.requests if r.path == "/roleManagement/directory/roleEligibilitySchedules"]
    assert len(listings) == 2, "120 schedules: two pages of 100"
    assert listings[0].query == {
        "$filter": f"roleDefinitionId eq '{CUSTOM}' and directoryScopeId eq '{UNIT}'",
        "$select": "principalId",
    }
    findings = await report(CUSTOM)
    assert len(findings) == 120
    assert {f["finding"] for f in findings} == {"unmanaged"}


def test_a_tier0_pim_target_is_never_repaired_by_drift() -> None:
    target = {"type": "roleAssignment", "roleDefinitionId": GLOBAL_ADMIN, "directoryScopeId": "/"}
    with pytest.raises(ConfigError, match="a tier-0 role is never repaired"):
        DriftPolicy.parse({"targets": [{"target": target, "mode": "restore"}]}, origin="test")
    assert is_tier0(parse_target(target))


# --- the policy file, alone ------------------------------------------------------------------------------------


def test_pim_rules_per_producer_fall_back_to_the_source_systems_and_the_default_denies_tier0_eligibility(
    tmp_path: Path,
) -> None:
    """A producer the file names gets its own rules only; one it does not name gets its system's (``sources``); the
    built-in default allows any non-tier-0 definition, eligible and active, and never a tier-0 one."""
    file = tmp_path / "fallback.json"
    file.write_text(
        json.dumps(
            {
                "producers": {"ticketing": {"roleAssignments": [CUSTOM]}},
                "sources": {"ticketing": {"roleEligibilities": ["*"], "administrativeUnits": [AU]}},
            }
        )
    )
    policy = GrantPolicy.load(file)
    registry = Producers.parse(LOCAL_PRODUCERS, env={"GRANTS_WEBHOOK_SECRET": "s" * 32}, origin="test")
    ticketing, itsm = registry.by_name["ticketing"], registry.by_name["itsm"]
    eligible = parse_grant(grant("A-1", "roleEligibility", CUSTOM, UNIT, USER))
    active = parse_grant(grant("A-2", "roleAssignment", CUSTOM, TENANT, USER))

    policy.check(active, producer=ticketing, role_template_id=None)
    with pytest.raises(
        PermanentError, match=r"may not change the eligibility for role definition .* \(roleEligibilities\)"
    ):
        policy.check(eligible, producer=ticketing, role_template_id=None)
    policy.check(eligible, producer=itsm, role_template_id=None)  # the ticketing system's rules
    with pytest.raises(PermanentError, match=r"\(roleAssignments\)"):
        policy.check(active, producer=itsm, role_template_id=None)

    default = GrantPolicy.default()
    default.check(eligible, producer=itsm, role_template_id=None)
    default.check(active, producer=itsm, role_template_id=None)
    for kind in ("roleEligibility", "roleAssignment"):
        tier0 = parse_grant(grant("A-3", kind, GLOBAL_ADMIN, TENANT, USER))
        with pytest.raises(PermanentError, match="is a tier-0 role"):
            default.check(tier0, producer=itsm, role_template_id=None)


@pytest.mark.parametrize(
    ("rules", "says"),
    [
        ({"roleEligibilities": ["Helpdesk"]}, "roleEligibilities must be a GUID"),
        ({"roleAssignments": "*"}, 'roleAssignments must be a list of GUIDs or "*"'),
        ({"roleEligibility": ["*"]}, "unknown key 'roleEligibility'"),
    ],
)
def test_a_bad_pim_rule_stops_the_app_naming_it(tmp_path: Path, rules: dict[str, Any], says: str) -> None:
    file = tmp_path / "bad.json"
    file.write_text(json.dumps({"producers": {"ticketing": rules}}))
    with pytest.raises(ConfigError, match="GRANTS_POLICY") as caught:
        GrantPolicy.load(file)
    assert says in str(caught.value)


async def test_a_pim_requests_status_and_history_name_its_role_definition_and_scope(
    make_run: Callable[..., Any], pim: GraphDouble, tmp_path: Path
) -> None:
    """GET /api/grants/{id} gives the request's role definition and scope; GET /api/history finds it by the role
    definition (the ledger indexes it) as by the member."""
    run: Run = await make_run(GRANTS_POLICY=policy(tmp_path))
    await run.deliver(grant("H-1", "roleAssignment", CUSTOM, UNIT, USER), producer="ticketing")

    async def answer(name: str, **parts: Any) -> Any:
        request = func.HttpRequest("GET", "http://localhost/api/x", body=b"", **parts)
        response = await registered_function(function_app.app, name)(request)
        assert response.status_code == 200, response.get_body()
        return json.loads(response.get_body())

    status = await answer("grant_status", headers=as_producer("ticketing"), route_params={"requestId": "H-1"})
    by_definition = await answer("grant_history", headers=as_operator(), params={"target": CUSTOM})
    by_unit = await answer("grant_history", headers=as_operator(), params={"target": AU})

    assert (status["status"], status["targetType"], status["roleDefinitionId"], status["directoryScopeId"]) == (
        "granted",
        "roleAssignment",
        CUSTOM,
        UNIT,
    )
    assert [r["requestId"] for r in by_definition["requests"]] == ["H-1"]
    assert [r["requestId"] for r in by_unit["requests"]] == ["H-1"]


async def test_a_signed_ticket_asks_for_an_eligibility_through_the_webhook(
    make_run: Callable[..., Any], pim: GraphDouble, tmp_path: Path
) -> None:
    """A ticket payload whose target is a roleEligibility is accepted (202) and carried out: its approver and summary
    are the justification, its ticket number the ticketInfo, its expiresAt the schedule's end."""
    run: Run = await make_run(GRANTS_WEBHOOK_SECRET=WEBHOOK_SECRET, GRANTS_POLICY=policy(tmp_path))
    expires = run.clock.utcnow() + timedelta(days=30)
    payload = webhook_ticket(
        target={"type": "roleEligibility", "roleDefinitionId": CUSTOM, "directoryScopeId": UNIT},
        expiresAt=graph_time(expires),
    )

    status, answer, _ = await call_webhook(run, payload)
    outcomes = await run.deliver()

    assert (status, answer["status"]) == (202, "accepted")
    assert ended(outcomes, "RITM0010001")["outcome"] == "granted"
    [body] = asked(pim, "roleEligibility")[:1]
    assert body["justification"] == "Approved by j.smith@contoso.com: Helpdesk Administrator for the night shift"
    assert body["ticketInfo"] == {"ticketSystem": "ticketing", "ticketNumber": "RITM0010001"}
    assert body["scheduleInfo"]["expiration"] == {"type": "afterDateTime", "endDateTime": graph_time(expires)}
