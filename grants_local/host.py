"""A small local Functions host: delivers messages from `LocalQueue`s to the registered function objects.

It does what the Functions host does for our trigger, with real parts where they can run here: the
message is decoded by the extension's own `ServiceBusConverter` into a real `ServiceBusReceivedMessage`,
and the real `ServiceBusMessageActions` settles over gRPC against `LocalSettlementServer`. Up to
`concurrency` invocations run at once (host.json's ``maxConcurrentCalls``). While an invocation runs its lock is
renewed, for at most `max_lock_renewal` seconds (host.json's ``maxAutoLockRenewalDuration``), so that time moved
by other invocations' waits never takes a running invocation's message away. An invocation that ends without
settling, or raises, leaves its lock to expire, so the message is redelivered.

Outcomes are read the way an operator reads them in Azure: from the ``shared.outcome`` log records.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from grants_local.binding import to_received_message
from grants_local.queue import MAX_DELIVERY_COUNT_EXCEEDED, LocalQueue, LockedMessage, ManualClock
from shared.service.settle import outcome_log

__all__ = ["LineOutcome", "LocalHost", "OutcomeRecorder", "Source", "indexed_functions", "registered_function"]

_log = logging.getLogger(__name__)

#: host.json's ``maxAutoLockRenewalDuration``: how long the host renews a running invocation's lock.
MAX_LOCK_RENEWAL_SECONDS = 300.0

Function = Callable[..., Awaitable[None]]


@functools.cache
def indexed_functions(app: Any) -> tuple[Any, ...]:
    """The app's functions as the worker indexes them (`FunctionApp.get_functions()` may be called once per app
    instance: its answer is remembered)."""
    return tuple(app.get_functions())


def registered_function(app: Any, name: str) -> Function:
    """The user function the Functions host would call for `name`, from the app's function registry."""
    for function in indexed_functions(app):
        if function.get_function_name() == name:
            user_function: Function = function.get_user_function()
            return user_function
    raise LookupError(f"no function named {name!r} is registered in the app")


@dataclass(frozen=True, slots=True)
class LineOutcome:
    """The terminal outcome of one input message (the ``run-local --json`` line)."""

    line: int
    request_id: str | None
    outcome: str
    reason: str | None
    description: str
    attempts: int

    def as_json(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "requestId": self.request_id,
            "outcome": self.outcome,
            "reason": self.reason,
            "description": self.description,
            "attempts": self.attempts,
        }


class OutcomeRecorder(logging.Handler):
    """Collects the app's outcome records, in order: a grant's (``grant``) or an HR event's (``hrEvent``)."""

    def __init__(self, attribute: str = "grant") -> None:
        super().__init__(logging.INFO)
        self.attribute = attribute
        self.records: list[Mapping[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        outcome = getattr(record, self.attribute, None)
        if isinstance(outcome, Mapping):
            self.records.append(outcome)

    @contextmanager
    def attached(self) -> Iterator[OutcomeRecorder]:
        previous_level = outcome_log.level
        outcome_log.addHandler(self)
        outcome_log.setLevel(logging.INFO)
        try:
            yield self
        finally:
            outcome_log.removeHandler(self)
            outcome_log.setLevel(previous_level)

    def terminal(self) -> dict[str, Mapping[str, Any]]:
        """The last terminal record for each original message id."""
        return {str(r["originalMessageId"]): r for r in self.records if r.get("terminal")}


@dataclass(frozen=True, slots=True)
class Source:
    """One queue a host reads, the registered function it delivers to, and the message actions that settle it."""

    queue: LocalQueue
    function: Function
    actions: Any


class LocalHost:
    """Delivers every message of `queue` to `function` (and of each further `sources` queue to its own function, in
    one run on one clock: several producers' queues at once) until nothing is left to deliver."""

    def __init__(
        self,
        *,
        queue: LocalQueue,
        function: Function,
        actions: Any,
        clock: Callable[[], float],
        concurrency: int = 16,
        max_lock_renewal: float = MAX_LOCK_RENEWAL_SECONDS,
        sources: tuple[Source, ...] = (),
    ) -> None:
        self._sources = (Source(queue, function, actions), *sources)
        self._max_lock_renewal = max_lock_renewal
        self._clock = clock
        self._concurrency = concurrency
        self.invocations = 0
        self.failed_invocations = 0

    async def drain(self, *, until: float | None = None) -> None:
        """Deliver until the queue has nothing active, scheduled or locked; wait (or jump time) for what is due.
        With `until` (clock seconds), return once nothing is due by then (a message scheduled later stays queued).

        With a `ManualClock`, time jumps to the next due message instead of sleeping.
        """
        in_flight: set[asyncio.Task[None]] = set()
        try:
            await self._deliver(in_flight, until=until)
        except asyncio.CancelledError:  # stopped (Ctrl-C): stop what is in flight too, its locks will expire
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
            raise

    async def _deliver(self, in_flight: set[asyncio.Task[None]], *, until: float | None) -> None:
        while True:
            for source in self._sources:
                while len(in_flight) < self._concurrency and (locked := source.queue.receive()) is not None:
                    in_flight.add(asyncio.create_task(self._invoke(source, locked)))
            if in_flight:
                done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                in_flight -= done
                continue
            times = [due for source in self._sources if (due := source.queue.next_due_time()) is not None]
            due = min(times) if times else None
            if due is None or (until is not None and due > until):
                return
            if isinstance(self._clock, ManualClock):
                self._clock.advance_to(max(due, self._clock()))
            else:
                await asyncio.sleep(max(due - self._clock(), 0.0) + 0.001)

    async def _invoke(self, source: Source, locked: LockedMessage) -> None:
        self.invocations += 1
        message = to_received_message(locked)
        source.queue.renew_while_invoked(locked.lock_token, seconds=self._max_lock_renewal)
        try:
            await source.function(receivedmessage=message, message_actions=source.actions)
        except Exception:
            self.failed_invocations += 1
            _log.exception("invocation for message %s failed; its lock will expire", locked.message_id)
        finally:
            source.queue.stop_renewing(locked.lock_token)


def line_outcomes(
    message_ids: Mapping[str, int], recorder: OutcomeRecorder, queue: LocalQueue
) -> dict[int, LineOutcome]:
    """Each input line's terminal outcome, from the outcome records and the dead-letter queue."""
    terminal = recorder.terminal()
    outcomes: dict[int, LineOutcome] = {}
    for message_id, line in message_ids.items():
        record = terminal.get(message_id)
        if record is not None:
            outcomes[line] = LineOutcome(
                line=line,
                request_id=record.get("requestId"),
                outcome=str(record["outcome"]),
                reason=record.get("reason"),
                description=str(record.get("description", "")),
                attempts=int(record.get("attempts", 0)),
            )
    for entry in queue.dead_letters():
        dead_line = message_ids.get(entry.original_message_id)
        if dead_line is not None and dead_line not in outcomes and entry.reason == MAX_DELIVERY_COUNT_EXCEEDED:
            outcomes[dead_line] = LineOutcome(
                line=dead_line,
                request_id=None,
                outcome="dead_lettered",
                reason=entry.reason,
                description=entry.description or "",
                attempts=entry.delivery_count,
            )
    return _resolve_duplicates(outcomes)


def _resolve_duplicates(outcomes: dict[int, LineOutcome]) -> dict[int, LineOutcome]:
    """A line absorbed as a duplicate (same requestId and content as another line) reports that line's outcome."""
    first = {o.request_id: o for o in sorted(outcomes.values(), key=lambda o: -o.line) if o.outcome != "duplicate"}
    resolved = dict(outcomes)
    for line, outcome in outcomes.items():
        original = first.get(outcome.request_id) if outcome.outcome == "duplicate" else None
        if original is not None:
            resolved[line] = replace(
                original, line=line, description=f"duplicate of line {original.line}: {original.description}"
            )
    return resolved
