"""Intents per member and target (pure): idempotency keys, newest intent wins, leases that expire."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.core.contract import (
    Action,
    AdministrativeUnit,
    DirectoryRole,
    DirectoryScope,
    Guid,
    RoleAssignment,
    RoleEligibility,
    ScopedRole,
    Target,
    parse_grant,
)
from shared.core.intents import (
    Applied,
    Intent,
    Lease,
    PairState,
    Proceed,
    RequestCheck,
    RequestRecord,
    Superseded,
    Wait,
    admit,
    check_request,
    content_hash,
    intent_of,
    pair_of,
    parse_pair,
    release,
    removal_is_due,
)
from tests.test_contract import encode, message

T0 = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)
LEASE = timedelta(seconds=120)
AU = Guid("3f2504e0-4f89-11d3-9a0c-0305e82c3301")
TEMPLATE = Guid("729827e3-9c14-49f7-bb1b-9608f156bbb8")
USER = "15c1a2d5-9101-44b2-83ab-885db8a647ca"


def intent(request_id: str, action: Action = Action.ADD, *, at: int = 0, content: str = "c") -> Intent:
    return Intent(request_id=request_id, content_hash=content, action=action, requested_at=T0 + timedelta(seconds=at))


# --- identity ----------------------------------------------------------------------------------------------------


def test_pairs_name_the_target_kind_and_both_ids() -> None:
    assert pair_of(AdministrativeUnit(id=AU), USER) == f"au.{AU}.{USER}"
    assert pair_of(DirectoryRole(id=AU), USER) == f"role.{AU}.{USER}"
    assert pair_of(DirectoryRole(role_template_id=TEMPLATE), USER) == f"template.{TEMPLATE}.{USER}"
    assert pair_of(ScopedRole(role_template_id=TEMPLATE, administrative_unit_id=AU), USER) == (
        f"scoped.{TEMPLATE}.{AU}.{USER}"
    )


def test_pim_pairs_name_the_kind_the_definition_and_the_scope_as_one_token() -> None:
    """An eligibility and an active assignment of one role at one scope are two pairs; ``/`` is ``tenant``, a unit's
    scope ``au-<unit>``: no pair id holds a slash, and each reads back as the target it names."""
    unit_scope = DirectoryScope(f"/administrativeUnits/{AU}")
    eligible = RoleEligibility(role_definition_id=TEMPLATE, directory_scope_id=DirectoryScope("/"))
    active = RoleAssignment(role_definition_id=TEMPLATE, directory_scope_id=unit_scope)
    assert pair_of(eligible, USER) == f"elig.{TEMPLATE}.tenant.{USER}"
    assert pair_of(active, USER) == f"asgn.{TEMPLATE}.au-{AU}.{USER}"
    targets: list[Target] = [
        eligible,
        active,
        RoleEligibility(role_definition_id=TEMPLATE, directory_scope_id=unit_scope),
        RoleAssignment(role_definition_id=TEMPLATE, directory_scope_id=DirectoryScope("/")),
    ]
    assert len({pair_of(target, USER) for target in targets}) == 4
    for target in targets:
        assert parse_pair(pair_of(target, USER)) == (target, USER)


@pytest.mark.parametrize(
    "pair",
    [
        f"elig.{TEMPLATE}.root.{USER}",
        f"elig.{TEMPLATE}.au-.{USER}",
        f"asgn.{TEMPLATE}.au-x.{USER}",
        f"elig.x.tenant.{USER}",
    ],
)
def test_a_pim_pair_that_pair_of_did_not_write_is_refused(pair: str) -> None:
    with pytest.raises(ValueError, match=r"scope|GUID"):
        parse_pair(pair)


def test_content_hash_covers_what_is_asked_not_free_text_or_when() -> None:
    """Same action, pair and expiry with other free text or requestedAt: the same content; another member: not."""
    base = parse_grant(encode(message()))
    reworded = parse_grant(encode(message(reason="typo fixed", requestedAt="2026-05-01T09:00:00Z")))
    other_member = parse_grant(encode(message(member={"id": "25c1a2d5-9101-44b2-83ab-885db8a647cb"})))
    removal = parse_grant(encode(message(action="remove")))
    assert content_hash(base) == content_hash(reworded)
    assert len({content_hash(base), content_hash(other_member), content_hash(removal)}) == 3


def test_intent_is_made_at_requested_at_unless_that_is_later_than_the_first_arrival() -> None:
    stated = parse_grant(encode(message(requestedAt="2026-05-01T10:00:00+01:00")))
    unstated = parse_grant(encode(message()))
    assert intent_of(stated, arrived_at=T0 + timedelta(days=1)).requested_at == T0
    assert intent_of(stated, arrived_at=T0 - timedelta(seconds=1)).requested_at == T0 - timedelta(seconds=1)
    assert intent_of(unstated, arrived_at=T0).requested_at == T0
    assert intent_of(parse_grant(encode(message(action="remove"))), arrived_at=T0).expires_at is None


# --- idempotency key ---------------------------------------------------------------------------------------------


def record(content: str = "c", origin: str = "m-1") -> RequestRecord:
    return RequestRecord(request_id="r", content_hash=content, origin=origin, pair="p", requested_at=T0)


def test_an_unseen_request_id_is_new() -> None:
    assert check_request(None, intent=intent("r"), origin="m-1") is RequestCheck.NEW


def test_a_retry_copy_of_the_first_message_is_the_same_request() -> None:
    assert check_request(record(), intent=intent("r"), origin="m-1") is RequestCheck.SAME_MESSAGE


def test_the_same_id_and_content_in_another_message_is_a_duplicate() -> None:
    assert check_request(record(), intent=intent("r"), origin="m-2") is RequestCheck.DUPLICATE


def test_the_same_id_with_other_content_is_a_conflict_whichever_message_carries_it() -> None:
    assert check_request(record(), intent=intent("r", content="other"), origin="m-2") is RequestCheck.CONFLICT
    assert check_request(record(), intent=intent("r", content="other"), origin="m-1") is RequestCheck.CONFLICT


# --- newest intent wins ------------------------------------------------------------------------------------------


def test_the_first_intent_for_a_pair_proceeds_and_takes_the_lease() -> None:
    decision = admit(None, intent("a"), token="t1", now=T0, lease_for=LEASE)
    assert decision == Proceed(PairState(newest=intent("a"), lease=Lease(token="t1", request_id="a", until=T0 + LEASE)))


def test_an_older_intent_is_superseded_even_while_the_lease_is_held() -> None:
    state = PairState(newest=intent("new", Action.REMOVE, at=10), lease=Lease(token="t1", request_id="new", until=T0))
    assert admit(state, intent("old", at=5), token="t2", now=T0, lease_for=LEASE) == Superseded(state.newest)


def test_a_newer_intent_waits_for_a_live_lease_then_proceeds_once_it_expired() -> None:
    state = PairState(newest=intent("a"), lease=Lease(token="t1", request_id="a", until=T0 + LEASE))
    newer = intent("b", Action.REMOVE, at=1)
    assert admit(state, newer, token="t2", now=T0, lease_for=LEASE) == Wait(until=T0 + LEASE, holder="a")
    later = T0 + LEASE
    decision = admit(state, newer, token="t2", now=later, lease_for=LEASE)
    assert isinstance(decision, Proceed)
    assert decision.state.newest == newer
    assert decision.state.lease == Lease(token="t2", request_id="b", until=later + LEASE)


def test_a_second_delivery_of_the_lease_holders_request_waits_too() -> None:
    state = PairState(newest=intent("a"), lease=Lease(token="t1", request_id="a", until=T0 + LEASE))
    assert isinstance(admit(state, intent("a"), token="t2", now=T0, lease_for=LEASE), Wait)


def test_a_retry_of_the_newest_intent_proceeds_again() -> None:
    state = PairState(newest=intent("a"), applied=None)
    decision = admit(state, intent("a"), token="t9", now=T0, lease_for=LEASE)
    assert isinstance(decision, Proceed)
    assert decision.state.newest == intent("a")


def test_equal_times_are_ordered_by_request_id() -> None:
    state = PairState(newest=intent("b", at=0))
    assert isinstance(admit(state, intent("a", at=0), token="t", now=T0, lease_for=LEASE), Superseded)
    assert isinstance(admit(state, intent("c", at=0), token="t", now=T0, lease_for=LEASE), Proceed)


def test_release_returns_the_lease_and_records_what_was_written() -> None:
    held = PairState(newest=intent("a"), lease=Lease(token="t1", request_id="a", until=T0 + LEASE))
    assert release(held, token="t1", applied=Action.ADD, now=T0) == PairState(
        newest=intent("a"), applied=Applied(request_id="a", action=Action.ADD, at=T0)
    )


def test_release_after_a_failure_keeps_the_last_applied_write() -> None:
    before = Applied(request_id="z", action=Action.REMOVE, at=T0)
    held = PairState(newest=intent("a"), lease=Lease(token="t1", request_id="a", until=T0 + LEASE), applied=before)
    assert release(held, token="t1", applied=None, now=T0) == PairState(newest=intent("a"), applied=before)


def test_a_holder_whose_lease_was_taken_over_records_nothing() -> None:
    taken = PairState(newest=intent("b"), lease=Lease(token="t2", request_id="b", until=T0 + LEASE))
    assert release(taken, token="t1", applied=Action.ADD, now=T0) is None
    assert release(replace(taken, lease=None), token="t1", applied=Action.ADD, now=T0) is None


# --- pending removals ------------------------------------------------------------------------------------------------


def timed(request_id: str, *, at: int = 0, days: int = 30) -> Intent:
    return replace(intent(request_id, at=at), expires_at=T0 + timedelta(days=days))


def proceed(state: PairState | None, item: Intent, attempt: str = "t") -> PairState:
    decision = admit(state, item, token=attempt, now=T0, lease_for=LEASE)
    assert isinstance(decision, Proceed)
    return decision.state


def test_a_time_bound_add_leaves_a_pending_removal_at_its_expiry() -> None:
    state = release(proceed(None, timed("a")), token="t", applied=Action.ADD, now=T0)
    assert state is not None
    assert state.removal_due == T0 + timedelta(days=30)
    assert not removal_is_due(state, now=T0 + timedelta(days=29))
    assert removal_is_due(state, now=T0 + timedelta(days=30))


def test_a_failed_add_still_leaves_its_pending_removal() -> None:
    """Given a time-bound add whose write failed (it may have landed), the removal stays pending."""
    state = release(proceed(None, timed("a")), token="t", applied=None, now=T0)
    assert state is not None
    assert state.removal_due == T0 + timedelta(days=30)


def test_only_an_applied_removal_clears_the_pending_removal() -> None:
    granted = release(proceed(None, timed("a")), token="t", applied=Action.ADD, now=T0)
    removing = proceed(granted, intent("b", Action.REMOVE, at=1), "t2")
    assert removing.removal_due == T0 + timedelta(days=30)  # the removal may still fail
    failed = release(removing, token="t2", applied=None, now=T0)
    assert failed is not None
    assert failed.removal_due == T0 + timedelta(days=30)
    removed = release(removing, token="t2", applied=Action.REMOVE, now=T0)
    assert removed is not None
    assert removed.removal_due is None


def test_a_newer_add_sets_its_own_expiry_or_none() -> None:
    granted = proceed(None, timed("a"))
    assert proceed(granted, timed("b", at=1, days=60)).removal_due == T0 + timedelta(days=60)
    assert proceed(granted, intent("c", at=1)).removal_due is None


# --- property: any interleaving ends with the newest intent --------------------------------------------------------


@dataclass
class Attempt:
    """One worker's progress through a delivery: admitted (holding a lease until `until`), then writing."""

    intent: Intent
    token: str
    until: datetime


@dataclass
class World:
    """One pair: the ledger's record, whether the member is in the target, and the clock."""

    state: PairState | None = None
    member: bool = False
    now: datetime = T0


def simulate(intents: list[Intent], rng: random.Random) -> World:
    """Deliver every intent (some twice) to interleaved workers with faults, crashes and lease expiry."""
    world = World()
    pending: list[tuple[datetime, Intent]] = [(T0, item) for item in intents]
    pending += [(T0 + timedelta(seconds=rng.randint(0, 300)), item) for item in intents if rng.random() < 0.3]
    faults = {item.request_id: rng.randint(0, 3) for item in intents}
    admitted: list[Attempt] = []
    serial = 0
    for _ in range(10_000):
        if not pending and not admitted:
            return world
        ready = [entry for entry in pending if entry[0] <= world.now]
        if not ready and not admitted:
            world.now = min(when for when, _ in pending)
            continue
        world.now += timedelta(seconds=rng.choice([0, 0, 1, 30, 200]))
        if ready and (not admitted or rng.random() < 0.5):
            entry = rng.choice(ready)
            pending.remove(entry)
            serial += 1
            decision = admit(world.state, entry[1], token=f"t{serial}", now=world.now, lease_for=LEASE)
            if isinstance(decision, Proceed):
                assert all(other.until <= world.now for other in admitted), "two attempts may write at once"
                world.state = decision.state
                admitted.append(Attempt(entry[1], f"t{serial}", world.now + LEASE))
            elif isinstance(decision, Wait):
                pending.append((decision.until, entry[1]))
            continue
        attempt = admitted.pop(rng.randrange(len(admitted)))
        finish(world, attempt, pending, faults, rng)
    raise AssertionError("the simulation did not settle")


def finish(
    world: World, attempt: Attempt, pending: list[tuple[datetime, Intent]], faults: dict[str, int], rng: random.Random
) -> None:
    """Write (before the lease's deadline, as the service does) and release; or fail, crash, or lose the release."""
    retry_at = world.now + timedelta(seconds=rng.randint(1, 400))
    request_id = attempt.intent.request_id
    fault = rng.choice(["transient", "crash", "release_lost"]) if faults[request_id] else None
    if world.now >= attempt.until:  # past the deadline: the write is not sent
        fault = "transient"
    elif fault not in ("transient", "crash"):
        world.member = attempt.intent.action is Action.ADD
    if fault is not None:
        faults[request_id] = max(0, faults[request_id] - 1)
        pending.append((retry_at, attempt.intent))
        if fault != "transient":
            return  # crashed or could not record: the lease stays until it expires
    assert world.state is not None
    released = release(
        world.state, token=attempt.token, applied=None if fault else attempt.intent.action, now=world.now
    )
    if released is not None:
        world.state = released


intents_for_one_pair = st.lists(st.tuples(st.sampled_from(Action), st.integers(0, 5)), min_size=1, max_size=5).map(
    lambda drawn: [intent(f"r{n}", action, at=at, content=f"c{n}") for n, (action, at) in enumerate(drawn)]
)


@given(intents_for_one_pair, st.integers(0, 2**32))
@settings(max_examples=1000, deadline=None)
def test_any_interleaving_ends_with_the_newest_intent(intents: list[Intent], seed: int) -> None:
    """Given intents for one pair delivered in any order, with duplicates, faults, crashes and lease expiry,
    then the member is in the target exactly when the newest intent is an add, and that intent is recorded."""
    world = simulate(intents, random.Random(seed))
    newest = max(intents, key=lambda item: item.order)
    assert world.member == (newest.action is Action.ADD)
    assert world.state is not None
    assert world.state.newest == newest
