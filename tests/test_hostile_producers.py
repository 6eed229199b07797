"""A hostile producer and a careless operator, against the real parts: the registered functions on the local host,
the ledger in Azurite, the Graph double over HTTP. Each test is an attack that once worked (or might have); it pins
what the app does instead."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from grants_local.graph_double import Fault
from shared.core.contract import parse_grant
from shared.core.intents import content_hash, expiry_removal, intent_of
from shared.core.messaging import derived_message_id
from shared.runtime import services
from tests.conftest import AU, HELPDESK_ROLE, USER
from tests.test_trust_boundary import ROLE_BY_TEMPLATE, App, app, iso, make_app, rules_file, ticket

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
