"""What holds a member in a target, pure: each producer's grant, the writes in doubt, the lease; who may write.

A *pair* is one (member, target). Its `PairState` keeps one `Grant` per producer: that producer's newest intent for
the pair (newest wins *within* a grant: a retried old add never beats the same producer's newer remove). The
membership is *wanted* while at least one grant holds it (its newest intent is an add that has not expired and no
revoke-all is newer), or while it is a membership the app did not make (`PairState.preexisting`). What an intent
does to the grants is its `Effect`:

- `GRANT` (a producer's add): that producer's grant holds the pair; the add is written (Graph answers
  ``already_member`` when it is there).
- `END` (a producer's remove): ends that producer's grant, and no other. The member is removed only when no grant
  holds the pair any more and the app made the membership (`made_by_app`); otherwise nothing is written and the
  request ends ``released`` (`Released`: which grants still hold it).
- `REVOKE_ALL` (a remove with ``revokeAll``, a right the policy gives by name: an HR leaver, an operator): ends every
  grant older than it (`PairState.floor`: an intent older than the floor is superseded) and the membership whoever
  made it, unless a grant newer than it holds the pair. Carried out again (a redelivery), it changes no grant.
- `EXPIRE` (the app's own, at a time-bound grant's end): ends the grant whose newest intent it names, once that has
  expired; the membership goes only if nothing else holds it. It cannot end any other grant.
- `REPAIR` (the app's own, from the drift policy): writes what the grants say (an add only while a grant holds the
  pair, a removal only while none does) and changes no grant: a repair never beats a producer's add, whatever its
  time.

Three more rules, unchanged in spirit from one-intent-per-pair:

- **Lease** (`admit`, `release`): one attempt at a time writes to Graph for a pair; a crashed one blocks the pair
  for one lease at most. An intent that needs no write (an end while another grant holds the pair) is recorded
  without the lease.
- **Doubt is a set, recorded before the write** (`Doubt`): every admitted write is recorded as in doubt with the
  state that admits it (so a crash or a storage failure after the Graph call cannot lose it) until its answer comes
  (`release`), or, unanswered, until it can no longer land (`window` after its last possible send). An answer to
  another write does not end it. A write of the other action made while a doubt is open is made once more when the
  last such doubt can no longer land (`confirm_at`).
- **Pending removals** (`Grant.removal_due`): a time-bound add leaves its expiry as its grant's pending removal,
  kept until the end of that grant has been carried out (or refused for good: the refusal is the request's dead
  letter, and drift reports the membership), so the expiry sweep ends a grant whose removal was never scheduled or
  kept failing (`due_grants`).

A membership found already there by a grant's add is one the app did not make (`preexisting`) unless the app may
have made it itself: an add of its own applied last, or an add of its own still in doubt (a write sent just before a
crash, retried: its doubt was recorded before it was sent). It is kept when the app's grants end; only a revoke-all
or an ``authoritative`` drift target removes it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Final

from shared.core.contract import Action
from shared.core.intents import Effect, Intent
from shared.core.producers import APP_PRODUCER

__all__ = [
    "Applied",
    "Doubt",
    "Grant",
    "Lease",
    "NotDue",
    "PairState",
    "Proceed",
    "Released",
    "Superseded",
    "Wait",
    "admit",
    "confirm_at",
    "due_grants",
    "merged_states",
    "release",
    "removal_is_due",
]

#: Doubts kept at most per pair (the oldest that can no longer land go first): one per crashed or unanswered attempt
#: since the pair's last answered write, so a handful in practice.
MAX_DOUBTS: Final = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class Lease:
    """Write permission for one pair, held by one attempt (`token`) until `until`."""

    token: str
    request_id: str
    until: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Applied:
    """The last Graph write for the pair that was answered as done: which request, which action, when."""

    request_id: str
    action: Action
    at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Doubt:
    """A Graph write for the pair whose answer has not come: attempt `token` of request `request_id` sends (or sent)
    `action`; it may land until `until`."""

    token: str
    request_id: str
    action: Action
    until: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    """One producer's grant of a pair: its newest intent for the pair, and (from a time-bound add) when the grant's
    removal is due, until its end has been carried out."""

    producer: str
    newest: Intent
    removal_due: datetime | None = None

    def holds(self, *, now: datetime, floor: Intent | None = None) -> bool:
        """True while the grant keeps the membership: its newest intent is an add that has not expired at `now` and is
        newer than the pair's revoke-all `floor` (an add refused for good included: it stays its producer's intent,
        which drift reports, until the producer ends it)."""
        newest = self.newest
        return (
            newest.effect is Effect.GRANT
            and (newest.expires_at is None or newest.expires_at > now)
            and (floor is None or newest.order > floor.order)
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PairState:
    """The ledger's record of one pair: each producer's `grants` (by producer name), the newest revoke-all
    (`floor`), the `lease`, the last answered write (`applied`), the writes in `doubts`, and whether the membership
    was there before the app made it (`preexisting`)."""

    grants: tuple[Grant, ...] = ()
    floor: Intent | None = None
    lease: Lease | None = None
    applied: Applied | None = None
    doubts: tuple[Doubt, ...] = ()
    preexisting: bool = False

    def grant_of(self, producer: str) -> Grant | None:
        """`producer`'s grant of the pair, if it has one."""
        return next((grant for grant in self.grants if grant.producer == producer), None)

    def holders(self, *, now: datetime) -> tuple[Grant, ...]:
        """The grants that keep the membership at `now` (`Grant.holds`)."""
        return tuple(grant for grant in self.grants if grant.holds(now=now, floor=self.floor))

    def wanted(self, *, now: datetime) -> bool:
        """True when the member should be in the target: some grant holds the pair, or the app did not make it."""
        return self.preexisting or bool(self.holders(now=now))

    def made_by_app(self) -> bool:
        """True when the app may have made the membership that is there: its last answered write was an add that
        did not find it there already, or an add of its own is (or was, since that answer) in doubt."""
        applied = self.applied
        made = applied is not None and applied.action is Action.ADD and not self.preexisting
        return made or any(doubt.action is Action.ADD for doubt in self.doubts)

    @property
    def latest(self) -> Intent | None:
        """The newest intent recorded for the pair (any grant's, or the floor), None when there is none."""
        intents = [grant.newest for grant in self.grants] + ([self.floor] if self.floor is not None else [])
        return max(intents, key=lambda intent: intent.order, default=None)

    @property
    def removal_due(self) -> datetime | None:
        """The earliest pending removal of any grant (what the expiry sweep looks for), None when none is pending."""
        return min((grant.removal_due for grant in self.grants if grant.removal_due is not None), default=None)

    def with_grant(self, grant: Grant) -> PairState:
        """This state with `grant` in place of its producer's (grants kept sorted by producer name)."""
        others = [known for known in self.grants if known.producer != grant.producer]
        return replace(self, grants=tuple(sorted([*others, grant], key=lambda known: known.producer)))


@dataclass(frozen=True, slots=True)
class Proceed:
    """Write `state` (ETag-guarded); the attempt holds the lease and writes `write` to Graph."""

    state: PairState
    write: Action


@dataclass(frozen=True, slots=True)
class Released:
    """Write `state` (ETag-guarded); no Graph write is needed: the intent ended its grant (or none), and the
    membership stays (`held_by`: the grants that still hold it; `preexisting`: one the app did not make) or was
    never the app's to remove."""

    state: PairState
    held_by: tuple[Grant, ...]
    preexisting: bool


@dataclass(frozen=True, slots=True)
class Superseded:
    """Nothing to do: a newer intent of the same grant (or a newer revoke-all) is recorded, or the grant an expiry
    names has changed or not yet expired, or a repair's reason is gone. No Graph write, nothing recorded."""

    newest: Intent


@dataclass(frozen=True, slots=True)
class NotDue:
    """An expiry delivered before the grant it ends has expired (a clock behind the broker's): nothing recorded;
    carry it out at `until`."""

    until: datetime


@dataclass(frozen=True, slots=True)
class Wait:
    """Another attempt holds the pair's lease until `until`: try again then (or earlier)."""

    until: datetime
    holder: str


def admit(
    state: PairState | None,
    intent: Intent,
    *,
    token: str,
    now: datetime,
    lease_for: timedelta,
    window: timedelta,
) -> Proceed | Released | Superseded | NotDue | Wait:
    """Decide what `intent` (attempt `token`) does to the pair at `now`.

    `Superseded` when it is older than its grant's newest intent or the floor, when an expiry's grant changed or has
    not expired, or when a repair has nothing to repair. Otherwise the intent is applied to the grants; when that
    needs a Graph write, `Proceed` with the lease (until ``now + lease_for``) and the write recorded as in doubt
    until it can no longer land (``lease_for + window``: the Graph work ends before the lease does), unless another
    attempt's lease is live (`Wait`); when it needs none, `Released` (the lease, if any, untouched).
    """
    state = state or PairState()
    applied = _apply(state, intent, now=now)
    if isinstance(applied, Superseded | NotDue):
        return applied
    after, write = applied
    if write is None:
        holders = after.holders(now=now)
        return Released(_settled(after, now=now), held_by=holders, preexisting=after.preexisting and not holders)
    lease = state.lease
    if lease is not None and lease.token != token and lease.until > now:
        return Wait(until=lease.until, holder=lease.request_id)
    lease = Lease(token=token, request_id=intent.request_id, until=now + lease_for)
    doubt = Doubt(token=token, request_id=intent.request_id, action=write, until=lease.until + window)
    doubts = (*(known for known in after.doubts if known.token != token), doubt)
    return Proceed(replace(after, lease=lease, doubts=_bounded(doubts, now=now)), write)


def _apply(state: PairState, intent: Intent, *, now: datetime) -> tuple[PairState, Action | None] | Superseded | NotDue:
    """The state once `intent` is recorded, and the Graph write it needs (None: none); or why it changes nothing."""
    effect, floor = intent.effect, state.floor
    if effect is Effect.REPAIR:
        held = bool(state.holders(now=now))
        if (intent.action is Action.ADD) is not held:
            return Superseded(state.latest or intent)
        after = state if held else replace(state, preexisting=False)
        return after, intent.action
    if effect is Effect.EXPIRE:
        grant = _expiring(state, intent)
        if grant is None:
            return Superseded(intent)  # nothing of its producer's it names is left to end
        if grant.holds(now=now, floor=floor):  # not yet expired: it comes back then
            if grant.newest.expires_at is None:  # a grant that never expires (a hand-edited pending removal)
                return Superseded(grant.newest)
            return NotDue(until=grant.newest.expires_at)
        after = state.with_grant(replace(grant, newest=intent))
        return after, _removal(after, now=now)
    if floor is not None and intent.order < floor.order:
        return Superseded(floor)
    producer = intent.producer or ""
    grant = state.grant_of(producer)
    if effect is Effect.REVOKE_ALL:  # the grants it ends with nothing pending are no longer needed: dropped
        # once: carried out again (the floor already), it keeps what its first admission kept, whose pending
        # removals its write has ended since (dropping them then would change what a later expiry ends as)
        again = floor is not None and (floor.producer, floor.request_id) == (intent.producer, intent.request_id)
        kept = (
            state.grants
            if again
            else tuple(g for g in state.grants if g.newest.order > intent.order or g.removal_due is not None)
        )
        after = replace(state, grants=kept, floor=intent, preexisting=False)
        return after, None if after.holders(now=now) else Action.REMOVE
    if grant is not None and intent.order < grant.newest.order:
        return Superseded(grant.newest)
    due = intent.expires_at if effect is Effect.GRANT else grant.removal_due if grant is not None else None
    after = state.with_grant(Grant(producer=producer, newest=intent, removal_due=due))
    return after, Action.ADD if effect is Effect.GRANT else _removal(after, now=now)


def _expiring(state: PairState, intent: Intent) -> Grant | None:
    """The grant an expiry ends: its producer's (any producer's for the app's own expiry of a grant whose producer
    left the registry, or recorded before producers had names) whose newest intent is the one it names, or the
    expiry itself (carried out again)."""
    named = (intent.ends, intent.request_id)
    for grant in state.grants:
        mine = intent.producer in (grant.producer, APP_PRODUCER) or not grant.producer
        if mine and grant.newest.request_id in named:
            return grant
    return None


def _removal(after: PairState, *, now: datetime) -> Action | None:
    """A removal when nothing holds the pair any more and the app may have made the membership; else none."""
    return Action.REMOVE if not after.wanted(now=now) and after.made_by_app() else None


def release(
    state: PairState,
    *,
    token: str,
    applied: Action | None,
    now: datetime,
    window: timedelta,
    uncertain: bool = False,
    already: bool = False,
    gave_up: bool = False,
) -> PairState | None:
    """The state after attempt `token` is done, or None when its lease was taken over (nothing to record).

    Its write's doubt ends when an answer came: `applied` (the action Graph did, or found done: `already`), or a
    refusal or a failure before sending (`applied` None). An `uncertain` write (a timeout, a connection lost after
    sending, a 5xx) stays in doubt until ``now + window``. An answered write also ends every doubt that could no
    longer land by now (the answer came after any effect it had). An add found already there, with no add of the
    app's own that could have made it (and no revoke-all, which takes any membership over), marks the membership
    `preexisting`; any other answered write clears that. A
    removal answered as done, or refused for good (`gave_up`), ends the pending removals of the grants that no longer
    hold the pair (an add never does: one answered after its own expiry leaves its removal pending).
    """
    if state.lease is None or state.lease.token != token:
        return None
    mine = next((doubt for doubt in state.doubts if doubt.token == token), None)
    others = tuple(doubt for doubt in state.doubts if doubt.token != token)
    released = replace(state, lease=None)
    if uncertain:
        kept = (*others, replace(mine, until=now + window)) if mine is not None else others
        return replace(released, doubts=_bounded(kept, now=now))
    if applied is None:
        released = replace(released, doubts=others)
        return _settled(released, now=now) if gave_up else released
    preexisting = False
    if applied is Action.ADD and already:
        before = replace(state, doubts=others)
        # found there with no add of the app's own that could have made it, and no revoke-all that took it over
        preexisting = state.preexisting or (state.floor is None and not before.made_by_app())
    done = Applied(request_id=state.lease.request_id, action=applied, at=now)
    doubts = tuple(doubt for doubt in others if doubt.until > now)
    answered = replace(released, applied=done, doubts=doubts, preexisting=preexisting)
    return _settled(answered, now=now) if applied is Action.REMOVE else answered


def _settled(state: PairState, *, now: datetime) -> PairState:
    """`state` with the pending removals of the grants that no longer hold the pair ended (their end needs no
    further write: carried out, not needed, or refused for good)."""
    ended = [grant for grant in state.grants if not grant.holds(now=now, floor=state.floor)]
    grants = tuple(replace(grant, removal_due=None) if grant in ended else grant for grant in state.grants)
    return replace(state, grants=grants)


def _bounded(doubts: Iterable[Doubt], *, now: datetime) -> tuple[Doubt, ...]:
    """At most `MAX_DOUBTS`: each action's latest always kept (an add in doubt keeps the membership the app's own
    however many removals follow), the others dropped oldest first, those that can no longer land before those
    that can."""
    every = list(doubts)
    latest = {max((d for d in every if d.action is action), key=lambda d: d.until, default=None) for action in Action}
    keep = [d for d in every if d in latest]
    rest = sorted((d for d in every if d not in latest), key=lambda doubt: (doubt.until > now, doubt.until))
    kept = rest[max(len(rest) - (MAX_DOUBTS - len(keep)), 0) :] + keep
    return tuple(sorted(kept, key=lambda doubt: doubt.until))


def confirm_at(state: PairState, *, action: Action, now: datetime) -> datetime | None:
    """When a write of `action` answered at `now` must be made again to be sure of its effect: when a write of the
    other action is in doubt and may still land, the moment the last such write no longer can; else None."""
    open_until = [doubt.until for doubt in state.doubts if doubt.action is not action and doubt.until > now]
    return max(open_until, default=None)


def merged_states(one: PairState, other: PairState) -> PairState:
    """Two records of one membership as one (a role's pair by object id and by template): each producer's newer
    grant, the newer revoke-all, the later lease and answered write, every doubt once, pre-existing when either
    says so. Merging again changes nothing."""
    grants = {grant.producer: grant for grant in one.grants}
    for grant in other.grants:
        known = grants.get(grant.producer)
        if known is None or grant.newest.order > known.newest.order:
            grants[grant.producer] = grant
    floors = [floor for floor in (one.floor, other.floor) if floor is not None]
    leases = [lease for lease in (one.lease, other.lease) if lease is not None]
    applied = [done for done in (one.applied, other.applied) if done is not None]
    doubts = {doubt.token: doubt for doubt in (*one.doubts, *other.doubts)}
    return PairState(
        grants=tuple(sorted(grants.values(), key=lambda grant: grant.producer)),
        floor=max(floors, key=lambda floor: floor.order, default=None),
        lease=max(leases, key=lambda lease: lease.until, default=None),
        applied=max(applied, key=lambda done: done.at, default=None),
        doubts=tuple(doubts.values()),
        preexisting=one.preexisting or other.preexisting,
    )


def due_grants(state: PairState | None, *, now: datetime) -> tuple[Grant, ...]:
    """The grants whose pending removal is due at `now` (what the expiry sweep ends)."""
    if state is None:
        return ()
    return tuple(grant for grant in state.grants if grant.removal_due is not None and grant.removal_due <= now)


def removal_is_due(state: PairState | None, *, now: datetime) -> bool:
    """True when some grant of the pair has a pending removal whose time has come."""
    return bool(due_grants(state, now=now))
