"""A Microsoft Graph v1.0 double on loopback: the directory calls this app makes, answered like Graph.

`GraphDouble` serves ``http://127.0.0.1:PORT/v1.0`` (`GraphDouble.base_url`) over real HTTP/1.1 with
keep-alive. Every request needs ``Authorization: Bearer <token>`` valid for `GraphDouble.resource`
(``http://127.0.0.1:PORT``: azure-identity turns the scope ``<resource>/.default`` into that resource), as
told by the `TokenEndpoint` or validator given; otherwise ``401 InvalidAuthenticationToken``.

Endpoints (segment names case-insensitive, ids GUIDs compared case-insensitively, ``$ref`` literal), only in the
forms Graph documents (tests/test_graph_operations.py checks the app's requests against Graph's v1.0 description):

- ``POST /directory/administrativeUnits/{au}/members/$ref`` (body ``{"@odata.id": ".../directoryObjects/{id}"}``;
  a user, group or device: any other principal is ``400``), ``GET /directory/administrativeUnits/{au}/members[/{id}]``,
  ``DELETE .../members/{id}/$ref``, ``GET /directory/administrativeUnits[/{au}]`` (with ``$select``; a unit has
  ``isMemberManagementRestricted`` and ``membershipType``), ``GET|POST .../scopedRoleMembers``,
  ``GET|DELETE .../scopedRoleMembers/{membershipId}``. A restricted-management unit answers the app's membership
  writes ``403 Authorization_RequestDenied`` (Graph's words for a missing permission: application permissions do not
  apply inside such a unit) until `scope_app_to_unit`; a dynamic unit answers every manual add or remove ``400
  Request_BadRequest``. There is no ``/administrativeUnits`` at the root (not in v1.0).
- ``GET|POST /directoryRoles`` (POST ``{"roleTemplateId": ...}`` activates a template); for ``R`` = ``{roleId}``
  or the alternate key ``(roleTemplateId='{templateId}')`` (``/directoryRoles(roleTemplateId='...')``):
  ``GET R``, ``GET R/members`` (one unpaged page), ``POST R/members/$ref`` (a user, a role-assignable group or a
  service principal), ``DELETE R/members/{id}/$ref``; and
  ``POST /directoryRoles/roleTemplateId={templateId}/members/$ref``, the one request Graph documents with the
  template as a key segment (any other request naming
  ``roleTemplateId={t}`` so is ``400 Request_BadRequest`` "Invalid object identifier"). One member of a role cannot
  be read (``GET R/members/{id}``: ``400 BadRequest`` "Resource not found for the segment", as for any path Graph
  does not have).
- PIM (``/roleManagement/directory``): ``POST roleEligibilityScheduleRequests`` and ``roleAssignmentScheduleRequests``
  (``adminAssign`` makes a schedule, ``adminRemove`` ends one; ``201`` with the request, ``directoryScopeId`` the scope
  it was carried out at; ``400 RoleAssignmentExists`` / ``RoleAssignmentDoesNotExist``; a role's `RoleSettings`
  (`set_role_settings`: no permanent eligibility or assignment, a longest one) refuse with ``400
  RoleAssignmentRequestPolicyValidationFailed`` "The following policy rules failed: ["ExpirationRule"]"; a role
  definition it does not know ``400 RoleNotFound``; a body property its type does not have is refused by name),
  ``GET roleEligibilitySchedules`` and ``roleAssignmentSchedules`` (``$filter`` of ``eq`` clauses on principalId,
  roleDefinitionId and directoryScopeId joined by ``and``; ``$select``; paged as a unit's members), and
  ``GET roleDefinitions/{id}`` (a built-in role's definition is its template's; a custom role's, `add_role_definition`).
  A schedule ends at its expiry on the double's PIM clock (`GraphDouble.now`): Entra's own expiry, after which a
  removal is ``RoleAssignmentDoesNotExist``. `pim_scope_unknown` makes requests for a unit's scope land at ``/`` and
  answer so, as reported for a unit created moments before.
- ``GET /directoryObjects/{id}``.
- ``GET /servicePrincipals(appId='00000003-0000-0000-c000-000000000000')`` (Microsoft Graph's own service
  principal: `GRAPH_SERVICE_PRINCIPAL_ID` and its application permissions `GRAPH_APP_ROLES`) and
  ``GET /servicePrincipals/{id}/appRoleAssignments`` (the Graph permissions granted to a service principal:
  `grant_app_role`, `revoke_app_role`); what the smoke check (grants_cli/smoke.py) reads.

Each request goes through, in order: `latency_seconds`; the first queued `Fault` that matches it; the
token check; routing (``400 BadRequest`` for an unknown segment, ``405`` for a wrong method); for writes
(POST, DELETE) the `write_budget` (``429`` + ``Retry-After``) and `deny` (``403``), for reads (GET) the
`read_budget`; then the directory.

Paging (learn.microsoft.com/graph/paging): a unit's ``members`` and ``scopedRoleMembers`` are listed in pages of
``$top`` (1 to `MAX_PAGE_SIZE`; `DEFAULT_PAGE_SIZE` without it; anything else is ``400 Request_UnsupportedQuery``
"Invalid page size specified: '1000'. Must be between 1 and 999 inclusive.", Graph's answer), ordered by id;
a page followed by more carries ``@odata.nextLink``: the same URL and query with an opaque ``$skiptoken`` (the
next page starts after the last id shown, so members added or removed meanwhile are seen or not, never twice).
A role's ``members`` are not paged (Graph: "queries against directoryRoles do not support paging"): one page of
at most `ROLE_MEMBERS_LIMIT`, and ``$top`` there is refused (``400``; a client relying on it is caught here).
``$select`` narrows each item to ``@odata.type`` and the properties named (``$select=id``).

Faults (`Fault`, one-shot, queued with `inject`): an injected status; a dropped connection (nothing carried
out); a delay before carrying the request out; a request held until released (`Fault.hold`: a write that lands
after its client gave up, at the moment the test chooses); a request carried out at once and then answered
only after a delay (`Fault.applied_then_delay`, longer than the client's timeout) or never
(`Fault.applied_then_drop`): a write whose outcome the client cannot know, though it was made.

Behind the app's back (as the portal or a script would: not logged, no budget): `add_member`,
`remove_member`, `assign_scoped_role`, `unassign_scoped_role`, `assign_schedule`, `remove_schedule`; `members_of`,
`scoped_members_of`, `schedules_of` and `schedule_of` read the directory for assertions.

The write budget is Graph's write quota (3,000 per 150 s per app and tenant), enforced as a sliding window
shared by every client of the double (it serves all processes on loopback), with Graph's headers
(learn.microsoft.com/graph/throttling-limits, "Identity and access service limits"):

- every write answered past the budget carries ``x-ms-throttle-limit-percentage`` (the fraction of the limit
  used, two decimals) once more than 0.8 of it is used;
- a throttled write is ``429 TooManyRequests`` with ``Retry-After`` (whole seconds until the write would be
  let through), ``x-ms-throttle-scope: Tenant_Application/Write/<app>/<tenant>`` and
  ``x-ms-throttle-information: WriteLimitExceeded``;
- ``x-ms-throttle-priority`` (``Low``, ``Normal`` (also absent or unknown), ``High``) decides who is throttled
  first without changing the limit: while a write of a higher priority was let through in the last window,
  ``Low`` writes are refused once ``1 - priority_reserve`` of the limit is used and ``Normal`` ones at
  ``1 - priority_reserve / 2``; ``High`` writes (and any write with no higher-priority traffic) get the whole
  limit. Bulk alone therefore still reaches the quota, and interactive writes find room beside it.
The read budget stands for Graph's resource-unit quota (per app and tenant: 3,500, 5,000 or 8,000 units per
10 s by tenant size), charged to reads only: each read costs Graph's units (1 for the paths served here, 2 for a
service principal's appRoleAssignments; 1 less with ``$select``, 1 less with ``$top`` under 20; at least 1) and
every read answers ``x-ms-resource-unit`` with its cost. Graph charges a write 1 unit too; the double keeps the
two budgets apart, so a test sees which one throttled and reads never push writes into ``429``. Past 0.8 of the
budget a read carries ``x-ms-throttle-limit-percentage``; past the budget it is ``429 TooManyRequests`` with
``Retry-After``, ``x-ms-throttle-scope: Tenant_Application/Read/<app>/<tenant>`` and
``x-ms-throttle-information: ResourceUnitLimitExceeded``.

Error bodies are Graph's ``{"error": {"code", "message", "innerError": {"date", "request-id",
"client-request-id"}}}``; every answer carries ``request-id`` and ``client-request-id`` headers. A
``404 Request_ResourceNotFound`` names the one missing id: the container's if it is missing, else the
member's (also when removing a member that is not in the container).

Replication delay: a principal added with ``visible_after_lookups=N`` answers as missing to the first N
requests that look it up; one added with ``visible_after_seconds=T`` until T seconds have passed on
``clock``. Seed the directory with the ``add_*`` methods or `GraphDouble.load`; the seed format::

    {"users": ["<id>", {"id": "<id>", "displayName": "...", "visibleAfterLookups": 2}],
     "groups": [{"id": "<id>", "isAssignableToRole": true}],
     "servicePrincipals": ["<id>", {"id": "<id>", "appRoleAssignments": ["AdministrativeUnit.ReadWrite.All"]}],
     "devices": ["<id>"],
     "administrativeUnits": [{"id": "<id>", "displayName": "...", "members": ["<id>"],
                             "isMemberManagementRestricted": false, "membershipRule": null}],
     "roleTemplates": [{"id": "<templateId>", "displayName": "...", "activated": true,
                        "roleId": "<optional id>", "members": ["<id>"]}],
     "roleDefinitions": [{"id": "<custom role's id>", "displayName": "..."}],
     "roleSettings": [{"roleDefinitionId": "<id>",
                       "eligibility": {"maximumDuration": "P180D", "allowPermanent": false},
                       "assignment": {"maximumDuration": "P30D", "allowPermanent": false}}]}

(principal entries also accept ``"visibleAfterSeconds"``; ``roleId`` is used when the template is
activated, now or later; members of a template need ``"activated": true``).
"""

from __future__ import annotations

from grants_local.graph_double.budgets import Priority, WriteRecord
from grants_local.graph_double.directory import (
    GRAPH_APP_ID,
    GRAPH_APP_ROLES,
    GRAPH_SERVICE_PRINCIPAL_ID,
    PimKind,
    PrincipalType,
    RoleSettings,
    Schedule,
)
from grants_local.graph_double.double import GraphDouble, LoggedRequest
from grants_local.graph_double.faults import HOLD_LIMIT_SECONDS, Fault
from grants_local.graph_double.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, ROLE_MEMBERS_LIMIT
from grants_local.graph_double.routes import PermissionKind

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "GRAPH_APP_ID",
    "GRAPH_APP_ROLES",
    "GRAPH_SERVICE_PRINCIPAL_ID",
    "HOLD_LIMIT_SECONDS",
    "MAX_PAGE_SIZE",
    "ROLE_MEMBERS_LIMIT",
    "Fault",
    "GraphDouble",
    "LoggedRequest",
    "PermissionKind",
    "PimKind",
    "PrincipalType",
    "Priority",
    "RoleSettings",
    "Schedule",
    "WriteRecord",
]
