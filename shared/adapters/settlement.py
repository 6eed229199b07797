"""The host's settlement calls, off the event loop and with a deadline.

`complete`, `abandon` and `deadletter` are the app's only calls to `MessageActions`. The extension's
`ServiceBusMessageActions` makes a synchronous gRPC call to the host, without a deadline, so each runs on a thread
of its own (`SETTLEMENT_THREADS` daemon threads at most, shared by the process; a call beyond them waits its turn)
and the event loop waits for it at most `deadline` seconds (``GRANTS_SETTLEMENT_TIMEOUT_SECONDS``). A call that
does not answer in time raises `SettlementTimeout`; a call still waiting on its thread may finish later
(`SettlementTimeout.late`); a call that had not started when its deadline passed never runs. A call the host
answers with a failure (the extension's ``SettlementError``: the message's lock was lost mid-work, a lock token the
host does not know, any non-OK status) raises `SettlementFailed`: the message is not settled, and Service Bus
delivers it again.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Final

from shared.core.messaging import MAX_DESCRIPTION_CHARS, MAX_REASON_CHARS, Delivery, MessageActions, clip

__all__ = [
    "DEFAULT_SETTLEMENT_TIMEOUT",
    "SETTLEMENT_THREADS",
    "Settlement",
    "SettlementFailed",
    "SettlementTimeout",
    "abandon",
    "complete",
    "deadletter",
]

#: Seconds a settlement call may take (``GRANTS_SETTLEMENT_TIMEOUT_SECONDS``); the host answers in milliseconds.
DEFAULT_SETTLEMENT_TIMEOUT: Final = 5.0
#: Threads for settlement calls: two triggers x host.json's maxConcurrentCalls (16), so that calls the host never
#: answers hold threads of their own and later calls still get one (beyond it, a call waits within its deadline).
SETTLEMENT_THREADS: Final = 32

#: A settlement still to make: `complete`, `abandon` or `deadletter` with its arguments but the `deadline`.
Settlement = Callable[..., Awaitable[None]]


class SettlementTimeout(Exception):
    """The host did not answer a settlement call within its deadline; the message is left to its lock expiry.

    `late` is the call still running on its thread (None when it never started and never will).
    """

    def __init__(self, method: str, seconds: float, late: Future[None] | None) -> None:
        super().__init__(f"the host did not answer {method} within {seconds:g} s")
        self.method = method
        self.seconds = seconds
        self.late = late


class SettlementFailed(Exception):
    """The host refused a settlement call (`error`, e.g. the extension's ``SettlementError`` for a lock that was lost):
    the message is not settled; Service Bus delivers it again when its lock is gone."""

    def __init__(self, method: str, error: BaseException) -> None:
        detail = " ".join(str(error).split())[:300]
        super().__init__(f"the host refused {method} ({type(error).__name__}: {detail})")
        self.method = method
        self.error = error


class _SettlementThreads:
    """A small pool of daemon threads for blocking settlement calls: one the host never answers holds its
    thread, never the event loop, and never keeps the process from exiting (unlike concurrent.futures')."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._work: queue.SimpleQueue[tuple[Future[None], Callable[[], None]]] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)  # one release per thread waiting for work
        self._lock = threading.Lock()
        self._threads = 0

    def submit(self, call: Callable[[], None]) -> Future[None]:
        future: Future[None] = Future()
        self._work.put((future, call))
        if not self._idle.acquire(blocking=False):
            with self._lock:
                if self._threads < self._size:
                    self._threads += 1
                    threading.Thread(target=self._serve, name=f"settlement-{self._threads}", daemon=True).start()
        return future

    def _serve(self) -> None:
        while True:
            future, call = self._work.get()
            if future.set_running_or_notify_cancel():
                try:
                    call()
                except BaseException as error:  # handed to the caller, as concurrent.futures does
                    future.set_exception(error)
                else:
                    future.set_result(None)
            self._idle.release()


_threads = _SettlementThreads(SETTLEMENT_THREADS)


async def _call(method: str, call: Callable[[], None], deadline: float) -> None:
    """Run `call` on a settlement thread; wait for it at most `deadline` seconds (then `SettlementTimeout`); a call
    that fails raises `SettlementFailed`."""
    future = _threads.submit(call)
    try:
        await asyncio.wait_for(asyncio.wrap_future(future), deadline)
    except TimeoutError:
        failure = future.exception() if future.done() and not future.cancelled() else None
        if failure is not None:  # the call itself raised TimeoutError: a failure, not a deadline
            raise SettlementFailed(method, failure) from failure
        # wait_for cancelled the wrapper, and with it the call if it had not started yet
        raise SettlementTimeout(method, deadline, None if future.cancelled() else future) from None
    except Exception as error:  # the host answered with a failure: not settled
        raise SettlementFailed(method, error) from error


async def complete(
    actions: MessageActions, delivery: Delivery, *, deadline: float = DEFAULT_SETTLEMENT_TIMEOUT
) -> None:
    """Remove the message from the queue for good."""
    await _call("complete", functools.partial(actions.complete, delivery.message), deadline)


async def abandon(actions: MessageActions, delivery: Delivery, *, deadline: float = DEFAULT_SETTLEMENT_TIMEOUT) -> None:
    """Release the message's lock: Service Bus delivers it again (and counts the delivery)."""
    await _call("abandon", functools.partial(actions.abandon, delivery.message), deadline)


async def deadletter(
    actions: MessageActions,
    delivery: Delivery,
    *,
    reason: str,
    description: str,
    deadline: float = DEFAULT_SETTLEMENT_TIMEOUT,
) -> None:
    """Move the message to the dead-letter sub-queue with `reason` and `description`, clipped to Service Bus's
    limits."""
    call = functools.partial(
        actions.deadletter,
        delivery.message,
        deadletter_reason=clip(reason, MAX_REASON_CHARS),
        deadletter_error_description=clip(description, MAX_DESCRIPTION_CHARS),
    )
    await _call("deadletter", call, deadline)
