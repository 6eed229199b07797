"""The operator CLI's `Backend` on a running ``serve-local`` (``submit --serve-local``): a job sent there is
carried out by the app serve-local runs, with its ledger, so ``grants job <id> --serve-local --watch`` follows it.

Batches of at most ``serve-local``'s `MAX_BATCH` go to ``POST /local/queues/{queue}/messages`` on loopback. Only
sending is offered: serve-local's dead letters are its outcome lines and the status API's failed rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TextIO
from urllib.parse import quote

import httpx

from grants_common.queues import HeldDeadLetter, Outgoing, SendReport
from grants_local.serve import MAX_BATCH
from shared.core.errors import ConfigError
from shared.core.messaging import DeadLetter

__all__ = ["ServeLocalBackend", "open_serve_local_backend"]


@contextmanager
def open_serve_local_backend(queue: str, *, port: int) -> Iterator[ServeLocalBackend]:
    """The backend on `queue` of the serve-local listening on 127.0.0.1:`port` (`ConfigError` if none answers)."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, trust_env=False) as http:
        yield ServeLocalBackend(http, queue=queue, port=port)


class ServeLocalBackend:
    """Sends to a running serve-local's queue; see the module docstring."""

    def __init__(self, http: httpx.Client, *, queue: str, port: int) -> None:
        self._http = http
        self._path = f"/local/queues/{quote(queue, safe='')}/messages"
        self._port = port

    def send_batches(self, messages: Sequence[Outgoing], *, progress: Callable[[int], None]) -> SendReport:
        duplicates = batches = 0
        for start in range(0, len(messages), MAX_BATCH):
            duplicates += self._post(messages[start : start + MAX_BATCH])
            batches += 1
            progress(min(start + MAX_BATCH, len(messages)))
        return SendReport(sent=len(messages), batches=batches, duplicates=duplicates)

    def send(self, message: Outgoing) -> None:
        self._post([message])

    def peek_dead_letters(self) -> list[DeadLetter]:
        raise ConfigError(_SEND_ONLY)

    def lock_next_dead_letter(self) -> HeldDeadLetter | None:
        raise ConfigError(_SEND_ONLY)

    def complete(self, held: HeldDeadLetter) -> None:
        raise ConfigError(_SEND_ONLY)

    def abandon(self, held: HeldDeadLetter) -> None:
        raise ConfigError(_SEND_ONLY)

    def drain(self, out: TextIO) -> None:
        """Nothing to do here: serve-local carries the job out itself."""

    def follow(self, job_id: str) -> str:
        return f"grants job {job_id} --serve-local --port {self._port} --watch"

    def close(self) -> None:
        self._http.close()

    def _post(self, messages: Sequence[Outgoing]) -> int:
        """Send one batch; how many duplicate detection dropped."""
        batch = [
            {
                "body": message.body.decode(),
                "messageId": message.message_id,
                "applicationProperties": dict(message.application_properties),
            }
            for message in messages
        ]
        try:
            response = self._http.post(
                self._path, content=json.dumps(batch), headers={"Content-Type": "application/json"}
            )
        except httpx.HTTPError as error:
            raise ConfigError(
                f"no serve-local answers on 127.0.0.1:{self._port}: start it in another terminal with "
                f"`.venv/bin/grants serve-local --port {self._port}` (or give the --port it runs on)"
            ) from error
        if response.status_code != 202:
            raise ConfigError(f"serve-local refused the batch: {response.status_code} {response.text[:300]}")
        return int(response.json().get("duplicates", 0))


_SEND_ONLY = "serve-local takes messages only: its dead letters are the status API's failed rows (grants job --failed)"
