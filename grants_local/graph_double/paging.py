"""The Graph double's listings: pages of ``$top`` items after a ``$skiptoken``, ``$select``, ``@odata.nextLink``."""

from __future__ import annotations

import base64
import bisect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode

from grants_local.graph_double.answers import GraphError

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "PROPERTIES",
    "ROLES_NOT_PAGED",
    "ROLE_MEMBERS_LIMIT",
    "Listing",
    "narrowed",
    "page",
    "page_size",
    "selected",
]

#: Graph's page size for a directory collection read without ``$top``, and the largest ``$top`` it accepts.
DEFAULT_PAGE_SIZE: Final = 100
MAX_PAGE_SIZE: Final = 999
#: Directory role members are not paged (Graph: "queries against directoryRoles do not support paging"); at most
#: this many are listed.
ROLE_MEMBERS_LIMIT: Final = 1000

ROLES_NOT_PAGED: Final = (
    "Paging is not supported for directory roles; $top cannot be applied to the requested resource (Graph double)."
)


@dataclass(frozen=True, slots=True)
class Listing:
    """A request's Graph root (`GraphDouble.base_url`), path relative to it and decoded query parameters, for
    its collection's paging."""

    root: str
    path: str
    query: Mapping[str, str]


def page_size(query: Mapping[str, str]) -> int:
    """``$top`` (1-999), or `DEFAULT_PAGE_SIZE` without it; Graph's ``400`` for anything else."""
    raw = query.get("$top")
    if raw is None:
        return DEFAULT_PAGE_SIZE
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        raise GraphError(
            400,
            "Request_UnsupportedQuery",
            f"Invalid page size specified: '{raw}'. Must be between 1 and {MAX_PAGE_SIZE} inclusive.",
        )
    return int(raw)


def page(
    listing: Listing, keys: list[str], size: int, render: Callable[[str], dict[str, Any]], kind: str
) -> dict[str, Any]:
    """The page of sorted `keys` after ``$skiptoken`` (`size` of them), each rendered and narrowed to ``$select``,
    with an ``@odata.nextLink`` (the same query, another ``$skiptoken``) when more follow."""
    token = listing.query.get("$skiptoken")
    start = 0 if token is None else bisect.bisect_right(keys, _after(token))
    chosen = keys[start : start + size]
    fields = selected(listing.query.get("$select"), PROPERTIES[kind])
    answer: dict[str, Any] = {
        "@odata.context": f"{listing.root}/$metadata#{kind}",
        "value": [narrowed(render(key), fields) for key in chosen],
    }
    if start + size < len(keys):
        query = {**listing.query, "$skiptoken": _token(chosen[-1])}
        answer["@odata.nextLink"] = f"{listing.root}{listing.path}?{urlencode(query, safe='$,')}"
    return answer


def _token(last_key: str) -> str:
    return base64.urlsafe_b64encode(f"after:{last_key}".encode()).decode().rstrip("=")


def _after(token: str) -> str:
    """The last key of the previous page, from a ``$skiptoken``; ``400`` for a token this double did not make."""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except ValueError:
        text = ""
    if not text.startswith("after:"):
        raise GraphError(400, "Request_BadRequest", f"Invalid $skiptoken value '{token}'.")
    return text[len("after:") :]


_SCHEDULE: Final = frozenset(
    {
        "id",
        "principalId",
        "roleDefinitionId",
        "directoryScopeId",
        "appScopeId",
        "createdUsing",
        "createdDateTime",
        "modifiedDateTime",
        "status",
        "memberType",
        "scheduleInfo",
    }
)
#: The properties an item of each listed collection has (what ``$select`` may name).
PROPERTIES: Final[Mapping[str, frozenset[str]]] = {
    "directoryObjects": frozenset({"id", "displayName"}),
    "administrativeUnits": frozenset(
        {
            "id",
            "displayName",
            "description",
            "visibility",
            "isMemberManagementRestricted",
            "membershipType",
            "membershipRule",
            "membershipRuleProcessingState",
        }
    ),
    "scopedRoleMemberships": frozenset({"id", "roleId", "administrativeUnitId", "roleMemberInfo"}),
    "roleEligibilitySchedules": _SCHEDULE,
    "roleAssignmentSchedules": _SCHEDULE | {"assignmentType"},
}


def selected(select: str | None, properties: frozenset[str]) -> list[str] | None:
    """The properties ``$select`` names; ``400`` for one the collection's items do not have."""
    if select is None:
        return None
    fields = [name.strip() for name in select.split(",") if name.strip()]
    for name in fields:
        if name not in properties:
            raise GraphError(400, "Request_BadRequest", f"Could not find a property named '{name}' on this type.")
    return fields


def narrowed(item: dict[str, Any], fields: list[str] | None) -> dict[str, Any]:
    """`item` with only ``@odata.type`` and the `fields` asked for."""
    if fields is None:
        return item
    return {key: value for key, value in item.items() if key == "@odata.type" or key in fields}
