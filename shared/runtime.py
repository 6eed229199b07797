"""The worker process's services: built from the environment on first use, or installed by a local host."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import azure.functions as func

from shared.adapters.governor import Lane, lane
from shared.bootstrap import Services, bootstrap
from shared.config import Settings
from shared.core.messaging import MessageActions
from shared.core.policy import GrantPolicy
from shared.producers.hr_rules import HrRules
from shared.producers.webhook import receive
from shared.service.settlement import Settled

__all__ = [
    "check_configuration",
    "installed",
    "process_grant_message",
    "process_hr_event",
    "process_webhook",
    "services",
]

_services: Services | None = None


def check_configuration() -> None:
    """Validate the app settings, the grant policy and the HR rules now, so that a bad one stops the app at start-up
    with an error naming it (raises `ConfigError`) instead of failing every message later."""
    settings = Settings.from_env(os.environ)
    if settings.policy_path:
        GrantPolicy.load(settings.policy_path)
    if settings.hr_rules_path:
        HrRules.load(settings.hr_rules_path)


def services() -> Services:
    """The process's services; the first call builds them from the environment."""
    global _services
    if _services is None:
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


async def process_grant_message(message: Any, actions: MessageActions, *, lane_name: Lane = "interactive") -> Settled:
    """Entry point for the Service Bus triggers: process and settle one grant message in lane `lane_name`
    (``bulk`` for the bulk queue: its Graph writes wait behind interactive ones, its retries stay bulk)."""
    with lane(lane_name):
        return await services().settle_grant(message, actions)


async def process_hr_event(message: Any, actions: MessageActions) -> Settled:
    """Entry point for the HR events trigger: derive grant messages from one event and settle it."""
    return await services().settle_hr_event(message, actions)


async def process_webhook(request: func.HttpRequest) -> func.HttpResponse:
    """Entry point for the ticketing webhook: authenticate, validate and enqueue one grant request."""
    current = services()
    answer = await receive(
        headers=request.headers,
        body=request.get_body(),
        secret=current.settings.webhook_secret,
        sender=current.sender,
        now=current.now,
    )
    return func.HttpResponse(
        answer.body, status_code=answer.status, headers=answer.headers, mimetype=answer.content_type
    )
