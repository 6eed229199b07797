"""A hostile producer and a careless operator, against the real parts: the registered functions on the local host,
the ledger in Azurite, the Graph double over HTTP. Each test is an attack that once worked (or might have); it pins
what the app does instead."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from grants_cli.dlq import Selector, resubmit
from grants_local.backend import LocalBackend
from grants_local.graph_double import Fault
from shared.core.contract import parse_grant
from shared.core.intents import content_hash, expiry_removal, intent_of
from shared.core.messaging import derived_message_id
from shared.runtime import services
from tests.conftest import AU, HELPDESK_ROLE, USER, USER_2, body
from tests.test_trust_boundary import (
    BULK,
    ROLE_BY_ID,
    ROLE_BY_TEMPLATE,
    App,
    app,
    hr_event,
    iso,
    make_app,
    rules_file,
    ticket,
)

__all__ = ["app", "make_app", "rules_file"]  # fixtures used here


# --- MessageIds the app derives ------------------------------------------------------------------------------------


async def test_squatting_the_message_ids_of_an_expiry_removal_and_its_sweep_does_not_keep_the_role(app: App) -> None:
    """A producer who knows a one-hour Helpdesk Administrator ticket sends messages under the MessageIds the app
    would derive for its expiry removal and the sweep's (again just before the sweep): duplicate detection must not
    drop the app's own removal, so the role ends at expiresAt."""
    expires = app.now() + timedelta(hours=1)
    raw = ticket("RITM6", target=ROLE_BY_TEMPLATE, expiresAt=iso(expires))
    command = parse_grant(raw)
    removal = expiry_removal(command.target, command.member.id, of=intent_of(command, arrived_at=app.now()))
    squats = {
        derived_message_id("expire", removal.request_id, content_hash(removal)),
        derived_message_id("sweep", removal.request_id, expires.isoformat()),
    }
    for squat in squats:
        app.put(b"{}", message_id=squat)
    assert (await app.send(raw, message_id="m-6"))["outcome"] == "granted"
    app.clock.advance(3600 + 60)
    for squat in squats:
        app.put(b"{}", message_id=squat)
    await services().expiry_sweep()
    await app.due()
    assert USER not in app.members(HELPDESK_ROLE)


async def test_squatting_the_message_id_of_a_retry_copy_does_not_lose_the_request(app: App) -> None:
    """A producer sends a message under the MessageId of a ticket's second attempt; the first attempt meets a 503:
    the app's retry copy is not dropped as a duplicate, and the ticket is granted."""
    raw = ticket("RITM7")
    squat = derived_message_id("retry", "m-7", hashlib.sha256(raw).hexdigest(), "", suffix="2")
    app.put(b"{}", message_id=squat)
    app.graph.inject(Fault.status(503, method="POST", path=AU))
    await app.send(raw, message_id="m-7")
    assert app.outcome("m-7")["outcome"] == "granted"
    assert USER in app.members(AU)


# --- a careless operator: dlq resubmit ---------------------------------------------------------------------------


async def test_a_resubmitted_hr_grant_is_carried_out_as_the_apps_own(make_app: Callable[..., Any]) -> None:
    """An HR joiner's grant is dead-lettered (its member not replicated in time); once the member exists the
    operator runs `grants dlq resubmit`: the copy is the app's own grant again (its ~hr id is not refused) and the
    member is granted."""
    app: App = await make_app(GRANTS_MAX_ATTEMPTS="2")
    late = str(uuid.uuid4())
    app.graph.add_user(late, visible_after_lookups=100)
    joiner = await app.publish(hr_event("hire", "evt-r", userObjectId=late, jobCode=...), message_id="e-r")
    assert joiner["outcome"] == "completed"
    await app.drain()
    assert [d.reason for d in app.queue.dead_letters()] == ["MemberNotFound"]
    app.graph.add_user(late)  # replicated now
    assert len(resubmit(LocalBackend(app.queue), Selector(reason="MemberNotFound"))) == 1
    await app.drain()
    assert late in app.members(AU)
    assert app.queue.dead_letters() == []


async def test_a_resubmitted_add_is_still_older_than_a_remove_made_after_it_first_arrived(
    make_app: Callable[..., Any],
) -> None:
    """A bulk add of a role by id (no requestedAt) is dead-lettered before the ledger saw it (the role lookup kept
    failing); a ticket remove for the member follows; the operator resubmits the dead letter: the add counts as made
    when it first arrived, so it is superseded and the member holds no role."""
    app: App = await make_app(GRANTS_MAX_ATTEMPTS="2")
    app.graph.inject(*(Fault.status(503, method="GET", path=HELPDESK_ROLE) for _ in range(2)))
    add = body(requestId="BULK-R", target=ROLE_BY_ID, member={"id": USER_2, "type": "user"})
    app.put(add, message_id="job-r:1")
    await app.drain(function=BULK)
    assert [d.reason for d in app.queue.dead_letters()] == ["GraphUnavailable"]
    app.clock.advance(60)
    remove = ticket("TICKET-R", action="remove", target=ROLE_BY_ID, member={"id": USER_2, "type": "user"})
    assert (await app.send(remove, message_id="m-r"))["outcome"] == "not_member"
    app.clock.advance(60)
    assert len(resubmit(LocalBackend(app.queue), Selector(reason="GraphUnavailable"))) == 1
    await app.drain(function=BULK)
    assert USER_2 not in app.members(HELPDESK_ROLE)


# --- what the status API says of a producer's clock ---------------------------------------------------------------


async def test_a_future_requested_at_is_kept_for_the_audit_but_the_intent_is_dated_at_arrival(app: App) -> None:
    """A ticket dated in 2099 (inside the domain): its status keeps the producer's requestedAt but says when the
    intent counts (its arrival), so a member's history lists a later request first."""
    received = app.now()
    status, _ = await app.post(json.loads(ticket("CLOCK-1", requestedAt="2099-12-31T00:00:00Z")))
    assert status == 202
    code, accepted = await app.status("CLOCK-1")
    assert (code, datetime.fromisoformat(accepted["intentAt"])) == (200, received)
    await app.due()
    app.clock.advance(60)
    assert (await app.send(ticket("CLOCK-2", action="remove"), message_id="m-c2"))["outcome"] == "revoked"
    code, record = await app.status("CLOCK-1")
    assert datetime.fromisoformat(record["requestedAt"]) == datetime(2099, 12, 31, tzinfo=UTC)
    assert datetime.fromisoformat(record["intentAt"]) == received
    _, history = await app.history(member=USER)
    assert [r["requestId"] for r in history["requests"]] == ["CLOCK-2", "CLOCK-1"]
