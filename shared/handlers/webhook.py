"""The webhook trigger (``POST /api/grants``): establish the producer, validate and enqueue one grant request.

The producer is whoever can prove it (`shared.core.producers`): an Entra principal the registry lists as acting for
a producer, vouched for by App Service authentication (`shared.core.access`); or a signature made with a producer's
own secret: ``X-Grants-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`` and ``X-Grants-Timestamp``
(unix seconds), the producer named by ``X-Grants-Producer`` (optional while only one producer signs).

Checks, in this order, each answered with RFC 9457 problem details (``application/problem+json``):

1. some producer can use the webhook (one has a secret, or a principal with authentication on), else ``503``: the
   webhook never accepts a request it cannot attribute;
2. the body is at most 64 KiB (by ``Content-Length``, then by the bytes received), else ``413``;
3. ``Content-Type`` is ``application/json`` (charset, if given, UTF-8), else ``415``;
4. the caller is a producer: a principal acting for one, or a signature that matches (constant-time) under the
   named producer's secret with a timestamp at most 5 minutes old and not in the future (30 s of clock skew
   tolerated), else ``401``;
5. the body is UTF-8 without a byte-order mark (not UTF-16 or UTF-32, whatever the charset said), else ``415``;
6. the body is JSON as the trigger reads it (`load_json`: no key twice, no NaN): a v1 grant message whose
   ``source.system`` is the producer's own, or a ticket payload mapped into one, that passes the same parser the
   queue trigger uses (a requestId starting with "~", the app's own namespace, is refused), and its callback URL,
   if any (``callback.url``; a ticket's ``callbackUrl``), is one of that producer's callback hosts
   (`CallbackPolicy.check`: https, an allow-listed host, no IP literal, no userinfo), else ``400`` listing the
   invalid fields. A refused callback URL is never called;
7. the grant ledger holds no other content for the producer's requestId, else ``409`` (a request id names one
   request of its producer; another producer's same id is another request).

Then the message, with ``requestedAt`` = the receive time unless it has one, is sent to the grants queue, sealed
with its producer, with MessageId ``~webhook:<digest of producer, requestId and content>`` (a webhook fired twice is
absorbed by duplicate detection, or later by the ledger; the same requestId with other content reaches the app and
is refused ``RequestIdConflict`` rather than dropped) and the answer is ``202`` with the requestId and ``Location:
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
from shared.core.access import Caller, caller_of
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
from shared.core.messaging import PRODUCER, MessageSender, derived_message_id
from shared.core.producers import Producer, Producers
from shared.core.records import accepted_status
from shared.core.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from shared.core.statuses import StatusRecord, StatusWrite
from shared.handlers.http import Answer, problem

__all__ = [
    "FUTURE_SKEW_SECONDS",
    "PRODUCER_HEADER",
    "REPLAY_WINDOW_SECONDS",
    "Webhook",
    "receive",
    "status_location",
    "webhook_message_id",
]

REPLAY_WINDOW_SECONDS: Final = 300
FUTURE_SKEW_SECONDS: Final = 30
#: The header naming the producer whose secret signed the request (optional while one producer signs).
PRODUCER_HEADER: Final = "X-Grants-Producer"

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
    """The webhook for one process (built by the composition root): `receive` with the producer registry, whether
    App Service authentication is on, the grants queue, the clock, the callback policy and the ledger."""

    def __init__(
        self,
        *,
        producers: Producers,
        api_auth: bool,
        sender: MessageSender,
        ledger: Ledger,
        now: Callable[[], datetime],
        callbacks: CallbackPolicy,
    ) -> None:
        self._producers = producers
        self._api_auth = api_auth
        self._sender = sender
        self._ledger = ledger
        self._now = now
        self._callbacks = callbacks

    async def __call__(self, *, headers: Mapping[str, str], body: bytes) -> Answer:
        """Answer one webhook request (see `receive`)."""
        return await receive(
            headers=headers,
            body=body,
            producers=self._producers,
            caller=caller_of(headers, enabled=self._api_auth, producers=self._producers),
            principals=self._api_auth and any(p.principals for p in self._producers),
            sender=self._sender,
            now=self._now,
            callbacks=self._callbacks,
            recorded=self._recorded_content,
            accept=self._accept,
        )

    async def _recorded_content(self, producer: str, request_id: str) -> str | None:
        """The content hash the ledger records for `producer`'s `request_id` (None: unknown, or the ledger
        unavailable now)."""
        try:
            record = await self._ledger.request(request_id, producer=producer)
        except TransientError:
            return None
        return record.content_hash if record else None

    async def _accept(self, record: StatusRecord, write: StatusWrite) -> bool:
        return await self._ledger.record(record, now=self._now(), write=write)


async def receive(
    *,
    headers: Mapping[str, str],
    body: bytes,
    producers: Producers,
    sender: MessageSender,
    now: Callable[[], datetime],
    caller: Caller | None = None,
    principals: bool = False,
    callbacks: CallbackPolicy | None = None,
    recorded: Callable[[str, str], Awaitable[str | None]] | None = None,
    accept: Callable[[StatusRecord, StatusWrite], Awaitable[object]] | None = None,
) -> Answer:
    """Answer one webhook request; on success the grant message, its producer's, is on the grants queue.

    `caller` is who App Service authentication vouches for (`principals`: some producer may be known that way);
    `callbacks` decides which callback URLs a producer's request may name (None: none). The message gets
    ``requestedAt`` = the receive time unless it has one, and MessageId `webhook_message_id` (the producer, the
    request id and content): sent twice, duplicate detection or the ledger absorbs it. `recorded` gives the content
    hash the ledger holds for a producer's request id: another content answers 409 (an id names one request).
    """
    if not producers.signing() and not principals:
        _log.error(
            "webhook refused a request: no producer has a signing secret (set, or its Key Vault reference resolved)"
        )
        return problem(503, "webhook-disabled", "Webhook not configured", "no producer can sign webhook requests")
    length = headers.get("Content-Length", "")
    if (length.isdigit() and int(length) > MAX_MESSAGE_BYTES) or len(body) > MAX_MESSAGE_BYTES:
        return problem(413, "too-large", "Request too large", f"the body may be at most {MAX_MESSAGE_BYTES} bytes")
    media_type, _, parameters = headers.get("Content-Type", "").partition(";")
    options = dict(option.strip().lower().partition("=")[::2] for option in parameters.split(";") if option.strip())
    charset = options.get("charset", "utf-8").strip('"')
    if media_type.strip().lower() != "application/json" or charset not in ("utf-8", "utf8"):
        return problem(415, "unsupported-media-type", "Unsupported media type", "send Content-Type: application/json")
    producer = caller.producer if caller is not None else None
    if producer is None:
        found = _authenticate(headers=headers, body=body, producers=producers, now=now())
        if isinstance(found, str):
            _log.warning("webhook refused an unauthenticated request: %s", found)
            return problem(401, "unauthenticated", "Signature not accepted", found)
        producer = found
    if (unreadable := encoding_problem(body)) is not None:
        return problem(415, "unsupported-media-type", "Unsupported media type", unreadable)
    message, errors = _message(body, producer, callbacks or CallbackPolicy())
    if errors:
        return problem(400, "invalid-request", "Invalid grant request", "the request has invalid fields", errors)
    assert message is not None
    received = now()
    command = message if message.requested_at is not None else replace(message, requested_at=received)
    request_id = command.request_id
    if recorded is not None and (await recorded(producer.name, request_id)) not in (None, content_hash(command)):
        return problem(
            409,
            "request-id-conflict",
            "Request id already used",
            f"requestId {request_id} was used before for a different request; send this one with a new id",
        )
    try:
        await sender.schedule(
            body=encode(command),
            message_id=webhook_message_id(command, producer=producer.name),
            application_properties={PRODUCER: producer.name},
            scheduled_enqueue_time=received,
        )
    except Exception:
        _log.exception("webhook could not enqueue request %s of %s", json.dumps(request_id), producer.name)
        return problem(
            503, "enqueue-failed", "Not enqueued", "the request could not be queued; send it again", retry_after=30
        )
    if accept is not None:
        try:
            await accept(accepted_status(command, producer=producer.name, received=received), StatusWrite.FIRST)
        except Exception:  # best-effort: the message is queued, its terminal status will be recorded
            _log.warning("webhook could not record request %s as accepted", json.dumps(request_id), exc_info=True)
    _log.info("webhook accepted request %s of producer %s", json.dumps(request_id), producer.name)
    return Answer(
        202,
        json.dumps({"requestId": request_id, "producer": producer.name, "status": "accepted"}).encode(),
        "application/json",
        {"Location": status_location(request_id)},
    )


def status_location(request_id: str) -> str:
    """Where the status of `request_id` is: ``/api/grants/<requestId>`` (percent-encoded)."""
    return "/api/grants/" + quote(request_id, safe="@")


def _authenticate(*, headers: Mapping[str, str], body: bytes, producers: Producers, now: datetime) -> Producer | str:
    """The producer whose secret signed this fresh request; otherwise why not (no secret material, and the same
    words whether the producer named is unknown or its signature is wrong)."""
    signing = producers.signing()
    named = headers.get(PRODUCER_HEADER, "").strip()
    if not named and len(signing) > 1:
        return f"{PRODUCER_HEADER} must name the producer whose secret signed the request"
    producer = producers.get(named) if named else (signing[0] if signing else None)
    timestamp = headers.get(TIMESTAMP_HEADER, "").strip()
    signature = _SIGNATURE.fullmatch(headers.get(SIGNATURE_HEADER, "").strip())
    if not timestamp:
        return f"the request is not signed: {TIMESTAMP_HEADER} and {SIGNATURE_HEADER} are missing"
    if not _TIMESTAMP.fullmatch(timestamp):
        return f"{TIMESTAMP_HEADER} must be the unix time in seconds"
    if signature is None:
        return f"{SIGNATURE_HEADER} must be sha256=<64 hexadecimal digits>"
    secret = producer.secret if producer is not None else None
    expected = sign(secret=secret or "\x00" * 32, timestamp=timestamp, body=body).removeprefix("sha256=")
    if not hmac.compare_digest(expected, signature.group(1).lower()) or secret is None or producer is None:
        return "the signature does not match the body and timestamp under that producer's secret"
    age = now.timestamp() - int(timestamp)
    if age > REPLAY_WINDOW_SECONDS:
        return f"the request is older than {REPLAY_WINDOW_SECONDS} seconds"
    if age < -FUTURE_SKEW_SECONDS:
        return "the request's timestamp is in the future"
    return producer


Problems = list[dict[str, str]]


def webhook_message_id(command: GrantCommand, *, producer: str) -> str:
    """``~webhook:<digest>`` of the producer, the request id and content: one request, one MessageId, however often
    sent."""
    return derived_message_id("webhook", producer, command.request_id, content_hash(command))


def _message(body: bytes, producer: Producer, callbacks: CallbackPolicy) -> tuple[GrantCommand | None, Problems]:
    """`producer`'s command to enqueue for a valid body, or the problems with its fields."""
    try:
        document = load_json(body)  # the contract's reader: a key given twice is refused by name
    except ContractError as error:
        return None, [_error("", error.description)]
    if not isinstance(document, dict):
        return None, _problems(body, None, {})
    errors: Problems = []
    if "ticketNumber" in document and "schemaVersion" not in document:
        document, errors = _map_ticket(document, system=producer.system.value)
        payload, pointers = json.dumps(document).encode(), _TICKET_POINTERS
    elif "schemaVersion" in document:
        source = document.get("source")
        system = source.get("system") if isinstance(source, dict) else None
        if isinstance(system, str) and system != producer.system.value:
            detail = (
                f"must be {producer.system.value!r}: producer {producer.name!r} speaks as {producer.system.value!r}"
            )
            errors = [_error("/source/system", detail)]
        payload, pointers = body, {}
    else:
        return None, [_error("", "send a grant message (schemaVersion 1) or a ticket payload (ticketNumber)")]
    callback = document.get("callback")
    url = callback.get("url") if isinstance(callback, dict) else None
    if isinstance(url, str) and (refusal := _callback_refusal(url, producer, callbacks)) is not None:
        errors.append(_error(pointers.get("callback", "/callback/url"), refusal))
    if errors:
        taken = {error["pointer"] for error in errors}
        return None, errors + [e for e in _problems(payload, document, pointers) if e["pointer"] not in taken]
    try:
        command = parse_grant(payload)
    except ContractError:
        return None, _problems(payload, document, pointers)
    return command, []


def _callback_refusal(url: str, producer: Producer, callbacks: CallbackPolicy) -> str | None:
    """Why the webhook refuses a callback URL, or None when `producer` may name it."""
    if not callbacks.enabled:
        return "callbacks are not enabled on this app"
    try:
        callbacks.check(url, producer=producer.name)
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


def _map_ticket(ticket: Mapping[str, Any], *, system: str) -> tuple[dict[str, Any], Problems]:
    """The v1 message for a ticket payload (what could be mapped), its source the producer's `system`, and the
    problems with the ticket's own fields."""
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
        source={"system": system, "reference": text.get("ticketNumber", "")},
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
