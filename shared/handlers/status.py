"""The status API triggers: what the ledger records about one request, a bulk job, an HR event, or a member or target.

- an id the contract would not accept (`is_request_id`: 1-128 of ``A-Z a-z 0-9 . _ : @ -``; GUIDs for history)
  answers ``400`` problem details and is never looked up;
- nothing recorded answers ``404`` problem details (RFC 9457, as the webhook's);
- a ledger that fails answers ``503`` with ``Retry-After``;
- otherwise ``200`` JSON.

``GET /api/grants/{requestId}`` (`status_answer`): the request's status record (`shared.core.statuses` lists
the statuses), with ``reason``, ``description``, ``attempts``, ``lastAttemptAt``, ``nextRetryAt``,
``graphRequestId``, who asked (``sourceSystem``, ``sourceReference``, ``requestedBy``), what (``action``, the
target and member), ``requestedAt``, ``intentAt``, ``expiresAt`` and, for a time-bound grant, ``removal`` (the
removal's status: ``scheduled`` with ``dueAt`` until it runs), ``acceptedAt`` and ``updatedAt``.

``GET /api/jobs/{jobId}`` and ``GET /api/hr-events/{eventId}`` (`group_answer`): one partition query on the job's
(or event's) rows. Every message of a bulk job or HR event carries its row and the number of rows sent
(``jobRow``, ``jobRows``), and each row is recorded from its first status on (``scheduled`` for an HR event's,
``in_progress`` for a bulk row's), so ``rows``, ``terminal``, ``pending`` and ``done`` say how far the job is:
``totals`` by status, ``succeeded``, and the ``failed`` rows' records by row. An HR event's answer also carries
the event's own record (``event``: its outcome, type, employee and when its grants are due).

``GET /api/history?member=<id>`` or ``?target=<id>`` (`history_answer`), optionally ``&since=<date or time>``:
every request that named the member (or the administrative unit, role or role template), newest intent first.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, time
from typing import Any, Final

from shared.adapters.ledger import Group, GroupKind, Ledger
from shared.core.contract import is_request_id, parse_guid
from shared.core.errors import ContractError, TransientError
from shared.core.statuses import Status, StatusRecord
from shared.core.times import TimeRefused, parse_date, parse_timestamp
from shared.handlers.http import Answer, problem

__all__ = ["StatusApi", "group_answer", "history_answer", "status_answer"]

_log = logging.getLogger(__name__)
#: The most requests a history answer lists (the newest): a target with more is asked with ``since``.
HISTORY_LIMIT: Final = 5000


class StatusApi:
    """The status API for one process (built by the composition root): its answers from `ledger`."""

    def __init__(self, *, ledger: Ledger) -> None:
        self._ledger = ledger

    async def request(self, request_id: str) -> Answer:
        """``GET /api/grants/{request_id}`` (`status_answer`)."""
        return await status_answer(request_id, status=self._ledger.status)

    async def group(self, kind: GroupKind, group_id: str) -> Answer:
        """``GET /api/jobs/{group_id}`` or ``GET /api/hr-events/{group_id}`` (`group_answer`)."""
        return await group_answer(kind, group_id, group=self._ledger.group)

    async def history(self, query: Mapping[str, str]) -> Answer:
        """``GET /api/history`` (`history_answer`)."""
        return await history_answer(query, history=self._ledger.history)


async def status_answer(request_id: str, *, status: Callable[[str], Awaitable[StatusRecord | None]]) -> Answer:
    """Answer ``GET /api/grants/{request_id}`` from `status` (the ledger's `Ledger.status`)."""
    if not is_request_id(request_id):
        return problem(400, "invalid-request-id", "Invalid request id", _ID_RULE)
    try:
        record = await status(request_id)
    except TransientError:
        _log.warning("status of %s: the ledger is unavailable", json.dumps(request_id), exc_info=True)
        return problem(503, "ledger-unavailable", "Status unavailable", _UNAVAILABLE, retry_after=5)
    if record is None:
        return problem(404, "unknown-request", "Unknown request", f"no request {request_id} is recorded")
    return Answer(200, json.dumps(record.to_json(), ensure_ascii=False).encode(), "application/json")


async def group_answer(
    kind: GroupKind, group_id: str, *, group: Callable[[GroupKind, str], Awaitable[Group]]
) -> Answer:
    """Answer ``GET /api/jobs/{group_id}`` (`kind` job) or ``GET /api/hr-events/{group_id}`` (hrEvent) from
    `group` (the ledger's `Ledger.group`): how many rows, how many ended, totals by status, the failed rows."""
    noun = "job" if kind == "job" else "HR event"
    if not is_request_id(group_id):
        return problem(400, f"invalid-{_slug(kind)}-id", f"Invalid {noun} id", _ID_RULE.replace("request", noun))
    try:
        found = await group(kind, group_id)
    except TransientError:
        _log.warning("%s %s: the ledger is unavailable", noun, json.dumps(group_id), exc_info=True)
        return problem(
            503, "ledger-unavailable", f"{noun[0].upper()}{noun[1:]} unavailable", _UNAVAILABLE, retry_after=5
        )
    if not found.rows and found.event is None:
        return problem(404, f"unknown-{_slug(kind)}", f"Unknown {noun}", f"no request of {noun} {group_id} is recorded")
    rows = sorted(found.rows, key=lambda row: row.get("jobRow") or 0)
    sizes = [row["jobRows"] for row in rows if isinstance(row.get("jobRows"), int)]
    if found.event is not None and isinstance(found.event.get("rows"), int):
        sizes.append(found.event["rows"])
    size = max(sizes) if sizes else None
    statuses = [Status.read(row.get("status")) for row in rows]
    terminal = sum(1 for status in statuses if status is not None and status.terminal)
    document: dict[str, Any] = {
        ("jobId" if kind == "job" else "eventId"): group_id,
        "kind": "bulk" if kind == "job" else "hrEvent",
        "rows": size,
        "recorded": len(rows),
        "terminal": terminal,
        "pending": None if size is None else max(size - terminal, 0),
        "done": size is not None and terminal >= size,
        "totals": dict(sorted(Counter(str(row.get("status")) for row in rows).items())),
        "succeeded": sum(1 for status in statuses if status is not None and status.succeeded),
        "failed": [record.to_json() for record in sorted(found.failed, key=lambda record: record.job_row or 0)],
    }
    if found.event is not None:
        document["event"] = found.event
    return Answer(200, json.dumps(document, ensure_ascii=False).encode(), "application/json")


async def history_answer(query: Mapping[str, str], *, history: Callable[..., Awaitable[list[StatusRecord]]]) -> Answer:
    """Answer ``GET /api/history`` from its `query` (``member`` or ``target``, optional ``since``) with `history`
    (the ledger's `Ledger.history`): every request that named it, newest intent first."""
    member, target, since_text = query.get("member"), query.get("target"), query.get("since")
    if (member is None) == (target is None):
        return problem(400, "invalid-history-query", "Invalid history query", "give member=<id> or target=<id>")
    try:
        guid = parse_guid(member or target or "", field="member" if member is not None else "target")
    except ContractError as error:
        return problem(400, "invalid-history-query", "Invalid history query", error.description)
    try:
        since = _since(since_text) if since_text is not None else None
    except TimeRefused as refused:
        return problem(400, "invalid-history-query", "Invalid history query", str(refused))
    scope = {"member": guid} if member is not None else {"target": guid}
    try:
        found = await history(**scope, since=since, limit=HISTORY_LIMIT)
    except TransientError:
        _log.warning("history of %s: the ledger is unavailable", guid, exc_info=True)
        return problem(503, "ledger-unavailable", "History unavailable", _UNAVAILABLE, retry_after=5)
    document = {
        "member": scope.get("member"),
        "target": scope.get("target"),
        "since": since.isoformat() if since else None,
        "requests": [record.to_json() for record in found],
    }
    return Answer(200, json.dumps(document, ensure_ascii=False).encode(), "application/json")


def _since(text: str) -> datetime:
    """A date (its midnight in UTC) or an RFC 3339 time with a zone, in UTC, inside the app's time domain; raise
    `TimeRefused` naming ``since`` otherwise."""
    if len(text) == 10:
        return datetime.combine(parse_date(text, field="since"), time.min, tzinfo=UTC)
    return parse_timestamp(text, field="since (a date, YYYY-MM-DD, or an RFC 3339 time)")


def _slug(kind: GroupKind) -> str:
    return "job" if kind == "job" else "hr-event"


_UNAVAILABLE: Final = "the grant ledger is unavailable now"
_ID_RULE: Final = "a request id is 1 to 128 of A-Z a-z 0-9 . _ : @ -, starting with a letter or digit"
