"""The worker process's services: built from the environment on first use, or installed by a local host.

Importing this module (as ``function_app`` does, at the worker's start) imports only what the functions'
declarations and the configuration check need; the services' modules (`shared.bootstrap`: the handlers, the HTTP
client, the credential, the Graph and ledger clients and their libraries) are imported when the first invocation
builds them, and the status API's module by its first request.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import azure.functions as func

from shared.config import Settings
from shared.core.messaging import Lane

if TYPE_CHECKING:
    from shared.bootstrap import Services
    from shared.core.messaging import MessageActions
    from shared.core.statuses import Settled
    from shared.handlers.http import Answer

__all__ = [
    "check_configuration",
    "configure_telemetry",
    "installed",
    "process_callback",
    "process_drift_confirm",
    "process_drift_report",
    "process_drift_sweep",
    "process_expiry_sweep",
    "process_grant_message",
    "process_history",
    "process_hr_event",
    "process_hr_event_status",
    "process_job_status",
    "process_status",
    "process_webhook",
    "producer_queues",
    "services",
]

_services: Services | None = None


def check_configuration() -> None:
    """Validate the app settings, the grant policy and the HR rules now, so that a bad one stops the app at start-up
    with an error naming it (raises `ConfigError`) instead of failing every message later."""
    from shared.core.policy import GrantPolicy

    settings = Settings.from_env(os.environ)
    policy = GrantPolicy.default()
    if settings.policy_path:
        from shared.core.drift_policy import DriftPolicy

        policy = GrantPolicy.load(settings.policy_path)
        DriftPolicy.load(settings.policy_path)
    if settings.hr_rules_path:
        from shared.core.hr_rules import HrRules

        HrRules.load(settings.hr_rules_path)
        policy.check_leavers(settings.producers.hr_senders(hr_events_queue=settings.hr_events_queue))


def producer_queues() -> list[tuple[str, str, bool]]:
    """The queues of the producer registry beyond the app's own three (grants, bulk, HR events): ``(function name,
    queue, carries HR events)`` for each, for ``function_app`` to declare one trigger per queue (a producer is known
    by the queue only it may send to)."""
    settings = Settings.from_env(os.environ)
    own = (settings.grants_queue, settings.bulk_queue, settings.hr_events_queue)
    entries = settings.producers.entries(grants_queue=own[0], bulk_queue=own[1], hr_events_queue=own[2])
    declared = []
    for entry in entries:
        if entry.queue in own or entry.producer is None:
            continue
        slug = entry.producer.name.replace("-", "_")
        name = f"hr_events_from_{slug}" if entry.hr_events else f"grants_from_{slug}"
        declared.append((name, entry.queue, entry.hr_events))
    return declared


def configure_telemetry() -> None:
    """With ``PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true`` (the worker exports with OpenTelemetry), give the
    outcome lines their fields as customDimensions (`shared.adapters.telemetry`); otherwise nothing, and no import."""
    if Settings.from_env(os.environ).worker_telemetry:
        from shared.adapters.telemetry import install
        from shared.service.settle import outcome_log

        install(outcome_log)


def services() -> Services:
    """The process's services; the first call builds them from the environment."""
    global _services
    if _services is None:
        from shared.bootstrap import bootstrap

        _services = bootstrap(Settings.from_env(os.environ))
    return _services


@contextmanager
def installed(replacement: Services) -> Iterator[Services]:
    """Use `replacement` as the process's services inside the block (the local host and tests do)."""
    global _services
    previous, _services = _services, replacement
    try:
        yield replacement
    finally:
        _services = previous


async def process_grant_message(
    message: Any, actions: MessageActions, *, lane: Lane = Lane.INTERACTIVE, queue: str | None = None
) -> Settled:
    """Entry point for the grant triggers: process and settle one grant message from a producer's own `queue`, or
    (None) from the app's own queue of `lane` (``bulk`` for the bulk queue: its Graph writes wait behind interactive
    ones, its retries stay bulk)."""
    return await services().grant(message, actions, lane=lane, queue=queue)


async def process_hr_event(message: Any, actions: MessageActions, *, queue: str | None = None) -> Settled:
    """Entry point for the HR events triggers: derive grant messages from one event (from a producer's own `queue`,
    or the app's HR events queue) and settle it."""
    return await services().hr_event(message, actions, queue=queue)


async def process_expiry_sweep() -> int:
    """Entry point for the expiry sweep timer: send the removal of every pending removal that is due."""
    return await services().expiry_sweep()


async def process_drift_sweep() -> int:
    """Entry point for the drift sweep timer: check every target against the ledger, repair where the policy says,
    hold mass removals; return how many findings there were."""
    return (await services().drift.sweep()).findings


async def process_drift_report(request: func.HttpRequest) -> func.HttpResponse:
    """Entry point for ``GET /api/drift[?target=]``: the drift of every target (or one), read now, nothing repaired."""
    return _response(await services().drift.report(dict(request.params), request.headers))


async def process_drift_confirm(request: func.HttpRequest) -> func.HttpResponse:
    """Entry point for ``POST /api/drift/{target}/confirm``: release removals the blast-radius guard holds, once."""
    target = request.route_params.get("target", "")
    return _response(await services().drift.confirm(target, request.get_body(), request.headers))


async def process_callback(message: Any, actions: MessageActions) -> Settled:
    """Entry point for the callback triggers: POST one outcome event to its callback URL, signed, and settle it."""
    return await services().callback(message, actions)


async def process_webhook(request: func.HttpRequest) -> func.HttpResponse:
    """Entry point for the ticketing webhook: authenticate, validate and enqueue one grant request."""
    return _response(await services().webhook(headers=request.headers, body=request.get_body()))


async def process_status(request: func.HttpRequest) -> func.HttpResponse:
    """Entry point for ``GET /api/grants/{requestId}``: the request's status record from the ledger."""
    request_id = request.route_params.get("requestId", "")
    return _response(await services().status.request(request_id, dict(request.params), request.headers))


async def process_job_status(request: func.HttpRequest) -> func.HttpResponse:
    """Entry point for ``GET /api/jobs/{jobId}``: a bulk job's progress, totals by status and failed rows."""
    job_id = request.route_params.get("jobId", "")
    return _response(await services().status.group("job", job_id, dict(request.params), request.headers))


async def process_hr_event_status(request: func.HttpRequest) -> func.HttpResponse:
    """Entry point for ``GET /api/hr-events/{eventId}``: an HR event's grants, as a job's rows."""
    event_id = request.route_params.get("eventId", "")
    return _response(await services().status.group("hrEvent", event_id, dict(request.params), request.headers))


async def process_history(request: func.HttpRequest) -> func.HttpResponse:
    """Entry point for ``GET /api/history?member=|target=[&since=]``: every request that named it, newest first."""
    return _response(await services().status.history(dict(request.params), request.headers))


def _response(answer: Answer) -> func.HttpResponse:
    return func.HttpResponse(
        answer.body, status_code=answer.status, headers=answer.headers, mimetype=answer.content_type
    )
