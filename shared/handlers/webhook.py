"""The ticketing webhook trigger (``POST /api/grants``): authenticate, validate and enqueue one grant request.

Checks, in this order, each answered with RFC 9457 problem details (``application/problem+json``):

1. the secret (``GRANTS_WEBHOOK_SECRET``) is configured, else ``503``: the webhook never accepts unsigned;
2. the body is at most 64 KiB (by ``Content-Length``, then by the bytes received), else ``413``;
3. ``Content-Type`` is ``application/json`` (charset, if given, UTF-8), else ``415``;
4. ``X-Grants-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`` matches (constant-time) and
   ``X-Grants-Timestamp`` (unix seconds) is at most 5 minutes old and not in the future (30 s of clock
   skew tolerated), else ``401``;
5. the body is UTF-8 without a byte-order mark (not UTF-16 or UTF-32, whatever the charset said), else ``415``;
6. the body is JSON as the trigger reads it (`load_json`: no key twice, no NaN): a v1 grant message with
   ``source.system = "ticketing"``, or a ticket payload mapped into one, that passes the same parser the queue
   trigger uses (a requestId starting with "~", the app's own namespace, is refused), and its callback URL, if any
   (``callback.url``; a ticket's ``callbackUrl``), is one the callback policy allows for ticketing
   (`CallbackPolicy.check`: https, an allow-listed host, no IP literal, no userinfo), else ``400`` listing the
   invalid fields. A refused callback URL is never called;
7. the grant ledger holds no other content for its requestId, else ``409`` (a request id names one request).

Then the message, with ``requestedAt`` = the receive time unless it has one, is sent to the grants queue with
MessageId ``~webhook:<digest of requestId and content>`` (a webhook fired twice is absorbed by duplicate
detection, or later by the ledger; the same requestId with other content reaches the app and is refused
``RequestIdConflict`` rather than dropped) and the answer is ``202`` with the requestId and ``Location:
/api/grants/<requestId>``, where its status can be read (``GET``, `shared.handlers.status`). A send that fails is
``503``. After the send and before the 202, the request's status ``accepted`` is recorded in the ledger, only if
it has no status yet (the grant may already have ended). That write is best-effort: when it fails, a warning is
logged and the answer is still 202 (the message is on the queue; its terminal status is recorded at settlement,
and until then the status answers 404).
Neither the signature nor the secret is ever logged.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any, Final
from urllib.parse import quote

from shared.adapters.ledger import Ledger
from shared.core.callbacks import CallbackPolicy, CallbackRefused
from shared.core.contract import (
    MAX_MESSAGE_BYTES,
    GrantCommand,
    draft,
    encode,
    encoding_problem,
    load_json,
    parse_grant,
    problems,
)
from shared.core.errors import ContractError, Reason, TransientError
from shared.core.intents import content_hash
from shared.core.messaging import MessageSender, derived_message_id
from shared.core.records import accepted_status
from shared.core.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from shared.core.statuses import StatusRecord, StatusWrite
from shared.handlers.http import Answer, problem

__all__ = [
    "FUTURE_SKEW_SECONDS",
    "REPLAY_WINDOW_SECONDS",
    "Webhook",
    "receive",
    "status_location",
    "webhook_message_id",
]

REPLAY_WINDOW_SECONDS: Final = 300
FUTURE_SKEW_SECONDS: Final = 30

_SIGNATURE = re.compile(r"sha256=([0-9a-fA-F]{64})", re.ASCII)
_TIMESTAMP = re.compile(r"[0-9]{1,12}", re.ASCII)
_FIELD = re.compile(r"([A-Za-z]+(?:\.[A-Za-z]+)*) ", re.ASCII)
_TICKET_FIELDS: Final = (
    "ticketNumber",
    "requester",
    "approver",
    "action",
    "target",
    "member",
    "summary",
    "expiresAt",
    "callbackUrl",
)
#: Where a field of the mapped message came from in a ticket payload (for the error pointers).
_TICKET_POINTERS: Final = {
    "requestId": "/ticketNumber",
    "source": "/ticketNumber",
    "requestedBy": "/requester",
    "reason": "/summary",
    "callback": "/callbackUrl",
}

_log = logging.getLogger(__name__)


class Webhook:
    """The ticketing webhook for one process (built by the composition root): `receive` with the app's secret,
    queue, clock, callback policy and ledger."""

    def __init__(
        self,
        *,
        secret: str | None,
        sender: MessageSender,
        ledger: Ledger,
        now: Callable[[], datetime],
        callbacks: CallbackPolicy,
    ) -> None:
        self._secret = secret
        self._sender = sender
        self._ledger = ledger
        self._now = now
        self._callbacks = callbacks

    async def __call__(self, *, headers: Mapping[str, str], body: bytes) -> Answer:
        """Answer one webhook request (see `receive`)."""
        return await receive(
            headers=headers,
            body=body,
            secret=self._secret,
            sender=self._sender,
            now=self._now,
            callbacks=self._callbacks,
            recorded=self._recorded_content,
            accept=self._accept,
        )

    async def _recorded_content(self, request_id: str) -> str | None:
        """The content hash the ledger records for `request_id` (None: unknown, or the ledger unavailable now)."""
        try:
            record = await self._ledger.request(request_id)
        except TransientError:
            return None
        return record.content_hash if record else None

    async def _accept(self, record: StatusRecord, write: StatusWrite) -> bool:
        return await self._ledger.record(record, now=self._now(), write=write)


async def receive(
    *,
    headers: Mapping[str, str],
    body: bytes,
    secret: str | None,
    sender: MessageSender,
    now: Callable[[], datetime],
    callbacks: CallbackPolicy | None = None,
    recorded: Callable[[str], Awaitable[str | None]] | None = None,
    accept: Callable[[StatusRecord, StatusWrite], Awaitable[object]] | None = None,
) -> Answer:
    """Answer one webhook request; on success the grant message is on the grants queue.

    `callbacks` decides which callback URLs a request may name (None: none). The message gets ``requestedAt`` =
    the receive time unless it has one, and MessageId `webhook_message_id` (the request id and content): sent
    twice, duplicate detection or the ledger absorbs it. `recorded` gives the content hash the ledger holds for a
    request id: another content answers 409 (an id names one request).
    """
    if secret is None:
        _log.error(
            "webhook refused a request: GRANTS_WEBHOOK_SECRET is not set or its Key Vault reference is unresolved"
        )
        return problem(503, "webhook-disabled", "Webhook not configured", "the webhook has no signing secret")
    length = headers.get("Content-Length", "")
    if (length.isdigit() and int(length) > MAX_MESSAGE_BYTES) or len(body) > MAX_MESSAGE_BYTES:
        return problem(413, "too-large", "Request too large", f"the body may be at most {MAX_MESSAGE_BYTES} bytes")
    media_type, _, parameters = headers.get("Content-Type", "").partition(";")
    options = dict(option.strip().lower().partition("=")[::2] for option in parameters.split(";") if option.strip())
    charset = options.get("charset", "utf-8").strip('"')
    if media_type.strip().lower() != "application/json" or charset not in ("utf-8", "utf8"):
        return problem(415, "unsupported-media-type", "Unsupported media type", "send Content-Type: application/json")
    refusal = _authenticate(headers=headers, body=body, secret=secret, now=now())
    if refusal is not None:
        _log.warning("webhook refused an unauthenticated request: %s", refusal)
        return problem(401, "unauthenticated", "Signature not accepted", refusal)
    if (unreadable := encoding_problem(body)) is not None:
        return problem(415, "unsupported-media-type", "Unsupported media type", unreadable)
    message, errors = _message(body, callbacks or CallbackPolicy())
    if errors:
        return problem(400, "invalid-request", "Invalid grant request", "the request has invalid fields", errors)
    assert message is not None
    received = now()
    command = message if message.requested_at is not None else replace(message, requested_at=received)
    request_id = command.request_id
    if recorded is not None and (await recorded(request_id)) not in (None, content_hash(command)):
        return problem(
            409,
            "request-id-conflict",
            "Request id already used",
            f"requestId {request_id} was used before for a different request; send this one with a new id",
        )
    try:
        await sender.schedule(
            body=encode(command),
            message_id=webhook_message_id(command),
            application_properties={},
            scheduled_enqueue_time=received,
        )
    except Exception:
        _log.exception("webhook could not enqueue request %s", json.dumps(request_id))
        return problem(
            503, "enqueue-failed", "Not enqueued", "the request could not be queued; send it again", retry_after=30
        )
    if accept is not None:
        try:
            await accept(accepted_status(command, received=received), StatusWrite.FIRST)
        except Exception:  # best-effort: the message is queued, its terminal status will be recorded
            _log.warning("webhook could not record request %s as accepted", json.dumps(request_id), exc_info=True)
    _log.info("webhook accepted request %s", json.dumps(request_id))
    return Answer(
        202,
        json.dumps({"requestId": request_id, "status": "accepted"}).encode(),
        "application/json",
        {"Location": status_location(request_id)},
    )


def status_location(request_id: str) -> str:
    """Where the status of `request_id` is: ``/api/grants/<requestId>`` (percent-encoded)."""
    return "/api/grants/" + quote(request_id, safe="@")


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


def webhook_message_id(command: GrantCommand) -> str:
    """``~webhook:<digest>`` of the request id and content: one request, one MessageId, however often sent."""
    return derived_message_id("webhook", command.request_id, content_hash(command))


def _message(body: bytes, callbacks: CallbackPolicy) -> tuple[GrantCommand | None, Problems]:
    """The command to enqueue for a valid body, or the problems with its fields."""
    try:
        document = load_json(body)  # the contract's reader: a key given twice is refused by name
    except ContractError as error:
        return None, [_error("", error.description)]
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
    callback = document.get("callback")
    url = callback.get("url") if isinstance(callback, dict) else None
    if isinstance(url, str) and (refusal := _callback_refusal(url, callbacks)) is not None:
        errors.append(_error(pointers.get("callback", "/callback/url"), refusal))
    if errors:
        taken = {error["pointer"] for error in errors}
        return None, errors + [e for e in _problems(payload, document, pointers) if e["pointer"] not in taken]
    try:
        command = parse_grant(payload)
    except ContractError:
        return None, _problems(payload, document, pointers)
    return command, []


def _callback_refusal(url: str, callbacks: CallbackPolicy) -> str | None:
    """Why the webhook refuses a callback URL, or None when ticketing may name it."""
    if not callbacks.enabled:
        return "callbacks are not enabled on this app"
    try:
        callbacks.check(url, source="ticketing")
    except CallbackRefused as error:
        return f"callback URL not allowed: {error}"
    return None


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
    if "callbackUrl" in ticket:
        mapped["callback"] = {"url": ticket["callbackUrl"]}  # the parser says what is wrong with it
    return mapped, errors


def _error(pointer: str, detail: str) -> dict[str, str]:
    return {"pointer": pointer, "detail": detail}
