"""The status API triggers: what the ledger records about one request, a bulk job, an HR event, or a member or target.

Who may read what (`shared.core.access`): a producer reads its own requests, jobs, HR events and history; a caller
with ``Grants.Reader`` or ``Grants.Operator`` reads every producer's, naming one with ``?producer=`` where two
producers used the same id (without it, an id two producers used answers ``409`` listing them). No caller
(App Service authentication) answers ``401``; a producer naming another producer ``403``.

- an id the contract would not accept (`is_request_id`: 1-128 of ``A-Z a-z 0-9 . _ : @ -``; GUIDs for history)
  answers ``400`` problem details and is never looked up;
- nothing recorded answers ``404`` problem details (RFC 9457, as the webhook's);
- a ledger that fails answers ``503`` with ``Retry-After``;
- otherwise ``200`` JSON.

``GET /api/grants/{requestId}`` (`status_answer`): the request's status record (`shared.core.statuses` lists
the statuses), with ``reason``, ``description``, ``attempts``, ``lastAttemptAt``, ``nextRetryAt``,
``graphRequestId``, who asked (``sourceSystem``, ``sourceReference``, ``requestedBy``), what (``action``, the
target and member), ``requestedAt``, ``intentAt``, ``expiresAt`` and, for a time-bound grant, ``removal`` (the
removal's status: ``scheduled`` with ``dueAt`` until it runs), ``acceptedAt`` and ``updatedAt``; and whether the
status is ``terminal`` and ``succeeded`` (`record_json`: a caller follows a request without a list of statuses).

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
from shared.core.access import Caller, caller_of
from shared.core.contract import is_request_id, parse_guid
from shared.core.errors import ContractError, TransientError
from shared.core.producers import PRODUCER_NAME, Producers
from shared.core.statuses import Status, StatusRecord
from shared.core.times import TimeRefused, parse_date, parse_timestamp
from shared.handlers.http import Answer, forbidden, problem, unauthenticated

__all__ = ["StatusApi", "group_answer", "history_answer", "record_json", "status_answer"]

_log = logging.getLogger(__name__)
#: The most requests a history answer lists (the newest): a target with more is asked with ``since``.
HISTORY_LIMIT: Final = 5000


class StatusApi:
    """The status API for one process (built by the composition root): its answers from `ledger`, to the callers
    App Service authentication vouches for (`api_auth`), each reading what its rights allow."""

    def __init__(self, *, ledger: Ledger, producers: Producers, api_auth: bool) -> None:
        self._ledger = ledger
        self._producers = producers
        self._api_auth = api_auth

    async def request(self, request_id: str, query: Mapping[str, str], headers: Mapping[str, str]) -> Answer:
        """``GET /api/grants/{request_id}[?producer=]`` (`status_answer`)."""
        scope = self._scope(query, headers)
        if isinstance(scope, Answer):
            return scope
        return await status_answer(
            request_id,
            producer=scope,
            viewer=self._viewer(headers),
            status=self._ledger.status,
            statuses=self._ledger.statuses,
        )

    async def group(
        self, kind: GroupKind, group_id: str, query: Mapping[str, str], headers: Mapping[str, str]
    ) -> Answer:
        """``GET /api/jobs/{group_id}`` or ``GET /api/hr-events/{group_id}`` (`group_answer`)."""
        scope = self._scope(query, headers)
        if isinstance(scope, Answer):
            return scope
        return await group_answer(kind, group_id, producer=scope, group=self._ledger.group)

    async def history(self, query: Mapping[str, str], headers: Mapping[str, str]) -> Answer:
        """``GET /api/history`` (`history_answer`): a producer's own requests only."""
        scope = self._scope(query, headers)
        if isinstance(scope, Answer):
            return scope
        return await history_answer(query, producer=scope, viewer=self._viewer(headers), history=self._ledger.history)

    def _viewer(self, headers: Mapping[str, str]) -> str | None:
        """The producer a caller reads as (what it sees of other producers' grants is their names only); None for a
        reader of every producer's records."""
        caller = caller_of(headers, enabled=self._api_auth, producers=self._producers)
        if caller is None or caller.reads_all or caller.producer is None:
            return None
        return caller.producer.name

    def _scope(self, query: Mapping[str, str], headers: Mapping[str, str]) -> str | Answer | None:
        """Whose records the caller reads: its own producer's, the ``producer`` it names (a reading role), or every
        producer's (None); or the ``401``/``403``/``400`` answer."""
        caller = caller_of(headers, enabled=self._api_auth, producers=self._producers)
        return read_scope(caller, query, enabled=self._api_auth)


def read_scope(caller: Caller | None, query: Mapping[str, str], *, enabled: bool) -> str | Answer | None:
    """Whose records `caller` reads (see `StatusApi`): a producer name, None for every producer's, or the answer
    refusing it."""
    if caller is None:
        return unauthenticated(enabled=enabled)
    named = query.get("producer")
    if named is not None and not PRODUCER_NAME.fullmatch(named):
        return problem(400, "invalid-producer", "Invalid producer", "producer is a producer's name ([a-z0-9-])")
    if caller.reads_all:
        return named
    if caller.producer is None:
        return forbidden("reading statuses needs the app role Grants.Reader, or a principal acting for a producer")
    if named is not None and named != caller.producer.name:
        return forbidden(f"producer {caller.producer.name} reads only its own requests")
    return caller.producer.name


async def status_answer(
    request_id: str,
    *,
    producer: str | None,
    viewer: str | None = None,
    status: Callable[..., Awaitable[StatusRecord | None]],
    statuses: Callable[[str], Awaitable[list[StatusRecord]]],
) -> Answer:
    """Answer ``GET /api/grants/{request_id}``: `producer`'s request from `status` (the ledger's `Ledger.status`), or
    with no producer the one producer's that used the id (`statuses`; ``409`` listing them when several did), as
    producer `viewer` may see it (`StatusRecord.seen_by`)."""
    if not is_request_id(request_id):
        return problem(400, "invalid-request-id", "Invalid request id", _ID_RULE)
    try:
        if producer is not None:
            record = await status(request_id, producer=producer)
        else:
            found = await statuses(request_id)
            if len(found) > 1:
                return _ambiguous("request", request_id, [str(r.producer) for r in found])
            record = found[0] if found else None
    except TransientError:
        _log.warning("status of %s: the ledger is unavailable", json.dumps(request_id), exc_info=True)
        return problem(503, "ledger-unavailable", "Status unavailable", _UNAVAILABLE, retry_after=5)
    if record is None:
        return problem(404, "unknown-request", "Unknown request", f"no request {request_id} is recorded")
    return Answer(200, json.dumps(record_json(record.seen_by(viewer)), ensure_ascii=False).encode(), "application/json")


def record_json(record: StatusRecord) -> dict[str, Any]:
    """A status record as the API answers it: every field (`StatusRecord.to_json`), and whether its status is
    ``terminal`` and ``succeeded`` (`Status.terminal`, `Status.succeeded`), so that a caller follows a request to its
    end without a list of statuses of its own (a status added later included)."""
    return record.to_json() | {"terminal": record.status.terminal, "succeeded": record.status.succeeded}


def _ambiguous(noun: str, name: str, producers: list[str]) -> Answer:
    """``409``: several producers used one id; the caller names one with ``?producer=``."""
    detail = f"{len(producers)} producers used {noun} id {name}: ask again with ?producer=<name>"
    answer = problem(409, "ambiguous-id", "Several producers used this id", detail)
    document = json.loads(answer.body) | {"producers": producers}
    return Answer(409, json.dumps(document).encode(), answer.content_type)


async def group_answer(
    kind: GroupKind, group_id: str, *, producer: str | None, group: Callable[..., Awaitable[list[Group]]]
) -> Answer:
    """Answer ``GET /api/jobs/{group_id}`` (`kind` job) or ``GET /api/hr-events/{group_id}`` (hrEvent) from
    `group` (the ledger's `Ledger.group`), `producer`'s (None: the one producer's that used the id): how many rows,
    how many ended, totals by status, the failed rows."""
    noun = "job" if kind == "job" else "HR event"
    if not is_request_id(group_id):
        return problem(400, f"invalid-{_slug(kind)}-id", f"Invalid {noun} id", _ID_RULE.replace("request", noun))
    try:
        groups = await group(kind, group_id, producer=producer)
    except TransientError:
        _log.warning("%s %s: the ledger is unavailable", noun, json.dumps(group_id), exc_info=True)
        return problem(
            503, "ledger-unavailable", f"{noun[0].upper()}{noun[1:]} unavailable", _UNAVAILABLE, retry_after=5
        )
    if len(groups) > 1:
        return _ambiguous(noun, group_id, [str(found.producer) for found in groups])
    if not groups or (not groups[0].rows and groups[0].event is None):
        return problem(404, f"unknown-{_slug(kind)}", f"Unknown {noun}", f"no request of {noun} {group_id} is recorded")
    found = groups[0]
    size = _size(found)
    rows: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    for row in sorted(found.rows, key=lambda row: row.get("jobRow") or 0):
        number, claimed = row.get("jobRow"), row.get("jobRows")
        fits = size is None or (isinstance(number, int) and 1 <= number <= size and claimed in (None, size))
        (rows if fits else rejected).append(row)
    statuses = [Status.read(row.get("status")) for row in rows]
    terminal = sum(1 for status in statuses if status is not None and status.terminal)
    document: dict[str, Any] = {
        ("jobId" if kind == "job" else "eventId"): group_id,
        "producer": found.producer,
        "kind": "bulk" if kind == "job" else "hrEvent",
        "rows": size,
        "recorded": len(rows),
        "terminal": terminal,
        "pending": None if size is None else max(size - terminal, 0),
        "done": size is not None and terminal >= size,
        "totals": dict(sorted(Counter(str(row.get("status")) for row in rows).items())),
        "succeeded": sum(1 for status in statuses if status is not None and status.succeeded),
        "failed": [record_json(record) for record in sorted(found.failed, key=lambda record: record.job_row or 0)],
    }
    if rejected:  # rows outside the size its first row fixed: never counted, so they cannot reopen or end it
        document["rejected"] = [{"requestId": r.get("requestId"), "jobRow": r.get("jobRow")} for r in rejected]
    if found.event is not None:
        document["event"] = found.event
    return Answer(200, json.dumps(document, ensure_ascii=False).encode(), "application/json")


async def history_answer(
    query: Mapping[str, str],
    *,
    producer: str | None,
    history: Callable[..., Awaitable[list[StatusRecord]]],
    viewer: str | None = None,
) -> Answer:
    """Answer ``GET /api/history`` from its `query` (``member`` or ``target``, optional ``since``) with `history`
    (the ledger's `Ledger.history`): every request that named it (only `producer`'s, when given), newest intent
    first."""
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
        found = await history(**scope, since=since, limit=HISTORY_LIMIT, producer=producer)
    except TransientError:
        _log.warning("history of %s: the ledger is unavailable", guid, exc_info=True)
        return problem(503, "ledger-unavailable", "History unavailable", _UNAVAILABLE, retry_after=5)
    document = {
        "member": scope.get("member"),
        "target": scope.get("target"),
        "since": since.isoformat() if since else None,
        "producer": producer,
        "requests": [record_json(record.seen_by(viewer)) for record in found],
    }
    return Answer(200, json.dumps(document, ensure_ascii=False).encode(), "application/json")


def _size(found: Group) -> int | None:
    """How many rows a job or HR event has, fixed when it began: an HR event's own record says; a job's first row
    (``jobRow`` 1) says, else what most of its rows say. None when nothing says."""
    if found.event is not None and isinstance(found.event.get("rows"), int):
        return int(found.event["rows"])
    first = [row["jobRows"] for row in found.rows if row.get("jobRow") == 1 and isinstance(row.get("jobRows"), int)]
    if first:
        return int(first[0])
    sizes = Counter(row["jobRows"] for row in found.rows if isinstance(row.get("jobRows"), int))
    return sizes.most_common(1)[0][0] if sizes else None


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
