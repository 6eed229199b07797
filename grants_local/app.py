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

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from grants_local.azurite import LedgerTable, local_ledger
from grants_local.host import LocalHost, OutcomeRecorder, registered_function
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
class LocalApp:
    """One queue, its settlement server and message actions, the app's services and the outcome records."""

    queue: LocalQueue
    clock: Callable[[], float]
    server: LocalSettlementServer
    actions: Any
    services: Services
    sender: LocalSender
    recorder: OutcomeRecorder
    callbacks: LocalCallbacks | None = None

    def host(self, *, function: str | Callable[..., Any] = GRANT_FUNCTION, concurrency: int = 16) -> LocalHost:
        """A local host delivering the queue to `function` (a registered function's name, or a wrapper of one)."""
        if isinstance(function, str):
            import function_app

            function = registered_function(function_app.app, function)
        return LocalHost(
            queue=self.queue, function=function, actions=self.actions, clock=self.clock, concurrency=concurrency
        )

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
        """The settlement calls received so far (``Complete``, ``Abandon``, ``Deadletter``…), in order."""
        return [call.method for call in self.server.calls]


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
) -> AsyncIterator[LocalApp]:
    """Wire the app for `queue` (a new one on `clock`, by default a `ManualClock`) and install it for the block.

    `sender` may wrap the queue's sender (the soak's fault injection); `ledger` is the grant ledger's table (by
    default a fresh one in an Azurite started for the block); the services are closed on exit. With
    ``GRANTS_OUTCOMES_TOPIC`` set, `topic` (default: `outcomes_topic` on the clock) receives the outcome events,
    and `callback_client` (default: the app's own) sends the callbacks.
    """
    clock = clock or (queue.clock if queue is not None else ManualClock())
    queue = queue or LocalQueue(clock=clock)
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
        yield LocalApp(
            queue=queue,
            clock=clock,
            server=server,
            actions=point_message_actions_at(server.address),
            services=services,
            sender=local_sender,
            recorder=recorder,
            callbacks=callbacks,
        )


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
