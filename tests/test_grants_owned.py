"""Grants are owned, through the registered functions, the Graph double and the ledger in Azurite: a membership stands
while any producer's grant holds it, one producer's grant never ends another's, a revoke-all is a right, and a
membership the app did not make is kept when the app's grants end."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from grants_local.graph_double import Fault, GraphDouble
from tests.conftest import AU, HELPDESK_ROLE, HELPDESK_TEMPLATE, USER, Run, as_producer, as_reader, body, source_of

ROLE = {"type": "directoryRole", "roleTemplateId": HELPDESK_TEMPLATE}


def at(run: Run, seconds: float) -> str:
    """An RFC 3339 time `seconds` after the run's clock now."""
    return datetime.fromtimestamp(run.clock() + seconds, UTC).isoformat().replace("+00:00", "Z")


async def send(run: Run, *bodies: bytes, producer: str | None = None) -> dict[str, dict[str, Any]]:
    """Send each body from its producer (or `producer`) and deliver what is due now, leaving later work queued; the
    terminal outcomes so far, by request id (the last of each)."""
    for raw in bodies:
        run.sent += 1
        run.queue_of(producer or source_of(raw)).send(raw, message_id=f"m-{run.sent}")
    await run.app.host().drain(until=run.clock())
    return {record["requestId"]: dict(record) for record in run.app.outcomes().values()}


async def until(run: Run, seconds: float) -> dict[str, dict[str, Any]]:
    """Let `seconds` pass, delivering what falls due by then (scheduled expiries); outcomes as `send`'s."""
    return await until_time(run, run.clock() + seconds)


async def until_time(run: Run, moment: float) -> dict[str, dict[str, Any]]:
    """Deliver what falls due by clock time `moment`, then let the clock reach it."""
    await run.app.host().drain(until=moment)
    run.clock.advance_to(max(moment, run.clock()))
    return {record["requestId"]: dict(record) for record in run.app.outcomes().values()}


def grant(request_id: str, system: str, **fields: Any) -> bytes:
    return body(requestId=request_id, source={"system": system}, **fields)


async def status_of(request_id: str, producer: str) -> tuple[int, dict[str, Any]]:
    from shared.runtime import services

    answer = await services().status.request(request_id, {}, as_producer(producer))
    document: dict[str, Any] = json.loads(answer.body)
    return answer.status, document


# --- one producer's grant never ends another's -------------------------------------------------------------------


async def test_an_add_only_producer_s_expiring_add_ends_only_its_own_grant(
    make_run: Callable[..., Any], graph: GraphDouble, tmp_path: Path
) -> None:
    """bulk may only add; its add expiring in a minute, over HR's grant, ends bulk's grant, not the membership."""
    policy = tmp_path / "policy.json"
    policy.write_text(
        json.dumps(
            {
                "sources": {
                    "bulk": {"actions": ["add"], "administrativeUnits": ["*"]},
                    "hr": {"actions": ["add", "remove", "revokeAll"], "administrativeUnits": ["*"]},
                }
            }
        )
    )
    run = await make_run(GRANTS_POLICY=str(policy))
    first = await send(run, grant("HR-1", "hr"))
    assert first["HR-1"]["outcome"] == "granted"
    second = await send(run, grant("B-1", "bulk", expiresAt=at(run, 60)))
    assert second["B-1"]["outcome"] == "already_member"
    ended = await until(run, 120)
    expiry = ended["~expire:B-1"]
    assert (expiry["outcome"], [h["producer"] for h in expiry["heldBy"]]) == ("released", ["hr"])
    assert USER in graph.members_of(AU)
    assert [w for w in run.writes() if w[0] == "DELETE"] == []


async def test_a_past_expires_at_is_refused_expired_and_changes_nothing(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    run = await make_run()
    await send(run, grant("HR-1", "hr"))
    outcomes = await send(run, grant("B-1", "bulk", expiresAt=at(run, -60)))
    assert (outcomes["B-1"]["outcome"], outcomes["B-1"]["reason"]) == ("dead_lettered", "Expired")
    await until(run, 3600)
    assert USER in graph.members_of(AU)
    assert "~expire:B-1" not in run.app.outcomes()


async def test_a_ticket_s_week_over_an_hr_role_grant_ends_without_ending_the_role(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    """HR grants a role for a job; a ticket grants the same role for seven days (already there); on day seven the
    ticket's grant ends and the role stays, held by HR's grant; status says so."""
    run = await make_run()
    await send(run, grant("HR-7", "hr", target=ROLE))
    week = 7 * 86_400
    outcomes = await send(run, grant("RITM7", "ticketing", target=ROLE, expiresAt=at(run, week)))
    assert outcomes["RITM7"]["outcome"] == "already_member"
    ended = await until(run, week + 60)
    assert ended["~expire:RITM7"]["outcome"] == "released"
    assert USER in graph.members_of(HELPDESK_ROLE)
    code, status = await status_of("~expire:RITM7", "ticketing")
    assert code == 200
    assert status["status"] == "released"
    assert status["heldBy"] == [{"producer": "hr", "requestId": None, "expiresAt": None}]  # not the ticket's to see
    code, seen = await status_of("HR-7", "hr")
    assert (code, seen["status"]) == (200, "granted")


ENDS = ["remove", "expiry"]


@pytest.mark.parametrize(
    ("hr_end", "ticket_end", "first"),
    [(h, t, f) for h, t in itertools.product(ENDS, ENDS) for f in ("hr", "ticketing")],
)
async def test_two_producers_grants_hold_the_membership_until_both_end_in_any_order(
    make_run: Callable[..., Any], graph: GraphDouble, hr_end: str, ticket_end: str, first: str
) -> None:
    """Two grants of one membership, each ended by its producer's remove or its expiry, either first: the first end
    is released (the other grant still holds it), the second revokes the membership."""
    run = await make_run()
    start = run.clock()
    later = {"hr": 600 if first == "hr" else 1200, "ticketing": 1200 if first == "hr" else 600}
    ends = {"hr": hr_end, "ticketing": ticket_end}
    ids = {"hr": ("HR-1", "HR-2"), "ticketing": ("RITM1", "RITM2")}
    for producer in ("hr", "ticketing"):
        expires = at(run, later[producer]) if ends[producer] == "expiry" else None
        await send(run, grant(ids[producer][0], producer, expiresAt=expires))
    assert USER in graph.members_of(AU)
    order = sorted(("hr", "ticketing"), key=lambda producer: later[producer])
    outcomes: dict[str, dict[str, Any]] = {}
    for producer in order:
        outcomes = await until_time(run, start + later[producer] + 1)
        if ends[producer] == "remove":
            outcomes = await send(run, grant(ids[producer][1], producer, action="remove"))
        if producer == order[0]:
            assert USER in graph.members_of(AU)
    ending = {
        producer: ids[producer][1] if ends[producer] == "remove" else f"~expire:{ids[producer][0]}"
        for producer in order
    }
    assert outcomes[ending[order[0]]]["outcome"] == "released"
    assert outcomes[ending[order[1]]]["outcome"] == "revoked"
    assert USER not in graph.members_of(AU)


# --- memberships the app did not make ----------------------------------------------------------------------------


async def test_a_membership_that_was_there_before_any_grant_is_kept_when_the_grants_end(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    graph.add_member(AU, USER)
    run = await make_run()
    first = await send(run, grant("RITM1", "ticketing"))
    assert first["RITM1"]["outcome"] == "already_member"
    ended = await send(run, grant("RITM2", "ticketing", action="remove"))
    assert ended["RITM2"]["outcome"] == "released"
    assert ended["RITM2"]["heldBy"] == [{"preexisting": True}]
    assert USER in graph.members_of(AU)


async def test_a_grant_whose_first_write_landed_unanswered_is_the_app_s_own_and_ends_with_it(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    """The add's POST lands but its answer never comes (the connection drops): the retry finds the member there,
    and the app knows the doubt it recorded before the write: the membership is its own, and goes with the grant."""
    graph.inject(Fault.applied_then_drop(method="POST"))
    run = await make_run()
    await send(run, grant("RITM1", "ticketing"))
    first = await until(run, 60)
    assert first["RITM1"]["outcome"] == "already_member"
    ended = await send(run, grant("RITM2", "ticketing", action="remove"))
    assert ended["RITM2"]["outcome"] == "revoked"
    assert USER not in graph.members_of(AU)


async def test_a_remove_for_a_membership_the_app_never_made_removes_nothing(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    graph.add_member(AU, USER)
    run = await make_run()
    ended = await send(run, grant("RITM2", "ticketing", action="remove"))
    assert ended["RITM2"]["outcome"] == "released"
    assert USER in graph.members_of(AU)
    assert run.writes() == []


# --- revoke-all ------------------------------------------------------------------------------------------------------


async def test_a_revoke_all_ends_every_grant_and_a_membership_the_app_did_not_make(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    graph.add_member(AU, USER)
    run = await make_run()
    await send(run, grant("RITM1", "ticketing"), grant("B-1", "bulk"))
    outcomes = await send(run, grant("HR-9", "hr", action="remove", revokeAll=True))
    assert outcomes["HR-9"]["outcome"] == "revoked"
    assert USER not in graph.members_of(AU)
    late = await send(run, grant("RITM0", "ticketing", requestedAt=at(run, -3600)))
    assert late["RITM0"]["outcome"] == "superseded"  # older than the revoke-all
    assert USER not in graph.members_of(AU)
    again = await send(run, grant("RITM3", "ticketing"))
    assert again["RITM3"]["outcome"] == "granted"  # a grant made after it stands


async def test_a_revoke_all_is_refused_to_a_producer_the_policy_does_not_give_it(make_run: Callable[..., Any]) -> None:
    run = await make_run()
    await send(run, grant("RITM1", "ticketing"))
    outcomes = await send(run, grant("RITM2", "ticketing", action="remove", revokeAll=True))
    assert (outcomes["RITM2"]["outcome"], outcomes["RITM2"]["reason"]) == ("dead_lettered", "PolicyDenied")
    assert "revokeAll" in outcomes["RITM2"]["description"]


# --- status and history --------------------------------------------------------------------------------------------


async def test_a_reader_sees_which_grants_hold_a_membership_a_release_left_in_place(
    make_run: Callable[..., Any],
) -> None:
    from shared.runtime import services

    run = await make_run()
    await send(run, grant("HR-1", "hr"))
    await send(run, grant("RITM1", "ticketing"))
    await send(run, grant("RITM2", "ticketing", action="remove"))
    answer = await services().status.request("RITM2", {"producer": "ticketing"}, as_reader())
    record = json.loads(answer.body)
    assert record["status"] == "released"
    assert record["heldBy"] == [{"producer": "hr", "requestId": "HR-1", "expiresAt": None}]
    history = await services().status.history({"member": USER}, as_reader())
    requests = [(r["requestId"], r["status"]) for r in json.loads(history.body)["requests"]]
    assert ("RITM2", "released") in requests
    assert ("HR-1", "granted") in requests
