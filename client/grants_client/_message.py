"""A grant request (contract v1): typed fields in; a validated message body and its MessageId out.

The rules are the app's (``schemas/grant-membership.v1.schema.json``; the app's parser, ``shared/core/contract.py``),
checked here before anything is sent, so that a request the client builds is never dead-lettered for its form: the
repository's tests keep the two in step (every document the client accepts validates against the schema and is
read by the app's parser; every one it refuses, both refuse).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

from grants_client._errors import InvalidRequest, Problem

__all__ = [
    "MAX_MESSAGE_ID_CHARS",
    "Action",
    "AdministrativeUnit",
    "DirectoryRole",
    "GrantRequest",
    "Member",
    "MemberType",
    "ScopedRole",
    "SourceSystem",
    "Target",
    "check",
    "document_of",
    "is_request_id",
    "message_id_of",
]

SourceSystem = Literal["hr", "ticketing", "bulk", "other"]
Action = Literal["add", "remove"]
MemberType = Literal["user", "group", "servicePrincipal", "device"]

SCHEMA_VERSION: Final = 1
#: Service Bus's limit on a MessageId.
MAX_MESSAGE_ID_CHARS: Final = 128
_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}", re.ASCII)
_GUID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.ASCII | re.IGNORECASE)
#: Not allowed in free text: C0 and C1 controls, DEL, the Unicode line separators, lone surrogates.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_TIMESTAMP: Final = re.compile(r"20\d{2}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})", re.ASCII)
_CALLBACK_URL: Final = re.compile(r"https?://[!-~]+", re.ASCII)
_MAX_CALLBACK_URL_CHARS: Final = 2048
#: The app's time domain: 2000-01-01 to 2100-01-01 (UTC), the later bound excluded.
_EARLIEST: Final = datetime(2000, 1, 1, tzinfo=UTC)
_LATEST: Final = datetime(2100, 1, 1, tzinfo=UTC)
_TEXT_LIMITS: Final[Mapping[str, int]] = {"source.reference": 256, "requestedBy": 256, "reason": 1024}
_SOURCES: Final = ("hr", "ticketing", "bulk", "other")
_ACTIONS: Final = ("add", "remove")
_MEMBER_TYPES: Final = ("user", "group", "servicePrincipal", "device")
#: The member types each kind of target holds, as Graph takes them.
_HELD: Final[Mapping[str, tuple[str, ...]]] = {
    "administrativeUnit": ("device", "group", "user"),
    "directoryRole": ("group", "servicePrincipal", "user"),
    "scopedRole": ("group", "user"),
}
_HOLDER: Final[Mapping[str, str]] = {
    "administrativeUnit": "an administrative unit",
    "directoryRole": "a directory role",
    "scopedRole": "a role scoped to an administrative unit",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class AdministrativeUnit:
    """An administrative unit, by object id."""

    id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DirectoryRole:
    """A directory role, by object id or by role template id: give exactly one."""

    id: str | None = None
    role_template_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ScopedRole:
    """A directory role (by template id) limited to one administrative unit."""

    role_template_id: str
    administrative_unit_id: str


Target = AdministrativeUnit | DirectoryRole | ScopedRole


@dataclass(frozen=True, slots=True, kw_only=True)
class Member:
    """The principal to add or remove; `type`, when given, must be one the target holds (checked here)."""

    id: str
    type: MemberType | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GrantRequest:
    """One grant (or revoke) request, validated when made: raises `InvalidRequest` listing every invalid field.

    `request_id` is the producer's idempotency key (1-128 of ``A-Z a-z 0-9 . _ : @ -``): the same id with the same
    content is the same request; with other content the app refuses it (``RequestIdConflict``). `source_system` must
    be the producer's own system (the app's registry says which), else the app refuses it (``SourceMismatch``). Times
    are aware datetimes between 2000-01-01 and 2100-01-01 (UTC), sent in UTC. `requested_at` is left to the app
    (the time it first arrived) unless given: the body, and so the MessageId, stays the same however often it is
    sent. `body` is the message body and `message_id` its MessageId (`message_id_of`).
    """

    request_id: str
    target: Target
    member: Member
    source_system: SourceSystem
    action: Action = "add"
    source_reference: str | None = None
    requested_by: str | None = None
    reason: str | None = None
    expires_at: datetime | None = None
    requested_at: datetime | None = None
    dry_run: bool = False
    callback_url: str | None = None
    body: bytes = field(init=False, repr=False, compare=False)
    message_id: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        document = document_of(self)
        problems = check(document)
        if problems:
            named = self.request_id if isinstance(self.request_id, str) and is_request_id(self.request_id) else None
            raise InvalidRequest(
                f"invalid grant request{f' {named}' if named else ''}: " + "; ".join(p.detail for p in problems),
                problems=problems,
            )
        body = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
        object.__setattr__(self, "body", body)
        object.__setattr__(self, "message_id", message_id_of(self.request_id, body))

    def document(self) -> dict[str, Any]:
        """The message as a JSON object (what `body` holds)."""
        document: dict[str, Any] = json.loads(self.body)
        return document


def is_request_id(value: str) -> bool:
    """True when `value` is a request id a producer may use (and so one that may be looked up)."""
    return _REQUEST_ID.fullmatch(value) is not None


def message_id_of(request_id: str, body: bytes) -> str:
    """The MessageId of a request's message: ``<requestId>:<first 16 hex digits of SHA-256(requestId, NUL, body)>``,
    or, where that would pass Service Bus's 128 characters, the whole 64-digit hex digest.

    The same request sent again gets the same MessageId, so duplicate detection drops the copy; the same request id
    with other content gets another one, so it reaches the app and is refused as a conflict, never silently dropped.
    """
    digest = hashlib.sha256(request_id.encode() + b"\x00" + body).hexdigest()
    readable = f"{request_id}:{digest[:16]}"
    return readable if len(readable) <= MAX_MESSAGE_ID_CHARS else digest


def document_of(request: GrantRequest) -> dict[str, Any]:
    """The v1 message for `request`'s fields, as written (GUIDs in lower case, times in UTC), before it is checked:
    `check` says what is wrong with it."""
    document: dict[str, Any] = {
        "schemaVersion": SCHEMA_VERSION,
        "requestId": request.request_id,
        "action": request.action,
        "target": _target_document(request.target),
        "member": _member_document(request.member),
        "source": {"system": request.source_system}
        | ({"reference": request.source_reference} if request.source_reference is not None else {}),
    }
    optional: dict[str, Any] = {
        "requestedBy": request.requested_by,
        "reason": request.reason,
        "expiresAt": _time_text(request.expires_at),
        "requestedAt": _time_text(request.requested_at),
        "dryRun": request.dry_run if request.dry_run is not False else None,
        "callback": {"url": request.callback_url} if request.callback_url is not None else None,
    }
    document.update({key: value for key, value in optional.items() if value is not None})
    return document


def _target_document(target: object) -> Any:
    if isinstance(target, AdministrativeUnit):
        return {"type": "administrativeUnit", "id": _lower(target.id)}
    if isinstance(target, ScopedRole):
        return {
            "type": "scopedRole",
            "roleTemplateId": _lower(target.role_template_id),
            "administrativeUnitId": _lower(target.administrative_unit_id),
        }
    if isinstance(target, DirectoryRole):
        ids = {"id": target.id, "roleTemplateId": target.role_template_id}
        return {"type": "directoryRole"} | {key: _lower(value) for key, value in ids.items() if value is not None}
    return target  # not a target: `check` says so


def _member_document(member: object) -> Any:
    if not isinstance(member, Member):
        return member  # not a member: `check` says so
    return {"id": _lower(member.id)} | ({"type": member.type} if member.type is not None else {})


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) and _GUID.fullmatch(value) else value


def _time_text(value: object) -> object:
    """An aware datetime in UTC as RFC 3339 (``…Z``); anything else as given (`check` refuses it)."""
    if not isinstance(value, datetime):
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        return value.isoformat()  # no time zone: refused
    try:
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    except OverflowError:  # a time whose UTC one falls outside years 1 to 9999: refused
        return value.isoformat()


def check(document: Mapping[str, Any]) -> list[Problem]:
    """Every problem with a v1 message `document` as `document_of` writes it, in field order; empty when the app
    accepts it."""
    problems: list[Problem] = []
    request_id = document.get("requestId")
    if not isinstance(request_id, str) or not is_request_id(request_id):
        problems.append(
            _problem(
                "requestId",
                "must be 1 to 128 characters: letters, digits and . _ : @ -, starting with a letter or digit"
                + (" (ids starting with ~ are the app's own)" if str(request_id).startswith("~") else ""),
            )
        )
    if document.get("action") not in _ACTIONS:
        problems.append(_problem("action", f"must be one of add, remove; got {_show(document.get('action'))}"))
    member = document.get("member")
    member_type: object = None
    if not isinstance(member, dict):
        problems.append(_problem("member", "must be a Member"))
    else:
        problems += _guid(member.get("id"), "member.id")
        member_type = member.get("type")
        if member_type is not None and member_type not in _MEMBER_TYPES:
            problems.append(
                _problem("member.type", f"must be one of {', '.join(_MEMBER_TYPES)}; got {_show(member_type)}")
            )
            member_type = None
    problems += _target(document.get("target"), member_type)
    source = document.get("source", {})
    if source.get("system") not in _SOURCES:
        problems.append(
            _problem("source.system", f"must be one of {', '.join(_SOURCES)}; got {_show(source.get('system'))}")
        )
    problems += _text(source.get("reference"), "source.reference")
    problems += _text(document.get("requestedBy"), "requestedBy")
    problems += _text(document.get("reason"), "reason")
    problems += _time(document.get("expiresAt"), "expiresAt")
    problems += _time(document.get("requestedAt"), "requestedAt")
    if not isinstance(document.get("dryRun", False), bool):
        problems.append(_problem("dryRun", "must be true or false"))
    callback = document.get("callback")
    if callback is not None:
        url = callback.get("url")
        if not isinstance(url, str) or len(url) > _MAX_CALLBACK_URL_CHARS or not _CALLBACK_URL.fullmatch(url):
            problems.append(
                _problem(
                    "callback.url",
                    f"must be an absolute http(s) URL of at most {_MAX_CALLBACK_URL_CHARS} printable ASCII characters "
                    "(an internationalized host in its xn-- form)",
                )
            )
    return problems


def _target(target: object, member_type: object) -> list[Problem]:
    if not isinstance(target, dict):
        return [_problem("target", "must be an AdministrativeUnit, DirectoryRole or ScopedRole")]
    kind = target["type"]
    problems = [
        problem
        for key in ("id", "roleTemplateId", "administrativeUnitId")
        if key in target
        for problem in _guid(target[key], f"target.{key}")
    ]
    if kind == "directoryRole" and ("id" in target) == ("roleTemplateId" in target):
        problems.append(Problem("/target", "target: a DirectoryRole needs exactly one of id and role_template_id"))
    if member_type is not None and member_type not in _HELD[kind]:
        problems.append(
            Problem(
                "/member/type",
                f"member.type {member_type} cannot be a member of {_HOLDER[kind]} (it takes: {', '.join(_HELD[kind])})",
            )
        )
    return problems


def _guid(value: object, name: str) -> list[Problem]:
    if isinstance(value, str) and _GUID.fullmatch(value):
        return []
    return [_problem(name, f"must be a GUID (8-4-4-4-12 hexadecimal digits), got {_show(value)}")]


def _text(value: object, name: str) -> list[Problem]:
    if value is None:
        return []
    if not isinstance(value, str):
        return [_problem(name, "must be a string")]
    limit = _TEXT_LIMITS[name]
    if len(value) > limit:
        return [_problem(name, f"must be at most {limit} characters")]
    if _CONTROL.search(value):
        return [_problem(name, "must not contain control characters or line breaks")]
    return []


def _time(value: object, name: str) -> list[Problem]:
    """An RFC 3339 time in UTC inside the app's domain, as `_time_text` writes it."""
    if value is None:
        return []
    shape = f"must be an aware datetime (with a time zone) between {_EARLIEST:%Y-%m-%d} and {_LATEST:%Y-%m-%d} (UTC)"
    if not isinstance(value, str) or not _TIMESTAMP.fullmatch(value):
        return [_problem(name, shape)]
    try:
        written = datetime.fromisoformat(value)
    except ValueError:  # a day or hour that does not exist
        return [_problem(name, shape)]
    return [] if _EARLIEST <= written < _LATEST else [_problem(name, shape)]


def _problem(name: str, detail: str) -> Problem:
    return Problem("/" + name.replace(".", "/"), f"{name} {detail}")


def _show(value: object) -> str:
    """A short, single-line, ASCII rendering of a value for a message."""
    try:
        text = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError):
        text = type(value).__name__
    return text if len(text) <= 80 else text[:77] + "..."
