"""Composition root: build the process's collaborators once, with real adapters unless told otherwise.

Azure and the local host call the same `bootstrap()`; the local host and the tests pass doubles for the
parts that cannot run here (the retry sender, the clock) and configure the rest through the environment,
exactly as in Azure (``GRAPH_BASE_URL``, ``IDENTITY_ENDPOINT``/``IDENTITY_HEADER``, ``GRANTS_*``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from shared.adapters.governor import WriteGovernor
from shared.adapters.graph import GraphClient, new_http_client
from shared.adapters.identity import ManagedIdentityTokens, TokenSource, managed_identity_credential
from shared.adapters.lanes import LaneSender
from shared.config import Settings
from shared.core.contract import GrantCommand
from shared.core.errors import ConfigError
from shared.core.messaging import Delivery, MessageActions, MessageSender
from shared.core.policy import GrantPolicy
from shared.core.retry import RetryPolicy
from shared.producers.hr import settle_hr_event
from shared.producers.hr_rules import HrRules
from shared.service.grants import GrantService
from shared.service.membership import Result
from shared.service.settlement import Settled, settle

__all__ = ["Services", "bootstrap"]

_log = logging.getLogger(__name__)


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, kw_only=True)
class Services:
    """Everything a message needs, built once per process."""

    settings: Settings
    http: httpx.AsyncClient
    graph: GraphClient
    grants: GrantService
    retry_policy: RetryPolicy
    sender: MessageSender
    now: Callable[[], datetime] = _utc_now
    hr_rules: HrRules | None = None
    _closers: tuple[Any, ...] = field(default=(), repr=False)

    async def handle(self, command: GrantCommand) -> Result:
        """Carry out one validated command: guardrails, Graph, expiry."""
        return await self.grants.execute(command)

    async def settle_grant(self, message: Any, actions: MessageActions) -> Settled:
        """Process and settle one received grant message."""
        return await settle(
            Delivery.of(message),
            handle=self.handle,
            actions=actions,
            sender=self.sender,
            retry_policy=self.retry_policy,
            now=self.now,
        )

    async def settle_hr_event(self, message: Any, actions: MessageActions) -> Settled:
        """Turn one received HR event into grant messages on the grants queue, and settle it."""
        return await settle_hr_event(
            Delivery.of(message), rules=self.hr_rules, actions=actions, sender=self.sender, now=self.now
        )

    async def aclose(self) -> None:
        """Close what this process opened (the HTTP pool, the Service Bus link, the credential)."""
        for closer in self._closers:
            await closer.close()
        await self.http.aclose()


def bootstrap(
    settings: Settings,
    *,
    tokens: TokenSource | None = None,
    sender: MessageSender | None = None,
    retry_policy: RetryPolicy | None = None,
    now: Callable[[], datetime] = _utc_now,
    governor: WriteGovernor | None = None,
) -> Services:
    """Wire the app: one HTTP client, one managed-identity credential, one Graph client, one sender."""
    http = new_http_client()
    closers: list[Any] = []
    credential = None
    if tokens is None or sender is None:
        credential = managed_identity_credential(http=http, client_id=settings.client_id)
        closers.append(credential)
    if tokens is None:
        assert credential is not None
        tokens = ManagedIdentityTokens(credential, scope=settings.graph_scope)
    if sender is None:
        sender = _servicebus_sender(settings, http, credential, closers)
    grant_policy = GrantPolicy.load(settings.policy_path) if settings.policy_path else GrantPolicy.default()
    _log.log(logging.WARNING if settings.policy_path is None else logging.INFO, grant_policy.describe())
    graph = GraphClient(
        http=http,
        tokens=tokens,
        base_url=settings.graph_base_url,
        governor=governor
        or WriteGovernor(
            rate=settings.graph_write_rate,
            adaptive=settings.graph_write_adaptive,
            window_seconds=settings.graph_write_window_seconds,
        ),
    )
    grants = GrantService(
        graph=graph,
        policy=grant_policy,
        sender=sender,
        now=now,
        activate_roles=settings.activate_roles,
        dry_run=settings.dry_run,
    )
    return Services(
        settings=settings,
        http=http,
        graph=graph,
        grants=grants,
        retry_policy=retry_policy
        or RetryPolicy(
            max_attempts=settings.max_attempts,
            base_delay=settings.retry_base_seconds,
            max_delay=settings.retry_max_seconds,
            member_not_found_window=settings.member_not_found_window_seconds,
        ),
        sender=sender,
        now=now,
        hr_rules=HrRules.load(settings.hr_rules_path) if settings.hr_rules_path else None,
        _closers=tuple(closers),
    )


def _servicebus_sender(
    settings: Settings, http: httpx.AsyncClient, credential: Any, closers: list[Any]
) -> MessageSender:
    from shared.adapters.servicebus import ServiceBusSender

    if not settings.servicebus_namespace:
        raise ConfigError(
            "ServiceBusConnection__fullyQualifiedNamespace is not set: the app needs it to schedule retry copies"
        )
    if settings.servicebus_client_id != settings.client_id:
        credential = managed_identity_credential(http=http, client_id=settings.servicebus_client_id)
        closers.append(credential)
    sender = LaneSender(
        {
            "interactive": ServiceBusSender(
                namespace=settings.servicebus_namespace, queue=settings.grants_queue, credential=credential
            ),
            "bulk": ServiceBusSender(
                namespace=settings.servicebus_namespace, queue=settings.bulk_queue, credential=credential
            ),
        }
    )
    closers.insert(0, sender)
    return sender
