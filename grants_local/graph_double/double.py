"""`GraphDouble`: the Graph double's server, its seeding and observing methods, and the order a request goes through
(faults, token, routing, budgets, the directory). The package docstring describes what it answers."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from types import MappingProxyType, TracebackType
from typing import Any, NamedTuple

from grants_local._http import LoopbackServer, Request, Response
from grants_local.graph_double.answers import (
    TOKEN_EMPTY,
    TOKEN_EXPIRED,
    GraphError,
    Reply,
    canonical,
    error_body,
)
from grants_local.graph_double.budgets import PRIORITIES, Budgets, WriteRecord, read_cost
from grants_local.graph_double.directory import (
    GRAPH_APP_ROLES,
    AdministrativeUnit,
    Directory,
    PimKind,
    PrincipalType,
    RoleDefinition,
    RoleSettings,
    RoleTemplate,
    Schedule,
    read_duration,
)
from grants_local.graph_double.faults import HOLD_LIMIT_SECONDS, STATUS_ERRORS, Fault
from grants_local.graph_double.paging import Listing
from grants_local.graph_double.routes import DENIALS, PermissionKind, routes
from grants_local.token_endpoint import TokenEndpoint

__all__ = ["GraphDouble", "LoggedRequest"]

_PREFIX = "/v1.0"
_WRITES = frozenset({"POST", "DELETE", "PATCH", "PUT"})


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


class GraphDouble:
    """Microsoft Graph on loopback (see the package docstring). Use as a context manager or call `close`.

    `tokens` is the `TokenEndpoint` whose tokens are accepted, or a ``(token, resource) -> bool`` check.
    `write_budget` ``(n, window_seconds)`` lets at most n writes through in any sliding window; more answer
    ``429`` with ``Retry-After`` = seconds until one is allowed again (ceil, at least 1), with Graph's throttle
    headers and priorities as the package docstring says (`priority_reserve`: the share of the limit lower
    priorities leave to higher ones when both are writing).
    `read_budget` ``(units, window_seconds)`` lets reads (GET) spend at most that many resource units in any
    sliding window, with Graph's read throttling (package docstring); writes are not charged to it.
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
        self.latency_seconds = latency_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._directory = Directory(clock=clock, now=lambda: datetime.now(UTC))
        self._budgets = Budgets(
            write_budget=write_budget, read_budget=read_budget, priority_reserve=priority_reserve, clock=clock
        )
        self._faults: list[Fault] = []
        self._denied: set[PermissionKind] = set()
        self._log: list[LoggedRequest] = []
        self._write_count = 0
        self._read_count = 0
        self._read_units = 0
        self._holding: list[Fault] = []
        self._server = LoopbackServer(self._answer)

    @property
    def now(self) -> Callable[[], datetime]:
        """PIM's clock: schedules start and end on it (Entra ends a schedule at its expiry), by default the wall
        clock; a test or a local run on a virtual clock sets its own (e.g. ``ManualClock.utcnow``)."""
        return self._directory.now

    @now.setter
    def now(self, now: Callable[[], datetime]) -> None:
        with self._lock:
            self._directory.now = now

    @property
    def write_budget(self) -> tuple[int, float] | None:
        return self._budgets.write_budget

    @write_budget.setter
    def write_budget(self, budget: tuple[int, float] | None) -> None:
        self._budgets.write_budget = budget

    @property
    def read_budget(self) -> tuple[int, float] | None:
        return self._budgets.read_budget

    @read_budget.setter
    def read_budget(self, budget: tuple[int, float] | None) -> None:
        self._budgets.read_budget = budget

    @property
    def priority_reserve(self) -> float:
        return self._budgets.priority_reserve

    @priority_reserve.setter
    def priority_reserve(self, reserve: float) -> None:
        self._budgets.priority_reserve = reserve

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
        unit = AdministrativeUnit(
            canonical(unit_id),
            display_name or f"AU {unit_id}",
            set(map(canonical, members)),
            restricted=restricted,
            membership_rule=membership_rule,
        )
        with self._lock:
            self._directory.units[unit.id] = unit
        return unit.id

    def set_membership_rule(self, unit_id: str, rule: str | None) -> None:
        """Make a unit dynamic with membership rule `rule` or, with None, one of assigned membership (its members
        stay), as an administrator would."""
        with self._lock:
            self._directory.units[canonical(unit_id)].membership_rule = rule

    def scope_app_to_unit(self, unit_id: str, *, scoped: bool = True) -> None:
        """Assign the app's identity a Microsoft Entra role at the unit's scope (as an administrator would): a
        restricted-management unit takes the app's writes from then on; `scoped` false removes that role again."""
        with self._lock:
            self._directory.units[canonical(unit_id)].app_scoped = scoped

    def delete_administrative_unit(self, unit_id: str) -> None:
        """Delete an administrative unit (as an administrator might mid-run): from now on it answers ``404``."""
        with self._lock:
            del self._directory.units[canonical(unit_id)]

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
        member_ids = set(map(canonical, members))
        if member_ids and not activated:
            raise ValueError(f"role template {template_id} has members but is not activated")
        preset = canonical(role_id) if role_id else None
        template = RoleTemplate(canonical(template_id), display_name or f"Role {template_id}", None, preset)
        with self._lock:
            self._directory.templates[template.id] = template
            if activated:
                self._directory.activate(template)
                template.members = member_ids

    def role_id_of(self, template_id: str) -> str | None:
        """The id of the role activated from `template_id`, or None while it is not activated."""
        with self._lock:
            return self._directory.templates[canonical(template_id)].role_id

    # --- behind the app's back -----------------------------------------------------------------------------

    def add_member(self, container_id: str, member_id: str) -> None:
        """Add a principal to an administrative unit, a role, or an activated template's role, as the portal or a
        script would: at once, not logged, not counted, no budget. KeyError for an unknown container or principal
        (or a template that is not activated)."""
        key = canonical(member_id)
        with self._lock:
            if key not in self._directory.principals:
                raise KeyError(member_id)
            self._directory.container(canonical(container_id)).add(key)

    def remove_member(self, container_id: str, member_id: str) -> None:
        """Remove a principal from a container behind the app's back (as `add_member`; no error if absent)."""
        with self._lock:
            self._directory.container(canonical(container_id)).discard(canonical(member_id))

    def assign_scoped_role(self, unit_id: str, template_id: str, member_id: str) -> str:
        """Assign the activated role of `template_id` to a principal, scoped to an administrative unit, behind the
        app's back; return the membership id (an existing one if already assigned). KeyError for unknown ids."""
        key = canonical(member_id)
        with self._lock:
            unit = self._directory.units[canonical(unit_id)]
            role_id = self._directory.activated_role(canonical(template_id))
            if key not in self._directory.principals:
                raise KeyError(member_id)
            for membership_id, held in unit.scoped.items():
                if held == (role_id, key):
                    return membership_id
            membership_id = secrets.token_hex(24)
            unit.scoped[membership_id] = (role_id, key)
            return membership_id

    def unassign_scoped_role(self, unit_id: str, template_id: str, member_id: str) -> None:
        """Undo `assign_scoped_role` (or the app's own assignment) behind the app's back; no error if absent."""
        key = canonical(member_id)
        with self._lock:
            unit = self._directory.units[canonical(unit_id)]
            role_id = self._directory.activated_role(canonical(template_id))
            for membership_id in [m for m, held in unit.scoped.items() if held == (role_id, key)]:
                del unit.scoped[membership_id]

    def scoped_members_of(self, unit_id: str, template_id: str) -> set[str]:
        """Member ids holding the role of `template_id` scoped to the unit (empty if not activated)."""
        with self._lock:
            unit = self._directory.units[canonical(unit_id)]
            role_id = self._directory.templates[canonical(template_id)].role_id
            return {member for role, member in unit.scoped.values() if role == role_id}

    def add_role_definition(self, definition_id: str, *, display_name: str = "") -> str:
        """Add a custom role's definition (a built-in role's definition is its template's, `add_role_template`)."""
        key = canonical(definition_id)
        with self._lock:
            self._directory.definitions[key] = RoleDefinition(key, display_name or f"Custom role {key}")
        return key

    def set_role_settings(self, definition_id: str, settings: RoleSettings) -> None:
        """Set PIM's settings of a role (by definition id) for admins' requests: the longest eligibility and active
        assignment each may have, and whether each may be permanent."""
        with self._lock:
            self._directory.settings[canonical(definition_id)] = settings

    def pim_scope_unknown(self, unit_id: str, *, unknown: bool = True) -> None:
        """Make PIM carry out requests for the unit's scope at ``/`` and answer ``directoryScopeId: "/"``, as
        reported for a unit created moments before (msgraph-sdk-powershell#1996); `unknown` false undoes it."""
        with self._lock:
            if unknown:
                self._directory.pim_unaware.add(canonical(unit_id))
            else:
                self._directory.pim_unaware.discard(canonical(unit_id))

    def assign_schedule(
        self,
        kind: PimKind,
        definition_id: str,
        scope: str,
        principal_id: str,
        *,
        end: datetime | None = None,
    ) -> str:
        """Make `principal_id` eligible for (or actively assigned, `kind`) a role at `scope` behind the app's back,
        from now until `end` (None: permanently); return the schedule id (an existing one's, if in place)."""
        key = (kind, canonical(definition_id), scope, canonical(principal_id))
        with self._lock:
            existing = self._directory.live(key)
            if existing is not None:
                return existing.id
            start = self._directory.now()
            schedule = Schedule(str(uuid.uuid4()), kind, key[3], key[1], scope, start, end, request="portal")
            self._directory.schedules[key] = schedule
            return schedule.id

    def remove_schedule(self, kind: PimKind, definition_id: str, scope: str, principal_id: str) -> None:
        """End a schedule behind the app's back (no error if there is none)."""
        with self._lock:
            self._directory.schedules.pop((kind, canonical(definition_id), scope, canonical(principal_id)), None)

    def schedules_of(self, kind: PimKind, definition_id: str, scope: str) -> set[str]:
        """The principals `kind` of the role at `scope` is held by now (a schedule past its end is gone)."""
        definition = canonical(definition_id)
        with self._lock:
            live = [self._directory.live(key) for key in list(self._directory.schedules)]
            return {
                s.principal
                for s in live
                if s is not None and (s.kind, s.definition, s.scope) == (kind, definition, scope)
            }

    def schedule_of(self, kind: PimKind, definition_id: str, scope: str, principal_id: str) -> Schedule | None:
        """The schedule in place for the principal (a copy), or None."""
        with self._lock:
            schedule = self._directory.live((kind, canonical(definition_id), scope, canonical(principal_id)))
            return None if schedule is None else dataclasses.replace(schedule)

    def load(self, source: str | os.PathLike[str] | Mapping[str, Any]) -> None:
        """Add the objects of a seed (a mapping, or the path of a JSON file) in the package docstring's format."""
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
        for definition in seed.get("roleDefinitions", ()):
            self.add_role_definition(definition["id"], display_name=definition.get("displayName", ""))
        for entry in seed.get("roleSettings", ()):
            eligible, active = entry.get("eligibility", {}), entry.get("assignment", {})
            self.set_role_settings(
                entry["roleDefinitionId"],
                RoleSettings(
                    eligible_max=_duration(eligible.get("maximumDuration")),
                    eligible_permanent=bool(eligible.get("allowPermanent", True)),
                    active_max=_duration(active.get("maximumDuration")),
                    active_permanent=bool(active.get("allowPermanent", True)),
                ),
            )

    def grant_app_role(self, principal_id: str, permission: str) -> None:
        """Grant Graph's application permission `permission` (a `GRAPH_APP_ROLES` name) to a service principal."""
        with self._lock:
            self._directory.app_roles.setdefault(canonical(principal_id), set()).add(GRAPH_APP_ROLES[permission])

    def revoke_app_role(self, principal_id: str, permission: str) -> None:
        """Undo `grant_app_role` (nothing happens if it was not granted)."""
        with self._lock:
            self._directory.app_roles.get(canonical(principal_id), set()).discard(GRAPH_APP_ROLES[permission])

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

    def holds(self, fault: Fault) -> bool:
        """True while `fault` (a `Fault.hold`) keeps a request it matched, not yet released."""
        with self._lock:
            return any(held is fault for held in self._holding)

    def deny(self, kind: PermissionKind) -> None:
        """Answer writes to `kind` ``403`` as Graph answers a missing permission: administrative units or directory
        roles ``Authorization_RequestDenied``; PIM's eligibility or assignment schedule requests ``UnknownError``
        whose message is PermissionScopeNotGranted naming the permission."""
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
            return list(self._budgets.write_log)

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
        """Resource units those reads cost (Graph's identity-and-access costs; see the package docstring)."""
        with self._lock:
            return self._read_units

    @property
    def reads_throttled(self) -> int:
        """Reads answered ``429`` by the read budget."""
        with self._lock:
            return self._budgets.reads_throttled

    def members_of(self, container_id: str) -> set[str]:
        """Member ids of an administrative unit, a role, or a template's role (empty if not activated).

        Raises KeyError for an id that is none of these.
        """
        key = canonical(container_id)
        with self._lock:
            if key in self._directory.units:
                return set(self._directory.units[key].members)
            template = self._directory.templates[self._directory.roles.get(key, key)]
            return set(template.members)

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
                code, message = STATUS_ERRORS.get(fault.status_code, ("UnknownError", ""))
                raise GraphError(fault.status_code, code, message, retry_after=fault.retry_after)
            self._authenticate(request.headers.get("Authorization", ""))
            with self._lock:
                status, payload = self._dispatch(request, path, body, headers)
        except GraphError as error:
            status, payload = error.status, error_body(error, request_id, client_request_id)
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
            raise GraphError(401, "InvalidAuthenticationToken", TOKEN_EMPTY)
        if not self._token_valid(token, self.resource):
            raise GraphError(401, "InvalidAuthenticationToken", TOKEN_EXPIRED)

    def _dispatch(self, request: Request, path: str, body: Any, headers: dict[str, str]) -> Reply:
        """Route, apply the write budget and permissions, and answer (holding the lock); the budget's headers
        go into `headers`."""
        if not request.path.lower().startswith(_PREFIX + "/"):
            version = request.path.strip("/").split("/")[0]
            raise GraphError(400, "BadRequest", f"Invalid version: {version}")
        segments = path.strip("/").split("/")
        kind, handlers = routes(self._directory, segments, body, Listing(self.base_url, path, request.query))
        handler = handlers.get(request.method)
        if handler is None:
            raise GraphError(405, "Request_BadRequest", "Specified HTTP method is not allowed for the request target.")
        if request.method in _WRITES:
            priority = PRIORITIES.get(request.headers.get("x-ms-throttle-priority", "").strip().lower(), "Normal")
            headers.update(self._budgets.spend_write(priority))
            if kind is not None and kind in self._denied:
                raise GraphError(403, *DENIALS[kind])
            self._write_count += 1
        elif request.method == "GET":
            cost = read_cost(segments, request.query)
            headers.update(self._budgets.spend_read(cost))
            self._read_count += 1
            self._read_units += cost
        return handler()

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
        key = canonical(object_id)
        with self._lock:
            self._directory.add_principal(
                key,
                kind,
                display_name=display_name,
                is_assignable_to_role=is_assignable_to_role,
                visible_after_lookups=visible_after_lookups,
                visible_after_seconds=visible_after_seconds,
            )
        return key


def _duration(value: object) -> timedelta | None:
    return None if value is None else read_duration(str(value))


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
