"""Composition root: build the process's collaborators once, with real adapters unless told otherwise. Wiring only.

Azure and the local host call the same `bootstrap()`; the local host and the tests pass doubles for the
parts that cannot run here (the retry sender, the clock) and configure the rest through the environment,
exactly as in Azure (``GRAPH_BASE_URL``, ``IDENTITY_ENDPOINT``/``IDENTITY_HEADER``, ``GRANTS_*``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import httpx

from shared.adapters.callbacks import CallbackClient
from shared.adapters.directory import DirectoryReader, ReadPacer, RoleIds, UnitKinds
from shared.adapters.governor import WriteGovernor
from shared.adapters.graph import GraphClient, new_http_client
from shared.adapters.identity import ManagedIdentityTokens, TokenSource, managed_identity_credential
from shared.adapters.lanes import LaneSender
from shared.adapters.ledger import Ledger
from shared.adapters.seal import Sealer, SealingPublisher, SealingSender
from shared.adapters.storage import ledger_table_client
from shared.config import Settings
from shared.core.contract import SourceSystem
from shared.core.drift_policy import DriftPolicy
from shared.core.errors import ConfigError
from shared.core.hr_rules import HrRules
from shared.core.messaging import Lane, MessageSender, OutcomePublisher
from shared.core.policy import GrantPolicy
from shared.core.retry import RetryPolicy
from shared.handlers.callback import CallbackHandler
from shared.handlers.drift import DriftHandler
from shared.handlers.expiry_sweep import ExpirySweep
from shared.handlers.grant import GrantHandler
from shared.handlers.hr_event import HrEventHandler
from shared.handlers.status import StatusApi
from shared.handlers.webhook import Webhook
from shared.service.drift import DriftService
from shared.service.gate import IntentGate
from shared.service.grants import GrantService

if TYPE_CHECKING:
    from azure.core.credentials import AzureNamedKeyCredential

__all__ = ["LIBRARY_LOGGERS", "Services", "bootstrap", "quiet_library_loggers"]

_log = logging.getLogger(__name__)

#: Loggers of the libraries the app uses, at WARNING unless set otherwise: the Functions worker sets the root logger
#: to INFO, and then httpx logs every request, azure-core every request's details, azure-identity every token.
LIBRARY_LOGGERS: Final = ("httpx", "httpcore", "azure.core", "azure.identity", "azure.servicebus", "uamqp")


def quiet_library_loggers() -> None:
    """Put each of `LIBRARY_LOGGERS` at WARNING, unless a level was set for it already (an operator's wins)."""
    for name in LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        if library.level == logging.NOTSET:
            library.setLevel(logging.WARNING)


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, kw_only=True)
class Services:
    """Everything the triggers need, built once per process: one handler per trigger and what they share."""

    settings: Settings
    http: httpx.AsyncClient
    graph: GraphClient
    grants: GrantService
    ledger: Ledger
    gate: IntentGate
    retry_policy: RetryPolicy
    senders: LaneSender
    now: Callable[[], datetime]
    grant: GrantHandler
    hr_event: HrEventHandler
    callback: CallbackHandler
    webhook: Webhook
    expiry_sweep: ExpirySweep
    status: StatusApi
    drift: DriftHandler
    _closers: tuple[Any, ...] = field(default=(), repr=False)

    async def aclose(self) -> None:
        """Close what this process opened (the HTTP pool, the Service Bus link, the credential)."""
        for closer in self._closers:
            await closer.close()
        await self.ledger.aclose()
        await self.http.aclose()


def bootstrap(
    settings: Settings,
    *,
    tokens: TokenSource | None = None,
    sender: MessageSender | None = None,
    retry_policy: RetryPolicy | None = None,
    now: Callable[[], datetime] = _utc_now,
    governor: WriteGovernor | None = None,
    publisher: OutcomePublisher | None = None,
    callback_sender: MessageSender | None = None,
    callback_client: CallbackClient | None = None,
    ledger_credential: AzureNamedKeyCredential | None = None,
) -> Services:
    """Wire the app: one HTTP client, one managed-identity credential, one Graph client, one sender, one ledger;
    with an outcomes topic also one publisher, one callback-queue sender and one callback client (each connects
    on first use); library loggers at WARNING (`quiet_library_loggers`).

    The ledger is the table `GrantsLedger__tableServiceUri` / `GrantsLedger__tableName`, reached with the
    managed identity; `ledger_credential` replaces that credential for a local Azurite only (its development key).
    """
    quiet_library_loggers()
    _log.info(settings.producers.describe())
    _log.info(settings.callbacks.describe())
    grant_policy = GrantPolicy.load(settings.policy_path) if settings.policy_path else GrantPolicy.default()
    grant_policy.check_registry(settings.producers)
    _log.log(logging.WARNING if settings.policy_path is None else logging.INFO, grant_policy.describe())
    hr_rules = HrRules.load(settings.hr_rules_path) if settings.hr_rules_path else None
    if hr_rules is not None:
        grant_policy.check_leavers(settings.producers.hr_senders(hr_events_queue=settings.hr_events_queue))
    http = new_http_client(own_pools=(settings.ledger_table_uri,) if settings.ledger_table_uri else ())
    closers: list[Any] = []
    credential = None
    topic = settings.outcomes_topic
    needs_identity = tokens is None or sender is None or ledger_credential is None
    if needs_identity or (topic and (publisher is None or callback_sender is None)):
        credential = managed_identity_credential(http=http, client_id=settings.client_id)
        closers.append(credential)
    if tokens is None:
        assert credential is not None
        tokens = ManagedIdentityTokens(credential, scope=settings.graph_scope)
    auth = ledger_credential or credential
    systems = {s.value: p.name for s in SourceSystem if (p := settings.producers.for_system(s.value)) is not None}
    table = ledger_table_client(settings.ledger, table=settings.ledger_table, identity=auth, http=http)
    ledger = Ledger(table, producers_of_systems=systems)
    sealer = Sealer(keys=ledger.seal_keys)
    if sender is None:
        sender = _servicebus_sender(settings, http, credential, closers)
    if topic:
        publisher = publisher or _servicebus_publisher(settings, topic, http, credential, closers)
        callback_sender = callback_sender or _servicebus_sender(
            settings, http, credential, closers, queue=settings.callback_queue
        )
    callback_client = callback_client or CallbackClient()
    closers.insert(0, callback_client)
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
    senders = LaneSender.sealed(LaneSender.single(sender), sealer)
    if callback_sender is not None:
        callback_sender = SealingSender(callback_sender, sealer)
    if publisher is not None:
        publisher = SealingPublisher(publisher, sealer)
    role_ids = RoleIds()  # a role template's id, looked up once per process for grants and drift alike
    units = UnitKinds()  # a unit's kind (restricted-management, dynamic), read once per process, again by a sweep
    grants = GrantService(
        graph=graph,
        policy=grant_policy,
        callbacks=settings.callbacks,
        senders=senders,
        now=now,
        activate_roles=settings.activate_roles,
        dry_run=settings.dry_run,
        role_ids=role_ids,
        units=units,
    )
    gate = IntentGate(ledger=ledger, grants=grants, now=now)
    retry_policy = retry_policy or RetryPolicy(
        max_attempts=settings.max_attempts,
        max_deliveries=settings.max_delivery_count,
        base_delay=settings.retry_base_seconds,
        max_delay=settings.retry_max_seconds,
        member_not_found_window=settings.member_not_found_window_seconds,
        member_not_found_windows=settings.member_not_found_windows,
        member_not_found_min_attempts=settings.member_not_found_min_attempts,
    )
    deadline = settings.settlement_timeout_seconds
    return Services(
        settings=settings,
        http=http,
        graph=graph,
        grants=grants,
        ledger=ledger,
        gate=gate,
        retry_policy=retry_policy,
        senders=senders,
        now=now,
        grant=GrantHandler(
            gate=gate,
            ledger=ledger,
            sealer=sealer,
            senders=senders,
            publisher=publisher if topic else None,
            policy=retry_policy,
            now=now,
            deadline=deadline,
            producers=settings.producers,
            own_queues={Lane.INTERACTIVE: settings.grants_queue, Lane.BULK: settings.bulk_queue},
        ),
        hr_event=HrEventHandler(
            sealer=sealer,
            rules=hr_rules,
            sender=senders,
            ledger=ledger,
            policy=retry_policy,
            now=now,
            time_zone=settings.hr_time_zone,
            deadline=deadline,
            producers=settings.producers,
            own_queue=settings.hr_events_queue,
        ),
        callback=CallbackHandler(
            sealer=sealer,
            policy=settings.callbacks,
            secret_for=settings.signing_secret,
            client=callback_client,
            sender=callback_sender if topic else None,
            retry_policy=retry_policy,
            now=now,
            deadline=deadline,
        ),
        webhook=Webhook(
            producers=settings.producers,
            api_auth=settings.api_auth,
            sender=senders,
            ledger=ledger,
            now=now,
            callbacks=settings.callbacks,
        ),
        expiry_sweep=ExpirySweep(gate=gate, sender=senders),
        status=StatusApi(ledger=ledger, producers=settings.producers, api_auth=settings.api_auth),
        drift=DriftHandler(
            service=DriftService(
                reader=DirectoryReader(
                    graph=graph, pacer=ReadPacer(rate=settings.graph_read_rate), role_ids=role_ids, units=units
                ),
                ledger=ledger,
                graph=graph,
                policy=DriftPolicy.load(settings.policy_path),
                sender=senders.lane(Lane.BULK),
                publisher=publisher if topic else None,
                now=now,
            ),
            producers=settings.producers,
            api_auth=settings.api_auth,
        ),
        _closers=tuple(closers),
    )


def _servicebus_sender(
    settings: Settings, http: httpx.AsyncClient, credential: Any, closers: list[Any], *, queue: str | None = None
) -> MessageSender:
    from shared.adapters.servicebus import ServiceBusSender

    namespace, credential = _servicebus_connection(settings, http, credential, closers)
    sender: MessageSender
    if queue is not None:
        sender = ServiceBusSender(namespace=namespace, queue=queue, credential=credential)
    else:  # the grants: interactive and bulk lanes, each on its own queue
        sender = LaneSender(
            {
                Lane.INTERACTIVE: ServiceBusSender(
                    namespace=namespace, queue=settings.grants_queue, credential=credential
                ),
                Lane.BULK: ServiceBusSender(namespace=namespace, queue=settings.bulk_queue, credential=credential),
            }
        )
    closers.insert(0, sender)
    return sender


def _servicebus_publisher(
    settings: Settings, topic: str, http: httpx.AsyncClient, credential: Any, closers: list[Any]
) -> OutcomePublisher:
    from shared.adapters.servicebus import ServiceBusPublisher

    namespace, credential = _servicebus_connection(settings, http, credential, closers)
    publisher = ServiceBusPublisher(namespace=namespace, topic=topic, credential=credential)
    closers.insert(0, publisher)
    return publisher


def _servicebus_connection(
    settings: Settings, http: httpx.AsyncClient, credential: Any, closers: list[Any]
) -> tuple[str, Any]:
    """The namespace and the credential for it (the Service Bus connection's own client id, when it differs)."""
    if not settings.servicebus_namespace:
        raise ConfigError(
            "ServiceBusConnection__fullyQualifiedNamespace is not set: the app needs it to schedule retry copies"
        )
    if settings.servicebus_client_id != settings.client_id:
        credential = managed_identity_credential(http=http, client_id=settings.servicebus_client_id)
        closers.append(credential)
    return settings.servicebus_namespace, credential
