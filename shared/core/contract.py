"""Message contract v1: the one reader and the one writer of "grant membership" messages.

Reading: `parse_grant` turns a body's bytes into a typed, immutable `GrantCommand` or raises `ContractError`
with a reason code and a description that names the offending field. It never raises anything else, and it
never trusts the input: GUIDs must be exactly 8-4-4-4-12 ASCII hex (normalised to lower case), unknown fields
are rejected by name, and free text may not carry control characters (no forged log lines). `parse_target`
reads a target alone (the HR rules' grants), and `problems` lists every invalid field of a document, not
only the first (the webhook's and the bulk job's answers).

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
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, NewType, TypeVar

from shared.core.errors import ContractError, Reason

__all__ = [
    "MAX_MESSAGE_BYTES",
    "Action",
    "AdministrativeUnit",
    "DirectoryRole",
    "GrantCommand",
    "Guid",
    "Member",
    "MemberType",
    "ScopedRole",
    "Source",
    "SourceSystem",
    "Target",
    "derived_request_id",
    "draft",
    "encode",
    "parse_grant",
    "parse_guid",
    "parse_target",
    "problems",
    "target_document",
    "to_document",
]

MAX_MESSAGE_BYTES: Final = 64 * 1024
SCHEMA_VERSION: Final = 1

_E = TypeVar("_E", bound=StrEnum)

Guid = NewType("Guid", str)
"""A lower-case 8-4-4-4-12 hex GUID: the only kind of value ever put into a Graph URL."""

_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.ASCII | re.IGNORECASE)
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}", re.ASCII)
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})", re.ASCII)
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")


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


Target = AdministrativeUnit | DirectoryRole | ScopedRole


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
    dry_run: bool = False


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
    "dryRun",
)


def target_document(target: Target) -> dict[str, Any]:
    """The v1 ``target`` object for `target`."""
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
        "dryRun": command.dry_run or None,
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
    message. When every field is valid alone, the problem is between fields and the document's own first
    problem is the one given.
    """
    found: list[ContractError] = []
    for name in dict.fromkeys([*_VALID, *document]):
        probe = {**_VALID, name: document[name]} if name in document else _without(_VALID, name)
        if (error := _first_problem(probe)) is not None:
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


def derived_request_id(request_id: str, suffix: str) -> str:
    """A request id derived from another, stable and within the 128-character limit (hashed when needed)."""
    candidate = f"{request_id}:{suffix}"
    if len(candidate) <= 128:
        return candidate
    return f"{hashlib.sha256(request_id.encode()).hexdigest()}:{suffix}"


def parse_guid(value: str, *, field: str = "id") -> Guid:
    """Return `value` as a lower-case `Guid`, or raise `ContractError(InvalidId)`."""
    if not _GUID.fullmatch(value):
        raise ContractError(
            Reason.INVALID_ID,
            f"{field} must be a GUID (8-4-4-4-12 hexadecimal digits), got {_show(value)}",
        )
    return Guid(value.lower())


def parse_grant(body: bytes) -> GrantCommand:
    """Validate a message body; return the command or raise `ContractError` (and nothing else)."""
    if len(body) > MAX_MESSAGE_BYTES:
        raise ContractError(
            Reason.MESSAGE_TOO_LARGE,
            f"the message body is {len(body)} bytes; the limit is {MAX_MESSAGE_BYTES} bytes",
        )
    document = _load_json(body)
    if not isinstance(document, dict):
        raise ContractError(Reason.INVALID_JSON, "the message body must be a JSON object")
    request_id = _peek_request_id(document)
    try:
        return _parse_document(document)
    except ContractError as error:
        raise ContractError(error.reason, error.description, request_id=request_id) from None


def _load_json(body: bytes) -> Any:
    if body.startswith(b"\xef\xbb\xbf"):
        raise ContractError(
            Reason.INVALID_JSON, "the message body starts with a byte-order mark; send UTF-8 without BOM"
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ContractError(Reason.INVALID_JSON, f"the message body is not UTF-8 (byte {error.start})") from None
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


def _peek_request_id(document: Mapping[str, Any]) -> str | None:
    value = document.get("requestId")
    return value if isinstance(value, str) and _REQUEST_ID.fullmatch(value) else None


def _parse_document(document: Mapping[str, Any]) -> GrantCommand:
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
    if not _REQUEST_ID.fullmatch(request_id):
        raise _violation(
            "requestId",
            "must be 1 to 128 characters: letters, digits and . _ : @ -, starting with a letter or digit",
        )
    action = _enum(document, "action", "", Action) or Action.ADD
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
        dry_run=_flag(document, "dryRun"),
    )


def _member(doc: Mapping[str, Any]) -> Member:
    _known_fields(doc, ("id", "type"), "member.")
    return Member(id=_guid(doc, "id", "member."), type=_enum(doc, "type", "member.", MemberType))


def _target(doc: Mapping[str, Any], member: Member) -> Target:
    _known_fields(doc, ("type", "id", "roleTemplateId", "administrativeUnitId"), "target.")
    kind = _string(doc, "type", "target.")
    if kind is None:
        raise _violation("target.type", "is required")
    if kind != "scopedRole" and "administrativeUnitId" in doc:
        raise _violation("target.administrativeUnitId", "is only for scopedRole targets")
    if kind == "administrativeUnit":
        if "roleTemplateId" in doc:
            raise _violation("target.roleTemplateId", "is only for directoryRole and scopedRole targets")
        return AdministrativeUnit(id=_guid(doc, "id", "target."))
    if kind == "scopedRole":
        if "id" in doc:
            raise _violation(
                "target.id", "is not used by scopedRole targets: give roleTemplateId and administrativeUnitId"
            )
        if member.type in (MemberType.DEVICE, MemberType.SERVICE_PRINCIPAL):
            raise ContractError(
                Reason.UNSUPPORTED_TARGET, f"a {member.type.value} cannot hold a role scoped to an administrative unit"
            )
        return ScopedRole(
            role_template_id=_guid(doc, "roleTemplateId", "target."),
            administrative_unit_id=_guid(doc, "administrativeUnitId", "target."),
        )
    if kind == "directoryRole":
        if ("id" in doc) == ("roleTemplateId" in doc):
            raise _violation("target", "a directoryRole target needs exactly one of id and roleTemplateId")
        if member.type is MemberType.DEVICE:
            raise ContractError(Reason.UNSUPPORTED_TARGET, "a device cannot be a member of a directory role")
        if "id" in doc:
            return DirectoryRole(id=_guid(doc, "id", "target."))
        return DirectoryRole(role_template_id=_guid(doc, "roleTemplateId", "target."))
    raise ContractError(
        Reason.UNSUPPORTED_TARGET,
        f"target.type {_show(kind)} is not supported; use administrativeUnit, directoryRole or scopedRole",
    )


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
    value = _string(doc, name, "")
    if value is None:
        return None
    if _TIMESTAMP.fullmatch(value):
        try:
            return datetime.fromisoformat(value).astimezone(UTC)
        except ValueError:
            pass
    raise _violation(name, "must be an RFC 3339 timestamp with a time zone, e.g. 2027-01-31T00:00:00Z")


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
