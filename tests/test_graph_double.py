"""The Graph double over real HTTP, with tokens from the real azure-identity credential and the local endpoint."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.core.pipeline.transport import AsyncioRequestsTransport
from azure.identity.aio import ManagedIdentityCredential

from grants_local.graph_double import Fault, GraphDouble, LoggedRequest, RoleSettings
from grants_local.queue import ManualClock
from grants_local.token_endpoint import TokenEndpoint

#: One TLS context for every client: building one per httpx client costs ~40 ms (unused over http://).
TLS = ssl.create_default_context()
AU = "a0000000-0000-4000-8000-000000000001"
USER = "b0000000-0000-4000-8000-000000000001"
USER_2 = "b0000000-0000-4000-8000-000000000002"
GROUP = "c0000000-0000-4000-8000-000000000001"
ROLE_GROUP = "c0000000-0000-4000-8000-000000000002"
SP = "d0000000-0000-4000-8000-000000000001"
DEVICE = "e0000000-0000-4000-8000-000000000001"
TEMPLATE = "f0000000-0000-4000-8000-000000000001"
ROLE = "f1000000-0000-4000-8000-000000000001"
IDLE_TEMPLATE = "f0000000-0000-4000-8000-000000000002"
IDLE_ROLE = "f1000000-0000-4000-8000-000000000002"
MISSING = "99999999-9999-4999-8999-999999999999"
OTHER_IDENTITY_VARIABLES = ("IDENTITY_SERVER_THUMBPRINT", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT")

SEED: dict[str, Any] = {
    "users": [USER, {"id": USER_2, "displayName": "Second"}],
    "groups": [{"id": GROUP}, {"id": ROLE_GROUP, "isAssignableToRole": True}],
    "servicePrincipals": [SP],
    "devices": [DEVICE],
    "administrativeUnits": [{"id": AU, "displayName": "Sales"}],
    "roleTemplates": [
        {"id": TEMPLATE, "displayName": "Helpdesk Administrator", "activated": True, "roleId": ROLE},
        {"id": IDLE_TEMPLATE, "displayName": "Printer Administrator", "roleId": IDLE_ROLE},
    ],
}


@pytest.fixture
def clock() -> ManualClock:
    """Time that moves only when told to."""
    return ManualClock(start=1000.0)


@pytest.fixture
def token_endpoint(clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> Iterator[TokenEndpoint]:
    with TokenEndpoint(clock=clock) as endpoint:
        for name in OTHER_IDENTITY_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        for name, value in endpoint.env().items():
            monkeypatch.setenv(name, value)
        yield endpoint


@pytest.fixture
def graph_double(token_endpoint: TokenEndpoint, clock: ManualClock) -> Iterator[GraphDouble]:
    with GraphDouble(token_endpoint, clock=clock) as graph:
        graph.load(SEED)
        yield graph


@pytest.fixture
async def token(graph_double: GraphDouble) -> str:
    """A token from the real credential for the double's scope."""
    async with ManagedIdentityCredential(transport=AsyncioRequestsTransport()) as credential:
        return (await credential.get_token(graph_double.scope)).token


@pytest.fixture
async def client(graph_double: GraphDouble, token: str) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=graph_double.base_url, headers=headers, timeout=5.0, verify=TLS) as client:
        yield client


def ref(graph: GraphDouble, object_id: str) -> dict[str, str]:
    return {"@odata.id": f"{graph.base_url}/directoryObjects/{object_id}"}


def assert_error(response: httpx.Response, status: int, code: str, message: str | None = None) -> None:
    """The answer is Graph's error shape with this status and code (and message, if given)."""
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code
    if message is not None:
        assert error["message"] == message
    inner = error["innerError"]
    assert inner["request-id"] == response.headers["request-id"]
    assert inner["client-request-id"] == response.headers["client-request-id"]
    datetime.fromisoformat(inner["date"])


def not_found(object_id: str) -> str:
    return f"Resource '{object_id}' does not exist or one of its queried reference-property objects are not present."


ALREADY_EXIST = "One or more added object references already exist for the following modified properties: 'members'."
CONFLICT = "A conflicting object with one or more of the specified property values is present in the directory."
UNSUPPORTED_MEMBER = "Unsupported referenced-object resource identifier for link property 'members'."


# --- administrative units ---------------------------------------------------------------------------


async def test_adding_an_au_member_answers_204_without_a_body(
    graph_double: GraphDouble, client: httpx.AsyncClient
) -> None:
    response = await client.post(f"/directory/administrativeUnits/{AU}/members/$ref", json=ref(graph_double, USER))

    assert response.status_code == 204
    assert response.content == b""
    assert graph_double.members_of(AU) == {USER}
    assert graph_double.write_count == 1


async def test_adding_an_existing_au_member_is_400_already_exist(
    graph_double: GraphDouble, client: httpx.AsyncClient
) -> None:
    await client.post(f"/directory/administrativeUnits/{AU}/members/$ref", json=ref(graph_double, USER))

    response = await client.post(
        f"/directory/administrativeUnits/{AU}/members/$ref",
        json=ref(graph_double, USER),
        headers={"client-request-id": "my-id"},
    )

    assert_error(response, 400, "Request_BadRequest", ALREADY_EXIST)
    assert response.headers["client-request-id"] == "my-id"
    assert graph_double.members_of(AU) == {USER}


@pytest.mark.parametrize(("unit", "member", "named"), [(MISSING, USER, MISSING), (AU, MISSING, MISSING)])
async def test_adding_to_or_from_an_unknown_object_is_404_naming_it(
    graph_double: GraphDouble, client: httpx.AsyncClient, unit: str, member: str, named: str
) -> None:
    response = await client.post(f"/directory/administrativeUnits/{unit}/members/$ref", json=ref(graph_double, member))

    assert_error(response, 404, "Request_ResourceNotFound", not_found(named))


async def test_uppercase_ids_reach_the_same_unit(graph_double: GraphDouble, client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"/directory/administrativeUnits/{AU.upper()}/members/$ref", json=ref(graph_double, USER.upper())
    )

    assert response.status_code == 204
    assert graph_double.members_of(AU) == {USER}


async def test_there_are_no_administrative_units_at_the_root_in_v1(
    graph_double: GraphDouble, client: httpx.AsyncClient
) -> None:
    """v1.0 has administrativeUnits under /directory only (its description has no such entity set at the root)."""
    response = await client.post(f"/administrativeUnits/{AU}/members/$ref", json=ref(graph_double, USER))

    assert_error(response, 400, "BadRequest", "Resource not found for the segment 'administrativeUnits'.")
    assert graph_double.members_of(AU) == set()


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"{not json", 400, "BadRequest"),
        (b"{}", 400, "Request_BadRequest"),
        (b'{"@odata.id": "https://example.com/nothing"}', 400, "Request_BadRequest"),
        (b'{"@odata.id": "https://graph/v1.0/directoryObjects/not-a-guid"}', 400, "Request_BadRequest"),
    ],
    ids=["not JSON", "no @odata.id", "no object in @odata.id", "not a GUID"],
)
async def test_malformed_ref_bodies_are_400(
    graph_double: GraphDouble, client: httpx.AsyncClient, content: bytes, status: int, code: str
) -> None:
    response = await client.post(
        f"/directory/administrativeUnits/{AU}/members/$ref",
        content=content,
        headers={"Content-Type": "application/json"},
    )

    assert_error(response, status, code)
    assert graph_double.members_of(AU) == set()


async def test_removing_an_au_member_answers_204_then_404(graph_double: GraphDouble, client: httpx.AsyncClient) -> None:
    await client.post(f"/directory/administrativeUnits/{AU}/members/$ref", json=ref(graph_double, USER))

    removed = await client.delete(f"/directory/administrativeUnits/{AU}/members/{USER}/$ref")
    again = await client.delete(f"/directory/administrativeUnits/{AU}/members/{USER}/$ref")

    assert removed.status_code == 204
    assert_error(again, 404, "Request_ResourceNotFound", not_found(USER))
    assert graph_double.members_of(AU) == set()


async def test_reading_an_au_and_its_members(graph_double: GraphDouble, client: httpx.AsyncClient) -> None:
    await client.post(f"/directory/administrativeUnits/{AU}/members/$ref", json=ref(graph_double, DEVICE))

    unit = await client.get(f"/directory/administrativeUnits/{AU}")
    member = await client.get(f"/directory/administrativeUnits/{AU}/members/{DEVICE}")
    non_member = await client.get(f"/directory/administrativeUnits/{AU}/members/{USER}")
    listed = await client.get(f"/directory/administrativeUnits/{AU}/members")
    missing = await client.get(f"/directory/administrativeUnits/{MISSING}")

    assert unit.json()["id"] == AU
    assert unit.json()["displayName"] == "Sales"
    assert member.json()["@odata.type"] == "#microsoft.graph.device"
    assert_error(non_member, 404, "Request_ResourceNotFound", not_found(USER))
    assert [item["id"] for item in listed.json()["value"]] == [DEVICE]
    assert_error(missing, 404, "Request_ResourceNotFound", not_found(MISSING))


@pytest.mark.parametrize(
    ("member", "status"), [(USER, 204), (GROUP, 204), (DEVICE, 204), (SP, 400)], ids=["user", "group", "device", "sp"]
)
async def test_a_unit_takes_users_groups_and_devices_only(
    graph_double: GraphDouble, client: httpx.AsyncClient, member: str, status: int
) -> None:
    """An administrative unit holds users, groups and devices (Graph's administrativeUnit resource page); Graph
    refuses any other principal, a service principal among them."""
    response = await client.post(f"/directory/administrativeUnits/{AU}/members/$ref", json=ref(graph_double, member))

    assert response.status_code == status
    if status == 400:
        assert_error(response, 400, "Request_BadRequest", UNSUPPORTED_MEMBER)
    assert graph_double.members_of(AU) == ({member} if status == 204 else set())


RESTRICTED = "a0000000-0000-4000-8000-0000000000e1"
DYNAMIC = "a0000000-0000-4000-8000-0000000000d1"


async def test_a_restricted_management_unit_refuses_the_apps_writes_until_it_holds_a_role_at_its_scope(
    graph_double: GraphDouble, client: httpx.AsyncClient
) -> None:
    """Application permissions do not apply inside a restricted-management unit: Graph's 403 is the one for a missing
    permission; a role assigned to the app at the unit's scope lets the writes through."""
    graph_double.add_administrative_unit(RESTRICTED, restricted=True, members=[USER_2])

    added = await client.post(f"/directory/administrativeUnits/{RESTRICTED}/members/$ref", json=ref(graph_double, USER))
    removed = await client.delete(f"/directory/administrativeUnits/{RESTRICTED}/members/{USER_2}/$ref")
    unit = await client.get(f"/directory/administrativeUnits/{RESTRICTED}?$select=isMemberManagementRestricted")
    graph_double.scope_app_to_unit(RESTRICTED)
    scoped = await client.post(
        f"/directory/administrativeUnits/{RESTRICTED}/members/$ref", json=ref(graph_double, USER)
    )

    assert_error(added, 403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
    assert_error(removed, 403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
    assert unit.json() == {"@odata.type": "#microsoft.graph.administrativeUnit", "isMemberManagementRestricted": True}
    assert scoped.status_code == 204
    assert graph_double.members_of(RESTRICTED) == {USER, USER_2}


async def test_a_dynamic_unit_refuses_every_manual_add_and_remove(
    graph_double: GraphDouble, client: httpx.AsyncClient
) -> None:
    graph_double.add_administrative_unit(DYNAMIC, membership_rule='user.department -eq "Sales"', members=[USER_2])

    added = await client.post(f"/directory/administrativeUnits/{DYNAMIC}/members/$ref", json=ref(graph_double, USER))
    removed = await client.delete(f"/directory/administrativeUnits/{DYNAMIC}/members/{USER_2}/$ref")
    unit = await client.get(f"/directory/administrativeUnits/{DYNAMIC}")
    listed = await client.get(f"/directory/administrativeUnits/{DYNAMIC}/members?$select=id")

    assert_error(added, 400, "Request_BadRequest")
    assert_error(removed, 400, "Request_BadRequest")
    assert unit.json()["membershipType"] == "Dynamic"
    assert unit.json()["membershipRule"] == 'user.department -eq "Sales"'
    assert unit.json()["isMemberManagementRestricted"] is False
    assert [item["id"] for item in listed.json()["value"]] == [USER_2]
    assert graph_double.members_of(DYNAMIC) == {USER_2}


# --- directory roles --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "role",
    [f"/{ROLE}", f"/roleTemplateId={TEMPLATE}", f"(roleTemplateId='{TEMPLATE}')"],
    ids=["by id", "by template (the documented add)", "by the template alternate key"],
)
async def test_adding_a_role_member_then_again(graph_double: GraphDouble, client: httpx.AsyncClient, role: str) -> None:
    added = await client.post(f"/directoryRoles{role}/members/$ref", json=ref(graph_double, SP))
    again = await client.post(f"/directoryRoles{role}/members/$ref", json=ref(graph_double, SP))

    assert added.status_code == 204
    assert_error(again, 400, "Request_BadRequest", ALREADY_EXIST)
    assert graph_double.members_of(ROLE) == graph_double.members_of(TEMPLATE) == {SP}


async def test_role_by_template_that_is_not_activated_is_404_naming_the_template(
    graph_double: GraphDouble, client: httpx.AsyncClient
) -> None:
    added = await client.post(
        f"/directoryRoles/roleTemplateId={IDLE_TEMPLATE}/members/$ref", json=ref(graph_double, USER)
    )
    read = await client.get(f"/directoryRoles(roleTemplateId='{IDLE_TEMPLATE}')")

    assert_error(added, 404, "Request_ResourceNotFound", not_found(IDLE_TEMPLATE))
    assert_error(read, 404, "Request_ResourceNotFound", not_found(IDLE_TEMPLATE))


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", f"/directoryRoles/roleTemplateId={TEMPLATE}"),
        ("GET", f"/directoryRoles/roleTemplateId={TEMPLATE}/members"),
        ("DELETE", f"/directoryRoles/roleTemplateId={TEMPLATE}/members/{USER}/$ref"),
    ],
    ids=["read", "list", "remove"],
)
async def test_the_template_as_a_key_segment_is_refused_but_for_the_documented_add(
    graph_double: GraphDouble, client: httpx.AsyncClient, method: str, url: str
) -> None:
    """Graph documents ``roleTemplateId={t}`` as a key segment only for ``POST .../members/$ref``; the double answers
    the rest as Graph answers a key that is not an object id."""
    graph_double.add_member(TEMPLATE, USER)

    response = await client.request(method, url)

    assert_error(response, 400, "Request_BadRequest", f"Invalid object identifier 'roleTemplateId={TEMPLATE}'.")
    assert graph_double.members_of(ROLE) == {USER}


async def test_one_member_of_a_role_cannot_be_read(graph_double: GraphDouble, client: httpx.AsyncClient) -> None:
    """Graph documents no read of one role member (``GET /directoryRoles/{id}/members/{id}``): only the listing."""
    graph_double.add_member(TEMPLATE, USER)

    response = await client.get(f"/directoryRoles/{ROLE}/members/{USER}")

    assert_error(response, 400, "BadRequest", f"Resource not found for the segment '{USER}'.")


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (DEVICE, UNSUPPORTED_MEMBER),
        (GROUP, "Groups without IsAssignableToRole property set cannot be assigned to roles."),
    ],
    ids=["device", "group not assignable to roles"],
)
async def test_principals_that_cannot_hold_a_role_are_400(
    graph_double: GraphDouble, client: httpx.AsyncClient, member: str, message: str
) -> None:
    response = await client.post(f"/directoryRoles/{ROLE}/members/$ref", json=ref(graph_double, member))

    assert_error(response, 400, "Request_BadRequest", message)
    assert graph_double.members_of(ROLE) == set()


async def test_role_assignable_group_can_hold_a_role(graph_double: GraphDouble, client: httpx.AsyncClient) -> None:
    response = await client.post(f"/directoryRoles/{ROLE}/members/$ref", json=ref(graph_double, ROLE_GROUP))

    assert response.status_code == 204


@pytest.mark.parametrize("role", [f"/{ROLE}", f"(roleTemplateId='{TEMPLATE}')"], ids=["by id", "by template"])
async def test_removing_a_role_member_then_again(
    graph_double: GraphDouble, client: httpx.AsyncClient, role: str
) -> None:
    await client.post(f"/directoryRoles/{ROLE}/members/$ref", json=ref(graph_double, USER))

    removed = await client.delete(f"/directoryRoles{role}/members/{USER}/$ref")
    again = await client.delete(f"/directoryRoles{role}/members/{USER}/$ref")

    assert removed.status_code == 204
    assert_error(again, 404, "Request_ResourceNotFound", not_found(USER))


async def test_reading_a_role_and_its_members(graph_double: GraphDouble, client: httpx.AsyncClient) -> None:
    await client.post(f"/directoryRoles/{ROLE}/members/$ref", json=ref(graph_double, USER))

    by_id = await client.get(f"/directoryRoles/{ROLE}")
    by_template = await client.get(f"/directoryRoles(roleTemplateId='{TEMPLATE}')")
    listed = await client.get(f"/directoryRoles/{ROLE}/members?$select=id")
    missing = await client.get(f"/directoryRoles/{MISSING}")

    expected = {"id": ROLE, "roleTemplateId": TEMPLATE, "displayName": "Helpdesk Administrator"}
    assert by_id.json().items() >= expected.items()
    assert by_template.json() == by_id.json()
    assert listed.json()["value"] == [{"@odata.type": "#microsoft.graph.user", "id": USER}]
    assert_error(missing, 404, "Request_ResourceNotFound", not_found(MISSING))


async def test_activating_a_template_creates_its_role_once(
    graph_double: GraphDouble, client: httpx.AsyncClient
) -> None:
    created = await client.post("/directoryRoles", json={"roleTemplateId": IDLE_TEMPLATE})
    again = await client.post("/directoryRoles", json={"roleTemplateId": IDLE_TEMPLATE})
    added = await client.post(
        f"/directoryRoles/roleTemplateId={IDLE_TEMPLATE}/members/$ref", json=ref(graph_double, USER)
    )

    assert created.status_code == 201
    assert created.json()["id"] == IDLE_ROLE == graph_double.role_id_of(IDLE_TEMPLATE)
    assert created.json()["roleTemplateId"] == IDLE_TEMPLATE
    assert_error(again, 400, "Request_BadRequest", CONFLICT)
    assert added.status_code == 204
    assert graph_double.members_of(IDLE_ROLE) == {USER}


async def test_activating_an_unknown_template_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/directoryRoles", json={"roleTemplateId": MISSING})

    assert_error(response, 404, "Request_ResourceNotFound", not_found(MISSING))


# --- directory objects, scoped role members, routing ------------------------------------------------


@pytest.mark.parametrize(
    ("object_id", "odata_type"),
    [(USER, "user"), (ROLE_GROUP, "group"), (SP, "servicePrincipal"), (DEVICE, "device"), (AU, "administrativeUnit")],
)
async def test_directory_objects_have_their_type(client: httpx.AsyncClient, object_id: str, odata_type: str) -> None:
    response = await client.get(f"/directoryObjects/{object_id}")

    assert response.json()["@odata.type"] == f"#microsoft.graph.{odata_type}"
    assert response.json()["id"] == object_id


async def test_unknown_directory_object_is_404(client: httpx.AsyncClient) -> None:
    assert_error(await client.get(f"/directoryObjects/{MISSING}"), 404, "Request_ResourceNotFound", not_found(MISSING))


async def test_scoped_role_membership_lifecycle(graph_double: GraphDouble, client: httpx.AsyncClient) -> None:
    body = {"roleId": ROLE, "roleMemberInfo": {"id": USER}}
    created = await client.post(f"/directory/administrativeUnits/{AU}/scopedRoleMembers", json=body)
    duplicate = await client.post(f"/directory/administrativeUnits/{AU}/scopedRoleMembers", json=body)
    listed = await client.get(f"/directory/administrativeUnits/{AU}/scopedRoleMembers")
    membership = created.json()["id"]
    removed = await client.delete(f"/directory/administrativeUnits/{AU}/scopedRoleMembers/{membership}")
    again = await client.delete(f"/directory/administrativeUnits/{AU}/scopedRoleMembers/{membership}")

    assert created.status_code == 201
    assert created.json()["roleId"] == ROLE
    assert created.json()["administrativeUnitId"] == AU
    assert created.json()["roleMemberInfo"]["id"] == USER
    assert_error(duplicate, 400, "Request_BadRequest", CONFLICT)
    assert listed.json()["value"] == [created.json()]
    assert removed.status_code == 204
    assert_error(again, 404, "Request_ResourceNotFound", not_found(membership))


@pytest.mark.parametrize(
    ("body", "status", "named"),
    [
        ({"roleId": IDLE_ROLE, "roleMemberInfo": {"id": USER}}, 404, IDLE_ROLE),
        ({"roleId": ROLE, "roleMemberInfo": {"id": MISSING}}, 404, MISSING),
        ({"roleMemberInfo": {"id": USER}}, 400, None),
    ],
    ids=["role not activated", "unknown member", "no roleId"],
)
async def test_scoped_role_membership_errors(
    client: httpx.AsyncClient, body: dict[str, Any], status: int, named: str | None
) -> None:
    response = await client.post(f"/directory/administrativeUnits/{AU}/scopedRoleMembers", json=body)

    if named is None:
        assert_error(response, status, "Request_BadRequest")
    else:
        assert_error(response, status, "Request_ResourceNotFound", not_found(named))


async def test_unknown_segment_is_400_and_wrong_method_405(client: httpx.AsyncClient) -> None:
    unknown = await client.get(f"/directory/administrativeUnits/{AU}/owners")
    wrong_method = await client.delete(f"/directory/administrativeUnits/{AU}/members/$ref")

    assert_error(unknown, 400, "BadRequest", "Resource not found for the segment 'owners'.")
    assert_error(wrong_method, 405, "Request_BadRequest")


# --- replication delay ------------------------------------------------------------------------------


async def test_member_appears_after_n_lookups(graph_double: GraphDouble, client: httpx.AsyncClient) -> None:
    """Given a user replicated after 2 lookups, a read and a write see it missing, the next write succeeds."""
    late = graph_double.add_user(str(uuid.uuid4()), visible_after_lookups=2)

    read = await client.get(f"/directoryObjects/{late}")
    first = await client.post(f"/directory/administrativeUnits/{AU}/members/$ref", json=ref(graph_double, late))
    second = await client.post(f"/directory/administrativeUnits/{AU}/members/$ref", json=ref(graph_double, late))

    assert_error(read, 404, "Request_ResourceNotFound", not_found(late))
    assert_error(first, 404, "Request_ResourceNotFound", not_found(late))
    assert second.status_code == 204


async def test_member_appears_after_seconds_on_the_clock(
    graph_double: GraphDouble, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    late = graph_double.add_user(str(uuid.uuid4()), visible_after_seconds=30)

    before = await client.post(f"/directoryRoles/{ROLE}/members/$ref", json=ref(graph_double, late))
    clock.advance(30)
    after = await client.post(f"/directoryRoles/{ROLE}/members/$ref", json=ref(graph_double, late))

    assert_error(before, 404, "Request_ResourceNotFound", not_found(late))
    assert after.status_code == 204


# --- faults -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (429, "TooManyRequests"),
        (500, "Service_InternalServerError"),
        (503, "serviceNotAvailable"),
        (504, "UnknownError"),
        (401, "InvalidAuthenticationToken"),
    ],
)
async def test_injected_status_answers_once_with_graphs_error(
    graph_double: GraphDouble, client: httpx.AsyncClient, status: int, code: str
) -> None:
    graph_double.inject(Fault.status(status, retry_after=2))

    faulted = await client.post(f"/directory/administrativeUnits/{AU}/members/$ref", json=ref(graph_double, USER))
    normal = await client.post(f"/directory/administrativeUnits/{AU}/members/$ref", json=ref(graph_double, USER))

    assert_error(faulted, status, code)
    assert faulted.headers["retry-after"] == "2"
    assert normal.status_code == 204
    assert graph_double.write_count == 1


async def test_status_fault_without_retry_after_sends_no_header(
    graph_double: GraphDouble, client: httpx.AsyncClient
) -> None:
    graph_double.inject(Fault.status(503))

    response = await client.get(f"/directoryObjects/{USER}")

    assert response.status_code == 503
    assert "retry-after" not in response.headers


async def test_dropped_request_closes_the_connection_and_the_next_one_is_answered(
    graph_double: GraphDouble, client: httpx.AsyncClient
) -> None:
    graph_double.inject(Fault.drop())

    with pytest.raises(httpx.RemoteProtocolError):
        await client.post(f"/directory/administrativeUnits/{AU}/members/$ref", json=ref(graph_double, USER))
    response = await client.post(f"/directory/administrativeUnits/{AU}/members/$ref", json=ref(graph_double, USER))

    assert response.status_code == 204
    assert [entry.status for entry in graph_double.requests] == [0, 204]
    assert graph_double.connections_opened == 2


async def test_delayed_request_is_answered_late(graph_double: GraphDouble, client: httpx.AsyncClient) -> None:
    graph_double.inject(Fault.delay(0.1))

    started = time.monotonic()
    response = await client.get(f"/directoryObjects/{USER}")

    assert time.monotonic() - started >= 0.1
    assert response.status_code == 200


async def test_faults_go_to_the_first_matching_request_in_order(
    graph_double: GraphDouble, client: httpx.AsyncClient
) -> None:
    graph_double.inject(
        Fault.status(503, method="POST", path=r"/directoryRoles/"),
        Fault.status(500, method="POST"),
        Fault.status(504, method="POST"),
    )

    read = await client.get(f"/directoryRoles/{ROLE}")
    au_write = await client.post(f"/directory/administrativeUnits/{AU}/members/$ref", json=ref(graph_double, USER))
    role_write = await client.post(f"/directoryRoles/{ROLE}/members/$ref", json=ref(graph_double, USER))

    assert (read.status_code, au_write.status_code, role_write.status_code) == (200, 500, 503)
    assert graph_double.pending_faults == 1


async def test_a_fault_with_a_body_pattern_waits_for_a_request_whose_body_matches(
    graph_double: GraphDouble, client: httpx.AsyncClient
) -> None:
    graph_double.inject(Fault.status(503, method="POST", body=USER_2))

    first = await client.post(f"/directory/administrativeUnits/{AU}/members/$ref", json=ref(graph_double, USER))
    second = await client.post(f"/directory/administrativeUnits/{AU}/members/$ref", json=ref(graph_double, USER_2))

    assert (first.status_code, second.status_code) == (204, 503)
    assert graph_double.pending_faults == 0


async def test_a_deleted_unit_answers_404_naming_it(graph_double: GraphDouble, client: httpx.AsyncClient) -> None:
    graph_double.delete_administrative_unit(AU)

    response = await client.post(f"/directory/administrativeUnits/{AU}/members/$ref", json=ref(graph_double, USER))

    assert response.status_code == 404
    assert AU in response.json()["error"]["message"]


async def test_latency_is_added_to_every_answer(graph_double: GraphDouble, client: httpx.AsyncClient) -> None:
    graph_double.latency_seconds = 0.05

    started = time.monotonic()
    await client.get(f"/directoryObjects/{USER}")
    await client.get(f"/directoryObjects/{USER}")

    assert time.monotonic() - started >= 0.1


# --- write budget, permissions, tokens --------------------------------------------------------------


async def test_write_budget_throttles_with_retry_after_until_capacity(
    graph_double: GraphDouble, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """Given 2 writes per 10 s, the third is 429 with Retry-After counting down on the clock; reads pass."""
    graph_double.write_budget = (2, 10.0)
    users = [graph_double.add_user(str(uuid.uuid4())) for _ in range(4)]

    async def add(user: str) -> httpx.Response:
        return await client.post(f"/directory/administrativeUnits/{AU}/members/$ref", json=ref(graph_double, user))

    assert [(await add(user)).status_code for user in users[:2]] == [204, 204]
    clock.advance(4)
    throttled = await add(users[2])
    read = await client.get(f"/directoryObjects/{USER}")
    clock.advance(6)
    allowed = await add(users[2])

    assert_error(throttled, 429, "TooManyRequests")
    assert throttled.headers["retry-after"] == "6"
    assert read.status_code == 200
    assert allowed.status_code == 204
    assert graph_double.write_count == 3


async def test_write_budget_answers_graphs_throttle_headers(
    graph_double: GraphDouble, client: httpx.AsyncClient
) -> None:
    """Given 10 writes per 10 s: no usage header up to 0.8 of the limit, then the fraction used; the 429 names
    its scope and reason (learn.microsoft.com/graph/throttling-limits)."""
    graph_double.write_budget = (10, 10.0)
    users = [graph_double.add_user(str(uuid.uuid4())) for _ in range(11)]
    answers = [
        await client.post(f"/directory/administrativeUnits/{AU}/members/$ref", json=ref(graph_double, user))
        for user in users
    ]

    usage = [answer.headers.get("x-ms-throttle-limit-percentage") for answer in answers[:10]]
    assert usage == [None] * 8 + ["0.90", "1.00"]
    throttled = answers[10]
    assert_error(throttled, 429, "TooManyRequests")
    assert throttled.headers["retry-after"] == "10"
    assert throttled.headers["x-ms-throttle-scope"].startswith("Tenant_Application/Write/")
    assert throttled.headers["x-ms-throttle-information"] == "WriteLimitExceeded"
    assert [w.admitted for w in graph_double.write_log] == [True] * 10 + [False]


async def test_low_priority_writes_are_shed_first_while_high_priority_ones_write(
    graph_double: GraphDouble, client: httpx.AsyncClient
) -> None:
    """Given a limit of 100 and a 4% reserve: Low writes stop at 96 once a High write is in the window; High ones
    still get the whole limit."""
    graph_double.write_budget = (100, 10.0)
    users = [graph_double.add_user(str(uuid.uuid4())) for _ in range(102)]

    async def add(user: str, priority: str) -> int:
        headers = {"x-ms-throttle-priority": priority}
        url = f"/directory/administrativeUnits/{AU}/members/$ref"
        return (await client.post(url, json=ref(graph_double, user), headers=headers)).status_code

    assert await add(users[0], "High") == 204
    low = [await add(user, "Low") for user in users[1:97]]
    assert low == [204] * 95 + [429]  # 96 in the window: Low's share is used up
    assert [await add(user, "High") for user in users[97:102]] == [204, 204, 204, 204, 429]
    assert [w.priority for w in graph_double.write_log[:2]] == ["High", "Low"]


async def test_low_priority_writes_alone_get_the_whole_limit(
    graph_double: GraphDouble, client: httpx.AsyncClient
) -> None:
    """Priority does not change the limit: with no higher-priority traffic, Low writes use all of it."""
    graph_double.write_budget = (50, 10.0)
    users = [graph_double.add_user(str(uuid.uuid4())) for _ in range(51)]
    headers = {"x-ms-throttle-priority": "Low"}
    url = f"/directory/administrativeUnits/{AU}/members/$ref"
    statuses = [(await client.post(url, json=ref(graph_double, u), headers=headers)).status_code for u in users]
    assert statuses == [204] * 50 + [429]


async def test_denied_kind_answers_403_for_writes_only(graph_double: GraphDouble, client: httpx.AsyncClient) -> None:
    graph_double.deny("administrativeUnit")

    au_write = await client.post(f"/directory/administrativeUnits/{AU}/members/$ref", json=ref(graph_double, USER))
    au_read = await client.get(f"/directory/administrativeUnits/{AU}")
    role_write = await client.post(f"/directoryRoles/{ROLE}/members/$ref", json=ref(graph_double, USER))
    graph_double.allow("administrativeUnit")
    allowed = await client.post(f"/directory/administrativeUnits/{AU}/members/$ref", json=ref(graph_double, USER))

    assert_error(au_write, 403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
    assert au_read.status_code == 200
    assert role_write.status_code == 204
    assert allowed.status_code == 204


async def test_missing_token_is_401_empty(graph_double: GraphDouble) -> None:
    async with httpx.AsyncClient(base_url=graph_double.base_url, verify=TLS) as anonymous:
        response = await anonymous.get(f"/directoryObjects/{USER}")

    assert_error(response, 401, "InvalidAuthenticationToken", "Access token is empty.")


async def test_expired_token_is_401_until_a_fresh_one_is_fetched(
    graph_double: GraphDouble, token_endpoint: TokenEndpoint, client: httpx.AsyncClient
) -> None:
    token_endpoint.expire_all()

    refused = await client.get(f"/directoryObjects/{USER}")
    async with ManagedIdentityCredential(transport=AsyncioRequestsTransport()) as credential:
        fresh = (await credential.get_token(graph_double.scope)).token
    accepted = await client.get(f"/directoryObjects/{USER}", headers={"Authorization": f"Bearer {fresh}"})

    assert_error(refused, 401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.")
    assert accepted.status_code == 200


async def test_token_expires_on_the_clock(client: httpx.AsyncClient, clock: ManualClock) -> None:
    clock.advance(3600)

    assert_error(await client.get(f"/directoryObjects/{USER}"), 401, "InvalidAuthenticationToken")


async def test_token_for_another_resource_is_401(graph_double: GraphDouble, token_endpoint: TokenEndpoint) -> None:
    async with httpx.AsyncClient(verify=TLS) as http:
        answer = await http.get(
            token_endpoint.url,
            params={"resource": "https://graph.microsoft.com", "api-version": "2019-08-01"},
            headers={"X-IDENTITY-HEADER": token_endpoint.header_secret},
        )
        other = answer.json()["access_token"]
        response = await http.get(
            f"{graph_double.base_url}/directoryObjects/{USER}", headers={"Authorization": f"Bearer {other}"}
        )

    assert_error(response, 401, "InvalidAuthenticationToken")


# --- observability, connections, seeding ------------------------------------------------------------


async def test_request_log_records_what_was_asked_and_answered_without_the_token(
    graph_double: GraphDouble, client: httpx.AsyncClient, token: str
) -> None:
    body = ref(graph_double, USER)
    await client.post(
        f"/directory/administrativeUnits/{AU}/members/$ref", json=body, headers={"client-request-id": "c1"}
    )
    await client.get(f"/directoryObjects/{MISSING}", headers={"client-request-id": "c2"})

    assert graph_double.requests == [
        LoggedRequest("POST", f"/directory/administrativeUnits/{AU}/members/$ref", 204, "c1", body),
        LoggedRequest("GET", f"/directoryObjects/{MISSING}", 404, "c2", None),
    ]
    assert token not in repr(graph_double.requests)
    graph_double.reset_log()
    assert graph_double.requests == []


async def test_many_requests_reuse_one_keep_alive_connection(
    graph_double: GraphDouble, client: httpx.AsyncClient
) -> None:
    for index in range(100):
        method = "POST" if index % 2 == 0 else "DELETE"
        url = f"/directory/administrativeUnits/{AU}/members/" + ("$ref" if method == "POST" else f"{USER}/$ref")
        response = await client.request(method, url, json=ref(graph_double, USER) if method == "POST" else None)
        assert response.status_code == 204

    assert graph_double.connections_opened == 1
    assert len(graph_double.requests) == 100


async def test_32_concurrent_writes_are_all_applied(graph_double: GraphDouble, client: httpx.AsyncClient) -> None:
    users = [graph_double.add_user(str(uuid.uuid4())) for _ in range(32)]

    responses = await asyncio.gather(
        *(
            client.post(f"/directory/administrativeUnits/{AU}/members/$ref", json=ref(graph_double, user))
            for user in users
        )
    )

    assert {response.status_code for response in responses} == {204}
    assert graph_double.members_of(AU) == set(users)
    assert 1 <= graph_double.connections_opened <= 32


# --- reading membership: pages, the read budget -----------------------------------------------------------


def users(graph: GraphDouble, count: int) -> list[str]:
    """`count` new users, by id in ascending order."""
    return sorted(graph.add_user(f"{n:08x}-1000-4000-8000-000000000000") for n in range(count))


async def all_pages(client: httpx.AsyncClient, graph: GraphDouble, url: str) -> list[list[dict[str, Any]]]:
    """Every page of a collection, following each ``@odata.nextLink`` (an absolute URL on the double's root)."""
    pages: list[list[dict[str, Any]]] = []
    next_url: str | None = url
    while next_url is not None:
        response = await client.get(next_url)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["value"])
        next_url = body.get("@odata.nextLink")
        assert next_url is None or next_url.startswith(graph.base_url + "/")
    return pages


async def test_unit_members_are_listed_in_pages_of_top_until_no_next_link(
    graph_double: GraphDouble, client: httpx.AsyncClient
) -> None:
    members = users(graph_double, 25)
    for member in members:
        graph_double.add_member(AU, member)

    pages = await all_pages(client, graph_double, f"/directory/administrativeUnits/{AU}/members?$top=10&$select=id")

    assert [len(page) for page in pages] == [10, 10, 5]
    assert [item["id"] for page in pages for item in page] == members
    assert pages[0][0] == {"@odata.type": "#microsoft.graph.user", "id": members[0]}
    assert {tuple(sorted(r.query)) for r in graph_double.requests} == {
        ("$select", "$top"),
        ("$select", "$skiptoken", "$top"),
    }, "each next link keeps the query and adds a skip token"


async def test_a_member_list_without_top_has_pages_of_100(graph_double: GraphDouble, client: httpx.AsyncClient) -> None:
    for member in users(graph_double, 150):
        graph_double.add_member(AU, member)

    pages = await all_pages(client, graph_double, f"/directory/administrativeUnits/{AU}/members")

    assert [len(page) for page in pages] == [100, 50]
    assert pages[0][0]["displayName"].startswith("user ")


@pytest.mark.parametrize("top", ["0", "1000", "-1", "ten", "1.5"])
async def test_a_top_outside_1_to_999_is_graphs_400(client: httpx.AsyncClient, top: str) -> None:
    response = await client.get(f"/directory/administrativeUnits/{AU}/members?$top={top}")

    message = f"Invalid page size specified: '{top}'. Must be between 1 and 999 inclusive."
    assert_error(response, 400, "Request_UnsupportedQuery", message)


async def test_members_added_or_removed_while_paging_are_listed_at_most_once(
    graph_double: GraphDouble, client: httpx.AsyncClient
) -> None:
    members = users(graph_double, 6)
    for member in members[:5]:
        graph_double.add_member(AU, member)

    first = (await client.get(f"/directory/administrativeUnits/{AU}/members?$top=2&$select=id")).json()
    graph_double.remove_member(AU, members[0])  # already listed
    graph_double.remove_member(AU, members[2])  # not listed yet
    graph_double.add_member(AU, members[5])  # after the cursor
    rest = await all_pages(client, graph_double, first["@odata.nextLink"])

    listed = [item["id"] for item in first["value"]] + [item["id"] for page in rest for item in page]
    assert listed == [members[0], members[1], members[3], members[4], members[5]]


async def test_bad_select_or_skip_token_is_400(client: httpx.AsyncClient) -> None:
    select = await client.get(f"/directory/administrativeUnits/{AU}/members?$select=mail")
    token = await client.get(f"/directory/administrativeUnits/{AU}/members?$skiptoken=forged")

    assert_error(select, 400, "Request_BadRequest")
    assert_error(token, 400, "Request_BadRequest")


@pytest.mark.parametrize("role", [f"/{ROLE}", f"(roleTemplateId='{TEMPLATE}')"], ids=["by id", "by template"])
async def test_role_members_are_one_page_and_top_is_refused(
    graph_double: GraphDouble, client: httpx.AsyncClient, role: str
) -> None:
    """Graph does not page directory roles; a client that sends $top finds out here, not in production."""
    members = users(graph_double, 120)
    for member in members:
        graph_double.add_member(TEMPLATE, member)

    listed = await client.get(f"/directoryRoles{role}/members?$select=id")
    paged = await client.get(f"/directoryRoles{role}/members?$top=10")

    assert [item["id"] for item in listed.json()["value"]] == members
    assert "@odata.nextLink" not in listed.json()
    assert_error(paged, 400, "Request_UnsupportedQuery")


async def test_scoped_role_memberships_are_paged_too(graph_double: GraphDouble, client: httpx.AsyncClient) -> None:
    members = users(graph_double, 3)
    for member in members:
        graph_double.assign_scoped_role(AU, TEMPLATE, member)

    pages = await all_pages(client, graph_double, f"/directory/administrativeUnits/{AU}/scopedRoleMembers?$top=2")

    assert [len(page) for page in pages] == [2, 1]
    assert sorted(item["roleMemberInfo"]["id"] for page in pages for item in page) == members
    assert {item["roleId"] for page in pages for item in page} == {ROLE}


async def test_reads_cost_resource_units_and_are_throttled_past_the_read_budget(
    graph_double: GraphDouble, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """Given 3 units per 10 s: each read names its cost, the third its usage; the fourth is 429 with Graph's read
    throttle headers; writes are not charged and pass meanwhile (learn.microsoft.com/graph/throttling-limits)."""
    graph_double.read_budget = (3, 10.0)

    reads = [await client.get(f"/directory/administrativeUnits/{AU}/members?$select=id") for _ in range(3)]
    clock.advance(4)
    throttled = await client.get(f"/directoryObjects/{USER}")
    write = await client.post(f"/directory/administrativeUnits/{AU}/members/$ref", json=ref(graph_double, USER))
    clock.advance(6)
    allowed = await client.get(f"/directoryObjects/{USER}")

    assert [r.headers["x-ms-resource-unit"] for r in reads] == ["1", "1", "1"]
    assert [r.headers.get("x-ms-throttle-limit-percentage") for r in reads] == [None, None, "1.00"]
    assert_error(throttled, 429, "TooManyRequests")
    assert throttled.headers["retry-after"] == "6"
    assert throttled.headers["x-ms-throttle-scope"].startswith("Tenant_Application/Read/")
    assert throttled.headers["x-ms-throttle-information"] == "ResourceUnitLimitExceeded"
    assert write.status_code == 204
    assert allowed.status_code == 200
    assert (graph_double.read_count, graph_double.read_units, graph_double.reads_throttled) == (4, 4, 1)


@pytest.mark.parametrize(
    ("url", "units"),
    [
        (f"/servicePrincipals/{SP}/appRoleAssignments", "2"),
        (f"/servicePrincipals/{SP}/appRoleAssignments?$select=id", "1"),
        (f"/directory/administrativeUnits/{AU}/members?$top=5", "1"),
        (f"/directory/administrativeUnits/{AU}/members?$top=999", "1"),
    ],
)
async def test_a_reads_cost_follows_graphs_table(client: httpx.AsyncClient, url: str, units: str) -> None:
    response = await client.get(url)

    assert response.status_code == 200
    assert response.headers["x-ms-resource-unit"] == units


# --- writes whose outcome the client cannot know -----------------------------------------------------------


async def test_a_write_applied_then_answered_late_lands_though_the_client_timed_out(
    graph_double: GraphDouble, token: str
) -> None:
    fault = Fault.applied_then_delay(2.0, method="POST")
    graph_double.inject(fault)
    headers = {"Authorization": f"Bearer {token}"}

    async with httpx.AsyncClient(base_url=graph_double.base_url, headers=headers, timeout=0.2) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            await impatient.post(f"/directory/administrativeUnits/{AU}/members/$ref", json=ref(graph_double, USER))

    assert await asyncio.to_thread(fault.wait_landed)
    assert graph_double.members_of(AU) == {USER}
    assert [(r.method, r.status) for r in graph_double.requests] == [("POST", 204)]


async def test_a_write_applied_then_dropped_lands_though_the_connection_broke(
    graph_double: GraphDouble, client: httpx.AsyncClient
) -> None:
    graph_double.inject(Fault.applied_then_drop(method="DELETE"))
    graph_double.add_member(AU, USER)

    with pytest.raises(httpx.RemoteProtocolError):
        await client.delete(f"/directory/administrativeUnits/{AU}/members/{USER}/$ref")

    assert graph_double.members_of(AU) == set()
    assert graph_double.write_count == 1


async def test_a_held_write_lands_when_released_after_its_client_gave_up(graph_double: GraphDouble, token: str) -> None:
    fault = Fault.hold(method="POST", path="/members/")
    graph_double.inject(fault)
    headers = {"Authorization": f"Bearer {token}"}
    armed = graph_double.holds(fault)

    async with httpx.AsyncClient(base_url=graph_double.base_url, headers=headers, timeout=0.2) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            await impatient.post(f"/directory/administrativeUnits/{AU}/members/$ref", json=ref(graph_double, USER))
    before = graph_double.members_of(AU)
    held = graph_double.holds(fault)
    fault.release()

    assert (armed, held, before) == (False, True, set())  # held once a request matched it, not before
    assert await asyncio.to_thread(fault.wait_landed)
    assert graph_double.members_of(AU) == {USER}
    assert graph_double.holds(fault) is False


# --- behind the app's back ---------------------------------------------------------------------------------


def test_membership_changed_behind_the_apps_back_is_not_logged_or_counted(graph_double: GraphDouble) -> None:
    graph_double.add_member(AU, USER)
    graph_double.add_member(ROLE, USER)
    graph_double.add_member(TEMPLATE, USER_2)  # the template's activated role
    graph_double.remove_member(ROLE, USER)
    scoped = graph_double.assign_scoped_role(AU, TEMPLATE, USER)

    assert graph_double.members_of(AU) == {USER}
    assert graph_double.members_of(TEMPLATE) == {USER_2}
    assert graph_double.scoped_members_of(AU, TEMPLATE) == {USER}
    assert graph_double.assign_scoped_role(AU, TEMPLATE, USER) == scoped
    graph_double.unassign_scoped_role(AU, TEMPLATE, USER)
    assert graph_double.scoped_members_of(AU, TEMPLATE) == set()
    assert (graph_double.requests, graph_double.write_count) == ([], 0)


@pytest.mark.parametrize(
    ("container", "member"), [(AU, MISSING), (MISSING, USER), (IDLE_TEMPLATE, USER)], ids=["principal", "unit", "idle"]
)
def test_changing_membership_behind_the_apps_back_needs_known_objects(
    graph_double: GraphDouble, container: str, member: str
) -> None:
    with pytest.raises(KeyError):
        graph_double.add_member(container, member)


def test_seed_file_loads_like_the_mapping(token_endpoint: TokenEndpoint, tmp_path: Path) -> None:
    seed = {**SEED, "administrativeUnits": [{"id": AU, "members": [USER, DEVICE]}]}
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(seed))

    with GraphDouble(token_endpoint) as graph:
        graph.load(path)

        assert graph.members_of(AU) == {USER, DEVICE}
        assert graph.role_id_of(TEMPLATE) == ROLE
        assert graph.role_id_of(IDLE_TEMPLATE) is None


def test_seeding_refuses_ids_that_are_not_guids(graph_double: GraphDouble) -> None:
    with pytest.raises(ValueError, match="not a GUID"):
        graph_double.add_user("alice")


async def test_closed_double_refuses_connections(graph_double: GraphDouble, client: httpx.AsyncClient) -> None:
    await client.get(f"/directoryObjects/{USER}")

    graph_double.close()

    with pytest.raises(httpx.TransportError):
        await client.get(f"/directoryObjects/{USER}")


# --- PIM: schedule requests and schedules ---------------------------------------------------------------------

REQUESTS = "/roleManagement/directory/roleEligibilityScheduleRequests"
SCHEDULES = "/roleManagement/directory/roleEligibilitySchedules"


def pim_request(action: str, member: str, scope: str = "/", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "action": action,
        "principalId": member,
        "roleDefinitionId": TEMPLATE,
        "directoryScopeId": scope,
        **fields,
    }
    return body


async def test_an_eligibility_is_made_listed_filtered_paged_refused_twice_and_ended(
    client: httpx.AsyncClient, graph_double: GraphDouble, clock: ManualClock
) -> None:
    """adminAssign answers 201 with the request (the scope it was carried out at); the schedule is listed by its
    filter; assigned again: 400 RoleAssignmentExists; adminRemove 201 Revoked; removed again: 400
    RoleAssignmentDoesNotExist."""
    graph_double.now = clock.utcnow
    start = clock.utcnow().isoformat().replace("+00:00", "Z")
    info = {"startDateTime": start, "expiration": {"type": "noExpiration"}}

    made = await client.post(
        REQUESTS, json=pim_request("adminAssign", USER, f"/administrativeUnits/{AU}", scheduleInfo=info)
    )
    again = await client.post(
        REQUESTS, json=pim_request("adminAssign", USER, f"/administrativeUnits/{AU}", scheduleInfo=info)
    )
    listed = await client.get(
        SCHEDULES,
        params={"$filter": f"roleDefinitionId eq '{TEMPLATE}' and directoryScopeId eq '/administrativeUnits/{AU}'"},
    )
    elsewhere = await client.get(SCHEDULES, params={"$filter": f"directoryScopeId eq '/' and principalId eq '{USER}'"})
    ended = await client.post(REQUESTS, json=pim_request("adminRemove", USER, f"/administrativeUnits/{AU}"))
    twice = await client.post(REQUESTS, json=pim_request("adminRemove", USER, f"/administrativeUnits/{AU}"))

    assert made.status_code == 201
    assert (made.json()["status"], made.json()["directoryScopeId"]) == ("Provisioned", f"/administrativeUnits/{AU}")
    assert_error(again, 400, "RoleAssignmentExists", "The Role assignment already exists.")
    assert [item["principalId"] for item in listed.json()["value"]] == [USER]
    assert elsewhere.json()["value"] == []
    assert (ended.status_code, ended.json()["status"]) == (201, "Revoked")
    assert_error(twice, 400, "RoleAssignmentDoesNotExist", "The Role assignment does not exist.")


async def test_a_schedule_ends_at_its_expiry_on_the_pim_clock(
    client: httpx.AsyncClient, graph_double: GraphDouble, clock: ManualClock
) -> None:
    graph_double.now = clock.utcnow
    end = (clock.utcnow() + timedelta(minutes=5)).isoformat()
    info = {"expiration": {"type": "afterDateTime", "endDateTime": end}}
    assert (await client.post(REQUESTS, json=pim_request("adminAssign", USER, scheduleInfo=info))).status_code == 201
    assert graph_double.schedules_of("eligibility", TEMPLATE, "/") == {USER}

    clock.advance(300)  # (the token outlives it)

    assert graph_double.schedules_of("eligibility", TEMPLATE, "/") == set()
    gone = await client.post(REQUESTS, json=pim_request("adminRemove", USER))
    assert_error(gone, 400, "RoleAssignmentDoesNotExist")


@pytest.mark.parametrize(
    ("settings", "expiration", "refused"),
    [
        (RoleSettings(eligible_permanent=False), {"type": "noExpiration"}, True),
        (RoleSettings(eligible_max=timedelta(days=30)), {"type": "afterDuration", "duration": "P31D"}, True),
        (RoleSettings(eligible_max=timedelta(days=30)), {"type": "afterDuration", "duration": "P30D"}, False),
        (RoleSettings(active_permanent=False), {"type": "noExpiration"}, False),
    ],
    ids=["permanent", "too long", "at the limit", "the other kind's rule"],
)
async def test_role_settings_refuse_permanent_or_too_long_eligibilities_naming_the_expiration_rule(
    client: httpx.AsyncClient,
    graph_double: GraphDouble,
    settings: RoleSettings,
    expiration: dict[str, str],
    refused: bool,
) -> None:
    graph_double.set_role_settings(TEMPLATE, settings)
    answer = await client.post(REQUESTS, json=pim_request("adminAssign", USER, scheduleInfo={"expiration": expiration}))
    if refused:
        assert_error(
            answer,
            400,
            "RoleAssignmentRequestPolicyValidationFailed",
            'The following policy rules failed: ["ExpirationRule"]',
        )
    else:
        assert answer.status_code == 201


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (pim_request("adminAssign", USER, expiration={}), 400, "BadRequest"),  # not a property of the request
        (pim_request("adminAssign", USER, ticketInfo={"ticketId": "1"}), 400, "BadRequest"),
        (pim_request("grant", USER), 400, "Request_BadRequest"),
        (pim_request("adminAssign", USER, roleDefinitionId=MISSING, scheduleInfo={}), 400, "RoleNotFound"),
        (pim_request("adminAssign", USER, f"/administrativeUnits/{MISSING}", scheduleInfo={}), 400, "BadRequest"),
        (pim_request("adminAssign", MISSING, scheduleInfo={}), 404, "Request_ResourceNotFound"),
        (pim_request("adminAssign", GROUP, scheduleInfo={}), 400, "Request_BadRequest"),  # not role-assignable
        (pim_request("adminAssign", SP, scheduleInfo={}), 400, "Request_BadRequest"),  # cannot be eligible
    ],
    ids=["property", "ticket property", "action", "definition", "scope", "principal", "group", "service principal"],
)
async def test_a_schedule_request_graph_would_refuse_is_refused(
    client: httpx.AsyncClient, graph_double: GraphDouble, body: dict[str, Any], status: int, code: str
) -> None:
    assert_error(await client.post(REQUESTS, json=body), status, code)
    assert graph_double.schedules_of("eligibility", TEMPLATE, "/") == set()


async def test_a_unit_pim_does_not_know_yet_gets_the_request_tenant_wide_and_says_so(
    client: httpx.AsyncClient, graph_double: GraphDouble
) -> None:
    graph_double.pim_scope_unknown(AU)
    made = await client.post(
        REQUESTS, json=pim_request("adminAssign", USER, f"/administrativeUnits/{AU}", scheduleInfo={})
    )
    assert (made.status_code, made.json()["directoryScopeId"]) == (201, "/")
    assert graph_double.schedules_of("eligibility", TEMPLATE, "/") == {USER}


async def test_a_denied_schedule_permission_is_graphs_permission_scope_answer(
    client: httpx.AsyncClient, graph_double: GraphDouble
) -> None:
    graph_double.deny("roleEligibility")
    answer = await client.post(REQUESTS, json=pim_request("adminAssign", USER, scheduleInfo={}))
    assert_error(answer, 403, "UnknownError")
    assert "PermissionScopeNotGranted" in answer.json()["error"]["message"]
    assert "RoleEligibilitySchedule.ReadWrite.Directory" in answer.json()["error"]["message"]


async def test_a_role_definition_is_read_by_id_built_in_or_custom(
    client: httpx.AsyncClient, graph_double: GraphDouble
) -> None:
    graph_double.add_role_definition(MISSING.replace("9", "c"), display_name="Custom")
    built_in = (await client.get(f"/roleManagement/directory/roleDefinitions/{IDLE_TEMPLATE}")).json()
    custom = (await client.get(f"/roleManagement/directory/roleDefinitions/{MISSING.replace('9', 'c')}")).json()
    assert (built_in["isBuiltIn"], built_in["templateId"], built_in["displayName"]) == (
        True,
        IDLE_TEMPLATE,
        "Printer Administrator",
    )
    assert (custom["isBuiltIn"], custom["displayName"]) == (False, "Custom")
    assert_error(
        await client.get(f"/roleManagement/directory/roleDefinitions/{MISSING}"), 404, "Request_ResourceNotFound"
    )
