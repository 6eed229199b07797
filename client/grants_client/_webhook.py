"""The app's webhook, ``POST /api/grants``: a grant request sent as one producer, signed (or with a bearer token)."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Final
from urllib.parse import urljoin, urlsplit

import httpx

from grants_client import _http
from grants_client._errors import ConfigError
from grants_client._local import LOCAL_PORT, LOCAL_WEBHOOK_SECRET, local_url
from grants_client._message import GrantRequest
from grants_client._tokens import TokenSource

__all__ = [
    "PRODUCER_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "Accepted",
    "Webhook",
    "WebhookAnswer",
    "sign",
]

SIGNATURE_HEADER: Final = "X-Grants-Signature"
TIMESTAMP_HEADER: Final = "X-Grants-Timestamp"
#: Names the producer whose secret signed the request (the app needs it once several producers sign).
PRODUCER_HEADER: Final = "X-Grants-Producer"
#: The shortest secret the app accepts (characters).
MIN_SECRET_CHARS: Final = 32
WEBHOOK_PATH: Final = "/api/grants"


def sign(*, secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Grants-Signature`` value for `body` sent at `timestamp` (unix seconds, the ``X-Grants-Timestamp``
    header): ``sha256=`` and the lower-case hex HMAC-SHA256 of ``<timestamp>.<body>`` under `secret`."""
    digest = hmac.new(secret.encode(), str(timestamp).encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Accepted:
    """The webhook queued the request (``202``): its id, the producer the app took it from, and where its status
    is (`StatusApi.status` reads it)."""

    request_id: str
    producer: str
    status_url: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookAnswer:
    """What the webhook answered a `Webhook.post`: status code, media type and text, as received."""

    status: int
    content_type: str | None
    text: str


class Webhook:
    """Sends grant requests to the webhook at `url` as one producer: signed with its `secret` (``X-Grants-Timestamp``
    and ``X-Grants-Signature``, ``X-Grants-Producer`` naming `producer` when given: the app needs it once several
    producers sign), or, instead of a secret, with a bearer `token` for an Entra principal the producer registry
    lists for it. `clock` gives the signing time (unix seconds): the app takes a request signed in the last 300 s.

    Plain http is refused except to a loopback address (serve-local). Use as a context manager, or call `close`.
    """

    def __init__(
        self,
        *,
        url: str,
        secret: str | None = None,
        producer: str | None = None,
        token: TokenSource | None = None,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"the webhook URL must be an https URL, e.g. https://<app>.azurewebsites.net{WEBHOOK_PATH}"
            )
        if parts.scheme == "http" and not _http.is_loopback(url):
            raise ConfigError(f"the webhook URL must be https (plain http only to a loopback serve-local): {url}")
        if (secret is None) == (token is None):
            raise ConfigError("give the webhook either the producer's signing secret or a token source, not both")
        if secret is not None and len(secret) < MIN_SECRET_CHARS:
            raise ConfigError(f"a signing secret has at least {MIN_SECRET_CHARS} characters (its length is not shown)")
        self._url = url
        self._secret = secret
        self._producer = producer
        self._token = token
        self._clock = clock
        self._http = _http.client(base_url=_http.base_of(url), timeout=timeout)

    @classmethod
    def serve_local(
        cls, *, port: int = LOCAL_PORT, secret: str = LOCAL_WEBHOOK_SECRET, producer: str | None = None
    ) -> Webhook:
        """The webhook of a serve-local on 127.0.0.1:`port`, signed with its published local secret (the producer
        ``ticketing``'s) unless `secret` is another."""
        return cls(url=local_url(port) + WEBHOOK_PATH, secret=secret, producer=producer)

    def send(self, request: GrantRequest) -> Accepted:
        """Send `request` (already validated: `GrantRequest`); return `Accepted` once the app has queued it.

        Raises `InvalidRequest` (the app refused a field: ``400``; its `problems` name them), `RequestIdConflict`
        (``409``), `NotAuthorized` (``401``: signature, timestamp or producer not accepted), `Unavailable` (no
        answer, or ``503``: send it again, after `Unavailable.retry_after` seconds when given)."""
        response = self._post(request.body)
        if response.status_code != 202:
            raise _http.refusal(response, what="the webhook")
        document = _http.json_of(response)
        if not isinstance(document, dict):
            document = {}
        location = response.headers.get("Location")
        return Accepted(
            request_id=str(document.get("requestId", request.request_id)),
            producer=str(document.get("producer", self._producer or "")),
            status_url=urljoin(self._url, location) if location else None,
        )

    def post(self, *, body: bytes) -> WebhookAnswer:
        """Sign and POST `body` as it is (a v1 message or a ticket payload, not validated here); return what the
        webhook answered, whatever it was. Raises `Unavailable` only when nothing answered."""
        response = self._post(body)
        return WebhookAnswer(
            status=response.status_code, content_type=response.headers.get("content-type"), text=response.text
        )

    def close(self) -> None:
        """Close the HTTP client."""
        self._http.close()

    def __enter__(self) -> Webhook:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _post(self, body: bytes) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        if self._secret is not None:
            timestamp = int(self._clock())
            headers[TIMESTAMP_HEADER] = str(timestamp)
            headers[SIGNATURE_HEADER] = sign(secret=self._secret, timestamp=timestamp, body=body)
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token()}"
        if self._producer is not None:
            headers[PRODUCER_HEADER] = self._producer
        try:
            return self._http.post(self._url, content=body, headers=headers)
        except httpx.HTTPError as error:
            raise _http.unreachable(self._url, error) from error
