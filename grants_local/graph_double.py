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
`remove_member`, `assign_scoped_role`, `unassign_scoped_role`; `members_of` and `scoped_members_of` read the
directory for assertions.

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
                        "roleId": "<optional id>", "members": ["<id>"]}]}

(principal entries also accept ``"visibleAfterSeconds"``; ``roleId`` is used when the template is
activated, now or later; members of a template need ``"activated": true``).
"""

from __future__ import annotations

import base64
import bisect
import json
import math
import os
import re
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType, TracebackType
from typing import Any, Final, Literal, NamedTuple
from urllib.parse import urlencode

from grants_local._http import LoopbackServer, Request, Response
from grants_local.token_endpoint import TokenEndpoint

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
    "PrincipalType",
    "Priority",
    "WriteRecord",
]

PermissionKind = Literal["administrativeUnit", "directoryRole"]
PrincipalType = Literal["user", "group", "servicePrincipal", "device"]
Priority = Literal["Low", "Normal", "High"]

_PREFIX: Final = "/v1.0"
_GUID: Final = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_REF_ID: Final = re.compile(r"/(?:directoryObjects|users|groups|servicePrincipals|devices)/([^/?#]+)$", re.IGNORECASE)
_WRITES: Final = frozenset({"POST", "DELETE", "PATCH", "PUT"})
_PRIORITIES: Final[Mapping[str, Priority]] = {"low": "Low", "normal": "Normal", "high": "High"}
#: Graph sends x-ms-throttle-limit-percentage only once more than this fraction of the limit is used.
_USAGE_SIGNAL_FLOOR: Final = 0.8
#: Graph's page size for a directory collection read without ``$top``, and the largest ``$top`` it accepts.
DEFAULT_PAGE_SIZE: Final = 100
MAX_PAGE_SIZE: Final = 999
#: Directory role members are not paged (Graph: "queries against directoryRoles do not support paging"); at most
#: this many are listed.
ROLE_MEMBERS_LIMIT: Final = 1000
#: The longest a `Fault.hold` keeps its request before carrying it out anyway (real seconds).
HOLD_LIMIT_SECONDS: Final = 60.0
#: The application and tenant ids the double names in x-ms-throttle-scope.
APPLICATION_ID: Final = "00000000-0000-4000-8000-0000000a9915"
TENANT_ID: Final = "00000000-0000-4000-8000-00000007e4a7"

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

_ALREADY_EXIST: Final = (
    "One or more added object references already exist for the following modified properties: 'members'."
)
_CONFLICT: Final = "A conflicting object with one or more of the specified property values is present in the directory."
_BAD_JSON: Final = (
    "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format."
)
_NOT_ASSIGNABLE: Final = "Groups without IsAssignableToRole property set cannot be assigned to roles."
_UNSUPPORTED_MEMBER: Final = "Unsupported referenced-object resource identifier for link property 'members'."
#: The double's own words for a manual write to a dynamic unit (no Graph text for it was found to copy).
_DYNAMIC_MEMBERSHIP: Final = (
    "Members of an administrative unit with dynamic membership are managed by its membership rule and cannot be "
    "added or removed."
)
#: ``directoryRoles(roleTemplateId='{t}')``, lower-cased: a role by its template, Graph's alternate key.
_ROLE_BY_TEMPLATE: Final = re.compile(r"directoryroles\(roletemplateid='([0-9a-f-]{36})'\)")
_TOKEN_EXPIRED: Final = "Access token has expired or is not yet valid."  # noqa: S105 (a message)
_TOKEN_EMPTY: Final = "Access token is empty."  # noqa: S105 (a message)
_INSUFFICIENT: Final = "Insufficient privileges to complete the operation."

#: The code and message Graph answers with for a status a `Fault` injects.
_STATUS_ERRORS: Final[Mapping[int, tuple[str, str]]] = {
    400: ("BadRequest", "Bad request (injected)."),
    401: ("InvalidAuthenticationToken", _TOKEN_EXPIRED),
    403: ("Authorization_RequestDenied", _INSUFFICIENT),
    404: ("Request_ResourceNotFound", "Resource does not exist (injected)."),
    429: ("TooManyRequests", "Please retry again later."),
    500: ("Service_InternalServerError", "Encountered an internal server error."),
    502: ("UnknownError", ""),
    503: ("serviceNotAvailable", "The service is temporarily unavailable. Please retry later."),
    504: ("UnknownError", ""),
}


class WriteRecord(NamedTuple):
    """One write the budget saw: when (on the double's clock), its ``x-ms-throttle-priority``, and whether it
    was let through (False: answered ``429``)."""

    at: float
    priority: Priority
    admitted: bool


class LoggedRequest(NamedTuple):
    """One request as the double saw it: `path` is relative to `GraphDouble.base_url`, `query` its decoded query
    parameters; `status` is what the double decided (0: dropped unanswered and not carried out; a request carried
    out and then dropped or answered late by a `Fault` logs its real status: the client may never have seen it)."""

    method: str
    path: str
    status: int
    client_request_id: str
    body: Any
    query: Mapping[str, str] = MappingProxyType({})


FaultKind = Literal["status", "drop", "delay", "hold", "applied_then_delay", "applied_then_drop"]


@dataclass(frozen=True, slots=True)
class Fault:
    """A one-shot failure for the next request that matches `method`, `path` (a regex searched in the path
    relative to `GraphDouble.base_url`) and `body` (a regex searched in the raw request body, decoded as
    UTF-8); `None` matches anything. Build with `status`, `drop`, `delay`, `hold`, `applied_then_delay`,
    `applied_then_drop`; `wait_landed` blocks until the double has carried the matched request out (or answered
    it with the injected failure)."""

    kind: FaultKind
    status_code: int = 0
    retry_after: float | None = None
    seconds: float = 0.0
    method: str | None = None
    path: str | None = None
    body: str | None = None
    released: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)
    landed: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)

    @classmethod
    def status(
        cls,
        status: int,
        *,
        retry_after: float | None = None,
        method: str | None = None,
        path: str | None = None,
        body: str | None = None,
    ) -> Fault:
        """Answer `status` with Graph's error body for it, and ``Retry-After: ceil(retry_after)`` if given."""
        return cls("status", status_code=status, retry_after=retry_after, method=method, path=path, body=body)

    @classmethod
    def drop(cls, *, method: str | None = None, path: str | None = None, body: str | None = None) -> Fault:
        """Read the request, then close the connection without answering."""
        return cls("drop", method=method, path=path, body=body)

    @classmethod
    def delay(
        cls, seconds: float, *, method: str | None = None, path: str | None = None, body: str | None = None
    ) -> Fault:
        """Wait `seconds` (real time), then answer normally (a write is applied after the wait)."""
        return cls("delay", seconds=seconds, method=method, path=path, body=body)

    @classmethod
    def hold(cls, *, method: str | None = None, path: str | None = None, body: str | None = None) -> Fault:
        """Keep the request, unanswered and not carried out, until `release` (or `HOLD_LIMIT_SECONDS`, or
        `GraphDouble.close`); then carry it out and answer. A write whose client gave up meanwhile lands late."""
        return cls("hold", method=method, path=path, body=body)

    @classmethod
    def applied_then_delay(
        cls, seconds: float, *, method: str | None = None, path: str | None = None, body: str | None = None
    ) -> Fault:
        """Carry the request out at once (a write lands), then wait `seconds` (real time) before answering: a
        client whose timeout is shorter gives up on a write that was made."""
        return cls("applied_then_delay", seconds=seconds, method=method, path=path, body=body)

    @classmethod
    def applied_then_drop(cls, *, method: str | None = None, path: str | None = None, body: str | None = None) -> Fault:
        """Carry the request out (a write lands), then close the connection without answering."""
        return cls("applied_then_drop", method=method, path=path, body=body)

    def release(self) -> None:
        """Let a `hold` fault's request go on (nothing happens for other kinds)."""
        self.released.set()

    def wait_landed(self, timeout: float = 10.0) -> bool:
        """Block until the matched request was carried out or answered with the failure; False after `timeout`."""
        return self.landed.wait(timeout)

    def matches(self, method: str, path: str, body: bytes = b"") -> bool:
        return (
            (self.method is None or self.method.upper() == method)
            and (self.path is None or re.search(self.path, path) is not None)
            and (self.body is None or re.search(self.body, body.decode("utf-8", "replace")) is not None)
        )


class _GraphError(Exception):
    """An answer with Graph's error body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after
        self.headers = dict(headers or {})


@dataclass(slots=True)
class _Principal:
    id: str
    type: PrincipalType
    display_name: str
    is_assignable_to_role: bool
    lookups_left: int
    visible_at: float


@dataclass(slots=True)
class _AdministrativeUnit:
    id: str
    display_name: str
    members: set[str] = field(default_factory=set)
    scoped: dict[str, tuple[str, str]] = field(default_factory=dict)  # membership id -> (role id, member id)
    restricted: bool = False  # isMemberManagementRestricted: the app's permissions do not apply inside it
    membership_rule: str | None = None  # a dynamic unit's rule (membershipType Dynamic): its members are the rule's
    app_scoped: bool = False  # the app holds a role at this unit's scope: a restricted unit takes its writes


@dataclass(slots=True)
class _RoleTemplate:
    id: str
    display_name: str
    role_id: str | None  # the activated role's id; None while not activated
    preset_role_id: str | None
    members: set[str] = field(default_factory=set)


_Reply = tuple[int, Any]  # status and JSON body (None: no content)
_Handlers = Mapping[str, Callable[[], _Reply]]


class GraphDouble:
    """Microsoft Graph on loopback (see the module docstring). Use as a context manager or call `close`.

    `tokens` is the `TokenEndpoint` whose tokens are accepted, or a ``(token, resource) -> bool`` check.
    `write_budget` ``(n, window_seconds)`` lets at most n writes through in any sliding window; more answer
    ``429`` with ``Retry-After`` = seconds until one is allowed again (ceil, at least 1), with Graph's throttle
    headers and priorities as the module docstring says (`priority_reserve`: the share of the limit lower
    priorities leave to higher ones when both are writing).
    `read_budget` ``(units, window_seconds)`` lets reads (GET) spend at most that many resource units in any
    sliding window, with Graph's read throttling (module docstring); writes are not charged to it.
    `latency_seconds` is waited (real time) before every answer. Time for replication and budgets comes
    from `clock`. All state is behind one lock; every method is thread-safe.
    """

    def __init__(
        self,
        tokens: TokenEndpoint | Callable[[str, str], bool],
        *,
        write_budget: tuple[int, float] | None = None,
        read_budget: tuple[int, float] | None = None,
        priority_reserve: float = 0.04,
        latency_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._token_valid = tokens.is_valid if isinstance(tokens, TokenEndpoint) else tokens
        self.write_budget = write_budget
        self.read_budget = read_budget
        self.priority_reserve = priority_reserve
        self.latency_seconds = latency_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._principals: dict[str, _Principal] = {}
        self._units: dict[str, _AdministrativeUnit] = {}
        self._templates: dict[str, _RoleTemplate] = {}
        self._roles: dict[str, str] = {}  # role id -> template id
        self._faults: list[Fault] = []
        self._denied: set[PermissionKind] = set()
        self._app_roles: dict[str, set[str]] = {}  # service principal id -> Graph app role ids granted to it
        self._recent_writes: deque[float] = deque()
        self._last_admitted: dict[Priority, float] = {}
        self._write_log: list[WriteRecord] = []
        self._log: list[LoggedRequest] = []
        self._write_count = 0
        self._recent_reads: deque[tuple[float, int]] = deque()  # (when, resource units) within the read window
        self._read_units_in_window = 0
        self._read_count = 0
        self._read_units = 0
        self._reads_throttled = 0
        self._holding: list[Fault] = []
        self._server = LoopbackServer(self._answer)

    # --- where it is ---------------------------------------------------------------------------------

    @property
    def resource(self) -> str:
        """The token resource Graph requests must be for: ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self._server.port}"

    @property
    def scope(self) -> str:
        """The scope to ask a credential for (`resource` + ``/.default``)."""
        return self.resource + "/.default"

    @property
    def base_url(self) -> str:
        """Graph's root, like ``https://graph.microsoft.com/v1.0``."""
        return self.resource + _PREFIX

    def close(self) -> None:
        """Release every held request, stop serving and close every connection. Idempotent."""
        with self._lock:
            held = [*self._holding, *(f for f in self._faults if f.kind == "hold")]
        for fault in held:
            fault.release()
        self._server.close()

    def __enter__(self) -> GraphDouble:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- seeding -------------------------------------------------------------------------------------

    def add_user(
        self,
        object_id: str,
        *,
        display_name: str = "",
        visible_after_lookups: int = 0,
        visible_after_seconds: float = 0.0,
    ) -> str:
        """Add a user, missing to its first `visible_after_lookups` lookups and for `visible_after_seconds`."""
        return self._add_principal(
            object_id,
            "user",
            display_name=display_name,
            visible_after_lookups=visible_after_lookups,
            visible_after_seconds=visible_after_seconds,
        )

    def add_group(
        self,
        object_id: str,
        *,
        display_name: str = "",
        is_assignable_to_role: bool = False,
        visible_after_lookups: int = 0,
        visible_after_seconds: float = 0.0,
    ) -> str:
        """Add a security group; only an `is_assignable_to_role` one can hold a directory role."""
        return self._add_principal(
            object_id,
            "group",
            display_name=display_name,
            is_assignable_to_role=is_assignable_to_role,
            visible_after_lookups=visible_after_lookups,
            visible_after_seconds=visible_after_seconds,
        )

    def add_service_principal(
        self,
        object_id: str,
        *,
        display_name: str = "",
        visible_after_lookups: int = 0,
        visible_after_seconds: float = 0.0,
    ) -> str:
        """Add a service principal (replication delay as for `add_user`)."""
        return self._add_principal(
            object_id,
            "servicePrincipal",
            display_name=display_name,
            visible_after_lookups=visible_after_lookups,
            visible_after_seconds=visible_after_seconds,
        )

    def add_device(
        self,
        object_id: str,
        *,
        display_name: str = "",
        visible_after_lookups: int = 0,
        visible_after_seconds: float = 0.0,
    ) -> str:
        """Add a device: an administrative unit can hold it, a directory role cannot."""
        return self._add_principal(
            object_id,
            "device",
            display_name=display_name,
            visible_after_lookups=visible_after_lookups,
            visible_after_seconds=visible_after_seconds,
        )

    def add_administrative_unit(
        self,
        unit_id: str,
        *,
        display_name: str = "",
        members: Iterable[str] = (),
        restricted: bool = False,
        membership_rule: str | None = None,
    ) -> str:
        """Add an administrative unit holding `members` (ids of principals, added with the other methods); a
        `restricted` one is a restricted-management unit (``isMemberManagementRestricted``: writes answer ``403``
        until `scope_app_to_unit`), one with a `membership_rule` a dynamic one (``membershipType`` Dynamic: manual
        adds and removes answer ``400``)."""
        unit = _AdministrativeUnit(
            _canonical(unit_id),
            display_name or f"AU {unit_id}",
            set(map(_canonical, members)),
            restricted=restricted,
            membership_rule=membership_rule,
        )
        with self._lock:
            self._units[unit.id] = unit
        return unit.id

    def set_membership_rule(self, unit_id: str, rule: str | None) -> None:
        """Make a unit dynamic with membership rule `rule` or, with None, one of assigned membership (its members
        stay), as an administrator would."""
        with self._lock:
            self._units[_canonical(unit_id)].membership_rule = rule

    def scope_app_to_unit(self, unit_id: str, *, scoped: bool = True) -> None:
        """Assign the app's identity a Microsoft Entra role at the unit's scope (as an administrator would): a
        restricted-management unit takes the app's writes from then on; `scoped` false removes that role again."""
        with self._lock:
            self._units[_canonical(unit_id)].app_scoped = scoped

    def delete_administrative_unit(self, unit_id: str) -> None:
        """Delete an administrative unit (as an administrator might mid-run): from now on it answers ``404``."""
        with self._lock:
            del self._units[_canonical(unit_id)]

    def add_role_template(
        self,
        template_id: str,
        *,
        display_name: str = "",
        activated: bool = False,
        role_id: str | None = None,
        members: Iterable[str] = (),
    ) -> None:
        """Add a directory role template; if `activated`, its role (id `role_id` or random) holds `members`.

        A template activated later through ``POST /directoryRoles`` also gets `role_id` when given.
        """
        member_ids = set(map(_canonical, members))
        if member_ids and not activated:
            raise ValueError(f"role template {template_id} has members but is not activated")
        preset = _canonical(role_id) if role_id else None
        template = _RoleTemplate(_canonical(template_id), display_name or f"Role {template_id}", None, preset)
        with self._lock:
            self._templates[template.id] = template
            if activated:
                self._activate(template)
                template.members = member_ids

    def role_id_of(self, template_id: str) -> str | None:
        """The id of the role activated from `template_id`, or None while it is not activated."""
        with self._lock:
            return self._templates[_canonical(template_id)].role_id

    # --- behind the app's back -----------------------------------------------------------------------------

    def add_member(self, container_id: str, member_id: str) -> None:
        """Add a principal to an administrative unit, a role, or an activated template's role, as the portal or a
        script would: at once, not logged, not counted, no budget. KeyError for an unknown container or principal
        (or a template that is not activated)."""
        key = _canonical(member_id)
        with self._lock:
            if key not in self._principals:
                raise KeyError(member_id)
            self._container(container_id).add(key)

    def remove_member(self, container_id: str, member_id: str) -> None:
        """Remove a principal from a container behind the app's back (as `add_member`; no error if absent)."""
        with self._lock:
            self._container(container_id).discard(_canonical(member_id))

    def assign_scoped_role(self, unit_id: str, template_id: str, member_id: str) -> str:
        """Assign the activated role of `template_id` to a principal, scoped to an administrative unit, behind the
        app's back; return the membership id (an existing one if already assigned). KeyError for unknown ids."""
        key = _canonical(member_id)
        with self._lock:
            unit, role_id = self._units[_canonical(unit_id)], self._activated_role(template_id)
            if key not in self._principals:
                raise KeyError(member_id)
            for membership_id, held in unit.scoped.items():
                if held == (role_id, key):
                    return membership_id
            membership_id = secrets.token_hex(24)
            unit.scoped[membership_id] = (role_id, key)
            return membership_id

    def unassign_scoped_role(self, unit_id: str, template_id: str, member_id: str) -> None:
        """Undo `assign_scoped_role` (or the app's own assignment) behind the app's back; no error if absent."""
        key = _canonical(member_id)
        with self._lock:
            unit, role_id = self._units[_canonical(unit_id)], self._activated_role(template_id)
            for membership_id in [m for m, held in unit.scoped.items() if held == (role_id, key)]:
                del unit.scoped[membership_id]

    def scoped_members_of(self, unit_id: str, template_id: str) -> set[str]:
        """Member ids holding the role of `template_id` scoped to the unit (empty if not activated)."""
        with self._lock:
            unit = self._units[_canonical(unit_id)]
            role_id = self._templates[_canonical(template_id)].role_id
            return {member for role, member in unit.scoped.values() if role == role_id}

    def load(self, source: str | os.PathLike[str] | Mapping[str, Any]) -> None:
        """Add the objects of a seed (a mapping, or the path of a JSON file) in the module docstring's format."""
        seed = source if isinstance(source, Mapping) else _read_json(source)
        kinds: Mapping[str, PrincipalType] = {
            "users": "user",
            "groups": "group",
            "servicePrincipals": "servicePrincipal",
            "devices": "device",
        }
        for key, kind in kinds.items():
            for entry in seed.get(key, ()):
                item = {"id": entry} if isinstance(entry, str) else entry
                self._add_principal(
                    item["id"],
                    kind,
                    display_name=item.get("displayName", ""),
                    is_assignable_to_role=bool(item.get("isAssignableToRole", False)),
                    visible_after_lookups=int(item.get("visibleAfterLookups", 0)),
                    visible_after_seconds=float(item.get("visibleAfterSeconds", 0.0)),
                )
        for entry in seed.get("servicePrincipals", ()):
            for permission in entry.get("appRoleAssignments", ()) if isinstance(entry, Mapping) else ():
                self.grant_app_role(entry["id"], permission)
        for unit in seed.get("administrativeUnits", ()):
            self.add_administrative_unit(
                unit["id"],
                display_name=unit.get("displayName", ""),
                members=unit.get("members", ()),
                restricted=bool(unit.get("isMemberManagementRestricted", False)),
                membership_rule=unit.get("membershipRule"),
            )
        for template in seed.get("roleTemplates", ()):
            self.add_role_template(
                template["id"],
                display_name=template.get("displayName", ""),
                activated=bool(template.get("activated", False)),
                role_id=template.get("roleId"),
                members=template.get("members", ()),
            )

    def grant_app_role(self, principal_id: str, permission: str) -> None:
        """Grant Graph's application permission `permission` (a `GRAPH_APP_ROLES` name) to a service principal."""
        with self._lock:
            self._app_roles.setdefault(_canonical(principal_id), set()).add(GRAPH_APP_ROLES[permission])

    def revoke_app_role(self, principal_id: str, permission: str) -> None:
        """Undo `grant_app_role` (nothing happens if it was not granted)."""
        with self._lock:
            self._app_roles.get(_canonical(principal_id), set()).discard(GRAPH_APP_ROLES[permission])

    # --- behaviours ----------------------------------------------------------------------------------

    def inject(self, *faults: Fault) -> None:
        """Queue one-shot faults; each request consumes the first queued fault that matches it."""
        with self._lock:
            self._faults.extend(faults)

    @property
    def pending_faults(self) -> int:
        """Faults queued and not yet consumed."""
        with self._lock:
            return len(self._faults)

    def deny(self, kind: PermissionKind) -> None:
        """Answer writes to `kind` (administrative units or directory roles) ``403 Authorization_RequestDenied``."""
        with self._lock:
            self._denied.add(kind)

    def allow(self, kind: PermissionKind) -> None:
        """Undo `deny`."""
        with self._lock:
            self._denied.discard(kind)

    # --- observations --------------------------------------------------------------------------------

    @property
    def requests(self) -> list[LoggedRequest]:
        """A copy of the request log, oldest first (never holds the Authorization header)."""
        with self._lock:
            return list(self._log)

    def reset_log(self) -> None:
        """Empty the request log (counters are kept)."""
        with self._lock:
            self._log.clear()

    @property
    def write_count(self) -> int:
        """Writes that reached the directory (past faults, the token check and the write budget)."""
        with self._lock:
            return self._write_count

    @property
    def write_log(self) -> list[WriteRecord]:
        """A copy of every write the budget saw (with a `write_budget` only), oldest first."""
        with self._lock:
            return list(self._write_log)

    @property
    def connections_opened(self) -> int:
        """TCP connections accepted so far."""
        return self._server.connections_opened

    @property
    def read_count(self) -> int:
        """Reads (GET) that reached the directory (past faults, the token check and the read budget)."""
        with self._lock:
            return self._read_count

    @property
    def read_units(self) -> int:
        """Resource units those reads cost (Graph's identity-and-access costs; see the module docstring)."""
        with self._lock:
            return self._read_units

    @property
    def reads_throttled(self) -> int:
        """Reads answered ``429`` by the read budget."""
        with self._lock:
            return self._reads_throttled

    def members_of(self, container_id: str) -> set[str]:
        """Member ids of an administrative unit, a role, or a template's role (empty if not activated).

        Raises KeyError for an id that is none of these.
        """
        key = _canonical(container_id)
        with self._lock:
            if key in self._units:
                return set(self._units[key].members)
            template = self._templates[self._roles.get(key, key)]
            return set(template.members)

    def _container(self, container_id: str) -> set[str]:
        """The live member set of a unit, a role, or an activated template's role (lock held); KeyError else."""
        key = _canonical(container_id)
        if key in self._units:
            return self._units[key].members
        if key in self._roles:
            return self._templates[self._roles[key]].members
        template = self._templates[key]
        if template.role_id is None:
            raise KeyError(f"role template {container_id} is not activated")
        return template.members

    def _activated_role(self, template_id: str) -> str:
        role_id = self._templates[_canonical(template_id)].role_id
        if role_id is None:
            raise KeyError(f"role template {template_id} is not activated")
        return role_id

    # --- serving -------------------------------------------------------------------------------------

    def _answer(self, request: Request) -> Response | None:
        request_id = str(uuid.uuid4())
        client_request_id = request.headers.get("client-request-id") or request_id
        path = request.path[len(_PREFIX) :] if request.path.lower().startswith(_PREFIX + "/") else request.path
        body = _json_or_none(request.body)
        if self.latency_seconds:
            time.sleep(self.latency_seconds)
        fault = self._take_fault(request.method, path, request.body)
        kind = fault.kind if fault is not None else None
        if fault is not None and kind == "drop":
            self._record(LoggedRequest(request.method, path, 0, client_request_id, body, request.query))
            fault.landed.set()
            return None
        if fault is not None and kind == "delay":
            time.sleep(fault.seconds)
        if fault is not None and kind == "hold":
            self._hold(fault)
        headers: dict[str, str] = {}  # a budget's headers, kept when the directory then answers an error
        try:
            if fault is not None and kind == "status":
                code, message = _STATUS_ERRORS.get(fault.status_code, ("UnknownError", ""))
                raise _GraphError(fault.status_code, code, message, retry_after=fault.retry_after)
            self._authenticate(request.headers.get("Authorization", ""))
            with self._lock:
                status, payload = self._dispatch(request, path, body, headers)
        except _GraphError as error:
            status, payload = error.status, _error_body(error, request_id, client_request_id)
            headers.update(error.headers)
            if error.retry_after is not None:
                headers["Retry-After"] = str(math.ceil(error.retry_after))
        self._record(LoggedRequest(request.method, path, status, client_request_id, body, request.query))
        if fault is not None:
            fault.landed.set()
            if kind == "applied_then_drop":
                return None
            if kind == "applied_then_delay":
                time.sleep(fault.seconds)
        headers.update({"request-id": request_id, "client-request-id": client_request_id})
        return Response(status, payload, headers)

    def _hold(self, fault: Fault) -> None:
        """Block this connection until the fault is released (or `HOLD_LIMIT_SECONDS`)."""
        with self._lock:
            self._holding.append(fault)
        try:
            fault.released.wait(HOLD_LIMIT_SECONDS)
        finally:
            with self._lock:
                self._holding.remove(fault)

    def _take_fault(self, method: str, path: str, body: bytes) -> Fault | None:
        with self._lock:
            for index, fault in enumerate(self._faults):
                if fault.matches(method, path, body):
                    return self._faults.pop(index)
        return None

    def _record(self, entry: LoggedRequest) -> None:
        with self._lock:
            self._log.append(entry)

    def _authenticate(self, authorization: str) -> None:
        scheme, _, token = authorization.partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        if not token:
            raise _GraphError(401, "InvalidAuthenticationToken", _TOKEN_EMPTY)
        if not self._token_valid(token, self.resource):
            raise _GraphError(401, "InvalidAuthenticationToken", _TOKEN_EXPIRED)

    def _dispatch(self, request: Request, path: str, body: Any, headers: dict[str, str]) -> _Reply:
        """Route, apply the write budget and permissions, and answer (holding the lock); the budget's headers
        go into `headers`."""
        if not request.path.lower().startswith(_PREFIX + "/"):
            version = request.path.strip("/").split("/")[0]
            raise _GraphError(400, "BadRequest", f"Invalid version: {version}")
        segments = path.strip("/").split("/")
        kind, handlers = self._routes(segments, body, _Listing(self.base_url, path, request.query))
        handler = handlers.get(request.method)
        if handler is None:
            raise _GraphError(405, "Request_BadRequest", "Specified HTTP method is not allowed for the request target.")
        if request.method in _WRITES:
            priority = _PRIORITIES.get(request.headers.get("x-ms-throttle-priority", "").strip().lower(), "Normal")
            headers.update(self._spend_write_budget(priority))
            if kind in self._denied:
                raise _GraphError(403, "Authorization_RequestDenied", _INSUFFICIENT)
            self._write_count += 1
        elif request.method == "GET":
            cost = _read_cost(segments, request.query)
            headers.update(self._spend_read_budget(cost))
            self._read_count += 1
            self._read_units += cost
        return handler()

    def _spend_read_budget(self, cost: int) -> dict[str, str]:
        """Charge a read `cost` resource units (and return its headers) or raise its ``429``."""
        headers = {"x-ms-resource-unit": str(cost)}
        if self.read_budget is None:
            return headers
        limit, window = self.read_budget
        now = self._clock()
        while self._recent_reads and self._recent_reads[0][0] <= now - window:
            self._read_units_in_window -= self._recent_reads.popleft()[1]
        if self._read_units_in_window + cost > limit:
            # Whole seconds until enough units have left the window for this read (at least 1, as Graph's).
            excess, expires = self._read_units_in_window + cost - limit, now
            for at, units in self._recent_reads:
                excess, expires = excess - units, at + window
                if excess <= 0:
                    break
            self._reads_throttled += 1
            raise _GraphError(
                429,
                "TooManyRequests",
                "Please retry again later.",
                retry_after=max(1.0, math.ceil(expires - now)),
                headers={
                    "x-ms-throttle-scope": f"Tenant_Application/Read/{APPLICATION_ID}/{TENANT_ID}",
                    "x-ms-throttle-information": "ResourceUnitLimitExceeded",
                },
            )
        self._recent_reads.append((now, cost))
        self._read_units_in_window += cost
        used = self._read_units_in_window / limit
        if used > _USAGE_SIGNAL_FLOOR:
            headers["x-ms-throttle-limit-percentage"] = f"{used:.2f}"
        return headers

    def _spend_write_budget(self, priority: Priority) -> dict[str, str]:
        """Let one write of `priority` through (and return its usage header, if any) or raise its ``429``."""
        if self.write_budget is None:
            return {}
        limit, window = self.write_budget
        now = self._clock()
        while self._recent_writes and self._recent_writes[0] <= now - window:
            self._recent_writes.popleft()
        allowed = self._allowed(priority, limit, now - window)
        if len(self._recent_writes) >= allowed:
            # Whole seconds until the window holds fewer than `allowed` writes (at least 1, as Graph's).
            oldest_to_expire = self._recent_writes[len(self._recent_writes) - allowed] if allowed else now
            wait = max(1.0, math.ceil(oldest_to_expire + window - now))
            self._write_log.append(WriteRecord(now, priority, admitted=False))
            raise _GraphError(
                429,
                "TooManyRequests",
                "Please retry again later.",
                retry_after=wait,
                headers={
                    "x-ms-throttle-scope": f"Tenant_Application/Write/{APPLICATION_ID}/{TENANT_ID}",
                    "x-ms-throttle-information": "WriteLimitExceeded",
                },
            )
        self._recent_writes.append(now)
        self._last_admitted[priority] = now
        self._write_log.append(WriteRecord(now, priority, admitted=True))
        used = len(self._recent_writes) / limit
        return {"x-ms-throttle-limit-percentage": f"{used:.2f}"} if used > _USAGE_SIGNAL_FLOOR else {}

    def _allowed(self, priority: Priority, limit: int, window_start: float) -> int:
        """How many writes the window may hold for a write of `priority`: all of the limit, less a reserve while a
        higher priority was let through within the window."""

        def busy(*higher: Priority) -> bool:
            return any(self._last_admitted.get(p, -math.inf) > window_start for p in higher)

        if priority == "Low" and busy("Normal", "High"):
            return math.floor(limit * (1 - self.priority_reserve))
        if priority == "Normal" and busy("High"):
            return math.floor(limit * (1 - self.priority_reserve / 2))
        return limit

    def _routes(self, segments: list[str], body: Any, listing: _Listing) -> tuple[PermissionKind | None, _Handlers]:
        lower = [segment.lower() for segment in segments]
        if lower[:2] == ["directory", "administrativeunits"]:
            return "administrativeUnit", self._unit_routes(segments[2:], body, listing)
        if lower[:1] == ["directoryroles"]:
            return "directoryRole", self._role_routes(segments[1:], body, listing)
        if (by_template := _ROLE_BY_TEMPLATE.fullmatch(lower[0])) is not None:
            role = f"roletemplateid={by_template.group(1)}"
            return "directoryRole", self._role_routes([role, *segments[1:]], body, listing, alternate_key=True)
        if lower[:1] == ["directoryobjects"] and len(segments) == 2:
            return None, {"GET": lambda: (200, self._object_json(self._object(segments[1])))}
        if lower == [f"serviceprincipals(appid='{GRAPH_APP_ID}')"]:
            return None, {"GET": lambda: (200, _graph_service_principal_json())}
        if lower[:1] == ["serviceprincipals"] and lower[2:] == ["approleassignments"] and len(segments) == 3:
            return None, {"GET": lambda: (200, self._app_role_assignments_json(segments[1]))}
        raise _unknown_segment(segments[-1] if lower[:1] == ["directoryobjects"] else segments[0])

    def _unit_routes(self, rest: list[str], body: Any, listing: _Listing) -> _Handlers:
        lower = [segment.lower() for segment in rest]
        match lower:
            case []:
                return {"GET": lambda: (200, {"value": [_unit_json(unit) for unit in self._units.values()]})}
            case [unit_id]:
                return {"GET": lambda: (200, _narrowed(_unit_json(self._unit(unit_id)), _unit_select(listing)))}
            case [unit_id, "members", *member]:
                return self._member_routes(
                    member,
                    rest,
                    lambda: self._unit(unit_id).members,
                    lambda: self._add_unit_member(unit_id, body),
                    listing,
                    paged=True,
                    remove=lambda member_id: self._remove_unit_member(unit_id, member_id),
                )
            case [unit_id, "scopedrolemembers"]:
                return {
                    "GET": lambda: (200, self._scoped_page(self._unit(unit_id), listing)),
                    "POST": lambda: self._add_scoped(unit_id, body),
                }
            case [unit_id, "scopedrolemembers", membership_id]:
                return {
                    "GET": lambda: (200, self._scoped_one(unit_id, membership_id)),
                    "DELETE": lambda: self._remove_scoped(unit_id, membership_id),
                }
        raise _unknown_segment(rest[-1])

    def _role_routes(self, rest: list[str], body: Any, listing: _Listing, *, alternate_key: bool = False) -> _Handlers:
        """``/directoryRoles`` and a role under it: by id; ``(roleTemplateId='{t}')``, Graph's alternate key
        (`alternate_key`); or ``roleTemplateId={t}`` as a key segment, which Graph documents only for adding a member
        (``POST .../members/$ref``): any other request naming it is refused as Graph refuses a key that is not an
        object id."""
        lower = [segment.lower() for segment in rest]
        if lower and lower[0].startswith("roletemplateid=") and not alternate_key and lower[1:] != ["members", "$ref"]:
            raise _GraphError(400, "Request_BadRequest", f"Invalid object identifier '{rest[0]}'.")
        match lower:
            case []:
                return {
                    "GET": lambda: (
                        200,
                        {"value": [self._role_json(t) for t in self._templates.values() if t.role_id]},
                    ),
                    "POST": lambda: self._activate_by_body(body),
                }
            case [role]:
                return {"GET": lambda: (200, self._role_json(self._role(role)))}
            case [role, "members", *member]:
                return self._member_routes(
                    member,
                    rest,
                    lambda: self._role(role).members,
                    lambda: self._add_role_member(role, body),
                    listing,
                    paged=False,
                    by_key=False,
                )
        raise _unknown_segment(rest[-1])

    def _member_routes(
        self,
        member: list[str],
        rest: list[str],
        members: Callable[[], set[str]],
        add: Callable[[], _Reply],
        listing: _Listing,
        *,
        paged: bool,
        by_key: bool = True,
        remove: Callable[[str], _Reply] | None = None,
    ) -> _Handlers:
        """``members``, ``members/$ref``, ``members/{id}`` and ``members/{id}/$ref`` of a unit or a role
        (`member`: the lower-cased segments after ``members``; `members`: the container's member set; `paged`:
        the list takes ``$top`` and pages, else it is one page of at most `ROLE_MEMBERS_LIMIT`; `by_key`: one
        member can be read (a unit's: Graph documents no read of one role member, so a role's is refused);
        `remove`: the container's own removal, else one from `members`)."""
        match member:
            case []:
                return {"GET": lambda: (200, self._members_page(members(), listing, paged=paged))}
            case ["$ref"]:
                return {"POST": add}
            case [member_id] if by_key:
                return {"GET": lambda: self._get_member(members(), member_id)}
            case [member_id, "$ref"]:
                if remove is not None:
                    return {"DELETE": lambda: remove(member_id)}
                return {"DELETE": lambda: self._remove_member(members(), member_id)}
        raise _unknown_segment(rest[-1])

    # --- the directory (called with the lock held) ---------------------------------------------------

    def _visible(self, object_id: str) -> _Principal:
        """The principal, unless it is unknown or not replicated yet (each call counts as a lookup)."""
        principal = self._principals.get(_guid(object_id))
        if principal is None:
            raise _not_found(object_id)
        if principal.lookups_left > 0:
            principal.lookups_left -= 1
            raise _not_found(object_id)
        if self._clock() < principal.visible_at:
            raise _not_found(object_id)
        return principal

    def _object(self, object_id: str) -> _Principal | _AdministrativeUnit | _RoleTemplate:
        key = _guid(object_id)
        if key in self._units:
            return self._units[key]
        if key in self._roles:
            return self._templates[self._roles[key]]
        return self._visible(key)

    def _unit(self, unit_id: str) -> _AdministrativeUnit:
        unit = self._units.get(_guid(unit_id))
        if unit is None:
            raise _not_found(unit_id)
        return unit

    def _role(self, segment: str) -> _RoleTemplate:
        """The activated role a path segment names: ``{roleId}`` or ``roleTemplateId={templateId}``."""
        name, equals, template_id = segment.partition("=")
        if equals and name == "roletemplateid":
            template = self._templates.get(_guid(template_id))
            if template is None or template.role_id is None:
                raise _not_found(template_id)
            return template
        template_key = self._roles.get(_guid(segment))
        if template_key is None:
            raise _not_found(segment)
        return self._templates[template_key]

    def _add_unit_member(self, unit_id: str, body: Any) -> _Reply:
        unit = self._unit(unit_id)
        self._writable(unit)
        member = self._visible(_referenced_id(body))
        if member.type not in ("user", "group", "device"):
            raise _GraphError(400, "Request_BadRequest", _UNSUPPORTED_MEMBER)
        if member.id in unit.members:
            raise _GraphError(400, "Request_BadRequest", _ALREADY_EXIST)
        unit.members.add(member.id)
        return 204, None

    def _remove_unit_member(self, unit_id: str, member_id: str) -> _Reply:
        unit = self._unit(unit_id)
        self._writable(unit)
        return self._remove_member(unit.members, member_id)

    @staticmethod
    def _writable(unit: _AdministrativeUnit) -> None:
        """A restricted-management unit refuses the app's membership writes (``403``, as for a missing permission:
        Graph's application permissions do not apply inside it) unless the app holds a role at its scope; a
        dynamic one refuses every manual add and remove (``400``)."""
        if unit.restricted and not unit.app_scoped:
            raise _GraphError(403, "Authorization_RequestDenied", _INSUFFICIENT)
        if unit.membership_rule is not None:
            raise _GraphError(400, "Request_BadRequest", _DYNAMIC_MEMBERSHIP)

    def _add_role_member(self, role: str, body: Any) -> _Reply:
        template = self._role(role)
        member = self._visible(_referenced_id(body))
        if member.type == "device":
            raise _GraphError(400, "Request_BadRequest", _UNSUPPORTED_MEMBER)
        if member.type == "group" and not member.is_assignable_to_role:
            raise _GraphError(400, "Request_BadRequest", _NOT_ASSIGNABLE)
        if member.id in template.members:
            raise _GraphError(400, "Request_BadRequest", _ALREADY_EXIST)
        template.members.add(member.id)
        return 204, None

    def _get_member(self, members: set[str], member_id: str) -> _Reply:
        member = self._visible(member_id)
        if member.id not in members:
            raise _not_found(member_id)
        return 200, _principal_json(member)

    def _remove_member(self, members: set[str], member_id: str) -> _Reply:
        key = _guid(member_id)
        if key not in members:
            raise _not_found(member_id)
        members.discard(key)
        return 204, None

    def _activate_by_body(self, body: Any) -> _Reply:
        template_id = body.get("roleTemplateId") if isinstance(body, dict) else None
        if not isinstance(template_id, str):
            raise _invalid_property("roleTemplateId", "DirectoryRole", body)
        template = self._templates.get(_guid(template_id))
        if template is None:
            raise _not_found(template_id)
        if template.role_id is not None:
            raise _GraphError(400, "Request_BadRequest", _CONFLICT)
        self._activate(template)
        return 201, self._role_json(template)

    def _activate(self, template: _RoleTemplate) -> None:
        template.role_id = template.preset_role_id or str(uuid.uuid4())
        self._roles[template.role_id] = template.id

    def _add_scoped(self, unit_id: str, body: Any) -> _Reply:
        unit = self._unit(unit_id)
        role_id = body.get("roleId") if isinstance(body, dict) else None
        info = body.get("roleMemberInfo") if isinstance(body, dict) else None
        member_id = info.get("id") if isinstance(info, dict) else None
        if not isinstance(role_id, str):
            raise _invalid_property("roleId", "ScopedRoleMembership", body)
        if not isinstance(member_id, str):
            raise _invalid_property("roleMemberInfo", "ScopedRoleMembership", body)
        if _guid(role_id) not in self._roles:
            raise _not_found(role_id)
        member = self._visible(member_id)
        if member.type in ("device", "servicePrincipal"):
            raise _GraphError(400, "Request_BadRequest", _UNSUPPORTED_MEMBER)
        if (_guid(role_id), member.id) in unit.scoped.values():
            raise _GraphError(400, "Request_BadRequest", _CONFLICT)
        membership_id = secrets.token_hex(24)
        unit.scoped[membership_id] = (_guid(role_id), member.id)
        return 201, _scoped_membership(unit.id, membership_id, *unit.scoped[membership_id])

    def _scoped_one(self, unit_id: str, membership_id: str) -> dict[str, Any]:
        unit = self._unit(unit_id)
        if membership_id not in unit.scoped:
            raise _not_found(membership_id)
        return _scoped_membership(unit.id, membership_id, *unit.scoped[membership_id])

    def _remove_scoped(self, unit_id: str, membership_id: str) -> _Reply:
        unit = self._unit(unit_id)
        if unit.scoped.pop(membership_id, None) is None:
            raise _not_found(membership_id)
        return 204, None

    def _app_role_assignments_json(self, principal_id: str) -> dict[str, Any]:
        principal = self._visible(principal_id)
        if principal.type != "servicePrincipal":
            raise _not_found(principal_id)
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
                for role_id in sorted(self._app_roles.get(principal.id, ()))
            ]
        }

    def _members_page(self, members: set[str], listing: _Listing, *, paged: bool) -> dict[str, Any]:
        """One page of a container's members, ordered by id (see the module docstring, Paging)."""
        if not paged and "$top" in listing.query:
            raise _GraphError(400, "Request_UnsupportedQuery", _ROLES_NOT_PAGED)
        known = sorted(m for m in members if m in self._principals)
        size = _page_size(listing.query) if paged else ROLE_MEMBERS_LIMIT
        return _page(listing, known, size, lambda m: _principal_json(self._principals[m]), "directoryObjects")

    def _scoped_page(self, unit: _AdministrativeUnit, listing: _Listing) -> dict[str, Any]:
        """One page of a unit's scoped role memberships, ordered by membership id."""
        return _page(
            listing,
            sorted(unit.scoped),
            _page_size(listing.query),
            lambda key: _scoped_membership(unit.id, key, *unit.scoped[key]),
            "scopedRoleMemberships",
        )

    def _object_json(self, item: _Principal | _AdministrativeUnit | _RoleTemplate) -> dict[str, Any]:
        if isinstance(item, _AdministrativeUnit):
            return _unit_json(item)
        if isinstance(item, _RoleTemplate):
            return self._role_json(item)
        return _principal_json(item)

    def _role_json(self, template: _RoleTemplate) -> dict[str, Any]:
        return {
            "@odata.type": "#microsoft.graph.directoryRole",
            "id": template.role_id,
            "roleTemplateId": template.id,
            "displayName": template.display_name,
            "description": None,
        }

    def _add_principal(
        self,
        object_id: str,
        kind: PrincipalType,
        *,
        display_name: str = "",
        is_assignable_to_role: bool = False,
        visible_after_lookups: int = 0,
        visible_after_seconds: float = 0.0,
    ) -> str:
        key = _canonical(object_id)
        with self._lock:
            visible_at = self._clock() + visible_after_seconds if visible_after_seconds else 0.0
            self._principals[key] = _Principal(
                key, kind, display_name or f"{kind} {key}", is_assignable_to_role, visible_after_lookups, visible_at
            )
        return key


@dataclass(frozen=True, slots=True)
class _Listing:
    """A request's Graph root (`GraphDouble.base_url`), path relative to it and decoded query parameters, for
    its collection's paging."""

    root: str
    path: str
    query: Mapping[str, str]


_ROLES_NOT_PAGED: Final = (
    "Paging is not supported for directory roles; $top cannot be applied to the requested resource (Graph double)."
)


def _page_size(query: Mapping[str, str]) -> int:
    """``$top`` (1-999), or `DEFAULT_PAGE_SIZE` without it; Graph's ``400`` for anything else."""
    raw = query.get("$top")
    if raw is None:
        return DEFAULT_PAGE_SIZE
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        raise _GraphError(
            400,
            "Request_UnsupportedQuery",
            f"Invalid page size specified: '{raw}'. Must be between 1 and {MAX_PAGE_SIZE} inclusive.",
        )
    return int(raw)


def _page(
    listing: _Listing, keys: list[str], size: int, render: Callable[[str], dict[str, Any]], kind: str
) -> dict[str, Any]:
    """The page of sorted `keys` after ``$skiptoken`` (`size` of them), each rendered and narrowed to ``$select``,
    with an ``@odata.nextLink`` (the same query, another ``$skiptoken``) when more follow."""
    token = listing.query.get("$skiptoken")
    start = 0 if token is None else bisect.bisect_right(keys, _after(token))
    chosen = keys[start : start + size]
    fields = _selected(listing.query.get("$select"), _PROPERTIES[kind])
    page: dict[str, Any] = {
        "@odata.context": f"{listing.root}/$metadata#{kind}",
        "value": [_narrowed(render(key), fields) for key in chosen],
    }
    if start + size < len(keys):
        query = {**listing.query, "$skiptoken": _token(chosen[-1])}
        page["@odata.nextLink"] = f"{listing.root}{listing.path}?{urlencode(query, safe='$,')}"
    return page


def _token(last_key: str) -> str:
    return base64.urlsafe_b64encode(f"after:{last_key}".encode()).decode().rstrip("=")


def _after(token: str) -> str:
    """The last key of the previous page, from a ``$skiptoken``; ``400`` for a token this double did not make."""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except ValueError:
        text = ""
    if not text.startswith("after:"):
        raise _GraphError(400, "Request_BadRequest", f"Invalid $skiptoken value '{token}'.")
    return text[len("after:") :]


#: The properties an item of each listed collection has (what ``$select`` may name).
_PROPERTIES: Final[Mapping[str, frozenset[str]]] = {
    "directoryObjects": frozenset({"id", "displayName"}),
    "administrativeUnits": frozenset(
        {
            "id",
            "displayName",
            "description",
            "visibility",
            "isMemberManagementRestricted",
            "membershipType",
            "membershipRule",
            "membershipRuleProcessingState",
        }
    ),
    "scopedRoleMemberships": frozenset({"id", "roleId", "administrativeUnitId", "roleMemberInfo"}),
}


def _selected(select: str | None, properties: frozenset[str]) -> list[str] | None:
    """The properties ``$select`` names; ``400`` for one the collection's items do not have."""
    if select is None:
        return None
    fields = [name.strip() for name in select.split(",") if name.strip()]
    for name in fields:
        if name not in properties:
            raise _GraphError(400, "Request_BadRequest", f"Could not find a property named '{name}' on this type.")
    return fields


def _narrowed(item: dict[str, Any], fields: list[str] | None) -> dict[str, Any]:
    """`item` with only ``@odata.type`` and the `fields` asked for."""
    if fields is None:
        return item
    return {key: value for key, value in item.items() if key == "@odata.type" or key in fields}


def _read_cost(segments: list[str], query: Mapping[str, str]) -> int:
    """A read's resource units (Graph's identity-and-access table): 2 for a service principal's
    appRoleAssignments, 1 for every other path the double serves; 1 less with ``$select``, 1 less with a ``$top``
    under 20; never below 1."""
    lower = [segment.lower() for segment in segments]
    cost = 2 if lower[:1] == ["serviceprincipals"] and lower[-1:] == ["approleassignments"] else 1
    cost -= "$select" in query
    top = query.get("$top", "")
    cost -= top.isascii() and top.isdigit() and int(top) < 20
    return max(cost, 1)


def _canonical(object_id: str) -> str:
    """A seed id, lower-cased; ValueError unless it is a GUID."""
    key = object_id.lower()
    if not _GUID.match(key):
        raise ValueError(f"not a GUID: {object_id!r}")
    return key


def _guid(object_id: str) -> str:
    """A path or body id, lower-cased; ``400 Request_BadRequest`` unless it is a GUID."""
    key = object_id.lower()
    if not _GUID.match(key):
        raise _GraphError(400, "Request_BadRequest", f"Invalid object identifier '{object_id}'.")
    return key


def _referenced_id(body: Any) -> str:
    """The object id at the end of a ``$ref`` body's ``@odata.id`` URL."""
    if not isinstance(body, dict):
        raise _GraphError(400, "BadRequest", _BAD_JSON)
    reference = body.get("@odata.id")
    match = _REF_ID.search(reference) if isinstance(reference, str) else None
    if match is None:
        raise _GraphError(400, "Request_BadRequest", "Invalid URL format specified in @odata.id.")
    return match.group(1)


def _not_found(object_id: str) -> _GraphError:
    return _GraphError(
        404,
        "Request_ResourceNotFound",
        f"Resource '{object_id}' does not exist or one of its queried reference-property objects are not present.",
    )


def _unknown_segment(segment: str) -> _GraphError:
    return _GraphError(400, "BadRequest", f"Resource not found for the segment '{segment}'.")


def _invalid_property(name: str, resource: str, body: Any) -> _GraphError:
    if not isinstance(body, dict):
        return _GraphError(400, "BadRequest", _BAD_JSON)
    return _GraphError(
        400, "Request_BadRequest", f"Invalid value specified for property '{name}' of resource '{resource}'."
    )


def _error_body(error: _GraphError, request_id: str, client_request_id: str) -> dict[str, Any]:
    return {
        "error": {
            "code": error.code,
            "message": error.message,
            "innerError": {
                "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "request-id": request_id,
                "client-request-id": client_request_id,
            },
        }
    }


def _read_json(path: str | os.PathLike[str]) -> Mapping[str, Any]:
    with open(path, encoding="utf-8") as file:
        seed = json.load(file)
    if not isinstance(seed, dict):
        raise ValueError(f"{path}: a seed is a JSON object")
    return seed


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


def _principal_json(principal: _Principal) -> dict[str, Any]:
    return {
        "@odata.type": f"#microsoft.graph.{principal.type}",
        "id": principal.id,
        "displayName": principal.display_name,
    }


def _graph_service_principal_json() -> dict[str, Any]:
    return {
        "id": GRAPH_SERVICE_PRINCIPAL_ID,
        "appId": GRAPH_APP_ID,
        "displayName": "Microsoft Graph",
        "appRoles": [
            {"id": role_id, "value": name, "allowedMemberTypes": ["Application"], "isEnabled": True}
            for name, role_id in GRAPH_APP_ROLES.items()
        ],
    }


def _unit_json(unit: _AdministrativeUnit) -> dict[str, Any]:
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


def _unit_select(listing: _Listing) -> list[str] | None:
    """The properties a unit's ``$select`` names (``400`` for one a unit does not have)."""
    return _selected(listing.query.get("$select"), _PROPERTIES["administrativeUnits"])


def _scoped_membership(unit_id: str, membership_id: str, role_id: str, member_id: str) -> dict[str, Any]:
    return {
        "id": membership_id,
        "roleId": role_id,
        "administrativeUnitId": unit_id,
        "roleMemberInfo": {"id": member_id, "displayName": None},
    }
