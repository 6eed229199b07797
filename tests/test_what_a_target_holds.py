"""What each target can hold, end to end through the registered grant function (the ledger in Azurite, Graph on the
double over HTTP): users, groups and devices in a unit; the member types a target cannot hold refused by the
contract before any Graph call, and by Graph when the message did not say the member's type, both
`UnsupportedMember`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from grants_local.graph_double import GraphDouble
from tests.conftest import AU, DEVICE, GROUP_ASSIGNABLE, HELPDESK_ROLE, HELPDESK_TEMPLATE, USER, Run, body

SERVICE_PRINCIPAL = "d5c1a2d5-9101-44b2-83ab-885db8a647d0"
UNIT = {"type": "administrativeUnit", "id": AU}
ROLE = {"type": "directoryRole", "id": HELPDESK_ROLE}
SCOPED = {"type": "scopedRole", "roleTemplateId": HELPDESK_TEMPLATE, "administrativeUnitId": AU}


def grant(request_id: str, target: dict[str, str], member: str, member_type: str | None, **extra: Any) -> bytes:
    who = {"id": member} | ({"type": member_type} if member_type else {})
    return body(requestId=request_id, target=target, member=who, source={"system": "bulk"}, **extra)


def outcome(outcomes: dict[str, dict[str, Any]], request_id: str) -> tuple[str, str | None]:
    [record] = [r for r in outcomes.values() if r["requestId"] == request_id]
    return record["outcome"], record["reason"]


async def test_groups_and_devices_are_unit_members_like_users(make_run: Callable[..., Any], graph: GraphDouble) -> None:
    """A unit takes a group and a device as it takes a user: granted, listed, revoked."""
    run: Run = await make_run()
    added = await run.deliver(
        grant("group-in", UNIT, GROUP_ASSIGNABLE, "group"), grant("device-in", UNIT, DEVICE, "device")
    )
    assert graph.members_of(AU) == {GROUP_ASSIGNABLE, DEVICE}
    removed = await run.deliver(
        grant("group-out", UNIT, GROUP_ASSIGNABLE, "group", action="remove"),
        grant("device-out", UNIT, DEVICE, "device", action="remove"),
    )

    assert outcome(added, "group-in") == outcome(added, "device-in") == ("granted", None)
    assert outcome(removed, "group-out") == outcome(removed, "device-out") == ("revoked", None)
    assert graph.members_of(AU) == set()
    assert sorted(run.writes()) == [  # two deliveries at a time: in either order
        ("DELETE", f"/directory/administrativeUnits/{AU}/members/{GROUP_ASSIGNABLE}/$ref"),
        ("DELETE", f"/directory/administrativeUnits/{AU}/members/{DEVICE}/$ref"),
        ("POST", f"/directory/administrativeUnits/{AU}/members/$ref"),
        ("POST", f"/directory/administrativeUnits/{AU}/members/$ref"),
    ]


@pytest.mark.parametrize(
    ("target", "member", "member_type", "holder"),
    [
        (UNIT, SERVICE_PRINCIPAL, "servicePrincipal", "an administrative unit"),
        (ROLE, DEVICE, "device", "a directory role"),
        (SCOPED, DEVICE, "device", "a role scoped to an administrative unit"),
        (SCOPED, SERVICE_PRINCIPAL, "servicePrincipal", "a role scoped to an administrative unit"),
    ],
    ids=["service principal in a unit", "device in a role", "device in a scoped role", "service principal scoped"],
)
async def test_a_member_type_the_target_cannot_hold_is_refused_before_any_graph_call(
    make_run: Callable[..., Any], graph: GraphDouble, target: dict[str, str], member: str, member_type: str, holder: str
) -> None:
    graph.add_service_principal(SERVICE_PRINCIPAL)
    run: Run = await make_run()

    outcomes = await run.deliver(grant("refused", target, member, member_type))

    assert outcome(outcomes, "refused") == ("dead_lettered", "UnsupportedMember")
    [dead] = run.queue.dead_letters()
    assert dead.reason == "UnsupportedMember"
    assert f"member.type {member_type} cannot be a member of {holder}" in (dead.description or "")
    assert graph.requests == [], "refused before any Graph call"


async def test_an_untyped_member_graph_refuses_is_unsupported_member_too(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    """Without member.type the contract cannot know; Graph refuses the service principal, and the reason is the same."""
    graph.add_service_principal(SERVICE_PRINCIPAL)
    run: Run = await make_run()

    outcomes = await run.deliver(grant("untyped", UNIT, SERVICE_PRINCIPAL, None))

    assert outcome(outcomes, "untyped") == ("dead_lettered", "UnsupportedMember")
    [dead] = run.queue.dead_letters()
    assert "Unsupported referenced-object resource identifier" in (dead.description or "")
    assert run.writes() == [("POST", f"/directory/administrativeUnits/{AU}/members/$ref")]
    assert graph.members_of(AU) == set()


async def test_a_service_principal_can_hold_a_directory_role(make_run: Callable[..., Any], graph: GraphDouble) -> None:
    graph.add_service_principal(SERVICE_PRINCIPAL)
    run: Run = await make_run()

    outcomes = await run.deliver(grant("sp-role", ROLE, SERVICE_PRINCIPAL, "servicePrincipal"))

    assert outcome(outcomes, "sp-role") == ("granted", None)
    assert graph.members_of(HELPDESK_ROLE) == {SERVICE_PRINCIPAL}


async def test_a_user_is_refused_nowhere(make_run: Callable[..., Any], graph: GraphDouble) -> None:
    run: Run = await make_run()

    outcomes = await run.deliver(grant("u-unit", UNIT, USER, "user"), grant("u-scoped", SCOPED, USER, "user"))

    assert outcome(outcomes, "u-unit") == outcome(outcomes, "u-scoped") == ("granted", None)
