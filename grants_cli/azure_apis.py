"""The Azure APIs the smoke check reads as the signed-in operator: one small client over httpx per API.

- `GraphReader.app_permissions`: the Microsoft Graph application permissions granted to a service principal, by
  name (``GET /servicePrincipals(appId='00000003-0000-0000-c000-000000000000')`` for Graph's app roles, then
  ``GET /servicePrincipals/{id}/appRoleAssignments``, following ``@odata.nextLink``).
- `RoleAssignments.role_definitions`: the Azure RBAC role definitions (GUIDs) a principal holds at, above or
  below a scope (Azure Resource Manager, ``GET {scope}/providers/Microsoft.Authorization/roleAssignments
  ?api-version=2022-04-01&$filter=principalId eq '{id}'``, following ``nextLink``).
- `LogOutcomes.latest`: the newest outcome line of a request in Application Insights (the Log Analytics query
  API, resource-centric: ``POST /v1{component resource id}/query`` with ``infra/queries/outcomes.kql`` and
  ``infra/queries/smoke-outcome.kql``). It is an `OutcomeSource`: the grant status API
  (``GET /api/grants/{requestId}``), once there is one, is another, and the smoke check takes either.

Each takes its API's base URL (Azure's global endpoints by default; a loopback double's locally,
`grants_local.azure_double`, `grants_local.graph_double`) and `Tokens`, which asks an azure-identity credential
(`DefaultAzureCredential` in Azure) for ``<scheme://host of the base URL>/.default``. Any answer but success raises
`ApiError` with the status and the API's own error code and message (status 0: no answer at all).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import quote, urlsplit

import httpx

__all__ = [
    "ARM_URL",
    "GRAPH_APP_ID",
    "LOGS_URL",
    "ApiError",
    "GraphReader",
    "LogOutcomes",
    "OutcomeSource",
    "RoleAssignments",
    "SeenOutcome",
    "Tokens",
    "smoke_query",
]

ARM_URL: Final = "https://management.azure.com"
LOGS_URL: Final = "https://api.loganalytics.io"
#: Microsoft Graph's application id: the same in every tenant and cloud.
GRAPH_APP_ID: Final = "00000003-0000-0000-c000-000000000000"
ROLE_ASSIGNMENTS_API: Final = "2022-04-01"
QUERIES: Final = Path(__file__).resolve().parent.parent / "infra" / "queries"
#: How far back the outcome query looks.
QUERY_TIMESPAN: Final = "PT6H"


class ApiError(Exception):
    """An Azure API answered with an error (or not at all: `status` 0)."""

    def __init__(self, api: str, status: int, code: str, message: str) -> None:
        super().__init__(f"{api} answered {status} {code}: {message}" if status else f"{api}: {message}")
        self.api, self.status, self.code, self.message = api, status, code, message


class _Credential(Protocol):
    def get_token(self, *scopes: str) -> Any: ...


class Tokens:
    """Bearer tokens from an azure-identity (sync) credential, one per scope, kept until a minute before expiry."""

    def __init__(self, credential: _Credential) -> None:
        self._credential = credential
        self._cache: dict[str, tuple[str, float]] = {}

    def for_url(self, base_url: str) -> str:
        """A token for the API at `base_url`: scope ``scheme://host/.default``."""
        parts = urlsplit(base_url)
        scope = f"{parts.scheme}://{parts.netloc}/.default"
        token, expires_on = self._cache.get(scope, ("", 0.0))
        if expires_on - time.time() < 60:
            try:
                access = self._credential.get_token(scope)
            except Exception as error:  # azure-identity raises several types; all mean "no token"
                raise ApiError(scope, 0, "NoToken", f"no token for {scope}: {str(error).splitlines()[0]}") from error
            token, expires_on = access.token, float(access.expires_on)
            self._cache[scope] = (token, expires_on)
        return token


class _Api:
    """One API: its base URL, a name for messages, and an httpx client (not owned)."""

    def __init__(self, name: str, *, base_url: str, tokens: Tokens, http: httpx.Client) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._tokens = tokens
        self._http = http

    def request(self, method: str, url: str, *, json_body: Any = None) -> Mapping[str, Any]:
        """Send with a bearer token; the JSON answer, or `ApiError`. `url` is absolute or relative to the base."""
        absolute = url if url.startswith(("http://", "https://")) else self.base_url + url
        headers = {"Authorization": f"Bearer {self._tokens.for_url(self.base_url)}"}
        try:
            response = self._http.request(method, absolute, json=json_body, headers=headers, timeout=30.0)
        except httpx.HTTPError as error:
            raise ApiError(self.name, 0, "NoAnswer", f"{type(error).__name__}: {error}") from error
        try:
            body = response.json() if response.content else {}
        except ValueError:
            body = {}
        if response.status_code >= 300:
            error_body = body.get("error") if isinstance(body, dict) else None
            detail = error_body if isinstance(error_body, dict) else {}
            raise ApiError(
                self.name,
                response.status_code,
                str(detail.get("code") or response.reason_phrase),
                str(detail.get("message") or "")[:300],
            )
        return body if isinstance(body, dict) else {}

    def pages(self, url: str, next_key: str) -> Iterator[Mapping[str, Any]]:
        """The items of ``value`` across every page (``next_key`` names the next page's URL)."""
        next_url: str | None = url
        while next_url:
            page = self.request("GET", next_url)
            yield from (item for item in page.get("value", []) if isinstance(item, dict))
            link = page.get(next_key)
            next_url = link if isinstance(link, str) and link else None


class GraphReader(_Api):
    """Microsoft Graph (`base_url` like ``https://graph.microsoft.com/v1.0``)."""

    def __init__(self, *, base_url: str, tokens: Tokens, http: httpx.Client) -> None:
        super().__init__("Microsoft Graph", base_url=base_url, tokens=tokens, http=http)

    def app_permissions(self, principal_id: str) -> set[str]:
        """The names of the Graph application permissions (app roles) granted to service principal `principal_id`."""
        graph = self.request("GET", f"/servicePrincipals(appId='{GRAPH_APP_ID}')?$select=id,appRoles")
        names = {str(role.get("id")): str(role.get("value")) for role in graph.get("appRoles", [])}
        assignments = self.pages(f"/servicePrincipals/{quote(principal_id)}/appRoleAssignments", "@odata.nextLink")
        return {
            names[str(a.get("appRoleId"))]
            for a in assignments
            if a.get("resourceId") == graph.get("id") and str(a.get("appRoleId")) in names
        }


class RoleAssignments(_Api):
    """Azure Resource Manager's role assignments (`base_url` like ``https://management.azure.com``)."""

    def __init__(self, *, base_url: str = ARM_URL, tokens: Tokens, http: httpx.Client) -> None:
        super().__init__("Azure Resource Manager", base_url=base_url, tokens=tokens, http=http)

    def role_definitions(self, *, scope: str, principal_id: str) -> set[str]:
        """The GUIDs of the role definitions `principal_id` holds at, above or below `scope` (a resource id)."""
        filter_ = quote(f"principalId eq '{principal_id}'")
        url = (
            f"{scope.rstrip('/')}/providers/Microsoft.Authorization/roleAssignments"
            f"?api-version={ROLE_ASSIGNMENTS_API}&$filter={filter_}"
        )
        return {
            str(item.get("properties", {}).get("roleDefinitionId", "")).rstrip("/").rsplit("/", 1)[-1].lower()
            for item in self.pages(url, "nextLink")
        }


@dataclass(frozen=True, slots=True)
class SeenOutcome:
    """A request's newest outcome line: how its last delivery ended, and whether that ended the message."""

    outcome: str
    reason: str | None
    description: str
    attempts: int
    settled: bool
    timestamp: str


class OutcomeSource(Protocol):
    """Where the smoke check reads a request's outcome: the outcome log now, the status API later."""

    @property
    def name(self) -> str: ...

    def latest(self, request_id: str) -> SeenOutcome | None:
        """The request's newest outcome, or None while there is none."""
        ...


def smoke_query(request_id: str) -> str:
    """The query `LogOutcomes` runs: the request id as ``smokeRequestId``, the preamble, the smoke query."""
    return (
        f"let smokeRequestId = {json.dumps(request_id)};\n"
        + (QUERIES / "outcomes.kql").read_text()
        + (QUERIES / "smoke-outcome.kql").read_text()
    )


class LogOutcomes(_Api):
    """The outcome lines in Application Insights, through the Log Analytics query API (`base_url` like
    ``https://api.loganalytics.io``), on the component `app_insights_id` (its resource id)."""

    def __init__(self, *, app_insights_id: str, base_url: str = LOGS_URL, tokens: Tokens, http: httpx.Client) -> None:
        super().__init__("Application Insights", base_url=base_url, tokens=tokens, http=http)
        self._component = app_insights_id.rstrip("/")

    def latest(self, request_id: str) -> SeenOutcome | None:
        answer = self.request(
            "POST",
            f"/v1{self._component}/query",
            json_body={"query": smoke_query(request_id), "timespan": QUERY_TIMESPAN},
        )
        tables = answer.get("tables") or [{}]
        columns = [str(column.get("name")) for column in tables[0].get("columns", [])]
        rows = [dict(zip(columns, row, strict=False)) for row in tables[0].get("rows", [])]
        if not rows:
            return None
        row = rows[0]
        return SeenOutcome(
            outcome=str(row.get("outcome") or ""),
            reason=str(row["reason"]) if row.get("reason") else None,
            description=str(row.get("description") or ""),
            attempts=int(row.get("attempts") or 0),
            settled=bool(row.get("settled")),
            timestamp=str(row.get("timestamp") or ""),
        )
