"""Message contract v1: the one reader and the one writer of "grant membership" messages.

Reading: `parse_grant` turns a body's bytes into a typed, immutable `GrantCommand` or raises `ContractError`
with a reason code and a description that names the offending field. It never raises anything else, and it
never trusts the input: GUIDs must be exactly 8-4-4-4-12 ASCII hex (normalised to lower case), unknown fields
are rejected by name, and free text may not carry control characters (no forged log lines). `parse_target`
reads a target alone (the HR rules' grants), and `problems` lists every invalid field of a document, not
only the first (the webhook's and the bulk job's answers). The PIM targets (`RoleEligibility`, `RoleAssignment`)
name a role definition and a `DirectoryScope`, which is exactly ``/`` or ``/administrativeUnits/<GUID>``.

Writing: `encode` is the body of a command (what `parse_grant` reads back to an equal command); `draft`
is an unvalidated document from raw field values, for producers that map someone else's input (a CSV row, a
ticket) and let `parse_grant` judge it.

The JSON Schema in `schemas/grant-membership.v1.schema.json` describes the same contract; a test keeps the
two in step.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Final, NewType, TypeVar

from shared.core.errors import ContractError, Reason
from shared.core.times import TimeRefused, parse_timestamp

__all__ = [
    "MAX_CALLBACK_URL_CHARS",
    "MAX_MESSAGE_BYTES",
    "MEMBER_TYPES",
    "TENANT_SCOPE",
    "Action",
    "AdministrativeUnit",
    "DirectoryRole",
    "DirectoryScope",
    "GrantCommand",
    "Guid",
    "Member",
    "MemberType",
    "RoleAssignment",
    "RoleEligibility",
    "RoleSchedule",
    "ScopedRole",
    "Source",
    "SourceSystem",
    "Target",
    "derived_request_id",
    "draft",
    "encode",
    "encoding_problem",
    "is_request_id",
    "load_json",
    "parse_directory_scope",
    "parse_grant",
    "parse_guid",
    "parse_target",
    "problems",
    "scope_unit",
    "target_document",
    "to_document",
]

MAX_MESSAGE_BYTES: Final = 64 * 1024
SCHEMA_VERSION: Final = 1

_E = TypeVar("_E", bound=StrEnum)

Guid = NewType("Guid", str)
"""A lower-case 8-4-4-4-12 hex GUID: the only kind of value ever put into a Graph URL."""

_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.ASCII | re.IGNORECASE)
DirectoryScope = NewType("DirectoryScope", str)
"""A PIM directory scope as the contract takes it: exactly ``/`` (the tenant) or ``/administrativeUnits/<GUID>`` (the
GUID in lower case); nothing else is ever put into a Graph request body or filter."""

#: The tenant-wide directory scope.
TENANT_SCOPE: Final = DirectoryScope("/")
_UNIT_SCOPE = re.compile(
    r"/administrativeUnits/([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"
)
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}", re.ASCII)
#: The app's own request ids (`derived_request_id`): ``~<kind>:`` and what it derives from.
_DERIVED_REQUEST_ID = re.compile(r"~[a-z][a-z-]{0,15}:[A-Za-z0-9._:@~-]{1,110}", re.ASCII)
#: The first character of the app's own request ids (and MessageIds): never a producer's.
DERIVED_PREFIX: Final = "~"
#: Not allowed in free text: C0 and C1 controls, DEL, the Unicode line and paragraph separators, and lone surrogates
#: (a JSON escape like \ud800 yields one; no UTF-8 can carry it on).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
#: A callback URL as the contract reads it: http(s), then printable ASCII only (an internationalized host in its
#: xn-- form). Which URLs the app will call is decided later, by the callback policy (shared/core/callbacks.py).
_CALLBACK_URL = re.compile(r"https?://[!-~]+", re.ASCII)
MAX_CALLBACK_URL_CHARS: Final = 2048


class Action(StrEnum):
    ADD = "add"
    REMOVE = "remove"


class MemberType(StrEnum):
    USER = "user"
    GROUP = "group"
    SERVICE_PRINCIPAL = "servicePrincipal"
    DEVICE = "device"


class SourceSystem(StrEnum):
    HR = "hr"
    TICKETING = "ticketing"
    BULK = "bulk"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class AdministrativeUnit:
    """An administrative unit, by object id."""

    id: Guid


@dataclass(frozen=True, slots=True)
class DirectoryRole:
    """A directory role, by object id or by role template id (exactly one is set)."""

    id: Guid | None = None
    role_template_id: Guid | None = None


@dataclass(frozen=True, slots=True)
class ScopedRole:
    """A directory role limited to one administrative unit (by role template id)."""

    role_template_id: Guid
    administrative_unit_id: Guid


@dataclass(frozen=True, slots=True)
class RoleEligibility:
    """A PIM eligibility (the member may activate the role) for a role definition (a built-in role's template id or
    a custom role's id) at a directory scope (`TENANT_SCOPE` or an administrative unit's)."""

    role_definition_id: Guid
    directory_scope_id: DirectoryScope

    @property
    def unit(self) -> Guid | None:
        """The administrative unit of the scope; None at the tenant's."""
        return scope_unit(self.directory_scope_id)


@dataclass(frozen=True, slots=True)
class RoleAssignment:
    """An active PIM role assignment for a role definition at a directory scope (as `RoleEligibility`)."""

    role_definition_id: Guid
    directory_scope_id: DirectoryScope

    @property
    def unit(self) -> Guid | None:
        """The administrative unit of the scope; None at the tenant's."""
        return scope_unit(self.directory_scope_id)


#: The targets carried out through PIM's schedule requests.
RoleSchedule = RoleEligibility | RoleAssignment
Target = AdministrativeUnit | DirectoryRole | ScopedRole | RoleEligibility | RoleAssignment


@dataclass(frozen=True, slots=True)
class Member:
    id: Guid
    type: MemberType | None = None


@dataclass(frozen=True, slots=True)
class Source:
    system: SourceSystem
    reference: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GrantCommand:
    """A validated grant (or revoke) request."""

    request_id: str
    action: Action
    target: Target
    member: Member
    source: Source
    requested_by: str | None = None
    reason: str | None = None
    expires_at: datetime | None = None
    #: When the intent was made (UTC): of two intents for one member and target, the later one wins.
    requested_at: datetime | None = None
    dry_run: bool = False
    callback_url: str | None = None  # where the outcome is POSTed, signed (ticketing webhooks); see callbacks.py
    #: A removal that ends every producer's grant of the pair, and the membership whoever made it (a right the
    #: policy gives by name: `shared.core.pairs`).
    revoke_all: bool = False


# Field limits, shared with the JSON Schema (the sync test reads them).
LIMITS: Final[Mapping[str, int]] = {"source.reference": 256, "requestedBy": 256, "reason": 1024}
_TOP_FIELDS: Final = (
    "schemaVersion",
    "requestId",
    "action",
    "target",
    "member",
    "source",
    "requestedBy",
    "reason",
    "expiresAt",
    "requestedAt",
    "dryRun",
    "callback",
    "revokeAll",
)


def target_document(target: Target) -> dict[str, Any]:
    """The v1 ``target`` object for `target`."""
    if isinstance(target, RoleEligibility | RoleAssignment):
        return {
            "type": _SCHEDULE_TYPES[type(target)],
            "roleDefinitionId": target.role_definition_id,
            "directoryScopeId": target.directory_scope_id,
        }
    if isinstance(target, AdministrativeUnit):
        return {"type": "administrativeUnit", "id": target.id}
    if isinstance(target, ScopedRole):
        return {
            "type": "scopedRole",
            "roleTemplateId": target.role_template_id,
            "administrativeUnitId": target.administrative_unit_id,
        }
    if target.id is not None:
        return {"type": "directoryRole", "id": target.id}
    return {"type": "directoryRole", "roleTemplateId": target.role_template_id}


def to_document(command: GrantCommand) -> dict[str, Any]:
    """The v1 message for `command` (what `parse_grant` reads back to an equal command)."""
    member: dict[str, Any] = {"id": command.member.id}
    if command.member.type is not None:
        member["type"] = command.member.type.value
    source: dict[str, Any] = {"system": command.source.system.value}
    if command.source.reference is not None:
        source["reference"] = command.source.reference
    document: dict[str, Any] = {
        "schemaVersion": SCHEMA_VERSION,
        "requestId": command.request_id,
        "action": command.action.value,
        "target": target_document(command.target),
        "member": member,
        "source": source,
    }
    optional = {
        "requestedBy": command.requested_by,
        "reason": command.reason,
        "expiresAt": command.expires_at.isoformat().replace("+00:00", "Z") if command.expires_at else None,
        "requestedAt": command.requested_at.isoformat().replace("+00:00", "Z") if command.requested_at else None,
        "dryRun": command.dry_run or None,
        "callback": {"url": command.callback_url} if command.callback_url is not None else None,
        "revokeAll": command.revoke_all or None,
    }
    document.update({key: value for key, value in optional.items() if value is not None})
    return document


def encode(command: GrantCommand) -> bytes:
    """The message body for `command`: compact UTF-8 JSON of `to_document`."""
    return json.dumps(to_document(command), separators=(",", ":"), ensure_ascii=False).encode()


def draft(**fields: Any) -> dict[str, Any]:
    """A v1 document from raw field values, keyed by their contract names (``requestId``, ``target``, …), with
    ``schemaVersion`` set and the fields that are None left out (so that `parse_grant` names what is missing).
    Nothing is validated: pass the result to `parse_grant` (or `problems`)."""
    return {"schemaVersion": SCHEMA_VERSION} | {name: value for name, value in fields.items() if value is not None}


def parse_target(document: Any, *, member_type: MemberType = MemberType.USER) -> Target:
    """Read a v1 ``target`` object on its own, as `parse_grant` would for a member of `member_type`; raise
    `ContractError` naming the field."""
    if not isinstance(document, dict):
        raise _violation("target", "must be an object")
    return _target(document, Member(id=_PROBE_ID, type=member_type))


def problems(document: Mapping[str, Any]) -> list[ContractError]:
    """Every invalid top-level field of `document`, in field order; empty when `parse_grant` accepts it.

    `parse_grant` stops at the first problem; here each field is checked alone, put into an otherwise valid
    message. When every field is valid alone, the problem is between fields (a member type the target cannot hold,
    `UnsupportedMember`, is always one) and the document's own first problem is the one given.
    """
    found: list[ContractError] = []
    for name in dict.fromkeys([*_VALID, *document]):
        probe = {**_VALID, name: document[name]} if name in document else _without(_VALID, name)
        if (error := _first_problem(probe)) is not None and error.reason is not Reason.UNSUPPORTED_MEMBER:
            found.append(error)
    if not found and (error := _first_problem(document)) is not None:
        found.append(error)
    return found


#: A valid message: `problems` checks each field of a document in it alone.
_PROBE_ID: Final = Guid("00000000-0000-4000-8000-000000000000")
_VALID: Final[Mapping[str, Any]] = {
    "schemaVersion": SCHEMA_VERSION,
    "requestId": "probe",
    "target": {"type": "administrativeUnit", "id": _PROBE_ID},
    "member": {"id": _PROBE_ID, "type": "user"},
    "source": {"system": "other"},
}


def _without(document: Mapping[str, Any], name: str) -> dict[str, Any]:
    return {key: value for key, value in document.items() if key != name}


def _first_problem(document: Mapping[str, Any]) -> ContractError | None:
    try:
        parse_grant(json.dumps(document).encode())
    except ContractError as error:
        return error
    except (TypeError, ValueError):  # not JSON-serialisable: cannot come from a parsed body
        return ContractError(Reason.INVALID_JSON, "the message cannot be written as JSON")
    return None


def is_request_id(value: str) -> bool:
    """True when `value` names a request: a producer's (1-128 of ``A-Z a-z 0-9 . _ : @ -``, starting with a letter
    or digit) or one the app derived (``~<kind>:…``)."""
    return _REQUEST_ID.fullmatch(value) is not None or _DERIVED_REQUEST_ID.fullmatch(value) is not None


def derived_request_id(kind: str, *of: str) -> str:
    """The id of a request the app makes itself: ``~<kind>:<of joined by ":">`` (e.g. ``~expire:RITM5``), its tail
    hashed when it would pass 128 characters. The ``~`` is the app's namespace: no producer's request id can start
    with it (`parse_grant` refuses it on every message the app did not seal)."""
    tail = ":".join(of)
    candidate = f"{DERIVED_PREFIX}{kind}:{tail}"
    if len(candidate) <= 128 and _DERIVED_REQUEST_ID.fullmatch(candidate):
        return candidate
    return f"{DERIVED_PREFIX}{kind}:{hashlib.sha256(tail.encode('utf-8', 'surrogatepass')).hexdigest()}"


def parse_guid(value: str, *, field: str = "id") -> Guid:
    """Return `value` as a lower-case `Guid`, or raise `ContractError(InvalidId)`."""
    if not _GUID.fullmatch(value):
        raise ContractError(
            Reason.INVALID_ID,
            f"{field} must be a GUID (8-4-4-4-12 hexadecimal digits), got {_show(value)}",
        )
    return Guid(value.lower())


def parse_directory_scope(value: str, *, field: str = "directoryScopeId") -> DirectoryScope:
    """`value` as a `DirectoryScope`: exactly ``/`` or ``/administrativeUnits/<GUID>`` (the GUID lower-cased); raise
    `ContractError(SchemaViolation)` naming `field` for anything else."""
    if value == TENANT_SCOPE:
        return TENANT_SCOPE
    match = _UNIT_SCOPE.fullmatch(value)
    if match is None:
        raise _violation(field, f'must be "/" or "/administrativeUnits/<GUID>", got {_show(value)}')
    return DirectoryScope(f"/administrativeUnits/{match.group(1).lower()}")


def scope_unit(scope: DirectoryScope) -> Guid | None:
    """The administrative unit a `DirectoryScope` names; None for the tenant's."""
    match = _UNIT_SCOPE.fullmatch(scope)
    return Guid(match.group(1)) if match is not None else None


def parse_grant(body: bytes, *, own: bool = False) -> GrantCommand:
    """Validate a message body; return the command or raise `ContractError` (and nothing else). A request id in the
    app's own namespace (``~<kind>:…``, `derived_request_id`) is accepted only on a message the app sealed
    (`own`): a producer can never take one."""
    if len(body) > MAX_MESSAGE_BYTES:
        raise ContractError(
            Reason.MESSAGE_TOO_LARGE,
            f"the message body is {len(body)} bytes; the limit is {MAX_MESSAGE_BYTES} bytes",
        )
    document = load_json(body)
    if not isinstance(document, dict):
        raise ContractError(Reason.INVALID_JSON, "the message body must be a JSON object")
    request_id = _peek_request_id(document, own=own)
    try:
        return _parse_document(document, own=own)
    except ContractError as error:
        raise ContractError(error.reason, error.description, request_id=request_id) from None


def encoding_problem(body: bytes) -> str | None:
    """Why `body` is not what RFC 8259 requires of JSON text on the wire (UTF-8, no byte-order mark), or None:
    a byte-order mark, UTF-16 or UTF-32 (told by their byte-order marks, or by the NULs of ASCII text in them), or
    bytes that are not UTF-8."""
    for mark, name in _BYTE_ORDER_MARKS:
        if body.startswith(mark):
            if name == "UTF-8":
                return "the message body starts with a byte-order mark; send UTF-8 without BOM"
            return f"the message body is {name} (it starts with that byte-order mark); send UTF-8"
    head = body[:4]
    if len(head) == 4 and b"\x00" in head:  # JSON text starts with ASCII: NULs beside it are a wider encoding
        nuls = [byte == 0 for byte in head]
        if nuls in ([True, True, True, False], [False, True, True, True]):
            return "the message body is UTF-32; send UTF-8"
        if nuls in ([True, False, True, False], [False, True, False, True]):
            return "the message body is UTF-16; send UTF-8"
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as error:
        return f"the message body is not UTF-8 (byte {error.start})"
    return None


#: Longest first: the UTF-32 LE mark begins with the UTF-16 LE one.
_BYTE_ORDER_MARKS: Final = (
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\xef\xbb\xbf", "UTF-8"),
    (b"\xfe\xff", "UTF-16"),
    (b"\xff\xfe", "UTF-16"),
)


def load_json(body: bytes) -> Any:
    """The JSON value in `body`, read as strictly as a message body: UTF-8 without a byte-order mark (see
    `encoding_problem`), no key twice in one object, no NaN or Infinity; raise `ContractError(InvalidJson)`
    saying what is wrong (a duplicate key by name). The webhook reads its requests with it too."""
    if (problem := encoding_problem(body)) is not None:
        raise ContractError(Reason.INVALID_JSON, problem)
    text = body.decode("utf-8")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except ContractError:
        raise
    except json.JSONDecodeError as error:
        raise ContractError(
            Reason.INVALID_JSON,
            f"the message body is not JSON: {error.msg} (line {error.lineno}, column {error.colno})",
        ) from None
    except RecursionError:
        raise ContractError(Reason.INVALID_JSON, "the message body is nested too deeply") from None
    except ValueError:  # e.g. an integer longer than Python's digit limit
        raise ContractError(Reason.INVALID_JSON, "the message body holds a number that cannot be read") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise ContractError(Reason.INVALID_JSON, f"the key {_show(key)} appears twice in one object")
        document[key] = value
    return document


def _no_constant(name: str) -> Any:
    raise ContractError(Reason.INVALID_JSON, f"{name} is not valid JSON")


def _peek_request_id(document: Mapping[str, Any], *, own: bool) -> str | None:
    value = document.get("requestId")
    if not isinstance(value, str):
        return None
    return value if _REQUEST_ID.fullmatch(value) or (own and _DERIVED_REQUEST_ID.fullmatch(value)) else None


def _parse_document(document: Mapping[str, Any], *, own: bool = False) -> GrantCommand:
    version = _required(document, "schemaVersion", "")
    if not _is_int(version):
        raise _violation("schemaVersion", "must be an integer")
    if version != SCHEMA_VERSION:
        raise ContractError(
            Reason.UNSUPPORTED_SCHEMA_VERSION,
            f"schemaVersion {version} is not supported; this app reads schemaVersion {SCHEMA_VERSION}",
        )
    _known_fields(document, _TOP_FIELDS, "")

    request_id = _string(document, "requestId", "")
    if request_id is None:
        raise _violation("requestId", "is required")
    if not (_REQUEST_ID.fullmatch(request_id) or (own and _DERIVED_REQUEST_ID.fullmatch(request_id))):
        reserved = " (ids starting with ~ are the app's own)" if request_id.startswith(DERIVED_PREFIX) else ""
        raise _violation(
            "requestId",
            "must be 1 to 128 characters: letters, digits and . _ : @ -, starting with a letter or digit" + reserved,
        )
    action = _enum(document, "action", "", Action) or Action.ADD
    revoke_all = _flag(document, "revokeAll")
    if revoke_all and action is not Action.REMOVE:
        raise _violation("revokeAll", "is for a remove only (it ends every grant of the member and target)")
    member = _member(_object(document, "member"))
    target = _target(_object(document, "target"), member)
    source_doc = _object(document, "source")
    _known_fields(source_doc, ("system", "reference"), "source.")
    system = _enum(source_doc, "system", "source.", SourceSystem)
    if system is None:
        raise _violation("source.system", "is required")
    return GrantCommand(
        request_id=request_id,
        action=action,
        target=target,
        member=member,
        source=Source(system=system, reference=_text(source_doc, "reference", "source.")),
        requested_by=_text(document, "requestedBy", ""),
        reason=_text(document, "reason", ""),
        expires_at=_timestamp(document, "expiresAt"),
        requested_at=_timestamp(document, "requestedAt"),
        dry_run=_flag(document, "dryRun"),
        callback_url=_callback_url(document),
        revoke_all=revoke_all,
    )


def _callback_url(document: Mapping[str, Any]) -> str | None:
    """``callback.url``: an absolute http(s) URL of printable ASCII, at most 2048 characters (syntax only)."""
    if "callback" not in document:
        return None
    callback = _object(document, "callback")
    _known_fields(callback, ("url",), "callback.")
    url = _string(callback, "url", "callback.")
    if url is None:
        raise _violation("callback.url", "is required")
    if len(url) > MAX_CALLBACK_URL_CHARS or not _CALLBACK_URL.fullmatch(url):
        raise _violation(
            "callback.url",
            f"must be an absolute http(s) URL of at most {MAX_CALLBACK_URL_CHARS} printable ASCII characters "
            "(an internationalized host in its xn-- form)",
        )
    return url


def _member(doc: Mapping[str, Any]) -> Member:
    _known_fields(doc, ("id", "type"), "member.")
    return Member(id=_guid(doc, "id", "member."), type=_enum(doc, "type", "member.", MemberType))


#: The member types each target kind can hold, as Graph takes them: a unit users, groups and devices; a directory
#: role users, (role-assignable) groups and service principals; a role scoped to a unit users and groups; a PIM
#: eligibility users and (role-assignable) groups (a service principal cannot activate a role); a PIM role
#: assignment users, groups and service principals.
MEMBER_TYPES: Final[Mapping[str, frozenset[MemberType]]] = {
    "administrativeUnit": frozenset({MemberType.USER, MemberType.GROUP, MemberType.DEVICE}),
    "directoryRole": frozenset({MemberType.USER, MemberType.GROUP, MemberType.SERVICE_PRINCIPAL}),
    "scopedRole": frozenset({MemberType.USER, MemberType.GROUP}),
    "roleEligibility": frozenset({MemberType.USER, MemberType.GROUP}),
    "roleAssignment": frozenset({MemberType.USER, MemberType.GROUP, MemberType.SERVICE_PRINCIPAL}),
}
_HOLDER: Final = {
    "administrativeUnit": "an administrative unit",
    "directoryRole": "a directory role",
    "scopedRole": "a role scoped to an administrative unit",
    "roleEligibility": "a role eligibility",
    "roleAssignment": "an active role assignment",
}
_SCHEDULE_KINDS: Final[Mapping[str, type[RoleEligibility] | type[RoleAssignment]]] = {
    "roleEligibility": RoleEligibility,
    "roleAssignment": RoleAssignment,
}
_SCHEDULE_TYPES: Final = {kind: name for name, kind in _SCHEDULE_KINDS.items()}
_SCHEDULE_FIELDS: Final = ("roleDefinitionId", "directoryScopeId")


def _target(doc: Mapping[str, Any], member: Member) -> Target:
    _known_fields(doc, ("type", "id", "roleTemplateId", "administrativeUnitId", *_SCHEDULE_FIELDS), "target.")
    kind = _string(doc, "type", "target.")
    if kind is None:
        raise _violation("target.type", "is required")
    if kind != "scopedRole" and "administrativeUnitId" in doc:
        raise _violation("target.administrativeUnitId", "is only for scopedRole targets")
    if kind not in _SCHEDULE_KINDS and (named := [name for name in _SCHEDULE_FIELDS if name in doc]):
        raise _violation(f"target.{named[0]}", "is only for roleEligibility and roleAssignment targets")
    target: Target
    if kind == "administrativeUnit":
        if "roleTemplateId" in doc:
            raise _violation("target.roleTemplateId", "is only for directoryRole and scopedRole targets")
        target = AdministrativeUnit(id=_guid(doc, "id", "target."))
    elif kind == "scopedRole":
        if "id" in doc:
            raise _violation(
                "target.id", "is not used by scopedRole targets: give roleTemplateId and administrativeUnitId"
            )
        target = ScopedRole(
            role_template_id=_guid(doc, "roleTemplateId", "target."),
            administrative_unit_id=_guid(doc, "administrativeUnitId", "target."),
        )
    elif kind == "directoryRole":
        if ("id" in doc) == ("roleTemplateId" in doc):
            raise _violation("target", "a directoryRole target needs exactly one of id and roleTemplateId")
        if "id" in doc:
            target = DirectoryRole(id=_guid(doc, "id", "target."))
        else:
            target = DirectoryRole(role_template_id=_guid(doc, "roleTemplateId", "target."))
    elif kind in _SCHEDULE_KINDS:
        for name in ("id", "roleTemplateId"):
            if name in doc:
                raise _violation(
                    f"target.{name}", f"is not used by {kind} targets: give roleDefinitionId and directoryScopeId"
                )
        definition = _guid(doc, "roleDefinitionId", "target.")
        scope = _string(doc, "directoryScopeId", "target.")
        if scope is None:
            raise _violation("target.directoryScopeId", "is required")
        target = _SCHEDULE_KINDS[kind](
            role_definition_id=definition,
            directory_scope_id=parse_directory_scope(scope, field="target.directoryScopeId"),
        )
    else:
        raise ContractError(
            Reason.UNSUPPORTED_TARGET,
            f"target.type {_show(kind)} is not supported; use administrativeUnit, directoryRole, scopedRole, "
            "roleEligibility or roleAssignment",
        )
    if member.type is not None and member.type not in MEMBER_TYPES[kind]:
        held = ", ".join(sorted(t.value for t in MEMBER_TYPES[kind]))
        raise ContractError(
            Reason.UNSUPPORTED_MEMBER,
            f"member.type {member.type.value} cannot be a member of {_HOLDER[kind]} (it takes: {held})",
        )
    return target


def _known_fields(doc: Mapping[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
    for key in doc:
        if key not in allowed:
            raise _violation(f"{prefix}{_printable(key)}", "is not a field of this contract")


def _required(doc: Mapping[str, Any], name: str, prefix: str) -> Any:
    if name not in doc:
        raise _violation(f"{prefix}{name}", "is required")
    return doc[name]


def _object(doc: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = _required(doc, name, "")
    if not isinstance(value, dict):
        raise _violation(name, "must be an object")
    return value


def _string(doc: Mapping[str, Any], name: str, prefix: str) -> str | None:
    if name not in doc:
        return None
    value = doc[name]
    if not isinstance(value, str):
        raise _violation(f"{prefix}{name}", "must be a string")
    return value


def _text(doc: Mapping[str, Any], name: str, prefix: str) -> str | None:
    value = _string(doc, name, prefix)
    if value is None:
        return None
    limit = LIMITS[f"{prefix}{name}"]
    if len(value) > limit:
        raise _violation(f"{prefix}{name}", f"must be at most {limit} characters")
    if _CONTROL.search(value):
        raise _violation(f"{prefix}{name}", "must not contain control characters or line breaks")
    return value


def _guid(doc: Mapping[str, Any], name: str, prefix: str) -> Guid:
    value = _string(doc, name, prefix)
    if value is None:
        raise _violation(f"{prefix}{name}", "is required")
    return parse_guid(value, field=f"{prefix}{name}")


def _enum(doc: Mapping[str, Any], name: str, prefix: str, kind: type[_E]) -> _E | None:
    value = _string(doc, name, prefix)
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise _violation(f"{prefix}{name}", f"must be one of {allowed}; got {_show(value)}") from None


def _timestamp(doc: Mapping[str, Any], name: str) -> datetime | None:
    """The field as a time in the app's domain (`shared.core.times.parse_timestamp`), None when absent."""
    value = _string(doc, name, "")
    if value is None:
        return None
    try:
        return parse_timestamp(value, field=name)
    except TimeRefused as refused:
        raise ContractError(Reason.SCHEMA_VIOLATION, str(refused)) from None


def _flag(doc: Mapping[str, Any], name: str) -> bool:
    value = doc.get(name, False)
    if not isinstance(value, bool):
        raise _violation(name, "must be true or false")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _violation(path: str, problem: str) -> ContractError:
    return ContractError(Reason.SCHEMA_VIOLATION, f"{path} {problem}")


def _printable(key: str) -> str:
    return key if key.isidentifier() and key.isascii() else _show(key)


def _show(value: object) -> str:
    """A short, single-line, ASCII rendering of untrusted input for a description."""
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 80 else text[:77] + "..."
