"""Handlers: carry out one validated grant command against Graph and say what happened.

`handle_grant` returns a `Result` for the four successes (`granted`, `already_member`, `revoked`,
`not_member`) and raises a `GrantError` for everything else. Graph's answers are classified by status
and error code; the message text is read only where the code is too broad (``Request_BadRequest`` for
"already exist", and the id a ``404`` names, to tell a missing target from a missing member). Where a
``404`` names neither, a ``GET`` of the target decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Final

from shared.contract import Action, AdministrativeUnit, GrantCommand, Guid, Target
from shared.errors import GraphAnswer, PermanentError, Reason, TransientError
from shared.graph import GraphClient, GraphResponse, path, raise_for_graph

__all__ = ["Outcome", "Result", "handle_grant"]

AU_PERMISSION: Final = "AdministrativeUnit.ReadWrite.All"
ROLE_PERMISSION: Final = "RoleManagement.ReadWrite.Directory"


class Outcome(StrEnum):
    """The successful ends of a grant command; each completes the message."""

    GRANTED = "granted"
    ALREADY_MEMBER = "already_member"
    REVOKED = "revoked"
    NOT_MEMBER = "not_member"


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    description: str
    graph: GraphAnswer | None


@dataclass(frozen=True, slots=True)
class _Route:
    """Where a target lives in Graph, and how to name it to a person."""

    segments: tuple[str, ...]
    label: str
    permission: str
    template_id: Guid | None = None


class _Missing(Enum):
    TARGET = "target"
    MEMBER = "member"


async def handle_grant(command: GrantCommand, *, graph: GraphClient, activate_roles: bool) -> Result:
    """Add or remove the command's member; activate a role by template first if allowed and needed."""
    route = _route(command.target)
    if command.action is Action.ADD:
        return await _add(command, route, graph, activate_roles=activate_roles)
    return await _remove(command, route, graph)


def _route(target: Target) -> _Route:
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


async def _add(command: GrantCommand, route: _Route, graph: GraphClient, *, activate_roles: bool) -> Result:
    member = command.member.id
    body = {"@odata.id": graph.directory_object_url(member)}
    activated = False
    while True:
        response = await graph.send("POST", path(*route.segments, "members", "$ref"), json_body=body)
        if response.status == 204:
            return Result(Outcome.GRANTED, f"added {_member_label(command)} to {route.label}", response.answer())
        if _already_exists(response, "already exist"):
            return Result(
                Outcome.ALREADY_MEMBER,
                f"{_member_label(command)} was already in {route.label}",
                response.answer(),
            )
        if response.status != 404:
            raise_for_graph(response, permission=route.permission)
        if await _which_missing(response, route, member, graph) is _Missing.MEMBER:
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


async def _remove(command: GrantCommand, route: _Route, graph: GraphClient) -> Result:
    member = command.member.id
    response = await graph.send("DELETE", path(*route.segments, "members", member, "$ref"))
    if response.status == 204:
        return Result(Outcome.REVOKED, f"removed {_member_label(command)} from {route.label}", response.answer())
    not_member = Result(Outcome.NOT_MEMBER, f"{_member_label(command)} was not in {route.label}", response.answer())
    if _already_exists(response, "removed object references do not exist"):
        return not_member
    if response.status != 404:
        raise_for_graph(response, permission=route.permission)
    # Graph has been seen to name the container in a 404 for a non-member: only a GET of the target decides.
    if await _which_missing(response, route, member, graph, trust_target_id=False) is _Missing.MEMBER:
        return not_member
    if route.template_id is not None:
        return Result(
            Outcome.NOT_MEMBER,
            f"{route.label} is not activated in this tenant, so {_member_label(command)} does not hold it",
            response.answer(),
        )
    raise _target_not_found(route, response)


async def _which_missing(
    response: GraphResponse, route: _Route, member: Guid, graph: GraphClient, *, trust_target_id: bool = True
) -> _Missing:
    """Tell which object a 404 was about: the id Graph names, or else a GET of the target."""
    message = (response.error_message or "").lower()
    if member in message:
        return _Missing.MEMBER
    if trust_target_id and (route.template_id or route.segments[-1]) in message:
        return _Missing.TARGET
    probe = await graph.send("GET", path(*route.segments))
    if probe.status == 200:
        return _Missing.MEMBER
    if probe.status == 404:
        return _Missing.TARGET
    raise_for_graph(probe, permission=route.permission)


async def _activate(template_id: Guid, graph: GraphClient) -> None:
    """Activate a role from its template; an answer saying it already exists counts as done."""
    response = await graph.send("POST", path("directoryRoles"), json_body={"roleTemplateId": template_id})
    if response.status in (200, 201) or _already_exists(response, "conflicting object", "already exist"):
        return
    if response.status in (400, 404):
        raise PermanentError(
            Reason.TARGET_NOT_FOUND,
            f"role template {template_id} could not be activated: Graph answered {response.status} "
            f"{response.error_code}: {response.error_message}",
            graph=response.answer(),
        )
    raise_for_graph(response, permission=ROLE_PERMISSION)


def _already_exists(response: GraphResponse, *phrases: str) -> bool:
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
