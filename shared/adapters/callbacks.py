"""The callback sender: one signed POST to a target the callback policy accepted, SSRF-safe at the socket.

`CallbackClient.post`:

1. resolves the host **once** (`resolve`, the system resolver by default) and refuses the callback if any
   address it gets is not a public unicast one (`is_public_address`): a name that points into the private,
   loopback, link-local or metadata ranges is refused however it got there;
2. connects to that checked address itself (the URL's host is replaced by the address; ``Host`` and the TLS
   SNI are the name, and the certificate is verified against the name), so a DNS answer that changes between
   the check and the connection (rebinding) is never asked for;
3. sends no credentials the environment might add (``trust_env=False``: no proxies, no .netrc), follows no
   redirect (a 3xx is a failure), keeps no connection alive (a pooled connection is keyed by address, and two
   allowed names on one address must not share a TLS session), and asks for no compression;
4. bounds time: ``connect_timeout`` for the connection and a total deadline over resolution, connection,
   request and response (``total_timeout``);
5. reads at most ``max_response_bytes`` of the answer (raw, never decompressed), then closes the connection.

A 2xx answer is delivered. Retrying may help after a timeout, a connection or DNS failure, 408, 409, 425,
429 and 5xx (`TransientError`, with the answer's ``Retry-After`` in seconds when given); anything else is
`PermanentError` (a 3xx, another 4xx, an address that is not public). Both carry `Reason.CALLBACK_FAILED`.

In local mode (`CallbackTarget.loopback`) the target is a loopback literal or ``localhost`` (127.0.0.1): no
resolution, no address check.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import httpx

from shared.core.callbacks import CallbackTarget, is_public_address
from shared.core.errors import PermanentError, Reason, TransientError

__all__ = ["CallbackAnswer", "CallbackClient", "Resolver", "system_resolver"]

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""(host, port) -> the IP addresses the host name resolves to."""

USER_AGENT: Final = "entra-grants-callback/1"
_RETRYABLE_STATUS: Final = frozenset({408, 409, 425, 429})
_LOOPBACK_ADDRESSES: Final = {"127.0.0.1": "127.0.0.1", "localhost": "127.0.0.1", "[::1]": "::1"}


async def system_resolver(host: str, port: int) -> Sequence[str]:
    """The addresses of `host` from the system resolver (TCP), in its order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True, slots=True)
class CallbackAnswer:
    """A 2xx answer: its status and the first bytes of its body (at most ``max_response_bytes``)."""

    status: int
    body: bytes
    address: str


class CallbackClient:
    """Sends callbacks; its HTTP client is built on first use and closed by `close`."""

    def __init__(
        self,
        *,
        resolve: Resolver = system_resolver,
        connect_timeout: float = 3.0,
        total_timeout: float = 10.0,
        max_response_bytes: int = 4096,
        verify: ssl.SSLContext | bool = True,
        permit_address: Callable[[str], bool] = is_public_address,
    ) -> None:
        """`permit_address` decides which resolved addresses may be connected to (tests pass a loopback one);
        `verify` is what TLS trusts (default: the certifi bundle)."""
        self._permit = permit_address
        self._resolve = resolve
        self._connect_timeout = connect_timeout
        self._total_timeout = total_timeout
        self._max_response_bytes = max_response_bytes
        self._verify = verify
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                trust_env=False,
                follow_redirects=False,
                verify=self._verify,
                timeout=httpx.Timeout(self._total_timeout, connect=self._connect_timeout),
                limits=httpx.Limits(max_connections=32, max_keepalive_connections=0),
            )
        return self._client

    async def post(self, target: CallbackTarget, *, body: bytes, headers: Mapping[str, str]) -> CallbackAnswer:
        """POST `body` to `target`; return the 2xx answer, or raise `TransientError` / `PermanentError`."""
        try:
            async with asyncio.timeout(self._total_timeout):
                address = await self._address(target)
                return await self._send(target, address, body, headers)
        except TimeoutError:
            raise TransientError(Reason.CALLBACK_FAILED, f"no answer within {self._total_timeout:g} seconds") from None

    async def _address(self, target: CallbackTarget) -> str:
        if target.loopback:
            return _LOOPBACK_ADDRESSES[target.host]
        try:
            addresses = list(await self._resolve(target.host, target.port))
        except OSError as error:
            raise TransientError(Reason.CALLBACK_FAILED, f"the host name did not resolve ({error})") from None
        if not addresses:
            raise TransientError(Reason.CALLBACK_FAILED, "the host name resolved to no address")
        refused = [address for address in addresses if not self._permit(address)]
        if refused:
            raise PermanentError(
                Reason.CALLBACK_FAILED,
                f"the host name resolves to an address that is not public ({refused[0]}); callbacks go to public "
                "addresses only",
            )
        return addresses[0]

    async def _send(
        self, target: CallbackTarget, address: str, body: bytes, headers: Mapping[str, str]
    ) -> CallbackAnswer:
        authority = f"[{address}]" if ":" in address else address
        url = f"{target.scheme}://{authority}:{target.port}{target.target}"
        request_headers = {
            **headers,
            "Host": target.host_header,
            "User-Agent": USER_AGENT,
            "Accept-Encoding": "identity",
        }
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        try:
            async with self._http().stream(
                "POST", url, content=body, headers=request_headers, extensions=extensions
            ) as response:
                received = await self._first_bytes(response)
        except httpx.TimeoutException as error:
            raise TransientError(Reason.CALLBACK_FAILED, f"timed out ({type(error).__name__})") from None
        except httpx.TransportError as error:
            raise TransientError(
                Reason.CALLBACK_FAILED, f"could not connect or send ({type(error).__name__}: {error})"
            ) from None
        status = response.status_code
        if 200 <= status < 300:
            return CallbackAnswer(status, received, address)
        said = received[:200].decode("utf-8", "replace").replace("\n", " ")
        description = f"the receiver answered {status}" + (f": {said}" if said else "")
        if 300 <= status < 400:
            raise PermanentError(Reason.CALLBACK_FAILED, f"{description} (a redirect; redirects are not followed)")
        if status in _RETRYABLE_STATUS or status >= 500:
            raise TransientError(Reason.CALLBACK_FAILED, description, retry_after=_seconds(response))
        raise PermanentError(Reason.CALLBACK_FAILED, description)

    async def _first_bytes(self, response: httpx.Response) -> bytes:
        received = bytearray()
        async for chunk in response.aiter_raw():
            received += chunk[: self._max_response_bytes - len(received)]
            if len(received) >= self._max_response_bytes:
                break
        return bytes(received)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


def _seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "").strip()
    return float(value) if value.isdigit() else None
