"""The ticketing webhook (``POST /api/grants``): authenticate, validate and enqueue one grant request.

Checks, in this order, each answered with RFC 9457 problem details (``application/problem+json``):

1. the secret (``GRANTS_WEBHOOK_SECRET``) is configured, else ``503``: the webhook never accepts unsigned;
2. the body is at most 64 KiB (by ``Content-Length``, then by the bytes received), else ``413``;
3. ``Content-Type`` is ``application/json`` (charset, if given, UTF-8), else ``415``;
4. ``X-Grants-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`` matches (constant-time) and
   ``X-Grants-Timestamp`` (unix seconds) is at most 5 minutes old and not in the future (30 s of clock
   skew tolerated), else ``401``;
5. the body is a v1 grant message with ``source.system = "ticketing"``, or a ticket payload mapped into one,
   and passes the same parser the queue trigger uses, and its requestId has no ":" (the app's derived ids
   use it), else ``400`` listing the invalid fields.

Then the message is sent to the grants queue with MessageId = requestId (Service Bus duplicate detection
absorbs a webhook fired twice) and the answer is ``202`` with the requestId. A send that fails is ``503``.
Neither the signature nor the secret is ever logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from shared.core.contract import MAX_MESSAGE_BYTES, draft, parse_grant, problems
from shared.core.errors import ContractError, Reason
from shared.core.messaging import MessageSender

__all__ = [
    "FUTURE_SKEW_SECONDS",
    "REPLAY_WINDOW_SECONDS",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "Answer",
    "receive",
    "sign",
]

SIGNATURE_HEADER: Final = "X-Grants-Signature"
TIMESTAMP_HEADER: Final = "X-Grants-Timestamp"
REPLAY_WINDOW_SECONDS: Final = 300
FUTURE_SKEW_SECONDS: Final = 30
PROBLEM_TYPE: Final = "urn:entra-grants:problem:"

_SIGNATURE = re.compile(r"sha256=([0-9a-fA-F]{64})", re.ASCII)
_TIMESTAMP = re.compile(r"[0-9]{1,12}", re.ASCII)
_FIELD = re.compile(r"([A-Za-z]+(?:\.[A-Za-z]+)*) ", re.ASCII)
_TICKET_FIELDS: Final = ("ticketNumber", "requester", "approver", "action", "target", "member", "summary", "expiresAt")
#: Where a field of the mapped message came from in a ticket payload (for the error pointers).
_TICKET_POINTERS: Final = {
    "requestId": "/ticketNumber",
    "source": "/ticketNumber",
    "requestedBy": "/requester",
    "reason": "/summary",
}

#: The app derives MessageIds with ":" (retry copies <id>:<n>, expiries <id>:expire, HR grants hr:…); a
#: webhook request holding one could pre-empt such a message through duplicate detection.
_RESERVED: Final = 'must not contain ":" (reserved for the ids the app derives: retries, expiries, HR grants)'

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Answer:
    """The HTTP answer: status, body, media type and extra headers."""

    status: int
    body: bytes
    content_type: str
    headers: Mapping[str, str] = field(default_factory=dict)


def sign(*, secret: str, timestamp: int | str, body: bytes) -> str:
    """The ``X-Grants-Signature`` value for `body` sent at `timestamp` (what a sender computes).

    The signed text is the ``X-Grants-Timestamp`` header exactly as sent, a dot, and the body's bytes.
    """
    digest = hmac.new(secret.encode(), f"{timestamp}".encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


async def receive(
    *,
    headers: Mapping[str, str],
    body: bytes,
    secret: str | None,
    sender: MessageSender,
    now: Callable[[], datetime],
) -> Answer:
    """Answer one webhook request; on success the grant message is on the grants queue."""
    if secret is None:
        _log.error(
            "webhook refused a request: GRANTS_WEBHOOK_SECRET is not set or its Key Vault reference is unresolved"
        )
        return _problem(503, "webhook-disabled", "Webhook not configured", "the webhook has no signing secret")
    length = headers.get("Content-Length", "")
    if (length.isdigit() and int(length) > MAX_MESSAGE_BYTES) or len(body) > MAX_MESSAGE_BYTES:
        return _problem(413, "too-large", "Request too large", f"the body may be at most {MAX_MESSAGE_BYTES} bytes")
    media_type, _, parameters = headers.get("Content-Type", "").partition(";")
    options = dict(option.strip().lower().partition("=")[::2] for option in parameters.split(";") if option.strip())
    charset = options.get("charset", "utf-8").strip('"')
    if media_type.strip().lower() != "application/json" or charset not in ("utf-8", "utf8"):
        return _problem(415, "unsupported-media-type", "Unsupported media type", "send Content-Type: application/json")
    refusal = _authenticate(headers=headers, body=body, secret=secret, now=now())
    if refusal is not None:
        _log.warning("webhook refused an unauthenticated request: %s", refusal)
        return _problem(401, "unauthenticated", "Signature not accepted", refusal)
    message, errors = _message(body)
    if errors:
        return _problem(400, "invalid-request", "Invalid grant request", "the request has invalid fields", errors)
    assert message is not None
    request_id, payload = message
    try:
        await sender.schedule(
            body=payload, message_id=request_id, application_properties={}, scheduled_enqueue_time=now()
        )
    except Exception:
        _log.exception("webhook could not enqueue request %s", json.dumps(request_id))
        return _problem(
            503, "enqueue-failed", "Not enqueued", "the request could not be queued; send it again", retry_after=30
        )
    _log.info("webhook accepted request %s", json.dumps(request_id))
    return Answer(202, json.dumps({"requestId": request_id, "status": "accepted"}).encode(), "application/json")


def _authenticate(*, headers: Mapping[str, str], body: bytes, secret: str, now: datetime) -> str | None:
    """None when the request is signed with `secret` and fresh; otherwise why not (no secret material)."""
    timestamp = headers.get(TIMESTAMP_HEADER, "").strip()
    signature = _SIGNATURE.fullmatch(headers.get(SIGNATURE_HEADER, "").strip())
    if not _TIMESTAMP.fullmatch(timestamp):
        return f"{TIMESTAMP_HEADER} must be the unix time in seconds"
    if signature is None:
        return f"{SIGNATURE_HEADER} must be sha256=<64 hexadecimal digits>"
    expected = sign(secret=secret, timestamp=timestamp, body=body).removeprefix("sha256=")
    if not hmac.compare_digest(expected, signature.group(1).lower()):
        return "the signature does not match the body and timestamp"
    age = now.timestamp() - int(timestamp)
    if age > REPLAY_WINDOW_SECONDS:
        return f"the request is older than {REPLAY_WINDOW_SECONDS} seconds"
    if age < -FUTURE_SKEW_SECONDS:
        return "the request's timestamp is in the future"
    return None


Problems = list[dict[str, str]]


def _message(body: bytes) -> tuple[tuple[str, bytes] | None, Problems]:
    """(requestId, the message to enqueue) for a valid body, or the problems with its fields."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        document = None
    if not isinstance(document, dict):
        return None, _problems(body, None, {})
    errors: Problems = []
    if "ticketNumber" in document and "schemaVersion" not in document:
        document, errors = _map_ticket(document)
        payload, pointers = json.dumps(document).encode(), _TICKET_POINTERS
    elif "schemaVersion" in document:
        source = document.get("source")
        system = source.get("system") if isinstance(source, dict) else None
        if isinstance(system, str) and system != "ticketing":
            errors = [_error("/source/system", 'the webhook accepts only source.system "ticketing"')]
        payload, pointers = body, {}
    else:
        return None, [_error("", "send a grant message (schemaVersion 1) or a ticket payload (ticketNumber)")]
    request_id = document.get("requestId")
    if isinstance(request_id, str) and ":" in request_id:
        errors.append(_error(pointers.get("requestId", "/requestId"), _RESERVED))
    if errors:
        taken = {error["pointer"] for error in errors}
        return None, errors + [e for e in _problems(payload, document, pointers) if e["pointer"] not in taken]
    try:
        command = parse_grant(payload)
    except ContractError:
        return None, _problems(payload, document, pointers)
    return (command.request_id, payload), []


def _problems(payload: bytes, document: Mapping[str, Any] | None, pointers: Mapping[str, str]) -> Problems:
    """Every invalid field of the request, found with the trigger's own parser (`problems`); the payload's own
    first problem when no single field is at fault (e.g. a key given twice)."""
    found = problems(document) if document is not None else []
    if not found and (error := _parse_error(payload)) is not None:
        found.append(error)
    return [_located(error, pointers) for error in found]


def _parse_error(payload: bytes) -> ContractError | None:
    try:
        parse_grant(payload)
    except ContractError as error:
        return error
    return None


def _located(error: ContractError, pointers: Mapping[str, str]) -> dict[str, str]:
    """The parser's complaint as a problem with a JSON pointer to the field its description names."""
    match = _FIELD.match(error.description)
    name = match.group(1) if match and error.reason is not Reason.INVALID_JSON else ""
    if error.reason is Reason.UNSUPPORTED_TARGET:
        name = "target"
    if error.reason is Reason.UNSUPPORTED_SCHEMA_VERSION:
        name = "schemaVersion"
    pointer = pointers.get(name.split(".")[0]) or ("/" + name.replace(".", "/") if name else "")
    return _error(pointer, error.description)


def _map_ticket(ticket: Mapping[str, Any]) -> tuple[dict[str, Any], Problems]:
    """The v1 message for a ticket payload (what could be mapped), and the problems with the ticket's own fields."""
    errors = [_error(f"/{key}", "is not a field of a ticket payload") for key in ticket if key not in _TICKET_FIELDS]
    text: dict[str, str] = {}
    for name in ("ticketNumber", "requester", "approver"):
        value = ticket.get(name)
        if not isinstance(value, str) or not value.strip():
            errors.append(_error(f"/{name}", "is required (a non-empty string)"))
        else:
            text[name] = value
    summary = ticket.get("summary")
    if summary is not None and not isinstance(summary, str):
        errors.append(_error("/summary", "must be a string"))
    approver, requester = text.get("approver"), text.get("requester")
    if approver is not None and requester is not None and approver.strip().lower() == requester.strip().lower():
        errors.append(_error("/approver", "must be someone other than the requester"))
    member = ticket.get("member")
    mapped = draft(
        requestId=text.get("ticketNumber", ticket.get("ticketNumber")),
        action=ticket.get("action", "add"),
        target=ticket.get("target"),
        member={"id": member, "type": "user"} if isinstance(member, str) else member,
        source={"system": "ticketing", "reference": text.get("ticketNumber", "")},
        requestedBy=requester,
        reason=f"Approved by {approver}" + (f": {summary}" if isinstance(summary, str) and summary else ""),
    )
    if "expiresAt" in ticket:
        mapped["expiresAt"] = ticket["expiresAt"]  # null included: the parser says it must be a string
    return mapped, errors


def _error(pointer: str, detail: str) -> dict[str, str]:
    return {"pointer": pointer, "detail": detail}


def _problem(
    status: int, kind: str, title: str, detail: str, errors: Problems | None = None, *, retry_after: int | None = None
) -> Answer:
    document: dict[str, Any] = {"type": PROBLEM_TYPE + kind, "title": title, "status": status, "detail": detail}
    if errors is not None:
        document["errors"] = errors
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return Answer(status, json.dumps(document).encode(), "application/problem+json", headers)
