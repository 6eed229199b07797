"""The Graph double's budgets: Graph's write quota and resource-unit (read) quota, with its throttling headers.

`Budgets.spend_write` lets one write through or raises its ``429``; `Budgets.spend_read` charges a read's resource
units (`read_cost`) or raises its ``429``. Both return the headers Graph sends with the answer. Not thread-safe: the
double calls them with its lock held.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from typing import Final, Literal, NamedTuple

from grants_local.graph_double.answers import GraphError

__all__ = ["APPLICATION_ID", "PRIORITIES", "TENANT_ID", "Budgets", "Priority", "WriteRecord", "read_cost"]

Priority = Literal["Low", "Normal", "High"]
PRIORITIES: Final[Mapping[str, Priority]] = {"low": "Low", "normal": "Normal", "high": "High"}
#: Graph sends x-ms-throttle-limit-percentage only once more than this fraction of the limit is used.
_USAGE_SIGNAL_FLOOR: Final = 0.8
#: The application and tenant ids the double names in x-ms-throttle-scope.
APPLICATION_ID: Final = "00000000-0000-4000-8000-0000000a9915"
TENANT_ID: Final = "00000000-0000-4000-8000-00000007e4a7"


class WriteRecord(NamedTuple):
    """One write the budget saw: when (on the double's clock), its ``x-ms-throttle-priority``, and whether it
    was let through (False: answered ``429``)."""

    at: float
    priority: Priority
    admitted: bool


class Budgets:
    """The write budget ``(n, window_seconds)`` and the read budget ``(units, window_seconds)`` (either None: no
    limit), `priority_reserve` and time from `clock` (see `GraphDouble`)."""

    def __init__(
        self,
        *,
        write_budget: tuple[int, float] | None,
        read_budget: tuple[int, float] | None,
        priority_reserve: float,
        clock: Callable[[], float],
    ) -> None:
        self.write_budget = write_budget
        self.read_budget = read_budget
        self.priority_reserve = priority_reserve
        self._clock = clock
        self._recent_writes: deque[float] = deque()
        self._last_admitted: dict[Priority, float] = {}
        self.write_log: list[WriteRecord] = []
        self._recent_reads: deque[tuple[float, int]] = deque()  # (when, resource units) within the read window
        self._read_units_in_window = 0
        self.reads_throttled = 0

    def spend_read(self, cost: int) -> dict[str, str]:
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
            self.reads_throttled += 1
            raise GraphError(
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

    def spend_write(self, priority: Priority) -> dict[str, str]:
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
            self.write_log.append(WriteRecord(now, priority, admitted=False))
            raise GraphError(
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
        self.write_log.append(WriteRecord(now, priority, admitted=True))
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


def read_cost(segments: list[str], query: Mapping[str, str]) -> int:
    """A read's resource units (Graph's identity-and-access table): 2 for a service principal's
    appRoleAssignments, 1 for every other path the double serves; 1 less with ``$select``, 1 less with a ``$top``
    under 20; never below 1."""
    lower = [segment.lower() for segment in segments]
    cost = 2 if lower[:1] == ["serviceprincipals"] and lower[-1:] == ["approleassignments"] else 1
    cost -= "$select" in query
    top = query.get("$top", "")
    cost -= top.isascii() and top.isdigit() and int(top) < 20
    return max(cost, 1)
