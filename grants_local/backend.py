"""The operator CLI's `Backend` on the local namespace (``--local``): the same commands, no Azure account.

`open_local_backend` opens the persistent local namespace's queue (`grants_local.namespace`); `LocalBackend.drain`
runs what was sent through the local host, against ``GRAPH_BASE_URL`` or the built-in doubles, as the namespace's
local deployment allows (`grants_local.deployment`: a stopped app, or one without the Data Receiver role, receives
nothing), and appends the outcome lines to the deployment's outcome log.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TextIO

from grants_common.printable import printable
from grants_common.queues import CONTENT_TYPE, HeldDeadLetter, Outgoing, SendReport
from grants_local.deployment import LocalDeployment
from grants_local.namespace import LocalNamespace, namespace_directory
from grants_local.queue import LocalQueue
from grants_local.run import graph_environment, process_queue
from shared.config import Settings
from shared.core.messaging import DeadLetter

__all__ = ["LocalBackend", "open_local_backend"]


@contextmanager
def open_local_backend(queue: str) -> Iterator[LocalBackend]:
    """The backend on `queue` in the local namespace (``GRANTS_LOCAL_NAMESPACE``), saved when the block ends and
    after each dead letter is settled (so that a resubmit reports only copies that are on disk)."""
    directory = namespace_directory()
    namespace = LocalNamespace(directory)
    with namespace.open(queue) as (local_queue, clock):
        yield LocalBackend(
            local_queue,
            name=queue,
            clock=clock,
            deployment=LocalDeployment(directory),
            on_settled=lambda: namespace.save(queue, local_queue),
        )


class LocalBackend:
    """The `Backend` over a `LocalQueue` (the local namespace's queue)."""

    def __init__(
        self,
        queue: LocalQueue,
        *,
        name: str = "grant-membership",
        clock: Callable[[], float] = time.time,
        batch_size: int = 100,
        deployment: LocalDeployment | None = None,
        on_settled: Callable[[], None] = lambda: None,
    ) -> None:
        """`on_settled` runs after each dead letter is completed or abandoned (the namespace saves the queue)."""
        self.queue = queue
        self.name = name
        self.clock = clock
        self._batch_size = batch_size
        self._deployment = deployment
        self._on_settled = on_settled

    def follow(self, job_id: str) -> None:
        """None: the local namespace keeps no ledger (`drain` prints each outcome instead)."""
        return None

    def drain(self, out: TextIO) -> None:
        """Deliver the queue to the registered function through the local host (as ``run-local`` does, against
        ``GRAPH_BASE_URL`` or the built-in doubles); print each message's terminal outcome."""
        asyncio.run(self._drain(out))

    async def _drain(self, out: TextIO) -> None:
        why_not = self._deployment.why_not_receiving() if self._deployment else None
        if why_not is not None:
            out.write(f"\nNot processed by the local host: {why_not}; the queue holds what was sent.\n")
            return
        with graph_environment(os.environ, clock=self.clock) as env:
            owner = Settings.from_env(env).producers.on_queue(self.name)  # whoever may send to this queue
            producer = owner.name if owner is not None else None
            recorder = await process_queue(self.queue, env=env, clock=self.clock, producer=producer)
        if self._deployment is not None:
            self._deployment.log_outcomes(recorder.records)
        records = list(recorder.terminal().values())
        out.write(f"\nProcessed by the local host: {len(records)} message(s)\n")
        header = f"{'requestId':<28} {'outcome':<15} {'reason':<22} {'tries':>5}  description"
        out.write(header + "\n" + "-" * len(header) + "\n")
        for record in records:  # what came from a message is escaped (`printable`)
            description = printable(record.get("description", ""))
            out.write(
                f"{printable(record.get('requestId') or '-')[:28]:<28} {printable(record['outcome']):<15} "
                f"{printable(record.get('reason') or '-'):<22} {record.get('attempts', 0):>5}  "
                f"{description if len(description) <= 70 else description[:69] + '…'}\n"
            )
        held = len(self.queue.dead_letters())
        out.write(f"Dead-letter queue of {printable(self.name)} now holds {held} message(s)")
        out.write(f": grants dlq list --local --queue {printable(self.name)}\n" if held else ".\n")

    def send_batches(self, messages: Sequence[Outgoing], *, progress: Callable[[int], None]) -> SendReport:
        dropped_before = self.queue.stats.duplicates_dropped
        batches = 0
        for start in range(0, len(messages), self._batch_size):
            for message in messages[start : start + self._batch_size]:
                self.send(message)
            batches += 1
            progress(min(start + self._batch_size, len(messages)))
        return SendReport(
            sent=len(messages), batches=batches, duplicates=self.queue.stats.duplicates_dropped - dropped_before
        )

    def send(self, message: Outgoing) -> None:
        self.queue.send(
            message.body,
            message_id=message.message_id,
            application_properties=message.application_properties,
            content_type=CONTENT_TYPE,
        )

    def peek_dead_letters(self) -> list[DeadLetter]:
        return self.queue.dead_letters()

    def lock_next_dead_letter(self) -> HeldDeadLetter | None:
        locked = self.queue.receive_dead_letter()
        if locked is None:
            return None
        info = DeadLetter(
            sequence_number=locked.sequence_number,
            message_id=locked.message_id,
            body=locked.body,
            application_properties=locked.application_properties,
            reason=locked.dead_letter_reason,
            description=locked.dead_letter_error_description,
            delivery_count=locked.delivery_count - 1,  # this lock is the operator's, not a delivery to the app
            enqueued_time=locked.enqueued_time,
        )
        return HeldDeadLetter(info, locked.lock_token)

    def complete(self, held: HeldDeadLetter) -> None:
        self.queue.complete(held.handle)
        self._on_settled()

    def abandon(self, held: HeldDeadLetter) -> None:
        self.queue.abandon(held.handle)
        self._on_settled()

    def close(self) -> None:
        return None
