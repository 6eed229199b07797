"""Intents per member and target, pure: which request may write, which is a duplicate, which is superseded.

An *intent* is one request's wish for one (member, target) *pair*: add or remove, made at ``requested_at``.
Two rules, decided here from what the ledger recorded (the adapter reads and writes it, ETag-guarded):

- **Idempotency key** (`check_request`): a request id names one request. The same id with the same content
  (`content_hash`) arriving in another message is a `DUPLICATE` (absorbed, nothing written); with other
  content, a `CONFLICT` (refused, never dropped silently). Retry copies and redeliveries of the message that
  first carried the id (its `origin`) are that request again (`SAME_MESSAGE`).
- **Newest intent wins** (`admit`): intents for one pair are ordered by ``(requested_at, request_id)``. An
  intent older than the newest recorded one is `Superseded` (no Graph write). Otherwise it may write once it
  holds the pair's *lease*; a lease held by another attempt makes it `Wait` until the lease's expiry at the
  latest, so a crashed worker cannot block the pair for longer than one lease. `release` gives the lease back
  and records what was applied; a holder whose lease was taken over records nothing.
- **Expiry cannot fail open**: a time-bound add that becomes the newest intent leaves a *pending removal*
  (`PairState.removal_due`) that only an applied removal or a newer add clears.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final

from shared.core.contract import (
    Action,
    AdministrativeUnit,
    DirectoryRole,
    GrantCommand,
    Guid,
    Member,
    RoleAssignment,
    RoleEligibility,
    ScopedRole,
    Source,
    SourceSystem,
    Target,
    derived_request_id,
    parse_directory_scope,
    parse_guid,
    scope_unit,
)
from shared.core.errors import ContractError
from shared.core.times import intent_time

__all__ = [
    "Applied",
    "Intent",
    "Lease",
    "PairState",
    "Proceed",
    "RequestCheck",
    "RequestRecord",
    "Superseded",
    "Uncertain",
    "Wait",
    "admit",
    "check_request",
    "confirm_at",
    "content_hash",
    "expiry_removal",
    "intent_of",
    "pair_of",
    "parse_pair",
    "release",
    "removal_is_due",
    "settled",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Intent:
    """One request's wish for one pair. `content_hash` identifies what it asks (see `content_hash`); `producer`
    is who asked (`shared.core.producers`: a request id is its producer's own); None on a pair recorded before
    producers had names."""

    request_id: str
    content_hash: str
    action: Action
    requested_at: datetime
    expires_at: datetime | None = None
    producer: str | None = None

    @property
    def order(self) -> tuple[datetime, str]:
        """The ordering key: later `requested_at` is newer; equal times are ordered by request id."""
        return (self.requested_at, self.request_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestRecord:
    """What the ledger remembers of a producer's request id: its content, the message that first carried it, its
    pair, and its `requested_at` as first recorded (a retry copy's own stand-in time must not make it newer)."""

    request_id: str
    content_hash: str
    origin: str
    pair: str
    requested_at: datetime
    producer: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Lease:
    """Write permission for one pair, held by one attempt (`token`) until `until`."""

    token: str
    request_id: str
    until: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Applied:
    """The last Graph write that succeeded for the pair: which request, which action, when."""

    request_id: str
    action: Action
    at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Uncertain:
    """A Graph write for the pair whose outcome is unknown (a timeout or a connection lost after it was sent, a
    5xx): request `request_id`'s `action`, sent at `since`; it may still land."""

    request_id: str
    action: Action
    since: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class PairState:
    """The ledger's record of one pair (None before its first intent).

    `removal_due` is a *pending removal*: set by a time-bound add that became the newest intent (its
    ``expires_at``), kept by a removal until a removal is applied, cleared by an add without expiry. The expiry
    sweep removes every pair whose `removal_due` has passed, so a removal that was never scheduled, or kept
    failing, still happens.

    `uncertain` is a write whose outcome is unknown: until it can no longer land (`settled`), a write of the other
    action is made at once and made again when it no longer can (`confirm_at`), so that a late landing never
    outlives a newer intent; the next answered write that cannot be undone by it makes the pair certain again
    (`release`).
    """

    newest: Intent
    lease: Lease | None = None
    applied: Applied | None = None
    removal_due: datetime | None = None
    uncertain: Uncertain | None = None


class RequestCheck(StrEnum):
    NEW = "new"
    SAME_MESSAGE = "same_message"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"


@dataclass(frozen=True, slots=True)
class Proceed:
    """Write `state` (ETag-guarded): the intent is the newest and holds the lease; it may write to Graph."""

    state: PairState


@dataclass(frozen=True, slots=True)
class Superseded:
    """A newer intent is recorded for the pair: no Graph write."""

    newest: Intent


@dataclass(frozen=True, slots=True)
class Wait:
    """Another attempt holds the pair's lease until `until`: try again then (or earlier)."""

    until: datetime
    holder: str


#: The pair kinds of the PIM targets: ``elig.<roleDefinitionId>.<scope>.<member>`` and ``asgn.…`` (`pair_of`).
_SCHEDULE_PAIRS: Final[Mapping[str, type[RoleEligibility] | type[RoleAssignment]]] = {
    "elig": RoleEligibility,
    "asgn": RoleAssignment,
}


def _scope_token(target: RoleEligibility | RoleAssignment) -> str:
    """A directory scope as one dot-free token of a pair: ``tenant`` for ``/``, ``au-<unit>`` for a unit's."""
    unit = scope_unit(target.directory_scope_id)
    return "tenant" if unit is None else f"au-{unit}"


def _schedule_pair(kind: str, definition: str, scope: str, member: str) -> tuple[Target, Guid]:
    """The PIM target and member of a pair `_scope_token` wrote (ValueError for anything else)."""
    unit = "" if scope == "tenant" else scope.removeprefix("au-")
    if scope != "tenant" and (unit == scope or not unit):
        raise ValueError(f"not a directory scope token: {scope!r}")
    try:
        directory_scope = parse_directory_scope("/" if scope == "tenant" else f"/administrativeUnits/{unit}")
        return _SCHEDULE_PAIRS[kind](role_definition_id=parse_guid(definition), directory_scope_id=directory_scope), (
            parse_guid(member)
        )
    except ContractError as error:
        raise ValueError(error.description) from None


def pair_of(target: Target, member_id: str) -> str:
    """The pair's identity, e.g. ``au.<unit>.<member>``; a role named by id and by template are two pairs; a PIM
    eligibility ``elig.<roleDefinitionId>.<tenant|au-<unit>>.<member>``, an active PIM assignment ``asgn.…``."""
    if isinstance(target, RoleEligibility | RoleAssignment):
        kind = "elig" if isinstance(target, RoleEligibility) else "asgn"
        return f"{kind}.{target.role_definition_id}.{_scope_token(target)}.{member_id}"
    if isinstance(target, AdministrativeUnit):
        where = f"au.{target.id}"
    elif isinstance(target, ScopedRole):
        where = f"scoped.{target.role_template_id}.{target.administrative_unit_id}"
    elif isinstance(target, DirectoryRole) and target.id is not None:
        where = f"role.{target.id}"
    else:
        where = f"template.{target.role_template_id}"
    return f"{where}.{member_id}"


def parse_pair(pair: str) -> tuple[Target, Guid]:
    """The target and member id of a pair named by `pair_of` (raises ValueError for anything else)."""
    kind, *ids = pair.split(".")
    if kind in _SCHEDULE_PAIRS and len(ids) == 3:
        return _schedule_pair(kind, *ids)
    guids = [parse_guid(value) for value in ids]
    if kind == "au" and len(guids) == 2:
        return AdministrativeUnit(id=guids[0]), guids[1]
    if kind == "role" and len(guids) == 2:
        return DirectoryRole(id=guids[0]), guids[1]
    if kind == "template" and len(guids) == 2:
        return DirectoryRole(role_template_id=guids[0]), guids[1]
    if kind == "scoped" and len(guids) == 3:
        return ScopedRole(role_template_id=guids[0], administrative_unit_id=guids[1]), guids[2]
    raise ValueError(f"not a pair: {pair!r}")


def expiry_removal(target: Target, member_id: Guid, *, of: Intent) -> GrantCommand:
    """The app's own removal ending intent `of` (a time-bound add, or a removal still pending).

    Built only from what the ledger records, so the removal scheduled with a grant and one the expiry sweep
    sends are the same request (same id, same content): one of them is absorbed. It is newer than `of` by one
    microsecond, and older than any intent made after it.
    """
    reason = f"Expiry of {of.request_id}"
    return GrantCommand(
        request_id=derived_request_id("expire", of.request_id),
        action=Action.REMOVE,
        target=target,
        member=Member(id=member_id),
        source=Source(system=SourceSystem.OTHER, reference=of.request_id[:256]),
        reason=reason[:1024],
        requested_at=of.requested_at + timedelta(microseconds=1),
    )


def content_hash(command: GrantCommand) -> str:
    """SHA-256 (hex) of what a request asks: action, pair, member type, source system, expiry, dry run.

    Free text (``reason``, ``requestedBy``, ``source.reference``) and ``requestedAt`` (when it was asked:
    a webhook fired twice gets two receive times) are not part of it.
    """
    asked = {
        "action": command.action.value,
        "pair": pair_of(command.target, command.member.id),
        "memberType": command.member.type.value if command.member.type else None,
        "source": command.source.system.value,
        "expiresAt": command.expires_at.isoformat() if command.expires_at else None,
        "dryRun": command.dry_run,
    }
    return hashlib.sha256(json.dumps(asked, sort_keys=True).encode()).hexdigest()


def intent_of(command: GrantCommand, *, arrived_at: datetime, producer: str | None = None) -> Intent:
    """`producer`'s intent in the command, made at its ``requestedAt`` unless that is later than its first arrival
    `arrived_at` (`shared.core.times.intent_time`: no producer's clock dates an intent in the future)."""
    return Intent(
        request_id=command.request_id,
        content_hash=content_hash(command),
        action=command.action,
        requested_at=intent_time(command.requested_at, arrived_at=arrived_at),
        expires_at=command.expires_at if command.action is Action.ADD else None,
        producer=producer,
    )


def check_request(record: RequestRecord | None, *, intent: Intent, origin: str) -> RequestCheck:
    """Classify a delivery of `intent` (first carried by message `origin`) against its request id's record."""
    if record is None:
        return RequestCheck.NEW
    if record.content_hash != intent.content_hash:
        return RequestCheck.CONFLICT
    if record.origin == origin:
        return RequestCheck.SAME_MESSAGE
    return RequestCheck.DUPLICATE


def admit(
    state: PairState | None,
    intent: Intent,
    *,
    token: str,
    now: datetime,
    lease_for: timedelta,
    uncertain_window: timedelta = timedelta(0),
) -> Proceed | Superseded | Wait:
    """Decide whether `intent` may write now (attempt `token`); `Proceed` carries the state to record.

    Older than the recorded newest: `Superseded`, whoever holds the lease. Otherwise a live lease of another
    token: `Wait` until it expires. Otherwise, on a pair with a write of the other action whose outcome is unknown
    and which may still land (`uncertain_window` after it was sent): `Wait` until it no longer can, so that this
    intent's own write, and its answer, come after it (a write of the same action does not wait: it has the same
    effect). Otherwise `Proceed`: the intent becomes (or stays) the newest and takes the lease until
    ``now + lease_for``.
    """
    if state is not None:
        if intent.order < state.newest.order:
            return Superseded(state.newest)
        lease = state.lease
        if lease is not None and lease.token != token and lease.until > now:
            return Wait(until=lease.until, holder=lease.request_id)
        doubt = state.uncertain
        if (
            doubt is not None
            and doubt.action is not intent.action
            and not settled(state, now=now, window=uncertain_window)
        ):
            return Wait(until=doubt.since + uncertain_window, holder=doubt.request_id)
    lease = Lease(token=token, request_id=intent.request_id, until=now + lease_for)
    if state is None:
        return Proceed(PairState(newest=intent, lease=lease, removal_due=intent.expires_at))
    removal_due = intent.expires_at if intent.action is Action.ADD else state.removal_due
    return Proceed(replace(state, newest=intent, lease=lease, removal_due=removal_due))


def release(
    state: PairState,
    *,
    token: str,
    applied: Action | None,
    now: datetime,
    uncertain: Action | None = None,
    uncertain_window: timedelta = timedelta(0),
) -> PairState | None:
    """The state after attempt `token` is done: lease returned and, if it wrote `applied`, that recorded; if its
    write's outcome is unknown, the pair `Uncertain` about `uncertain` (the action it sent) from `now`. An applied
    write makes the pair certain again when it has the uncertain write's effect, or that write can no longer land
    (`uncertain_window` after it was sent); otherwise the pair stays uncertain (see `confirm_at`).

    None when `token` no longer holds the lease (it expired and was taken over): nothing is to be recorded.
    """
    if state.lease is None or state.lease.token != token:
        return None
    if uncertain is not None:
        sent = Uncertain(request_id=state.lease.request_id, action=uncertain, since=now)
        return replace(state, lease=None, uncertain=sent)
    if applied is None:
        return replace(state, lease=None)
    doubt = state.uncertain
    if doubt is not None and (doubt.action is applied or settled(state, now=now, window=uncertain_window)):
        doubt = None  # the directory is known again: this write's answer came after any effect the other can have
    done = Applied(request_id=state.lease.request_id, action=applied, at=now)
    removal_due = None if applied is Action.REMOVE else state.removal_due
    return replace(state, lease=None, applied=done, removal_due=removal_due, uncertain=doubt)


def settled(state: PairState, *, now: datetime, window: timedelta) -> bool:
    """True when the pair's uncertain write (if any) can no longer land: `window` has passed since it was sent."""
    return state.uncertain is None or state.uncertain.since + window <= now


def confirm_at(state: PairState, *, action: Action, now: datetime, window: timedelta) -> datetime | None:
    """When a write of `action` made now on this pair must be made again to be sure of its effect: when the pair is
    uncertain about a write of the other action that may still land, the moment it no longer can; else None."""
    doubt = state.uncertain
    if doubt is None or doubt.action is action or settled(state, now=now, window=window):
        return None
    return doubt.since + window


def removal_is_due(state: PairState | None, *, now: datetime) -> bool:
    """True when the pair has a pending removal whose time has come (what the expiry sweep acts on)."""
    return state is not None and state.removal_due is not None and state.removal_due <= now
