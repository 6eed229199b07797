"""A local App Service managed-identity token endpoint, for the real azure-identity credential to talk to.

`TokenEndpoint` serves the protocol of api-version 2019-08-01 on ``http://127.0.0.1:PORT/msi/token``:
``GET {IDENTITY_ENDPOINT}?resource=R&api-version=2019-08-01[&client_id=C]`` with the header
``X-IDENTITY-HEADER: {IDENTITY_HEADER}`` answers ``200`` with ``access_token`` (opaque, random),
``expires_on`` (epoch seconds as a string), ``resource`` (echoed: azure-identity caches by it),
``token_type`` (``Bearer``) and ``client_id``. azure-identity 1.27 picks its App Service path when
``IDENTITY_ENDPOINT`` and ``IDENTITY_HEADER`` are set and ``IDENTITY_SERVER_THUMBPRINT`` is not (that one
means Service Fabric); `TokenEndpoint.env` gives exactly the two variables.

Failures: a missing or wrong header answers ``401``; a missing ``resource``, another ``api-version`` or a
``client_id`` other than the configured one answers ``400``; another path ``404``. Error bodies are
``{"statusCode": N, "message": ..., "correlationId": uuid}``.

Issued tokens are remembered with their resource and expiry on the injectable ``clock`` (monotonic by
default), so `TokenEndpoint.is_valid` can serve as the Graph double's token check; `expire_all` invalidates
every token issued so far. ``expires_on`` itself is wall-clock time (azure-identity compares it with
``time.time()``).

It runs on `grants_local._http.LoopbackServer`, like the Graph double.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Final

from grants_local._http import LoopbackServer, Request, Response

__all__ = ["API_VERSION", "TokenEndpoint"]

#: The App Service managed-identity protocol version this endpoint speaks.
API_VERSION: Final = "2019-08-01"
_ENDPOINT_PATH: Final = "/msi/token"


# --- the token endpoint ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Grant:
    resource: str
    expires_at: float  # on the endpoint's clock


class TokenEndpoint:
    """A local App Service managed-identity endpoint. Use as a context manager or call `close`.

    `client_id` is the user-assigned identity's client id: a request naming another one answers ``400``.
    A request without ``client_id`` gets a token for the (system-assigned) identity, reported with
    `client_id` or a fixed random id. Tokens live `token_lifetime` seconds on `clock`.
    """

    def __init__(
        self,
        *,
        client_id: str | None = None,
        token_lifetime: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client_id = client_id
        self._system_client_id = str(uuid.uuid4())
        self._token_lifetime = token_lifetime
        self._clock = clock
        self._secret = secrets.token_urlsafe(24)
        self._lock = threading.Lock()
        self._grants: dict[str, _Grant] = {}
        self._request_count = 0
        self._failures: list[int] = []
        #: Seconds every answer waits before it is sent (a slow endpoint).
        self.delay_seconds = 0.0
        self._server = LoopbackServer(self._answer)

    @property
    def url(self) -> str:
        """The ``IDENTITY_ENDPOINT`` value."""
        return f"http://127.0.0.1:{self._server.port}{_ENDPOINT_PATH}"

    @property
    def header_secret(self) -> str:
        """The ``IDENTITY_HEADER`` value (sent back as ``X-IDENTITY-HEADER``)."""
        return self._secret

    def env(self) -> dict[str, str]:
        """The environment variables that point azure-identity's App Service path at this endpoint."""
        return {"IDENTITY_ENDPOINT": self.url, "IDENTITY_HEADER": self._secret}

    @property
    def request_count(self) -> int:
        """Requests received so far, answered or failed."""
        with self._lock:
            return self._request_count

    @property
    def connections_opened(self) -> int:
        """TCP connections accepted so far."""
        return self._server.connections_opened

    def fail_next(self, n: int = 1, *, status: int = 500) -> None:
        """Answer the next `n` requests with `status` and an error body (briefly unavailable)."""
        with self._lock:
            self._failures.extend([status] * n)

    def expire_all(self) -> None:
        """Make every token issued so far invalid."""
        with self._lock:
            self._grants.clear()

    @property
    def issued_tokens(self) -> list[str]:
        """Every access token this endpoint has issued (for tests that prove no token reaches a log)."""
        with self._lock:
            return list(self._grants)

    def is_valid(self, token: str, resource: str) -> bool:
        """True if this endpoint issued `token` for `resource` and it has not expired (on `clock`)."""
        with self._lock:
            grant = self._grants.get(token)
        return grant is not None and grant.resource == resource and self._clock() < grant.expires_at

    def close(self) -> None:
        """Stop serving and close every connection. Idempotent."""
        self._server.close()

    def __enter__(self) -> TokenEndpoint:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _answer(self, request: Request) -> Response:
        with self._lock:
            self._request_count += 1
            failure = self._failures.pop(0) if self._failures else None
        if self.delay_seconds:
            time.sleep(self.delay_seconds)
        if failure is not None:
            return _error(failure, "The managed identity endpoint is temporarily unavailable (injected).")
        if request.path.rstrip("/").lower() != _ENDPOINT_PATH:
            return _error(404, f"No managed identity endpoint at {request.path}.")
        if request.method != "GET":
            return _error(405, f"Method {request.method} is not allowed; use GET.")
        if not secrets.compare_digest(request.headers.get("X-IDENTITY-HEADER", "").encode(), self._secret.encode()):
            return _error(401, "Unauthorized: the X-IDENTITY-HEADER header is missing or wrong.")
        if request.query.get("api-version") != API_VERSION:
            return _error(400, f"Unsupported api-version {request.query.get('api-version')!r}; use {API_VERSION}.")
        resource = request.query.get("resource")
        if not resource:
            return _error(400, "The resource parameter is required.")
        client_id = request.query.get("client_id")
        if client_id is not None and client_id != self._client_id:
            return _error(400, f"No managed identity with client_id {client_id} is assigned to this app.")
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._grants[token] = _Grant(resource, self._clock() + self._token_lifetime)
        body = {
            "access_token": token,
            "expires_on": str(int(time.time() + self._token_lifetime)),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": client_id or self._client_id or self._system_client_id,
        }
        return Response(200, body)


def _error(status: int, message: str) -> Response:
    return Response(status, {"statusCode": status, "message": message, "correlationId": str(uuid.uuid4())})
