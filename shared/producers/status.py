"""The request status API (``GET /api/grants/{requestId}``): what the ledger records about one request.

- a request id the contract would not accept (`is_request_id`: 1-128 of ``A-Z a-z 0-9 . _ : @ -``) answers
  ``400`` problem details and is never looked up;
- an id with no status answers ``404`` problem details (RFC 9457, as the webhook's);
- a ledger that fails answers ``503`` with ``Retry-After``;
- otherwise ``200`` with the status record as JSON (`shared.service.settlement.status_record`, or the webhook's
  `accepted_record`): ``status`` (accepted, granted, already_member, revoked, not_member, would_grant,
  would_revoke, superseded, duplicate, dead_lettered), ``reason``, ``description``, ``attempts``,
  ``lastAttemptAt``, ``graphRequestId``, ``sourceSystem``, ``sourceReference``, ``requestedBy``, ``jobId``,
  ``action``, the target and member, ``requestedAt``, ``expiresAt``, ``acceptedAt`` and ``updatedAt``.

``GET /api/jobs/{jobId}`` (`job_answer`) answers a bulk job's totals by status and its failed rows, by one query
on the status rows' ``jobId``: ``requests`` (rows with a status), ``totals`` by status, ``succeeded`` and the
``failed`` rows' records. A bulk row gets its status when it ends (bulk messages go to the queue directly, with no
``accepted`` step), so rows still queued are not counted: ``requests`` below the job's row count (``submit``
prints it) means the job is still running.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Final

from shared.core.contract import is_request_id
from shared.core.errors import TransientError
from shared.producers.webhook import PROBLEM_TYPE, Answer

__all__ = ["FAILED", "SUCCEEDED", "job_answer", "status_answer"]

#: Terminal statuses that mean the request got what it asked (or that nothing was needed).
SUCCEEDED: Final = frozenset(
    {"granted", "already_member", "revoked", "not_member", "would_grant", "would_revoke", "superseded", "duplicate"}
)
FAILED: Final = frozenset({"dead_lettered"})
_log = logging.getLogger(__name__)


async def status_answer(request_id: str, *, status: Callable[[str], Awaitable[dict[str, Any] | None]]) -> Answer:
    """Answer ``GET /api/grants/{request_id}`` from `status` (the ledger's `Ledger.status`)."""
    if not is_request_id(request_id):
        return _problem(400, "invalid-request-id", "Invalid request id", _ID_RULE)
    try:
        record = await status(request_id)
    except TransientError:
        _log.warning("status of %s: the ledger is unavailable", json.dumps(request_id), exc_info=True)
        return _problem(503, "ledger-unavailable", "Status unavailable", "the grant ledger is unavailable now", 5)
    if record is None:
        return _problem(404, "unknown-request", "Unknown request", f"no request {request_id} is recorded")
    return Answer(200, json.dumps(record, ensure_ascii=False).encode(), "application/json")


async def job_answer(job_id: str, *, rows: Callable[[str], Awaitable[list[dict[str, Any]]]]) -> Answer:
    """Answer ``GET /api/jobs/{job_id}`` from `rows` (the ledger's `Ledger.job`): totals by status, failed rows."""
    if not is_request_id(job_id):
        return _problem(400, "invalid-job-id", "Invalid job id", _ID_RULE.replace("request", "job"))
    try:
        found = await rows(job_id)
    except TransientError:
        _log.warning("job %s: the ledger is unavailable", json.dumps(job_id), exc_info=True)
        return _problem(503, "ledger-unavailable", "Job unavailable", "the grant ledger is unavailable now", 5)
    if not found:
        return _problem(404, "unknown-job", "Unknown job", f"no request of job {job_id} is recorded")
    totals = Counter(str(row.get("status")) for row in found)
    failed = [row for row in found if row.get("status") in FAILED]
    document = {
        "jobId": job_id,
        "requests": len(found),
        "totals": dict(sorted(totals.items())),
        "succeeded": sum(1 for row in found if row.get("status") in SUCCEEDED),
        "failed": failed,
    }
    return Answer(200, json.dumps(document, ensure_ascii=False).encode(), "application/json")


_ID_RULE: Final = "a request id is 1 to 128 of A-Z a-z 0-9 . _ : @ -, starting with a letter or digit"


def _problem(status: int, kind: str, title: str, detail: str, retry_after: int | None = None) -> Answer:
    document = {"type": PROBLEM_TYPE + kind, "title": title, "status": status, "detail": detail}
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return Answer(status, json.dumps(document).encode(), "application/problem+json", headers)
