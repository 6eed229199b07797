"""Administrative units Graph will not let the app write to, pure: what a unit says of its membership (`UnitKind`),
which reason a refused membership write gets from it (`unit_refusal`), and what a person reading the dead letter can
do about it (`refusal_description`).

- A **restricted-management** unit (``isMemberManagementRestricted``) refuses the app's writes with ``403``, the
  answer of a missing permission, although the app holds ``AdministrativeUnit.ReadWrite.All``: Graph's application
  permissions do not apply inside such a unit (Microsoft Entra documentation, "Restricted management administrative
  units in Microsoft Entra ID", *Programmability*). `Reason.RESTRICTED_ADMINISTRATIVE_UNIT`.
- A **dynamic** unit (``membershipType`` ``Dynamic``) refuses every manual add and remove (``400``): its members
  are its membership rule's. `Reason.DYNAMIC_MEMBERSHIP_TARGET`.

Both are permanent: retrying cannot help until someone changes the unit or the app's roles.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from shared.core.errors import Reason

__all__ = ["UNIT_KIND_PROPERTIES", "UnitKind", "refusal_description", "still_refuses", "unit_refusal"]

#: The unit's properties that tell its kind (what the app ``$select``s).
UNIT_KIND_PROPERTIES: Final = ("isMemberManagementRestricted", "membershipType")


@dataclass(frozen=True, slots=True, kw_only=True)
class UnitKind:
    """What an administrative unit says of its membership: `restricted` (``isMemberManagementRestricted``) and
    `dynamic` (``membershipType`` ``Dynamic``, any case)."""

    restricted: bool
    dynamic: bool

    @classmethod
    def of(cls, unit: Mapping[str, Any]) -> UnitKind:
        """The kind of a unit as Graph answers it (a property absent or null: not restricted, assigned)."""
        membership = unit.get("membershipType")
        return cls(
            restricted=unit.get("isMemberManagementRestricted") is True,
            dynamic=isinstance(membership, str) and membership.lower() == "dynamic",
        )


def unit_refusal(kind: UnitKind, *, status: int) -> Reason | None:
    """The reason for a membership write of a unit of `kind` that Graph refused with `status`: ``403`` in a
    restricted-management unit is `RESTRICTED_ADMINISTRATIVE_UNIT`, ``400`` in a dynamic one
    `DYNAMIC_MEMBERSHIP_TARGET`; None otherwise (a permission missing, another refusal: Graph's own reason)."""
    if status == 403 and kind.restricted:
        return Reason.RESTRICTED_ADMINISTRATIVE_UNIT
    if status == 400 and kind.dynamic:
        return Reason.DYNAMIC_MEMBERSHIP_TARGET
    return None


def still_refuses(kind: UnitKind, reason: str) -> bool:
    """Whether a unit of `kind` (read now) still refuses what it refused for `reason` before: false once a unit
    refused as restricted-management or dynamic no longer is; true for any other reason (not the unit's kind to
    tell)."""
    if reason == Reason.RESTRICTED_ADMINISTRATIVE_UNIT:
        return kind.restricted
    if reason == Reason.DYNAMIC_MEMBERSHIP_TARGET:
        return kind.dynamic
    return True


def refusal_description(reason: Reason, *, unit: str) -> str:
    """What a person can do about a unit that refuses the app's writes for `reason` (`unit`: how to name it)."""
    if reason is Reason.DYNAMIC_MEMBERSHIP_TARGET:
        return (
            f"{unit} has dynamic membership (membershipType Dynamic): its members are those its membership rule "
            "selects, and Graph refuses every manual add or remove. Nothing to retry: change the unit's rule, or "
            "send such requests for a unit with assigned membership."
        )
    return (
        f"{unit} is a restricted-management administrative unit (isMemberManagementRestricted): Graph application "
        "permissions, AdministrativeUnit.ReadWrite.All included, do not apply inside it; an application acts there "
        "only through a Microsoft Entra role assigned to its identity at that unit's scope (Microsoft's \"Restricted "
        "management administrative units\", Programmability). Assign the app's managed identity a role at this "
        "unit's scope, or have a Privileged Role Administrator change its members (runbook: "
        "RestrictedAdministrativeUnit); then grants dlq resubmit --reason RestrictedAdministrativeUnit."
    )
