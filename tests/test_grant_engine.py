"""The grant engine end to end: real credential, real httpx, the Graph double on loopback. One test per row
of the outcome table, plus token caching and connection reuse."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from grants_local.azurite import LedgerTable
from grants_local.graph_double import Fault, GraphDouble
from grants_local.queue import LocalQueue, LocalSender
from grants_local.token_endpoint import TokenEndpoint
from shared.adapters.graph import USER_AGENT, path
from shared.bootstrap import Services, bootstrap
from shared.core.contract import GrantCommand, parse_grant
from shared.core.errors import PermanentError, Reason, TransientError
from shared.core.statuses import Status
from tests.conftest import (
    AU,
    AU_OTHER,
    DEVICE,
    GROUP_ASSIGNABLE,
    HELPDESK_ROLE,
    HELPDESK_TEMPLATE,
    LATE_USER,
    UNKNOWN,
    USER,
    USER_2,
    USER_ADMIN_TEMPLATE,
    body,
    execute,
    settings_for,
)

SERVICE_PRINCIPAL = "d5c1a2d5-9101-44b2-83ab-885db8a647d0"
GROUP = "65c1a2d5-9101-44b2-83ab-885db8a647cf"  # a security group that is not role-assignable


def command(
    *, target: dict[str, str] | None = None, member: str = USER, action: str = "add", member_type: str = "user"
) -> GrantCommand:
    return parse_grant(
        body(
            requestId="test-1",
            action=action,
            target=target or {"type": "administrativeUnit", "id": AU},
            member={"id": member, "type": member_type},
            source={"system": "other"},
        )
    )


def writes(graph: GraphDouble) -> list[tuple[str, str, int]]:
    return [(r.method, r.path, r.status) for r in graph.requests if r.method != "GET"]


async def test_adding_a_user_to_an_administrative_unit_grants_it(services: Services, graph: GraphDouble) -> None:
    result = await execute(services, command())
    assert result.outcome is Status.GRANTED
    assert graph.members_of(AU) == {USER}
    assert result.graph is not None
    assert result.graph.request_id
    [request] = graph.requests
    assert (request.method, request.path) == ("POST", f"/directory/administrativeUnits/{AU}/members/$ref")
    assert request.body == {"@odata.id": f"{graph.base_url}/directoryObjects/{USER}"}
    assert request.client_request_id


async def test_already_a_member_is_success(services: Services, graph: GraphDouble) -> None:
    await execute(services, command())
    result = await execute(services, command())
    assert result.outcome is Status.ALREADY_MEMBER
    assert graph.members_of(AU) == {USER}
    assert graph.requests[-1].status == 400


async def test_remove_revokes_then_a_second_remove_is_not_member(services: Services, graph: GraphDouble) -> None:
    await execute(services, command())
    assert (await execute(services, command(action="remove"))).outcome is Status.REVOKED
    assert graph.members_of(AU) == set()
    assert (await execute(services, command(action="remove"))).outcome is Status.NOT_MEMBER


async def test_removing_a_member_that_does_not_exist_is_not_member(services: Services) -> None:
    result = await execute(services, command(action="remove", member=UNKNOWN))
    assert result.outcome is Status.NOT_MEMBER


@pytest.mark.parametrize("action", ["add", "remove"])
async def test_unknown_target_is_permanent_target_not_found(services: Services, action: str) -> None:
    with pytest.raises(PermanentError) as caught:
        await execute(services, command(target={"type": "administrativeUnit", "id": UNKNOWN}, action=action))
    assert caught.value.reason is Reason.TARGET_NOT_FOUND
    assert caught.value.graph is not None
    assert caught.value.graph.status == 404


async def test_unknown_member_is_transient_member_not_found(services: Services, graph: GraphDouble) -> None:
    with pytest.raises(TransientError) as caught:
        await execute(services, command(member=UNKNOWN))
    assert caught.value.reason is Reason.MEMBER_NOT_FOUND
    assert "replicate" in caught.value.description
    assert graph.members_of(AU) == set()


async def test_a_member_that_replicates_late_is_granted_once_visible(services: Services, graph: GraphDouble) -> None:
    for _ in range(2):
        with pytest.raises(TransientError):
            await execute(services, command(member=LATE_USER))
    assert (await execute(services, command(member=LATE_USER))).outcome is Status.GRANTED
    assert graph.members_of(AU) == {LATE_USER}


async def test_a_404_that_names_no_id_is_decided_by_a_get_of_the_target(services: Services, graph: GraphDouble) -> None:
    graph.inject(Fault.status(404, method="POST"))
    with pytest.raises(TransientError) as caught:
        await execute(services, command())
    assert caught.value.reason is Reason.MEMBER_NOT_FOUND
    assert [(r.method, r.path) for r in graph.requests][-1] == ("GET", f"/directory/administrativeUnits/{AU}")


async def test_directory_role_by_id_and_by_template(services: Services, graph: GraphDouble) -> None:
    by_id = await execute(services, command(target={"type": "directoryRole", "id": HELPDESK_ROLE}))
    by_template = await execute(
        services,
        command(target={"type": "directoryRole", "roleTemplateId": HELPDESK_TEMPLATE}, member=GROUP_ASSIGNABLE),
    )
    assert (by_id.outcome, by_template.outcome) == (Status.GRANTED, Status.GRANTED)
    assert graph.members_of(HELPDESK_ROLE) == {USER, GROUP_ASSIGNABLE}
    assert writes(graph)[1][1] == f"/directoryRoles/roleTemplateId={HELPDESK_TEMPLATE}/members/$ref"


async def test_role_not_activated_is_permanent_unless_activation_is_allowed(
    services: Services, graph: GraphDouble
) -> None:
    target = {"type": "directoryRole", "roleTemplateId": USER_ADMIN_TEMPLATE}
    with pytest.raises(PermanentError) as caught:
        await execute(services, command(target=target))
    assert caught.value.reason is Reason.ROLE_NOT_ACTIVATED
    assert "GRANTS_ACTIVATE_ROLES" in caught.value.description
    assert graph.role_id_of(USER_ADMIN_TEMPLATE) is None


async def test_with_activation_allowed_the_role_is_activated_then_granted(
    graph: GraphDouble, ledger_in_azurite: LedgerTable
) -> None:
    services = bootstrap(
        ledger_in_azurite.settings(settings_for(graph, GRANTS_ACTIVATE_ROLES="true")),
        sender=LocalSender(LocalQueue()),
        ledger_credential=ledger_in_azurite.credential(),
    )
    try:
        result = await execute(
            services, command(target={"type": "directoryRole", "roleTemplateId": USER_ADMIN_TEMPLATE})
        )
    finally:
        await services.aclose()
    assert result.outcome is Status.GRANTED
    role_id = graph.role_id_of(USER_ADMIN_TEMPLATE)
    assert role_id is not None
    assert graph.members_of(role_id) == {USER}
    assert ("POST", "/directoryRoles", 201) in writes(graph)


async def test_removing_from_a_role_that_is_not_activated_is_not_member(services: Services) -> None:
    target = {"type": "directoryRole", "roleTemplateId": USER_ADMIN_TEMPLATE}
    assert (await execute(services, command(target=target, action="remove"))).outcome is Status.NOT_MEMBER


@pytest.mark.parametrize(
    ("kind", "target", "permission"),
    [
        ("administrativeUnit", {"type": "administrativeUnit", "id": AU}, "AdministrativeUnit.ReadWrite.All"),
        ("directoryRole", {"type": "directoryRole", "id": HELPDESK_ROLE}, "RoleManagement.ReadWrite.Directory"),
    ],
)
async def test_403_is_permanent_forbidden_naming_the_permission(
    services: Services, graph: GraphDouble, kind: Any, target: dict[str, str], permission: str
) -> None:
    graph.deny(kind)
    with pytest.raises(PermanentError) as caught:
        await execute(services, command(target=target))
    assert caught.value.reason is Reason.FORBIDDEN
    assert permission in caught.value.description
    assert caught.value.graph is not None
    assert caught.value.graph.code == "Authorization_RequestDenied"


async def test_429_is_transient_throttled_with_the_servers_delay(services: Services, graph: GraphDouble) -> None:
    graph.inject(Fault.status(429, retry_after=7))
    with pytest.raises(TransientError) as caught:
        await execute(services, command())
    assert caught.value.reason is Reason.THROTTLED
    assert caught.value.retry_after == 7


@pytest.mark.parametrize("fault", [Fault.status(500), Fault.status(502), Fault.status(503), Fault.status(504)])
async def test_5xx_is_transient_graph_unavailable(services: Services, graph: GraphDouble, fault: Fault) -> None:
    graph.inject(fault)
    with pytest.raises(TransientError) as caught:
        await execute(services, command())
    assert caught.value.reason is Reason.GRAPH_UNAVAILABLE
    assert caught.value.graph is not None
    assert caught.value.graph.status == fault.status_code


async def test_a_dropped_connection_is_transient_graph_unavailable(services: Services, graph: GraphDouble) -> None:
    graph.inject(Fault.drop())
    with pytest.raises(TransientError) as caught:
        await execute(services, command())
    assert caught.value.reason is Reason.GRAPH_UNAVAILABLE
    assert "could not be reached" in caught.value.description or "in time" in caught.value.description


async def test_a_401_gets_one_fresh_token_and_succeeds(
    services: Services, graph: GraphDouble, token_endpoint: TokenEndpoint
) -> None:
    await execute(services, command(member=USER_2))
    token_endpoint.expire_all()
    assert (await execute(services, command())).outcome is Status.GRANTED
    assert token_endpoint.request_count == 2


async def test_a_401_after_two_fresh_tokens_is_permanent_unauthorized(
    services: Services, graph: GraphDouble, token_endpoint: TokenEndpoint
) -> None:
    graph.inject(Fault.status(401), Fault.status(401), Fault.status(401))
    with pytest.raises(PermanentError) as caught:
        await execute(services, command())
    assert caught.value.reason is Reason.UNAUTHORIZED
    assert token_endpoint.request_count == 3
    assert graph.members_of(AU) == set()


async def test_a_token_cached_just_before_every_token_was_invalidated_is_refused_too(
    services: Services, graph: GraphDouble, token_endpoint: TokenEndpoint
) -> None:
    """Found by the soak: request A holds token T1; request B is refused once and caches a fresh T2; then
    every token is invalidated before A is answered. A is refused, gets the cached T2 (other than T1, just
    as stale), is refused again, and must still get a token fetched after that."""
    await execute(services, command(member=USER_2))  # T1 cached
    graph.inject(Fault.delay(0.5, path=AU_OTHER))  # A is answered (and its token checked) 0.5 s from now
    slow = asyncio.create_task(execute(services, command(target={"type": "administrativeUnit", "id": AU_OTHER})))
    await asyncio.sleep(0)  # A takes T1 and sends
    graph.inject(Fault.status(401, path=AU))
    await execute(services, command(action="remove", member=USER_2))  # B: refused once, caches T2
    token_endpoint.expire_all()

    assert (await slow).outcome is Status.GRANTED
    assert graph.members_of(AU_OTHER) == {USER}


async def test_any_other_4xx_is_permanent_graph_rejected(services: Services, graph: GraphDouble) -> None:
    graph.inject(Fault.status(400))
    with pytest.raises(PermanentError) as caught:
        await execute(services, command())
    assert caught.value.reason is Reason.GRAPH_REJECTED
    assert caught.value.graph is not None
    assert caught.value.graph.code == "BadRequest"


@pytest.mark.parametrize(
    ("target", "member"),
    [
        ({"type": "directoryRole", "id": HELPDESK_ROLE}, DEVICE),
        ({"type": "administrativeUnit", "id": AU}, SERVICE_PRINCIPAL),
        ({"type": "directoryRole", "roleTemplateId": HELPDESK_TEMPLATE}, GROUP),
    ],
    ids=["device in a role", "service principal in a unit", "group not role-assignable in a role"],
)
async def test_graph_refusing_an_untyped_member_the_target_cannot_hold_is_unsupported_member(
    services: Services, graph: GraphDouble, target: dict[str, str], member: str
) -> None:
    """The contract refuses the member types it knows a target cannot hold; an untyped member reaches Graph, which
    says no: the same reason, `UnsupportedMember`, with Graph's words."""
    graph.add_service_principal(SERVICE_PRINCIPAL)
    graph.add_group(GROUP)
    untyped = parse_grant(body(requestId="dev-1", target=target, member={"id": member}, source={"system": "other"}))
    with pytest.raises(PermanentError) as caught:
        await execute(services, untyped)
    assert caught.value.reason is Reason.UNSUPPORTED_MEMBER
    assert caught.value.graph is not None
    assert caught.value.graph.status == 400
    assert graph.members_of(target.get("id") or HELPDESK_ROLE) == set()


async def test_no_token_is_transient_token_unavailable(
    graph: GraphDouble, token_endpoint: TokenEndpoint, ledger_in_azurite: LedgerTable
) -> None:
    token_endpoint.fail_next(50, status=500)
    services = bootstrap(
        ledger_in_azurite.settings(settings_for(graph)),
        sender=LocalSender(LocalQueue()),
        ledger_credential=ledger_in_azurite.credential(),
    )
    try:
        with pytest.raises(TransientError) as caught:
            await execute(services, command())
    finally:
        await services.aclose()
    assert caught.value.reason is Reason.TOKEN_UNAVAILABLE
    assert graph.requests == []


async def test_100_concurrent_grants_ask_for_one_token_over_reused_connections(
    services: Services, graph: GraphDouble, token_endpoint: TokenEndpoint
) -> None:
    graph.load({"users": [f"{n:08x}-0000-4000-8000-000000000000" for n in range(100)]})
    results = await asyncio.gather(
        *(execute(services, command(member=f"{n:08x}-0000-4000-8000-000000000000")) for n in range(100))
    )
    assert {r.outcome for r in results} == {Status.GRANTED}
    assert len(graph.members_of(AU)) == 100
    assert token_endpoint.request_count == 1
    assert graph.connections_opened <= 64  # the client's pool size, not one per request


def test_path_segments_are_quoted() -> None:
    assert (
        path("directoryRoles", "roleTemplateId=abc", "members", "$ref")
        == "/directoryRoles/roleTemplateId=abc/members/$ref"
    )
    assert path("a", "../b", "c?d#e f") == "/a/..%2Fb/c%3Fd%23e%20f"


def test_user_agent_names_the_project() -> None:
    assert USER_AGENT.startswith("entra-grants/")


async def test_a_remove_404_naming_the_target_is_checked_with_a_get(services: Services, graph: GraphDouble) -> None:
    """Graph has been seen to name the container when the member is not in it: the target's GET decides."""
    graph.inject(Fault.status(404, method="DELETE"))
    result = await execute(services, command(action="remove"))
    assert result.outcome is Status.NOT_MEMBER
    assert [(r.method, r.status) for r in graph.requests] == [("DELETE", 404), ("GET", 200)]
