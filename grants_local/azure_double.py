"""Azure Resource Manager's role assignments and the Log Analytics query API on loopback, for a local deployment.

`AzureDouble` serves, on ``http://127.0.0.1:PORT`` (`AzureDouble.url`), the two Azure calls the smoke check
makes besides Graph and Service Bus, from a `grants_local.deployment.LocalDeployment`:

- ``GET {scope}/providers/Microsoft.Authorization/roleAssignments?api-version=2022-04-01&$filter=principalId eq
  '{id}'``: the roles the deployment gives that principal on the local namespace, for the namespace's resource id
  (`grants_local.deployment.NAMESPACE_ID`) or its resource group or subscription as `scope`; ARM's
  ``{"value": [{"id", "name", "type", "properties": {"roleDefinitionId", "principalId", "principalType",
  "scope"}}]}``. Another scope answers ``404 ResourceNotFound``; another api-version ``400
  InvalidApiVersionParameter``; a missing or other filter ``400 InvalidFilterInQueryString``.
- ``POST /v1{component id}/query`` with ``{"query", "timespan"}``: the query the smoke check sends, and only
  it: ``let smokeRequestId = "<id>";``, then ``infra/queries/outcomes.kql`` and ``infra/queries/smoke-outcome.kql``
  exactly as they are in the repository (anything else answers ``400 BadArgumentError``: this double runs no
  KQL). The answer is the Log Analytics response (``{"tables": [{"name": "PrimaryResult", "columns", "rows"}]}``)
  with the columns that query projects, from the deployment's outcome log, newest first. Another component
  answers ``404 PathNotFoundError``.

Every request needs a bearer token the `TokenEndpoint` issued for `AzureDouble.url` (``401`` otherwise).

`serve_local_deployment` runs it with the token endpoint and the Graph double for a local deployment (see
`grants_local.deployment`): what ``grants smoke --local`` talks to.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from grants_local._http import LoopbackServer, Request, Response
from grants_local.deployment import APP_INSIGHTS_ID, EXAMPLES, NAMESPACE_ID, SUBSCRIPTION, LocalDeployment
from grants_local.token_endpoint import TokenEndpoint

__all__ = ["AzureDouble", "LocalEndpoints", "serve_local_deployment"]

QUERIES: Final = Path(__file__).resolve().parent.parent / "infra" / "queries"
_ROLE_ASSIGNMENTS: Final = "/providers/microsoft.authorization/roleassignments"
_ROLE_DEFINITIONS: Final = f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Authorization/roleDefinitions"
_FILTER: Final = re.compile(r"^principalId eq '([0-9a-fA-F-]{36})'$")
_SMOKE_ID: Final = re.compile(r'^let smokeRequestId = ("(?:[^"\\]|\\.)*");\n')
_COLUMNS: Final = (
    ("timestamp", "datetime"),
    ("outcome", "string"),
    ("reason", "string"),
    ("description", "string"),
    ("attempts", "int"),
    ("settled", "bool"),
)


class AzureDouble:
    """ARM role assignments and Log Analytics queries for `deployment` (see the module docstring)."""

    def __init__(self, deployment: LocalDeployment, *, tokens: TokenEndpoint) -> None:
        self._deployment = deployment
        self._tokens = tokens
        self.requests: list[tuple[str, str, int]] = []
        self._server = LoopbackServer(self._answer)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}"

    def close(self) -> None:
        self._server.close()

    def __enter__(self) -> AzureDouble:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _answer(self, request: Request) -> Response:
        response = self._route(request)
        self.requests.append((request.method, request.path, response.status))
        return response

    def _route(self, request: Request) -> Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not self._tokens.is_valid(token.strip(), self.url):
            return _error(401, "InvalidAuthenticationToken", "The access token is missing, invalid or expired.")
        path = request.path.rstrip("/")
        if request.method == "GET" and path.lower().endswith(_ROLE_ASSIGNMENTS):
            return self._role_assignments(path[: -len(_ROLE_ASSIGNMENTS)], request.query)
        if request.method == "POST" and path.startswith("/v1/") and path.endswith("/query"):
            return self._query(path[len("/v1") : -len("/query")], request.body)
        return _error(404, "NotFound", f"No route for {request.method} {request.path}.")

    def _role_assignments(self, scope: str, query: Mapping[str, str]) -> Response:
        if query.get("api-version") != "2022-04-01":
            return _error(
                400, "InvalidApiVersionParameter", f"The api-version '{query.get('api-version')}' is invalid."
            )
        match = _FILTER.match(query.get("$filter", ""))
        if match is None:
            return _error(400, "InvalidFilterInQueryString", "The filter must be principalId eq '<object id>'.")
        if not NAMESPACE_ID.lower().startswith(scope.lower()) or not scope.lower().startswith(
            f"/subscriptions/{SUBSCRIPTION}"
        ):
            return _error(404, "ResourceNotFound", f"The Resource '{scope}' was not found.")
        state = self._deployment.state()
        principal = match.group(1).lower()
        roles = state["serviceBusRoles"] if principal == str(state["appPrincipalId"]).lower() else []
        return Response(
            200,
            {
                "value": [
                    _assignment(f"{index:08x}-0000-4000-8000-000000000000", role, principal)
                    for index, role in enumerate(roles, start=1)
                ]
            },
        )

    def _query(self, component: str, body: bytes) -> Response:
        if component.lower() != APP_INSIGHTS_ID.lower():
            return _error(404, "PathNotFoundError", f"The requested path does not exist: {component}")
        try:
            document = json.loads(body)
            text = str(document["query"])
        except (ValueError, KeyError, TypeError):
            return _error(400, "BadArgumentError", "The request body must be JSON with a query.")
        match = _SMOKE_ID.match(text)
        expected = (QUERIES / "outcomes.kql").read_text() + (QUERIES / "smoke-outcome.kql").read_text()
        if match is None or text[match.end() :] != expected:
            return _error(400, "BadArgumentError", "This double answers only grants smoke's query (smoke-outcome.kql).")
        request_id = json.loads(match.group(1))
        lines = [
            line["record"]
            for line in self._deployment.logged_outcomes()
            if line.get("kind") == "grant" and line["record"].get("requestId") == request_id
        ]
        lines.sort(key=lambda record: str(record.get("finishedAt", "")), reverse=True)
        rows = [
            [
                record.get("finishedAt"),
                record.get("outcome"),
                record.get("reason") or "",
                record.get("description") or "",
                int(record.get("attempts") or 0),
                record.get("outcome") not in ("retry_scheduled", "abandoned"),
            ]
            for record in lines
        ]
        columns = [{"name": name, "type": kind} for name, kind in _COLUMNS]
        return Response(200, {"tables": [{"name": "PrimaryResult", "columns": columns, "rows": rows}]})


def _assignment(name: str, role: str, principal: str) -> dict[str, Any]:
    """One role assignment on the namespace, as ARM lists it."""
    return {
        "id": f"{NAMESPACE_ID}/providers/Microsoft.Authorization/roleAssignments/{name}",
        "name": name,
        "type": "Microsoft.Authorization/roleAssignments",
        "properties": {
            "roleDefinitionId": f"{_ROLE_DEFINITIONS}/{role}",
            "principalId": principal,
            "principalType": "ServicePrincipal",
            "scope": NAMESPACE_ID,
        },
    }


def _error(status: int, code: str, message: str) -> Response:
    return Response(status, {"error": {"code": code, "message": message}})


@dataclass(frozen=True, slots=True)
class LocalEndpoints:
    """Where the local deployment's APIs answer, and the ids the smoke check needs."""

    graph_url: str
    arm_url: str
    logs_url: str
    principal_id: str
    namespace_id: str
    app_insights_id: str


@contextmanager
def serve_local_deployment(deployment: LocalDeployment) -> Iterator[LocalEndpoints]:
    """Run the token endpoint, the Graph double and the Azure double for `deployment` (see the module docstring)."""
    from grants_local.graph_double import GraphDouble
    from grants_local.run import os_environment

    state = deployment.state()
    principal = str(state["appPrincipalId"])
    with (
        TokenEndpoint() as tokens,
        GraphDouble(tokens) as graph,
        AzureDouble(deployment, tokens=tokens) as azure,
    ):
        graph.load(EXAMPLES / "directory.json")
        graph.add_service_principal(principal, display_name="id-grants-local (the app's managed identity)")
        for permission in state["graphPermissions"]:
            graph.grant_app_role(principal, permission)
        with os_environment({**tokens.env(), "GRAPH_BASE_URL": graph.base_url}):
            yield LocalEndpoints(
                graph_url=graph.base_url,
                arm_url=azure.url,
                logs_url=azure.url,
                principal_id=principal,
                namespace_id=NAMESPACE_ID,
                app_insights_id=APP_INSIGHTS_ID,
            )
