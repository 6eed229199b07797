"""Who is calling the HTTP API, and what they may do there, pure: App Service authentication's caller, read.

In Azure the function app runs behind App Service authentication (Entra ID): the platform validates the caller's
token and hands the app the caller's claims in the ``X-MS-CLIENT-PRINCIPAL`` header (base64 JSON: ``claims`` as
``{"typ", "val"}`` pairs, ``role_typ`` naming the roles' claim type). External requests cannot set that header when
authentication is on (``WEBSITE_AUTH_ENABLED``), and the app believes it only then (`caller_of`'s `enabled`).

Rights (`Right`) are three, each its own:

- **submit** (``POST /api/grants``): a producer, known by the webhook signature made with its own secret, or by an
  Entra principal the producer registry lists as acting for it;
- **read**: a producer reads its own requests, jobs, HR events and history (never another producer's); a caller
  with the app role ``Grants.Reader`` reads every producer's, every member's history and the drift report;
- **operate** (``POST /api/drift/{target}/confirm``, and anything else that writes): the app role
  ``Grants.Operator`` (which reads all as well). Every operator action is recorded with who did it (`Caller.label`).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from shared.core.contract import parse_guid
from shared.core.errors import ContractError
from shared.core.producers import Producer, Producers

__all__ = [
    "CLIENT_PRINCIPAL_HEADER",
    "Caller",
    "Right",
    "Role",
    "caller_of",
    "client_principal_header",
]

#: The header App Service authentication sets with the caller's claims (base64 JSON).
CLIENT_PRINCIPAL_HEADER: Final = "X-MS-CLIENT-PRINCIPAL"
#: The claim types of an Entra principal's object id, as App Service passes them on.
_OBJECT_ID_CLAIMS: Final = ("http://schemas.microsoft.com/identity/claims/objectidentifier", "oid")
_ROLE_CLAIMS: Final = ("roles", "http://schemas.microsoft.com/ws/2008/06/identity/claims/role")
_NAME_CLAIMS: Final = ("name", "preferred_username", "upn", "appid", "azp")
#: The largest principal header read (App Service's carry a token's claims: a few KB).
_MAX_HEADER_CHARS: Final = 16 * 1024


class Role(StrEnum):
    """The function app's app roles (its Entra app registration's), given to people and applications."""

    READER = "Grants.Reader"
    OPERATOR = "Grants.Operator"


class Right(StrEnum):
    SUBMIT = "submit"
    READ = "read"
    OPERATE = "operate"


@dataclass(frozen=True, slots=True, kw_only=True)
class Caller:
    """An authenticated caller: its Entra object id and name, its app roles, and the producer it acts for (if the
    registry lists it as one's principal)."""

    object_id: str | None = None
    name: str | None = None
    roles: frozenset[str] = field(default_factory=frozenset)
    producer: Producer | None = None

    @property
    def reads_all(self) -> bool:
        """True for ``Grants.Reader`` and ``Grants.Operator``: every producer's requests, all history, drift."""
        return bool(self.roles & {Role.READER, Role.OPERATOR})

    @property
    def operates(self) -> bool:
        """True for ``Grants.Operator``."""
        return Role.OPERATOR in self.roles

    def may_read(self, producer: str | None) -> bool:
        """True when the caller may read a record of `producer` (its own, or any with a reading role)."""
        return self.reads_all or (self.producer is not None and producer == self.producer.name)

    @property
    def label(self) -> str:
        """Who, for the audit: name and object id (``ops@contoso.com (<oid>)``), or the producer it acts for."""
        who = self.name or self.object_id or "(unknown)"
        if self.object_id and self.name:
            who = f"{self.name} ({self.object_id})"
        return who if self.producer is None else f"{who} for producer {self.producer.name}"


def caller_of(headers: Mapping[str, str], *, enabled: bool, producers: Producers) -> Caller | None:
    """The caller App Service authentication vouches for in `headers`, or None (not authenticated, or
    authentication is off: without it the header could come from anyone and is not read)."""
    if not enabled:
        return None
    raw = _header(headers, CLIENT_PRINCIPAL_HEADER)
    if not raw or len(raw) > _MAX_HEADER_CHARS:
        return None
    try:
        document = json.loads(base64.b64decode(raw, validate=True))
    except (binascii.Error, ValueError, RecursionError):
        return None
    if not isinstance(document, dict) or not isinstance(document.get("claims"), list):
        return None
    claims = [
        (claim["typ"], claim["val"])
        for claim in document["claims"]
        if isinstance(claim, dict) and isinstance(claim.get("typ"), str) and isinstance(claim.get("val"), str)
    ]
    role_type = document.get("role_typ") if isinstance(document.get("role_typ"), str) else "roles"
    roles = frozenset(value for kind, value in claims if kind == role_type or kind in _ROLE_CLAIMS)
    object_id = _object_id(claims)
    name_type = document.get("name_typ")
    name = next((value for kind, value in claims if kind == name_type or kind in _NAME_CLAIMS), None)
    producer = producers.with_principal(object_id) if object_id else None
    return Caller(object_id=object_id, name=name, roles=roles, producer=producer)


def client_principal_header(*, object_id: str, name: str, roles: tuple[str, ...] = ()) -> str:
    """The ``X-MS-CLIENT-PRINCIPAL`` value App Service authentication would set for such a caller (local runs and
    tests stand in for the platform with it)."""
    claims: list[dict[str, Any]] = [
        {"typ": _OBJECT_ID_CLAIMS[0], "val": object_id},
        {"typ": "name", "val": name},
        *({"typ": "roles", "val": role} for role in roles),
    ]
    document = {"auth_typ": "aad", "claims": claims, "name_typ": "name", "role_typ": "roles"}
    return base64.b64encode(json.dumps(document).encode()).decode()


def _object_id(claims: list[tuple[str, str]]) -> str | None:
    for kind, value in claims:
        if kind in _OBJECT_ID_CLAIMS:
            try:
                return parse_guid(value, field="oid")
            except ContractError:
                return None
    return None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by name, whatever its case (a plain dict, or the Functions request's own mapping)."""
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value
