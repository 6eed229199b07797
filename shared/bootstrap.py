"""Composition root: build the process's collaborators once, with real adapters unless told otherwise.

Azure and the local host call the same `bootstrap()`; the local host and the tests pass doubles for the
parts that cannot run here (the retry sender, the clock) and configure the rest through the environment,
exactly as in Azure (``GRAPH_BASE_URL``, ``IDENTITY_ENDPOINT``/``IDENTITY_HEADER``, ``GRANTS_*``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import httpx

from shared.adapters.callbacks import CallbackClient
from shared.adapters.governor import WriteGovernor
from shared.adapters.graph import GraphClient, new_http_client
from shared.adapters.identity import ManagedIdentityTokens, TokenSource, managed_identity_credential
from shared.adapters.lanes import LaneSender
from shared.adapters.ledger import Ledger, table_client
from shared.config import Settings
from shared.core.contract import GrantCommand
from shared.core.errors import ConfigError, TransientError
from shared.core.messaging import EXPIRY_OF, Delivery, MessageActions, MessageSender, OutcomePublisher
from shared.core.policy import GrantPolicy
from shared.core.retry import RetryPolicy
from shared.core.statuses import StatusWrite
from shared.producers.callbacks import settle_callback
from shared.producers.hr import settle_hr_event
from shared.producers.hr_rules import HrRules
from shared.service.gate import Arrival, IntentGate
from shared.service.grants import GrantService
from shared.service.membership import Result
from shared.service.settlement import Settled, progress_record, settle

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
    """Everything a message needs, built once per process."""

    settings: Settings
    http: httpx.AsyncClient
    graph: GraphClient
    grants: GrantService
    ledger: Ledger
    gate: IntentGate
    retry_policy: RetryPolicy
    sender: MessageSender
    now: Callable[[], datetime] = _utc_now
    hr_rules: HrRules | None = None
    publisher: OutcomePublisher | None = None  # the outcomes topic (GRANTS_OUTCOMES_TOPIC); None: off
    callback_sender: MessageSender | None = None  # callback retry copies (GRANTS_CALLBACK_QUEUE)
    callback_client: CallbackClient = field(default_factory=CallbackClient)  # connects on first use
    _closers: tuple[Any, ...] = field(default=(), repr=False)

    async def handle(self, command: GrantCommand) -> Result:
        """Carry out one validated command: guardrails, Graph, expiry."""
        return await self.grants.execute(command)

    async def settle_grant(self, message: Any, actions: MessageActions) -> Settled:
        """Process and settle one received grant message, through the ledger (`IntentGate`)."""
        delivery = Delivery.of(message)
        expiry_of = delivery.application_property(EXPIRY_OF)
        arrival = Arrival(
            origin=delivery.original_message_id,
            enqueued_at=delivery.enqueued_time or self.now(),
            expiry_of=str(expiry_of) if expiry_of else None,
        )

        async def handle(command: GrantCommand) -> Result:
            async def admitted() -> bool:
                record = progress_record(delivery, command, now=self.now())
                return await self.record_status(command.request_id, record, StatusWrite.PROGRESS)

            return await self.gate.run(command, replace(arrival, admitted=admitted))

        return await settle(
            delivery,
            handle=handle,
            actions=actions,
            sender=self.sender,
            retry_policy=self.retry_policy,
            now=self.now,
            publisher=self.publisher,
            settlement_timeout=self.settings.settlement_timeout_seconds,
            recorder=self.record_status,
        )

    async def record_status(
        self, request_id: str, record: dict[str, Any], write: StatusWrite = StatusWrite.FINAL
    ) -> bool:
        """Write `request_id`'s status record in the ledger as `write` says (raises `TransientError` when the
        ledger fails)."""
        return await self.ledger.record_status(request_id, record, now=self.now(), write=write)

    async def settle_callback(self, message: Any, actions: MessageActions) -> Settled:
        """POST one outcome event to its callback URL, signed, and settle it (retry copy or dead letter on failure)."""
        return await settle_callback(
            Delivery.of(message),
            policy=self.settings.callbacks,
            secret_for=self.settings.signing_secret,
            client=self.callback_client,
            actions=actions,
            sender=self.callback_sender,
            retry_policy=self.retry_policy,
            now=self.now,
            settlement_timeout=self.settings.settlement_timeout_seconds,
        )

    async def settle_hr_event(self, message: Any, actions: MessageActions) -> Settled:
        """Turn one received HR event into grant messages on the grants queue, and settle it."""
        return await settle_hr_event(
            Delivery.of(message),
            rules=self.hr_rules,
            actions=actions,
            sender=self.sender,
            now=self.now,
            time_zone=self.settings.hr_time_zone,
            settlement_timeout=self.settings.settlement_timeout_seconds,
            ledger=self.ledger,
        )

    async def recorded_content(self, request_id: str) -> str | None:
        """The content hash the ledger records for `request_id` (None: unknown, or the ledger unavailable now)."""
        try:
            record = await self.ledger.request(request_id)
        except TransientError:
            return None
        return record.content_hash if record else None

    async def sweep_expiries(self) -> int:
        """The expiry sweep (timer trigger): send the removal of every pending removal that is due; how many."""
        sent = await self.gate.sweep(self.sender)
        _log.log(logging.WARNING if sent else logging.INFO, "expiry sweep: %d due removal(s) sent", sent)
        return sent

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
    if sender is None:
        sender = _servicebus_sender(settings, http, credential, closers)
    if topic:
        publisher = publisher or _servicebus_publisher(settings, topic, http, credential, closers)
        callback_sender = callback_sender or _servicebus_sender(
            settings, http, credential, closers, queue=settings.callback_queue
        )
    callback_client = callback_client or CallbackClient()
    closers.insert(0, callback_client)
    _log.info(settings.callbacks.describe())
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
    if settings.ledger_table_uri is None:
        raise ConfigError("GrantsLedger__tableServiceUri is not set: the app needs its grant ledger (Table Storage)")
    ledger_auth = ledger_credential or credential
    assert ledger_auth is not None
    ledger = Ledger(
        table_client(endpoint=settings.ledger_table_uri, table=settings.ledger_table, credential=ledger_auth, http=http)
    )
    return Services(
        settings=settings,
        http=http,
        graph=graph,
        grants=grants,
        ledger=ledger,
        gate=IntentGate(ledger=ledger, grants=grants, now=now),
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
        publisher=publisher if topic else None,
        callback_sender=callback_sender if topic else None,
        callback_client=callback_client,
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
                "interactive": ServiceBusSender(
                    namespace=namespace, queue=settings.grants_queue, credential=credential
                ),
                "bulk": ServiceBusSender(namespace=namespace, queue=settings.bulk_queue, credential=credential),
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
