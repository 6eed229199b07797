"""Units Graph will not let the app write to, end to end through the registered functions (the ledger in Azurite,
Graph on the double over HTTP): a restricted-management unit's 403 and a dynamic unit's 400 are told apart from a
missing permission by the unit's own properties (read once per process) and dead-lettered with their own reasons;
the drift sweep reports their findings as not repairable instead of sending the same refused repair every sweep,
until the pair's grants or the unit change, or an operator resubmits the refused repair."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import azure.functions as func

import function_app
from grants_cli.dlq import Selector, resubmit
from grants_local.backend import LocalBackend
from grants_local.graph_double import GraphDouble
from grants_local.host import registered_function
from tests.conftest import AU, USER, USER_2, Run, as_operator, body

RESTRICTED = "a0000000-0000-4000-8000-0000000000e1"
DYNAMIC = "a0000000-0000-4000-8000-0000000000d1"
RULE = 'user.department -eq "Sales"'
SWEEP = registered_function(function_app.app, "drift_sweep")
REPORT = registered_function(function_app.app, "drift_report")
BULK = "grant_membership_bulk"


def grant(request_id: str, unit: str, member: str, *, action: str = "add") -> bytes:
    return body(
        requestId=request_id,
        action=action,
        target={"type": "administrativeUnit", "id": unit},
        member={"id": member, "type": "user"},
        source={"system": "bulk", "reference": request_id},
    )


def leaver(request_id: str, unit: str, member: str) -> bytes:
    """HR's removal of a leaver with ``revokeAll`` (HR's right in the default policy): it ends the membership whoever
    made it, so it is written for a member the app did not add (a plain remove of one is released, unwritten)."""
    return body(
        requestId=request_id,
        action="remove",
        revokeAll=True,
        target={"type": "administrativeUnit", "id": unit},
        member={"id": member, "type": "user"},
        source={"system": "hr", "reference": request_id},
    )


def ended(outcomes: dict[str, dict[str, Any]], request_id: str) -> tuple[str, str | None, str]:
    [record] = [r for r in outcomes.values() if r["requestId"] == request_id]
    return record["outcome"], record["reason"], record["description"]


def unit_reads(graph: GraphDouble, unit: str) -> int:
    return sum(1 for r in graph.requests if (r.method, r.path) == ("GET", f"/directory/administrativeUnits/{unit}"))


async def test_a_restricted_management_unit_is_dead_lettered_with_its_own_reason_and_fix(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    """Graph's 403 is the one of a missing permission; the unit's isMemberManagementRestricted tells it apart, and the
    dead letter says which role to assign where, for an add and for a removal (HR's revokeAll of a member who was in
    the unit before the app: the removal is written). The unit is read once per process, not once per refusal."""
    graph.add_administrative_unit(RESTRICTED, restricted=True, members=[USER_2])
    run: Run = await make_run()

    outcomes = await run.deliver(grant("r-add", RESTRICTED, USER), leaver("r-remove", RESTRICTED, USER_2))

    for request_id in ("r-add", "r-remove"):
        outcome, reason, description = ended(outcomes, request_id)
        assert (outcome, reason) == ("dead_lettered", "RestrictedAdministrativeUnit")
        assert "restricted-management administrative unit" in description
        assert "role assigned to its identity at that unit's scope" in description
        assert "Privileged Role Administrator" in description
        assert "403 Authorization_RequestDenied" in description
    assert unit_reads(graph, RESTRICTED) == 1, "read once per process"
    assert graph.members_of(RESTRICTED) == {USER_2}
    assert {d.reason for d in run.queue.dead_letters()} == {"RestrictedAdministrativeUnit"}
    assert {d.reason for d in run.queue_of("hr").dead_letters()} == {"RestrictedAdministrativeUnit"}


async def test_a_dynamic_unit_is_dead_lettered_dynamic_membership_target(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    """A manual add, and HR's revokeAll of a member the rule selected (written: it ends the membership whoever made
    it), are both refused by the unit's rule and dead-lettered with the unit's own reason."""
    graph.add_administrative_unit(DYNAMIC, membership_rule=RULE, members=[USER_2])
    run: Run = await make_run()

    outcomes = await run.deliver(grant("d-add", DYNAMIC, USER), leaver("d-remove", DYNAMIC, USER_2))

    for request_id in ("d-add", "d-remove"):
        outcome, reason, description = ended(outcomes, request_id)
        assert (outcome, reason) == ("dead_lettered", "DynamicMembershipTarget")
        assert "its members are those its membership rule selects" in description
        assert "Nothing to retry" in description
    assert graph.members_of(DYNAMIC) == {USER_2}


async def test_a_missing_permission_on_an_ordinary_unit_is_still_forbidden(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    graph.deny("administrativeUnit")
    run: Run = await make_run()

    outcomes = await run.deliver(grant("f-add", AU, USER))

    outcome, reason, description = ended(outcomes, "f-add")
    assert (outcome, reason) == ("dead_lettered", "Forbidden")
    assert "AdministrativeUnit.ReadWrite.All" in description
    assert unit_reads(graph, AU) == 1, "the unit was read and found neither restricted nor dynamic"


def policy(tmp_path: Path, *units: str) -> str:
    """Ticketing and drift repairs (source other) may change any unit; each of `units` is in restore mode."""
    anything = {"administrativeUnits": ["*"], "directoryRoles": ["*"], "scopedRoles": ["*"]}
    drift = {
        "guard": {"fraction": 1, "cap": 1000},
        "targets": [{"target": {"type": "administrativeUnit", "id": unit}, "mode": "restore"} for unit in units],
    }
    file = tmp_path / "policy.json"
    file.write_text(json.dumps({"sources": {"bulk": anything, "other": anything}, "drift": drift}))
    return str(file)


async def report(unit: str) -> list[dict[str, Any]]:
    request = func.HttpRequest(
        "GET", "http://localhost/api/drift", headers=as_operator(), body=b"", params={"target": unit}
    )
    response = await REPORT(request)
    [target] = json.loads(response.get_body())["targets"]
    return list(target["findings"])


async def sweep_and_repair(run: Run) -> int:
    """One sweep, then the bulk queue's repairs carried out; how many repairs ended meanwhile."""
    sent_before = len([r for r in run.app.outcomes().values() if str(r["requestId"]).startswith("~drift")])
    await SWEEP(timer=None)
    await run.app.host(function=BULK).drain(until=run.clock() + 1)
    return len([r for r in run.app.outcomes().values() if str(r["requestId"]).startswith("~drift")]) - sent_before


async def test_a_refused_repair_is_not_sent_again_each_sweep_until_an_operator_resubmits_it(
    make_run: Callable[..., Any], graph: GraphDouble, tmp_path: Path
) -> None:
    """A grant made while the app held a role at the restricted unit's scope is removed behind its back after that
    role was taken away: the first sweep's repair is refused (RestrictedAdministrativeUnit); later sweeps report the
    finding (judged by the grant RITM1) not repairable, the refusal naming the repair's own request
    (~drift-add:RITM1), and send nothing; once the role is assigned again, the operator resubmits the refused repair
    and the unit is in step."""
    graph.add_administrative_unit(RESTRICTED, restricted=True)
    graph.scope_app_to_unit(RESTRICTED)
    run: Run = await make_run(GRANTS_POLICY=policy(tmp_path, RESTRICTED))
    await run.deliver(grant("RITM1", RESTRICTED, USER))
    graph.scope_app_to_unit(RESTRICTED, scoped=False)
    graph.remove_member(RESTRICTED, USER)

    first = await sweep_and_repair(run)
    assert first == 1
    assert {d.reason for d in run.queue.dead_letters()} == {"RestrictedAdministrativeUnit"}
    writes = len(run.writes())
    [finding] = await report(RESTRICTED)
    assert (finding["finding"], finding["requestId"], finding["handling"]) == ("missing", "RITM1", "not_repairable")
    assert finding["refusal"]["reason"] == "RestrictedAdministrativeUnit"
    assert finding["refusal"]["requestId"] == "~drift-add:RITM1"
    assert finding["repair"]["description"] == "restores RITM1's grant"

    for _ in range(3):
        assert await sweep_and_repair(run) == 0
    assert len(run.writes()) == writes, "no repair was sent again"
    assert len(run.queue.dead_letters()) == 1

    graph.scope_app_to_unit(RESTRICTED)
    assert len(resubmit(LocalBackend(run.queue), Selector(reason="RestrictedAdministrativeUnit"))) == 1
    await run.app.host(function=BULK).drain(until=run.clock() + 1)
    assert graph.members_of(RESTRICTED) == {USER}
    assert await report(RESTRICTED) == []


async def test_a_dynamic_units_findings_are_not_repairable_until_it_has_assigned_membership(
    make_run: Callable[..., Any], graph: GraphDouble, tmp_path: Path
) -> None:
    """An intent for a dynamic unit (its request dead-lettered) leaves a missing member: no repair is sent while the
    unit is dynamic; once an administrator gives it assigned membership, the next sweep repairs it."""
    graph.add_administrative_unit(DYNAMIC, membership_rule=RULE)
    run: Run = await make_run(GRANTS_POLICY=policy(tmp_path, DYNAMIC))
    outcomes = await run.deliver(grant("RITM2", DYNAMIC, USER))
    assert ended(outcomes, "RITM2")[:2] == ("dead_lettered", "DynamicMembershipTarget")

    for _ in range(2):
        assert await sweep_and_repair(run) == 0
    [finding] = await report(DYNAMIC)
    assert (finding["finding"], finding["requestId"], finding["handling"]) == ("missing", "RITM2", "not_repairable")
    assert finding["refusal"]["reason"] == "DynamicMembershipTarget"
    assert finding["refusal"]["requestId"] is None
    assert [w for w in run.writes() if DYNAMIC in w[1]] == [
        ("POST", f"/directory/administrativeUnits/{DYNAMIC}/members/$ref")
    ]

    graph.set_membership_rule(DYNAMIC, None)
    assert await sweep_and_repair(run) == 1
    assert graph.members_of(DYNAMIC) == {USER}
    assert await report(DYNAMIC) == []
