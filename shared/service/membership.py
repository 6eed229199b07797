"""Membership mechanics: carry out one validated grant command against Graph and say what happened.

`change_membership` returns a `Result` for the four successes (`granted`, `already_member`, `revoked`,
`not_member`) and raises a `GrantError` for everything else. Graph's answers are classified by status
and error code; the message text is read only where the code is too broad (``Request_BadRequest`` for
"already exist", and the id a ``404`` names, to tell a missing target from a missing member). Where a
``404`` names neither, a ``GET`` of the target decides.

Only operations Graph documents are sent (tests/test_graph_operations.py): a role named by template is added to
with ``POST /directoryRoles/roleTemplateId={t}/members/$ref`` (documented so); for everything else its role's id
is looked up once per process (`RoleIds`) and the role is named by id; whether a role holds a member is read from
the role's member listing (Graph documents no read of one role member).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Final

from shared.adapters.directory import RoleIds, UnitKinds, role_member_ids
from shared.adapters.graph import GraphClient, GraphResponse, path, raise_for_graph
from shared.core.contract import (
    Action,
    AdministrativeUnit,
    DirectoryRole,
    GrantCommand,
    Guid,
    RoleAssignment,
    RoleEligibility,
    ScopedRole,
)
from shared.core.errors import GraphAnswer, PermanentError, Reason, TransientError
from shared.core.statuses import Holder, Status
from shared.core.units import refusal_description, unit_refusal

__all__ = ["Result", "change_membership"]

AU_PERMISSION: Final = "AdministrativeUnit.ReadWrite.All"
ROLE_PERMISSION: Final = "RoleManagement.ReadWrite.Directory"
#: Graph's words (a 400 Request_BadRequest) for a member the target cannot hold: a type it does not take (the contract
#: refuses the types it knows before any call: `UnsupportedMember`), a group that is not role-assignable.
_CANNOT_HOLD: Final = ("unsupported referenced-object resource identifier", "isassignabletorole")


@dataclass(frozen=True, slots=True)
class Result:
    """A command carried out: its status (granted, already_member, revoked, not_member, a dry run's, or the
    gate's superseded and duplicate), a description, and what Graph answered."""

    outcome: Status
    description: str
    graph: GraphAnswer | None
    role_template_id: Guid | None = None  # for the audit record, when the target is a role
    confirm_at: datetime | None = None  # carry the request out once more then (a write that may still land)
    held_by: tuple[Holder, ...] | None = None  # a released request's: what keeps the membership


@dataclass(frozen=True, slots=True)
class _Route:
    """Where a target lives in Graph, and how to name it to a person: a role named by template (`template_id`) is
    at ``directoryRoles/roleTemplateId={t}`` for adds only; `by_id` gives its route by role id for the rest."""

    segments: tuple[str, ...]
    label: str
    permission: str
    template_id: Guid | None = None

    def by_id(self, role_id: Guid) -> _Route:
        """This role's route named by its id (same label and permission)."""
        return _Route(("directoryRoles", role_id), self.label, self.permission)


class _Missing(Enum):
    TARGET = "target"
    MEMBER = "member"


async def change_membership(
    command: GrantCommand,
    *,
    graph: GraphClient,
    roles: RoleIds,
    units: UnitKinds,
    activate_roles: bool,
    dry_run: bool = False,
) -> Result:
    """Add or remove the command's member; activate a role by template first if allowed and needed. `roles` and
    `units` are the process's `RoleIds` (a template's role id) and `UnitKinds` (a unit's kind, read after Graph
    refused a write to it: a restricted-management or dynamic unit gets its own reason), each looked up once.

    With `dry_run`, only read: report `would_grant`, `already_member`, `would_revoke` or `not_member`.
    """
    target = command.target
    if isinstance(target, RoleEligibility | RoleAssignment):
        raise TypeError("a PIM target is carried out by shared.service.schedules.change_schedule")
    lookup = _Lookup(roles, units, graph)
    if isinstance(target, ScopedRole):
        if dry_run:
            return await _preview_scoped(command, target, graph, lookup, activate_roles=activate_roles)
        if command.action is Action.ADD:
            return await _add_scoped(command, target, graph, lookup, activate_roles=activate_roles)
        return await _remove_scoped(command, target, graph, lookup)
    route = _route(target)
    if dry_run:
        return await _preview(command, route, graph, lookup, activate_roles=activate_roles)
    if command.action is Action.ADD:
        return await _add(command, route, graph, lookup, activate_roles=activate_roles)
    return await _remove(command, route, graph, lookup)


@dataclass(frozen=True, slots=True)
class _Lookup:
    """The role id of a template (`RoleIds`) and a unit's kind (`UnitKinds`), read through one command's client (its
    lane)."""

    roles: RoleIds
    units: UnitKinds
    graph: GraphClient

    async def role_id(self, template: Guid) -> Guid | None:
        return await self.roles.role_id(template, read=self._read)

    async def refused_by_unit(self, route: _Route, response: GraphResponse) -> None:
        """After Graph refused a write to a unit (``403``, or a ``400`` that is no answer of its own): raise
        `PermanentError` with the unit's reason when the unit is restricted-management or dynamic (its kind read
        once per process); return otherwise (the caller raises Graph's own reason)."""
        if route.segments[:2] != ("directory", "administrativeUnits") or response.status not in (400, 403):
            return
        unit = Guid(route.segments[2])
        reason = unit_refusal(await self.units.kind_of(unit, read=self._read), status=response.status)
        if reason is not None:
            said = f"Graph answered {response.status} {response.error_code}: {response.error_message}"
            raise PermanentError(
                reason, f"{refusal_description(reason, unit=route.label)} ({said})", graph=response.answer()
            )

    async def _read(self, url_path: str) -> GraphResponse:
        return await self.graph.send("GET", url_path)


def _route(target: AdministrativeUnit | DirectoryRole) -> _Route:
    if isinstance(target, AdministrativeUnit):
        return _Route(
            ("directory", "administrativeUnits", target.id), f"administrative unit {target.id}", AU_PERMISSION
        )
    if target.id is not None:
        return _Route(("directoryRoles", target.id), f"directory role {target.id}", ROLE_PERMISSION)
    assert target.role_template_id is not None
    template = target.role_template_id
    return _Route(
        ("directoryRoles", f"roleTemplateId={template}"),
        f"directory role with template {template}",
        ROLE_PERMISSION,
        template_id=template,
    )


async def _add(
    command: GrantCommand, route: _Route, graph: GraphClient, lookup: _Lookup, *, activate_roles: bool
) -> Result:
    member = command.member.id
    body = {"@odata.id": graph.directory_object_url(member)}
    activated = False
    while True:
        response = await graph.send("POST", path(*route.segments, "members", "$ref"), json_body=body)
        if response.status == 204:
            return Result(Status.GRANTED, f"added {_member_label(command)} to {route.label}", response.answer())
        if _refused_with(response, "already exist"):
            return Result(
                Status.ALREADY_MEMBER,
                f"{_member_label(command)} was already in {route.label}",
                response.answer(),
            )
        if _refused_with(response, *_CANNOT_HOLD):
            raise PermanentError(
                Reason.UNSUPPORTED_MEMBER,
                f"{route.label} cannot hold {_member_label(command)} (Graph: {response.error_message})",
                graph=response.answer(),
            )
        if response.status != 404:
            await lookup.refused_by_unit(route, response)
            raise_for_graph(response, permission=route.permission)
        if await _which_missing(response, route, member, graph, lookup) is _Missing.MEMBER:
            raise TransientError(
                Reason.MEMBER_NOT_FOUND,
                f"{_member_label(command)} does not exist in the directory (yet): a principal created moments "
                "ago can take a minute or two to replicate.",
                graph=response.answer(),
            )
        if route.template_id is None:
            raise _target_not_found(route, response)
        if activated:
            raise TransientError(
                Reason.ROLE_NOT_ACTIVATED,
                f"{route.label} was activated but is not visible yet (replication).",
                graph=response.answer(),
            )
        if not activate_roles:
            raise PermanentError(
                Reason.ROLE_NOT_ACTIVATED,
                f"{route.label} is not activated in this tenant. Activate it (POST /directoryRoles) or set "
                "GRANTS_ACTIVATE_ROLES=true to let this app activate roles on first use.",
                graph=response.answer(),
            )
        await _activate(route.template_id, graph)
        activated = True


async def _remove(command: GrantCommand, route: _Route, graph: GraphClient, lookup: _Lookup) -> Result:
    member = command.member.id
    if route.template_id is not None:  # removed by the role's id: Graph documents no removal by template
        role_id = await lookup.role_id(route.template_id)
        if role_id is None:
            return Result(
                Status.NOT_MEMBER,
                f"{route.label} is not activated in this tenant, so {_member_label(command)} does not hold it",
                None,
            )
        route = route.by_id(role_id)
    response = await graph.send("DELETE", path(*route.segments, "members", member, "$ref"))
    if response.status == 204:
        return Result(Status.REVOKED, f"removed {_member_label(command)} from {route.label}", response.answer())
    not_member = Result(Status.NOT_MEMBER, f"{_member_label(command)} was not in {route.label}", response.answer())
    if _refused_with(response, "removed object references do not exist"):
        return not_member
    if response.status != 404:
        await lookup.refused_by_unit(route, response)
        raise_for_graph(response, permission=route.permission)
    # Graph has been seen to name the container in a 404 for a non-member: only a GET of the target decides.
    if await _which_missing(response, route, member, graph, lookup, trust_target_id=False) is _Missing.MEMBER:
        return not_member
    raise _target_not_found(route, response)


async def _preview(
    command: GrantCommand, route: _Route, graph: GraphClient, lookup: _Lookup, *, activate_roles: bool
) -> Result:
    """Dry run for units and roles: read membership with GETs only (a unit's member by id; a role's listing)."""
    add = command.action is Action.ADD
    who = _member_label(command)
    if route.template_id is not None:
        role_id = await lookup.role_id(route.template_id)
        if role_id is None:
            if not add:
                return Result(Status.NOT_MEMBER, f"{route.label} is not activated, so {who} does not hold it", None)
            if not activate_roles:
                raise PermanentError(
                    Reason.ROLE_NOT_ACTIVATED, f"{route.label} is not activated in this tenant (dry run)"
                )
            return Result(Status.WOULD_GRANT, f"would activate {route.label} and add {who} (dry run)", None)
        route = route.by_id(role_id)
    held, answer = await _holds(command, route, graph)
    if held:
        if add:
            return Result(Status.ALREADY_MEMBER, f"{who} is already in {route.label} (dry run)", answer)
        return Result(Status.WOULD_REVOKE, f"would remove {who} from {route.label} (dry run)", answer)
    return await _preview_absent(command, route.label, graph)


async def _holds(command: GrantCommand, route: _Route, graph: GraphClient) -> tuple[bool, GraphAnswer]:
    """Whether the member holds a unit (``GET .../members/{id}``) or a role named by id (its member listing), and
    Graph's answer; a target that does not exist raises `PermanentError(TargetNotFound)`."""
    member = command.member.id
    if route.segments[0] == "directoryRoles":
        listing = await graph.send("GET", path(*route.segments, "members") + "?$select=id")
        if listing.status == 404:
            raise _target_not_found(route, listing)
        if listing.status != 200:
            raise_for_graph(listing, permission=route.permission)
        return member in role_member_ids(listing, label=route.label), listing.answer()
    response = await graph.send("GET", path(*route.segments, "members", member))
    if response.status == 200:
        return True, response.answer()
    if response.status != 404:
        raise_for_graph(response, permission=route.permission)
    probe = await graph.send("GET", path(*route.segments))
    if probe.status == 404:
        raise _target_not_found(route, probe)
    if probe.status != 200:
        raise_for_graph(probe, permission=route.permission)
    return False, response.answer()


async def _preview_absent(command: GrantCommand, label: str, graph: GraphClient) -> Result:
    """Dry run when the member is not in the target: would an add find the member?"""
    who = _member_label(command)
    if command.action is Action.REMOVE:
        return Result(Status.NOT_MEMBER, f"{who} is not in {label} (dry run)", None)
    found = await graph.send("GET", path("directoryObjects", command.member.id))
    if found.status == 404:
        raise TransientError(
            Reason.MEMBER_NOT_FOUND, f"{who} does not exist in the directory (yet)", graph=found.answer()
        )
    if found.status != 200:
        raise_for_graph(found, permission="Directory.Read.All")
    return Result(Status.WOULD_GRANT, f"would add {who} to {label} (dry run)", found.answer())


async def _add_scoped(
    command: GrantCommand, target: ScopedRole, graph: GraphClient, lookup: _Lookup, *, activate_roles: bool
) -> Result:
    unit = _scoped_unit(target)
    label = _scoped_label(target)
    role_id = await _role_id(target.role_template_id, graph, lookup, activate=activate_roles)
    if role_id is None:
        raise PermanentError(
            Reason.ROLE_NOT_ACTIVATED,
            f"the role with template {target.role_template_id} is not activated in this tenant; activate it or set "
            "GRANTS_ACTIVATE_ROLES=true",
        )
    body = {"roleId": role_id, "roleMemberInfo": {"id": command.member.id}}
    response = await graph.send("POST", path(*unit.segments, "scopedRoleMembers"), json_body=body)
    if response.status in (200, 201):
        return Result(Status.GRANTED, f"assigned {_member_label(command)} the {label}", response.answer())
    if _refused_with(response, "conflicting object", "already exist"):
        return Result(Status.ALREADY_MEMBER, f"{_member_label(command)} already holds the {label}", response.answer())
    if _refused_with(response, *_CANNOT_HOLD):
        raise PermanentError(
            Reason.UNSUPPORTED_MEMBER,
            f"the {label} cannot be held by {_member_label(command)} (Graph: {response.error_message})",
            graph=response.answer(),
        )
    if response.status != 404:
        raise_for_graph(response, permission=ROLE_PERMISSION)
    if await _which_missing(response, unit, command.member.id, graph, lookup) is _Missing.MEMBER:
        raise TransientError(
            Reason.MEMBER_NOT_FOUND,
            f"{_member_label(command)} does not exist in the directory (yet)",
            graph=response.answer(),
        )
    raise _target_not_found(unit, response)


async def _remove_scoped(command: GrantCommand, target: ScopedRole, graph: GraphClient, lookup: _Lookup) -> Result:
    label = _scoped_label(target)
    role_id = await _role_id(target.role_template_id, graph, lookup, activate=False)
    membership = None if role_id is None else await _scoped_membership(target, role_id, command.member.id, graph)
    if membership is None:
        return Result(Status.NOT_MEMBER, f"{_member_label(command)} does not hold the {label}", None)
    unit = _scoped_unit(target)
    response = await graph.send("DELETE", path(*unit.segments, "scopedRoleMembers", membership))
    if response.status == 204:
        return Result(Status.REVOKED, f"removed the {label} from {_member_label(command)}", response.answer())
    if response.status == 404:
        return Result(Status.NOT_MEMBER, f"{_member_label(command)} does not hold the {label}", response.answer())
    raise_for_graph(response, permission=ROLE_PERMISSION)


async def _preview_scoped(
    command: GrantCommand, target: ScopedRole, graph: GraphClient, lookup: _Lookup, *, activate_roles: bool
) -> Result:
    label = _scoped_label(target)
    who = _member_label(command)
    role_id = await _role_id(target.role_template_id, graph, lookup, activate=False)
    if role_id is None:
        if command.action is Action.REMOVE:
            return Result(Status.NOT_MEMBER, f"{who} does not hold the {label} (role not activated)", None)
        if not activate_roles:
            raise PermanentError(Reason.ROLE_NOT_ACTIVATED, f"the {label} is not activated in this tenant (dry run)")
        return Result(Status.WOULD_GRANT, f"would activate the role and assign {who} the {label} (dry run)", None)
    if await _scoped_membership(target, role_id, command.member.id, graph) is not None:
        if command.action is Action.ADD:
            return Result(Status.ALREADY_MEMBER, f"{who} already holds the {label} (dry run)", None)
        return Result(Status.WOULD_REVOKE, f"would remove the {label} from {who} (dry run)", None)
    return await _preview_absent(command, f"the {label}", graph)


async def _role_id(template_id: Guid, graph: GraphClient, lookup: _Lookup, *, activate: bool) -> Guid | None:
    """The id of the role activated from `template_id` (`RoleIds`); None if not activated (and `activate` is
    false), else activated first."""
    for _ in range(2):
        role_id = await lookup.role_id(template_id)
        if role_id is not None:
            return role_id
        if not activate:
            return None
        await _activate(template_id, graph)
        activate = False
    raise TransientError(Reason.ROLE_NOT_ACTIVATED, f"role template {template_id} was activated but is not visible yet")


async def _scoped_membership(target: ScopedRole, role_id: str, member: Guid, graph: GraphClient) -> str | None:
    """The id of the member's scoped role membership in the unit, following Graph's paging."""
    unit = _scoped_unit(target)
    url_path: str | None = path(*unit.segments, "scopedRoleMembers")
    while url_path is not None:
        response = await graph.send("GET", url_path)
        if response.status == 404:
            raise _target_not_found(unit, response)
        if response.status != 200:
            raise_for_graph(response, permission=ROLE_PERMISSION)
        body: Any = response.body or {}
        for item in body.get("value", []):
            info = item.get("roleMemberInfo") or {}
            if str(item.get("roleId", "")).lower() == role_id.lower() and str(info.get("id", "")).lower() == member:
                return str(item["id"])
        url_path = graph.relative(body.get("@odata.nextLink"))
    return None


def _scoped_unit(target: ScopedRole) -> _Route:
    unit = target.administrative_unit_id
    return _Route(("directory", "administrativeUnits", unit), f"administrative unit {unit}", ROLE_PERMISSION)


def _scoped_label(target: ScopedRole) -> str:
    return f"role with template {target.role_template_id} scoped to administrative unit {target.administrative_unit_id}"


async def _which_missing(
    response: GraphResponse,
    route: _Route,
    member: Guid,
    graph: GraphClient,
    lookup: _Lookup,
    *,
    trust_target_id: bool = True,
) -> _Missing:
    """Tell which object a 404 was about: the id Graph names, or else a read of the target (a role named by
    template: whether its role is activated, `RoleIds`)."""
    message = (response.error_message or "").lower()
    if member in message:
        return _Missing.MEMBER
    if trust_target_id and (route.template_id or route.segments[-1]) in message:
        return _Missing.TARGET
    if route.template_id is not None:
        return _Missing.MEMBER if await lookup.role_id(route.template_id) is not None else _Missing.TARGET
    probe = await graph.send("GET", path(*route.segments))
    if probe.status == 200:
        return _Missing.MEMBER
    if probe.status == 404:
        return _Missing.TARGET
    raise_for_graph(probe, permission=route.permission)


async def _activate(template_id: Guid, graph: GraphClient) -> None:
    """Activate a role from its template; an answer saying it already exists counts as done."""
    response = await graph.send("POST", path("directoryRoles"), json_body={"roleTemplateId": template_id})
    if response.status in (200, 201) or _refused_with(response, "conflicting object", "already exist"):
        return
    if response.status in (400, 404):
        raise PermanentError(
            Reason.TARGET_NOT_FOUND,
            f"role template {template_id} could not be activated: Graph answered {response.status} "
            f"{response.error_code}: {response.error_message}",
            graph=response.answer(),
        )
    raise_for_graph(response, permission=ROLE_PERMISSION)


def _refused_with(response: GraphResponse, *phrases: str) -> bool:
    """A 400 Request_BadRequest whose message contains one of `phrases` (Graph's code alone is too broad)."""
    message = (response.error_message or "").lower()
    return (
        response.status == 400
        and response.error_code == "Request_BadRequest"
        and any(phrase in message for phrase in phrases)
    )


def _target_not_found(route: _Route, response: GraphResponse) -> PermanentError:
    return PermanentError(
        Reason.TARGET_NOT_FOUND,
        f"{route.label} does not exist in this tenant (Graph: {response.error_code}: {response.error_message})",
        graph=response.answer(),
    )


def _member_label(command: GrantCommand) -> str:
    return f"{command.member.type or 'member'} {command.member.id}"
