"""The Graph double's faults: one-shot failures a test queues for the next request that matches (`Fault`)."""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from grants_local.graph_double.answers import INSUFFICIENT, TOKEN_EXPIRED

__all__ = ["HOLD_LIMIT_SECONDS", "STATUS_ERRORS", "Fault", "FaultKind"]

#: The longest a `Fault.hold` keeps its request before carrying it out anyway (real seconds).
HOLD_LIMIT_SECONDS: Final = 60.0

#: The code and message Graph answers with for a status a `Fault` injects.
STATUS_ERRORS: Final[Mapping[int, tuple[str, str]]] = {
    400: ("BadRequest", "Bad request (injected)."),
    401: ("InvalidAuthenticationToken", TOKEN_EXPIRED),
    403: ("Authorization_RequestDenied", INSUFFICIENT),
    404: ("Request_ResourceNotFound", "Resource does not exist (injected)."),
    429: ("TooManyRequests", "Please retry again later."),
    500: ("Service_InternalServerError", "Encountered an internal server error."),
    502: ("UnknownError", ""),
    503: ("serviceNotAvailable", "The service is temporarily unavailable. Please retry later."),
    504: ("UnknownError", ""),
}

FaultKind = Literal["status", "drop", "delay", "hold", "applied_then_delay", "applied_then_drop"]


@dataclass(frozen=True, slots=True)
class Fault:
    """A one-shot failure for the next request that matches `method`, `path` (a regex searched in the path
    relative to `GraphDouble.base_url`) and `body` (a regex searched in the raw request body, decoded as
    UTF-8); `None` matches anything. Build with `status`, `drop`, `delay`, `hold`, `applied_then_delay`,
    `applied_then_drop`; `wait_landed` blocks until the double has carried the matched request out (or answered
    it with the injected failure)."""

    kind: FaultKind
    status_code: int = 0
    retry_after: float | None = None
    seconds: float = 0.0
    method: str | None = None
    path: str | None = None
    body: str | None = None
    released: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)
    landed: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)

    @classmethod
    def status(
        cls,
        status: int,
        *,
        retry_after: float | None = None,
        method: str | None = None,
        path: str | None = None,
        body: str | None = None,
    ) -> Fault:
        """Answer `status` with Graph's error body for it, and ``Retry-After: ceil(retry_after)`` if given."""
        return cls("status", status_code=status, retry_after=retry_after, method=method, path=path, body=body)

    @classmethod
    def drop(cls, *, method: str | None = None, path: str | None = None, body: str | None = None) -> Fault:
        """Read the request, then close the connection without answering."""
        return cls("drop", method=method, path=path, body=body)

    @classmethod
    def delay(
        cls, seconds: float, *, method: str | None = None, path: str | None = None, body: str | None = None
    ) -> Fault:
        """Wait `seconds` (real time), then answer normally (a write is applied after the wait)."""
        return cls("delay", seconds=seconds, method=method, path=path, body=body)

    @classmethod
    def hold(cls, *, method: str | None = None, path: str | None = None, body: str | None = None) -> Fault:
        """Keep the request, unanswered and not carried out, until `release` (or `HOLD_LIMIT_SECONDS`, or
        `GraphDouble.close`); then carry it out and answer. A write whose client gave up meanwhile lands late."""
        return cls("hold", method=method, path=path, body=body)

    @classmethod
    def applied_then_delay(
        cls, seconds: float, *, method: str | None = None, path: str | None = None, body: str | None = None
    ) -> Fault:
        """Carry the request out at once (a write lands), then wait `seconds` (real time) before answering: a
        client whose timeout is shorter gives up on a write that was made."""
        return cls("applied_then_delay", seconds=seconds, method=method, path=path, body=body)

    @classmethod
    def applied_then_drop(cls, *, method: str | None = None, path: str | None = None, body: str | None = None) -> Fault:
        """Carry the request out (a write lands), then close the connection without answering."""
        return cls("applied_then_drop", method=method, path=path, body=body)

    def release(self) -> None:
        """Let a `hold` fault's request go on (nothing happens for other kinds)."""
        self.released.set()

    def wait_landed(self, timeout: float = 10.0) -> bool:
        """Block until the matched request was carried out or answered with the failure; False after `timeout`."""
        return self.landed.wait(timeout)

    def matches(self, method: str, path: str, body: bytes = b"") -> bool:
        return (
            (self.method is None or self.method.upper() == method)
            and (self.path is None or re.search(self.path, path) is not None)
            and (self.body is None or re.search(self.body, body.decode("utf-8", "replace")) is not None)
        )
