"""``serve-local``: the whole app on loopback, running until stopped.

The Graph double and the managed-identity token endpoint (seeded from ``examples/directory.json``), in-process
grants, bulk and hr-events queues each drained continuously by a `LocalHost` through the registered functions
(``grant_membership``, ``grant_membership_bulk`` in the bulk lane, ``hr_events``), the ledger in a local Azurite,
and the registered HTTP functions served on ``127.0.0.1:<port>`` (the function key is not checked locally):

- ``POST /api/grants``: the webhook, as in Azure (signed);
- ``GET /api/grants/{requestId}``, ``/api/jobs/{jobId}``, ``/api/hr-events/{eventId}`` and
  ``/api/history?member=…|target=…[&since=…]``: what `grants status|job|hr-event|history --serve-local` read;
- ``GET /api/drift[?target=…]`` and ``POST /api/drift/{target}/confirm``: what `grants drift --serve-local` reads and
  sends (the drift sweep's timer does not run locally);
- ``POST /local/hr-events``: puts the body on the hr-events queue (local only; an HR system's send);
- ``POST /local/queues/{queue}/messages``: a JSON array of at most `MAX_BATCH` messages (``body`` as text,
  ``messageId``, ``applicationProperties``) onto the grants or the bulk queue, as they are named in the settings
  (local only: what `grants submit --serve-local` sends); ``202`` with how many were accepted and how many
  duplicate detection dropped, ``400`` problem details for anything else.

Outcome events go to an in-process outcomes topic (``GRANTS_OUTCOMES_TOPIC``) whose ``callbacks`` subscription,
and the callback retry queue, are drained by the registered ``grant_callbacks`` / ``grant_callback_retries``
functions: a webhook request with ``callbackUrl`` pointing at a local receiver (``examples/callback_receiver.py``)
gets its signed callback.

Callers are told apart as App Service authentication tells them apart in Azure (`shared.core.access`): serve-local
stands in for it, dropping any ``X-MS-*`` header a caller sends and turning a local token, ``Authorization: Bearer
local:<who>``, into the client principal App Service would pass on: ``local:operator`` (app role Grants.Operator,
what the CLI's ``--serve-local`` uses), ``local:reader`` (Grants.Reader), ``local:<producer>`` (a principal acting for
that producer). The tokens are published here, so they are no secret: local use only. Each producer's own queue in
the registry (``GRANTS_PRODUCERS``) gets a queue here too, drained by its registered function.

Each settled message prints its outcome line; SIGTERM stops it as Ctrl-C does. Settings come from the
environment; unset ones get local defaults: ``GRANTS_HR_RULES`` = ``examples/hr-rules.json``,
``GRANTS_WEBHOOK_SECRET`` = `LOCAL_WEBHOOK_SECRET` (published here, so it is no secret: for local use only),
``GRANTS_OUTCOMES_TOPIC`` = ``grant-outcomes``, ``GRANTS_CALLBACK_LOOPBACK`` = ``true`` (callbacks to
127.0.0.1 / localhost over plain http; refused in Azure), and short retries on the wall clock
(``GRANTS_RETRY_BASE_SECONDS`` = 1, ``GRANTS_MEMBER_NOT_FOUND_WINDOW_SECONDS`` = 5): `LOCAL_DEFAULTS`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, suppress
from typing import Any, Final, TextIO, cast

import azure.functions as func

from grants_common.printable import printable
from grants_local._http import LoopbackServer, Request, Response
from grants_local.azurite import local_ledger
from grants_local.demo import EXAMPLES
from grants_local.host import LocalHost, registered_function
from grants_local.queue import LocalQueue, LocalSender
from grants_local.run import check_identity, graph_environment, identity_environment
from grants_local.settlement_server import LocalSettlementServer, point_message_actions_at
from grants_local.topic import CALLBACKS_SUBSCRIPTION, LocalPublisher, outcomes_topic
from shared.adapters.lanes import LaneSender
from shared.bootstrap import bootstrap
from shared.config import Settings
from shared.core.access import CLIENT_PRINCIPAL_HEADER, Role, client_principal_header
from shared.core.messaging import Lane
from shared.core.producers import Producers
from shared.core.signing import SIGNATURE_HEADER
from shared.runtime import installed
from shared.service.settle import outcome_log

__all__ = ["LOCAL_DEFAULTS", "LOCAL_WEBHOOK_SECRET", "serve_local"]

LOCAL_WEBHOOK_SECRET = "local-only-webhook-secret-do-not-deploy"  # noqa: S105 (published: local use only)
#: What serve-local prints when a webhook request comes without a signature (curl, a browser…).
UNSIGNED_HINT: Final = (
    "the webhook takes signed requests only: send a ticket with "
    "`.venv/bin/python examples/send_webhook.py examples/ticket.json` (it signs with the local secret)"
)
#: What serve-local sets when the environment does not.
LOCAL_DEFAULTS: Final[Mapping[str, str]] = {
    "GRANTS_HR_RULES": str(EXAMPLES / "hr-rules.json"),
    "GRANTS_WEBHOOK_SECRET": LOCAL_WEBHOOK_SECRET,
    "GRANTS_OUTCOMES_TOPIC": "grant-outcomes",
    "GRANTS_CALLBACK_LOOPBACK": "true",
    # Retries on the wall clock, so short ones: a member still missing after 5 s (a mistyped id) is dead-lettered
    # within seconds, not after Azure's 10-minute replication window.
    "GRANTS_RETRY_BASE_SECONDS": "1",
    "GRANTS_MEMBER_NOT_FOUND_WINDOW_SECONDS": "5",
    "GRANTS_MEMBER_NOT_FOUND_MIN_ATTEMPTS": "3",
    # App Service authentication, as serve-local stands in for it (`_authenticated`)
    "WEBSITE_AUTH_ENABLED": "true",
}
#: The local token's prefix (``Authorization: Bearer local:<who>``).
LOCAL_TOKEN_PREFIX: Final = "local:"  # noqa: S105 (a published prefix, not a secret)
_LOCAL_ROLES: Final[Mapping[str, tuple[str, ...]]] = {
    "operator": (Role.OPERATOR.value,),
    "reader": (Role.READER.value,),
}
_IDLE_POLL_SECONDS = 0.1
#: On stop, messages due within this many seconds (retries) are still delivered; later ones (a future HR
#: effective day) go with the in-memory queues.
_STOP_HORIZON_SECONDS = 60.0


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
_READS: Final = (
    ("/api/grants/", "grant_status", "requestId"),
    ("/api/jobs/", "job_status", "jobId"),
    ("/api/hr-events/", "hr_event_status", "eventId"),
)
_QUEUES: Final = "/local/queues/"
_ROUTES: Final = (
    "POST /api/grants (signed webhook), GET /api/grants/{requestId}, /api/jobs/{jobId}, /api/hr-events/{eventId} "
    "and /api/history?member=|target= (status), GET /api/drift?target= and POST /api/drift/{target}/confirm (drift), "
    "POST /local/hr-events (an HR event), "
    "POST /local/queues/{queue}/messages (a batch onto the grants or bulk queue)"
)
#: The most messages one POST /local/queues/{queue}/messages takes.
MAX_BATCH: Final = 500


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
    grants, bulk, hr_events, callback_retries = LocalQueue(), LocalQueue(), LocalQueue(), LocalQueue()
    queues: dict[str, LocalQueue] = {}
    topic = outcomes_topic()
    loop = asyncio.get_running_loop()
    webhook = registered_function(function_app.app, "grant_webhook")

    def answer(request: Request) -> Response:
        headers = _authenticated(dict(request.headers.items()), producers)
        if request.method == "POST" and request.path == "/api/grants":
            incoming = func.HttpRequest(
                "POST", f"http://127.0.0.1:{port}/api/grants", headers=headers, body=request.body
            )
            answered = _answered(asyncio.run_coroutine_threadsafe(_call(webhook, incoming), loop).result(timeout=60))
            if answered.status == 401 and SIGNATURE_HEADER.lower() not in {name.lower() for name in request.headers}:
                out.write(f"webhook  401             unsigned: {UNSIGNED_HINT}\n")
                out.flush()
            return answered
        if request.method == "GET":
            reading = _reading(request, port, headers)
            if reading is not None:
                function, incoming = reading
                call = _call(registered_function(function_app.app, function), incoming)
                return _answered(asyncio.run_coroutine_threadsafe(call, loop).result(timeout=60))
        if request.method == "POST" and request.path.startswith("/api/drift/") and request.path.endswith("/confirm"):
            target = request.path[len("/api/drift/") : -len("/confirm")]
            incoming = func.HttpRequest(
                "POST",
                f"http://127.0.0.1:{port}{request.path}",
                headers=headers,
                body=request.body,
                route_params={"target": target},
            )
            call = _call(registered_function(function_app.app, "drift_confirm"), incoming)
            return _answered(asyncio.run_coroutine_threadsafe(call, loop).result(timeout=300))
        if request.method == "POST" and request.path == "/local/hr-events":
            message_id = request.headers.get("X-Message-Id") or str(uuid.uuid4())
            hr_events.send(request.body, message_id=message_id, content_type="application/json")
            return Response(202, {"messageId": message_id})
        if request.method == "POST" and request.path.startswith(_QUEUES) and request.path.endswith("/messages"):
            queue = queues.get(request.path[len(_QUEUES) : -len("/messages")])
            if queue is not None:
                return _enqueue(queue, request.body)
        return Response(404, {"error": f"the routes are: {_ROUTES}"})

    printer = _OutcomePrinter(out)
    async with AsyncExitStack() as stack:
        graph_env = stack.enter_context(graph_environment(env))  # the doubles unless GRAPH_BASE_URL is set
        settings = Settings.from_env({**LOCAL_DEFAULTS, **graph_env})
        settings = dataclasses.replace(settings, producers=local_principals(settings.producers))
        producers = settings.producers
        check_identity(settings, graph_env)
        stack.enter_context(identity_environment(graph_env))
        ledger = await stack.enter_async_context(local_ledger())
        queues.update({settings.grants_queue: grants, settings.bulk_queue: bulk})
        own = (settings.grants_queue, settings.bulk_queue, settings.hr_events_queue)
        entries = [
            entry
            for entry in producers.entries(grants_queue=own[0], bulk_queue=own[1], hr_events_queue=own[2])
            if entry.queue not in own
        ]
        for entry in entries:  # each producer's own queue, delivered to its registered function
            queues[entry.queue] = LocalQueue()
        services = bootstrap(
            ledger.settings(settings),
            sender=LaneSender({Lane.INTERACTIVE: LocalSender(grants), Lane.BULK: LocalSender(bulk)}),
            publisher=LocalPublisher(topic),
            callback_sender=LocalSender(callback_retries),
            ledger_credential=ledger.credential(),
        )
        subscription = topic.subscription(CALLBACKS_SUBSCRIPTION)
        with (
            LocalSettlementServer(grants) as grants_settlement,
            LocalSettlementServer(bulk) as bulk_settlement,
            LocalSettlementServer(hr_events) as hr_settlement,
            LocalSettlementServer(subscription) as callbacks_settlement,
            LocalSettlementServer(callback_retries) as retries_settlement,
            installed(services),
        ):
            hosts = [
                _host(hr_events, function_app.app, "hr_events", hr_settlement.address),
                _host(grants, function_app.app, "grant_membership", grants_settlement.address),
                _host(bulk, function_app.app, "grant_membership_bulk", bulk_settlement.address),
            ]
            for entry in entries:
                assert entry.producer is not None
                slug = entry.producer.name.replace("-", "_")
                name = f"hr_events_from_{slug}" if entry.hr_events else f"grants_from_{slug}"
                settlement = stack.enter_context(LocalSettlementServer(queues[entry.queue]))
                hosts.append(_host(queues[entry.queue], function_app.app, name, settlement.address))
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
                f"serve-local on http://127.0.0.1:{server.port} (Ctrl-C stops)\n"
                f"  routes     {_ROUTES}\n"
                f"  graph      {_graph_line(env, graph_env)}\n"
                f"  {settings.callbacks.describe()}\n"
            )
            out.flush()
            if ready is not None:
                ready(server.port)
            terminated = _on_sigterm(loop, stop)
            try:  # each queue on its own, as in Azure: a long bulk job never holds the grants queue up
                await asyncio.gather(*(_serve_queue(host, stop) for host in hosts))
            finally:
                if terminated:
                    loop.remove_signal_handler(signal.SIGTERM)
                server.close()
                for host in hosts:  # what was accepted is delivered before the queues go away (retries too)
                    await host.drain(until=time.time() + _STOP_HORIZON_SECONDS)
                later = sum(queue.scheduled_count for queue in (hr_events, *queues.values()))
                if later:
                    out.write(f"{later} message(s) scheduled for later are dropped with the in-memory queues\n")
                outcome_log.removeHandler(printer)
                outcome_log.setLevel(previous_level)
                await services.aclose()
    return 0


def _graph_line(given: Mapping[str, str], used: Mapping[str, str]) -> str:
    """Where Graph and tokens come from: the settings given, or the doubles (with the settings that reach them, for
    a Core Tools run beside this one: docs/core-tools.md)."""
    if given.get("GRAPH_BASE_URL"):
        return f"Graph at {used['GRAPH_BASE_URL']} (GRAPH_BASE_URL), tokens from IDENTITY_ENDPOINT"
    reach = " ".join(f"{name}={used[name]}" for name in ("GRAPH_BASE_URL", "IDENTITY_ENDPOINT", "IDENTITY_HEADER"))
    return f"the Graph double and token endpoint (examples/directory.json): {reach}"


def _on_sigterm(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> bool:
    """Make SIGTERM stop serve-local as Ctrl-C does (queues drained, Azurite stopped); False where the loop cannot
    take signals (not the main thread, or not POSIX)."""
    try:
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    except (NotImplementedError, RuntimeError, ValueError):
        return False
    return True


async def _serve_queue(host: LocalHost, stop: asyncio.Event) -> None:
    """Deliver what is due now (a message scheduled for later waits without holding anything up) until `stop`."""
    while not stop.is_set():
        await host.drain(until=time.time())
        await _wait(stop, _IDLE_POLL_SECONDS)


def _reading(request: Request, port: int, headers: dict[str, str]) -> tuple[str, func.HttpRequest] | None:
    """The registered function and its request for a GET of a status route; None for any other path."""
    url = f"http://127.0.0.1:{port}{request.path}"
    params = dict(request.query)
    if request.path in ("/api/history", "/api/drift"):
        name = "grant_history" if request.path == "/api/history" else "drift_report"
        return name, func.HttpRequest("GET", url, headers=headers, body=b"", params=params)
    for prefix, name, parameter in _READS:
        if request.path.startswith(prefix):
            route_params = {parameter: request.path[len(prefix) :]}
            return name, func.HttpRequest(
                "GET", url, headers=headers, body=b"", route_params=route_params, params=params
            )
    return None


def local_principal(producer: str) -> str:
    """The Entra object id serve-local gives the principal acting for `producer` (the same on every run)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"entra-grants:local-producer:{producer}"))


def local_principals(producers: Producers) -> Producers:
    """`producers` with each one's local principal added (`local_principal`): ``local:<producer>`` acts for it."""
    return Producers(
        by_name={
            name: dataclasses.replace(producer, principals=producer.principals | {local_principal(name)})
            for name, producer in producers.by_name.items()
        },
        origin=producers.origin,
    )


def _authenticated(headers: Mapping[str, str], producers: Producers) -> dict[str, str]:
    """`headers` as App Service authentication passes them on: every ``X-MS-*`` a caller sent dropped, and for a
    local token (``Authorization: Bearer local:<who>``) the client principal it stands for."""
    passed = {name: value for name, value in headers.items() if not name.lower().startswith("x-ms-")}
    scheme, _, token = headers.get("Authorization", headers.get("authorization", "")).partition(" ")
    if scheme.lower() != "bearer" or not token.startswith(LOCAL_TOKEN_PREFIX):
        return passed
    who = token[len(LOCAL_TOKEN_PREFIX) :]
    if who in _LOCAL_ROLES:
        object_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"entra-grants:local-{who}"))
        principal = client_principal_header(object_id=object_id, name=f"local {who}", roles=_LOCAL_ROLES[who])
    elif producers.get(who) is not None:
        principal = client_principal_header(object_id=local_principal(who), name=f"local producer {who}")
    else:
        return passed
    return {**passed, CLIENT_PRINCIPAL_HEADER: principal}


def _answered(response: func.HttpResponse) -> Response:
    return Response(
        response.status_code, json.loads(response.get_body()), dict(response.headers), content_type=response.mimetype
    )


def _enqueue(queue: LocalQueue, raw: bytes) -> Response:
    """Put a batch (``[{"body", "messageId", "applicationProperties"}]``) on `queue`; all or nothing."""
    try:
        batch = json.loads(raw)
    except ValueError:
        batch = None
    problem = _batch_problem(batch)
    if problem is not None:
        return Response(400, {"title": "Invalid batch", "status": 400, "detail": problem}, content_type=_PROBLEM)
    dropped = queue.stats.duplicates_dropped
    for message in batch:
        queue.send(
            message["body"].encode(),
            message_id=message["messageId"],
            application_properties=message.get("applicationProperties") or {},
            content_type="application/json",
        )
    duplicates = queue.stats.duplicates_dropped - dropped
    return Response(202, {"accepted": len(batch) - duplicates, "duplicates": duplicates})


def _batch_problem(batch: Any) -> str | None:
    """What is wrong with a batch, or None."""
    if not isinstance(batch, list) or not 1 <= len(batch) <= MAX_BATCH:
        return f"the body must be a JSON array of 1 to {MAX_BATCH} messages"
    for number, message in enumerate(batch, start=1):
        if not isinstance(message, dict) or not isinstance(message.get("body"), str):
            return f"message {number}: body must be the message body as a string"
        if not isinstance(message.get("messageId"), str) or not 1 <= len(message["messageId"]) <= 128:
            return f"message {number}: messageId must be a string of 1 to 128 characters"
        properties = message.get("applicationProperties") or {}
        if not isinstance(properties, dict) or not all(
            isinstance(value, str)
            or (isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63)
            for value in properties.values()
        ):
            return f"message {number}: applicationProperties must map names to strings or 64-bit whole numbers"
    return None


_PROBLEM: Final = "application/problem+json"


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
