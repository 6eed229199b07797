"""Microsoft Graph over one shared `httpx.AsyncClient`: bearer tokens, request ids, and Graph's errors.

`GraphClient.send` returns every HTTP answer as a `GraphResponse` and raises only for what no caller can
interpret: transport failures and timeouts (`TransientError(GraphUnavailable)`) and a `401` that a fresh
tokens did not cure (`PermanentError(Unauthorized)`). `raise_for_graph` maps the remaining failures
(403, 429, 5xx, other 4xx) to errors; handlers deal with the answers that depend on the request first.
"""

from __future__ import annotations

import copy
import json
import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final, NoReturn
from urllib.parse import quote

import httpx

from shared.adapters.governor import WriteGovernor
from shared.adapters.identity import TokenSource
from shared.core.errors import GraphAnswer, PermanentError, Reason, TransientError
from shared.core.messaging import Lane

__all__ = ["USER_AGENT", "GraphClient", "GraphResponse", "keyed", "new_http_client", "path", "raise_for_graph"]

USER_AGENT: Final = "entra-grants/0.1.0 (Azure Functions; +managed identity)"
TIMEOUT: Final = httpx.Timeout(15.0, connect=5.0, pool=30.0)
_TRANSIENT_STATUS: Final = frozenset({500, 502, 503, 504})
_WRITES: Final = frozenset({"POST", "PATCH", "PUT", "DELETE"})
#: The shared pause after a 429 that carries no Retry-After.
DEFAULT_THROTTLE_PAUSE_SECONDS: Final = 5.0
#: How often one request gets another token after a ``401`` before it is `Reason.UNAUTHORIZED`.
TOKEN_REFRESHES: Final = 2
#: ``x-ms-throttle-priority`` by lane: Graph throttles Low first and High last (it does not change the limits);
#: Microsoft recommends High only for user-initiated requests (a new hire waiting, a ticket).
THROTTLE_PRIORITY: Final[dict[Lane, str]] = {Lane.INTERACTIVE: "High", Lane.BULK: "Low"}


#: Each pool's limits. Every idle connection is kept (up to the maximum) rather than closed and opened again: httpcore
#: closes idle connections whenever the pool holds more than ``max_keepalive_connections`` in all, so a lower value
#: churns connections (a handshake each, TLS in Azure) as soon as the pool is that full.
POOL_LIMITS: Final = httpx.Limits(max_connections=64, max_keepalive_connections=64, keepalive_expiry=60.0)
#: The limits of a pool of its own (`new_http_client`'s `own_pools`, the ledger's): an idle connection is closed after
#: 4 s, before a server that keeps idle connections 5 s (Node's default, so Azurite's) closes it: a request sent on a
#: connection the server is closing at that moment fails (``ReadError``), and the ledger does not retry.
OWN_POOL_LIMITS: Final = httpx.Limits(max_connections=64, max_keepalive_connections=64, keepalive_expiry=4.0)


def new_http_client(*, own_pools: tuple[str, ...] = ()) -> httpx.AsyncClient:
    """The process's one HTTP client: explicit timeouts, keep-alive pool, our User-Agent, no redirects.

    The origin of each URL in `own_pools` (e.g. the grant ledger's table endpoint) gets a connection pool of its own
    within the client (`OWN_POOL_LIMITS`): httpcore scans every connection of a pool on each request, so Graph's
    requests never pay for the ledger's connections nor the ledger's for Graph's, and neither waits for a connection
    the other holds.
    """
    origins = {f"{url.scheme}://{url.netloc.decode('ascii')}" for url in map(httpx.URL, own_pools)}
    return httpx.AsyncClient(
        timeout=TIMEOUT,
        limits=POOL_LIMITS,
        headers={"User-Agent": USER_AGENT},
        follow_redirects=False,
        mounts={origin: httpx.AsyncHTTPTransport(limits=OWN_POOL_LIMITS) for origin in origins},
    )


def path(*segments: str) -> str:
    """Join URL path segments, percent-quoting each one (only ``$`` and ``=`` stay literal)."""
    return "/" + "/".join(quote(segment, safe="$=") for segment in segments)


def keyed(entity_set: str, key: str, value: str) -> str:
    """The path of the entity of `entity_set` whose alternate key `key` is `value`, in the form Graph's v1.0
    description gives it: ``/{entity_set}({key}='{value}')`` (e.g. ``/directoryRoles(roleTemplateId='...')``);
    `value` is percent-quoted (a GUID passes unchanged)."""
    return f"/{quote(entity_set, safe='')}({quote(key, safe='')}='{quote(value, safe='')}')"


@dataclass(frozen=True, slots=True)
class GraphResponse:
    """One answer from Graph: status, parsed JSON body (if any), the ids that trace it, and its throttling
    headers: `usage` (``x-ms-throttle-limit-percentage``), `throttle_scope` (``x-ms-throttle-scope``)."""

    status: int
    body: Mapping[str, Any] | None
    request_id: str | None
    client_request_id: str
    retry_after: float | None
    usage: float | None = None
    throttle_scope: str | None = None
    write: bool = False  # the request was a write (POST, DELETE): a 5xx leaves its outcome unknown

    @property
    def read_limit_only(self) -> bool:
        """True for a ``429`` whose ``x-ms-throttle-scope`` names Graph's read limit (``<scope>/Read/...``):
        writes are not held by it."""
        parts = (self.throttle_scope or "").split("/")
        return len(parts) > 1 and parts[1].lower() == "read"

    @property
    def error_code(self) -> str | None:
        error = (self.body or {}).get("error")
        code = error.get("code") if isinstance(error, dict) else None
        return code if isinstance(code, str) else None

    @property
    def error_message(self) -> str | None:
        error = (self.body or {}).get("error")
        message = error.get("message") if isinstance(error, dict) else None
        return message if isinstance(message, str) else None

    def answer(self) -> GraphAnswer:
        return GraphAnswer(
            status=self.status, code=self.error_code, message=self.error_message, request_id=self.request_id
        )


class GraphClient:
    """Sends requests to Graph at `base_url` (e.g. ``https://graph.microsoft.com/v1.0``).

    Writes wait for `governor` (when given) in the client's `lane` (`in_lane` gives a client for another lane,
    sharing everything else); each write's answer is reported to it (``x-ms-throttle-limit-percentage``, or a
    ``429`` and its ``Retry-After``, which pauses every writer). A read's ``429`` pauses the writers too, unless its
    ``x-ms-throttle-scope`` names the read limit alone. Reads never wait for the governor. Every request carries
    ``x-ms-throttle-priority`` for its lane.
    """

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        tokens: TokenSource,
        base_url: str,
        governor: WriteGovernor | None = None,
        new_request_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        lane: Lane = Lane.INTERACTIVE,
    ) -> None:
        self._http = http
        self._tokens = tokens
        self.base_url = base_url.rstrip("/")
        self._governor = governor
        self._new_request_id = new_request_id
        self.lane = lane

    def in_lane(self, lane: Lane) -> GraphClient:
        """This client for the work of `lane` (same connections, tokens and governor)."""
        if lane is self.lane:
            return self
        view = copy.copy(self)
        view.lane = lane
        return view

    def relative(self, next_link: object) -> str | None:
        """The path of an ``@odata.nextLink`` on this client's Graph root; None for anything else."""
        if isinstance(next_link, str) and next_link.startswith(self.base_url + "/"):
            return next_link[len(self.base_url) :]
        return None

    def directory_object_url(self, object_id: str) -> str:
        """The ``@odata.id`` of a directory object, on the same Graph root as every request."""
        return self.base_url + path("directoryObjects", object_id)

    async def send(self, method: str, url_path: str, *, json_body: Mapping[str, Any] | None = None) -> GraphResponse:
        """Send one request; on ``401`` get another token and send it again, up to `TOKEN_REFRESHES` times.

        Two, not one: the token handed out after the first ``401`` may be one another request fetched moments
        before every token was invalidated (it is cached, so it is "other" than the refused one, yet just as
        stale); refusing it too forces a token fetched after the refusal.
        """
        token = await self._tokens.token()
        response = await self._send_once(method, url_path, json_body, token)
        for _ in range(TOKEN_REFRESHES):
            if response.status != 401:
                return response
            token = await self._tokens.token(reject=token)
            response = await self._send_once(method, url_path, json_body, token)
        if response.status == 401:
            raise PermanentError(
                Reason.UNAUTHORIZED,
                f"Graph refused the managed identity's token {TOKEN_REFRESHES + 1} times (fresh tokens did not "
                f"help): {response.error_code}: {response.error_message}. Check that GRAPH_BASE_URL and the "
                "identity's tenant belong to the same cloud.",
                graph=response.answer(),
            )
        return response

    async def _send_once(
        self, method: str, url_path: str, json_body: Mapping[str, Any] | None, token: str
    ) -> GraphResponse:
        client_request_id = self._new_request_id()
        lane = self.lane
        headers = {
            "Authorization": f"Bearer {token}",
            "client-request-id": client_request_id,
            "x-ms-throttle-priority": THROTTLE_PRIORITY[lane],
        }
        write = method in _WRITES
        governor = self._governor if write else None
        if governor is not None:
            await governor.acquire(lane)
        try:
            response = await self._http.request(method, self.base_url + url_path, json=json_body, headers=headers)
        except BaseException as error:  # a timeout, a refused connection, a cancelled invocation
            if governor is not None:
                governor.unanswered()  # no longer in flight, and Graph may have counted it
            if not isinstance(error, httpx.TransportError):
                raise
            what = "did not answer" if isinstance(error, httpx.TimeoutException) else "could not be reached for"
            raise TransientError(
                Reason.GRAPH_UNAVAILABLE,
                f"Graph {what} {method} {url_path} ({type(error).__name__}); client-request-id {client_request_id}",
                uncertain=write and _sent(error),
            ) from error
        answer = GraphResponse(
            status=response.status_code,
            body=_json_body(response),
            request_id=response.headers.get("request-id"),
            client_request_id=client_request_id,
            retry_after=_retry_after(response.headers.get("retry-after")),
            usage=_usage(response.headers.get("x-ms-throttle-limit-percentage")),
            throttle_scope=response.headers.get("x-ms-throttle-scope"),
            write=write,
        )
        if governor is not None:
            if answer.status == 429:
                governor.throttled(
                    answer.retry_after if answer.retry_after is not None else DEFAULT_THROTTLE_PAUSE_SECONDS, lane
                )
            else:
                governor.admitted(answer.usage)
        elif answer.status == 429 and self._governor is not None and not answer.read_limit_only:
            self._governor.pause(
                answer.retry_after if answer.retry_after is not None else DEFAULT_THROTTLE_PAUSE_SECONDS
            )
        return answer


def raise_for_graph(response: GraphResponse, *, permission: str) -> NoReturn:
    """Raise the error for a failed answer that needs no knowledge of the request beyond `permission`."""
    answer = response.answer()
    said = f"Graph answered {response.status} {answer.code}: {answer.message}"
    if response.status == 403:
        raise PermanentError(
            Reason.FORBIDDEN,
            f"{said}. The managed identity needs the application permission {permission} "
            "(granted by a Privileged Role Administrator; see docs/deploy.md).",
            graph=answer,
        )
    if response.status == 429:
        raise TransientError(
            Reason.THROTTLED,
            f"{said}. Retry after {response.retry_after} s.",
            graph=answer,
            retry_after=response.retry_after,
        )
    if response.status in _TRANSIENT_STATUS:  # a write answered 5xx may have been applied all the same
        raise TransientError(
            Reason.GRAPH_UNAVAILABLE, said, graph=answer, retry_after=response.retry_after, uncertain=response.write
        )
    raise PermanentError(Reason.GRAPH_REJECTED, said, graph=answer)


def _sent(error: httpx.TransportError) -> bool:
    """False only when the request cannot have reached Graph (no connection was made, none was free in the pool);
    otherwise a write's outcome is unknown: it may have been applied, or may still be."""
    return not isinstance(error, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def _json_body(response: httpx.Response) -> Mapping[str, Any] | None:
    if not response.content:
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _usage(value: str | None) -> float | None:
    """The fraction of the limit used, from ``x-ms-throttle-limit-percentage`` (0.8 to 1.8); None if absent or
    unreadable."""
    if value is None:
        return None
    try:
        usage = float(value)
    except ValueError:
        return None
    return usage if math.isfinite(usage) and usage >= 0 else None


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date); None if absent or unreadable."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)
