"""The app as Core Tools runs it (``func start``): a fresh worker process whose environment is the ``Values`` of
``local.settings.example.json``, the ledger reached through its connection-string form (``GrantsLedger``, pointed
at the test Azurite), the registered functions indexed from ``function_app.py``, and a grant granted end to end.

Only what Core Tools needs a real Service Bus namespace for is local here, as in every local run: the message is
handed to the registered function with the extension's real `ServiceBusMessageActions` (settling over gRPC against
the local settlement server), and the app's sends and outcome events go to in-process queues. Graph and tokens are
the doubles, reached through ``GRAPH_BASE_URL`` and ``IDENTITY_ENDPOINT`` as the settings file says."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from grants_local.azurite import DEV_ACCOUNT, DEV_KEY, AzuriteTables, new_ledger_table
from grants_local.graph_double import GraphDouble
from grants_local.token_endpoint import TokenEndpoint
from tests.conftest import AU, USER, body

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "local.settings.example.json"
PLACEHOLDER = re.compile(r"^<.*>$")

#: What the worker process does after Core Tools started it with the settings as its environment.
WORKER = """
import asyncio, json, os, sys
import function_app  # the host's indexing: the app's start-up checks run, the functions register
from grants_local.binding import to_received_message
from grants_local.host import indexed_functions, registered_function
from grants_local.queue import LocalQueue, LocalSender
from grants_local.settlement_server import LocalSettlementServer, point_message_actions_at
from grants_local.topic import LocalPublisher, outcomes_topic
from shared.adapters.lanes import LaneSender
from shared.bootstrap import bootstrap
from shared.config import Settings
from shared.runtime import installed

functions = {
    f.get_function_name(): [json.loads(b) for b in f.get_raw_bindings()] for f in indexed_functions(function_app.app)
}
queue, bulk, retries = LocalQueue(), LocalQueue(), LocalQueue()
services = bootstrap(  # from the environment: ledger, Graph, identity; Service Bus sends stay in-process
    Settings.from_env(os.environ),
    sender=LaneSender({"interactive": LocalSender(queue), "bulk": LocalSender(bulk)}),
    publisher=LocalPublisher(outcomes_topic()),
    callback_sender=LocalSender(retries),
)

async def deliver():
    with LocalSettlementServer(queue) as server, installed(services):
        message = queue.receive()
        function = registered_function(function_app.app, "grant_membership")
        actions = point_message_actions_at(server.address)
        await function(receivedmessage=to_received_message(message), message_actions=actions)
        status = await services.ledger.status(json.loads(sys.argv[1])["requestId"], producer="other")
        await services.aclose()
        return [call.method for call in server.calls], None if status is None else status.to_json()

queue.send(sys.argv[1].encode(), message_id="core-tools-1", content_type="application/json")
calls, status = asyncio.run(deliver())
print(json.dumps({"functions": functions, "calls": calls, "status": status}))
"""


def example_values() -> dict[str, str]:
    settings = json.loads(EXAMPLE.read_text())
    assert settings["IsEncrypted"] is False
    values: dict[str, str] = settings["Values"]
    assert all(isinstance(value, str) for value in values.values())
    return values


def test_the_example_names_every_setting_a_binding_expression_reads_and_the_local_connections() -> None:
    """Each ``%NAME%`` in a trigger is in Values (the host refuses to start on one it cannot resolve); the timers'
    storage, the ledger's connection string and the worker runtime are there; nothing deploys this file."""
    import function_app
    from grants_local.host import indexed_functions

    values = example_values()
    expressions = {
        name
        for function in indexed_functions(function_app.app)
        for binding in function.get_bindings()
        for value in binding.get_dict_repr().values()
        if isinstance(value, str)
        for name in re.findall(r"%([^%]+)%", value)
    }
    assert expressions
    assert expressions <= set(values)
    assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"
    assert values["AzureWebJobsStorage"] == values["GrantsLedger"] == "UseDevelopmentStorage=true"
    assert "ServiceBusConnection__fullyQualifiedNamespace" in values
    assert "ServiceBusConnection__credential" not in values  # locally the host signs in as the developer


async def test_given_the_example_settings_a_fresh_worker_indexes_the_functions_and_grants_end_to_end(
    azurite: AzuriteTables, graph: GraphDouble, token_endpoint: TokenEndpoint
) -> None:
    ledger = await new_ledger_table(azurite)
    values = example_values()
    given = {
        "GRAPH_BASE_URL": graph.base_url,
        **token_endpoint.env(),
        # The connection string's explicit form: the test Azurite listens on a free port, not Azurite's default.
        "GrantsLedger": f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
        f"TableEndpoint={ledger.endpoint};",
        "GrantsLedger__tableName": ledger.table,
        "ServiceBusConnection__fullyQualifiedNamespace": "sb-grants-test.servicebus.windows.net",
    }
    placeholders = {name for name, value in values.items() if PLACEHOLDER.match(value)}
    assert placeholders <= set(given), "a placeholder the test does not fill"
    environment = {
        **{name: os.environ[name] for name in ("PATH", "HOME", "SYSTEMROOT") if name in os.environ},
        "GRPC_VERBOSITY": "ERROR",
        **values,
        **given,
    }
    source = {"system": "other", "reference": "INC0000001"}  # the grants queue's producer: examples/policy.json lets it
    request = json.loads(body(requestId="core-tools-1", member={"id": USER, "type": "user"}, source=source))
    finished = subprocess.run(  # noqa: S603, ASYNC221 (this interpreter, a fixed script; the fixtures are async)
        [sys.executable, "-c", WORKER, json.dumps(request)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    result: dict[str, Any] = json.loads(finished.stdout.strip().splitlines()[-1])
    assert set(result["functions"]) >= {
        "grant_membership",
        "grant_membership_bulk",
        "grant_webhook",
        "hr_events",
        "expiry_sweep",
        "grant_callbacks",
        "grant_callback_retries",
    }
    assert result["calls"] == ["Complete"]
    assert graph.members_of(AU) == {USER}
    assert result["status"]["status"] == "granted"
