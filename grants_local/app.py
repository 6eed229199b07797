"""The app as the local host runs it: the one harness behind run-local, the demo, the soak and the tests.

`local_app` wires, for one grants queue: the in-process settlement server and the real
`ServiceBusMessageActions` pointed at it, the app's services from the real `bootstrap` (the queue's
`LocalSender` as the message sender, time from the queue's clock, a write governor whose waits move a
`ManualClock`, the grant ledger in a table of a local Azurite), installed as the process's services, and an
`OutcomeRecorder` on the outcome log. The registered functions then run exactly as the Functions host would call
them.

With ``GRANTS_OUTCOMES_TOPIC`` set it also wires the outcomes topic (`LocalTopic`, with the ``callbacks``
subscription and its filter as infra declares them) behind a `LocalPublisher`, and the callback retry queue,
each queue read with its own settlement server: `LocalApp.drain_callbacks` delivers them to the registered
callback functions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from grants_local.azurite import LedgerTable, local_ledger
from grants_local.host import LocalHost, OutcomeRecorder, Source, indexed_functions, registered_function
from grants_local.queue import LocalQueue, LocalSender, ManualClock
from grants_local.settlement_server import LocalSettlementServer, point_message_actions_at
from grants_local.topic import CALLBACKS_SUBSCRIPTION, LocalPublisher, LocalTopic, outcomes_topic
from shared.adapters.callbacks import CallbackClient
from shared.adapters.governor import WriteGovernor
from shared.bootstrap import Services, bootstrap
from shared.config import Settings
from shared.core.messaging import MessageSender
from shared.runtime import installed

__all__ = ["LocalApp", "LocalCallbacks", "local_app", "virtual_governor"]

GRANT_FUNCTION = "grant_membership"
CALLBACK_FUNCTION = "grant_callbacks"
CALLBACK_RETRY_FUNCTION = "grant_callback_retries"


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalCallbacks:
    """The outcomes topic, its publisher, the callback retry queue, and a settlement server for each queue read."""

    topic: LocalTopic
    publisher: LocalPublisher
    retry_queue: LocalQueue
    retry_sender: LocalSender
    subscription_server: LocalSettlementServer
    retry_server: LocalSettlementServer
    subscription_actions: Any
    retry_actions: Any
    recorder: OutcomeRecorder

    @property
    def subscription(self) -> LocalQueue:
        """The callbacks subscription's queue."""
        return self.topic.subscription(CALLBACKS_SUBSCRIPTION)

    def calls(self) -> list[str]:
        """The settlement calls of callback deliveries so far, first attempts and retries, in order."""
        calls = [*self.subscription_server.calls, *self.retry_server.calls]
        return [call.method for call in calls]

    def outcomes(self) -> list[Mapping[str, Any]]:
        """The ``callback`` outcome records so far, in order."""
        return list(self.recorder.records)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProducerQueue:
    """A producer's own queue (the registry's), its settlement server and message actions, and the registered
    function that reads it."""

    queue: LocalQueue
    server: LocalSettlementServer
    actions: Any
    function: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalApp:
    """The grants queue, its settlement server and message actions, each producer's own queue, the app's services
    and the outcome records."""

    queue: LocalQueue
    clock: Callable[[], float]
    server: LocalSettlementServer
    actions: Any
    services: Services
    sender: LocalSender
    recorder: OutcomeRecorder
    callbacks: LocalCallbacks | None = None
    producer_queues: Mapping[str, ProducerQueue] = field(default_factory=dict)

    def host(self, *, function: str | Callable[..., Any] = GRANT_FUNCTION, concurrency: int = 16) -> LocalHost:
        """A local host delivering the queue to `function` (a registered function's name, or a wrapper of one) and,
        for the grant function, each producer's own queue to its own registered function, on one clock."""
        import function_app

        sources: tuple[Source, ...] = ()
        if function == GRANT_FUNCTION:
            sources = tuple(
                Source(entry.queue, registered_function(function_app.app, entry.function), entry.actions)
                for entry in self.producer_queues.values()
            )
        if isinstance(function, str):
            function = registered_function(function_app.app, function)
        return LocalHost(
            queue=self.queue,
            function=function,
            actions=self.actions,
            clock=self.clock,
            concurrency=concurrency,
            sources=sources,
        )

    def queue_of(self, producer: str) -> LocalQueue:
        """The queue `producer` sends to: its own (the registry's), or the grants queue when that is its own;
        raise LookupError when it has no queue here."""
        if producer in self.producer_queues:
            return self.producer_queues[producer].queue
        if self.services.settings.producers.on_queue(self.services.settings.grants_queue) is (
            self.services.settings.producers.get(producer)
        ):
            return self.queue
        raise LookupError(f"producer {producer!r} has no queue in this local app")

    async def drain(self, *, concurrency: int = 16) -> None:
        """Deliver the queue to the grant function until nothing is left to deliver."""
        await self.host(concurrency=concurrency).drain()

    def callback_hosts(self, *, concurrency: int = 16) -> list[LocalHost]:
        """Local hosts for the callbacks subscription (``grant_callbacks``) and the retry queue
        (``grant_callback_retries``); raise LookupError when the outcomes topic is off."""
        if self.callbacks is None:
            raise LookupError("GRANTS_OUTCOMES_TOPIC is not set: there is no outcomes topic")
        import function_app

        c = self.callbacks
        return [
            LocalHost(
                queue=queue,
                function=registered_function(function_app.app, name),
                actions=actions,
                clock=self.clock,
                concurrency=concurrency,
            )
            for queue, name, actions in (
                (c.subscription, CALLBACK_FUNCTION, c.subscription_actions),
                (c.retry_queue, CALLBACK_RETRY_FUNCTION, c.retry_actions),
            )
        ]

    async def drain_callbacks(self, *, concurrency: int = 16) -> None:
        """Deliver the callbacks subscription, then the callback retries (on a `ManualClock`, time jumps to each
        scheduled attempt), until nothing is left to deliver."""
        for host in self.callback_hosts(concurrency=concurrency):
            await host.drain()

    def outcomes(self) -> dict[str, Mapping[str, Any]]:
        """The last terminal outcome record of each original MessageId so far."""
        return self.recorder.terminal()

    def calls(self) -> list[str]:
        """The settlement calls received so far (``Complete``, ``Abandon``, ``Deadletter``…), in order: the grants
        queue's, then each producer queue's."""
        servers = [self.server, *(entry.server for entry in self.producer_queues.values())]
        return [call.method for server in servers for call in server.calls]


@asynccontextmanager
async def local_app(
    settings: Settings,
    *,
    queue: LocalQueue | None = None,
    clock: Callable[[], float] | None = None,
    sender: Callable[[LocalSender], MessageSender] | None = None,
    topic: LocalTopic | None = None,
    callback_client: CallbackClient | None = None,
    ledger: LedgerTable | None = None,
    entry: str | None = None,
) -> AsyncIterator[LocalApp]:
    """Wire the app for `queue` (a new one on `clock`, by default a `ManualClock`) and install it for the block.

    `queue` is the app's grants queue; with `entry`, it is that producer's own queue (`Producers.with_queue`: what
    a local run plays), else it belongs to whoever the registry says (by default, producer ``other``).

    `sender` may wrap the queue's sender (the soak's fault injection); `ledger` is the grant ledger's table (by
    default a fresh one in an Azurite started for the block); the services are closed on exit. With
    ``GRANTS_OUTCOMES_TOPIC`` set, `topic` (default: `outcomes_topic` on the clock) receives the outcome events,
    and `callback_client` (default: the app's own) sends the callbacks.
    """
    clock = clock or (queue.clock if queue is not None else ManualClock())
    queue = queue or LocalQueue(clock=clock)
    if entry is not None:
        settings = dataclasses.replace(settings, producers=settings.producers.with_queue(entry, settings.grants_queue))
    local_sender = LocalSender(queue)
    async with AsyncExitStack() as stack:
        server = stack.enter_context(LocalSettlementServer(queue))
        recorder = stack.enter_context(OutcomeRecorder().attached())
        if ledger is None:
            ledger = await stack.enter_async_context(local_ledger())
        callbacks = None
        if settings.outcomes_topic:
            topic = topic or outcomes_topic(clock)
            retry_queue = LocalQueue(clock=clock)
            subscription_server = stack.enter_context(LocalSettlementServer(topic.subscription(CALLBACKS_SUBSCRIPTION)))
            retry_server = stack.enter_context(LocalSettlementServer(retry_queue))
            callbacks = LocalCallbacks(
                topic=topic,
                publisher=LocalPublisher(topic),
                retry_queue=retry_queue,
                retry_sender=LocalSender(retry_queue),
                subscription_server=subscription_server,
                retry_server=retry_server,
                subscription_actions=point_message_actions_at(subscription_server.address),
                retry_actions=point_message_actions_at(retry_server.address),
                recorder=stack.enter_context(OutcomeRecorder("callback").attached()),
            )
        services = bootstrap(
            ledger.settings(settings),
            ledger_credential=ledger.credential(),
            sender=sender(local_sender) if sender else local_sender,
            now=lambda: datetime.fromtimestamp(clock(), UTC),
            governor=virtual_governor(settings, clock),
            publisher=callbacks.publisher if callbacks else None,
            callback_sender=callbacks.retry_sender if callbacks else None,
            callback_client=callback_client,
        )
        stack.push_async_callback(services.aclose)
        stack.enter_context(installed(services))
        producer_queues = {}
        for name, function in _producer_queues(services.settings):
            own = LocalQueue(clock=clock)
            own_server = stack.enter_context(LocalSettlementServer(own))
            producer_queues[name] = ProducerQueue(
                queue=own, server=own_server, actions=point_message_actions_at(own_server.address), function=function
            )
        yield LocalApp(
            queue=queue,
            clock=clock,
            server=server,
            actions=point_message_actions_at(server.address),
            services=services,
            sender=local_sender,
            recorder=recorder,
            callbacks=callbacks,
            producer_queues=producer_queues,
        )


def _producer_queues(settings: Settings) -> list[tuple[str, str]]:
    """``(producer, registered function)`` for each producer's own queue of grant messages besides the grants
    queue: the bulk queue's function, or the one ``function_app`` declared for that queue (skipped when the app was
    imported with another registry and declared none)."""
    import function_app

    names = {function.get_function_name() for function in indexed_functions(function_app.app)}
    found = []
    for entry in settings.producers.entries(
        grants_queue=settings.grants_queue, bulk_queue=settings.bulk_queue, hr_events_queue=settings.hr_events_queue
    ):
        if entry.producer is None or entry.hr_events or entry.queue == settings.grants_queue:
            continue
        slug = entry.producer.name.replace("-", "_")
        function = "grant_membership_bulk" if entry.queue == settings.bulk_queue else f"grants_from_{slug}"
        if function in names:
            found.append((entry.producer.name, function))
    return found


def virtual_governor(settings: Settings, clock: Callable[[], float]) -> WriteGovernor | None:
    """On a `ManualClock`, a write governor whose waits move that clock (so a 429's pause costs no real time)."""
    if isinstance(clock, ManualClock):
        return WriteGovernor(
            rate=settings.graph_write_rate,
            adaptive=settings.graph_write_adaptive,
            window_seconds=settings.graph_write_window_seconds,
            clock=clock,
            sleep=clock.sleep,
        )
    return None
