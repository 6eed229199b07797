"""Intents, pure: one request's wish for one (member, target) pair, and which request id is which request.

An *intent* is one request's wish for one pair: add or remove, made at ``requested_at`` by its ``producer``, with
an `Effect` on the pair's grants (`shared.core.pairs` decides what each does). A request id names one request of
its producer (`check_request`): the same id with the same content (`content_hash`) arriving in another message is a
`DUPLICATE` (absorbed, nothing written); with other content, a `CONFLICT` (refused, never dropped silently). Retry
copies and redeliveries of the message that first carried the id (its `origin`) are that request again
(`SAME_MESSAGE`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
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
    "Effect",
    "Intent",
    "RequestCheck",
    "RequestRecord",
    "check_request",
    "content_hash",
    "effect_of",
    "expiry_removal",
    "intent_of",
    "pair_of",
    "parse_pair",
]


class Effect(StrEnum):
    """What an intent does to its pair's grants (`shared.core.pairs`)."""

    GRANT = "grant"  # a producer's add: its grant holds the pair
    END = "end"  # a producer's remove: ends its own grant
    REVOKE_ALL = "revokeAll"  # a producer's remove with revokeAll: ends every grant older than it, and the membership
    EXPIRE = "expire"  # the app's, at a time-bound grant's end: ends the grant whose newest intent it names
    REPAIR = "repair"  # the app's drift repair: writes what the grants say, changing none


@dataclass(frozen=True, slots=True, kw_only=True)
class Intent:
    """One request's wish for one pair. `content_hash` identifies what it asks (see `content_hash`); `producer`
    is who asked (`shared.core.producers`: a request id is its producer's own; None on a pair recorded before
    producers had names); `kind` its `Effect` when it is not a plain add (`GRANT`) or remove (`END`); `ends`, for an
    expiry, the request id of the intent whose grant it ends."""

    request_id: str
    content_hash: str
    action: Action
    requested_at: datetime
    expires_at: datetime | None = None
    producer: str | None = None
    kind: Effect | None = None
    ends: str | None = None

    @property
    def order(self) -> tuple[datetime, str]:
        """The ordering key: later `requested_at` is newer; equal times are ordered by request id."""
        return (self.requested_at, self.request_id)

    @property
    def effect(self) -> Effect:
        """What the intent does to the pair's grants: its `kind`, else a plain add's or remove's."""
        if self.kind is not None:
            return self.kind
        return Effect.GRANT if self.action is Action.ADD else Effect.END


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


class RequestCheck(StrEnum):
    NEW = "new"
    SAME_MESSAGE = "same_message"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"


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
    """SHA-256 (hex) of what a request asks: action, pair, member type, source system, expiry, dry run, revoke-all.

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
    if command.revoke_all:  # only when set: the hashes of the requests recorded before it existed stay theirs
        asked["revokeAll"] = True
    return hashlib.sha256(json.dumps(asked, sort_keys=True).encode()).hexdigest()


def intent_of(
    command: GrantCommand,
    *,
    arrived_at: datetime,
    producer: str | None = None,
    kind: Effect | None = None,
    ends: str | None = None,
) -> Intent:
    """`producer`'s intent in the command, made at its ``requestedAt`` unless that is later than its first arrival
    `arrived_at` (`shared.core.times.intent_time`: no producer's clock dates an intent in the future); `kind` and
    `ends` as `effect_of` and the expiry say."""
    return Intent(
        request_id=command.request_id,
        content_hash=content_hash(command),
        action=command.action,
        requested_at=intent_time(command.requested_at, arrived_at=arrived_at),
        expires_at=command.expires_at if command.action is Action.ADD else None,
        producer=producer,
        kind=kind,
        ends=ends if kind is Effect.EXPIRE else None,
    )


def effect_of(command: GrantCommand, *, expiry_of: str | None, app: bool) -> Effect | None:
    """What `command` does beyond a producer's plain add or remove (None): the app's removal ending the grant of
    `expiry_of` (`EXPIRE`), any other request of the app's own (`app`: a drift repair, `REPAIR`), a remove with
    ``revokeAll`` (`REVOKE_ALL`)."""
    if expiry_of is not None and command.action is Action.REMOVE:
        return Effect.EXPIRE
    if app:
        return Effect.REPAIR
    if command.revoke_all:
        return Effect.REVOKE_ALL
    return None


def check_request(record: RequestRecord | None, *, intent: Intent, origin: str) -> RequestCheck:
    """Classify a delivery of `intent` (first carried by message `origin`) against its request id's record."""
    if record is None:
        return RequestCheck.NEW
    if record.content_hash != intent.content_hash:
        return RequestCheck.CONFLICT
    if record.origin == origin:
        return RequestCheck.SAME_MESSAGE
    return RequestCheck.DUPLICATE
