"""The soak's CI variant (500 messages through the registered function and the local host, with faults), and the
soak's own statement of the owned-grants model (`grants_local.soak_model`) checked against the core's."""

from __future__ import annotations

import logging
import random
from datetime import UTC, datetime, timedelta

from grants_local.soak import FAULTS, LATE_SCRIPTS, overlap_steps, run_soak
from grants_local.soak_model import Step, ending, released
from shared.core.contract import Action
from shared.core.intents import Effect, Intent
from shared.core.pairs import PairState, Proceed, Released, Superseded, admit, release

LEASE = timedelta(minutes=2)
WINDOW = timedelta(minutes=5)
START = datetime(2030, 1, 1, tzinfo=UTC)


async def test_given_500_messages_and_seeded_faults_when_soaked_then_every_invariant_holds() -> None:
    # INFO and above, as host.json sends to Application Insights (make soak scans DEBUG too)
    report = await run_soak(count=500, seed=20261123, log_level=logging.INFO)

    failed = [(name, expected, actual) for name, expected, actual, ok in report.invariants if not ok]
    assert failed == [], report.numbers
    assert sum(report.outcomes.values()) >= 500
    injected = {fault for fault, n in report.faults.items() if n}
    assert len(injected & set(FAULTS)) >= 10  # most fault kinds actually fired
    assert report.numbers["overlapping_pairs"]["pairs"] >= 10
    assert {"released (held by a grant)", "released (pre-existing)", "released (no holder)"} <= set(report.outcomes)
    assert report.numbers["deliveries_before_their_time_deferred"] > 0  # scheduled messages were replayed early
    late = report.numbers["late_landing_pairs"]
    assert late["late_landings_after_a_newer_intent"] > 0  # writes in flight landed after a newer intent had run
    assert late["release_storage_errors"] > 0  # the ledger failed returning a lease after a Graph write
    assert late["confirming_copies"] > 0


async def test_given_writes_landing_after_newer_intents_and_failed_lease_returns_when_soaked_then_newest_wins() -> None:
    # every late_landing script once or more (seed 52 draws all of them in 12 pairs), and nothing else
    report = await run_soak(count=12, seed=52, log_level=logging.INFO, kinds={"late_landing": 1})

    failed = [(name, expected, actual) for name, expected, actual, ok in report.invariants if not ok]
    assert failed == [], report.numbers["late_landing_examples"]
    late = report.numbers["late_landing_pairs"]
    assert set(late["scripts"]) == set(LATE_SCRIPTS)
    assert late["late_landings"] == late["held_writes"] > 0  # each held write landed at its moment
    assert late["late_landings_after_a_newer_intent"] > 0
    assert late["release_storage_errors"] >= late["scripts"]["release_fails_after_add"]
    assert late["confirming_copies"] > 0


def test_given_hr_s_and_a_ticket_s_grants_when_the_ticket_ends_then_hr_s_holds_until_it_expires() -> None:
    steps = [
        Step(0, "hr", "add", "hr-1", expires=3),
        Step(1, "ticketing", "add", "t-1"),
        Step(2, "ticketing", "remove", "t-1-remove"),
        Step(3, "hr", "expiry", "hr-1"),
    ]

    made = ending(steps, seeded=False)
    found = ending(steps, seeded=True)

    assert made.outcomes["t-1-remove"] == {released(["hr hr-1"])}
    assert "revoked" in made.outcomes["~expire:hr-1"]
    assert (made.member, made.adds, made.removals) == (False, 1, 1)
    assert found.outcomes["~expire:hr-1"] == {released(preexisting=True)}
    assert (found.member, found.adds, found.removals) == (True, 0, 0)
    assert ending(steps, seeded=True, doubted=True).member is False  # the first add in doubt: the app's membership


def test_given_random_owned_grants_when_the_soak_model_and_the_core_decide_them_then_they_agree() -> None:
    """`grants_local.soak_model` is written from the rules, not from `shared.core.pairs`: one step at a time, with no
    fault but (``doubted``) the first add's first attempt unanswered, every outcome the core decides is one the model
    allows, and the member ends where the model says."""
    for seed in range(400):
        steps = overlap_steps(random.Random(seed), seed)
        for seeded, doubted in ((False, False), (True, False), (True, True)):
            expected = ending(steps, seeded=seeded, doubted=doubted)
            outcomes, member = _decided(steps, seeded=seeded, doubted=doubted)
            wrong = {key: outcome for key, outcome in outcomes.items() if outcome not in expected.outcomes[key]}
            assert wrong == {}, (seed, seeded, doubted, steps)
            assert member is expected.member, (seed, seeded, doubted, steps)


def _decided(steps: list[Step], *, seeded: bool, doubted: bool) -> tuple[dict[str, str], bool]:
    """What `shared.core.pairs` decides for `steps`, one at a time, against a directory that holds the member or not
    (`seeded`); `doubted`: the first add's first attempt is sent and never answered."""
    state: PairState | None = None
    there = seeded
    outcomes: dict[str, str] = {}
    adds: dict[str, Intent] = {}
    for step in sorted(steps, key=lambda step: step.slot):
        now = START + step.slot * timedelta(hours=4)
        intent = _intent(step, now=now, adds=adds)
        if doubted and not outcomes:  # the first step is an add: its first attempt is never answered
            unanswered = admit(state, intent, token="lost", now=now, lease_for=LEASE, window=WINDOW)
            assert isinstance(unanswered, Proceed)
            state = release(unanswered.state, token="lost", applied=None, now=now, window=WINDOW, uncertain=True)
        decision = admit(state, intent, token=step.key, now=now, lease_for=LEASE, window=WINDOW)
        if isinstance(decision, Superseded):
            outcomes[step.key] = "superseded"
            continue
        if isinstance(decision, Released):
            named = [f"{grant.producer} {grant.newest.request_id}" for grant in decision.held_by]
            outcomes[step.key] = released(named, preexisting=decision.preexisting)
            state = decision.state
            continue
        assert isinstance(decision, Proceed)
        already = there if decision.write is Action.ADD else not there
        there = decision.write is Action.ADD
        done = {Action.ADD: ("granted", "already_member"), Action.REMOVE: ("revoked", "not_member")}[decision.write]
        outcomes[step.key] = done[already]
        state = release(decision.state, token=step.key, applied=decision.write, now=now, window=WINDOW, already=already)
    return outcomes, there


def _intent(step: Step, *, now: datetime, adds: dict[str, Intent]) -> Intent:
    """`step` as the gate makes it an intent (an expiry as `shared.core.intents.expiry_removal` dates it)."""
    if step.op == "expiry":
        add = adds[step.request_id]
        return Intent(
            request_id=step.key,
            content_hash=step.key,
            action=Action.REMOVE,
            requested_at=add.requested_at + timedelta(microseconds=1),
            producer=step.producer,
            kind=Effect.EXPIRE,
            ends=step.request_id,
        )
    expires = START + step.expires * timedelta(hours=4) if step.expires is not None else None
    intent = Intent(
        request_id=step.request_id,
        content_hash=step.request_id,
        action=Action.ADD if step.op == "add" else Action.REMOVE,
        requested_at=now,
        expires_at=expires,
        producer=step.producer,
        kind=Effect.REVOKE_ALL if step.op == "revokeAll" else None,
    )
    adds.setdefault(step.request_id, intent)
    return intent
