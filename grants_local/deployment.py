"""The local deployment: what ``azd up`` sets up in Azure around the app, for the local namespace.

`LocalDeployment` keeps, in the local namespace's directory (`grants_local.namespace`), two files:

- ``deployment.json``: the app's identity (its service principal's object id), the Microsoft Graph application
  permissions granted to it (infra/scripts/grant-graph-permissions.sh in Azure), the Azure roles it holds on the
  namespace (infra/modules/rbac.bicep), and whether the function app is running. Written with what a successful
  ``azd up`` leaves (`DEFAULT_GRAPH_PERMISSIONS`, `DEFAULT_SERVICE_BUS_ROLES`, running) the first time it is read;
  `revoke_graph_permission`, `revoke_role`, `stop` (and their opposites) change it, as an administrator might.
- ``outcomes.jsonl``: the outcome lines the local host logged (`grants_local.backend.LocalBackend.drain`), one
  JSON object per line (``{"kind": "grant", "record": {...}}``): the local stand-in for Application Insights.

The local host honours it: a stopped app, or an identity without *Azure Service Bus Data Receiver*, receives
nothing (as the deployed trigger would not). `grants_local.azure_double.serve_local_deployment` runs the doubles
the smoke check talks to (``grants smoke --local``): the token endpoint, the Graph double (examples/directory.json,
plus the app's service principal with its Graph permissions from ``deployment.json``), and
`grants_local.azure_double.AzureDouble` (role assignments on the namespace, the outcome log as Application
Insights), with ``GRAPH_BASE_URL`` and the identity endpoint in ``os.environ`` for the block, so that the local
host calls the same Graph double.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

__all__ = [
    "APP_INSIGHTS_ID",
    "APP_PRINCIPAL_ID",
    "DATA_RECEIVER",
    "DATA_SENDER",
    "DEFAULT_GRAPH_PERMISSIONS",
    "DEFAULT_SERVICE_BUS_ROLES",
    "NAMESPACE_ID",
    "LocalDeployment",
]

SUBSCRIPTION: Final = "00000000-0000-4000-8000-000000000000"
RESOURCE_GROUP: Final = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-grants-local"
#: The local namespace's and Application Insights component's resource ids (shaped like Azure's).
NAMESPACE_ID: Final = f"{RESOURCE_GROUP}/providers/Microsoft.ServiceBus/namespaces/sb-grants-local"
APP_INSIGHTS_ID: Final = f"{RESOURCE_GROUP}/providers/microsoft.insights/components/appi-grants-local"
#: The local app's identity: the object id of its managed identity's service principal.
APP_PRINCIPAL_ID: Final = "5e000000-0000-4000-8000-0000000a11ed"
#: Built-in role definition GUIDs (the same in every tenant).
DATA_RECEIVER: Final = "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0"
DATA_SENDER: Final = "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39"
READER: Final = "acdd72a7-3385-48ef-bd42-f606fba81ae7"
DEFAULT_GRAPH_PERMISSIONS: Final = (
    "AdministrativeUnit.ReadWrite.All",
    "RoleManagement.ReadWrite.Directory",
    "RoleEligibilitySchedule.ReadWrite.Directory",
    "RoleAssignmentSchedule.ReadWrite.Directory",
)
DEFAULT_SERVICE_BUS_ROLES: Final = (DATA_RECEIVER, DATA_SENDER, READER)
EXAMPLES: Final = Path(__file__).resolve().parent.parent / "examples"


class LocalDeployment:
    """The local deployment's state in `directory` (the local namespace's); see the module docstring."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @property
    def _state_path(self) -> Path:
        return self.directory / "deployment.json"

    @property
    def outcome_log(self) -> Path:
        return self.directory / "outcomes.jsonl"

    def state(self) -> dict[str, Any]:
        """The deployment as ``deployment.json`` holds it (written with the defaults if absent)."""
        with self._locked():
            return self._read()

    @property
    def app_principal_id(self) -> str:
        return str(self.state()["appPrincipalId"])

    @property
    def graph_permissions(self) -> set[str]:
        return set(self.state()["graphPermissions"])

    @property
    def service_bus_roles(self) -> set[str]:
        return set(self.state()["serviceBusRoles"])

    @property
    def running(self) -> bool:
        return bool(self.state()["running"])

    def why_not_receiving(self) -> str | None:
        """Why the deployed trigger would receive nothing now, or None when it receives."""
        state = self.state()
        if not state["running"]:
            return "the function app is stopped"
        if DATA_RECEIVER not in state["serviceBusRoles"]:
            return "the app's identity lacks Azure Service Bus Data Receiver on the namespace"
        return None

    def revoke_graph_permission(self, permission: str) -> None:
        self._update("graphPermissions", permission, add=False)

    def grant_graph_permission(self, permission: str) -> None:
        self._update("graphPermissions", permission, add=True)

    def revoke_role(self, role_definition: str) -> None:
        self._update("serviceBusRoles", role_definition, add=False)

    def grant_role(self, role_definition: str) -> None:
        self._update("serviceBusRoles", role_definition, add=True)

    def stop(self) -> None:
        """Stop the function app (``az functionapp stop``): the local host delivers nothing until `start`."""
        self._set("running", value=False)

    def start(self) -> None:
        self._set("running", value=True)

    def log_outcomes(self, records: list[Mapping[str, Any]], *, kind: str = "grant") -> None:
        """Append outcome records to the outcome log (as their lines reach Application Insights)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._locked(), self.outcome_log.open("a", encoding="utf-8") as log:
            for record in records:
                log.write(json.dumps({"kind": kind, "record": dict(record)}) + "\n")

    def logged_outcomes(self) -> list[dict[str, Any]]:
        """Every outcome line logged so far, oldest first: ``{"kind", "record"}``."""
        with self._locked():
            if not self.outcome_log.exists():
                return []
            lines = self.outcome_log.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / ".deployment.lock", "a+b") as lock_file:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)

    def _read(self) -> dict[str, Any]:
        if not self._state_path.exists():
            self._write(
                {
                    "appPrincipalId": APP_PRINCIPAL_ID,
                    "running": True,
                    "graphPermissions": list(DEFAULT_GRAPH_PERMISSIONS),
                    "serviceBusRoles": list(DEFAULT_SERVICE_BUS_ROLES),
                }
            )
        state: dict[str, Any] = json.loads(self._state_path.read_text(encoding="utf-8"))
        return state

    def _write(self, state: Mapping[str, Any]) -> None:
        temporary = self._state_path.with_name(f".deployment.json.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(state, indent=1), encoding="utf-8")
        os.replace(temporary, self._state_path)

    def _update(self, key: str, value: str, *, add: bool) -> None:
        with self._locked():
            state = self._read()
            values = [v for v in state[key] if v != value] + ([value] if add else [])
            self._write({**state, key: values})

    def _set(self, key: str, *, value: bool) -> None:
        with self._locked():
            self._write({**self._read(), key: value})
