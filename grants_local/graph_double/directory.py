"""The Graph double's directory: principals, administrative units, directory roles, and what each write does to them.

`Directory` holds the state and carries out each operation as Graph would, raising `GraphError` with Graph's code and
words; it is not thread-safe (`GraphDouble` calls it with its lock held). Its ``*_json`` methods render objects as
Graph lists them.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from grants_local.graph_double.answers import (
    ALREADY_EXIST,
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
    "PrincipalType",
    "graph_service_principal_json",
    "unit_json",
]

PrincipalType = Literal["user", "group", "servicePrincipal", "device"]

#: Microsoft Graph's application id (the same in every tenant and cloud), and this double's object id for its
#: service principal (in a real tenant, one per tenant).
GRAPH_APP_ID: Final = "00000003-0000-0000-c000-000000000000"
GRAPH_SERVICE_PRINCIPAL_ID: Final = "9a000000-0000-4000-8000-00000000a991"
#: Application permissions Graph offers (a few), by name: their app role ids, the same in every tenant.
GRAPH_APP_ROLES: Final[Mapping[str, str]] = {
    "AdministrativeUnit.ReadWrite.All": "5eb59dd3-1da2-4329-8733-9dabdc435916",
    "RoleManagement.ReadWrite.Directory": "9e3f62cf-ca93-4989-b6ce-bf83c28f9fe8",
    "Directory.Read.All": "7ab1d382-f21e-4acd-a863-ba3e13f7da61",
}


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
    """The directory's objects; time for replication delays from `clock` (see `GraphDouble`)."""

    def __init__(self, *, clock: Callable[[], float]) -> None:
        self.clock = clock
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


def scoped_membership(unit_id: str, membership_id: str, role_id: str, member_id: str) -> dict[str, Any]:
    return {
        "id": membership_id,
        "roleId": role_id,
        "administrativeUnitId": unit_id,
        "roleMemberInfo": {"id": member_id, "displayName": None},
    }
