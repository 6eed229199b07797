"""App tokens for Graph from the managed identity, fetched once and shared by every caller in the process.

The credential is azure-identity's `ManagedIdentityCredential` (user-assigned when a client id is given).
It runs over `HttpxTransport`, an azure-core transport on the process's one `httpx.AsyncClient`, instead
of azure-core's default aiohttp transport: one HTTP stack and connection pool, no aiohttp dependency
(about 2 MB and 0.15 s of import), and token requests are rare (one an hour or so), so nothing is lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Protocol

import httpx
from azure.core.exceptions import ServiceRequestError, ServiceResponseError
from azure.core.pipeline.transport import AsyncHttpTransport
from azure.core.rest import HttpRequest
from azure.core.rest._http_response_impl_async import AsyncHttpResponseImpl
from azure.core.utils import CaseInsensitiveDict

from shared.core.errors import Reason, TransientError

if TYPE_CHECKING:
    from azure.core.credentials import AccessTokenInfo
    from azure.identity.aio import ManagedIdentityCredential

__all__ = ["HttpxTransport", "ManagedIdentityTokens", "TokenSource", "managed_identity_credential"]

#: Fetch a new token when the cached one has less than this many seconds left.
REFRESH_MARGIN_SECONDS = 300.0
#: Any non-empty claims make azure-identity bypass its token cache (used after Graph answered 401).
_BYPASS_CACHE_CLAIMS = '{"access_token":{}}'


class TokenSource(Protocol):
    """Where the Graph client gets its bearer token."""

    async def token(self, *, reject: str | None = None) -> str:
        """Return a valid access token; with `reject`, one other than that (Graph refused it)."""
        ...


class _TokenCredential(Protocol):
    async def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo: ...


class ManagedIdentityTokens:
    """A `TokenSource` over an async azure-identity credential for one scope.

    The token is cached here until `REFRESH_MARGIN_SECONDS` before it expires; concurrent callers that
    find no fresh token wait for one fetch instead of each fetching their own. Failures to get a token
    raise `TransientError(TokenUnavailable)`.
    """

    def __init__(self, credential: _TokenCredential, *, scope: str, clock: Callable[[], float] = time.time) -> None:
        self._credential = credential
        self._scope = scope
        self._clock = clock
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._expires_on = 0.0

    async def token(self, *, reject: str | None = None) -> str:
        if self._fresh(reject):
            assert self._token is not None
            return self._token
        async with self._lock:
            if self._fresh(reject):  # another caller fetched it while we waited
                assert self._token is not None
                return self._token
            options: dict[str, Any] = {"claims": _BYPASS_CACHE_CLAIMS} if reject is not None else {}
            try:
                info = await self._credential.get_token_info(self._scope, options=options or None)
            except Exception as error:  # azure-identity raises several types; all mean "no token now"
                raise TransientError(
                    Reason.TOKEN_UNAVAILABLE,
                    f"the managed identity could not get a token for {self._scope}: "
                    f"{type(error).__name__}: {str(error)[:300]}",
                ) from error
            self._token, self._expires_on = info.token, float(info.expires_on)
            return self._token

    def _fresh(self, reject: str | None) -> bool:
        return (
            self._token is not None
            and self._token != reject
            and self._expires_on - self._clock() > REFRESH_MARGIN_SECONDS
        )


def managed_identity_credential(*, http: httpx.AsyncClient, client_id: str | None) -> ManagedIdentityCredential:
    """The process's managed-identity credential (user-assigned when `client_id` is set), over `http`."""
    from azure.identity.aio import ManagedIdentityCredential

    return ManagedIdentityCredential(client_id=client_id, transport=HttpxTransport(http))


class HttpxTransport(AsyncHttpTransport[HttpRequest, AsyncHttpResponseImpl]):
    """An azure-core async transport that sends through a shared `httpx.AsyncClient` (not owned)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def __aenter__(self) -> HttpxTransport:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def send(self, request: HttpRequest, **kwargs: Any) -> _HttpxResponse:
        """Send `request` as it is (the client's default headers are not added; its pool, event hooks and
        redirect setting apply), with `connection_timeout` (30 s) for each phase; read the whole answer."""
        timeout = httpx.Timeout(kwargs.get("connection_timeout", 30.0))
        outgoing = httpx.Request(
            request.method,
            request.url,
            headers=dict(request.headers),
            content=request.content,
            extensions={"timeout": timeout.as_dict()},
        )
        try:
            response = await self._client.send(outgoing)
        except httpx.TimeoutException as error:
            raise ServiceResponseError(str(error), error=error) from error
        except httpx.TransportError as error:
            raise ServiceRequestError(str(error), error=error) from error
        wrapped = _HttpxResponse(
            request=request,
            internal_response=response,
            status_code=response.status_code,
            reason=response.reason_phrase,
            content_type=response.headers.get("content-type"),
            headers=CaseInsensitiveDict(response.headers.items()),
            stream_download_generator=None,
        )
        await wrapped.read()
        return wrapped


class _HttpxResponse(AsyncHttpResponseImpl):
    """azure-core's response over an already-read `httpx.Response`."""

    async def iter_bytes(self, **kwargs: Any) -> AsyncIterator[bytes]:
        yield self._internal_response.content

    async def iter_raw(self, **kwargs: Any) -> AsyncIterator[bytes]:
        yield self._internal_response.content

    async def close(self) -> None:
        self._is_closed = True
