"""The app as the local host runs it: the one harness behind run-local, the demo, the soak and the tests.

`local_app` wires, for one grants queue: the in-process settlement server and the real
`ServiceBusMessageActions` pointed at it, the app's services from the real `bootstrap` (the queue's
`LocalSender` as the message sender, time from the queue's clock, a write governor whose waits move a
`ManualClock`), installed as the process's services, and an `OutcomeRecorder` on the outcome log. The
registered functions then run exactly as the Functions host would call them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from grants_local.host import LocalHost, OutcomeRecorder, registered_function
from grants_local.queue import LocalQueue, LocalSender, ManualClock
from grants_local.settlement_server import LocalSettlementServer, point_message_actions_at
from shared.adapters.governor import WriteGovernor
from shared.bootstrap import Services, bootstrap
from shared.config import Settings
from shared.core.messaging import MessageSender
from shared.runtime import installed

__all__ = ["LocalApp", "local_app", "virtual_governor"]

GRANT_FUNCTION = "grant_membership"


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
) -> AsyncIterator[LocalApp]:
    """Wire the app for `queue` (a new one on `clock`, by default a `ManualClock`) and install it for the block.

    `sender` may wrap the queue's sender (the soak's fault injection); the services are closed on exit.
    """
    clock = clock or (queue.clock if queue is not None else ManualClock())
    queue = queue or LocalQueue(clock=clock)
    local_sender = LocalSender(queue)
    async with AsyncExitStack() as stack:
        server = stack.enter_context(LocalSettlementServer(queue))
        recorder = stack.enter_context(OutcomeRecorder().attached())
        services = bootstrap(
            settings,
            sender=sender(local_sender) if sender else local_sender,
            now=lambda: datetime.fromtimestamp(clock(), UTC),
            governor=virtual_governor(settings, clock),
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
