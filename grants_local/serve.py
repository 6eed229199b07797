"""``serve-local``: the whole app on loopback, running until stopped.

The Graph double and the managed-identity token endpoint (seeded from ``examples/directory.json``), an
in-process grants queue and hr-events queue each drained continuously by a `LocalHost` through the
registered functions, and the registered ``grant_webhook`` function served on ``127.0.0.1:<port>``:

- ``POST /api/grants``: the webhook, as in Azure (signed; the function key is not checked locally);
- ``GET /api/grants/{requestId}`` and ``GET /api/jobs/{jobId}``: a request's status and a bulk job's totals, from
  the local ledger (what `grants status --local` and `grants job --local` read);
- ``POST /local/hr-events``: puts the body on the hr-events queue (local only; an HR system's send).

Outcome events go to an in-process outcomes topic (``GRANTS_OUTCOMES_TOPIC``) whose ``callbacks`` subscription,
and the callback retry queue, are drained by the registered ``grant_callbacks`` / ``grant_callback_retries``
functions: a webhook request with ``callbackUrl`` pointing at a local receiver (``examples/callback_receiver.py``)
gets its signed callback.

Each settled message prints its outcome line. Settings come from the environment; unset ones get local
defaults: ``GRANTS_HR_RULES`` = ``examples/hr-rules.json``, ``GRANTS_WEBHOOK_SECRET`` = `LOCAL_WEBHOOK_SECRET`
(published here, so it is no secret: for local use only), ``GRANTS_OUTCOMES_TOPIC`` = ``grant-outcomes`` and
``GRANTS_CALLBACK_LOOPBACK`` = ``true`` (callbacks to 127.0.0.1 / localhost over plain http; refused in Azure).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, suppress
from typing import Any, TextIO, cast

import azure.functions as func

from grants_cli.printable import printable
from grants_local._http import LoopbackServer, Request, Response
from grants_local.azurite import local_ledger
from grants_local.demo import EXAMPLES
from grants_local.graph_double import GraphDouble
from grants_local.host import LocalHost, registered_function
from grants_local.queue import LocalQueue, LocalSender
from grants_local.run import os_environment
from grants_local.settlement_server import LocalSettlementServer, point_message_actions_at
from grants_local.token_endpoint import TokenEndpoint
from grants_local.topic import CALLBACKS_SUBSCRIPTION, LocalPublisher, outcomes_topic
from shared.bootstrap import bootstrap
from shared.config import Settings
from shared.runtime import installed
from shared.service.settlement import outcome_log

__all__ = ["LOCAL_WEBHOOK_SECRET", "serve_local"]

LOCAL_WEBHOOK_SECRET = "local-only-webhook-secret-do-not-deploy"  # noqa: S105 (published: local use only)
_IDLE_POLL_SECONDS = 0.1


class _OutcomePrinter(logging.Handler):
    """Prints one short line per settled grant message or HR event."""

    def __init__(self, out: TextIO) -> None:
        super().__init__(logging.INFO)
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        grant: Mapping[str, Any] | None = getattr(record, "grant", None)
        hr: Mapping[str, Any] | None = getattr(record, "hrEvent", None)
        callback: Mapping[str, Any] | None = getattr(record, "callback", None)
        if grant is not None:
            kind, fields, name = "grant", grant, grant.get("requestId")
        elif hr is not None:
            kind, fields, name = "hr-event", hr, hr.get("eventId")
        elif callback is not None:
            kind, fields, name = "callback", callback, callback.get("requestId")
        else:
            return
        reason = f" {printable(fields['reason'])}:" if fields.get("reason") else ""
        outcome, description = printable(fields["outcome"]), printable(fields["description"])
        self.out.write(f"{kind:<8} {outcome:<15} {printable(name)}{reason} {description}\n")
        self.out.flush()


#: The status routes served locally: path prefix, registered function, route parameter.
_READS = (("/api/grants/", "grant_status", "requestId"), ("/api/jobs/", "job_status", "jobId"))


async def serve_local(
    out: TextIO,
    *,
    port: int = 7071,
    env: Mapping[str, str] = os.environ,
    stop: asyncio.Event | None = None,
    ready: Callable[[int], None] | None = None,
) -> int:
    """Serve until `stop` is set (or the process is interrupted); then deliver what is queued and return 0."""
    import function_app

    stop = stop or asyncio.Event()
    grants, hr_events, callback_retries = LocalQueue(), LocalQueue(), LocalQueue()
    topic = outcomes_topic()
    loop = asyncio.get_running_loop()
    webhook = registered_function(function_app.app, "grant_webhook")

    def answer(request: Request) -> Response:
        if request.method == "POST" and request.path == "/api/grants":
            incoming = func.HttpRequest(
                "POST", f"http://127.0.0.1:{port}/api/grants", headers=dict(request.headers.items()), body=request.body
            )
            response = asyncio.run_coroutine_threadsafe(_call(webhook, incoming), loop).result(timeout=60)
            return Response(
                response.status_code,
                json.loads(response.get_body()),
                dict(response.headers),
                content_type=response.mimetype,
            )
        for prefix, name, parameter in (
            ("/api/grants/", "grant_status", "requestId"),
            ("/api/jobs/", "job_status", "jobId"),
        ):
            if request.method == "GET" and request.path.startswith(prefix):
                reading = func.HttpRequest(
                    "GET",
                    f"http://127.0.0.1:{port}{prefix}x",
                    body=b"",
                    route_params={parameter: request.path[len(prefix) :]},
                )
                function = registered_function(function_app.app, name)
                response = asyncio.run_coroutine_threadsafe(_call(function, reading), loop).result(timeout=60)
                return Response(
                    response.status_code,
                    json.loads(response.get_body()),
                    dict(response.headers),
                    content_type=response.mimetype,
                )
        if request.method == "POST" and request.path == "/local/hr-events":
            message_id = request.headers.get("X-Message-Id") or str(uuid.uuid4())
            hr_events.send(request.body, message_id=message_id, content_type="application/json")
            return Response(202, {"messageId": message_id})
        return Response(
            404,
            {"error": "POST /api/grants, GET /api/grants/{requestId}, GET /api/jobs/{jobId} or POST /local/hr-events"},
        )

    printer = _OutcomePrinter(out)
    async with AsyncExitStack() as stack:
        tokens = stack.enter_context(TokenEndpoint())
        graph = stack.enter_context(GraphDouble(tokens))
        stack.enter_context(os_environment(tokens.env()))
        graph.load(EXAMPLES / "directory.json")
        settings = Settings.from_env(
            {
                "GRANTS_HR_RULES": str(EXAMPLES / "hr-rules.json"),
                "GRANTS_WEBHOOK_SECRET": LOCAL_WEBHOOK_SECRET,
                "GRANTS_OUTCOMES_TOPIC": "grant-outcomes",
                "GRANTS_CALLBACK_LOOPBACK": "true",
                **env,
                "GRAPH_BASE_URL": graph.base_url,
            }
        )
        ledger = await stack.enter_async_context(local_ledger())
        services = bootstrap(
            ledger.settings(settings),
            sender=LocalSender(grants),
            publisher=LocalPublisher(topic),
            callback_sender=LocalSender(callback_retries),
            ledger_credential=ledger.credential(),
        )
        subscription = topic.subscription(CALLBACKS_SUBSCRIPTION)
        with (
            LocalSettlementServer(grants) as grants_settlement,
            LocalSettlementServer(hr_events) as hr_settlement,
            LocalSettlementServer(subscription) as callbacks_settlement,
            LocalSettlementServer(callback_retries) as retries_settlement,
            installed(services),
        ):
            hosts = [
                _host(hr_events, function_app.app, "hr_events", hr_settlement.address),
                _host(grants, function_app.app, "grant_membership", grants_settlement.address),
            ]
            if settings.outcomes_topic:
                hosts += [
                    _host(subscription, function_app.app, "grant_callbacks", callbacks_settlement.address),
                    _host(callback_retries, function_app.app, "grant_callback_retries", retries_settlement.address),
                ]
            server = LoopbackServer(answer, port=port)
            previous_level = outcome_log.level
            outcome_log.addHandler(printer)
            outcome_log.setLevel(logging.INFO)
            out.write(
                f"Serving on http://127.0.0.1:{server.port}: POST /api/grants (signed webhook), "
                "GET /api/grants/{requestId} and /api/jobs/{jobId} (status), "
                f"POST /local/hr-events (an HR event). Graph double at {graph.base_url}. "
                f"{settings.callbacks.describe()}. Ctrl-C stops.\n"
            )
            out.flush()
            if ready is not None:
                ready(server.port)
            try:
                while not stop.is_set():
                    for host in hosts:
                        await host.drain()
                    await _wait(stop, _IDLE_POLL_SECONDS)
            finally:
                server.close()
                for host in hosts:  # what was accepted is delivered before the queues go away
                    await host.drain()
                outcome_log.removeHandler(printer)
                outcome_log.setLevel(previous_level)
                await services.aclose()
    return 0


def _host(queue: LocalQueue, app: Any, name: str, address: str) -> LocalHost:
    return LocalHost(
        queue=queue,
        function=registered_function(app, name),
        actions=point_message_actions_at(address),
        clock=time.time,
    )


async def _call(function: Callable[..., Awaitable[None]], request: func.HttpRequest) -> func.HttpResponse:
    return cast(func.HttpResponse, await function(request))


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=seconds)
