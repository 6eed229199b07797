"""The local App Service managed-identity endpoint, driven by the real azure-identity credential and httpx."""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.core.pipeline.transport import AsyncioRequestsTransport
from azure.identity.aio import ManagedIdentityCredential

from grants_local.queue import ManualClock
from grants_local.token_endpoint import API_VERSION, TokenEndpoint

#: One TLS context for every client: building one per httpx client costs ~40 ms (unused over http://).
TLS = ssl.create_default_context()
RESOURCE = "http://127.0.0.1:1"
CLIENT_ID = "0d3f5c8e-1111-4a4a-9b9b-123456789abc"
#: Variables that would steer ManagedIdentityCredential away from its App Service path.
OTHER_IDENTITY_VARIABLES = (
    "IDENTITY_SERVER_THUMBPRINT",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "IMDS_ENDPOINT",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_CLIENT_ID",
)


@pytest.fixture
def clock() -> ManualClock:
    """Time that moves only when told to."""
    return ManualClock(start=1000.0)


@pytest.fixture
def token_endpoint(clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> Iterator[TokenEndpoint]:
    """A running endpoint, with the environment pointing azure-identity's App Service path at it."""
    with TokenEndpoint(client_id=CLIENT_ID, clock=clock) as endpoint:
        for name in OTHER_IDENTITY_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        for name, value in endpoint.env().items():
            monkeypatch.setenv(name, value)
        yield endpoint


@pytest.fixture
async def credential(token_endpoint: TokenEndpoint) -> AsyncIterator[ManagedIdentityCredential]:
    async with ManagedIdentityCredential(transport=AsyncioRequestsTransport()) as credential:
        yield credential


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0, verify=TLS) as client:
        yield client


def query(**overrides: str | None) -> dict[str, str]:
    params: dict[str, str | None] = {"resource": RESOURCE, "api-version": API_VERSION, **overrides}
    return {name: value for name, value in params.items() if value is not None}


async def test_real_credential_gets_a_token_for_the_resource_its_scope_names(
    token_endpoint: TokenEndpoint, credential: ManagedIdentityCredential
) -> None:
    """Given the App Service variables, when the credential asks for `<resource>/.default`, the endpoint sees
    `<resource>` and the token it returns is valid for it."""
    token = await credential.get_token(RESOURCE + "/.default")

    assert token_endpoint.is_valid(token.token, RESOURCE)
    assert not token_endpoint.is_valid(token.token, RESOURCE + "/.default")
    assert 3500 < token.expires_on - time.time() <= 3600


async def test_second_get_token_is_served_from_the_credential_cache(
    token_endpoint: TokenEndpoint, credential: ManagedIdentityCredential
) -> None:
    first = await credential.get_token(RESOURCE + "/.default")
    second = await credential.get_token(RESOURCE + "/.default")

    assert second.token == first.token
    assert token_endpoint.request_count == 1


async def test_user_assigned_credential_gets_its_client_id(token_endpoint: TokenEndpoint) -> None:
    async with ManagedIdentityCredential(client_id=CLIENT_ID, transport=AsyncioRequestsTransport()) as credential:
        token = await credential.get_token(RESOURCE + "/.default")

    assert token_endpoint.is_valid(token.token, RESOURCE)


async def test_credential_with_another_client_id_is_refused(token_endpoint: TokenEndpoint) -> None:
    other = "99999999-9999-4999-9999-999999999999"
    async with ManagedIdentityCredential(client_id=other, transport=AsyncioRequestsTransport()) as credential:
        with pytest.raises(ClientAuthenticationError):
            await credential.get_token(RESOURCE + "/.default")


async def test_one_failure_is_retried_by_the_credential(
    token_endpoint: TokenEndpoint, credential: ManagedIdentityCredential
) -> None:
    """Given the endpoint fails once with 500, the credential's pipeline retries and gets a token."""
    token_endpoint.fail_next(1, status=500)

    token = await credential.get_token(RESOURCE + "/.default")

    assert token_endpoint.is_valid(token.token, RESOURCE)
    assert token_endpoint.request_count == 2


async def test_protocol_answer_has_the_documented_fields(
    token_endpoint: TokenEndpoint, http: httpx.AsyncClient
) -> None:
    response = await http.get(
        token_endpoint.url,
        params=query(client_id=CLIENT_ID),
        headers={"X-IDENTITY-HEADER": token_endpoint.header_secret},
    )

    body = response.json()
    assert response.status_code == 200
    assert set(body) == {"access_token", "expires_on", "resource", "token_type", "client_id"}
    assert (body["resource"], body["token_type"], body["client_id"]) == (RESOURCE, "Bearer", CLIENT_ID)
    assert isinstance(body["expires_on"], str)
    assert abs(int(body["expires_on"]) - (time.time() + 3600)) < 5


@pytest.mark.parametrize(
    ("headers", "params", "status"),
    [
        ({}, query(), 401),
        ({"X-IDENTITY-HEADER": "wrong"}, query(), 401),
        (None, query(resource=None), 400),
        (None, query(**{"api-version": "2017-09-01"}), 400),
        (None, query(client_id="99999999-9999-4999-9999-999999999999"), 400),
    ],
    ids=["missing header", "wrong header", "no resource", "old api-version", "other client id"],
)
async def test_bad_requests_are_refused_with_an_error_body(
    token_endpoint: TokenEndpoint,
    http: httpx.AsyncClient,
    headers: dict[str, str] | None,
    params: dict[str, str],
    status: int,
) -> None:
    sent = {"X-IDENTITY-HEADER": token_endpoint.header_secret} if headers is None else headers

    response = await http.get(token_endpoint.url, params=params, headers=sent)

    assert response.status_code == status
    assert response.json()["statusCode"] == status
    assert response.json()["message"]
    assert token_endpoint.request_count == 1


async def test_tokens_expire_on_the_clock(
    token_endpoint: TokenEndpoint, credential: ManagedIdentityCredential, clock: ManualClock
) -> None:
    token = (await credential.get_token(RESOURCE + "/.default")).token

    clock.advance(3599)
    assert token_endpoint.is_valid(token, RESOURCE)
    clock.advance(1)
    assert not token_endpoint.is_valid(token, RESOURCE)


async def test_expire_all_invalidates_issued_tokens_only(
    token_endpoint: TokenEndpoint, credential: ManagedIdentityCredential
) -> None:
    old = (await credential.get_token(RESOURCE + "/.default")).token

    token_endpoint.expire_all()
    new = (await credential.get_token(RESOURCE + "/.default", claims='{"access_token":{}}')).token

    assert not token_endpoint.is_valid(old, RESOURCE)
    assert token_endpoint.is_valid(new, RESOURCE)
    assert not token_endpoint.is_valid("never-issued", RESOURCE)


async def test_slow_endpoint_times_a_client_out(token_endpoint: TokenEndpoint, http: httpx.AsyncClient) -> None:
    token_endpoint.delay_seconds = 0.3

    with pytest.raises(httpx.ReadTimeout):
        await http.get(
            token_endpoint.url,
            params=query(),
            headers={"X-IDENTITY-HEADER": token_endpoint.header_secret},
            timeout=0.05,
        )


async def test_other_paths_are_not_found(token_endpoint: TokenEndpoint, http: httpx.AsyncClient) -> None:
    response = await http.get(token_endpoint.url.replace("/msi/token", "/other"), params=query())

    assert response.status_code == 404


async def test_closed_endpoint_refuses_connections(http: httpx.AsyncClient) -> None:
    endpoint = TokenEndpoint()
    endpoint.close()
    endpoint.close()  # idempotent

    with pytest.raises(httpx.ConnectError):
        await http.get(endpoint.url, params=query())
