"""Bearer tokens for the app's HTTP API: an Entra token for its app registration (Azure), or serve-local's
published local token."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from grants_client._errors import NotAuthorized, one_line

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

__all__ = ["LOCAL_TOKEN_PREFIX", "EntraToken", "TokenSource", "local_token"]

#: What a bearer token is got from: called before each request, it returns the token (no ``Bearer``).
TokenSource = Callable[[], str]
#: serve-local's published tokens: ``local:<producer>``, ``local:reader``, ``local:operator`` (local use only).
LOCAL_TOKEN_PREFIX: Final = "local:"  # noqa: S105 (a published prefix, not a secret)
#: A token is asked for again this many seconds before it expires.
_REFRESH_MARGIN_SECONDS: Final = 300


class EntraToken:
    """A `TokenSource` of Entra tokens for `scope` (the API's ``api://<API_CLIENT_ID>/.default``) from `credential`
    (``DefaultAzureCredential()``, a managed identity…), kept until 5 minutes before it expires. A credential that
    gives no token raises `NotAuthorized` naming the scope."""

    def __init__(self, *, credential: TokenCredential, scope: str) -> None:
        self._credential = credential
        self._scope = scope
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_on = 0.0

    def __call__(self) -> str:
        from azure.core.exceptions import ClientAuthenticationError

        with self._lock:
            if self._token is None or time.time() >= self._expires_on - _REFRESH_MARGIN_SECONDS:
                try:
                    access = self._credential.get_token(self._scope)
                except ClientAuthenticationError as error:
                    raise NotAuthorized(
                        f"no token for {self._scope} from {type(self._credential).__name__}: "
                        f"{one_line(error.message or str(error), limit=300)}"
                    ) from None
                self._token, self._expires_on = access.token, float(access.expires_on)
            return self._token


def local_token(who: str) -> TokenSource:
    """serve-local's published token for `who`: a producer's name, ``reader`` or ``operator`` (local use only)."""
    token = LOCAL_TOKEN_PREFIX + who
    return lambda: token
