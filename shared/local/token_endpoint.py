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

The module also holds the small HTTP/1.1 keep-alive server both local doubles run on (`_LoopbackServer`):
stdlib ``ThreadingHTTPServer`` on 127.0.0.1, an ephemeral port, one daemon thread per connection.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final, cast
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["API_VERSION", "TokenEndpoint"]

#: The App Service managed-identity protocol version this endpoint speaks.
API_VERSION: Final = "2019-08-01"
_ENDPOINT_PATH: Final = "/msi/token"


# --- the HTTP server both doubles run on -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Request:
    """One parsed HTTP request: method, percent-decoded path, query parameters, headers and raw body."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Message
    body: bytes


@dataclass(frozen=True, slots=True)
class _Response:
    """One HTTP answer; `json_body` is serialised with ``Content-Type: application/json``."""

    status: int
    json_body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def encoded(self) -> bytes:
        return b"" if self.json_body is None else json.dumps(self.json_body).encode()


#: What a double answers a request with; `None` closes the connection without answering.
_App = Callable[[_Request], _Response | None]


class _Handler(BaseHTTPRequestHandler):
    """Reads requests off a keep-alive connection and writes the app's answers (always with a length)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 120.0  # an idle keep-alive connection is closed after this many seconds

    def handle_one_request(self) -> None:
        try:
            self.raw_requestline = self.rfile.readline(65537)
        except OSError:  # the peer or close() shut the socket
            self.close_connection = True
            return
        if not self.raw_requestline:
            self.close_connection = True
            return
        if not self.parse_request():
            return
        if self.headers.get("Transfer-Encoding"):
            self.send_error(411, "Length Required: send Content-Length")
            self.close_connection = True
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        url = urlsplit(self.path)
        request = _Request(self.command, unquote(url.path), dict(parse_qsl(url.query)), self.headers, body)
        server = cast(_LoopbackServer, self.server)
        response = server.app(request)
        if response is None:
            self.close_connection = True
            return
        payload = response.encoded()
        lines = [
            f"{self.protocol_version} {response.status} {self.responses.get(response.status, ('',))[0]}",
            f"Date: {self.date_time_string()}",
            *(f"{name}: {value}" for name, value in response.headers.items()),
        ]
        if payload:
            lines.append("Content-Type: application/json")
        if response.status != 204:
            lines.append(f"Content-Length: {len(payload)}")
        # Head and body in one write: one segment per answer, no waiting on the peer's delayed ACK.
        self.wfile.write("\r\n".join([*lines, "", ""]).encode("latin-1") + payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: the doubles keep their own request logs."""


class _LoopbackServer(ThreadingHTTPServer):
    """Serves `app` on 127.0.0.1 (ephemeral port) from a daemon thread until `close`."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # the default 5 drops SYNs when dozens of clients connect at once (1 s retransmit)

    def __init__(self, app: _App) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.app = app
        self.connections_opened = 0
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept_forever, name="loopback-double", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def _accept_forever(self) -> None:
        """Accept connections (each served by its own thread) until `close` shuts the listening socket."""
        while True:
            try:
                connection, address = self.get_request()
            except OSError:
                return
            self.process_request(connection, address)

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        with self._connections_lock:
            self.connections_opened += 1
            self._connections.add(connection)
        return connection, address

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore connections that break (the client gave up, or `close` shut them); report anything else."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def close(self) -> None:
        """Stop accepting, shut every open connection and release the port. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self.socket.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() at once
        self._thread.join()
        self.server_close()
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by its handler
                connection.shutdown(socket.SHUT_RDWR)


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
        self._server = _LoopbackServer(self._answer)

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

    def _answer(self, request: _Request) -> _Response:
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
        return _Response(200, body)


def _error(status: int, message: str) -> _Response:
    return _Response(status, {"statusCode": status, "message": message, "correlationId": str(uuid.uuid4())})
