"""Intents (pure): pairs named, what a request asks, when it counts as made, which request id is which request."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

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
    Effect,
    Intent,
    RequestCheck,
    RequestRecord,
    check_request,
    content_hash,
    effect_of,
    intent_of,
    pair_of,
    parse_pair,
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


def test_revoke_all_is_part_of_what_a_removal_asks_and_only_when_set() -> None:
    plain = parse_grant(encode(message(action="remove")))
    revoking = parse_grant(encode(message(action="remove", revokeAll=True)))
    assert content_hash(plain) != content_hash(revoking)
    assert content_hash(plain) == content_hash(parse_grant(encode(message(action="remove", revokeAll=False))))


def test_an_intent_s_effect_is_the_app_s_expiry_a_repair_a_revoke_all_or_a_plain_add_or_remove() -> None:
    removal = parse_grant(encode(message(action="remove")))
    assert effect_of(removal, expiry_of="RITM1", app=True) is Effect.EXPIRE
    assert effect_of(removal, expiry_of=None, app=True) is Effect.REPAIR
    assert effect_of(parse_grant(encode(message(action="remove", revokeAll=True))), expiry_of=None, app=False) is (
        Effect.REVOKE_ALL
    )
    assert effect_of(removal, expiry_of=None, app=False) is None
    assert intent_of(removal, arrived_at=T0).effect is Effect.END
    assert intent_of(parse_grant(encode(message())), arrived_at=T0).effect is Effect.GRANT
