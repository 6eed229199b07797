"""The small HTTP/1.1 keep-alive server both local doubles run on.

`LoopbackServer` is stdlib ``ThreadingHTTPServer`` on 127.0.0.1 with an ephemeral port and one daemon
thread per connection. Each request is handed to an app callable, ``(Request) -> Response | None``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["App", "LoopbackServer", "Request", "Response"]


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed HTTP request: method, percent-decoded path, query parameters, headers and raw body."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Message
    body: bytes


@dataclass(frozen=True, slots=True)
class Response:
    """One HTTP answer; `json_body` is serialised with ``Content-Type: <content_type>``."""

    status: int
    json_body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = "application/json"

    def encoded(self) -> bytes:
        return b"" if self.json_body is None else json.dumps(self.json_body).encode()


#: What a double answers a request with; `None` closes the connection without answering.
App = Callable[[Request], Response | None]


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
        request = Request(self.command, unquote(url.path), dict(parse_qsl(url.query)), self.headers, body)
        server = cast(LoopbackServer, self.server)
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
            lines.append(f"Content-Type: {response.content_type}")
        if response.status != 204:
            lines.append(f"Content-Length: {len(payload)}")
        # Head and body in one write: one segment per answer, no waiting on the peer's delayed ACK.
        self.wfile.write("\r\n".join([*lines, "", ""]).encode("latin-1") + payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: the doubles keep their own request logs."""


class LoopbackServer(ThreadingHTTPServer):
    """Serves `app` on 127.0.0.1 (an ephemeral port unless `port` is given) from a daemon thread until `close`."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # the default 5 drops SYNs when dozens of clients connect at once (1 s retransmit)

    def __init__(self, app: App, *, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
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
