"""What the services ask of the grant ledger (`shared.adapters.ledger.Ledger`), as types and protocols, no I/O.

- `Ticket`, `Admitted`, `Absorbed`: what `GateLedger.begin` answers besides `shared.core.pairs`' decisions.
- `Group`, `GroupKind`: a bulk job or an HR event as recorded (the status API's job and HR event views).
- `DriftHold`: removals the drift guard holds until an operator confirms them.
- `StatusLedger`, `GateLedger`, `DriftLedger`: the parts of the ledger the settle ladder, the intent gate and the
  drift service each depend on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from shared.core.contract import Action, Guid, Target
from shared.core.intents import Intent, RequestRecord
from shared.core.pairs import NotDue, PairState, Released, Superseded, Wait
from shared.core.statuses import StatusRecord, StatusWrite

__all__ = [
    "Absorbed",
    "Admitted",
    "DriftHold",
    "DriftLedger",
    "GateLedger",
    "Group",
    "GroupKind",
    "StatusLedger",
    "Ticket",
]


#: The kinds of group a request can belong to: a bulk job (``jobId``) or an HR event (``hrEventId``).
GroupKind = Literal["job", "hrEvent"]


@dataclass(slots=True)
class Group:
    """One producer's bulk job or HR event as recorded: every row's ``requestId``, ``status``, ``jobRow``, ``jobRows``
    (and for an HR event's row its person, ``memberId``: None on a row recorded before rows were kept by person); the
    failed rows' whole status records; and for an HR event its records, one per person (`Ledger.record_event`)."""

    rows: list[dict[str, Any]]
    failed: list[StatusRecord] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    producer: str | None = None

    @property
    def event(self) -> dict[str, Any] | None:
        """The HR event's record when it is about one person (None otherwise)."""
        return self.events[0] if len(self.events) == 1 else None


@dataclass(frozen=True, slots=True)
class Ticket:
    """A held lease: what `finish` needs to return it (`etag` is the pair entity's as this attempt wrote it), and the
    Graph write it holds the lease for (`write`)."""

    pair: str
    token: str
    state: PairState
    etag: str
    write: Action


@dataclass(frozen=True, slots=True)
class Admitted:
    """The intent holds the pair's lease until ``ticket.state.lease.until``: write to Graph, then `finish`."""

    ticket: Ticket


@dataclass(frozen=True, slots=True)
class Absorbed:
    """The request id arrived before in another message with the same content: this delivery does nothing."""

    record: RequestRecord


@dataclass(frozen=True, slots=True, kw_only=True)
class DriftHold:
    """Removals of one target the blast-radius guard holds: the set's `digest` (`shared.core.drift.Held`), how many
    removals of how many members against the `limit`, since when, and when a confirm released it (None: held) and
    which operator did (`shared.core.access.Caller.label`)."""

    digest: str
    removals: int
    limit: int
    members: int
    held_at: datetime
    released_at: datetime | None = None
    released_by: str | None = None


class StatusLedger(Protocol):
    """Where a grant's status records are written and read (the settle ladder's part of the ledger)."""

    async def record(self, status: StatusRecord, *, now: datetime, write: StatusWrite = ...) -> bool: ...

    async def status(self, request_id: str, *, producer: str) -> StatusRecord | None: ...


class GateLedger(StatusLedger, Protocol):
    """The intent gate's part of the ledger: a pair's lease taken and returned, the sweep's due removals and the
    pair a sweep that ran out of time stopped at."""

    async def begin(
        self, intent: Intent, *, pair: str, origin: str, now: datetime, aliases: tuple[str, ...] = ...
    ) -> Admitted | Released | Absorbed | Superseded | NotDue | Wait: ...

    async def finish(
        self,
        ticket: Ticket,
        *,
        applied: Action | None,
        now: datetime,
        uncertain: bool = ...,
        already: bool = ...,
        gave_up: bool = ...,
    ) -> bool: ...

    async def due_removals(
        self, *, now: datetime, limit: int = ..., after: str | None = ..., through: str | None = ...
    ) -> list[tuple[str, PairState]]: ...

    async def sweep_cursor(self) -> str | None: ...

    async def keep_sweep_cursor(self, pair: str | None) -> None: ...


class DriftLedger(Protocol):
    """The drift service's part of the ledger: the pairs of a target, the targets, the guard's holds, a repair's
    status."""

    async def status(self, request_id: str, *, producer: str) -> StatusRecord | None: ...

    async def target_pairs(self, target: Target) -> list[tuple[Guid, PairState]]: ...

    async def pair_targets(self, *, prefix: str = ...) -> list[Target]: ...

    async def drift_hold(self, target: Target) -> DriftHold | None: ...

    async def hold_drift(
        self, target: Target, *, digest: str, removals: int, limit: int, members: int, now: datetime
    ) -> DriftHold: ...

    async def release_drift(self, target: Target, *, digest: str, now: datetime, by: str) -> DriftHold | None: ...
