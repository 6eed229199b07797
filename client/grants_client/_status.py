"""The app's status API: a request's status (``GET /api/grants/{requestId}``), a bulk job's and an HR event's
(``GET /api/jobs/{jobId}``, ``/api/hr-events/{eventId}``), read once or followed until they end."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import quote, urlsplit

import httpx

from grants_client import _http
from grants_client._errors import ConfigError, InvalidRequest, NotFound, Problem, TimedOut, Unavailable
from grants_client._local import LOCAL_PORT, local_url
from grants_client._message import is_request_id
from grants_client._tokens import EntraToken, TokenSource, local_token

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

__all__ = ["FAILED", "PENDING", "SUCCEEDED", "GroupStatus", "RequestStatus", "StatusApi"]

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


_Followed = TypeVar("_Followed", RequestStatus, GroupStatus)


class StatusApi:
    """Reads the app's status API at `url` (``https://<app>.azurewebsites.net``) with a bearer token from `token`;
    build it with `azure` or `serve_local`. A producer reads its own requests, jobs and HR events (``403`` for
    another's: `NotAuthorized`).

    Following (`wait`, `wait_job`, `wait_hr_event`) polls with bounded exponential backoff and jitter: the n-th
    wait is ``min(max_interval, interval * 2**n)`` seconds times a random factor in [0.5, 1], or the app's
    ``Retry-After`` when it answered ``503`` (the ledger unavailable); ``interval=0`` polls without waiting (tests).
    Use as a context manager, or call `close`."""

    def __init__(self, *, url: str, token: TokenSource, timeout: float = 30.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("the status API URL must be the app's, e.g. https://<app>.azurewebsites.net")
        if parts.scheme == "http" and not _http.is_loopback(url):
            raise ConfigError(f"the status API URL must be https (plain http only to a loopback serve-local): {url}")
        self._url = url.rstrip("/")
        self._token = token
        self._http = _http.client(base_url=self._url, timeout=timeout)

    @classmethod
    def azure(cls, *, url: str, scope: str, credential: TokenCredential) -> StatusApi:
        """The API of the function app at `url`, with Entra tokens for `scope` (``api://<API_CLIENT_ID>/.default``,
        the API's app registration) from `credential` (``DefaultAzureCredential()``)."""
        return cls(url=url, token=EntraToken(credential=credential, scope=scope))

    @classmethod
    def serve_local(cls, *, producer: str, port: int = LOCAL_PORT) -> StatusApi:
        """The API of a serve-local on 127.0.0.1:`port`, asked as `producer` with its published local token
        (``local:<producer>``; ``reader`` and ``operator`` read every producer's)."""
        return cls(url=local_url(port), token=local_token(producer))

    def status(self, request_id: str, *, producer: str | None = None) -> RequestStatus:
        """`request_id`'s status now (`producer`: whose request, for a reader where two producers used the id).
        Raises `NotFound` when nothing is recorded (yet: a queued request is recorded once the app takes it up),
        `InvalidRequest` for an id no request can have (nothing sent), `NotAuthorized`, `Unavailable`."""
        return RequestStatus.from_json(self._get("/api/grants/", request_id, producer))

    def job(self, job_id: str, *, producer: str | None = None) -> GroupStatus:
        """Bulk job `job_id`'s progress (raises as `status` does)."""
        return GroupStatus.from_json(self._get("/api/jobs/", job_id, producer))

    def hr_event(self, event_id: str, *, producer: str | None = None) -> GroupStatus:
        """HR event `event_id`'s progress (raises as `status` does)."""
        return GroupStatus.from_json(self._get("/api/hr-events/", event_id, producer))

    def wait(
        self, request_id: str, *, timeout: float, interval: float = 0.5, max_interval: float = 5.0
    ) -> RequestStatus:
        """Poll `request_id`'s status until it is terminal, and return it (succeeded or not: see
        `RequestStatus.succeeded`). Not recorded yet (``404``) and `Unavailable` (no answer, ``503``) are waited
        out. Raises `TimedOut` (with the last status read, and the last reason it waited) after `timeout` seconds,
        and what `status` raises otherwise (`NotAuthorized`, `InvalidRequest`)."""
        return self._follow(
            lambda: self.status(request_id),
            f"request {request_id}",
            timeout=timeout,
            interval=interval,
            cap=max_interval,
        )

    def wait_job(self, job_id: str, *, timeout: float, interval: float = 0.5, max_interval: float = 5.0) -> GroupStatus:
        """Poll bulk job `job_id` until every row has ended (`GroupStatus.done`); raises as `wait` does."""
        return self._follow(
            lambda: self.job(job_id), f"job {job_id}", timeout=timeout, interval=interval, cap=max_interval
        )

    def wait_hr_event(
        self, event_id: str, *, timeout: float, interval: float = 0.5, max_interval: float = 5.0
    ) -> GroupStatus:
        """Poll HR event `event_id` until every row has ended; raises as `wait` does."""
        return self._follow(
            lambda: self.hr_event(event_id),
            f"HR event {event_id}",
            timeout=timeout,
            interval=interval,
            cap=max_interval,
        )

    def close(self) -> None:
        """Close the HTTP client."""
        self._http.close()

    def __enter__(self) -> StatusApi:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _follow(
        self, read: Callable[[], _Followed], name: str, *, timeout: float, interval: float, cap: float
    ) -> _Followed:
        deadline = time.monotonic() + timeout
        last: _Followed | None = None
        said = "nothing recorded yet"
        attempt = 0
        while True:
            retry_after = None
            try:
                last = read()
            except NotFound:
                said = "nothing recorded yet"
            except Unavailable as error:
                said, retry_after = str(error), error.retry_after
            else:
                if isinstance(last, RequestStatus):
                    if last.terminal:
                        return last
                    said = f"still {last.status}"
                else:
                    if last.done:
                        return last
                    said = f"{last.terminal} of {last.rows if last.rows is not None else '?'} rows ended"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimedOut(f"{name} had not ended after {timeout:g} s ({said})", last=last)
            delay = min(cap, interval * 2 ** min(attempt, 30)) * random.uniform(0.5, 1.0)  # noqa: S311 (jitter)
            time.sleep(min(retry_after if retry_after is not None else delay, remaining))
            attempt += 1

    def _get(self, route: str, name: str, producer: str | None) -> Mapping[str, Any]:
        if not isinstance(name, str) or not is_request_id(name):
            raise InvalidRequest(
                f"{name!r} is not an id the app gives (1 to 128 of A-Z a-z 0-9 . _ : @ -): nothing was asked",
                problems=[Problem("", "not an id")],
            )
        params = {"producer": producer} if producer is not None else None
        try:
            response = self._http.get(route + quote(name, safe="@"), params=params, headers=self._headers())
        except httpx.HTTPError as error:
            raise _http.unreachable(self._url, error) from error
        if response.status_code != 200:
            raise _http.refusal(response, what="the status API")
        document = _http.json_of(response)
        if not isinstance(document, dict):
            raise Unavailable(f"the status API answered something that is not a JSON object at {route}{name}")
        return document

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token()}", "Accept": "application/json"}


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
