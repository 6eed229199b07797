"""Reading who holds a target, from Graph: one question per uncertain write, one paged listing per drift sweep.

`DirectoryReader.is_member` answers "does member M hold target T" and `DirectoryReader.members` lists T's member
ids page by page, for every target kind (docs/drift.md has the Graph pages these reads follow and their cost).
Only operations Graph documents are used (tests/test_graph_operations.py checks each request against Graph's
v1.0 description):

- administrative unit: ``GET /directory/administrativeUnits/{au}/members/{id}`` (200: a member; 404 naming the
  member: not one); ``GET .../members?$select=id&$top=999``, following ``@odata.nextLink``;
- directory role: by template, its role's id first (`RoleIds`: ``GET /directoryRoles(roleTemplateId='{t}')``, once
  per process), then by id ``GET /directoryRoles/{role}/members?$select=id``, for a membership question too (Graph
  documents no read of one role member): Graph does not page roles, so a listing of `ROLE_LIST_LIMIT` or more
  members (it may have been cut) raises instead of answering (`role_member_ids`);
- scoped role: the role's id (`RoleIds`), then ``GET /directory/administrativeUnits/{au}/scopedRoleMembers``
  (paged), the memberships of that role;
- PIM eligibility or active assignment: ``GET /roleManagement/directory/roleEligibilitySchedules`` (or
  ``roleAssignmentSchedules``) ``?$filter=roleDefinitionId eq '{d}' and directoryScopeId eq '{s}'`` (and, for one
  member, ``and principalId eq '{m}'``) ``&$select=principalId``, following ``@odata.nextLink`` (`schedules_path`):
  the schedules PIM holds now or later for that role at that scope (a schedule Entra ended at its expiry is not
  listed).

A role template that is not activated has no members (False, nothing listed), nor has a role definition no schedule
names; a unit or a role id that does not exist is `PermanentError(TargetNotFound)`; a ``403`` is
`PermanentError(Forbidden)`; transport failures and 5xx are `TransientError(GraphUnavailable)`.

Reads never take the write governor's tokens (`GraphClient` only paces writes). They are paced by a `ReadPacer`
of their own, so a sweep cannot starve the app's other reads of Graph's resource units: requests start at most
`ReadPacer.rate` per second, the rate halves while Graph reports more than 0.8 of the quota used, and a read's
``429`` holds every read of the pacer for its ``Retry-After`` (at most `ReadPacer.max_wait`), then the read is
sent again, up to `DirectoryReader` ``throttle_retries`` times before `TransientError(Throttled)` with that
delay. A listing's reads are sent with ``x-ms-throttle-priority: Low`` (the bulk lane); `is_member` keeps the
caller's lane (an uncertain write of a waiting request asks at its own priority).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Final
from urllib.parse import quote

from shared.adapters.graph import GraphClient, GraphResponse, keyed, path, raise_for_graph
from shared.core.contract import (
    AdministrativeUnit,
    DirectoryRole,
    Guid,
    RoleAssignment,
    RoleEligibility,
    RoleSchedule,
    ScopedRole,
    Target,
    parse_guid,
)
from shared.core.errors import ContractError, PermanentError, Reason, TransientError
from shared.core.messaging import Lane
from shared.core.schedules import kind_of, schedule_label
from shared.core.units import UNIT_KIND_PROPERTIES, UnitKind

__all__ = [
    "LIST_PAGE_SIZE",
    "ROLE_LIST_LIMIT",
    "DirectoryReader",
    "ReadPacer",
    "RoleIds",
    "UnitKinds",
    "role_member_ids",
    "schedule_principal_ids",
    "schedules_path",
]

#: ``$top`` of a unit's member listing: Graph's largest page for directory objects.
LIST_PAGE_SIZE: Final = 999
#: Graph lists at most this many members of a directory role, without paging.
ROLE_LIST_LIMIT: Final = 1000
#: Reads per second a pacer starts at: 250 resource units per 10 s (a read with ``$select`` costs 1), a
#: fourteenth of the smallest tenant's quota (3,500 per 10 s).
DEFAULT_READ_RATE: Final = 25.0
#: Graph sends ``x-ms-throttle-limit-percentage`` once more than this fraction of the quota is used.
_BUSY: Final = 0.8
_AU_PERMISSION: Final = "AdministrativeUnit.ReadWrite.All (or AdministrativeUnit.Read.All)"
_ROLE_PERMISSION: Final = "RoleManagement.ReadWrite.Directory (or RoleManagement.Read.Directory)"


class ReadPacer:
    """Spaces one process's Graph reads: at most `rate` starts per second (strictly spaced), halved (at most
    once a second, not below `floor`) after an answer saying the quota is over 0.8 used or a ``429``, and grown
    back by a tenth of `ceiling` per calm answer; `throttled` holds every read for the server's ``Retry-After``,
    at most `max_wait` seconds (`default_wait` when it sent none)."""

    def __init__(
        self,
        *,
        rate: float = DEFAULT_READ_RATE,
        floor: float = 1.0,
        max_wait: float = 60.0,
        default_wait: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.ceiling = self.rate = rate
        self.floor = min(floor, rate)
        self.max_wait = max_wait
        self.default_wait = default_wait
        self._clock = clock
        self._sleep = sleep
        self._next = clock()
        self._paused_until = 0.0
        self._cut_at = -1.0
        self.waits = 0  # how often a read was held by a throttled read's Retry-After

    async def acquire(self) -> None:
        """Wait for this read's turn (after any pause), and take it."""
        now = self._clock()
        start = max(now, self._next, self._paused_until)
        self._next = start + (1.0 / self.rate if self.rate > 0 else 0.0)
        if start > now:
            await self._sleep(start - now)

    def observed(self, usage: float | None) -> None:
        """An answer that was not ``429``; `usage` is its ``x-ms-throttle-limit-percentage``, if any."""
        if usage is not None and usage >= _BUSY:
            self._cut()
        else:
            self.rate = min(self.ceiling, self.rate + self.ceiling / 10)

    def throttled(self, retry_after: float | None) -> float:
        """A read was answered ``429``: hold every read for the (bounded) delay and return it."""
        wait = min(self.default_wait if retry_after is None else max(retry_after, 0.0), self.max_wait)
        self._paused_until = max(self._paused_until, self._clock() + wait)
        self.waits += 1
        self._cut()
        return wait

    def _cut(self) -> None:
        now = self._clock()
        if now - self._cut_at >= 1.0:
            self.rate, self._cut_at = max(self.floor, self.rate / 2), now


#: Sends one GET of a path relative to Graph's root (a reader's paced read, or a client's own).
Read = Callable[[str], Awaitable[GraphResponse]]


class RoleIds:
    """Role template id -> the id of the directory role activated from it, looked up in Graph once per process with
    the documented alternate key ``GET /directoryRoles(roleTemplateId='{t}')``; callers asking for one template at
    once wait for one look-up. A template that is not activated (``404``) is not remembered: the next call asks
    again (it may have been activated since). Every read and removal of a role named by template goes to
    ``/directoryRoles/{id}`` with the id found here; only the documented add by template
    (``POST /directoryRoles/roleTemplateId={t}/members/$ref``) names the template in its path."""

    def __init__(self) -> None:
        self._known: dict[Guid, Guid] = {}
        self._locks: dict[Guid, asyncio.Lock] = {}

    async def role_id(self, template: Guid, *, read: Read) -> Guid | None:
        """The id of the role activated from `template` (remembered), or None while it is not activated; other
        answers raise as `raise_for_graph` says."""
        known = self._known.get(template)
        if known is not None:
            return known
        async with self._locks.setdefault(template, asyncio.Lock()):
            known = self._known.get(template)
            if known is not None:
                return known
            response = await read(keyed("directoryRoles", "roleTemplateId", template))
            if response.status == 404:
                return None
            if response.status != 200:
                raise_for_graph(response, permission=_ROLE_PERMISSION)
            found = _ids([(response.body or {}).get("id")])
            if not found:
                raise TransientError(Reason.GRAPH_UNAVAILABLE, f"Graph answered role template {template} without an id")
            self._known[template] = found[0]
            return found[0]


class UnitKinds:
    """Each administrative unit's `UnitKind` (restricted-management, dynamic), read from Graph with
    ``GET /directory/administrativeUnits/{id}?$select=isMemberManagementRestricted,membershipType`` once per process
    (callers asking for one unit at once wait for one read); `fresh` reads it again (and remembers the answer). A
    unit that does not exist is `PermanentError(TargetNotFound)`; other failures raise as `raise_for_graph` says."""

    def __init__(self) -> None:
        self._known: dict[Guid, UnitKind] = {}
        self._locks: dict[Guid, asyncio.Lock] = {}

    async def kind_of(self, unit: Guid, *, read: Read, fresh: bool = False) -> UnitKind:
        """The kind of administrative unit `unit`."""
        known = None if fresh else self._known.get(unit)
        if known is not None:
            return known
        async with self._locks.setdefault(unit, asyncio.Lock()):
            known = None if fresh else self._known.get(unit)
            if known is not None:
                return known
            url_path = path("directory", "administrativeUnits", unit) + "?$select=" + ",".join(UNIT_KIND_PROPERTIES)
            response = await read(url_path)
            if response.status == 404:
                raise _target_not_found(AdministrativeUnit(id=unit), response)
            if response.status != 200:
                raise_for_graph(response, permission=_AU_PERMISSION)
            kind = UnitKind.of(response.body or {})
            self._known[unit] = kind
            return kind


def role_member_ids(response: GraphResponse, *, label: str) -> tuple[Guid, ...]:
    """The member ids of a directory role's listing (``GET /directoryRoles/{id}/members?$select=id``, a ``200``):
    Graph does not page roles, so a listing of `ROLE_LIST_LIMIT` or more may have been cut and raises
    `PermanentError(GraphRejected)` instead of answering."""
    body: Any = response.body or {}
    items = body.get("value", [])
    if len(items) >= ROLE_LIST_LIMIT and "@odata.nextLink" not in body:
        raise PermanentError(
            Reason.GRAPH_REJECTED,
            f"{label} listed {len(items)} members, Graph's most for an unpaged role listing: the list may be cut, so "
            "this target cannot be checked by listing",
            graph=response.answer(),
        )
    return _ids(item.get("id") for item in items)


def schedules_path(target: RoleSchedule, *, member: Guid | None = None) -> str:
    """The listing of `target`'s PIM schedules (its kind's ``roleEligibilitySchedules`` or ``roleAssignmentSchedules``)
    filtered by role definition and directory scope (and `member`, when given), each item narrowed to its
    ``principalId``. Only validated GUIDs and scopes go into the filter."""
    clauses = [
        f"roleDefinitionId eq '{target.role_definition_id}'",
        f"directoryScopeId eq '{target.directory_scope_id}'",
    ]
    if member is not None:
        clauses.append(f"principalId eq '{member}'")
    query = "$filter=" + quote(" and ".join(clauses), safe="'/") + "&$select=principalId"
    return path("roleManagement", "directory", kind_of(target).schedules) + "?" + query


def schedule_principal_ids(response: GraphResponse) -> tuple[Guid, ...]:
    """The principal ids of one page of a schedules listing (a ``200``)."""
    body: Any = response.body or {}
    return _ids(item.get("principalId") for item in body.get("value", []))


class DirectoryReader:
    """Reads targets' members through `graph` (see the module docstring); one per process, like the client.
    `role_ids` and `units` are the process's `RoleIds` and `UnitKinds` (shared with the grant service), or its own."""

    def __init__(
        self,
        *,
        graph: GraphClient,
        pacer: ReadPacer | None = None,
        page_size: int = LIST_PAGE_SIZE,
        throttle_retries: int = 3,
        role_ids: RoleIds | None = None,
        units: UnitKinds | None = None,
    ) -> None:
        self._graph = graph
        self.pacer = pacer or ReadPacer()
        self._page_size = page_size
        self._throttle_retries = throttle_retries
        self._role_ids = role_ids or RoleIds()
        self._units = units or UnitKinds()

    async def is_member(self, *, target: Target, member: Guid) -> bool:
        """True when `member` holds `target` now (as far as Graph's replica answering knows)."""
        if isinstance(target, RoleEligibility | RoleAssignment):
            async for page in self._schedules(target, member=member, sweep=False):
                if member in page:
                    return True
            return False
        if isinstance(target, ScopedRole):
            async for page in self._scoped(target, sweep=False):
                if member in page:
                    return True
            return False
        if isinstance(target, DirectoryRole):
            async for page in self._role_members(target, sweep=False):
                if member in page:
                    return True
            return False
        route = ("directory", "administrativeUnits", target.id)
        response = await self._get(path(*route, "members", member), sweep=False)
        if response.status == 200:
            return True
        if response.status != 404:
            raise_for_graph(response, permission=_AU_PERMISSION)
        if member not in (response.error_message or "").lower():
            await self._probe(target, route, _AU_PERMISSION, sweep=False)  # raises for a unit that is not there
        return False

    async def members(self, *, target: Target) -> AsyncIterator[tuple[Guid, ...]]:
        """`target`'s member ids, one tuple per page Graph answers (read at Low priority)."""
        if isinstance(target, RoleEligibility | RoleAssignment):
            async for page in self._schedules(target, member=None, sweep=True):
                yield page
            return
        if isinstance(target, ScopedRole):
            async for page in self._scoped(target, sweep=True):
                yield page
            return
        if isinstance(target, DirectoryRole):
            async for page in self._role_members(target, sweep=True):
                yield page
            return
        route = ("directory", "administrativeUnits", target.id)
        url_path: str | None = path(*route, "members") + f"?$select=id&$top={self._page_size}"
        while url_path is not None:
            response = await self._get(url_path, sweep=True)
            if response.status == 404:
                await self._probe(target, route, _AU_PERMISSION, sweep=True)  # raises for a unit that is not there
                raise TransientError(
                    Reason.GRAPH_UNAVAILABLE,
                    f"Graph answered 404 listing the members of {_label(target)}, which exists (replication?)",
                    graph=response.answer(),
                )
            if response.status != 200:
                raise_for_graph(response, permission=_AU_PERMISSION)
            body: Any = response.body or {}
            yield _ids(item.get("id") for item in body.get("value", []))
            url_path = self._next(body)

    async def member_set(self, *, target: Target) -> frozenset[Guid]:
        """Every member id of `target` (all pages of `members`)."""
        found: set[Guid] = set()
        async for page in self.members(target=target):
            found.update(page)
        return frozenset(found)

    async def role_id_of(self, template: Guid) -> str | None:
        """The object id of the directory role activated from `template` (looked up once, at Low priority), or
        None while the template is not activated."""
        return await self._role_id(template, sweep=True)

    async def unit_kind(self, unit: Guid) -> UnitKind:
        """What administrative unit `unit` says of its membership now (`UnitKinds`, read again at Low priority; the
        process's copy is updated with it)."""
        return await self._units.kind_of(unit, read=lambda url_path: self._get(url_path, sweep=True), fresh=True)

    async def _role_members(self, target: DirectoryRole, *, sweep: bool) -> AsyncIterator[tuple[Guid, ...]]:
        """The ids holding a directory role: its one unpaged listing by role id (a template's role found first; one
        not activated has no members)."""
        role_id = target.id
        if role_id is None:
            assert target.role_template_id is not None
            role_id = await self._role_id(target.role_template_id, sweep=sweep)
            if role_id is None:
                return
        route = ("directoryRoles", role_id)
        response = await self._get(path(*route, "members") + "?$select=id", sweep=sweep)
        if response.status == 404:
            await self._probe(target, route, _ROLE_PERMISSION, sweep=sweep)  # raises for a role that is not there
            raise TransientError(
                Reason.GRAPH_UNAVAILABLE,
                f"Graph answered 404 listing the members of {_label(target)}, which exists (replication?)",
                graph=response.answer(),
            )
        if response.status != 200:
            raise_for_graph(response, permission=_ROLE_PERMISSION)
        yield role_member_ids(response, label=_label(target))

    async def _scoped(self, target: ScopedRole, *, sweep: bool) -> AsyncIterator[tuple[Guid, ...]]:
        """The ids holding a scoped role, page by page of the unit's scoped role memberships."""
        role_id = await self._role_id(target.role_template_id, sweep=sweep)
        if role_id is None:
            return
        unit = ("directory", "administrativeUnits", target.administrative_unit_id)
        url_path: str | None = path(*unit, "scopedRoleMembers")
        while url_path is not None:
            response = await self._get(url_path, sweep=sweep)
            if response.status == 404:
                raise _target_not_found(target, response)
            if response.status != 200:
                raise_for_graph(response, permission=_ROLE_PERMISSION)
            body: Any = response.body or {}
            yield _ids(
                (item.get("roleMemberInfo") or {}).get("id")
                for item in body.get("value", [])
                if str(item.get("roleId", "")).lower() == role_id
            )
            url_path = self._next(body)

    async def _schedules(
        self, target: RoleSchedule, *, member: Guid | None, sweep: bool
    ) -> AsyncIterator[tuple[Guid, ...]]:
        """The principal ids holding a PIM target, page by page of its schedules (`schedules_path`)."""
        kind = kind_of(target)
        url_path: str | None = schedules_path(target, member=member)
        while url_path is not None:
            response = await self._get(url_path, sweep=sweep)
            if response.status != 200:
                raise_for_graph(response, permission=f"{kind.read_permission} (or {kind.permission})")
            yield schedule_principal_ids(response)
            url_path = self._next(response.body or {})

    async def _role_id(self, template: Guid, *, sweep: bool) -> Guid | None:
        """The id of the role activated from `template` (`RoleIds`: remembered), or None while it is not activated."""
        return await self._role_ids.role_id(template, read=lambda url_path: self._get(url_path, sweep=sweep))

    async def _probe(
        self, target: AdministrativeUnit | DirectoryRole, route: tuple[str, ...], permission: str, *, sweep: bool
    ) -> None:
        """After a ``404`` that named no member: read the target itself (by unit or role id); one that does not
        exist is `PermanentError(TargetNotFound)`."""
        probe = await self._get(path(*route), sweep=sweep)
        if probe.status == 200:
            return
        if probe.status != 404:
            raise_for_graph(probe, permission=permission)
        raise _target_not_found(target, probe)

    async def _get(self, url_path: str, *, sweep: bool) -> GraphResponse:
        """One paced GET, sent again after a ``429`` (its delay) up to the reader's retries."""
        for attempt in range(self._throttle_retries + 1):
            await self.pacer.acquire()
            graph = self._graph.in_lane(Lane.BULK) if sweep else self._graph
            response = await graph.send("GET", url_path)
            if response.status != 429:
                self.pacer.observed(response.usage)
                return response
            wait = self.pacer.throttled(response.retry_after)
            if attempt == self._throttle_retries:
                raise TransientError(
                    Reason.THROTTLED,
                    f"Graph throttled the read GET {url_path} {attempt + 1} times (x-ms-throttle-scope "
                    f"{response.throttle_scope}); retry after {wait:g} s",
                    graph=response.answer(),
                    retry_after=wait,
                )
        raise AssertionError("unreachable")  # pragma: no cover

    def _next(self, body: Any) -> str | None:
        """The path of the next page, or None after the last; a next link off Graph's root is refused (the
        token must not go anywhere else)."""
        link = body.get("@odata.nextLink")
        if link is None:
            return None
        relative = self._graph.relative(link)
        if relative is None:
            raise PermanentError(Reason.GRAPH_REJECTED, f"Graph's @odata.nextLink is not on its own root: {link!r}")
        return relative


def _ids(values: Iterable[object]) -> tuple[Guid, ...]:
    """Member ids from a page; an id that is not a GUID means the answer cannot be trusted."""
    found: list[Guid] = []
    for value in values:
        try:
            found.append(parse_guid(value if isinstance(value, str) else "", field="id"))
        except ContractError as error:
            raise TransientError(
                Reason.GRAPH_UNAVAILABLE, f"Graph listed a member without a GUID id ({error})"
            ) from None
    return tuple(found)


def _label(target: Target) -> str:
    if isinstance(target, RoleEligibility | RoleAssignment):
        return f"the {kind_of(target).noun} of {schedule_label(target)}"
    if isinstance(target, AdministrativeUnit):
        return f"administrative unit {target.id}"
    if isinstance(target, ScopedRole):
        unit = target.administrative_unit_id
        return f"role with template {target.role_template_id} scoped to administrative unit {unit}"
    if target.id is not None:
        return f"directory role {target.id}"
    return f"directory role with template {target.role_template_id}"


def _target_not_found(target: Target, response: GraphResponse) -> PermanentError:
    return PermanentError(
        Reason.TARGET_NOT_FOUND,
        f"{_label(target)} does not exist in this tenant (Graph: {response.error_code}: {response.error_message})",
        graph=response.answer(),
    )
