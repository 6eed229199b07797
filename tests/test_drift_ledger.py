"""The ledger's drift queries against Azurite: the pairs of one target, the targets it knows, the guard's held
removals (recorded, kept for the same set, released once)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from shared.adapters.ledger import Admitted, DriftHold, Ledger
from shared.core.contract import Action, AdministrativeUnit, DirectoryRole, Guid, ScopedRole, Target
from shared.core.intents import Intent, pair_of
from shared.core.pairs import Released

if TYPE_CHECKING:
    from azure.data.tables.aio import TableClient

    from tests.conftest import StorageCalls

T0 = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)
UNIT = AdministrativeUnit(id=Guid("3f2504e0-4f89-11d3-9a0c-0305e82c3301"))
NEIGHBOUR = AdministrativeUnit(id=Guid("3f2504e0-4f89-11d3-9a0c-0305e82c3302"))  # differs in the last digit only
ROLE = DirectoryRole(id=Guid("a1b2c3d4-0000-4000-8000-000000000001"))
ROLE_2 = DirectoryRole(id=Guid("a1b2c3d4-0000-4000-8000-000000000002"))  # shares the role's 40-character key block
TEMPLATE = DirectoryRole(role_template_id=Guid("729827e3-9c14-49f7-bb1b-9608f156bbb8"))
SCOPED = ScopedRole(role_template_id=TEMPLATE.role_template_id or Guid(""), administrative_unit_id=UNIT.id)
SCOPED_2 = ScopedRole(role_template_id=SCOPED.role_template_id, administrative_unit_id=NEIGHBOUR.id)


def member(n: int) -> Guid:
    return Guid(f"{n:08x}-0000-4000-8000-0000000d51f0")


async def record(ledger: Ledger, target: Target, n: int, action: Action = Action.ADD) -> Intent:
    """Record request ``r-<n>`` for member n of `target` as the app does (admitted, then finished)."""
    intent = Intent(
        request_id=f"r-{n}", content_hash="c", action=action, requested_at=T0 + timedelta(seconds=n), producer="bulk"
    )
    decision = await ledger.begin(intent, pair=pair_of(target, member(n)), origin=f"m-{n}", now=T0)
    if action is Action.REMOVE:  # the end of a grant the app never wrote: nothing to remove
        assert isinstance(decision, Released)
        return intent
    assert isinstance(decision, Admitted)
    assert await ledger.finish(decision.ticket, applied=action, now=T0)
    return intent


@pytest.fixture
def ledger(ledger_table: TableClient) -> Ledger:
    return Ledger(ledger_table)


async def test_the_pairs_of_one_target_are_its_own_even_beside_ids_that_share_their_key_prefix(
    ledger: Ledger,
) -> None:
    """Units and roles whose ids differ in the last digit, a role by id and by template, a role scoped to two units:
    each target's pairs are exactly its own, with their grants."""
    expected: dict[Target, dict[Guid, Intent]] = {}
    n = 0
    for target in (UNIT, NEIGHBOUR, ROLE, ROLE_2, TEMPLATE, SCOPED, SCOPED_2):
        for _ in range(3):
            n += 1
            action = Action.REMOVE if n % 3 == 0 else Action.ADD
            expected.setdefault(target, {})[member(n)] = await record(ledger, target, n, action)

    for target, intents in expected.items():
        pairs = await ledger.target_pairs(target)
        assert {m: state.latest for m, state in pairs} == intents, target
        assert all(state.lease is None for _, state in pairs)
        assert all((state.applied is not None) == state.wanted(now=T0) for _, state in pairs)


async def test_a_target_with_no_pair_has_none(ledger: Ledger) -> None:
    await record(ledger, UNIT, 1)
    assert await ledger.target_pairs(NEIGHBOUR) == []


async def test_the_targets_listed_are_every_target_with_a_pair_in_one_request_per_unit(
    ledger: Ledger, storage_calls: StorageCalls
) -> None:
    """Five units of four members each cost one request each; the roles' shared blocks are read whole."""
    units = [AdministrativeUnit(id=Guid(f"3f2504e0-4f89-11d3-9a0c-0305e82c330{u}")) for u in range(5)]
    n = 0
    for target in (*units, ROLE, ROLE_2, TEMPLATE, SCOPED, SCOPED_2):
        for _ in range(4):
            n += 1
            await record(ledger, target, n)
    storage_calls.requests.clear()

    targets = await ledger.pair_targets()

    assert set(targets) == {*units, ROLE, ROLE_2, TEMPLATE, SCOPED, SCOPED_2}
    assert len(targets) == 10
    # 5 units + 1 end: a request each; the role block (both roles), the template's and the scoped block: 2 each
    assert len(storage_calls) == 6 + 3 * 2


async def test_the_targets_listed_can_be_narrowed_to_a_prefix(ledger: Ledger) -> None:
    for n, target in enumerate((UNIT, NEIGHBOUR, SCOPED, SCOPED_2, TEMPLATE), start=1):
        await record(ledger, target, n)
    assert await ledger.pair_targets(prefix=pair_of(UNIT, "")) == [UNIT]
    assert set(await ledger.pair_targets(prefix="scoped.")) == {SCOPED, SCOPED_2}
    assert await ledger.pair_targets(prefix=pair_of(ROLE, "")) == []


async def test_a_hold_is_recorded_kept_for_the_same_set_and_replaced_by_another(ledger: Ledger) -> None:
    assert await ledger.drift_hold(UNIT) is None
    first = await ledger.hold_drift(UNIT, digest="d1", removals=66, limit=50, members=1000, now=T0)
    assert first == DriftHold(digest="d1", removals=66, limit=50, members=1000, held_at=T0)

    again = await ledger.hold_drift(UNIT, digest="d1", removals=66, limit=50, members=1000, now=T0 + timedelta(hours=1))
    assert again.held_at == T0  # the same set: held since the first sweep that held it

    other = await ledger.hold_drift(UNIT, digest="d2", removals=70, limit=50, members=990, now=T0 + timedelta(hours=2))
    assert (other.digest, other.held_at) == ("d2", T0 + timedelta(hours=2))
    assert await ledger.drift_hold(UNIT) == other
    assert await ledger.drift_hold(NEIGHBOUR) is None


async def test_a_hold_is_released_once_and_only_by_its_own_digest(ledger: Ledger) -> None:
    await ledger.hold_drift(UNIT, digest="d1", removals=66, limit=50, members=1000, now=T0)
    assert await ledger.release_drift(UNIT, digest="other", now=T0, by="ops@contoso.com") is None
    assert await ledger.release_drift(NEIGHBOUR, digest="d1", now=T0, by="ops@contoso.com") is None

    released = await ledger.release_drift(UNIT, digest="d1", now=T0 + timedelta(minutes=5), by="ops@contoso.com")

    assert released is not None
    assert released.released_at == T0 + timedelta(minutes=5)
    again = T0 + timedelta(minutes=6)
    assert await ledger.release_drift(UNIT, digest="d1", now=again, by="ops@contoso.com") is None  # once
    assert await ledger.drift_hold(UNIT) == released
    kept = await ledger.hold_drift(UNIT, digest="d1", removals=66, limit=50, members=1000, now=T0 + timedelta(hours=1))
    assert kept == released  # a later sweep holding the same set finds it released
