"""What the Functions Python worker does with ``PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true``, locally.

At its init request, before it imports ``function_app``, the worker (azure-functions-python-worker,
``Dispatcher.initialize_azure_monitor``) sets ``OTEL_EXPERIMENTAL_RESOURCE_DETECTORS`` to ``azure_functions``
unless set and calls ``configure_azure_monitor(connection_string=APPLICATIONINSIGHTS_CONNECTION_STRING,
logger_name=PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME or "")``. `configure` does the same, after checking that
the environment keeps the distro on loopback (`grants_local.ingestion.local_environment`): it refuses a
connection string whose endpoints are elsewhere, SDK statistics left on, or an Entra ID authentication string.

``python -m grants_local.worker_telemetry FILE`` (the environment as above, plus the Graph double's and token
endpoint's): `configure`, then run-local FILE (the registered function; importing ``function_app`` runs its own
telemetry set-up), flush the exporters, and print ``run-local --json``'s lines. Tests and ``make bench`` run it
in a process of its own, since the distro's providers and instrumentation are global to a process.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from grants_local.ingestion import UNSET
from shared.core.errors import ConfigError

__all__ = ["configure", "flush"]

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_local(env: Mapping[str, str]) -> None:
    """Raise `ConfigError` unless `env` keeps the Azure Monitor distro's traffic on loopback."""
    connection = dict(
        part.split("=", 1) for part in env.get("APPLICATIONINSIGHTS_CONNECTION_STRING", "").split(";") if "=" in part
    )
    for key in ("IngestionEndpoint", "LiveEndpoint"):
        host = urlsplit(connection.get(key, "")).hostname
        if host not in _LOOPBACK:
            raise ConfigError(f"the connection string's {key} must be on loopback (the ingestion stub), got {host!r}")
    if env.get("APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL", "").lower() != "true":
        raise ConfigError("APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL must be true: SDK statistics go to Microsoft")
    if env.get("OTEL_EXPERIMENTAL_RESOURCE_DETECTORS", "") != "azure_functions":
        raise ConfigError("OTEL_EXPERIMENTAL_RESOURCE_DETECTORS must be azure_functions: the VM detector calls IMDS")
    for name in UNSET:
        if name in env:
            raise ConfigError(f"{name} must not be set locally (Entra ID ingestion needs Azure)")


def configure() -> None:
    """Configure the Azure Monitor distro as the worker does (see the module docstring), on loopback only."""
    check_local(os.environ)
    from azure.monitor.opentelemetry import configure_azure_monitor

    os.environ.setdefault("OTEL_EXPERIMENTAL_RESOURCE_DETECTORS", "azure_functions")
    configure_azure_monitor(
        connection_string=os.environ["APPLICATIONINSIGHTS_CONNECTION_STRING"],
        logger_name=os.environ.get("PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME", ""),
    )


def flush() -> None:
    """Export everything the distro holds now (it batches logs and spans)."""
    from opentelemetry import trace
    from opentelemetry._logs import get_logger_provider

    for provider in (get_logger_provider(), trace.get_tracer_provider()):
        force_flush = getattr(provider, "force_flush", None)
        if callable(force_flush):
            force_flush()


def main(argv: list[str]) -> int:
    import logging
    import time

    from grants_local.run import graph_environment, print_json, run_local

    logging.basicConfig(level=logging.WARNING)
    configure()
    with graph_environment(os.environ, clock=time.time) as env:
        run = asyncio.run(run_local(Path(argv[0]).read_bytes().splitlines(), env=env, producer="bulk"))
    flush()
    print_json(run, sys.stdout)
    return 0 if run.complete else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
