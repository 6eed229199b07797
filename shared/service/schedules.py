"""PIM mechanics: carry out one grant command for a PIM target (eligible or active role, at the tenant's or a unit's
scope) with a schedule request, and say what happened.

`change_schedule` sends ``POST /roleManagement/directory/roleEligibilityScheduleRequests`` (or
``roleAssignmentScheduleRequests``) with the body `shared.core.schedules.schedule_request` builds, and maps Graph's
answer:

- ``201``: ``granted`` (add) or ``revoked`` (remove), once the answer's ``directoryScopeId``, ``roleDefinitionId``
  and ``principalId`` are the ones asked; any other is dead-lettered `ScopeMismatch` naming what PIM answered (a
  request for a unit's scope answered ``/`` may have made a tenant-wide assignment: never reported as the scoped
  grant asked for);
- ``400 RoleAssignmentExists``: ``already_member``; a removal of nothing (``400 RoleAssignmentDoesNotExist``, or
  ``404``): ``not_member`` (so the app's own removal at ``expiresAt`` is idempotent against Entra's own expiry);
- ``400 RoleAssignmentRequestPolicyValidationFailed`` (the role's PIM settings: no permanent eligibility, an expiry
  longer than the role allows…): dead-lettered `RolePolicyViolation` naming the failed rules from Graph's message;
- the role definition or the scope's unit not found (``RoleNotFound``, or another ``400``/``404`` after which a read
  of the definition or the unit answers ``404``): `TargetNotFound`; the member not found: `MemberNotFound` (retried:
  replication); a group that is not role-assignable: `UnsupportedMember`;
- ``403``: `Forbidden`, naming ``RoleEligibilitySchedule.ReadWrite.Directory`` or
  ``RoleAssignmentSchedule.ReadWrite.Directory``; throttling, 5xx and the rest as `raise_for_graph` says.

A dry run reads the target's schedules for the member (`shared.adapters.directory.schedules_path`) and, for an add
that would be made, that the role definition, the unit and the member exist: ``would_grant``, ``already_member``,
``would_revoke`` or ``not_member``; nothing is written.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from shared.adapters.directory import schedule_principal_ids, schedules_path
from shared.adapters.graph import GraphClient, GraphResponse, path, raise_for_graph
from shared.core.contract import Action, GrantCommand, Guid, RoleSchedule
from shared.core.errors import PermanentError, Reason, TransientError
from shared.core.schedules import (
    POLICY_VALIDATION_FAILED,
    ROLE_ASSIGNMENT_DOES_NOT_EXIST,
    ROLE_ASSIGNMENT_EXISTS,
    ROLE_NOT_FOUND,
    ScheduleKind,
    describe_rules,
    failed_rules,
    graph_time,
    kind_of,
    schedule_label,
    schedule_request,
)
from shared.core.statuses import Status
from shared.service.membership import Result

__all__ = ["change_schedule"]

#: Graph's words for a group that cannot hold a role (it is not role-assignable).
_NOT_ASSIGNABLE: Final = "isassignabletorole"
_DEFINITION_PERMISSION: Final = "RoleManagement.Read.Directory"
_UNIT_PERMISSION: Final = "AdministrativeUnit.Read.All"


async def change_schedule(
    command: GrantCommand, target: RoleSchedule, *, graph: GraphClient, now: datetime, dry_run: bool = False
) -> Result:
    """Carry out `command` for its PIM `target` at `now` through a schedule request (see the module docstring); with
    `dry_run`, only read."""
    if dry_run:
        return await _preview(command, target, graph)
    kind = kind_of(target)
    body = schedule_request(command, target, now=now)
    response = await graph.send("POST", path("roleManagement", "directory", kind.requests), json_body=body)
    add = command.action is Action.ADD
    who = _member_label(command)
    where = schedule_label(target)
    if response.status in (200, 201):
        _check_answer(response, body, kind, target)
        if add:
            until = f" until {graph_time(command.expires_at)}" if command.expires_at is not None else ", permanently"
            return Result(
                Status.GRANTED, f"made {who} {kind.holding} {where}{until}{_pim(response)}", response.answer()
            )
        return Result(Status.REVOKED, f"ended the {kind.noun} of {who} for {where}{_pim(response)}", response.answer())
    code = response.error_code
    if add and response.status == 400 and code == ROLE_ASSIGNMENT_EXISTS:
        return Result(Status.ALREADY_MEMBER, f"{who} was already {kind.holding} {where}", response.answer())
    if not add and (response.status == 404 or (response.status == 400 and code == ROLE_ASSIGNMENT_DOES_NOT_EXIST)):
        return Result(Status.NOT_MEMBER, f"{who} was not {kind.holding} {where}", response.answer())
    if response.status == 400 and code == POLICY_VALIDATION_FAILED:
        rules = failed_rules(response.error_message)
        raise PermanentError(
            Reason.ROLE_POLICY_VIOLATION,
            f"PIM's settings for role definition {target.role_definition_id} refused to make {who} "
            f"{kind.holding} it at scope {target.directory_scope_id}: {describe_rules(rules)}. Change the request "
            f"(an expiresAt the role allows) or the role's settings in PIM (Graph: {code}: {response.error_message})",
            graph=response.answer(),
        )
    if response.status == 400 and _NOT_ASSIGNABLE in (response.error_message or "").lower():
        raise PermanentError(
            Reason.UNSUPPORTED_MEMBER,
            f"{who} cannot be {kind.holding} {where} (Graph: {response.error_message})",
            graph=response.answer(),
        )
    if response.status not in (400, 404):
        raise_for_graph(response, permission=kind.permission)
    if code == ROLE_NOT_FOUND:
        raise _not_found(f"role definition {target.role_definition_id}", response)
    await _which_missing(command, target, response, graph)
    raise_for_graph(response, permission=kind.permission)


def _check_answer(response: GraphResponse, asked: dict[str, Any], kind: ScheduleKind, target: RoleSchedule) -> None:
    """Raise `PermanentError(ScopeMismatch)` when PIM's answer names another directory scope, role definition or
    principal than the request (a missing value is not a mismatch)."""
    answered: Any = response.body or {}
    for name in ("directoryScopeId", "roleDefinitionId", "principalId"):
        said = answered.get(name)
        if isinstance(said, str) and said.lower() != str(asked[name]).lower():
            tenant_wide = " (tenant-wide)" if name == "directoryScopeId" and said == "/" else ""
            raise PermanentError(
                Reason.SCOPE_MISMATCH,
                f"PIM answered the {kind.noun} request for {schedule_label(target)} with {name} {said!r}{tenant_wide}, "
                f"not {asked[name]!r}: it was not reported as granted. Check the member's {kind.schedules} "
                f"(schedule request {answered.get('id')}) and remove what was not asked for; a unit created moments "
                "ago may not be known to PIM yet",
                graph=response.answer(),
            )


async def _which_missing(
    command: GrantCommand, target: RoleSchedule, response: GraphResponse, graph: GraphClient
) -> None:
    """After a ``400``/``404`` Graph gave no reason of its own for: raise `TargetNotFound` when the role definition or
    the scope's unit does not exist, `MemberNotFound` (transient) when the member does not (yet); return otherwise."""
    await _scope_exists(target, graph)
    await _member_exists(command, graph, missing=response)


async def _scope_exists(target: RoleSchedule, graph: GraphClient) -> None:
    """Raise `TargetNotFound` when the role definition or the scope's unit does not exist (one GET each)."""
    definition = await graph.send(
        "GET", path("roleManagement", "directory", "roleDefinitions", target.role_definition_id)
    )
    if definition.status == 404:
        raise _not_found(f"role definition {target.role_definition_id}", definition)
    if definition.status != 200:
        raise_for_graph(definition, permission=_DEFINITION_PERMISSION)
    if target.unit is not None:
        unit = await graph.send("GET", path("directory", "administrativeUnits", target.unit))
        if unit.status == 404:
            raise _not_found(f"administrative unit {target.unit} (the scope {target.directory_scope_id})", unit)
        if unit.status != 200:
            raise_for_graph(unit, permission=_UNIT_PERMISSION)


async def _member_exists(command: GrantCommand, graph: GraphClient, *, missing: GraphResponse | None) -> GraphResponse:
    """``GET /directoryObjects/{member}``'s answer; `TransientError(MemberNotFound)` when it is ``404``."""
    found = await graph.send("GET", path("directoryObjects", command.member.id))
    if found.status == 404:
        raise TransientError(
            Reason.MEMBER_NOT_FOUND,
            f"{_member_label(command)} does not exist in the directory (yet): a principal created moments ago can "
            "take a minute or two to replicate.",
            graph=(missing or found).answer(),
        )
    if found.status != 200:
        raise_for_graph(found, permission="Directory.Read.All")
    return found


async def _preview(command: GrantCommand, target: RoleSchedule, graph: GraphClient) -> Result:
    """Dry run: the member's schedules for the target (GETs only); for an add that would be made, the definition, the
    unit and the member are read too."""
    kind = kind_of(target)
    who = _member_label(command)
    where = schedule_label(target)
    held, answer = await _holds(command.member.id, target, graph)
    add = command.action is Action.ADD
    if held:
        if add:
            return Result(Status.ALREADY_MEMBER, f"{who} is already {kind.holding} {where} (dry run)", answer)
        return Result(Status.WOULD_REVOKE, f"would end the {kind.noun} of {who} for {where} (dry run)", answer)
    if not add:
        return Result(Status.NOT_MEMBER, f"{who} is not {kind.holding} {where} (dry run)", answer)
    await _scope_exists(target, graph)
    found = await _member_exists(command, graph, missing=None)
    until = f" until {graph_time(command.expires_at)}" if command.expires_at is not None else ", permanently"
    return Result(Status.WOULD_GRANT, f"would make {who} {kind.holding} {where}{until} (dry run)", found.answer())


async def _holds(member: Guid, target: RoleSchedule, graph: GraphClient) -> tuple[bool, Any]:
    """Whether a schedule of `target` names `member` (every page read), and Graph's last answer."""
    kind = kind_of(target)
    url_path: str | None = schedules_path(target, member=member)
    while True:
        assert url_path is not None
        listing = await graph.send("GET", url_path)
        if listing.status != 200:
            raise_for_graph(listing, permission=f"{kind.read_permission} (or {kind.permission})")
        if member in schedule_principal_ids(listing):
            return True, listing.answer()
        url_path = graph.relative((listing.body or {}).get("@odata.nextLink"))
        if url_path is None:
            return False, listing.answer()


def _not_found(what: str, response: GraphResponse) -> PermanentError:
    return PermanentError(
        Reason.TARGET_NOT_FOUND,
        f"{what} does not exist in this tenant (Graph: {response.error_code}: {response.error_message})",
        graph=response.answer(),
    )


def _pim(response: GraphResponse) -> str:
    """``(PIM request <id>, <status>)`` from a schedule request's answer, when it has them."""
    body: Any = response.body or {}
    request_id, status = body.get("id"), body.get("status")
    return f" (PIM request {request_id}, {status})" if isinstance(request_id, str) and isinstance(status, str) else ""


def _member_label(command: GrantCommand) -> str:
    return f"{command.member.type or 'member'} {command.member.id}"
