"""A local Application Insights ingestion endpoint, for the real Azure Monitor exporter to talk to.

`IngestionStub` answers what azure-monitor-opentelemetry's exporters send to the endpoints a connection
string names, on ``http://127.0.0.1:PORT``:

- ``POST /v2.1/track``: a JSON array of telemetry envelopes (``{"name", "time", "iKey", "tags", "data":
  {"baseType", "baseData"}}``). Each is kept in `envelopes`; the answer is Breeze's ``200 {"itemsReceived",
  "itemsAccepted", "errors": []}``.
- ``POST /QuickPulseService.svc/…`` (live metrics pings and posts): ``200`` with
  ``x-ms-qps-subscribed: false``, so the exporter keeps pinging and posts nothing.

Anything else answers ``404``. `local_environment` gives the settings under which the Azure Monitor distro
and its exporter reach nothing but this stub: its connection string (ingestion and live metrics on
loopback), SDK statistics off (they go to Microsoft's own endpoints), only the Azure Functions resource
detector (the VM detector asks the instance metadata service), and no ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING``
(Entra ID ingestion: a managed-identity credential, which without a token endpoint asks the instance metadata
service, and a bearer token, which azure-core sends over https only). Callers remove that one from their
environment themselves: `local_environment` lists it in `UNSET`.
"""

from __future__ import annotations

import json
import threading
from types import TracebackType
from typing import Any, Final

from grants_local._http import LoopbackServer, Request, Response

__all__ = ["INSTRUMENTATION_KEY", "UNSET", "IngestionStub", "local_environment"]

#: The instrumentation key the stub's connection string names (any GUID: nothing checks it).
INSTRUMENTATION_KEY: Final = "00000000-0000-4000-8000-00000000a11e"


class IngestionStub:
    """Application Insights ingestion on loopback. Use as a context manager or call `close`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._envelopes: list[dict[str, Any]] = []
        self._authorizations: list[str | None] = []
        self._server = LoopbackServer(self._answer)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}"

    @property
    def connection_string(self) -> str:
        """A connection string whose ingestion and live-metrics endpoints are this stub."""
        return f"InstrumentationKey={INSTRUMENTATION_KEY};IngestionEndpoint={self.url}/;LiveEndpoint={self.url}/"

    @property
    def envelopes(self) -> list[dict[str, Any]]:
        """Every envelope received so far, in arrival order."""
        with self._lock:
            return list(self._envelopes)

    @property
    def authorizations(self) -> list[str | None]:
        """The ``Authorization`` header of each ``track`` request (None when there was none)."""
        with self._lock:
            return list(self._authorizations)

    def messages(self, prefix: str = "") -> list[dict[str, Any]]:
        """The ``baseData`` of each trace (``MessageData``) envelope whose message starts with `prefix`."""
        found = []
        for envelope in self.envelopes:
            data = envelope.get("data") or {}
            base = data.get("baseData") or {}
            if data.get("baseType") == "MessageData" and str(base.get("message", "")).startswith(prefix):
                found.append(base)
        return found

    def _answer(self, request: Request) -> Response:
        if request.method == "POST" and request.path.endswith("/v2.1/track"):
            try:
                items = json.loads(request.body)
            except ValueError:
                return Response(400, {"itemsReceived": 0, "itemsAccepted": 0, "errors": []})
            items = items if isinstance(items, list) else [items]
            with self._lock:
                self._envelopes.extend(item for item in items if isinstance(item, dict))
                self._authorizations.append(request.headers.get("Authorization"))
            return Response(200, {"itemsReceived": len(items), "itemsAccepted": len(items), "errors": []})
        if request.method == "POST" and "/QuickPulseService.svc/" in request.path:
            return Response(200, headers={"x-ms-qps-subscribed": "false"})
        return Response(404, {"error": {"code": "NotFound", "message": f"no route {request.path}"}})

    def close(self) -> None:
        self._server.close()

    def __enter__(self) -> IngestionStub:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


#: Settings that must not be set when the distro runs locally (see the module docstring).
UNSET: Final = ("APPLICATIONINSIGHTS_AUTHENTICATION_STRING",)


def local_environment(connection_string: str) -> dict[str, str]:
    """The settings under which the Azure Monitor distro reaches only loopback (with `UNSET` removed)."""
    return {
        "APPLICATIONINSIGHTS_CONNECTION_STRING": connection_string,
        "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
        "APPLICATIONINSIGHTS_SDKSTATS_DISABLED": "true",
        "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "azure_functions",
        "OTEL_SERVICE_NAME": "entra-grants-local",
    }
