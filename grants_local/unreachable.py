"""Loopback endpoints for failure tests: a port that refuses connections, one that accepts them and never answers,
and a credential whose token nothing checks. Only 127.0.0.1 is ever used."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from azure.core.credentials import AccessToken

__all__ = ["StaticToken", "refusing_port", "stalling_port"]


class StaticToken:
    """An async credential with a token that never expires (nothing here checks it)."""

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("local-token", int(time.time()) + 3600)

    async def close(self) -> None:
        return None


@contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port with nothing listening on it (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    yield port


@contextmanager
def stalling_port(accepted: threading.Event | None = None) -> Iterator[int]:
    """A loopback port that accepts connections and never sends a byte; `accepted` is set at the first one."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    connections: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                continue
            connections.append(connection)
            if accepted is not None:
                accepted.set()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        for connection in connections:
            connection.close()
        server.close()
