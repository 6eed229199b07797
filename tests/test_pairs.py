"""What holds a member in a target (pure): a grant per producer, revoke-alls, expiries, repairs, doubts, leases."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from shared.core.contract import Action
from shared.core.intents import Effect, Intent
from shared.core.pairs import (
    MAX_DOUBTS,
    Applied,
    Doubt,
    Grant,
    Lease,
    NotDue,
    PairState,
    Proceed,
    Released,
    Superseded,
    Wait,
    admit,
    confirm_at,
    due_grants,
    release,
    removal_is_due,
)

T0 = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)
LEASE = timedelta(seconds=120)
WINDOW = timedelta(minutes=5)
TOKEN = "t"  # an attempt's token


def add(request_id: str, producer: str = "hr", *, at: int = 0, days: int | None = None) -> Intent:
    expires = T0 + timedelta(days=days) if days is not None else None
    return Intent(
        request_id=request_id,
        content_hash="c",
        action=Action.ADD,
        requested_at=T0 + timedelta(seconds=at),
        expires_at=expires,
        producer=producer,
    )


def remove(request_id: str, producer: str = "hr", *, at: int = 0, kind: Effect | None = None) -> Intent:
    return Intent(
        request_id=request_id,
        content_hash="c",
        action=Action.REMOVE,
        requested_at=T0 + timedelta(seconds=at),
        producer=producer,
        kind=kind,
    )


def expiry(of: Intent, producer: str | None = None) -> Intent:
    return Intent(
        request_id=f"~expire:{of.request_id}",
        content_hash="e",
        action=Action.REMOVE,
        requested_at=of.requested_at + timedelta(microseconds=1),
        producer=producer or of.producer,
        kind=Effect.EXPIRE,
        ends=of.request_id,
    )


def repair(action: Action, request_id: str = "~drift:x") -> Intent:
    return Intent(
        request_id=request_id,
        content_hash="r",
        action=action,
        requested_at=datetime(2000, 1, 1, tzinfo=UTC),
        producer="app",
        kind=Effect.REPAIR,
    )


def decide(
    state: PairState | None, intent: Intent, *, token: str = TOKEN, now: datetime = T0
) -> Proceed | Released | Superseded | Wait:
    return admit(state, intent, token=token, now=now, lease_for=LEASE, window=WINDOW)


def written(
    state: PairState | None,
    intent: Intent,
    *,
    token: str = TOKEN,
    now: datetime = T0,
    already: bool = False,
    applied: bool = True,
) -> PairState:
    """`intent` admitted and its write answered as done (`already`: Graph found it so)."""
    decision = decide(state, intent, token=token, now=now)
    assert isinstance(decision, Proceed), decision
    done = release(
        decision.state,
        token=token,
        applied=decision.write if applied else None,
        now=now,
        window=WINDOW,
        already=already,
    )
    assert done is not None
    return done


def released(state: PairState | None, intent: Intent, *, now: datetime = T0) -> Released:
    decision = decide(state, intent, now=now)
    assert isinstance(decision, Released), decision
    return decision


# --- a grant per producer ---------------------------------------------------------------------------------------------


def test_the_first_add_takes_the_lease_and_is_in_doubt_before_it_is_written() -> None:
    decision = decide(None, add("a"))
    assert isinstance(decision, Proceed)
    assert decision.write is Action.ADD
    assert decision.state.lease == Lease(token="t", request_id="a", until=T0 + LEASE)
    assert decision.state.doubts == (Doubt(token="t", request_id="a", action=Action.ADD, until=T0 + LEASE + WINDOW),)
    assert decision.state.grants == (Grant(producer="hr", newest=add("a")),)


def test_a_producer_s_remove_ends_only_its_own_grant_while_another_holds_the_membership() -> None:
    held = written(written(None, add("hr-1", "hr")), add("tk-1", "ticketing", at=5), already=True)
    ended = released(held, remove("hr-2", "hr", at=10))
    assert [grant.producer for grant in ended.held_by] == ["ticketing"]
    assert ended.state.lease is None  # no Graph write, no lease
    assert ended.state.wanted(now=T0)


def test_the_membership_goes_when_the_last_grant_ends_in_either_order() -> None:
    both = written(written(None, add("hr-1", "hr")), add("tk-1", "ticketing", at=5), already=True)
    for first, second in ((remove("hr-2", "hr", at=10), remove("tk-2", "ticketing", at=11)),) * 2:
        for one, other in ((first, second), (second, first)):
            state = released(both, one).state
            last = decide(state, other)
            assert isinstance(last, Proceed)
            assert last.write is Action.REMOVE


def test_an_older_intent_of_the_same_producer_is_superseded_but_not_another_producer_s() -> None:
    state = released(None, remove("hr-2", "hr", at=10)).state
    assert decide(state, add("hr-1", "hr", at=5)) == Superseded(remove("hr-2", "hr", at=10))
    assert isinstance(decide(state, add("tk-1", "ticketing", at=5)), Proceed)


def test_a_retry_of_the_newest_intent_proceeds_again_and_equal_times_go_by_request_id() -> None:
    state = written(None, add("b", at=0))
    assert isinstance(decide(state, add("b", at=0), token="t2"), Proceed)
    assert isinstance(decide(state, add("a", at=0), token="t2"), Superseded)
    assert isinstance(decide(state, add("c", at=0), token="t2"), Proceed)


def test_a_write_waits_for_a_live_lease_but_an_end_that_needs_none_does_not() -> None:
    granting = decide(None, add("tk-1", "ticketing"), token="t1")
    assert isinstance(granting, Proceed)
    assert decide(granting.state, add("hr-1", "hr"), token="t2") == Wait(until=T0 + LEASE, holder="tk-1")
    ended = decide(granting.state, remove("ops-1", "ops"), token="t2")
    assert isinstance(ended, Released)
    assert ended.state.lease == granting.state.lease  # the holder's lease is kept
    later = decide(granting.state, add("hr-1", "hr"), token="t2", now=T0 + LEASE)
    assert isinstance(later, Proceed)


def test_a_remove_for_a_membership_the_app_never_made_writes_nothing() -> None:
    ended = released(None, remove("tk-1", "ticketing"))
    assert (ended.held_by, ended.preexisting) == ((), False)


def test_a_holder_whose_lease_was_taken_over_records_nothing() -> None:
    decision = decide(None, add("a"), token="t2")
    assert isinstance(decision, Proceed)
    assert release(decision.state, token="t1", applied=Action.ADD, now=T0, window=WINDOW) is None


# --- memberships the app did not make ---------------------------------------------------------------------------------


def test_an_add_that_finds_the_member_there_with_no_add_of_the_app_s_own_marks_it_preexisting() -> None:
    state = written(None, add("tk-1", "ticketing"), already=True)
    assert state.preexisting
    ended = released(state, remove("tk-2", "ticketing", at=5))
    assert ended.preexisting
    assert ended.held_by == ()


def test_an_add_retried_after_its_first_write_went_unanswered_is_the_app_s_own() -> None:
    """The crash: the first attempt's write was recorded in doubt before it was sent; its retry finds it there."""
    first = decide(None, add("tk-1", "ticketing"), token="t1")
    assert isinstance(first, Proceed)
    crashed = replace(first.state, lease=None)  # the worker died: the lease lapsed, the doubt stays
    retried = written(crashed, add("tk-1", "ticketing"), token="t2", now=T0 + LEASE, already=True)
    assert not retried.preexisting
    last = decide(retried, remove("tk-2", "ticketing", at=5), now=T0 + LEASE)
    assert isinstance(last, Proceed)
    assert last.write is Action.REMOVE


def test_an_add_answered_granted_is_the_app_s_own_even_after_a_preexisting_one_was_removed() -> None:
    state = written(None, add("tk-1", "ticketing"), already=True)
    revoked = written(state, remove("hr-9", "hr", at=5, kind=Effect.REVOKE_ALL))
    assert not revoked.preexisting
    regranted = written(revoked, add("tk-2", "ticketing", at=10))
    assert regranted.made_by_app()


# --- revoke-all -------------------------------------------------------------------------------------------------------


def test_a_revoke_all_ends_every_older_grant_and_a_preexisting_membership() -> None:
    state = written(written(None, add("tk-1", "ticketing"), already=True), add("bk-1", "bulk", at=2), already=True)
    assert state.preexisting
    decision = decide(state, remove("hr-9", "hr", at=5, kind=Effect.REVOKE_ALL))
    assert isinstance(decision, Proceed)
    assert decision.write is Action.REMOVE
    assert not decision.state.preexisting
    assert decision.state.holders(now=T0) == ()


def test_a_grant_newer_than_a_revoke_all_survives_it_and_an_older_one_is_superseded() -> None:
    newer = written(None, add("tk-2", "ticketing", at=20))
    kept = released(newer, remove("hr-9", "hr", at=10, kind=Effect.REVOKE_ALL))
    assert [g.newest.request_id for g in kept.held_by] == ["tk-2"]
    assert decide(kept.state, add("bk-1", "bulk", at=5)) == Superseded(
        remove("hr-9", "hr", at=10, kind=Effect.REVOKE_ALL)
    )


def test_intents_of_one_moment_are_ordered_by_their_tiebreak_then_id_and_an_intent_without_one_comes_first() -> None:
    """An HR leaver's revoke-all at its effective moment (tiebreak: occurredAt, first arrival) is newer than a ticket's
    add dated that very moment (no tiebreak), older than one a microsecond later; of two HR intents of one moment, the
    later occurredAt wins whatever the request ids say."""
    early, late = T0 - timedelta(days=2), T0 - timedelta(days=1)
    leaver = replace(remove("~hr:z-leave:1", at=10, kind=Effect.REVOKE_ALL), tiebreak=(late, late))
    floor = written(None, leaver)
    assert decide(floor, add("tk-1", "ticketing", at=10)) == Superseded(leaver)
    later_ticket = replace(add("tk-2", "ticketing"), requested_at=leaver.requested_at + timedelta(microseconds=1))
    assert isinstance(decide(floor, later_ticket), Proceed)
    rehire = replace(add("~hr:a-rehire:1", at=10), tiebreak=(early, late))  # occurred before the leaver
    assert decide(floor, rehire) == Superseded(leaver)
    rehire_later = replace(add("~hr:a-rehire:1", at=10), tiebreak=(late + timedelta(seconds=1), early))
    assert isinstance(decide(floor, rehire_later), Proceed)


def test_a_revoke_all_carried_out_again_keeps_the_grants_its_first_delivery_kept() -> None:
    """HR's time-bound grant, then HR's revokeAll, delivered twice (its first delivery removed the member, then died
    before completing the message): the second delivery changes no grant, so the grant's expiry ends as it would
    after one delivery (released, nothing left to remove), not superseded by a grant the redelivery dropped."""
    timed = add("hr-1", "hr", days=1)
    revoke = remove("hr-9", "hr", at=5, kind=Effect.REVOKE_ALL)
    once = written(written(None, timed), revoke)
    twice = written(once, revoke, token="again", already=True)  # the removal found done: not_member
    assert twice.grants == once.grants
    ended = released(twice, expiry(timed), now=T0 + timedelta(days=1))
    assert (ended.held_by, ended.preexisting) == ((), False)


# --- expiry -----------------------------------------------------------------------------------------------------------


def test_an_expiry_ends_only_the_grant_it_names_once_it_has_expired() -> None:
    timed = add("bk-1", "bulk", days=1)
    state = written(written(None, add("hr-1", "hr")), timed, already=True)
    assert decide(state, expiry(timed)) == NotDue(until=T0 + timedelta(days=1))  # early: it comes back then
    later = T0 + timedelta(days=1)
    ended = released(state, expiry(timed), now=later)
    assert [g.producer for g in ended.held_by] == ["hr"]
    assert ended.state.grant_of("bulk") == Grant(producer="bulk", newest=expiry(timed))  # its removal is done


def test_an_expiry_of_a_grant_that_changed_since_changes_nothing() -> None:
    timed = add("bk-1", "bulk", days=1)
    state = written(written(None, timed), add("bk-2", "bulk", at=5))
    assert decide(state, expiry(timed), now=T0 + timedelta(days=2)) == Superseded(expiry(timed))


def test_an_expiry_removes_the_membership_when_nothing_else_holds_it() -> None:
    timed = add("bk-1", "bulk", days=1)
    decision = decide(written(None, timed), expiry(timed), now=T0 + timedelta(days=1))
    assert isinstance(decision, Proceed)
    assert decision.write is Action.REMOVE


def test_an_expiry_never_ends_another_producer_s_grant_that_uses_the_same_request_id() -> None:
    timed = add("RITM1", "ticketing", days=1)
    state = written(written(None, timed), add("RITM1", "bulk", at=5), already=True)
    ended = released(state, expiry(timed), now=T0 + timedelta(days=1))
    assert [g.producer for g in ended.held_by] == ["bulk"]
    assert ended.state.grant_of("bulk") == state.grant_of("bulk")


def test_an_add_refused_for_good_stays_its_producer_s_intent_until_the_producer_ends_it() -> None:
    """As drift reads it (a missing member, not repairable while the refusal's cause stands): the refused add holds
    the pair, so another producer's remove is released naming it; the producer's own remove ends it."""
    decision = decide(written(None, add("hr-1", "hr")), add("tk-1", "ticketing", at=5), token="t2")
    assert isinstance(decision, Proceed)
    refused = release(decision.state, token="t2", applied=None, now=T0, window=WINDOW, gave_up=True)
    assert refused is not None
    assert [g.producer for g in refused.holders(now=T0)] == ["hr", "ticketing"]
    ended = decide(refused, remove("tk-2", "ticketing", at=10), token="t3")
    assert isinstance(ended, Released)
    assert [g.producer for g in ended.state.holders(now=T0)] == ["hr"]


def test_an_add_answered_after_its_own_expiry_leaves_its_removal_pending() -> None:
    timed = add("bk-1", "bulk", days=1)
    late = written(None, timed, now=T0 + timedelta(days=1, seconds=30))
    assert [g.producer for g in due_grants(late, now=T0 + timedelta(days=1, seconds=30))] == ["bulk"]


def test_an_expired_grant_does_not_hold_the_membership_against_another_producer_s_remove() -> None:
    timed = add("bk-1", "bulk", days=1)
    state = written(written(None, timed), add("tk-1", "ticketing", at=5), already=True)
    decision = decide(state, remove("tk-2", "ticketing", at=10), now=T0 + timedelta(days=2))
    assert isinstance(decision, Proceed)
    assert decision.write is Action.REMOVE


# --- pending removals -------------------------------------------------------------------------------------------------


def test_a_time_bound_grant_leaves_its_pending_removal_until_its_end_is_carried_out() -> None:
    timed = add("bk-1", "bulk", days=30)
    state = written(None, timed)
    assert state.removal_due == T0 + timedelta(days=30)
    assert not removal_is_due(state, now=T0 + timedelta(days=29))
    assert [g.producer for g in due_grants(state, now=T0 + timedelta(days=30))] == ["bulk"]
    ending = decide(state, remove("bk-2", "bulk", at=5))
    assert isinstance(ending, Proceed)
    assert ending.state.removal_due == T0 + timedelta(days=30)  # the removal may still fail
    failed = release(ending.state, token="t", applied=None, now=T0, window=WINDOW)
    assert failed is not None
    assert failed.removal_due == T0 + timedelta(days=30)
    refused = release(ending.state, token="t", applied=None, now=T0, window=WINDOW, gave_up=True)
    assert refused is not None
    assert refused.removal_due is None
    done = release(ending.state, token="t", applied=Action.REMOVE, now=T0, window=WINDOW)
    assert done is not None
    assert done.removal_due is None


def test_a_newer_add_of_the_same_producer_sets_its_own_expiry_or_none() -> None:
    state = written(None, add("a", days=1))
    assert written(state, add("b", at=1, days=60)).removal_due == T0 + timedelta(days=60)
    assert written(state, add("c", at=1)).removal_due is None


def test_an_expiry_admitted_but_not_carried_out_stays_due_and_a_new_expiry_can_end_it() -> None:
    """The sweep then sends the expiry of that expiry (a new request: the first is recorded, its claim taken)."""
    timed = add("bk-1", "bulk", days=1)
    ending = decide(written(None, timed), expiry(timed), now=T0 + timedelta(days=1))
    assert isinstance(ending, Proceed)
    failed = release(ending.state, token="t", applied=None, now=T0 + timedelta(days=1), window=WINDOW)
    assert failed is not None
    (grant,) = due_grants(failed, now=T0 + timedelta(days=1))
    again = decide(failed, expiry(grant.newest), token="t2", now=T0 + timedelta(days=1, hours=1))
    assert isinstance(again, Proceed)
    assert again.write is Action.REMOVE


# --- repairs ----------------------------------------------------------------------------------------------------------


def test_a_repair_removal_never_beats_a_grant_whatever_its_time() -> None:
    state = written(None, add("tk-1", "ticketing"))
    assert isinstance(decide(state, repair(Action.REMOVE)), Superseded)
    decision = decide(None, repair(Action.REMOVE))
    assert isinstance(decision, Proceed)
    assert decision.write is Action.REMOVE
    assert decision.state.grants == ()


def test_a_repair_add_is_written_only_while_a_grant_holds_the_pair() -> None:
    assert isinstance(decide(None, repair(Action.ADD)), Superseded)
    state = written(None, add("tk-1", "ticketing"))
    decision = decide(state, repair(Action.ADD, "~drift-add:tk-1"))
    assert isinstance(decision, Proceed)
    assert decision.state.grants == state.grants


def test_an_authoritative_repair_removes_a_preexisting_membership() -> None:
    state = released(written(None, add("tk-1", "ticketing"), already=True), remove("tk-2", "ticketing", at=5)).state
    decision = decide(state, repair(Action.REMOVE))
    assert isinstance(decision, Proceed)
    assert not decision.state.preexisting


# --- doubts -----------------------------------------------------------------------------------------------------------


def test_an_answer_to_another_write_does_not_end_a_doubt_that_may_still_land() -> None:
    first = decide(None, add("a"), token="t1")
    assert isinstance(first, Proceed)
    unanswered = release(first.state, token="t1", applied=None, now=T0, window=WINDOW, uncertain=True)
    assert unanswered is not None
    assert unanswered.doubts == (Doubt(token="t1", request_id="a", action=Action.ADD, until=T0 + WINDOW),)
    answered = written(unanswered, add("a"), token="t2", now=T0 + timedelta(seconds=1))
    assert [d.token for d in answered.doubts] == ["t1"]  # the same action answered: the first may still land
    removing = decide(answered, remove("b", at=5), token="t3", now=T0 + timedelta(seconds=2))
    assert isinstance(removing, Proceed)
    assert confirm_at(removing.state, action=Action.REMOVE, now=T0 + timedelta(seconds=3)) == T0 + WINDOW


def test_an_answered_write_ends_the_doubts_that_can_no_longer_land() -> None:
    first = decide(None, add("a"), token="t1")
    assert isinstance(first, Proceed)
    unanswered = release(first.state, token="t1", applied=None, now=T0, window=WINDOW, uncertain=True)
    later = written(unanswered, remove("b", at=5), token="t2", now=T0 + WINDOW)
    assert later.doubts == ()
    assert later.applied == Applied(request_id="b", action=Action.REMOVE, at=T0 + WINDOW)


def test_doubts_are_bounded_dropping_those_that_can_no_longer_land_first() -> None:
    state: PairState | None = None
    for n in range(MAX_DOUBTS + 4):
        decision = decide(state, add("a"), token=f"t{n}", now=T0 + timedelta(hours=n))
        assert isinstance(decision, Proceed)
        state = replace(decision.state, lease=None)  # each attempt crashed
    assert state is not None
    assert len(state.doubts) == MAX_DOUBTS
    assert state.doubts[-1].token == f"t{MAX_DOUBTS + 3}"


# --- property: any interleaving ends as the grants say ----------------------------------------------------------------


@dataclass
class Message:
    """A queued request: its intent, and when it may be delivered next."""

    intent: Intent
    due: datetime


@dataclass
class InFlight:
    """An admitted attempt whose write has been sent and whose answer has not been handled yet."""

    message: Message
    token: str
    write: Action
    until: datetime  # the lease's end


@dataclass
class Landing:
    """A write whose answer was lost: it lands (or not) by `until`."""

    action: Action
    until: datetime


@dataclass
class Model:
    """Everything the app and the world hold for one pair."""

    state: PairState | None = None
    member: bool = False
    now: datetime = T0
    queue: list[Message] = field(default_factory=list)
    flying: list[InFlight] = field(default_factory=list)
    landings: list[Landing] = field(default_factory=list)
    sent: list[Intent] = field(default_factory=list)
    serial: int = 0
    pre_existed: bool = False
    ambiguous: bool = False  # an add's answer was lost before the app first learned what the directory held
    learned: bool = False
    considered: set[str] = field(default_factory=set)  # requests that got past the Expired check at least once


PRODUCERS = ("hr", "ticketing")


class Grants(RuleBasedStateMachine):
    """Adds, removes, revoke-alls and expiries from several producers, delivered in any order, retried and
    redelivered, with writes answered, lost (landing later within their window, or never) and workers crashing."""

    def __init__(self) -> None:
        super().__init__()
        self.model = Model()

    @rule(present=st.booleans())
    @precondition(lambda self: not self.model.sent and not self.model.learned)
    def the_membership_may_be_there_before_any_grant(self, present: bool) -> None:
        self.model.member = self.model.pre_existed = present

    @rule(
        producer=st.sampled_from(PRODUCERS),
        action=st.sampled_from(["add", "remove", "revokeAll"]),
        at=st.integers(0, 20),
        days=st.one_of(st.none(), st.integers(1, 3)),
        twice=st.booleans(),
    )
    def a_producer_sends(self, producer: str, action: str, at: int, days: int | None, twice: bool) -> None:
        m = self.model
        name = f"{producer}-{len(m.sent)}"
        if action == "add":
            intent = add(name, producer, at=at, days=days)
        else:
            intent = remove(name, producer, at=at, kind=Effect.REVOKE_ALL if action == "revokeAll" else None)
        m.sent.append(intent)
        m.queue.append(Message(intent, m.now))
        if twice:  # a redelivery or a second copy, later
            m.queue.append(Message(intent, m.now + timedelta(minutes=at)))

    @rule(data=st.data())
    @precondition(lambda self: any(message.due <= self.model.now for message in self.model.queue))
    def one_is_delivered(self, data: st.DataObject) -> None:
        m = self.model
        ready = [message for message in m.queue if message.due <= m.now]
        message = data.draw(st.sampled_from(ready))
        m.queue.remove(message)
        self._deliver(message)

    @rule(data=st.data(), how=st.sampled_from(["answered", "lost", "lost", "crash", "not_sent"]))
    @precondition(lambda self: bool(self.model.flying))
    def a_write_ends(self, data: st.DataObject, how: str) -> None:
        m = self.model
        attempt = data.draw(st.sampled_from(m.flying))
        m.flying.remove(attempt)
        self._end(attempt, how)
        for landing in list(m.landings):  # a lost write may land just after this answer
            if landing.until > m.now and data.draw(st.booleans()):
                m.landings.remove(landing)
                m.member = landing.action is Action.ADD

    @rule(seconds=st.sampled_from([1, 1, 30, 130, 400, 86_400]))
    def time_passes(self, seconds: int) -> None:
        self.model.now += timedelta(seconds=seconds)

    @rule(data=st.data())
    @precondition(lambda self: bool(self.model.landings))
    def a_lost_write_lands_or_not(self, data: st.DataObject) -> None:
        m = self.model
        landing = data.draw(st.sampled_from(m.landings))
        m.landings.remove(landing)
        if landing.until > m.now and data.draw(st.booleans()):
            m.member = landing.action is Action.ADD

    @rule()
    def the_expiry_sweep_runs(self) -> None:
        m = self.model
        for grant in due_grants(m.state, now=m.now):
            m.queue.append(Message(expiry(grant.newest, grant.producer), m.now))

    @invariant()
    def one_write_at_a_time(self) -> None:
        live = [attempt for attempt in self.model.flying if attempt.until > self.model.now]
        assert len(live) <= 1

    def teardown(self) -> None:
        """Let everything finish: no more faults; every message delivered, every write answered, every lost write
        landed or expired, every due expiry swept; then the directory is what the grants say."""
        m = self.model
        for _ in range(500):
            for attempt in list(m.flying):
                m.flying.remove(attempt)
                self._end(attempt, "answered")
            ready = [message for message in m.queue if message.due <= m.now]
            if ready:
                message = min(ready, key=lambda message: message.due)
                m.queue.remove(message)
                self._deliver(message)
                continue
            if m.queue:
                m.now = max(m.now, min(message.due for message in m.queue))
                continue
            m.landings = [landing for landing in m.landings if landing.until > m.now]
            if m.landings:
                m.now = max(landing.until for landing in m.landings)
                continue
            if due_grants(m.state, now=m.now):
                self.the_expiry_sweep_runs()
                continue
            later = [i.expires_at for i in m.sent if i.expires_at is not None and i.expires_at > m.now]
            if later:
                m.now = max(later)
                continue
            break
        else:
            raise AssertionError("did not settle")
        assert m.member == self._expected(), (m.member, m.state)

    def _expected(self) -> bool:
        """Some producer's newest intent (of those not refused `Expired`) newer than the newest revoke-all is an add
        that has not expired; or the
        membership was there before the app's grants, no revoke-all ended it, and the app did not lose the answer
        to an add of its own before learning that (then it cannot tell, and counts the membership as its own)."""
        m = self.model
        revokes = [i for i in m.sent if i.kind is Effect.REVOKE_ALL and i.request_id in m.considered]
        floor = max(revokes, key=lambda i: i.order, default=None)
        for producer in PRODUCERS:
            own = [i for i in m.sent if i.producer == producer and i.kind is None and i.request_id in m.considered]
            newest = max(own, key=lambda i: i.order, default=None)
            if (
                newest is not None
                and newest.action is Action.ADD
                and (floor is None or newest.order > floor.order)
                and (newest.expires_at is None or newest.expires_at > m.now)
            ):
                return True
        return m.pre_existed and floor is None and not m.ambiguous

    def _deliver(self, message: Message) -> None:
        m = self.model
        intent = message.intent
        if intent.kind is None and intent.expires_at is not None and intent.expires_at <= m.now:
            return  # refused Expired before the ledger: nothing changes
        m.serial += 1
        token = f"t{m.serial}"
        decision = admit(m.state, intent, token=token, now=m.now, lease_for=LEASE, window=WINDOW)
        if isinstance(decision, Wait):  # delivered again later: decided (or refused Expired) then, not now
            m.queue.append(Message(intent, decision.until))
            return
        m.considered.add(intent.request_id)
        if isinstance(decision, Released):
            m.state = decision.state
        elif isinstance(decision, Proceed):
            m.state = decision.state
            assert decision.state.lease is not None
            m.flying.append(InFlight(message, token, decision.write, decision.state.lease.until))

    def _end(self, attempt: InFlight, how: str) -> None:
        m = self.model
        if attempt.until <= m.now:
            how = "crash"  # the lease ran out: the worker lost it (its write, sent, may land)
        if how == "answered":
            already = m.member == (attempt.write is Action.ADD)
            m.member = attempt.write is Action.ADD
            m.learned = True
            done = release(
                m.state or PairState(),
                token=attempt.token,
                applied=attempt.write,
                now=m.now,
                window=WINDOW,
                already=already,
            )
            if done is not None:
                m.state = done
            again = confirm_at(_admitted(m, attempt), action=attempt.write, now=m.now)
            if again is not None:
                m.queue.append(Message(attempt.message.intent, again))
            return
        if how in ("lost", "crash") and attempt.write is Action.ADD and not m.learned:
            m.ambiguous = True
        if how == "lost":
            m.landings.append(Landing(attempt.write, m.now + WINDOW))
            done = release(
                m.state or PairState(), token=attempt.token, applied=None, now=m.now, window=WINDOW, uncertain=True
            )
            if done is not None:
                m.state = done
        elif how == "crash":
            m.landings.append(Landing(attempt.write, attempt.until + WINDOW))
        elif how == "not_sent":
            done = release(m.state or PairState(), token=attempt.token, applied=None, now=m.now, window=WINDOW)
            if done is not None:
                m.state = done
        m.queue.append(Message(attempt.message.intent, m.now + timedelta(seconds=30)))


def _admitted(m: Model, attempt: InFlight) -> PairState:
    """The doubts the attempt's write was made beside: the pair's doubts of other attempts that were open."""
    state = m.state or PairState()
    return replace(state, doubts=tuple(d for d in state.doubts if d.token != attempt.token))


Grants.TestCase.settings = settings(max_examples=600, stateful_step_count=30, deadline=None)
test_any_interleaving_ends_as_the_grants_say = Grants.TestCase
