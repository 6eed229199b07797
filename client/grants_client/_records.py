"""What the status API answers, typed: a request's status (`RequestStatus`), a job's or HR event's progress
(`GroupStatus`), and the statuses that classify an answer that does not say itself."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

__all__ = ["FAILED", "PENDING", "SUCCEEDED", "GroupStatus", "RequestStatus"]

# The statuses a request can have (docs/status-api.md), in this one place. The app's answer says itself whether a
# status is terminal and succeeded (``terminal``, ``succeeded``): these only classify an answer without them.
PENDING: Final = frozenset({"accepted", "scheduled", "in_progress", "retry_scheduled"})
SUCCEEDED: Final = frozenset(
    {"granted", "already_member", "revoked", "not_member", "would_grant", "would_revoke", "superseded", "duplicate"}
)
FAILED: Final = frozenset({"dead_lettered"})


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestStatus:
    """A request's status record as the API answered it: the fields a producer acts on, typed, and the whole
    `record` (what was asked, who asked, Graph's request id, a time-bound grant's removal…).

    `terminal` and `succeeded` are the app's own word where its answer has them, else read from `PENDING`,
    `SUCCEEDED` and `FAILED` (a status named in none of them is not terminal)."""

    request_id: str
    producer: str | None
    status: str
    terminal: bool
    succeeded: bool
    reason: str | None
    description: str | None
    attempts: int
    next_retry_at: datetime | None
    updated_at: datetime | None
    record: Mapping[str, Any]

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> RequestStatus:
        """The status a status record (a JSON object) holds."""
        status = str(document.get("status"))
        terminal, succeeded = document.get("terminal"), document.get("succeeded")
        if not isinstance(terminal, bool):
            terminal = status in SUCCEEDED or status in FAILED
        if not isinstance(succeeded, bool):
            succeeded = status in SUCCEEDED
        attempts = document.get("attempts")
        return cls(
            request_id=str(document.get("requestId")),
            producer=_text(document.get("producer")),
            status=status,
            terminal=terminal,
            succeeded=succeeded,
            reason=_text(document.get("reason")),
            description=_text(document.get("description")),
            attempts=attempts if isinstance(attempts, int) and not isinstance(attempts, bool) else 0,
            next_retry_at=_time(document.get("nextRetryAt")),
            updated_at=_time(document.get("updatedAt")),
            record=document,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupStatus:
    """A bulk job's or an HR event's progress: how many rows it has (None until known), how many ended, the
    totals by status, how many succeeded, the failed rows' statuses; `done` once every row has ended."""

    id: str
    kind: str
    producer: str | None
    rows: int | None
    terminal: int
    done: bool
    succeeded: int
    totals: Mapping[str, int]
    failed: tuple[RequestStatus, ...]
    record: Mapping[str, Any]

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> GroupStatus:
        """The progress a job or HR event answer (a JSON object) holds."""
        rows = document.get("rows")
        totals = document.get("totals")
        return cls(
            id=str(document.get("jobId", document.get("eventId"))),
            kind=str(document.get("kind")),
            producer=_text(document.get("producer")),
            rows=rows if isinstance(rows, int) else None,
            terminal=_count(document.get("terminal")),
            done=document.get("done") is True,
            succeeded=_count(document.get("succeeded")),
            totals={str(k): _count(v) for k, v in totals.items()} if isinstance(totals, dict) else {},
            failed=tuple(RequestStatus.from_json(row) for row in document.get("failed") or [] if isinstance(row, dict)),
            record=document,
        )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None
