"""Shared fixtures: the Graph double and token endpoint on loopback, and the app wired against them."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from shared.bootstrap import Services, bootstrap
from shared.config import Settings
from shared.local.graph_double import GraphDouble
from shared.local.queue import LocalQueue, LocalSender
from shared.local.token_endpoint import TokenEndpoint

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

AU = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
AU_OTHER = "6c8e7f1a-2b3c-4d5e-8f90-a1b2c3d4e5f6"
USER = "15c1a2d5-9101-44b2-83ab-885db8a647ca"
USER_2 = "25c1a2d5-9101-44b2-83ab-885db8a647cb"
LATE_USER = "35c1a2d5-9101-44b2-83ab-885db8a647cc"
GROUP_ASSIGNABLE = "45c1a2d5-9101-44b2-83ab-885db8a647cd"
DEVICE = "55c1a2d5-9101-44b2-83ab-885db8a647ce"
UNKNOWN = "00000000-0000-4000-8000-000000000000"
HELPDESK_TEMPLATE = "729827e3-9c14-49f7-bb1b-9608f156bbb8"
HELPDESK_ROLE = "a1b2c3d4-0000-4000-8000-000000000001"
USER_ADMIN_TEMPLATE = "4d6ac14f-3453-41d0-bef9-a3e0c569773a"  # License Administrator: not activated in the seed

SEED: dict[str, Any] = {
    "users": [USER, USER_2, {"id": LATE_USER, "visibleAfterLookups": 2}],
    "groups": [{"id": GROUP_ASSIGNABLE, "isAssignableToRole": True}],
    "devices": [DEVICE],
    "administrativeUnits": [{"id": AU, "displayName": "EMEA"}, {"id": AU_OTHER, "displayName": "APAC"}],
    "roleTemplates": [
        {"id": HELPDESK_TEMPLATE, "displayName": "Helpdesk Administrator", "activated": True, "roleId": HELPDESK_ROLE},
        {"id": USER_ADMIN_TEMPLATE, "displayName": "License Administrator", "activated": False},
    ],
}


@pytest.fixture
def token_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[TokenEndpoint]:
    """The App Service token endpoint, announced to azure-identity through the environment."""
    for name in ("IDENTITY_SERVER_THUMBPRINT", "MSI_ENDPOINT", "MSI_SECRET", "AZURE_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)  # keep azure-identity on its App Service path
    with TokenEndpoint() as endpoint:
        for name, value in endpoint.env().items():
            monkeypatch.setenv(name, value)
        yield endpoint


@pytest.fixture
def graph(token_endpoint: TokenEndpoint) -> Iterator[GraphDouble]:
    with GraphDouble(token_endpoint) as double:
        double.load(SEED)
        yield double


def settings_for(graph: GraphDouble, **env: str) -> Settings:
    return Settings.from_env({"GRAPH_BASE_URL": graph.base_url, "GRANTS_RETRY_BASE_SECONDS": "0", **env})


@pytest.fixture
async def services(graph: GraphDouble) -> AsyncIterator[Services]:
    """The app's real wiring (managed-identity credential, httpx) against the doubles."""
    wired = bootstrap(settings_for(graph), sender=LocalSender(LocalQueue()))
    yield wired
    await wired.aclose()
