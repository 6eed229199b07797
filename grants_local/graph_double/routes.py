"""The Graph double's routes: which paths and methods exist (only the forms Graph documents), and which directory
operation answers each.

`routes` maps a request's path segments to its permission kind (what `GraphDouble.deny` refuses) and its handlers by
method; an unknown segment is ``400 BadRequest`` "Resource not found for the segment", as Graph answers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal

from grants_local.graph_double.answers import INSUFFICIENT, GraphError, Reply, unknown_segment
from grants_local.graph_double.directory import (
    GRAPH_APP_ID,
    Directory,
    graph_service_principal_json,
    unit_json,
    unit_select,
)
from grants_local.graph_double.paging import Listing, narrowed

__all__ = ["DENIALS", "Handlers", "PermissionKind", "routes"]

PermissionKind = Literal["administrativeUnit", "directoryRole", "roleEligibility", "roleAssignment"]
Handlers = Mapping[str, Callable[[], Reply]]


def _scope_not_granted(permission: str) -> str:
    return json.dumps(
        {
            "errorCode": "PermissionScopeNotGranted",
            "message": f"Authorization failed due to missing permission scope {permission},"
            "RoleManagement.ReadWrite.Directory.",
            "instanceAnnotations": [],
        },
        separators=(",", ":"),
    )


#: How a write of each kind is refused while `GraphDouble.deny` says so: Graph's ``403`` for a missing permission
#: (the PIM requests' as reported for them: ``UnknownError`` with PermissionScopeNotGranted in the message).
DENIALS: Final[Mapping[PermissionKind, tuple[str, str]]] = {
    "administrativeUnit": ("Authorization_RequestDenied", INSUFFICIENT),
    "directoryRole": ("Authorization_RequestDenied", INSUFFICIENT),
    "roleEligibility": ("UnknownError", _scope_not_granted("RoleEligibilitySchedule.ReadWrite.Directory")),
    "roleAssignment": ("UnknownError", _scope_not_granted("RoleAssignmentSchedule.ReadWrite.Directory")),
}

#: ``directoryRoles(roleTemplateId='{t}')``, lower-cased: a role by its template, Graph's alternate key.
_ROLE_BY_TEMPLATE: Final = re.compile(r"directoryroles\(roletemplateid='([0-9a-f-]{36})'\)")


def routes(
    directory: Directory, segments: list[str], body: Any, listing: Listing
) -> tuple[PermissionKind | None, Handlers]:
    """The permission kind and the handlers by method of the path `segments` (relative to Graph's root)."""
    lower = [segment.lower() for segment in segments]
    if lower[:2] == ["directory", "administrativeunits"]:
        return "administrativeUnit", _unit_routes(directory, segments[2:], body, listing)
    if lower[:1] == ["directoryroles"]:
        return "directoryRole", _role_routes(directory, segments[1:], body, listing)
    if (by_template := _ROLE_BY_TEMPLATE.fullmatch(lower[0])) is not None:
        role = f"roletemplateid={by_template.group(1)}"
        return "directoryRole", _role_routes(directory, [role, *segments[1:]], body, listing, alternate_key=True)
    if lower[:2] == ["rolemanagement", "directory"]:
        return _role_management_routes(directory, segments[2:], body, listing)
    if lower[:1] == ["directoryobjects"] and len(segments) == 2:
        return None, {"GET": lambda: (200, directory.object_json(directory.object(segments[1])))}
    if lower == [f"serviceprincipals(appid='{GRAPH_APP_ID}')"]:
        return None, {"GET": lambda: (200, graph_service_principal_json())}
    if lower[:1] == ["serviceprincipals"] and lower[2:] == ["approleassignments"] and len(segments) == 3:
        return None, {"GET": lambda: (200, directory.app_role_assignments_json(segments[1]))}
    raise unknown_segment(segments[-1] if lower[:1] == ["directoryobjects"] else segments[0])


def _role_management_routes(
    directory: Directory, rest: list[str], body: Any, listing: Listing
) -> tuple[PermissionKind | None, Handlers]:
    """``/roleManagement/directory``: PIM's schedule requests (``POST``) and schedules (``GET``, filtered and paged),
    and a role definition by id."""
    lower = [segment.lower() for segment in rest]
    match lower:
        case ["roleeligibilityschedulerequests"]:
            return "roleEligibility", {"POST": lambda: directory.schedule_request("eligibility", body)}
        case ["roleassignmentschedulerequests"]:
            return "roleAssignment", {"POST": lambda: directory.schedule_request("assignment", body)}
        case ["roleeligibilityschedules"]:
            return None, {"GET": lambda: (200, directory.schedules_page("eligibility", listing))}
        case ["roleassignmentschedules"]:
            return None, {"GET": lambda: (200, directory.schedules_page("assignment", listing))}
        case ["roledefinitions", definition_id]:
            return None, {"GET": lambda: (200, directory.definition_json(definition_id))}
    raise unknown_segment(rest[-1] if rest else "directory")


def _unit_routes(directory: Directory, rest: list[str], body: Any, listing: Listing) -> Handlers:
    lower = [segment.lower() for segment in rest]
    match lower:
        case []:
            return {"GET": lambda: (200, {"value": [unit_json(unit) for unit in directory.units.values()]})}
        case [unit_id]:
            return {"GET": lambda: (200, narrowed(unit_json(directory.unit(unit_id)), unit_select(listing)))}
        case [unit_id, "members", *member]:
            return _member_routes(
                directory,
                member,
                rest,
                lambda: directory.unit(unit_id).members,
                lambda: directory.add_unit_member(unit_id, body),
                listing,
                paged=True,
                remove=lambda member_id: directory.remove_unit_member(unit_id, member_id),
            )
        case [unit_id, "scopedrolemembers"]:
            return {
                "GET": lambda: (200, directory.scoped_page(directory.unit(unit_id), listing)),
                "POST": lambda: directory.add_scoped(unit_id, body),
            }
        case [unit_id, "scopedrolemembers", membership_id]:
            return {
                "GET": lambda: (200, directory.scoped_one(unit_id, membership_id)),
                "DELETE": lambda: directory.remove_scoped(unit_id, membership_id),
            }
    raise unknown_segment(rest[-1])


def _role_routes(
    directory: Directory, rest: list[str], body: Any, listing: Listing, *, alternate_key: bool = False
) -> Handlers:
    """``/directoryRoles`` and a role under it: by id; ``(roleTemplateId='{t}')``, Graph's alternate key
    (`alternate_key`); or ``roleTemplateId={t}`` as a key segment, which Graph documents only for adding a member
    (``POST .../members/$ref``): any other request naming it is refused as Graph refuses a key that is not an
    object id."""
    lower = [segment.lower() for segment in rest]
    if lower and lower[0].startswith("roletemplateid=") and not alternate_key and lower[1:] != ["members", "$ref"]:
        raise GraphError(400, "Request_BadRequest", f"Invalid object identifier '{rest[0]}'.")
    match lower:
        case []:
            return {
                "GET": lambda: (
                    200,
                    {"value": [directory.object_json(t) for t in directory.templates.values() if t.role_id]},
                ),
                "POST": lambda: directory.activate_by_body(body),
            }
        case [role]:
            return {"GET": lambda: (200, directory.object_json(directory.role(role)))}
        case [role, "members", *member]:
            return _member_routes(
                directory,
                member,
                rest,
                lambda: directory.role(role).members,
                lambda: directory.add_role_member(role, body),
                listing,
                paged=False,
                by_key=False,
            )
    raise unknown_segment(rest[-1])


def _member_routes(
    directory: Directory,
    member: list[str],
    rest: list[str],
    members: Callable[[], set[str]],
    add: Callable[[], Reply],
    listing: Listing,
    *,
    paged: bool,
    by_key: bool = True,
    remove: Callable[[str], Reply] | None = None,
) -> Handlers:
    """``members``, ``members/$ref``, ``members/{id}`` and ``members/{id}/$ref`` of a unit or a role
    (`member`: the lower-cased segments after ``members``; `members`: the container's member set; `paged`:
    the list takes ``$top`` and pages, else it is one page of at most `ROLE_MEMBERS_LIMIT`; `by_key`: one
    member can be read (a unit's: Graph documents no read of one role member, so a role's is refused);
    `remove`: the container's own removal, else one from `members`)."""
    match member:
        case []:
            return {"GET": lambda: (200, directory.members_page(members(), listing, paged=paged))}
        case ["$ref"]:
            return {"POST": add}
        case [member_id] if by_key:
            return {"GET": lambda: directory.get_member(members(), member_id)}
        case [member_id, "$ref"]:
            if remove is not None:
                return {"DELETE": lambda: remove(member_id)}
            return {"DELETE": lambda: directory.remove_member(members(), member_id)}
    raise unknown_segment(rest[-1])
