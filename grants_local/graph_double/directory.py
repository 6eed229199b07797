"""The Graph double's directory: principals, administrative units, directory roles, and what each write does to them.

`Directory` holds the state and carries out each operation as Graph would, raising `GraphError` with Graph's code and
words; it is not thread-safe (`GraphDouble` calls it with its lock held). Its ``*_json`` methods render objects as
Graph lists them.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from grants_local.graph_double.answers import (
    ALREADY_EXIST,
    BAD_JSON,
    CONFLICT,
    DYNAMIC_MEMBERSHIP,
    INSUFFICIENT,
    NOT_ASSIGNABLE,
    UNSUPPORTED_MEMBER,
    GraphError,
    Reply,
    guid,
    invalid_property,
    not_found,
    referenced_id,
)
from grants_local.graph_double.paging import (
    PROPERTIES,
    ROLE_MEMBERS_LIMIT,
    ROLES_NOT_PAGED,
    Listing,
    page,
    page_size,
    selected,
)

__all__ = [
    "GRAPH_APP_ID",
    "GRAPH_APP_ROLES",
    "GRAPH_SERVICE_PRINCIPAL_ID",
    "Directory",
    "PimKind",
    "PrincipalType",
    "RoleSettings",
    "Schedule",
    "graph_service_principal_json",
    "unit_json",
]

PrincipalType = Literal["user", "group", "servicePrincipal", "device"]
#: PIM's two kinds of role assignment: an eligibility (the member may activate the role) and an active assignment.
PimKind = Literal["eligibility", "assignment"]

#: Microsoft Graph's application id (the same in every tenant and cloud), and this double's object id for its
#: service principal (in a real tenant, one per tenant).
GRAPH_APP_ID: Final = "00000003-0000-0000-c000-000000000000"
GRAPH_SERVICE_PRINCIPAL_ID: Final = "9a000000-0000-4000-8000-00000000a991"
#: Application permissions Graph offers (a few), by name: their app role ids, the same in every tenant.
GRAPH_APP_ROLES: Final[Mapping[str, str]] = {
    "AdministrativeUnit.ReadWrite.All": "5eb59dd3-1da2-4329-8733-9dabdc435916",
    "RoleManagement.ReadWrite.Directory": "9e3f62cf-ca93-4989-b6ce-bf83c28f9fe8",
    "Directory.Read.All": "7ab1d382-f21e-4acd-a863-ba3e13f7da61",
    "RoleEligibilitySchedule.ReadWrite.Directory": "fee28b28-e1f3-4841-818e-2704dc62245f",
    "RoleAssignmentSchedule.ReadWrite.Directory": "dd199f4a-f148-40a4-a2ec-f0069cc799ec",
}

#: Graph's codes and words for PIM's answers (the words of a role-settings refusal as Graph's message gives them:
#: ``The following policy rules failed: ["ExpirationRule"]``).
ROLE_ASSIGNMENT_EXISTS: Final = ("RoleAssignmentExists", "The Role assignment already exists.")
ROLE_ASSIGNMENT_DOES_NOT_EXIST: Final = ("RoleAssignmentDoesNotExist", "The Role assignment does not exist.")
POLICY_VALIDATION_FAILED: Final = "RoleAssignmentRequestPolicyValidationFailed"
#: The double's own words (no Graph text was found to copy) for a role definition PIM does not know, a scope whose
#: unit does not exist, a service principal made eligible, and a schedule request it cannot read.
ROLE_NOT_FOUND: Final = ("RoleNotFound", "The role definition was not found (Graph double).")
_UNKNOWN_SCOPE: Final = "The directory scope was not found (Graph double)."
_NOT_ELIGIBLE: Final = "A service principal cannot be made eligible for a role (Graph double)."
_SCOPE: Final = re.compile(r"/administrativeUnits/([0-9a-fA-F-]{36})")
#: The properties of a schedule request (unifiedRoleEligibilityScheduleRequest and unifiedRoleAssignmentScheduleRequest,
#: with their base type, request) and of its complex values, from Graph's v1.0 description: anything else is refused.
_REQUEST_PROPERTIES: Final = frozenset(
    {
        "action",
        "appScopeId",
        "directoryScopeId",
        "isValidationOnly",
        "justification",
        "principalId",
        "roleDefinitionId",
        "scheduleInfo",
        "targetScheduleId",
        "ticketInfo",
        "approvalId",
        "completedDateTime",
        "createdBy",
        "createdDateTime",
        "customData",
        "status",
        "id",
    }
)
_COMPLEX_PROPERTIES: Final[Mapping[str, frozenset[str]]] = {
    "scheduleInfo": frozenset({"startDateTime", "expiration", "recurrence"}),
    "expiration": frozenset({"type", "endDateTime", "duration"}),
    "ticketInfo": frozenset({"ticketNumber", "ticketSystem"}),
}
_PIM_ENTITY: Final[Mapping[PimKind, str]] = {
    "eligibility": "unifiedRoleEligibilityScheduleRequest",
    "assignment": "unifiedRoleAssignmentScheduleRequest",
}
_FILTERABLE: Final = ("principalId", "roleDefinitionId", "directoryScopeId")
_CLAUSE: Final = re.compile(r"\s*([A-Za-z]+)\s+eq\s+'([^']*)'\s*")
_DURATION: Final = re.compile(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?)?")


@dataclass(frozen=True, slots=True, kw_only=True)
class RoleSettings:
    """PIM's settings of one role for admins' requests, as far as the double models them (the expiration rules):
    the longest eligibility and active assignment (None: no limit), and whether each may be permanent. A request
    they refuse is ``400 RoleAssignmentRequestPolicyValidationFailed`` naming ``ExpirationRule``."""

    eligible_max: timedelta | None = None
    eligible_permanent: bool = True
    active_max: timedelta | None = None
    active_permanent: bool = True


@dataclass(slots=True)
class Schedule:
    """A PIM schedule: `kind` of role definition `definition` at `scope`, held by `principal` from `start` until
    `end` (None: no expiration); `request` is the schedule request that made it."""

    id: str
    kind: PimKind
    principal: str
    definition: str
    scope: str
    start: datetime
    end: datetime | None
    request: str


@dataclass(slots=True)
class RoleDefinition:
    """A custom role's definition (a built-in role's is its template's)."""

    id: str
    display_name: str


@dataclass(slots=True)
class Principal:
    id: str
    type: PrincipalType
    display_name: str
    is_assignable_to_role: bool
    lookups_left: int
    visible_at: float


@dataclass(slots=True)
class AdministrativeUnit:
    id: str
    display_name: str
    members: set[str] = field(default_factory=set)
    scoped: dict[str, tuple[str, str]] = field(default_factory=dict)  # membership id -> (role id, member id)
    restricted: bool = False  # isMemberManagementRestricted: the app's permissions do not apply inside it
    membership_rule: str | None = None  # a dynamic unit's rule (membershipType Dynamic): its members are the rule's
    app_scoped: bool = False  # the app holds a role at this unit's scope: a restricted unit takes its writes


@dataclass(slots=True)
class RoleTemplate:
    id: str
    display_name: str
    role_id: str | None  # the activated role's id; None while not activated
    preset_role_id: str | None
    members: set[str] = field(default_factory=set)


class Directory:
    """The directory's objects; time for replication delays from `clock` (see `GraphDouble`); PIM's schedules start
    and end on `now`."""

    def __init__(self, *, clock: Callable[[], float], now: Callable[[], datetime]) -> None:
        self.clock = clock
        self.now = now
        self.definitions: dict[str, RoleDefinition] = {}  # custom roles' definitions, by id
        self.settings: dict[str, RoleSettings] = {}  # PIM's settings, by role definition id
        self.schedules: dict[tuple[PimKind, str, str, str], Schedule] = {}  # (kind, definition, scope, principal)
        self.pim_unaware: set[str] = set()  # units whose scope PIM does not know yet: requests land at "/"
        self.principals: dict[str, Principal] = {}
        self.units: dict[str, AdministrativeUnit] = {}
        self.templates: dict[str, RoleTemplate] = {}
        self.roles: dict[str, str] = {}  # role id -> template id
        self.app_roles: dict[str, set[str]] = {}  # service principal id -> Graph app role ids granted to it

    # --- finding objects ---------------------------------------------------------------------------------

    def visible(self, object_id: str) -> Principal:
        """The principal, unless it is unknown or not replicated yet (each call counts as a lookup)."""
        principal = self.principals.get(guid(object_id))
        if principal is None:
            raise not_found(object_id)
        if principal.lookups_left > 0:
            principal.lookups_left -= 1
            raise not_found(object_id)
        if self.clock() < principal.visible_at:
            raise not_found(object_id)
        return principal

    def object(self, object_id: str) -> Principal | AdministrativeUnit | RoleTemplate:
        key = guid(object_id)
        if key in self.units:
            return self.units[key]
        if key in self.roles:
            return self.templates[self.roles[key]]
        return self.visible(key)

    def unit(self, unit_id: str) -> AdministrativeUnit:
        unit = self.units.get(guid(unit_id))
        if unit is None:
            raise not_found(unit_id)
        return unit

    def role(self, segment: str) -> RoleTemplate:
        """The activated role a path segment names: ``{roleId}`` or ``roleTemplateId={templateId}``."""
        name, equals, template_id = segment.partition("=")
        if equals and name == "roletemplateid":
            template = self.templates.get(guid(template_id))
            if template is None or template.role_id is None:
                raise not_found(template_id)
            return template
        template_key = self.roles.get(guid(segment))
        if template_key is None:
            raise not_found(segment)
        return self.templates[template_key]

    def container(self, key: str) -> set[str]:
        """The live member set of a unit, a role, or an activated template's role; KeyError else."""
        if key in self.units:
            return self.units[key].members
        if key in self.roles:
            return self.templates[self.roles[key]].members
        template = self.templates[key]
        if template.role_id is None:
            raise KeyError(f"role template {key} is not activated")
        return template.members

    def activated_role(self, template_id: str) -> str:
        role_id = self.templates[template_id].role_id
        if role_id is None:
            raise KeyError(f"role template {template_id} is not activated")
        return role_id

    # --- seeding -------------------------------------------------------------------------------------------

    def add_principal(
        self,
        key: str,
        kind: PrincipalType,
        *,
        display_name: str,
        is_assignable_to_role: bool,
        visible_after_lookups: int,
        visible_after_seconds: float,
    ) -> None:
        visible_at = self.clock() + visible_after_seconds if visible_after_seconds else 0.0
        self.principals[key] = Principal(
            key, kind, display_name or f"{kind} {key}", is_assignable_to_role, visible_after_lookups, visible_at
        )

    def activate(self, template: RoleTemplate) -> None:
        template.role_id = template.preset_role_id or str(uuid.uuid4())
        self.roles[template.role_id] = template.id

    # --- units ---------------------------------------------------------------------------------------------

    def add_unit_member(self, unit_id: str, body: Any) -> Reply:
        unit = self.unit(unit_id)
        self.writable(unit)
        member = self.visible(referenced_id(body))
        if member.type not in ("user", "group", "device"):
            raise GraphError(400, "Request_BadRequest", UNSUPPORTED_MEMBER)
        if member.id in unit.members:
            raise GraphError(400, "Request_BadRequest", ALREADY_EXIST)
        unit.members.add(member.id)
        return 204, None

    def remove_unit_member(self, unit_id: str, member_id: str) -> Reply:
        unit = self.unit(unit_id)
        self.writable(unit)
        return self.remove_member(unit.members, member_id)

    @staticmethod
    def writable(unit: AdministrativeUnit) -> None:
        """A restricted-management unit refuses the app's membership writes (``403``, as for a missing permission:
        Graph's application permissions do not apply inside it) unless the app holds a role at its scope; a
        dynamic one refuses every manual add and remove (``400``)."""
        if unit.restricted and not unit.app_scoped:
            raise GraphError(403, "Authorization_RequestDenied", INSUFFICIENT)
        if unit.membership_rule is not None:
            raise GraphError(400, "Request_BadRequest", DYNAMIC_MEMBERSHIP)

    def add_scoped(self, unit_id: str, body: Any) -> Reply:
        unit = self.unit(unit_id)
        role_id = body.get("roleId") if isinstance(body, dict) else None
        info = body.get("roleMemberInfo") if isinstance(body, dict) else None
        member_id = info.get("id") if isinstance(info, dict) else None
        if not isinstance(role_id, str):
            raise invalid_property("roleId", "ScopedRoleMembership", body)
        if not isinstance(member_id, str):
            raise invalid_property("roleMemberInfo", "ScopedRoleMembership", body)
        if guid(role_id) not in self.roles:
            raise not_found(role_id)
        member = self.visible(member_id)
        if member.type in ("device", "servicePrincipal"):
            raise GraphError(400, "Request_BadRequest", UNSUPPORTED_MEMBER)
        if (guid(role_id), member.id) in unit.scoped.values():
            raise GraphError(400, "Request_BadRequest", CONFLICT)
        membership_id = secrets.token_hex(24)
        unit.scoped[membership_id] = (guid(role_id), member.id)
        return 201, scoped_membership(unit.id, membership_id, *unit.scoped[membership_id])

    def scoped_one(self, unit_id: str, membership_id: str) -> dict[str, Any]:
        unit = self.unit(unit_id)
        if membership_id not in unit.scoped:
            raise not_found(membership_id)
        return scoped_membership(unit.id, membership_id, *unit.scoped[membership_id])

    def remove_scoped(self, unit_id: str, membership_id: str) -> Reply:
        unit = self.unit(unit_id)
        if unit.scoped.pop(membership_id, None) is None:
            raise not_found(membership_id)
        return 204, None

    def scoped_page(self, unit: AdministrativeUnit, listing: Listing) -> dict[str, Any]:
        """One page of a unit's scoped role memberships, ordered by membership id."""
        return page(
            listing,
            sorted(unit.scoped),
            page_size(listing.query),
            lambda key: scoped_membership(unit.id, key, *unit.scoped[key]),
            "scopedRoleMemberships",
        )

    # --- roles ---------------------------------------------------------------------------------------------

    def add_role_member(self, role: str, body: Any) -> Reply:
        template = self.role(role)
        member = self.visible(referenced_id(body))
        if member.type == "device":
            raise GraphError(400, "Request_BadRequest", UNSUPPORTED_MEMBER)
        if member.type == "group" and not member.is_assignable_to_role:
            raise GraphError(400, "Request_BadRequest", NOT_ASSIGNABLE)
        if member.id in template.members:
            raise GraphError(400, "Request_BadRequest", ALREADY_EXIST)
        template.members.add(member.id)
        return 204, None

    def activate_by_body(self, body: Any) -> Reply:
        template_id = body.get("roleTemplateId") if isinstance(body, dict) else None
        if not isinstance(template_id, str):
            raise invalid_property("roleTemplateId", "DirectoryRole", body)
        template = self.templates.get(guid(template_id))
        if template is None:
            raise not_found(template_id)
        if template.role_id is not None:
            raise GraphError(400, "Request_BadRequest", CONFLICT)
        self.activate(template)
        return 201, role_json(template)

    # --- PIM -----------------------------------------------------------------------------------------------

    def definition_json(self, definition_id: str) -> dict[str, Any]:
        """A role definition as ``GET /roleManagement/directory/roleDefinitions/{id}`` answers it: a built-in role's
        (its template's, whether activated or not) or a custom role's; ``404`` for any other id."""
        key = guid(definition_id)
        template = self.templates.get(key)
        custom = self.definitions.get(key)
        if template is None and custom is None:
            raise not_found(definition_id)
        name = template.display_name if template is not None else custom.display_name if custom else ""
        return {
            "id": key,
            "displayName": name,
            "description": None,
            "isBuiltIn": template is not None,
            "isEnabled": True,
            "resourceScopes": ["/"],
            "templateId": key,
            "version": None,
            "rolePermissions": [],
        }

    def live(self, key: tuple[PimKind, str, str, str]) -> Schedule | None:
        """The schedule `key` names, unless it has ended (Entra ends a schedule at its expiry: it is gone then)."""
        schedule = self.schedules.get(key)
        if schedule is not None and schedule.end is not None and schedule.end <= self.now():
            del self.schedules[key]
            return None
        return schedule

    def schedule_request(self, kind: PimKind, body: Any) -> Reply:
        """``POST /roleManagement/directory/role{Eligibility|Assignment}ScheduleRequests``: ``adminAssign`` makes a
        schedule (``400 RoleAssignmentExists`` when one is in place; the role's `RoleSettings` may refuse it),
        ``adminRemove`` ends one (``400 RoleAssignmentDoesNotExist`` when none is); ``201`` with the request."""
        request = self._read_request(kind, body)
        action, principal_id = request["action"], request["principalId"]
        definition = guid(request["roleDefinitionId"])
        if definition not in self.templates and definition not in self.definitions:
            raise GraphError(400, *ROLE_NOT_FOUND)
        scope = self._scope(request["directoryScopeId"])
        member = self.visible(principal_id)
        if member.type == "device":
            raise GraphError(400, "Request_BadRequest", UNSUPPORTED_MEMBER)
        if member.type == "group" and not member.is_assignable_to_role:
            raise GraphError(400, "Request_BadRequest", NOT_ASSIGNABLE)
        if member.type == "servicePrincipal" and kind == "eligibility":
            raise GraphError(400, "Request_BadRequest", _NOT_ELIGIBLE)
        unit = _SCOPE.fullmatch(scope)
        if unit is not None and unit.group(1) in self.pim_unaware:
            scope = "/"  # as reported of a freshly created unit: the request lands tenant-wide
        key = (kind, definition, scope, member.id)
        now = self.now()
        request_id = str(uuid.uuid4())
        if action == "adminRemove":
            if self.live(key) is None:
                raise GraphError(400, *ROLE_ASSIGNMENT_DOES_NOT_EXIST)
            del self.schedules[key]
            return 201, _request_json(request_id, kind, request, scope, status="Revoked", now=now, target=None)
        if self.live(key) is not None:
            raise GraphError(400, *ROLE_ASSIGNMENT_EXISTS)
        start, end = _schedule_times(request, now=now)
        self._check_settings(kind, definition, start, end)
        schedule = Schedule(str(uuid.uuid4()), kind, member.id, definition, scope, start, end, request_id)
        self.schedules[key] = schedule
        return 201, _request_json(request_id, kind, request, scope, status="Provisioned", now=now, target=schedule)

    def schedules_page(self, kind: PimKind, listing: Listing) -> dict[str, Any]:
        """One page of `kind`'s schedules in place now, narrowed by ``$filter`` (``eq`` clauses on principalId,
        roleDefinitionId and directoryScopeId, joined by ``and``), ordered by schedule id."""
        wanted = _filter(listing.query.get("$filter"))
        found = {}
        for key in list(self.schedules):
            schedule = self.live(key)
            if schedule is None or schedule.kind != kind:
                continue
            values = {
                "principalId": schedule.principal,
                "roleDefinitionId": schedule.definition,
                "directoryScopeId": schedule.scope,
            }
            if all(values[name].lower() == value.lower() for name, value in wanted):
                found[schedule.id] = schedule
        kind_name = "roleEligibilitySchedules" if kind == "eligibility" else "roleAssignmentSchedules"
        return page(listing, sorted(found), page_size(listing.query), lambda key: schedule_json(found[key]), kind_name)

    def _read_request(self, kind: PimKind, body: Any) -> dict[str, Any]:
        """The request's body, checked against the properties its type has; ``400`` for anything else."""
        if not isinstance(body, dict):
            raise GraphError(400, "BadRequest", BAD_JSON)
        entity = _PIM_ENTITY[kind]
        for name, value in body.items():
            if name not in _REQUEST_PROPERTIES:
                raise GraphError(
                    400, "BadRequest", f"The property '{name}' does not exist on type 'microsoft.graph.{entity}'."
                )
            if name in _COMPLEX_PROPERTIES and value is not None:
                _check_complex(name, value)
        for name in ("action", "principalId", "roleDefinitionId", "directoryScopeId"):
            if not isinstance(body.get(name), str):
                raise invalid_property(name, entity, body)
        if body["action"] not in ("adminAssign", "adminRemove"):
            raise invalid_property("action", entity, body)
        return body

    def _scope(self, scope: str) -> str:
        """A request's directory scope: ``/`` or a unit's that exists; ``400`` otherwise."""
        if scope == "/":
            return scope
        unit = _SCOPE.fullmatch(scope)
        if unit is None or unit.group(1).lower() not in self.units:
            raise GraphError(400, "BadRequest", _UNKNOWN_SCOPE)
        return f"/administrativeUnits/{unit.group(1).lower()}"

    def _check_settings(self, kind: PimKind, definition: str, start: datetime, end: datetime | None) -> None:
        settings = self.settings.get(definition, RoleSettings())
        longest = settings.eligible_max if kind == "eligibility" else settings.active_max
        permanent = settings.eligible_permanent if kind == "eligibility" else settings.active_permanent
        if (end is None and not permanent) or (end is not None and longest is not None and end - start > longest):
            raise GraphError(400, POLICY_VALIDATION_FAILED, 'The following policy rules failed: ["ExpirationRule"]')

    # --- members of units and roles ------------------------------------------------------------------------

    def get_member(self, members: set[str], member_id: str) -> Reply:
        member = self.visible(member_id)
        if member.id not in members:
            raise not_found(member_id)
        return 200, principal_json(member)

    @staticmethod
    def remove_member(members: set[str], member_id: str) -> Reply:
        key = guid(member_id)
        if key not in members:
            raise not_found(member_id)
        members.discard(key)
        return 204, None

    def members_page(self, members: set[str], listing: Listing, *, paged: bool) -> dict[str, Any]:
        """One page of a container's members, ordered by id (see the package docstring, Paging)."""
        if not paged and "$top" in listing.query:
            raise GraphError(400, "Request_UnsupportedQuery", ROLES_NOT_PAGED)
        known = sorted(m for m in members if m in self.principals)
        size = page_size(listing.query) if paged else ROLE_MEMBERS_LIMIT
        return page(listing, known, size, lambda m: principal_json(self.principals[m]), "directoryObjects")

    # --- service principals --------------------------------------------------------------------------------

    def app_role_assignments_json(self, principal_id: str) -> dict[str, Any]:
        principal = self.visible(principal_id)
        if principal.type != "servicePrincipal":
            raise not_found(principal_id)
        return {
            "value": [
                {
                    "id": secrets.token_urlsafe(32)[:43],
                    "appRoleId": role_id,
                    "principalId": principal.id,
                    "principalType": "ServicePrincipal",
                    "resourceId": GRAPH_SERVICE_PRINCIPAL_ID,
                    "resourceDisplayName": "Microsoft Graph",
                }
                for role_id in sorted(self.app_roles.get(principal.id, ()))
            ]
        }

    def object_json(self, item: Principal | AdministrativeUnit | RoleTemplate) -> dict[str, Any]:
        if isinstance(item, AdministrativeUnit):
            return unit_json(item)
        if isinstance(item, RoleTemplate):
            return role_json(item)
        return principal_json(item)


def role_json(template: RoleTemplate) -> dict[str, Any]:
    return {
        "@odata.type": "#microsoft.graph.directoryRole",
        "id": template.role_id,
        "roleTemplateId": template.id,
        "displayName": template.display_name,
        "description": None,
    }


def principal_json(principal: Principal) -> dict[str, Any]:
    return {
        "@odata.type": f"#microsoft.graph.{principal.type}",
        "id": principal.id,
        "displayName": principal.display_name,
    }


def graph_service_principal_json() -> dict[str, Any]:
    return {
        "id": GRAPH_SERVICE_PRINCIPAL_ID,
        "appId": GRAPH_APP_ID,
        "displayName": "Microsoft Graph",
        "appRoles": [
            {"id": role_id, "value": name, "allowedMemberTypes": ["Application"], "isEnabled": True}
            for name, role_id in GRAPH_APP_ROLES.items()
        ],
    }


def unit_json(unit: AdministrativeUnit) -> dict[str, Any]:
    dynamic = unit.membership_rule is not None
    return {
        "@odata.type": "#microsoft.graph.administrativeUnit",
        "id": unit.id,
        "displayName": unit.display_name,
        "description": None,
        "visibility": None,
        "isMemberManagementRestricted": unit.restricted,
        "membershipType": "Dynamic" if dynamic else "Assigned",
        "membershipRule": unit.membership_rule,
        "membershipRuleProcessingState": "On" if dynamic else None,
    }


def unit_select(listing: Listing) -> list[str] | None:
    """The properties a unit's ``$select`` names (``400`` for one a unit does not have)."""
    return selected(listing.query.get("$select"), PROPERTIES["administrativeUnits"])


def schedule_json(schedule: Schedule) -> dict[str, Any]:
    """A schedule as ``GET .../roleEligibilitySchedules`` (or ``roleAssignmentSchedules``) lists it."""
    item: dict[str, Any] = {
        "id": schedule.id,
        "principalId": schedule.principal,
        "roleDefinitionId": schedule.definition,
        "directoryScopeId": schedule.scope,
        "appScopeId": None,
        "createdUsing": schedule.request,
        "createdDateTime": _time(schedule.start),
        "modifiedDateTime": None,
        "status": "Provisioned",
        "memberType": "Direct",
        "scheduleInfo": {
            "startDateTime": _time(schedule.start),
            "recurrence": None,
            "expiration": _expiry(schedule.end),
        },
    }
    if schedule.kind == "assignment":
        item["assignmentType"] = "Assigned"
    return item


def _request_json(
    request_id: str,
    kind: PimKind,
    request: Mapping[str, Any],
    scope: str,
    *,
    status: str,
    now: datetime,
    target: Schedule | None,
) -> dict[str, Any]:
    """A schedule request as Graph answers its creation (``201``): what was asked, at the scope carried out."""
    return {
        "@odata.context": f"$metadata#roleManagement/directory/{_PIM_ENTITY[kind]}s/$entity",
        "id": request_id,
        "status": status,
        "createdDateTime": _time(now),
        "completedDateTime": _time(now) if target is not None else None,
        "approvalId": None,
        "customData": None,
        "action": request["action"],
        "principalId": request["principalId"],
        "roleDefinitionId": request["roleDefinitionId"],
        "directoryScopeId": scope,
        "appScopeId": None,
        "isValidationOnly": False,
        "targetScheduleId": target.id if target is not None else None,
        "justification": request.get("justification"),
        "createdBy": {"application": {"id": None, "displayName": None}, "device": None, "user": None},
        "scheduleInfo": None
        if target is None
        else {"startDateTime": _time(target.start), "recurrence": None, "expiration": _expiry(target.end)},
        "ticketInfo": {
            "ticketNumber": (request.get("ticketInfo") or {}).get("ticketNumber"),
            "ticketSystem": (request.get("ticketInfo") or {}).get("ticketSystem"),
        },
    }


def _schedule_times(request: Mapping[str, Any], *, now: datetime) -> tuple[datetime, datetime | None]:
    """An ``adminAssign``'s start (its ``scheduleInfo.startDateTime``, else now) and end (None: ``noExpiration``);
    ``400`` for a schedule the double cannot read or one that ends before it starts."""
    info = request.get("scheduleInfo")
    if not isinstance(info, dict):
        raise GraphError(400, "BadRequest", "scheduleInfo is required to assign a role (Graph double).")
    start = _read_time(info.get("startDateTime")) if info.get("startDateTime") is not None else now
    expiration = info.get("expiration") or {"type": "noExpiration"}
    kind = expiration.get("type")
    end: datetime | None
    if kind == "noExpiration":
        end = None
    elif kind == "afterDateTime":
        end = _read_time(expiration.get("endDateTime"))
    elif kind == "afterDuration":
        end = start + _read_duration(expiration.get("duration"))
    else:
        raise GraphError(400, "BadRequest", f"Invalid expiration type {kind!r} (Graph double).")
    if end is not None and end <= start:
        raise GraphError(400, "BadRequest", "The expiration is not after the start (Graph double).")
    return start, end


def _read_time(value: Any) -> datetime:
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise GraphError(400, "BadRequest", f"Cannot convert the literal '{value}' to a DateTimeOffset.") from None
    if parsed.tzinfo is None:
        raise GraphError(400, "BadRequest", f"Cannot convert the literal '{value}' to a DateTimeOffset.")
    return parsed.astimezone(UTC)


def _read_duration(value: Any) -> timedelta:
    match = _DURATION.fullmatch(str(value))
    if match is None or not any(match.groups()):
        raise GraphError(400, "BadRequest", f"Cannot convert the literal '{value}' to a Duration (Graph double).")
    days, hours, minutes = (int(part or 0) for part in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes)


def read_duration(value: str) -> timedelta:
    """An ISO 8601 duration of days, hours and minutes (``P365D``, ``PT8H``), for seeds; ValueError otherwise."""
    try:
        return _read_duration(value)
    except GraphError as error:
        raise ValueError(error.message) from None


def _check_complex(name: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise GraphError(400, "BadRequest", f"Invalid value for property '{name}' (Graph double).")
    for key, inner in value.items():
        if key not in _COMPLEX_PROPERTIES[name]:
            raise GraphError(400, "BadRequest", f"The property '{key}' does not exist on the type of '{name}'.")
        if key in _COMPLEX_PROPERTIES and inner is not None:
            _check_complex(key, inner)


def _filter(clause: str | None) -> list[tuple[str, str]]:
    """``$filter``'s ``eq`` clauses on the properties a schedule is filtered by; ``400`` for anything else."""
    if clause is None:
        return []
    wanted = []
    for part in re.split(r"\s+and\s+", clause.strip(), flags=re.IGNORECASE):
        match = _CLAUSE.fullmatch(part)
        if match is None or match.group(1) not in _FILTERABLE:
            raise GraphError(400, "BadRequest", "Invalid filter clause")
        wanted.append((match.group(1), match.group(2)))
    return wanted


def _expiry(end: datetime | None) -> dict[str, Any]:
    if end is None:
        return {"type": "noExpiration", "endDateTime": None, "duration": None}
    return {"type": "afterDateTime", "endDateTime": _time(end), "duration": None}


def _time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def scoped_membership(unit_id: str, membership_id: str, role_id: str, member_id: str) -> dict[str, Any]:
    return {
        "id": membership_id,
        "roleId": role_id,
        "administrativeUnitId": unit_id,
        "roleMemberInfo": {"id": member_id, "displayName": None},
    }
