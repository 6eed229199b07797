"""Drift (pure): what the directory holds against the newest intent per pair, and the repairs a sweep plans."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.core.contract import Action, AdministrativeUnit, DirectoryRole, Guid, ScopedRole, Target, is_request_id
from shared.core.drift import (
    UNMANAGED_REQUESTED_AT,
    Guard,
    Lingering,
    Missing,
    Mode,
    Plan,
    Report,
    Unmanaged,
    classify,
    is_tier0,
    newest_states,
    plan,
    repair_command,
    repair_message_id,
)
from shared.core.intents import Intent, effect_of, intent_of
from shared.core.pairs import Applied, Grant, Lease, PairState, Proceed, admit, release
from shared.core.policy import TIER0_ROLE_TEMPLATES

NOW = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)
AU = AdministrativeUnit(id=Guid("3f2504e0-4f89-11d3-9a0c-0305e82c3301"))
HELPDESK_TEMPLATE = Guid("729827e3-9c14-49f7-bb1b-9608f156bbb8")
GLOBAL_ADMIN_TEMPLATE = Guid("62e90394-69f5-4237-9190-012177145e10")
HELPDESK = DirectoryRole(role_template_id=HELPDESK_TEMPLATE)
GLOBAL_ADMIN = DirectoryRole(role_template_id=GLOBAL_ADMIN_TEMPLATE)
LEASE_FOR = timedelta(minutes=2)


def member(n: int) -> Guid:
    return Guid(f"{n:08x}-0000-4000-8000-000000000000")


def state(
    request_id: str, action: Action = Action.ADD, *, at: int = -3600, expires: int | None = None, lease: int = 0
) -> PairState:
    """A pair the app made (its add applied) whose one grant's newest intent is `request_id`'s (`at` seconds from
    NOW, expiring `expires` s from NOW, its removal pending while it does), with a lease held until `lease` seconds
    from NOW when not 0."""
    intent = Intent(
        request_id=request_id,
        content_hash="c",
        action=action,
        requested_at=NOW + timedelta(seconds=at),
        expires_at=None if expires is None else NOW + timedelta(seconds=expires),
        producer="hr",
    )
    held = Lease(token="t", request_id=request_id, until=NOW + timedelta(seconds=lease)) if lease else None
    made = Applied(request_id="RITM0", action=Action.ADD, at=NOW - timedelta(days=1))
    grant = Grant(producer="hr", newest=intent, removal_due=intent.expires_at)
    return PairState(grants=(grant,), lease=held, applied=made)


# --- classification ----------------------------------------------------------------------------------------------


def test_each_class_is_found_and_pairs_in_step_are_not() -> None:
    states = {
        member(1): state("RITM1"),  # add, directory has it: in step
        member(2): state("RITM2"),  # add, directory lacks it: missing
        member(3): state("RITM3", Action.REMOVE),  # remove, directory has it: lingering
        member(4): state("RITM4", expires=-60),  # add expired a minute ago, directory has it: lingering
        member(5): state("RITM5", Action.REMOVE),  # remove, directory lacks it: in step
        member(6): state("RITM6", expires=-60),  # expired, directory lacks it: in step
        member(7): state("RITM7", expires=3600),  # add expiring in an hour, directory lacks it: missing
    }
    report = classify(states=states, members={member(1), member(3), member(4), member(8)}, now=NOW)
    assert report.findings == (
        Missing(member_id=member(2), intent=states[member(2)].latest),
        Lingering(member_id=member(3), intent=states[member(3)].latest),
        Lingering(member_id=member(4), intent=states[member(4)].latest),
        Missing(member_id=member(7), intent=states[member(7)].latest),
        Unmanaged(member_id=member(8)),
    )
    assert report.members == 4
    assert [f.expired for f in report.findings if isinstance(f, Lingering)] == [False, True]


def test_a_pair_with_a_write_in_flight_is_not_judged() -> None:
    """A live lease: the write may land any moment; an expired lease is judged as any other pair."""
    states = {member(1): state("RITM1", lease=30), member(2): state("RITM2", lease=-30)}
    report = classify(states=states, members=set(), now=NOW)
    assert report.in_flight == (member(1),)
    assert report.findings == (Missing(member_id=member(2), intent=states[member(2)].latest),)


def test_a_role_named_by_id_and_by_template_is_judged_by_both_pairs_grants() -> None:
    by_id, by_template = state("RITM1", at=-60), state("RITM2", Action.REMOVE, at=-30)
    merged = newest_states([(member(1), by_id), (member(1), by_template), (member(2), by_id)])
    assert merged[member(2)] == by_id
    assert merged[member(1)].grant_of("hr") == by_template.grant_of("hr")  # the same producer's newer intent
    elsewhere = replace(state("RITM3", at=-90), grants=(Grant(producer="ticketing", newest=by_id.grants[0].newest),))
    both = newest_states([(member(1), elsewhere), (member(1), by_template)])[member(1)]
    assert [g.producer for g in both.holders(now=NOW)] == ["ticketing"]  # another producer's grant still holds it


def test_a_membership_the_app_did_not_make_is_unmanaged_whatever_grants_ended() -> None:
    ended = state("RITM1", Action.REMOVE)
    states = {member(1): replace(ended, preexisting=True), member(2): replace(ended, applied=None)}
    report = classify(states=states, members={member(1), member(2)}, now=NOW)
    assert report.findings == (Unmanaged(member_id=member(1)), Unmanaged(member_id=member(2)))


# --- planning ----------------------------------------------------------------------------------------------------


def drifted() -> Report:
    """One of each class in a unit of 100 members (so the guard allows 20 removals)."""
    states = {
        member(1): state("RITM1"),
        member(2): state("RITM2", Action.REMOVE),
        member(3): state("RITM3", expires=-1),
    }
    in_directory = {member(2), member(3), member(4), *(member(n) for n in range(100, 197))}
    states |= {member(n): state(f"RITM{n}") for n in range(100, 197)}
    return classify(states=states, members=in_directory, now=NOW)


def test_report_mode_plans_nothing_and_reports_everything() -> None:
    report = drifted()
    result = plan(report, target=AU)
    assert result.repairs == ()
    assert result.held is None
    assert result.reported == report.findings


def test_restore_regrants_missing_and_removes_lingering_and_leaves_unmanaged_alone() -> None:
    result = plan(drifted(), target=AU, mode=Mode.RESTORE)
    assert [(r.action, r.member_id, r.request_id, r.restores) for r in result.repairs] == [
        (Action.ADD, member(1), "~drift-add:RITM1", "RITM1"),
        (Action.REMOVE, member(2), "~drift-remove:RITM2", "RITM2"),
        (Action.REMOVE, member(3), "~expire:RITM3", "RITM3"),
    ]
    assert result.reported == (Unmanaged(member_id=member(4)),)
    assert [r.describe() for r in result.repairs][:2] == ["restores RITM1's grant", "restores RITM2's removal"]


def test_authoritative_also_removes_an_unmanaged_member_yielding_to_any_real_intent() -> None:
    result = plan(drifted(), target=AU, mode=Mode.AUTHORITATIVE)
    unmanaged = result.repairs[-1]
    assert (unmanaged.action, unmanaged.member_id, unmanaged.restores) == (Action.REMOVE, member(4), None)
    assert unmanaged.request_id == f"~drift:au.{AU.id}.{member(4)}"
    assert unmanaged.requested_at == UNMANAGED_REQUESTED_AT
    assert result.reported == ()


def test_a_repair_is_ordered_just_after_the_intent_it_restores() -> None:
    """A repair is dated a microsecond after the intent it restores (history lists it there); its date decides
    nothing against a grant (`Effect.REPAIR`: the grants when it runs do)."""
    repair = plan(drifted(), target=AU, mode=Mode.RESTORE).repairs[0]
    restored = repair.finding.intent if isinstance(repair.finding, Missing) else None
    assert restored is not None
    assert restored.requested_at < repair.requested_at == restored.requested_at + timedelta(microseconds=1)


def test_the_expired_grants_removal_is_the_apps_own_expiry_removal() -> None:
    """The expiry sweep's removal and the repair are one request: same id, same content (one is absorbed)."""
    from shared.core.intents import expiry_removal

    repair = plan(drifted(), target=AU, mode=Mode.RESTORE).repairs[2]
    assert isinstance(repair.finding, Lingering)
    assert repair_command(AU, repair) == expiry_removal(AU, member(3), of=repair.finding.intent)


def test_a_regrant_keeps_its_intents_expiry_and_names_it() -> None:
    report = classify(states={member(1): state("RITM1", expires=3600)}, members=set(), now=NOW)
    repair = plan(report, target=AU, mode=Mode.RESTORE).repairs[0]
    command = repair_command(AU, repair)
    assert command.expires_at == NOW + timedelta(hours=1)
    assert (command.source.reference, command.reason) == ("RITM1", "Drift repair: restores RITM1's grant")
    assert repair_message_id(command).startswith("~drift:")


def test_a_second_repair_of_the_same_pair_is_the_same_request_carried_out_again() -> None:
    """Drift again after a repair was applied (a repair changes no grant): the same request and message again, which
    the ledger takes as its first message again (carried out), not as a duplicate."""
    first = plan(drifted(), target=AU, mode=Mode.RESTORE).repairs[0]
    again = classify(states={member(1): state("RITM1")}, members=set(), now=NOW)
    second = plan(again, target=AU, mode=Mode.RESTORE).repairs[0]
    assert (second.request_id, second.restores) == (first.request_id, "RITM1")
    assert repair_message_id(repair_command(AU, second)) == repair_message_id(repair_command(AU, first))


def test_tier0_roles_are_never_touched_whatever_the_mode() -> None:
    report = classify(states={member(1): state("RITM1")}, members={member(2)}, now=NOW)
    for target in (
        GLOBAL_ADMIN,
        ScopedRole(role_template_id=GLOBAL_ADMIN_TEMPLATE, administrative_unit_id=AU.id),
    ):
        result = plan(report, target=target, mode=Mode.AUTHORITATIVE)
        assert (result.repairs, result.held, result.tier0) == ((), None, True)
        assert result.reported == report.findings


def test_a_role_named_by_id_is_tier0_unless_the_caller_knows_its_template() -> None:
    """The core cannot look up a role's template: by default it fails closed; the caller's predicate decides."""
    role = DirectoryRole(id=Guid("a1b2c3d4-0000-4000-8000-000000000001"))
    assert is_tier0(role)
    assert not is_tier0(HELPDESK)
    assert not is_tier0(AU)
    report = classify(states={member(1): state("RITM1")}, members=set(), now=NOW)
    assert plan(report, target=role, mode=Mode.RESTORE).repairs == ()
    assert len(plan(report, target=role, mode=Mode.RESTORE, tier0=lambda _: False).repairs) == 1
    assert GLOBAL_ADMIN_TEMPLATE in TIER0_ROLE_TEMPLATES


# --- the blast-radius guard --------------------------------------------------------------------------------------


def mass_removal(count: int, *, members: int) -> Report:
    """`members` in the directory, the first `count` of them with a newest intent to remove."""
    states = {member(n): state(f"RITM{n}", Action.REMOVE if n < count else Action.ADD) for n in range(members)}
    return classify(states=states, members={member(n) for n in range(members)}, now=NOW)


@pytest.mark.parametrize(
    ("members", "removals", "held"),
    [(100, 20, False), (100, 21, True), (1000, 50, False), (1000, 51, True), (4, 1, True), (5, 1, False)],
)
def test_the_guard_holds_removals_beyond_a_fifth_of_the_members_or_fifty(
    members: int, removals: int, held: bool
) -> None:
    result = plan(mass_removal(removals, members=members), target=AU, mode=Mode.RESTORE)
    assert (result.held is not None) is held
    assert len(result.repairs) == (0 if held else removals)


def test_held_removals_are_released_once_by_a_confirm_naming_them() -> None:
    report = mass_removal(60, members=100)
    first = plan(report, target=AU, mode=Mode.RESTORE)
    assert first.held is not None
    assert (first.held.limit, len(first.held.repairs)) == (20, 60)
    released = plan(report, target=AU, mode=Mode.RESTORE, confirm=first.held.digest)
    assert (released.released, released.held, len(released.repairs)) == (True, None, 60)
    other = plan(mass_removal(61, members=100), target=AU, mode=Mode.RESTORE, confirm=first.held.digest)
    assert other.held is not None, "a confirm releases the set it named, not another"
    assert not other.released


def test_the_same_drift_again_after_its_released_removals_were_carried_out_is_a_new_set() -> None:
    """A repair is the same request each time the same pair drifts, so the held set names each pair's last answered
    write too: while the released removals wait, a sweep finds the same set (released: sent again, absorbed); once
    they were carried out (each pair's last write is its removal), the same members added back are another set,
    held again until a confirm names it."""
    unmanaged = {member(n): PairState() for n in range(10)} | {member(n): state(f"RITM{n}") for n in range(10, 20)}
    in_directory = {member(n) for n in range(20)}
    first = plan(classify(states=unmanaged, members=in_directory, now=NOW), target=AU, mode=Mode.AUTHORITATIVE)
    assert first.held is not None
    waiting = plan(classify(states=unmanaged, members=in_directory, now=NOW), target=AU, mode=Mode.AUTHORITATIVE)
    assert waiting.held is not None
    assert waiting.held.digest == first.held.digest
    removed = {
        m: replace(s, applied=Applied(request_id=f"~drift:au.{AU.id}.{m}", action=Action.REMOVE, at=NOW))
        for m, s in unmanaged.items()
        if not s.grants
    }
    again = classify(states=unmanaged | removed, members=in_directory, now=NOW + timedelta(hours=1))
    result = plan(again, target=AU, mode=Mode.AUTHORITATIVE, confirm=first.held.digest)
    assert result.held is not None
    assert [r.request_id for r in result.held.repairs] == [r.request_id for r in first.held.repairs]
    assert result.held.digest != first.held.digest
    assert not result.released


def test_the_guard_never_holds_regrants() -> None:
    states = {member(n): state(f"RITM{n}", Action.REMOVE) for n in range(30)} | {member(99): state("RITM99")}
    report = classify(states=states, members={member(n) for n in range(30)}, now=NOW)
    result = plan(report, target=AU, mode=Mode.RESTORE, guard=Guard(fraction=0.1, cap=2))
    assert [r.member_id for r in result.repairs] == [member(99)]
    assert result.held is not None
    assert len(result.held.repairs) == 30


# --- properties --------------------------------------------------------------------------------------------------

POOL = [member(n) for n in range(12)]
TARGETS: list[Target] = [
    AU,
    HELPDESK,
    ScopedRole(role_template_id=HELPDESK_TEMPLATE, administrative_unit_id=AU.id),
]


@st.composite
def sweeps(draw: st.DrawFn) -> tuple[dict[Guid, PairState], set[Guid]]:
    """The ledger's states and the directory's members of one target, over a pool of 12 members."""
    states: dict[Guid, PairState] = {}
    for index, member_id in enumerate(POOL):
        if not draw(st.booleans()):
            continue
        action = draw(st.sampled_from(Action))
        at = draw(st.integers(-10_000, 0))
        expires = draw(st.none() | st.integers(-5_000, 5_000)) if action is Action.ADD else None
        lease = draw(st.sampled_from([0, 0, 0, -10, 30]))
        states[member_id] = state(f"REQ{index}-{at}", action, at=at, expires=expires, lease=lease)
    members = {m for m in POOL if draw(st.booleans())}
    return states, members


def carry_out(target: Target, result: Plan, states: dict[Guid, PairState], members: set[Guid]) -> None:
    """What the pipeline does with each repair: admit its intent against the pair's state, write, release."""
    for repair in result.repairs:
        command = repair_command(target, repair)
        finding = repair.finding
        expiry = finding.intent.request_id if isinstance(finding, Lingering) and finding.expired else None
        producer = finding.intent.producer if expiry else "app"
        kind = effect_of(command, expiry_of=expiry, app=True)
        decision = admit(
            states.get(repair.member_id),
            intent_of(command, arrived_at=NOW, producer=producer, kind=kind, ends=expiry),
            token="repair",
            now=NOW,
            lease_for=LEASE_FOR,
            window=LEASE_FOR,
        )
        assert isinstance(decision, Proceed), "nothing changed since: a repair is never superseded"
        (members.add if command.action is Action.ADD else members.discard)(repair.member_id)
        released = release(decision.state, token="repair", applied=command.action, now=NOW, window=LEASE_FOR)
        assert released is not None
        states[repair.member_id] = released


@settings(max_examples=300, deadline=None)
@given(sweeps(), st.sampled_from(TARGETS), st.sampled_from([Mode.RESTORE, Mode.AUTHORITATIVE]))
def test_restore_and_authoritative_converge_in_one_confirmed_pass(
    sweep: tuple[dict[Guid, PairState], set[Guid]], target: Target, mode: Mode
) -> None:
    """After the planned repairs (held removals confirmed), only unmanaged members remain under restore and
    nothing under authoritative; pairs with a write in flight are left as they were."""
    states, members = sweep
    report = classify(states=states, members=members, now=NOW)
    result = plan(report, target=target, mode=mode, tier0=lambda _: False)
    if result.held is not None:
        result = plan(report, target=target, mode=mode, tier0=lambda _: False, confirm=result.held.digest)
    in_flight = {m: (m in members) for m in report.in_flight}
    carry_out(target, result, states, members)
    states = {m: replace(s, lease=None) if m in in_flight else s for m, s in states.items()}
    after = classify(
        states={m: s for m, s in states.items() if m not in in_flight}, members=members - in_flight.keys(), now=NOW
    )
    leftover = {type(f) for f in after.findings}
    assert leftover <= ({Unmanaged} if mode is Mode.RESTORE else set())
    assert {m: (m in members) for m in in_flight} == in_flight


@settings(max_examples=300, deadline=None)
@given(sweeps(), st.sampled_from(TARGETS), st.sampled_from(Mode), st.integers(0, 5), st.integers(0, 100))
def test_plans_hold_every_removal_past_the_limit_never_a_regrant_and_use_the_apps_own_ids(
    sweep: tuple[dict[Guid, PairState], set[Guid]], target: Target, mode: Mode, cap: int, percent: int
) -> None:
    states, members = sweep
    report = classify(states=states, members=members, now=NOW)
    guard = Guard(fraction=percent / 100, cap=cap)
    result = plan(report, target=target, mode=mode, guard=guard, tier0=lambda _: False)
    removals = [r for r in result.repairs if r.action is Action.REMOVE]
    assert len(removals) <= guard.limit(report.members)
    assert (result.held is None) or all(r.action is Action.REMOVE for r in result.held.repairs)
    planned = [*result.repairs, *(result.held.repairs if result.held else ())]
    acted = {r.member_id for r in planned}
    assert acted.isdisjoint(f.member_id for f in result.reported)
    assert acted | {f.member_id for f in result.reported} == {f.member_id for f in report.findings}
    ids = [r.request_id for r in planned]
    assert len(set(ids)) == len(ids)
    assert all(":" in i and is_request_id(i) for i in ids), "in the namespace no webhook request id can enter"
    assert all(
        r.finding.intent.order < (r.requested_at, r.request_id) for r in planned if not isinstance(r.finding, Unmanaged)
    )
    again = plan(report, target=target, mode=mode, guard=guard, tier0=lambda _: False)
    assert again == result, "a plan is a function of its inputs"
