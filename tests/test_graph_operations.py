"""Only operations Graph documents: every request the app can make, captured at its HTTP client, is one that Graph's
v1.0 description (tests/data/graph-v1.0-subset.json, extracted from microsoftgraph/msgraph-metadata, its commit
named there) or one of its API reference pages names.

A request is checked the way Graph's OpenAPI description and SDKs are generated from the CSDL (the conversion's
rules, as microsoft/OpenAPI.NET.OData's path provider applies them with msgraph-metadata's conversion settings):

- an entity set (``GET``, ``POST``), one of its entities by key (``GET``, ``PATCH``, ``DELETE``) or by an alternate
  key in the form ``/set(alias='value')`` (the entity only: no paths are generated under it); a singleton;
- a navigation property of an entity: a contained collection (``GET``, ``POST``) and its entities by key (and on,
  through their navigation properties); a contained single entity (``GET``, ``PATCH``, and on, as ``/roleManagement/
  directory``); a referenceable, non-contained collection (``members``): the collection (``GET``), its ``$ref``
  (``GET``, ``POST``, ``DELETE``), under a member's key only ``$ref`` (``DELETE``) and a type cast to one of its
  derived types (``GET``), never the member itself;
- query options ``$select`` (properties the type declares, or its bases), ``$filter`` (of a collection: ``eq``
  comparisons of such properties, joined by ``and``), ``$top`` and ``$skiptoken`` (a next link's);
- a ``$ref`` body's ``@odata.id`` is an entity's URL on the same root; a body created in a collection whose type names
  its properties' types (the PIM schedule requests) holds only properties of the type, complex values only of
  their complex type's properties, and enum values only of the enum's members.

Two requests outside those rules are documented on Graph's v1.0 reference pages and listed as such in the data file
(the add by template in the key-segment form; "Get a member" of a unit). The local Graph double refuses the forms
Graph does not have (tests/test_graph_double.py), so a request that is not documented fails the app's own tests too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.identity import ManagedIdentityCredential

import function_app
from grants_cli.azure_apis import GraphReader, Tokens
from grants_cli.smoke import DIRECTORY_READERS, smoke_message
from grants_local.graph_double import Fault, GraphDouble
from grants_local.host import registered_function
from tests.conftest import (
    AU,
    DEVICE,
    GROUP_ASSIGNABLE,
    HELPDESK_ROLE,
    HELPDESK_TEMPLATE,
    LATE_USER,
    USER,
    USER_2,
    USER_ADMIN_TEMPLATE,
    Run,
    body,
)

DESCRIPTION: dict[str, Any] = json.loads((Path(__file__).parent / "data" / "graph-v1.0-subset.json").read_text())
SP = "d5c1a2d5-9101-44b2-83ab-885db8a647d0"
RESTRICTED = "a0000000-0000-4000-8000-0000000000e1"
SCOPED = {"type": "scopedRole", "roleTemplateId": HELPDESK_TEMPLATE, "administrativeUnitId": AU}
BY_TEMPLATE = {"type": "directoryRole", "roleTemplateId": HELPDESK_TEMPLATE}
UNIT = {"type": "administrativeUnit", "id": AU}
UNIT_SCOPE = f"/administrativeUnits/{AU}"
ELIGIBLE = {"type": "roleEligibility", "roleDefinitionId": HELPDESK_TEMPLATE, "directoryScopeId": UNIT_SCOPE}
ACTIVE = {"type": "roleAssignment", "roleDefinitionId": HELPDESK_TEMPLATE, "directoryScopeId": "/"}
NO_UNIT = {
    "type": "roleEligibility",
    "roleDefinitionId": HELPDESK_TEMPLATE,
    "directoryScopeId": "/administrativeUnits/a0000000-0000-4000-8000-00000000dead",
}
SWEEP = registered_function(function_app.app, "drift_sweep")
_QUERY_OPTIONS = frozenset({"$select", "$filter", "$top", "$skiptoken"})
_CLAUSE = re.compile(r"([A-Za-z]+) eq '[^']*'")
_GUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"

#: Every operation the scenarios below make, by the description's path template: a new kind of request must be
#: added here, after it was checked against the description.
EXPECTED = {
    "GET /directory/administrativeUnits/{key}",
    "GET /directory/administrativeUnits/{key}/members",
    "GET /directory/administrativeUnits/{key}/members/{key} (reference page)",
    "POST /directory/administrativeUnits/{key}/members/$ref",
    "DELETE /directory/administrativeUnits/{key}/members/{key}/$ref",
    "GET /directory/administrativeUnits/{key}/scopedRoleMembers",
    "POST /directory/administrativeUnits/{key}/scopedRoleMembers",
    "DELETE /directory/administrativeUnits/{key}/scopedRoleMembers/{key}",
    "POST /directoryRoles",
    "GET /directoryRoles/{key}",
    "GET /directoryRoles(roleTemplateId='{value}')",
    "GET /directoryRoles/{key}/members",
    "POST /directoryRoles/{key}/members/$ref",
    "POST /directoryRoles/roleTemplateId={roleTemplateId}/members/$ref (reference page)",
    "DELETE /directoryRoles/{key}/members/{key}/$ref",
    "GET /directoryObjects/{key}",
    "GET /servicePrincipals(appId='{value}')",
    "GET /servicePrincipals/{key}/appRoleAssignments",
    "POST /roleManagement/directory/roleEligibilityScheduleRequests",
    "POST /roleManagement/directory/roleAssignmentScheduleRequests",
    "GET /roleManagement/directory/roleEligibilitySchedules",
    "GET /roleManagement/directory/roleAssignmentSchedules",
    "GET /roleManagement/directory/roleDefinitions/{key}",
}


@dataclass(frozen=True, slots=True)
class Node:
    """Where a path has got to: what it addresses (`kind`) and the entity type of it."""

    kind: str  # set, entity, singleton, single, contained, referenceable, ref, member, member_ref, cast
    type: str


_METHODS: dict[str, frozenset[str]] = {
    "set": frozenset({"GET", "POST"}),
    "entity": frozenset({"GET", "PATCH", "DELETE"}),
    "singleton": frozenset({"GET", "PATCH"}),
    "single": frozenset({"GET", "PATCH"}),
    "contained": frozenset({"GET", "POST"}),
    "referenceable": frozenset({"GET"}),
    "ref": frozenset({"GET", "POST", "DELETE"}),
    "member_ref": frozenset({"DELETE"}),
    "cast": frozenset({"GET"}),
    "member": frozenset(),  # a referenceable collection's member itself: no operation is generated for it
}


def _types(name: str) -> list[dict[str, Any]]:
    """An entity type and its base types, most derived first."""
    chain: list[dict[str, Any]] = []
    current: str | None = name
    while current is not None:
        entry = DESCRIPTION["entityTypes"][current]
        chain.append(entry)
        current = entry.get("baseType")
    return chain


def _navigation(type_name: str, name: str) -> dict[str, Any] | None:
    for entry in _types(type_name):
        found = entry.get("navigationProperties", {}).get(name)
        if found is not None:
            return dict(found)
    return None


def _properties(type_name: str) -> set[str]:
    return {p for entry in _types(type_name) for p in entry.get("properties", [])}


def _alternate(segment: str) -> tuple[str, str, str] | None:
    """``set(alias='value')`` -> (set, alias, value)."""
    match = re.fullmatch(r"([A-Za-z]+)\(([A-Za-z]+)='([^']*)'\)", segment)
    return (match.group(1), match.group(2), match.group(3)) if match else None


def resolve(path: str) -> tuple[Node, str]:
    """The node a path relative to the Graph root addresses, and its template; AssertionError naming the segment
    that the description does not have."""
    segments = path.strip("/").split("/")
    first = segments[0]
    if (alternate := _alternate(first)) is not None:
        entity_set, alias, _ = alternate
        type_name = DESCRIPTION["entitySets"].get(entity_set)
        assert type_name is not None, f"no entity set {entity_set!r}"
        assert alias in DESCRIPTION["entityTypes"][type_name].get("alternateKeys", []), f"no alternate key {alias!r}"
        assert len(segments) == 1, "the description generates no path under an alternate key"
        return Node("entity", type_name), f"/{entity_set}({alias}='{{value}}')"
    if first in DESCRIPTION["entitySets"]:
        node = Node("set", DESCRIPTION["entitySets"][first])
    elif first in DESCRIPTION["singletons"]:
        node = Node("singleton", DESCRIPTION["singletons"][first])
    else:
        raise AssertionError(f"no entity set or singleton {first!r}")
    template = f"/{first}"
    for segment in segments[1:]:
        node, step = _step(node, segment)
        template += f"/{step}"
    return node, template


def _step(node: Node, segment: str) -> tuple[Node, str]:
    if node.kind in ("set", "contained"):
        assert re.fullmatch(r"[^$=()']+", segment), f"{segment!r} is not a key (a key segment is the key's value)"
        return Node("entity", node.type), "{key}"
    if node.kind in ("entity", "singleton", "single"):
        navigation = _navigation(node.type, segment)
        assert navigation is not None, f"{node.type} has no navigation property {segment!r}"
        if navigation["containsTarget"]:
            return Node("contained" if navigation["collection"] else "single", navigation["type"]), segment
        assert navigation.get("referenceable"), f"{node.type}.{segment} is neither contained nor referenceable"
        return Node("referenceable", navigation["type"]), segment
    if node.kind == "referenceable":
        if segment == "$ref":
            return Node("ref", node.type), segment
        assert re.fullmatch(r"[^$=()']+", segment), f"{segment!r} is not a key (a key segment is the key's value)"
        return Node("member", node.type), "{key}"
    if node.kind == "member":
        if segment == "$ref":
            return Node("member_ref", node.type), segment
        cast = segment.removeprefix("microsoft.").removeprefix("graph.")
        assert cast != segment, f"{segment!r} is not a type cast"
        assert cast in DESCRIPTION["entityTypes"], f"{segment!r} casts to no type of the description"
        return Node("cast", cast), "graph.{type}"
    raise AssertionError(f"nothing is addressed under a {node.kind} ({segment!r})")


def _documented_page(method: str, path: str) -> str | None:
    """The template of a request documented on a reference page (the data file's list), if `path` is one."""
    for entry in DESCRIPTION["documentedOnReferencePages"]:
        parts = re.split(r"\{[A-Za-z-]+\}", entry["path"])
        if entry["method"] == method and re.fullmatch(_GUID.join(map(re.escape, parts)), path):
            return f"{method} {re.sub(r'[{][A-Za-z]+-id[}]', '{key}', entry['path'])} (reference page)"
    return None


def operation(request: httpx.Request, root: str) -> str:
    """The documented operation `request` is (its template); AssertionError saying why when it is none."""
    url = str(request.url)
    assert url.startswith(root + "/"), f"{url} is not on Graph's root {root}"
    path = request.url.path[len(httpx.URL(root).path) :]
    documented = _documented_page(request.method, path)
    if documented is not None:
        return documented
    node, template = resolve(path)
    assert request.method in _METHODS[node.kind], f"{request.method} is not an operation of a {node.kind}"
    for name, value in request.url.params.multi_items():
        assert name in _QUERY_OPTIONS, f"query option {name!r}"
        if name == "$select":
            unknown = set(value.split(",")) - _properties(node.type)
            assert not unknown, f"$select of {sorted(unknown)}: not properties of {node.type}"
        if name == "$top":
            assert node.kind in ("set", "contained", "referenceable"), "$top of something that is not a collection"
        if name == "$filter":
            assert node.kind in ("set", "contained", "referenceable"), "$filter of something that is not a collection"
            clauses = value.split(" and ")
            assert all(_CLAUSE.fullmatch(clause) for clause in clauses), f"$filter {value!r}: not eq comparisons"
            unknown = {_CLAUSE.fullmatch(clause).group(1) for clause in clauses} - _properties(node.type)  # type: ignore[union-attr]
            assert not unknown, f"$filter on {sorted(unknown)}: not properties of {node.type}"
    if node.kind == "ref" and request.method == "POST":
        reference = json.loads(request.content)["@odata.id"]
        assert isinstance(reference, str), "@odata.id is not a URL"
        assert reference.startswith(root + "/"), "@odata.id on another root"
        referenced, _ = resolve(reference[len(root) :])
        assert referenced.kind == "entity", f"@odata.id {reference} is not an entity"
    if node.kind in ("set", "contained") and request.method == "POST":
        _check_body(node.type, json.loads(request.content))
    return f"{request.method} {template}"


def _check_body(type_name: str, body: dict[str, Any]) -> None:
    """A created entity's body against its type, when the description names its properties' types (see the module
    docstring): properties of the type, complex values of their type, enum members."""
    declared = DESCRIPTION["entityTypes"][type_name].get("propertyTypes")
    if declared is None:
        return
    unknown = set(body) - _properties(type_name)
    assert not unknown, f"{sorted(unknown)}: not properties of {type_name}"
    for name, value in body.items():
        _check_value(declared.get(name), value, f"{type_name}.{name}")


def _check_value(type_name: str | None, value: Any, where: str) -> None:
    if type_name in DESCRIPTION["enumTypes"]:
        assert value in DESCRIPTION["enumTypes"][type_name], f"{where} {value!r}: not a member of {type_name}"
    elif type_name in DESCRIPTION["complexTypes"]:
        assert isinstance(value, dict), f"{where}: not a {type_name}"
        properties = DESCRIPTION["complexTypes"][type_name]["properties"]
        unknown = set(value) - set(properties)
        assert not unknown, f"{where}: {sorted(unknown)} not properties of {type_name}"
        for name, inner in value.items():
            _check_value(properties[name], inner, f"{where}.{name}")


class Captured:
    """The requests an HTTP client sends to Graph's root (an httpx event hook: the client as the app built it)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.requests: list[httpx.Request] = []

    def add(self, request: httpx.Request) -> None:
        if str(request.url).startswith(self.root + "/"):
            self.requests.append(request)

    async def add_async(self, request: httpx.Request) -> None:
        self.add(request)

    def operations(self) -> tuple[set[str], list[str]]:
        """The operations made, and what was not documented (a request and why)."""
        made: set[str] = set()
        undocumented: list[str] = []
        for request in self.requests:
            try:
                made.add(operation(request, self.root))
            except AssertionError as why:
                undocumented.append(f"{request.method} {request.url}: {why}")
        return made, undocumented


def grant(request_id: str, target: dict[str, Any], member: str, member_type: str, **extra: Any) -> bytes:
    return body(
        requestId=request_id,
        target=target,
        member={"id": member, "type": member_type},
        source={"system": "other", "reference": request_id},
        **extra,
    )


def policy(tmp_path: Path) -> str:
    """Any source may change any unit and non-tier-0 role (eligible and active too) and revoke every grant of one;
    the sweep restores the unit, the scoped role and the unit's eligibility."""
    anything = {
        "actions": ["add", "remove", "revokeAll"],
        "administrativeUnits": ["*"],
        "directoryRoles": ["*"],
        "scopedRoles": ["*"],
        "roleEligibilities": ["*"],
        "roleAssignments": ["*"],
    }
    drift = {
        "targets": [
            {"target": UNIT, "mode": "restore"},
            {"target": SCOPED, "mode": "restore"},
            {"target": ELIGIBLE, "mode": "restore"},
        ]
    }
    document = {"sources": dict.fromkeys(("hr", "ticketing", "bulk", "other"), anything), "drift": drift}
    file = tmp_path / "policy.json"
    file.write_text(json.dumps(document))
    return str(file)


@pytest.fixture
def directory(graph: GraphDouble) -> GraphDouble:
    """The tests' directory, with a service principal (the smoke check's identity: its Graph permissions granted)
    and the role template the smoke check names."""
    graph.add_service_principal(SP)
    graph.grant_app_role(SP, "AdministrativeUnit.ReadWrite.All")
    graph.add_role_template(DIRECTORY_READERS, display_name="Directory Readers", activated=True)
    graph.add_administrative_unit(RESTRICTED, restricted=True)  # a refused write, then the unit's kind read
    return graph


async def test_every_request_the_app_makes_is_one_graph_documents(
    make_run: Callable[..., Any], directory: GraphDouble, tmp_path: Path
) -> None:
    """Each target kind and action (PIM's eligible and active ones too), dry runs, a role's activation, 404s told
    apart, drift sweeps that page, and the smoke check's reads: every request is a documented operation, and the
    double answered none of them 400."""
    run: Run = await make_run(GRANTS_ACTIVATE_ROLES="true", GRANTS_POLICY=policy(tmp_path))
    captured = Captured(directory.base_url)
    run.app.services.http.event_hooks["request"].append(captured.add_async)
    role_by_id = {"type": "directoryRole", "id": HELPDESK_ROLE}
    not_activated = {"type": "directoryRole", "roleTemplateId": USER_ADMIN_TEMPLATE}
    directory.inject(Fault.status(404, method="POST", path=f"administrativeUnits/{AU}/members"))  # names no id

    await run.deliver(grant("au-add", UNIT, USER, "user"))
    await run.deliver(
        grant("au-again", UNIT, USER, "user"),
        grant("au-group", UNIT, GROUP_ASSIGNABLE, "group"),
        grant("au-device", UNIT, DEVICE, "device"),
        grant("au-late", UNIT, LATE_USER, "user"),
        grant("role-id", role_by_id, USER_2, "user"),
        grant("role-template", BY_TEMPLATE, SP, "servicePrincipal"),
        grant("activated", not_activated, USER, "user"),
        grant("scoped", SCOPED, USER_2, "user"),
        grant("restricted", {"type": "administrativeUnit", "id": RESTRICTED}, USER, "user"),
        grant("eligible", ELIGIBLE, USER, "user"),
        grant("active", ACTIVE, USER_2, "user"),
        grant("no-unit", NO_UNIT, USER, "user"),
    )
    await run.deliver(
        grant("au-remove", UNIT, USER, "user", action="remove"),
        grant("role-id-remove", role_by_id, USER_2, "user", action="remove"),
        grant("role-template-remove", BY_TEMPLATE, SP, "servicePrincipal", action="remove"),
        grant("scoped-remove", SCOPED, USER_2, "user", action="remove"),
        grant("dry-au", UNIT, USER_2, "user", dryRun=True),
        grant("dry-au-remove", UNIT, GROUP_ASSIGNABLE, "group", action="remove", dryRun=True),
        grant("dry-role-id", role_by_id, USER, "user", dryRun=True),
        grant("dry-role-template", BY_TEMPLATE, USER, "user", action="remove", dryRun=True),
        grant("dry-scoped", SCOPED, USER, "user", dryRun=True),
        grant("eligible-again", ELIGIBLE, USER, "user"),
        grant("active-remove", ACTIVE, USER_2, "user", action="remove"),
        grant("dry-eligible", ELIGIBLE, USER_2, "user", dryRun=True),
        grant("dry-active-remove", ACTIVE, USER, "user", action="remove", dryRun=True),
        smoke_message(request_id="smoke-1", principal_id=SP, role_template=DIRECTORY_READERS, source="other"),
    )
    await run.deliver(
        grant("au-remove-again", UNIT, USER, "user", action="remove", revokeAll=True),  # a DELETE again: 404
        grant("role-template-remove-again", BY_TEMPLATE, SP, "servicePrincipal", action="remove", revokeAll=True),
        grant("active-remove-again", ACTIVE, USER_2, "user", action="remove", revokeAll=True),
        grant("active-until", ACTIVE, USER, "user", expiresAt="2099-01-01T00:00:00Z"),
    )
    for n in range(1_001):  # the unit lists in two pages of 999; its scoped role's memberships in two of 100
        member = directory.add_user(f"{n:08x}-0000-4000-8000-00000000d0c5")
        directory.add_member(AU, member)
        if n <= 100:
            directory.assign_scoped_role(AU, HELPDESK_TEMPLATE, member)
            directory.assign_schedule("eligibility", HELPDESK_TEMPLATE, UNIT_SCOPE, member)  # two pages of 100
    await SWEEP(timer=None)
    with httpx.Client(event_hooks={"request": [captured.add]}) as client, ManagedIdentityCredential() as credential:
        reader = GraphReader(base_url=directory.base_url, tokens=Tokens(credential), http=client)
        assert reader.app_permissions(SP) == {"AdministrativeUnit.ReadWrite.All"}  # the smoke check's reads

    outcomes = run.app.outcomes()
    assert {record["requestId"]: record["outcome"] for record in outcomes.values()}.items() >= {
        "au-add": "granted",
        "au-again": "already_member",
        "activated": "granted",
        "au-remove-again": "not_member",
        "role-template-remove": "revoked",
        "role-template-remove-again": "not_member",
        "dry-role-template": "not_member",
        "smoke-1": "not_member",
        "restricted": "dead_lettered",
        "eligible": "granted",
        "active": "granted",
        "no-unit": "dead_lettered",
        "eligible-again": "already_member",
        "active-remove": "revoked",
        "dry-eligible": "would_grant",
        "dry-active-remove": "not_member",
        "active-remove-again": "not_member",
        "active-until": "granted",
    }.items()
    made, undocumented = captured.operations()
    assert undocumented == []
    assert made == EXPECTED
    assert not [r for r in directory.requests if r.status == 400 and "segment" in json.dumps(r.body or {})]
    by_template = [
        (r.method, r.path) for r in directory.requests if r.path.startswith("/directoryRoles/roleTemplateId")
    ]
    assert sorted(by_template) == [
        ("POST", f"/directoryRoles/roleTemplateId={USER_ADMIN_TEMPLATE}/members/$ref"),
        ("POST", f"/directoryRoles/roleTemplateId={USER_ADMIN_TEMPLATE}/members/$ref"),
        ("POST", f"/directoryRoles/roleTemplateId={HELPDESK_TEMPLATE}/members/$ref"),
    ], "the template names a role in a path only for its documented add (again once activated)"


@pytest.mark.parametrize(
    ("method", "path", "why"),
    [
        ("GET", f"/directoryRoles/roleTemplateId={HELPDESK_TEMPLATE}", "is not a key"),
        ("GET", f"/directoryRoles/{HELPDESK_ROLE}/members/{USER}", "GET is not an operation of a member"),
        ("DELETE", f"/directoryRoles(roleTemplateId='{HELPDESK_TEMPLATE}')/members/{USER}/$ref", "under an alternate"),
        ("GET", f"/administrativeUnits/{AU}", "no entity set"),
        ("GET", f"/directory/administrativeUnits/{AU}/members?$select=mail", "not properties"),
        ("PATCH", f"/directory/administrativeUnits/{AU}/members/$ref", "not an operation"),
        ("GET", "/roleManagement/directory/roleEligibilitySchedules?$filter=principal eq 'x'", "not properties"),
        ("GET", "/roleManagement/directory/roleEligibilitySchedules?$filter=startswith(principalId,'x')", "not eq"),
        ("GET", "/roleManagement/directoryRoles", "no navigation property"),
    ],
    ids=[
        "template as a key segment",
        "one role member",
        "removal by alternate key",
        "units at the root",
        "select",
        "method",
        "filter on a navigation property",
        "filter function",
        "PIM under roleManagement",
    ],
)
def test_the_check_refuses_what_the_description_does_not_have(method: str, path: str, why: str) -> None:
    """The check itself: requests the description does not have are refused, saying why."""
    root = "https://graph.microsoft.com/v1.0"
    with pytest.raises(AssertionError, match=why):
        operation(httpx.Request(method, root + path), root)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"action": "adminAssign", "principalId": USER, "expiration": {}}, r"\['expiration'\]: not properties"),
        ({"action": "assign"}, "not a member of unifiedRoleScheduleRequestActions"),
        ({"scheduleInfo": {"expiration": {"type": "until"}}}, "not a member of expirationPatternType"),
        ({"scheduleInfo": {"endDateTime": "2027-01-01T00:00:00Z"}}, "not properties of requestSchedule"),
        ({"ticketInfo": {"ticketId": "T1"}}, "not properties of ticketInfo"),
    ],
    ids=["property", "action", "expiration type", "schedule", "ticket"],
)
def test_the_check_refuses_a_schedule_request_body_the_description_does_not_have(
    body: dict[str, Any], why: str
) -> None:
    root = "https://graph.microsoft.com/v1.0"
    request = httpx.Request("POST", root + "/roleManagement/directory/roleEligibilityScheduleRequests", json=body)
    with pytest.raises(AssertionError, match=why):
        operation(request, root)


def test_the_description_subset_names_its_source_commit() -> None:
    assert re.fullmatch(r"[0-9a-f]{40}", DESCRIPTION["source"]["commit"])
    assert DESCRIPTION["source"]["repository"] == "https://github.com/microsoftgraph/msgraph-metadata"
