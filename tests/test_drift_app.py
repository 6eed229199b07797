"""Drift in the app, end to end: grants made through the grant function (the ledger in Azurite, Graph on the
double over HTTP), memberships changed behind the app's back with the double's test API, then the registered drift
functions: the timer sweep, ``GET /api/drift`` and ``POST /api/drift/{target}/confirm``; repairs carried out by the
bulk grant function."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

import function_app
from grants_local.graph_double import Fault, GraphDouble
from grants_local.host import OutcomeRecorder, registered_function
from grants_local.queue import LocalQueue
from shared.core.contract import Action, AdministrativeUnit, DirectoryRole, Guid
from shared.core.intents import Intent, pair_of
from shared.core.pairs import Applied, Grant, PairState
from shared.runtime import services
from tests.conftest import (
    AU,
    AU_OTHER,
    GLOBAL_ADMIN,
    GLOBAL_ADMIN_ROLE,
    HELPDESK_ROLE,
    HELPDESK_TEMPLATE,
    USER,
    USER_2,
    Run,
    as_operator,
    body,
    source_of,
)

SWEEP = registered_function(function_app.app, "drift_sweep")
REPORT = registered_function(function_app.app, "drift_report")
CONFIRM = registered_function(function_app.app, "drift_confirm")
HISTORY = registered_function(function_app.app, "grant_history")
BULK = "grant_membership_bulk"
ANY = {"administrativeUnits": ["*"], "directoryRoles": ["*"], "scopedRoles": ["*"]}
UNIT = {"type": "administrativeUnit", "id": AU}
NO_GUARD = {"fraction": 1, "cap": 1000}  # small targets: the default guard would hold any removal
HELPDESK = {"type": "directoryRole", "roleTemplateId": HELPDESK_TEMPLATE}


def user(n: int) -> str:
    return f"{n:08x}-0000-4000-8000-0000000d51f7"


def policy(tmp_path: Path, drift: dict[str, Any], **sources: Any) -> str:
    """A policy file: every source may change any unit and non-tier-0 role (`sources` replaces one), and `drift`."""
    file = tmp_path / "policy.json"
    rules = {system: ANY for system in ("hr", "ticketing", "bulk", "other")} | sources
    file.write_text(json.dumps({"sources": rules, "drift": drift}))
    return str(file)


def restore(*targets: dict[str, Any], mode: str = "restore", **extra: Any) -> dict[str, Any]:
    return {"targets": [{"target": t, "mode": mode} for t in targets], **extra}


def grant(request_id: str, member: str, *, action: str = "add", target: dict[str, Any] = UNIT, **extra: Any) -> bytes:
    return body(
        requestId=request_id,
        action=action,
        target=target,
        member={"id": member, "type": "user"},
        source={"system": "ticketing", "reference": request_id},
        **extra,
    )


async def deliver(run: Run, *bodies: bytes) -> None:
    """Send each body (ids m-1, m-2, …) and deliver what is due now (scheduled removals stay queued)."""
    for item in bodies:
        run.sent += 1
        run.queue_of(source_of(item)).send(item, message_id=f"m-{run.sent}")
        await run.app.host().drain(until=run.clock())


async def sweep() -> None:
    await SWEEP(timer=None)


async def repair(run: Run) -> None:
    """Carry out what the sweep sent (due now, within a second's rounding), as the bulk queue's function does."""
    await run.app.host(function=BULK).drain(until=run.clock() + 1)


async def report(**params: str) -> tuple[int, dict[str, Any]]:
    response = await REPORT(
        func.HttpRequest("GET", "http://localhost/api/drift", headers=as_operator(), body=b"", params=params)
    )
    return response.status_code, json.loads(response.get_body())


async def confirm(target: str, digest: str | None = None) -> tuple[int, dict[str, Any]]:
    content = json.dumps({"digest": digest}).encode() if digest else b""
    request = func.HttpRequest(
        "POST",
        f"http://localhost/api/drift/{target}/confirm",
        headers=as_operator(),
        body=content,
        route_params={"target": target},
    )
    response = await CONFIRM(request)
    return response.status_code, json.loads(response.get_body())


def findings(document: dict[str, Any]) -> dict[str, tuple[str, str | None, str]]:
    """member -> (finding, newest request id, handling), across the answer's targets."""
    return {
        f["memberId"]: (f["finding"], f["requestId"], f["handling"])
        for target in document["targets"]
        for f in target["findings"]
    }


def queued(queue: LocalQueue) -> list[dict[str, Any]]:
    """The messages deliverable from `queue` now (left there): MessageId, properties and body. (A message sent for
    "now" may be due a rounding error later: a second's grace.)"""
    now = queue.clock() + 1
    return [
        {"id": item["messageId"], "properties": item["applicationProperties"]}
        | json.loads(base64.b64decode(item["body"]))
        for item in queue.snapshot()["active"]
        if item["enqueuedAt"] <= now
    ]


def taken(subscription: LocalQueue) -> list[dict[str, Any]]:
    """The events waiting in a topic's `subscription`, taken off it: their properties and body."""
    found = []
    while (locked := subscription.receive()) is not None:
        found.append({"properties": dict(locked.application_properties)} | json.loads(locked.body))
        subscription.complete(locked.lock_token)
    return found


@pytest.fixture
def drift_log() -> Any:
    with OutcomeRecorder("drift").attached() as recorder:
        yield recorder


# --- report: each class found, nothing written --------------------------------------------------------------------


async def test_each_class_is_found_and_a_report_mode_sweep_writes_nothing(
    make_run: Callable[..., Any], graph: GraphDouble, drift_log: OutcomeRecorder
) -> None:
    """Given grants made by the app, then: a granted member removed behind its back (missing: a grant holds it); a
    removal whose Graph write was refused, so the membership the app made stays with no grant holding it (lingering);
    a member the app removed, added back by hand, and a member no request named (both unmanaged: what is there now
    the app did not make): the report names each with the request it was judged by; the timer (report mode, the
    default) publishes a drift_detected event per finding and writes nothing to Graph."""
    run = await make_run(GRANTS_OUTCOMES_TOPIC="grant-outcomes")
    graph.add_user(user(1))
    graph.add_user(user(2))
    events = run.app.callbacks.topic.add_subscription("drift", sql_filter="outcome = 'drift_detected'")
    graph.inject(Fault.status(403, method="DELETE", path=USER_2))  # RITM3's removal refused (a permission missing)
    await deliver(
        run,
        grant("RITM1", USER),
        grant("RITM2", USER_2),
        grant("RITM3", USER_2, action="remove"),
        grant("RITM4", user(2)),
        grant("RITM5", user(2), action="remove"),
    )
    ended = {r["requestId"]: (r["outcome"], r["reason"]) for r in run.app.outcomes().values()}
    assert (ended["RITM3"], ended["RITM5"]) == (("dead_lettered", "Forbidden"), ("revoked", None))
    graph.remove_member(AU, USER)  # missing
    graph.add_member(AU, user(2))  # unmanaged: the app removed it
    graph.add_member(AU, user(1))  # unmanaged: no request named it
    writes = graph.write_count

    status, document = await report(target=AU)
    await sweep()

    assert status == 200
    assert findings(document) == {
        USER: ("missing", "RITM1", "report"),
        USER_2: ("lingering", "RITM3", "report"),
        user(1): ("unmanaged", None, "report"),
        user(2): ("unmanaged", None, "report"),
    }
    [target] = document["targets"]
    assert (target["state"], target["mode"], target["members"], target["missing"]) == ("drifted", "report", 3, 1)
    assert graph.write_count == writes
    assert queued(run.queue) == []
    published = taken(events)
    assert sorted((e["finding"], e["properties"]["driftHandling"]) for e in published) == [
        ("lingering", "report"),
        ("missing", "report"),
        ("unmanaged", "report"),
        ("unmanaged", "report"),
    ]
    assert {e["properties"].get("requestId") for e in published} == {"RITM1", "RITM3", None}
    [line] = drift_log.records
    assert (line["state"], line["missing"], line["lingering"], line["unmanaged"]) == ("drifted", 1, 1, 2)


async def test_a_target_in_step_has_no_finding(make_run: Callable[..., Any], graph: GraphDouble) -> None:
    run = await make_run()
    await deliver(run, grant("RITM1", USER), grant("RITM2", USER_2), grant("RITM3", USER_2, action="remove"))
    status, document = await report()
    assert status == 200
    assert [(t["target"], t["state"], t["members"]) for t in document["targets"]] == [(UNIT, "in_step", 1)]
    assert document["totals"] == {
        "targets": 1,
        "in_step": 1,
        "drifted": 0,
        "held": 0,
        "failed": 0,
        "missing": 0,
        "lingering": 0,
        "unmanaged": 0,
    }


async def test_a_bad_or_unknown_target_is_refused(make_run: Callable[..., Any]) -> None:
    await make_run()
    assert (await report(target="not-a-guid"))[0] == 400
    status, document = await report(target=AU_OTHER)
    assert (status, document["type"]) == (404, "urn:entra-grants:problem:unknown-drift-target")


# --- restore: converges ----------------------------------------------------------------------------------------


async def test_restore_converges_the_directory_to_the_newest_intents_through_the_bulk_grant_function(
    make_run: Callable[..., Any], graph: GraphDouble, tmp_path: Path
) -> None:
    """Missing members re-granted, lingering ones removed (a removal whose Graph write was refused, and an expired
    grant whose removal message was lost), the unmanaged members left (restore does not remove them: one no request
    named, one the app removed and someone added back); each repair on the bulk queue names the request it restores,
    and history reads so; afterwards the directory is what the grants say, plus the unmanaged members, and a second
    sweep finds only those."""
    run = await make_run(GRANTS_POLICY=policy(tmp_path, restore(UNIT, guard=NO_GUARD)))
    for n in range(1, 5):
        graph.add_user(user(n))
    soon = (run.clock.utcnow() + timedelta(hours=1)).isoformat()
    graph.inject(Fault.status(403, method="DELETE", path=USER_2))  # RITM3's removal refused (a permission missing)
    await deliver(
        run,
        grant("RITM1", USER),
        grant("RITM2", USER_2),
        grant("RITM3", USER_2, action="remove"),
        grant("RITM4", user(1), expiresAt=soon),
        grant("RITM5", user(2)),
        grant("RITM6", user(4)),
        grant("RITM7", user(4), action="remove"),
    )
    run.clock.advance(2 * 3600)
    lost = run.queue.receive()  # RITM4's expiry removal, due now: lost (a purge, say)
    assert lost is not None
    assert json.loads(lost.body)["requestId"] == "~expire:RITM4"
    run.queue.complete(lost.lock_token)
    graph.remove_member(AU, USER)  # missing
    graph.add_member(AU, user(3))  # unmanaged (no request named it): reported only
    graph.add_member(AU, user(4))  # unmanaged (the app removed it, RITM7): reported only

    await sweep()
    sent = queued(run.queue)
    await repair(run)

    assert sorted((m["requestId"], m["action"], m["source"]["reference"]) for m in sent) == [
        ("~drift-add:RITM1", "add", "RITM1"),
        ("~drift-remove:RITM3", "remove", "RITM3"),
        ("~expire:RITM4", "remove", "RITM4"),
    ]
    assert all(m["id"].startswith("~drift:") for m in sent)
    properties = {m["requestId"]: m["properties"] for m in sent}["~expire:RITM4"]
    sealed = {"expiryOf", "notBefore", "producer", "seal"}  # sealed, with when it may run (now: a repair)
    assert (set(properties), properties["expiryOf"]) == (sealed, "RITM4")
    assert properties["producer"] == "ticketing"  # the expiry removal of ticketing's grant is ticketing's
    assert graph.members_of(AU) == {USER, user(2), user(3), user(4)}  # the grants, and the unmanaged members
    bulk_writes = [r for r in graph.requests if r.method != "GET"][-3:]
    assert len(bulk_writes) == 3
    history = await HISTORY(
        func.HttpRequest("GET", "http://localhost/api/history", headers=as_operator(), body=b"", params={"target": AU})
    )
    records = {r["requestId"]: r for r in json.loads(history.get_body())["requests"]}
    assert records["~drift-add:RITM1"]["status"] == "granted"
    assert records["~drift-add:RITM1"]["sourceReference"] == "RITM1"
    assert "restores RITM1's grant" in records["~drift-add:RITM1"]["requestReason"]
    assert records["~drift-remove:RITM3"]["status"] == "revoked"
    assert records["~expire:RITM4"]["status"] == "revoked"

    writes = graph.write_count
    _, document = await report(target=AU)
    assert findings(document) == {user(3): ("unmanaged", None, "report"), user(4): ("unmanaged", None, "report")}
    await sweep()
    assert queued(run.queue) == []
    assert graph.write_count == writes


async def test_a_role_named_by_id_and_by_template_is_one_target_and_its_repair_goes_to_the_pair_it_restores(
    make_run: Callable[..., Any], graph: GraphDouble, tmp_path: Path
) -> None:
    """A role's requests by object id and by template are one pair: granted by template and removed by id, the
    removal ends the grant and the member goes; granted by id and removed by template, with that removal's Graph
    write refused, the member is lingering. The role is checked once (by template and by id: the same target), and
    the lingering member is removed through the pair of the removal it restores (the template's, where both
    requests were recorded), the role named by its id in Graph."""
    run = await make_run(GRANTS_POLICY=policy(tmp_path, restore(HELPDESK, guard=NO_GUARD)))
    by_id = {"type": "directoryRole", "id": HELPDESK_ROLE}
    graph.inject(Fault.status(403, method="DELETE", path=USER_2))  # RITM4's removal refused (a permission missing)
    await deliver(
        run,
        grant("RITM1", USER, target=HELPDESK),
        grant("RITM2", USER, action="remove", target=by_id),
        grant("RITM3", USER_2, target=by_id),
        grant("RITM4", USER_2, action="remove", target=HELPDESK),
    )
    ended = {r["requestId"]: (r["outcome"], r["reason"]) for r in run.app.outcomes().values()}
    assert (ended["RITM2"], ended["RITM4"]) == (("revoked", None), ("dead_lettered", "Forbidden"))
    status, document = await report(target=HELPDESK_TEMPLATE)
    assert (status, [t["state"] for t in document["targets"]]) == (200, ["drifted"])
    assert findings(document) == {USER_2: ("lingering", "RITM4", "repair")}
    assert (await report(target=HELPDESK_ROLE))[1]["targets"][0]["target"] == HELPDESK  # by id: the same target

    await sweep()
    [sent] = queued(run.queue)
    await repair(run)

    assert (sent["requestId"], sent["target"]) == ("~drift-remove:RITM4", HELPDESK)
    assert graph.members_of(HELPDESK_TEMPLATE) == set()
    assert [(r.method, r.path) for r in graph.requests if r.method == "DELETE"][-1] == (
        "DELETE",
        f"/directoryRoles/{HELPDESK_ROLE}/members/{USER_2}/$ref",
    )
    assert (await report(target=HELPDESK_TEMPLATE))[1]["targets"][0]["state"] == "in_step"


async def test_a_missing_member_of_a_role_pair_recorded_by_object_id_before_is_re_granted(
    make_run: Callable[..., Any], graph: GraphDouble, tmp_path: Path
) -> None:
    """A grant the ledger recorded on the role's object-id pair (before requests by id were kept on the template's
    pair), its member removed behind the app's back: the sweep judges it by that pair, and its re-grant (sent naming
    the role by id) is carried out on the template's pair, the object-id pair merged into it, so the member is
    restored."""
    run = await make_run(GRANTS_POLICY=policy(tmp_path, restore(HELPDESK, guard=NO_GUARD)))
    now = run.clock.utcnow()
    made = Intent(
        request_id="RITM1",
        content_hash="c",
        action=Action.ADD,
        requested_at=now - timedelta(days=1),
        producer="ticketing",
    )
    recorded = PairState(
        grants=(Grant(producer="ticketing", newest=made),),
        applied=Applied(request_id="RITM1", action=Action.ADD, at=made.requested_at),
    )
    assert await services().ledger._write_pair(pair_of(DirectoryRole(id=Guid(HELPDESK_ROLE)), USER), recorded, None)
    _, document = await report(target=HELPDESK_TEMPLATE)
    assert findings(document) == {USER: ("missing", "RITM1", "repair")}

    await sweep()
    await repair(run)

    assert graph.members_of(HELPDESK_TEMPLATE) == {USER}


# --- authoritative ---------------------------------------------------------------------------------------------


async def test_authoritative_removes_an_unmanaged_member(
    make_run: Callable[..., Any], graph: GraphDouble, tmp_path: Path
) -> None:
    run = await make_run(GRANTS_POLICY=policy(tmp_path, restore(UNIT, mode="authoritative", guard=NO_GUARD)))
    graph.add_user(user(1))
    await deliver(run, grant("RITM1", USER), grant("RITM2", USER_2))
    graph.add_member(AU, user(1))

    await sweep()
    [sent] = queued(run.queue)
    await repair(run)

    unmanaged = f"~drift:{pair_of(AdministrativeUnit(id=Guid(AU)), user(1))}"
    assert (sent["requestId"], sent["action"], sent["requestedAt"]) == (unmanaged, "remove", "2000-01-01T00:00:00Z")
    assert graph.members_of(AU) == {USER, USER_2}


@pytest.mark.parametrize("requested_at", [None, "2000-01-01T00:00:00Z"], ids=["dated-now", "dated-2000-01-01"])
async def test_an_unmanaged_members_removal_never_beats_a_producers_add_carried_out_while_it_waits(
    make_run: Callable[..., Any], graph: GraphDouble, tmp_path: Path, requested_at: str | None
) -> None:
    """The removal of an unmanaged member (authoritative target) is the app's repair: it changes no grant and
    removes only while no grant holds the pair. A producer's add for that member, carried out while the removal
    waits in the bulk queue, holds it whatever its date (now, or 2000-01-01: as old as the removal's own date, and
    ordered before it by request id), so the removal ends superseded, nothing is removed, and the next sweep finds
    the unit in step."""
    run = await make_run(GRANTS_POLICY=policy(tmp_path, restore(UNIT, mode="authoritative", guard=NO_GUARD)))
    graph.add_user(user(1))
    await deliver(run, grant("RITM1", USER))
    graph.add_member(AU, user(1))
    await sweep()
    waiting = run.queue.receive()  # the removal, still waiting in the bulk queue
    assert waiting is not None
    assert json.loads(waiting.body)["requestedAt"] == "2000-01-01T00:00:00Z"
    dated = {"requestedAt": requested_at} if requested_at else {}
    await deliver(run, grant("RITM9", user(1), **dated))
    assert run.app.outcomes()["m-2"]["outcome"] == "already_member"
    run.queue.abandon(waiting.lock_token)
    await repair(run)
    assert graph.members_of(AU) == {USER, user(1)}
    assert run.app.outcomes()[waiting.message_id]["outcome"] == "superseded"
    assert [r for r in graph.requests if r.method == "DELETE"] == []
    _, document = await report(target=AU)
    assert document["targets"][0]["state"] == "in_step"


# --- the guard ------------------------------------------------------------------------------------------------


async def test_the_guard_holds_a_mass_removal_until_a_confirm_releases_it_once(
    make_run: Callable[..., Any], graph: GraphDouble, tmp_path: Path, drift_log: OutcomeRecorder
) -> None:
    """Ten members granted in an authoritative unit, and six members no request named added behind the app's back
    (a wrong import, say): six removals of 16 members is over the guard's limit (3), so the sweep holds them (a
    warning line, a drift_held event, the hold in the ledger) while re-grants still go. A confirm releases exactly
    that set; a second confirm is refused. Once the removals were carried out, the same six added back (by the tool
    that put them there, say) are the same six repairs (the same requests) but a new set, held again until a
    confirm names it."""
    run = await make_run(
        GRANTS_POLICY=policy(tmp_path, restore(UNIT, mode="authoritative")), GRANTS_OUTCOMES_TOPIC="grant-outcomes"
    )
    held_events = run.app.callbacks.topic.add_subscription("held", sql_filter="outcome = 'drift_held'")
    for n in range(1, 17):
        graph.add_user(user(n))
    await deliver(run, *(grant(f"RITM{n}", user(n)) for n in range(1, 11)))
    for n in range(11, 17):
        graph.add_member(AU, user(n))  # six unmanaged
    graph.remove_member(AU, user(1))  # one missing: re-granted whatever is held

    await sweep()
    sent = queued(run.queue)
    await repair(run)

    assert [m["requestId"] for m in sent] == ["~drift-add:RITM1"]
    assert graph.members_of(AU) >= {user(n) for n in range(1, 17)}
    [line] = drift_log.records
    assert (line["state"], line["held"]["removals"], line["held"]["limit"]) == ("held", 6, 3)
    digest = line["held"]["digest"]
    assert line["held"]["confirm"] == f"grants drift --target {AU} --repair --confirm {digest}"
    [event] = taken(held_events)
    assert (event["held"]["digest"], event["properties"]["targetId"]) == (digest, AU)
    hold = await services().ledger.drift_hold(AdministrativeUnit(id=Guid(AU)))
    assert hold is not None
    assert (hold.digest, hold.removals, hold.released_at) == (digest, 6, None)
    _, document = await report(target=AU)
    assert {f["handling"] for f in document["targets"][0]["findings"]} == {"held"}

    status, answer = await confirm(AU)
    sent = queued(run.queue)
    await repair(run)

    assert (status, answer["status"], answer["digest"], answer["removals"], answer["sent"]) == (
        200,
        "released",
        digest,
        6,
        6,
    )
    removals = sorted(f"~drift:{pair_of(AdministrativeUnit(id=Guid(AU)), user(n))}" for n in range(11, 17))
    assert sorted(m["requestId"] for m in sent) == removals
    assert graph.members_of(AU) == {user(n) for n in range(1, 11)}
    status, refused = await confirm(AU, digest)
    assert (status, refused["type"]) == (409, "urn:entra-grants:problem:drift-not-held")
    assert "released by a confirm" in refused["detail"]
    assert (await confirm(AU))[0] == 409
    await sweep()
    assert queued(run.queue) == []

    run.clock.advance(3600)  # the next hourly sweep (past the queue's duplicate-detection window)
    for n in range(11, 17):
        graph.add_member(AU, user(n))  # the same mass drift again: the same repairs, a new set
    await sweep()
    assert queued(run.queue) == []
    again = drift_log.records[-1]
    assert again["state"] == "held"
    assert again["held"]["digest"] != digest
    _, document = await report(target=AU)
    assert sorted(f["repair"]["requestId"] for f in document["targets"][0]["findings"]) == removals
    status, answer = await confirm(AU, again["held"]["digest"])
    await repair(run)
    assert (status, answer["sent"]) == (200, 6)
    assert graph.members_of(AU) == {user(n) for n in range(1, 11)}


async def test_a_confirm_naming_another_digest_releases_nothing(
    make_run: Callable[..., Any], graph: GraphDouble, tmp_path: Path
) -> None:
    """A lingering member (its removal's Graph write refused) held by a guard that allows none: a confirm naming
    another digest is refused (409, naming the set held now) and sends nothing."""
    run = await make_run(GRANTS_POLICY=policy(tmp_path, restore(UNIT, guard={"fraction": 0, "cap": 0})))
    graph.inject(Fault.status(403, method="DELETE", path=USER))
    await deliver(run, grant("RITM1", USER), grant("RITM1r", USER, action="remove"))
    await sweep()
    status, refused = await confirm(AU, "0123456789abcdef")
    assert status == 409
    assert refused["held"][0]["removals"] == 1
    assert "held now" in refused["detail"]
    assert queued(run.queue) == []
    assert (await confirm(AU, "not hex"))[0] == 400


# --- tier-0 ---------------------------------------------------------------------------------------------------


async def test_a_tier0_role_is_reported_and_never_touched_even_when_every_target_is_authoritative(
    make_run: Callable[..., Any], graph: GraphDouble, tmp_path: Path
) -> None:
    tier0 = {"type": "directoryRole", "roleTemplateId": GLOBAL_ADMIN}
    file = policy(
        tmp_path,
        {"defaultMode": "authoritative"},
        ticketing={"directoryRoles": [GLOBAL_ADMIN], "administrativeUnits": ["*"]},
    )
    run = await make_run(GRANTS_POLICY=file)
    graph.add_user(user(1))
    await deliver(run, grant("RITM1", USER, target=tier0), grant("RITM2", USER_2, target=tier0))
    graph.remove_member(GLOBAL_ADMIN, USER)  # missing
    graph.add_member(GLOBAL_ADMIN, user(1))  # unmanaged
    writes = graph.write_count

    status, document = await report(target=GLOBAL_ADMIN_ROLE)
    await sweep()

    assert status == 200
    [target] = document["targets"]
    assert (target["tier0"], target["mode"], target["roleTemplateId"]) == (True, "authoritative", GLOBAL_ADMIN)
    assert findings(document) == {USER: ("missing", "RITM1", "tier0"), user(1): ("unmanaged", None, "tier0")}
    assert queued(run.queue) == []
    assert graph.write_count == writes
    assert graph.members_of(GLOBAL_ADMIN) == {USER_2, user(1)}


def test_a_policy_asking_to_repair_a_tier0_role_is_refused_at_start_up(tmp_path: Path) -> None:
    from shared.core.drift_policy import DriftPolicy
    from shared.core.errors import ConfigError

    file = policy(tmp_path, restore({"type": "directoryRole", "roleTemplateId": GLOBAL_ADMIN}))
    with pytest.raises(ConfigError, match="tier-0"):
        DriftPolicy.load(file)


async def test_a_target_the_policy_names_is_swept_though_the_ledger_knows_none_of_its_members(
    make_run: Callable[..., Any], graph: GraphDouble, tmp_path: Path
) -> None:
    run = await make_run(GRANTS_POLICY=policy(tmp_path, restore({"type": "administrativeUnit", "id": AU_OTHER})))
    graph.add_member(AU_OTHER, USER)
    status, document = await report()
    assert status == 200
    assert findings(document) == {USER: ("unmanaged", None, "report")}
    assert document["targets"][0]["mode"] == "restore"
    assert run.sent == 0


async def test_a_target_graph_will_not_list_is_reported_failed_and_the_others_are_still_checked(
    make_run: Callable[..., Any], graph: GraphDouble, drift_log: OutcomeRecorder
) -> None:
    run = await make_run()
    await deliver(
        run, grant("RITM1", USER), grant("RITM2", USER, target={"type": "administrativeUnit", "id": AU_OTHER})
    )
    graph.delete_administrative_unit(AU_OTHER)
    await sweep()
    states = {line["targetId"]: (line["state"], line["reason"]) for line in drift_log.records}
    assert states == {AU: ("in_step", None), AU_OTHER: ("failed", "TargetNotFound")}
