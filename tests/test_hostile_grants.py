"""A hostile pass on "grants are owned": a hostile producer, a careless operator and the world (crashes, stalls, clock
skew, upgrades) against the grant per producer and pair, revoke-alls, expiries, doubts and what status tells.

Tests marked ``xfail(strict=True)`` pin a defect found on h/owned (the reason names it); the others show an attack
that is already defeated.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from grants_local.graph_double import GraphDouble
from grants_local.producers import LOCAL_PRODUCERS
from shared.adapters.ledger import _pair_fields, table_key
from shared.core.contract import Action
from shared.core.intents import Effect, Intent
from shared.core.pairs import (
    MAX_DOUBTS,
    Grant,
    PairState,
    Proceed,
    Released,
    Superseded,
    confirm_at,
    due_grants,
    release,
)
from tests.conftest import AU, AU_OTHER, HELPDESK_ROLE, HELPDESK_TEMPLATE, USER, Run
from tests.test_grants_owned import ROLE, at, grant, send, status_of, until
from tests.test_pairs import LEASE, T0, WINDOW, add, decide, expiry, released, remove, repair, written

ROLE_BY_ID = {"type": "directoryRole", "id": HELPDESK_ROLE}
SCOPED = {"type": "scopedRole", "roleTemplateId": HELPDESK_TEMPLATE, "administrativeUnitId": AU}


def services() -> Any:
    from shared.runtime import services as current

    return current()


def taken(subscription: Any) -> list[dict[str, Any]]:
    """The events waiting in a topic subscription, taken off it: their properties and body."""
    found = []
    while (locked := subscription.receive()) is not None:
        found.append({"properties": dict(locked.application_properties)} | json.loads(locked.body))
        subscription.complete(locked.lock_token)
    return found


def lag_the_app_clock(run: Run, seconds: float) -> None:
    """The app's clock (the intent gate's) runs `seconds` behind Service Bus's (the run's clock)."""
    gate = run.app.services.gate
    gate._now = lambda: run.clock.utcnow() - timedelta(seconds=seconds)


# =====================================================================================================================
# Expiries: a time-bound grant must end, and end only itself
# =====================================================================================================================


async def test_an_expiry_delivered_a_moment_early_by_the_app_s_clock_still_ends_the_grant(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    """The world: Service Bus delivers the scheduled removal at expiresAt by its clock; the app's clock is 2 s
    behind. The grant must still end: if not this delivery, then the sweep's."""
    run = await make_run()
    lag_the_app_clock(run, 2)
    await send(run, grant("RITM-E", "ticketing", expiresAt=at(run, 60)))
    assert USER in graph.members_of(AU)
    early = await until(run, 120)  # ExpiryNotDue, then carried out a few seconds later
    lag_the_app_clock(run, 0)
    assert early["~expire:RITM-E"]["outcome"] == "revoked"
    await until(run, 600)
    for _ in range(2):  # the sweep's copy, twice
        await services().expiry_sweep()
        await send(run)
        await until(run, 600)
    assert USER not in graph.members_of(AU)
    assert await services().expiry_sweep() == 0


async def test_an_expiry_ends_its_own_producer_s_grant_when_another_producer_uses_the_same_request_id(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    """Request ids are per producer: bulk's permanent grant named RITM1 (bulk sorts before ticketing) must not stand
    in for ticketing's time-bound RITM1."""
    run = await make_run()
    await send(run, grant("RITM1", "ticketing", expiresAt=at(run, 60)))
    assert (await send(run, grant("RITM1", "bulk")))["RITM1"]["outcome"] == "already_member"
    ended = await until(run, 120)
    assert ended["~expire:RITM1"]["outcome"] == "released"
    assert [h["producer"] for h in ended["~expire:RITM1"]["heldBy"]] == ["bulk"]
    assert USER in graph.members_of(AU)
    assert await services().expiry_sweep() == 0  # nothing left pending


def test_an_expiry_never_rewrites_another_producer_s_grant_that_shares_its_request_id() -> None:
    """ticketing: add X (a day). bulk: add Y at 10 s, then remove X at 20 s (bulk's own id X). At ticketing's expiry
    the membership goes; bulk's grant stays its remove, so bulk's add Y, retried late, is superseded."""
    ticket = add("X", "ticketing", days=1)
    bulk_add, bulk_remove = add("Y", "bulk", at=10), remove("X", "bulk", at=20)
    state = written(written(None, ticket), bulk_add, already=True)
    state = released(state, bulk_remove).state
    later = T0 + timedelta(days=1, seconds=1)
    ended = decide(state, expiry(ticket), now=later)
    assert isinstance(ended, Proceed)
    assert ended.write is Action.REMOVE
    done = release(ended.state, token="t", applied=Action.REMOVE, now=later, window=WINDOW)
    assert done is not None
    own = done.grant_of("bulk")
    assert own is not None
    assert own.newest == bulk_remove
    retried = decide(done, bulk_add, token="u", now=later + timedelta(seconds=5))
    assert isinstance(retried, Superseded)


async def test_an_add_answered_after_its_expiry_keeps_its_pending_removal_for_the_sweep(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    """The world: Graph takes 90 s to answer a grant that expires in 60 s, and the queue refuses the scheduled
    removal once; the add's retry is refused Expired. The sweep must still end the membership the add made."""
    from grants_local.queue import LocalSender

    run = await make_run()
    grants = run.app.services.grants
    carry_out = grants.carry_out

    async def slow(*args: Any, **kwargs: Any) -> Any:
        result = await carry_out(*args, **kwargs)
        run.clock.advance(90)  # the answer comes 90 s later by the app's clock
        return result

    grants.carry_out = slow
    sender = run.app.sender
    assert isinstance(sender, LocalSender)
    schedule = sender.schedule
    refused: list[str] = []

    async def refuse_once(**kwargs: Any) -> None:
        if str(kwargs["message_id"]).startswith("~expire:") and not refused:
            refused.append(str(kwargs["message_id"]))
            raise RuntimeError("the queue refuses it")
        await schedule(**kwargs)

    sender.schedule = refuse_once  # type: ignore[method-assign]
    outcomes = await send(run, grant("RITM-S", "ticketing", expiresAt=at(run, 60)))
    assert (outcomes["RITM-S"]["outcome"], outcomes["RITM-S"]["reason"]) == ("dead_lettered", "Expired")
    assert USER in graph.members_of(AU)  # the add's write landed
    assert await services().expiry_sweep() == 1
    await send(run)
    assert USER not in graph.members_of(AU)


def test_another_producer_s_remove_never_clears_the_pending_removal_of_a_grant_that_still_holds() -> None:
    """Tried: bulk's remove released (ticketing's week-long grant holds): ticketing's pending removal stays."""
    ticket = add("RITM1", "ticketing", days=7)
    state = written(written(None, ticket), add("B1", "bulk", at=5), already=True)
    ended = released(state, remove("B2", "bulk", at=10), now=T0 + timedelta(hours=1))
    assert [g.producer for g in ended.held_by] == ["ticketing"]
    kept = ended.state.grant_of("ticketing")
    assert kept is not None
    assert kept.removal_due == ticket.expires_at
    assert [g.producer for g in due_grants(ended.state, now=T0 + timedelta(days=7))] == ["ticketing"]


def test_an_expiry_cannot_end_a_grant_renewed_by_its_producer_or_another_producer_s_grant() -> None:
    """Tried: ticketing's first expiry after it renewed its grant, and an expiry naming hr's request (an id hr and
    ticketing share, hr's grant still holding)."""
    first, renewed = add("RITM1", "ticketing", days=1), add("RITM2", "ticketing", at=60, days=30)
    state = written(written(None, first), renewed, already=True)
    state = written(state, add("HR-1", "hr", at=120), already=True)
    later = T0 + timedelta(days=2)
    assert isinstance(decide(state, expiry(first), now=later), Superseded)
    forged = replace(expiry(add("HR-1", "hr", at=120)), producer="ticketing")
    assert isinstance(decide(state, forged, now=later), Superseded)
    assert {g.producer for g in state.holders(now=later)} == {"hr", "ticketing"}


# =====================================================================================================================
# Doubts: a membership the app may have made is the app's
# =====================================================================================================================


def test_an_add_in_doubt_stays_the_app_s_own_however_many_unanswered_removals_follow() -> None:
    """The world: ticketing's add lands but its answer never comes; Graph then answers 5xx to every attempt of the
    remove (none lands). The remove's next attempt must still remove."""
    first = decide(None, add("RITM1", "ticketing"), token="a")
    assert isinstance(first, Proceed)
    state = release(first.state, token="a", applied=None, now=T0, window=WINDOW, uncertain=True)
    assert state is not None
    ending = remove("RITM2", "ticketing", at=10)
    for attempt in range(MAX_DOUBTS):
        moment = T0 + timedelta(seconds=20 + attempt)
        admitted = decide(state, ending, token=f"r{attempt}", now=moment)
        assert isinstance(admitted, Proceed), (attempt, admitted)
        state = release(admitted.state, token=f"r{attempt}", applied=None, now=moment, window=WINDOW, uncertain=True)
        assert state is not None
    again = decide(state, ending, token="last", now=T0 + timedelta(seconds=60))
    assert isinstance(again, Proceed)
    assert again.write is Action.REMOVE


def test_a_revoke_all_answered_while_an_add_is_in_doubt_is_made_again_when_that_add_can_no_longer_land() -> None:
    """Tried: ticketing's add unanswered (it may land late), then hr's revoke-all: answered, it is confirmed again."""
    first = decide(None, add("RITM1", "ticketing"), token="a")
    assert isinstance(first, Proceed)
    state = release(first.state, token="a", applied=None, now=T0, window=WINDOW, uncertain=True)
    assert state is not None
    leaver = remove("HR-9", "hr", at=30, kind=Effect.REVOKE_ALL)
    moment = T0 + timedelta(seconds=40)
    admitted = decide(state, leaver, token="r", now=moment)
    assert isinstance(admitted, Proceed)
    assert admitted.write is Action.REMOVE
    assert confirm_at(admitted.state, action=Action.REMOVE, now=moment) == T0 + WINDOW


def test_a_drift_re_grant_after_a_revoke_all_is_never_written_and_a_late_old_add_is_superseded() -> None:
    """Tried: a restore-mode re-grant, and ticketing's add dated before the leaver, both after hr's revoke-all."""
    state = written(written(None, add("RITM1", "ticketing")), add("B1", "bulk", at=5), already=True)
    state = written(state, remove("HR-9", "hr", at=30, kind=Effect.REVOKE_ALL))
    assert isinstance(decide(state, repair(Action.ADD, "~drift-add:RITM1")), Superseded)
    assert isinstance(decide(state, add("RITM0", "ticketing", at=20)), Superseded)
    assert isinstance(decide(state, add("B2", "bulk", at=29)), Superseded)


def test_one_producer_keeps_one_grant_and_a_bounded_doubt_list_however_many_requests_it_sends() -> None:
    """Tried: 200 requests of one producer for one pair, every write unanswered: one grant, few doubts."""
    state: PairState | None = None
    for number in range(200):
        intent = (add if number % 2 == 0 else remove)(f"R{number}", "other", at=number)
        admitted = decide(state, intent, token=f"t{number}", now=T0 + timedelta(seconds=number))
        assert isinstance(admitted, Proceed | Released), admitted
        if isinstance(admitted, Released):
            state = admitted.state
            continue
        moment = T0 + timedelta(seconds=number)
        state = release(admitted.state, token=f"t{number}", applied=None, now=moment, window=WINDOW, uncertain=True)
    assert state is not None
    assert [g.producer for g in state.grants] == ["other"]
    assert len(state.doubts) <= MAX_DOUBTS


def test_a_pair_granted_by_every_producer_of_a_64_producer_registry_fits_table_storage() -> None:
    def grant_of(number: int) -> Grant:
        producer = f"producer-{number:02d}".ljust(32, "x")
        ended = Intent(
            request_id="~expire:" + "r" * 120,
            content_hash="c" * 64,
            action=Action.REMOVE,
            requested_at=T0,
            producer=producer,
            kind=Effect.EXPIRE,
            ends="e" * 128,
        )
        return Grant(producer=producer, newest=ended, removal_due=T0 + LEASE)

    fields = _pair_fields(PairState(grants=tuple(grant_of(n) for n in range(64))))
    too_long = {name: len(value) for name, value in fields.items() if isinstance(value, str) and len(value) > 32_767}
    assert too_long == {}  # 64 KiB of UTF-16: 32 Ki characters


# =====================================================================================================================
# What one producer is told of another's grants
# =====================================================================================================================


async def test_a_released_request_tells_its_producer_other_grants_by_name_only(
    make_run: Callable[..., Any],
) -> None:
    """What ticketing is told of its released remove (its status, its outcome event on the topic, which its
    callback carries) names hr's grant by producer only: not hr's request id, not its expiry."""
    run = await make_run(GRANTS_OUTCOMES_TOPIC="grant-outcomes")
    events = run.app.callbacks.topic.add_subscription("spy")
    await send(run, grant("HR-SECRET-1", "hr", expiresAt=at(run, 86_400)))
    await send(run, grant("RITM1", "ticketing"))
    outcomes = await send(run, grant("RITM2", "ticketing", action="remove"))
    assert outcomes["RITM2"]["outcome"] == "released"
    code, status = await status_of("RITM2", "ticketing")
    assert code == 200
    assert status["heldBy"] == [{"producer": "hr", "requestId": None, "expiresAt": None}]
    (event,) = [e for e in taken(events) if e["properties"].get("requestId") == "RITM2"]
    assert event["heldBy"] == [{"producer": "hr", "requestId": None, "expiresAt": None}]
    expires = at(run, 86_400)[:16]
    told = {"status": status["description"], "event": event["description"]}
    assert {where: "HR-SECRET-1" in text or expires in text for where, text in told.items()} == {
        "status": False,
        "event": False,
    }, told


async def test_a_request_superseded_by_a_revoke_all_is_not_told_the_leaver_s_request(
    make_run: Callable[..., Any],
) -> None:
    run = await make_run(GRANTS_OUTCOMES_TOPIC="grant-outcomes")
    events = run.app.callbacks.topic.add_subscription("spy")
    await send(run, grant("RITM1", "ticketing"))
    await send(run, grant("HR-LEAVER-9", "hr", action="remove", revokeAll=True))
    late = await send(run, grant("RITM0", "ticketing", requestedAt=at(run, -3600)))
    assert late["RITM0"]["outcome"] == "superseded"
    _code, status = await status_of("RITM0", "ticketing")
    (event,) = [e for e in taken(events) if e["properties"].get("requestId") == "RITM0"]
    told = {"status": status["description"], "event": event["description"]}
    assert {where: "HR-LEAVER-9" in text for where, text in told.items()} == {"status": False, "event": False}, told


async def test_an_expiry_of_a_renewed_grant_is_not_told_another_producer_s_request(
    make_run: Callable[..., Any],
) -> None:
    run = await make_run()
    await send(run, grant("RITM1", "ticketing", expiresAt=at(run, 60)))
    await send(run, grant("RITM2", "ticketing", expiresAt=at(run, 86_400)))
    await send(run, grant("HR-SECRET-3", "hr"))
    ended = await until(run, 120)
    assert ended["~expire:RITM1"]["outcome"] == "superseded"
    code, status = await status_of("~expire:RITM1", "ticketing")
    assert code == 200
    assert "HR-SECRET-3" not in status["description"], status["description"]


async def test_a_request_waiting_for_another_producer_s_write_is_not_told_its_request_id(
    make_run: Callable[..., Any],
) -> None:
    from shared.core.pairs import Lease

    run = await make_run(GRANTS_RETRY_BASE_SECONDS="600")
    ledger = run.app.services.ledger
    now = run.clock.utcnow()
    hr_add = Intent(request_id="HR-SECRET-2", content_hash="h", action=Action.ADD, requested_at=now, producer="hr")
    held = PairState(
        grants=(Grant(producer="hr", newest=hr_add),),
        lease=Lease(token="crashed", request_id="HR-SECRET-2", until=now + timedelta(seconds=100)),
    )
    assert await ledger._write_pair(f"au.{AU}.{USER}", held, None) is not None
    await send(run, grant("RITM1", "ticketing"))
    code, status = await status_of("RITM1", "ticketing")
    assert (code, status["status"]) == (200, "retry_scheduled")
    assert "HR-SECRET-2" not in json.dumps(status)


async def test_history_and_outcome_events_show_a_producer_other_grants_by_name_only(
    make_run: Callable[..., Any],
) -> None:
    """Tried: ticketing reading its own history of the member, and its outcome event's heldBy, after a release."""
    from tests.conftest import as_producer

    run = await make_run(GRANTS_OUTCOMES_TOPIC="grant-outcomes")
    events = run.app.callbacks.topic.add_subscription("spy")
    await send(run, grant("HR-1", "hr", expiresAt=at(run, 86_400)))
    await send(run, grant("RITM1", "ticketing"))
    await send(run, grant("RITM2", "ticketing", action="remove"))
    (event,) = [e for e in taken(events) if e["properties"].get("requestId") == "RITM2"]
    assert event["heldBy"] == [{"producer": "hr", "requestId": None, "expiresAt": None}]
    answer = await services().status.history({"member": USER}, as_producer("ticketing"))
    requests = json.loads(answer.body)["requests"]
    assert {r["requestId"] for r in requests} == {"RITM1", "RITM2"}
    (ended,) = [r for r in requests if r["requestId"] == "RITM2"]
    assert ended["heldBy"] == [{"producer": "hr", "requestId": None, "expiresAt": None}]


# =====================================================================================================================
# A hostile producer against another producer's grant
# =====================================================================================================================


async def test_forged_expiry_of_and_producer_properties_on_a_remove_end_only_the_sender_s_grant(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    """Tried: ticketing's remove on its own queue with expiryOf=HR-1 and producer=hr (an expiry of hr's grant,
    which would bypass ticketing's policy): read as ticketing's plain remove."""
    run = await make_run()
    await send(run, grant("HR-1", "hr", expiresAt=at(run, 30)))
    await send(run, grant("RITM1", "ticketing"))
    await until(run, 60)  # hr's grant expired and ended: ticketing's holds
    run.sent += 1
    run.queue_of("ticketing").send(
        grant("HR-1", "ticketing", action="remove"),
        message_id=f"m-{run.sent}",
        application_properties={"expiryOf": "RITM1", "producer": "hr"},
    )
    outcomes = await send(run)
    assert (outcomes["HR-1"]["outcome"], outcomes["HR-1"]["producer"]) == ("revoked", "ticketing")
    assert USER not in graph.members_of(AU)
    again = await send(run, grant("HR-2", "hr"))
    assert again["HR-2"]["outcome"] == "granted"
    run.sent += 1
    run.queue_of("ticketing").send(
        grant("RITM3", "ticketing", action="remove"),
        message_id=f"m-{run.sent}",
        application_properties={"expiryOf": "HR-2", "producer": "hr"},
    )
    outcomes = await send(run)
    assert outcomes["RITM3"]["outcome"] == "released"  # ticketing's own grant, not hr's
    assert USER in graph.members_of(AU)


async def test_a_producer_reusing_another_producer_s_request_id_ends_nothing_of_theirs(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    run = await make_run()
    await send(run, grant("HR-1", "hr"))
    outcomes = await send(run, grant("HR-1", "ticketing", action="remove"))
    assert outcomes["HR-1"]["outcome"] == "released"
    assert outcomes["HR-1"]["producer"] == "ticketing"
    assert USER in graph.members_of(AU)
    code, hr_status = await status_of("HR-1", "hr")
    assert (code, hr_status["status"]) == (200, "granted")


async def test_a_remove_naming_the_role_by_id_ends_only_the_sender_s_grant_of_that_role(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    """Tried: hr grants the role by template; ticketing adds and removes it by object id (one pair, two grants)."""
    run = await make_run()
    await send(run, grant("HR-1", "hr", target=ROLE))
    assert (await send(run, grant("RITM1", "ticketing", target=ROLE_BY_ID)))["RITM1"]["outcome"] == "already_member"
    ended = await send(run, grant("RITM2", "ticketing", target=ROLE_BY_ID, action="remove"))
    assert ended["RITM2"]["outcome"] == "released"
    assert USER in graph.members_of(HELPDESK_ROLE)
    gone = await send(run, grant("HR-2", "hr", target=ROLE_BY_ID, action="remove"))
    assert gone["HR-2"]["outcome"] == "revoked"
    assert USER not in graph.members_of(HELPDESK_ROLE)


async def test_a_scoped_role_remove_never_ends_a_directory_role_grant(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    run = await make_run()
    await send(run, grant("HR-1", "hr", target=ROLE))
    outcomes = await send(run, grant("RITM1", "ticketing", target=SCOPED, action="remove"))
    assert outcomes["RITM1"]["outcome"] in ("not_member", "released")
    assert USER in graph.members_of(HELPDESK_ROLE)


async def test_a_retried_add_made_before_a_revoke_all_is_superseded_when_its_retry_comes(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    """Tried: ticketing's add meets a 503 (its retry copy waits), hr's leaver revokes all meanwhile."""
    from grants_local.graph_double import Fault

    graph.inject(Fault.status(503, method="POST"))
    run = await make_run(GRANTS_RETRY_BASE_SECONDS="30")
    await send(run, grant("RITM1", "ticketing", requestedAt=at(run, -10)))
    await send(run, grant("HR-9", "hr", action="remove", revokeAll=True))
    outcomes = await until(run, 600)
    assert outcomes["RITM1"]["outcome"] == "superseded"
    assert USER not in graph.members_of(AU)


async def test_revoke_all_on_an_add_is_refused_and_changes_nothing(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    """Tried: hr (which holds the right) sending revokeAll on an add, to end every other grant while granting."""
    run = await make_run()
    await send(run, grant("RITM1", "ticketing"))
    outcomes = await send(run, grant("HR-1", "hr", revokeAll=True))
    assert outcomes["HR-1"]["outcome"] == "dead_lettered"
    assert "revokeAll" in outcomes["HR-1"]["description"]
    gone = await send(run, grant("RITM2", "ticketing", action="remove"))
    assert gone["RITM2"]["outcome"] == "revoked"  # ticketing's grant was the only one: hr's add made none
    assert USER not in graph.members_of(AU)


async def test_a_release_recorded_while_another_attempt_holds_the_lease_survives_that_attempt_s_return(
    make_run: Callable[..., Any],
) -> None:
    """Tried: hr's remove recorded (released, no lease) between bulk's lease and bulk's return of it: both kept."""
    from shared.adapters.ledger import Admitted

    run = await make_run()
    ledger = run.app.services.ledger
    now = run.clock.utcnow()
    pair = f"au.{AU}.{USER}"

    def intent(request_id: str, producer: str, action: Action, seconds: int) -> Intent:
        moment = now - timedelta(seconds=seconds)
        return Intent(
            request_id=request_id, content_hash=request_id, action=action, requested_at=moment, producer=producer
        )

    first = await ledger.begin(intent("HR-1", "hr", Action.ADD, 30), pair=pair, origin="m-1", now=now)
    assert isinstance(first, Admitted)
    assert await ledger.finish(first.ticket, applied=Action.ADD, now=now)
    second = await ledger.begin(intent("B-1", "bulk", Action.ADD, 20), pair=pair, origin="m-2", now=now)
    assert isinstance(second, Admitted)
    ended = await ledger.begin(intent("HR-2", "hr", Action.REMOVE, 10), pair=pair, origin="m-3", now=now)
    assert isinstance(ended, Released)
    assert await ledger.finish(second.ticket, applied=Action.ADD, now=now, already=True)
    state = await ledger.pair(pair)
    assert state is not None
    assert state.lease is None
    assert {g.producer: g.newest.request_id for g in state.grants} == {"bulk": "B-1", "hr": "HR-2"}
    assert not state.preexisting


# =====================================================================================================================
# A careless operator, and the upgrade
# =====================================================================================================================


async def test_a_remove_by_role_id_ends_a_grant_recorded_by_role_id_before_the_upgrade(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    run = await make_run()
    graph.add_member(HELPDESK_ROLE, USER)
    made = run.clock.utcnow() - timedelta(days=3)
    await _legacy_pair(run, f"role.{HELPDESK_ROLE}.{USER}", "RITM-OLD", made=made, producer="ticketing")
    outcomes = await send(run, grant("RITM-NEW", "ticketing", target=ROLE_BY_ID, action="remove"))
    assert outcomes["RITM-NEW"]["outcome"] == "revoked"
    assert USER not in graph.members_of(HELPDESK_ROLE)


async def test_a_time_bound_grant_recorded_by_role_id_before_the_upgrade_still_expires(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    run = await make_run()
    graph.add_member(HELPDESK_ROLE, USER)
    made = run.clock.utcnow() - timedelta(days=3)
    expires = made + timedelta(days=1)
    await _legacy_pair(
        run, f"role.{HELPDESK_ROLE}.{USER}", "RITM-TMP", made=made, producer="ticketing", expires=expires
    )
    assert await services().expiry_sweep() == 1
    outcomes = await send(run)
    assert outcomes["~expire:RITM-TMP"]["outcome"] == "revoked"
    assert USER not in graph.members_of(HELPDESK_ROLE)


async def test_a_policy_file_that_gives_hr_no_revoke_all_stops_the_app_when_hr_rules_are_set(
    make_run: Callable[..., Any], tmp_path: Path
) -> None:
    """A policy written before revokeAll existed: HR leavers would all be refused, so the app refuses to start,
    naming the producer and the right, instead of leaving every leaver with their access."""
    from shared.core.errors import ConfigError
    from tests.test_hr_events import RULES

    policy = tmp_path / "policy.json"
    rules = {"actions": ["add", "remove"], "administrativeUnits": ["*"], "directoryRoles": ["*"]}
    policy.write_text(json.dumps({"sources": {system: rules for system in ("hr", "ticketing", "bulk", "other")}}))
    hr_rules = tmp_path / "hr-rules.json"
    hr_rules.write_text(json.dumps(RULES))
    with pytest.raises(ConfigError, match=r"'hr' sends HR events.*revokeAll"):
        await make_run(GRANTS_POLICY=str(policy), GRANTS_HR_RULES=str(hr_rules))


async def test_one_hand_edited_pair_row_does_not_stop_the_expiry_sweep(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:

    run = await make_run()
    ledger = run.app.services.ledger
    now = run.clock.utcnow()
    past = now - timedelta(hours=1)
    edited = f"au.{AU}.{USER}"  # sorts first in the table
    naive = past.replace(tzinfo=None).isoformat()
    newest = {"requestId": "E-1", "contentHash": "c", "action": "add", "requestedAt": naive, "expiresAt": naive}
    await ledger._table.create_entity(
        {
            "PartitionKey": table_key("pair", edited),
            "RowKey": "pair",
            "pair": edited,
            "grants": json.dumps([{"producer": "ticketing", "newest": newest, "removalDue": naive}]),
            "removalDue": past,
            "appliedRequestId": "E-1",
            "appliedAction": "add",
            "appliedAt": past,
        }
    )
    graph.add_member(AU_OTHER, USER)
    other = f"au.{AU_OTHER}.{USER}"
    due = add("T-1", "ticketing")
    due = replace(due, requested_at=past - timedelta(days=1), expires_at=past)
    state = PairState(grants=(Grant(producer="ticketing", newest=due, removal_due=past),))
    from shared.core.pairs import Applied

    state = replace(state, applied=Applied(request_id="T-1", action=Action.ADD, at=past - timedelta(days=1)))
    assert await ledger._write_pair(other, state, None) is not None
    assert await services().expiry_sweep() >= 1
    await send(run)
    assert USER not in graph.members_of(AU_OTHER)


async def test_a_grant_recorded_before_producers_had_names_is_ended_by_its_system_s_only_producer(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    registry = {"producers": [p for p in LOCAL_PRODUCERS["producers"] if p["name"] != "ticketing"]}
    run = await make_run(GRANTS_PRODUCERS=json.dumps(registry))
    graph.add_member(AU, USER)
    made = run.clock.utcnow() - timedelta(days=30)
    await _legacy_pair(run, f"au.{AU}.{USER}", "OLD-1", made=made, producer=None)
    record = {"requestId": "OLD-1", "status": "granted", "sourceSystem": "ticketing", "memberId": USER, "targetId": AU}
    await run.app.services.ledger._table.create_entity(
        {
            "PartitionKey": table_key("request", "OLD-1"),
            "RowKey": "status",
            "requestId": "OLD-1",
            "status": "granted",
            "record": json.dumps(record),
        }
    )
    outcomes = await send(run, grant("ITSM-2", "ticketing", action="remove"), producer="itsm")
    assert outcomes["ITSM-2"]["outcome"] == "revoked", outcomes["ITSM-2"]["description"]
    assert USER not in graph.members_of(AU)


async def _legacy_pair(
    run: Run, pair: str, request_id: str, *, made: datetime, producer: str | None, expires: datetime | None = None
) -> None:
    """A pair entity as the ledger wrote it before grants had owners (one newest intent, its add applied)."""
    entity: dict[str, Any] = {
        "PartitionKey": table_key("pair", pair),
        "RowKey": "pair",
        "pair": pair,
        "newestRequestId": request_id,
        "newestContentHash": "0" * 64,
        "newestAction": "add",
        "newestRequestedAt": made,
        "appliedRequestId": request_id,
        "appliedAction": "add",
        "appliedAt": made,
    }
    if producer is not None:
        entity["newestProducer"] = producer
    if expires is not None:
        entity.update(newestExpiresAt=expires, removalDue=expires)
    await run.app.services.ledger._table.create_entity(entity)
