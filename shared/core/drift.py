"""Drift, pure: one target's members in the directory against the grants the ledger holds, and what to repair.

`classify` compares the directory's member ids of one target with the ledger's `PairState` per member (each
producer's grant of each pair of that target; `shared.core.pairs`):

- `Missing`: some grant holds the pair (an add that has not expired, newer than any revoke-all); the directory
  lacks the member;
- `Lingering`: the directory has the member, no grant holds the pair, and the app made the membership (its last
  answered write was an add that did not find it there, or an add of its own is in doubt);
- `Unmanaged`: the directory has the member and no grant holds the pair, and the app did not make it (no intent at
  all, a membership that was there before the app's grants, or one added outside the app after the app removed it):
  reported only, unless the target's mode is ``authoritative``.

A pair whose lease is live (a write in flight) is not judged (`Report.in_flight`). Read the directory first and
the ledger after: every membership the app made was recorded as an intent (and its write in doubt) before its
write, so it cannot look unmanaged.

`plan` turns a report into repairs by the target's `Mode`: ``report`` (default) repairs nothing, ``restore``
re-grants *missing* and removes *lingering*, ``authoritative`` also removes *unmanaged*. Two guards:

- **tier-0**: a target the `tier0` predicate names (by default: a tier-0 role template, or a role named by id,
  whose template the core cannot know) is never repaired, whatever its mode;
- **blast radius** (`Guard`): when a target's planned removals exceed ``min(fraction * members, cap)``
  (default 20 % of the directory's members, at most 50) every removal of that target is held (`Held`), not
  planned; re-grants still go. A confirm naming the held set's `Held.digest` releases exactly that set, once: a
  later sweep that would remove other members has another digest, and so does the same drift made again once the
  released removals were carried out (the digest names each pair's last answered write, `Lingering.last_write`,
  `Unmanaged.last_write`, which a removal carried out changes; the repairs themselves are the same requests again).

**Not repairable** (`NotRepairable`): a repair the directory is known to refuse is not sent. The durable record of a
refusal is the refused repair's own status in the ledger (its request id derives from the finding: `repair_of`):
when it is a dead letter for a reason a repair would meet again (`refusal_of`: anything but an outage that ran
out), the pair's repair is held back with that reason until the pair's grants change (a newer request: another
repair id), the target changes (a unit that stopped being restricted-management or dynamic), or an operator
resubmits the refused request (``grants dlq resubmit``). A unit with dynamic membership refuses every repair
(`plan`'s `refused_target`).

Each `Repair` names the request whose grant (or end) it restores (`Repair.restores`, e.g. ``RITM123``, so history
can read "restored RITM123's grant") and carries a request id in the app's own namespace (``~``, which no
producer's request id may start with). A repair changes no grant (`shared.core.pairs`, `Effect.REPAIR`): the gate
writes it only while it is still right (a re-grant while a grant holds the pair, a removal while none does), so it
never beats a producer's request, whatever either's time:

- re-grant of ``<id>``'s add: ``~drift-add:<id>``; removal restoring ``<id>``'s remove: ``~drift-remove:<id>`` (a
  second repair of the same pair is the same request and message again);
- removal of ``<id>``'s expired add: the app's own expiry removal ``~expire:<id>`` (`expiry_removal`), so the
  expiry sweep's copy and the repair are one request;
- removal of an unmanaged member: ``~drift:<pair>``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Set
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final

from shared.core.contract import (
    DERIVED_PREFIX,
    Action,
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
)
from shared.core.errors import Reason
from shared.core.intents import Intent, content_hash, expiry_removal, pair_of
from shared.core.messaging import derived_message_id
from shared.core.pairs import PairState, merged_states
from shared.core.policy import TIER0_ROLE_TEMPLATES
from shared.core.statuses import Status, StatusRecord
from shared.core.times import EARLIEST

__all__ = [
    "DEFAULT_GUARD",
    "UNMANAGED_REQUESTED_AT",
    "Finding",
    "Guard",
    "Held",
    "Lingering",
    "Missing",
    "Mode",
    "NotRepairable",
    "Plan",
    "Refusal",
    "Repair",
    "Report",
    "Unmanaged",
    "classify",
    "is_tier0",
    "newest_states",
    "plan",
    "refusal_of",
    "repair_command",
    "repair_message_id",
    "repair_of",
]

#: When an unmanaged member's removal is dated (a repair is not ordered against intents: `shared.core.pairs`).
UNMANAGED_REQUESTED_AT: Final = EARLIEST  # the start of the app's time domain
_AFTER: Final = timedelta(microseconds=1)
_ADD_SUFFIX: Final = "drift-add"
_REMOVE_SUFFIX: Final = "drift-remove"
#: Dead-letter reasons a repair may well pass later (an outage, a wait that ran out): not a refusal.
_PASSING: Final = frozenset(
    {
        Reason.GRAPH_UNAVAILABLE,
        Reason.THROTTLED,
        Reason.TOKEN_UNAVAILABLE,
        Reason.LEDGER_UNAVAILABLE,
        Reason.QUEUE_UNAVAILABLE,
        Reason.PAIR_BUSY,
        Reason.EXPIRY_NOT_SCHEDULED,
    }
)


class Mode(StrEnum):
    """What a sweep may do about a target's drift."""

    REPORT = "report"
    RESTORE = "restore"
    AUTHORITATIVE = "authoritative"


@dataclass(frozen=True, slots=True, kw_only=True)
class Missing:
    """Some grant holds the pair (`intent`: the newest add of the grants that hold it); the directory lacks the
    member."""

    member_id: Guid
    intent: Intent


@dataclass(frozen=True, slots=True, kw_only=True)
class Lingering:
    """The directory has the member, no grant holds the pair, and the app made the membership; `intent` is what ended
    it (a time-bound add whose removal is still pending, else the pair's newest intent). `last_write`: when the
    pair's last answered write was made (an occurrence of the drift, for the guard's digest; not compared)."""

    member_id: Guid
    intent: Intent
    last_write: datetime | None = field(default=None, compare=False)

    @property
    def expired(self) -> bool:
        """True when what ended the grant is its add's ``expiresAt`` (its removal never happened)."""
        return self.intent.action is Action.ADD


@dataclass(frozen=True, slots=True, kw_only=True)
class Unmanaged:
    """The directory has the member, no grant holds the pair, and the app did not make the membership (no intent at
    all, one there before the app's grants, or one added back after the app removed it). `last_write` as
    `Lingering`'s (None: the app never wrote the pair)."""

    member_id: Guid
    last_write: datetime | None = field(default=None, compare=False)


Finding = Missing | Lingering | Unmanaged


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    """One target's findings (by member id), the members whose pair had a write in flight (not judged), and how
    many members the directory listed."""

    findings: tuple[Finding, ...]
    in_flight: tuple[Guid, ...]
    members: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Guard:
    """The blast-radius guard: a sweep may remove at most ``min(floor(fraction * members), cap)`` of a target's
    members without a confirm."""

    fraction: float = 0.2
    cap: int = 50

    def limit(self, members: int) -> int:
        """Removals allowed without a confirm for a target of `members` members."""
        return max(0, min(self.cap, math.floor(self.fraction * members + 1e-9)))


@dataclass(frozen=True, slots=True, kw_only=True)
class Repair:
    """One write that brings a pair back to what its grants say (or, for an unmanaged member, removes it)."""

    action: Action
    member_id: Guid
    request_id: str
    requested_at: datetime
    restores: str | None  # the request id whose intent this repair restores; None for an unmanaged member
    expires_at: datetime | None  # a re-grant keeps its intent's expiry
    finding: Finding

    def describe(self) -> str:
        """What the repair does, for history and the report, e.g. ``restores RITM123's grant``."""
        finding = self.finding
        if isinstance(finding, Missing):
            return f"restores {self.restores}'s grant"
        if isinstance(finding, Lingering):
            if finding.expired:
                return f"ends {self.restores}'s grant, which expired at {_iso(finding.intent.expires_at)}"
            return f"restores {self.restores}'s removal"
        return "removes a member no request granted (authoritative target)"


@dataclass(frozen=True, slots=True, kw_only=True)
class Refusal:
    """Why a pair's repair is not sent: the app's own request for the pair (`request_id`) was dead-lettered for
    `reason`, or the target refuses every manual write (no `request_id`: a dynamic unit); `description` says what
    a person can do."""

    reason: str
    description: str
    request_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class NotRepairable:
    """A repair the sweep does not send (`refusal` says why): the finding stays reported, each sweep."""

    repair: Repair
    refusal: Refusal


@dataclass(frozen=True, slots=True, kw_only=True)
class Held:
    """Removals held by the blast-radius guard until a confirm names `digest`."""

    repairs: tuple[Repair, ...]
    limit: int
    members: int
    digest: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """What a sweep does for one target: `repairs` to send, removals `held` by the guard, the findings it
    leaves alone (`reported`: report mode, unmanaged members unless authoritative, every finding of a tier-0
    target), the repairs it does not send because the directory refuses them (`not_repairable`), and whether a
    confirm released the held removals (`released`)."""

    mode: Mode
    repairs: tuple[Repair, ...]
    held: Held | None
    reported: tuple[Finding, ...]
    tier0: bool
    released: bool
    not_repairable: tuple[NotRepairable, ...] = ()


#: 20 % of a target's members, at most 50.
DEFAULT_GUARD: Final = Guard()


def classify(*, states: Mapping[Guid, PairState], members: Set[Guid], now: datetime) -> Report:
    """Compare the directory's `members` of one target with the ledger's `states` (member id -> its pair's
    state; see `newest_states`) at `now`; findings sorted by member id."""
    findings: list[Finding] = []
    in_flight: list[Guid] = []
    for member_id in sorted(states.keys() | members):
        state = states.get(member_id)
        present = member_id in members
        if state is None:
            findings.append(Unmanaged(member_id=member_id))
            continue
        if state.lease is not None and state.lease.until > now:
            in_flight.append(member_id)
            continue
        holders = state.holders(now=now)
        last_write = state.applied.at if state.applied is not None else None
        if holders and not present:
            findings.append(Missing(member_id=member_id, intent=max((g.newest for g in holders), key=_order)))
        elif present and not holders:
            if state.preexisting or not state.made_by_app():
                findings.append(Unmanaged(member_id=member_id, last_write=last_write))
            else:
                findings.append(Lingering(member_id=member_id, intent=_ended_by(state, now=now), last_write=last_write))
    return Report(findings=tuple(findings), in_flight=tuple(in_flight), members=len(members))


def _order(intent: Intent) -> tuple[datetime, str]:
    return intent.order


def _ended_by(state: PairState, *, now: datetime) -> Intent:
    """What ended a lingering membership: a grant's add that expired with its removal still pending (its repair is
    that grant's expiry), else the newest intent recorded for the pair."""
    expired = [
        grant.newest
        for grant in state.grants
        if grant.removal_due is not None and grant.newest.action is Action.ADD and not grant.holds(now=now)
    ]
    if expired:
        return max(expired, key=_order)
    latest = state.latest
    assert latest is not None, "a pair the app made has an intent"
    return latest


def newest_states(pairs: Iterable[tuple[Guid, PairState]]) -> dict[Guid, PairState]:
    """One state per member: a role named by id and by template are two pairs in the ledger but one membership in
    the directory: their states are merged (every producer's newer grant, the newer revoke-all, the later lease and
    answered write, every doubt; pre-existing when either says so)."""
    merged: dict[Guid, PairState] = {}
    for member_id, state in pairs:
        known = merged.get(member_id)
        merged[member_id] = state if known is None else merged_states(known, state)
    return merged


def is_tier0(target: Target) -> bool:
    """True for a directory role or scoped role whose template is tier-0 (`TIER0_ROLE_TEMPLATES`), a PIM target whose
    role definition is (a built-in role's definition id is its template id), and a role named by object id (its
    template is not known here: never touched, to fail closed)."""
    if isinstance(target, RoleEligibility | RoleAssignment):
        return target.role_definition_id in TIER0_ROLE_TEMPLATES
    if isinstance(target, ScopedRole):
        return target.role_template_id in TIER0_ROLE_TEMPLATES
    if isinstance(target, DirectoryRole):
        return target.role_template_id is None or target.role_template_id in TIER0_ROLE_TEMPLATES
    return False


def plan(
    report: Report,
    *,
    target: Target,
    mode: Mode = Mode.REPORT,
    guard: Guard = DEFAULT_GUARD,
    tier0: Callable[[Target], bool] = is_tier0,
    confirm: str | None = None,
    refusals: Mapping[Guid, Refusal] | None = None,
    refused_target: Refusal | None = None,
) -> Plan:
    """The repairs for `report` of `target` in `mode` (see the module docstring); `confirm` is a `Held.digest`
    from an earlier plan: when it names this plan's held removals, they are planned instead (`released`).
    `refusals` (member id -> its pair's recorded refusal) and `refused_target` (the target refuses every repair)
    make repairs `not_repairable` instead of planned; the guard counts only the removals that would be sent."""
    protected = tier0(target)
    if protected or mode is Mode.REPORT:
        return Plan(mode=mode, repairs=(), held=None, reported=report.findings, tier0=protected, released=False)
    acted: list[Repair] = []
    reported: list[Finding] = []
    refused: list[NotRepairable] = []
    for finding in report.findings:
        if isinstance(finding, Unmanaged) and mode is not Mode.AUTHORITATIVE:
            reported.append(finding)
            continue
        repair = _repair(target, finding)
        refusal = refused_target or (refusals or {}).get(finding.member_id)
        if refusal is None:
            acted.append(repair)
        else:
            refused.append(NotRepairable(repair=repair, refusal=refusal))
    removals = tuple(r for r in acted if r.action is Action.REMOVE)
    limit = guard.limit(report.members)
    held: Held | None = None
    released = False
    if len(removals) > limit:
        held = Held(repairs=removals, limit=limit, members=report.members, digest=_digest(target, removals))
        if confirm == held.digest:
            held, released = None, True
    repairs = tuple(r for r in acted if held is None or r.action is Action.ADD)
    return Plan(
        mode=mode,
        repairs=repairs,
        held=held,
        reported=tuple(reported),
        tier0=False,
        released=released,
        not_repairable=tuple(refused),
    )


def refusal_of(record: StatusRecord | None) -> Refusal | None:
    """The refusal recorded in `record`, the status of a pair's repair (its own request, `repair_of`): a request of
    the app's own (a repair, an expiry removal: ``~``) dead-lettered for a reason a repair would meet again (anything
    but an outage or a wait that ran out); None otherwise (nothing recorded, or a producer's request: repaired)."""
    if record is None or record.request_id is None or not record.request_id.startswith(DERIVED_PREFIX):
        return None
    if record.status is not Status.DEAD_LETTERED or record.reason is None or record.reason in _PASSING:
        return None
    return Refusal(reason=record.reason, description=record.description or "", request_id=record.request_id)


def repair_command(target: Target, repair: Repair) -> GrantCommand:
    """The grant message of `repair` for `target` (source ``other``, referencing the request it restores); the
    removal of an expired add is exactly the app's own expiry removal (`expiry_removal`)."""
    finding = repair.finding
    if isinstance(finding, Lingering) and finding.expired:
        return expiry_removal(target, repair.member_id, of=finding.intent)
    reason = f"Drift repair: {repair.describe()}"
    return GrantCommand(
        request_id=repair.request_id,
        action=repair.action,
        target=target,
        member=Member(id=repair.member_id),
        source=Source(system=SourceSystem.OTHER, reference=(repair.restores or "drift")[:256]),
        reason=reason[:1024],
        expires_at=repair.expires_at,
        requested_at=repair.requested_at,
    )


def repair_message_id(command: GrantCommand) -> str:
    """``~drift:<digest>``: the MessageId of a repair's message (its request id and content)."""
    return derived_message_id("drift", command.request_id, content_hash(command))


def repair_of(target: Target, finding: Finding) -> Repair:
    """The repair of `finding` of `target` (as `plan` would plan it), e.g. to read its request's recorded status."""
    return _repair(target, finding)


def _repair(target: Target, finding: Finding) -> Repair:
    if isinstance(finding, Unmanaged):
        return Repair(
            action=Action.REMOVE,
            member_id=finding.member_id,
            request_id=derived_request_id("drift", pair_of(target, finding.member_id)),
            requested_at=UNMANAGED_REQUESTED_AT,
            restores=None,
            expires_at=None,
            finding=finding,
        )
    intent = finding.intent
    if isinstance(finding, Missing):
        action, suffix, expires_at = Action.ADD, _ADD_SUFFIX, intent.expires_at
    elif finding.expired:
        action, suffix, expires_at = Action.REMOVE, "expire", None
    else:
        action, suffix, expires_at = Action.REMOVE, _REMOVE_SUFFIX, None
    return Repair(
        action=action,
        member_id=finding.member_id,
        request_id=derived_request_id(suffix, intent.request_id),
        requested_at=intent.requested_at + _AFTER,
        restores=_root(intent.request_id),
        expires_at=expires_at,
        finding=finding,
    )


def _root(request_id: str) -> str:
    """The request a chain of repairs restores: `request_id` without its leading ``~drift-*:`` kinds."""
    root = request_id
    while True:
        kind, separator, tail = root.partition(":")
        if not separator or kind not in (f"~{_ADD_SUFFIX}", f"~{_REMOVE_SUFFIX}"):
            return root
        root = tail


def _digest(target: Target, removals: tuple[Repair, ...]) -> str:
    """16 hex digits naming a held set of removals: the target and each removal's member, request id and the
    moment of its pair's last answered write (a released set whose removals were carried out, drifting again, is
    another set: its repairs are the same requests, its pairs' last writes are the removals')."""
    names = sorted(f"{r.member_id}|{r.request_id}|{_iso(_last_write(r.finding))}" for r in removals)
    text = "\x1f".join([pair_of(target, "*"), *names])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _last_write(finding: Finding) -> datetime | None:
    return None if isinstance(finding, Missing) else finding.last_write


def _iso(value: datetime | None) -> str:
    return value.isoformat() if value is not None else "?"
