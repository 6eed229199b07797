"""Interactive first on the CPU too: one process's bulk messages give way while interactive ones are in it.

The write governor serves interactive writes first in Graph's quota; but a process's grants share one event loop, and
a grant costs far more CPU than its one Graph call (the ledger's storage requests, the settlement). During a bulk
backlog the host hands a process up to ``maxConcurrentCalls`` bulk messages at once, and an interactive grant then
waits for the loop behind every one of them, at each of its awaits. `LaneGate` is where a grant message enters the
process's work (`GrantHandler`): while any interactive message is in it, a bulk message is let in only if fewer than
`BULK_BESIDE_INTERACTIVE` bulk messages are (the ones already in go on: each holds its pair's lease); the others
wait, their locks renewed by the host. With no interactive message in the process, bulk messages
are not held at all. So the bulk work in a CPU-bound process shrinks to a few grants while interactive ones wait,
and never to none: a steady interactive trickle slows a bulk job, it does not stop it. Nor does a slow one: a bulk
message waits at most `BULK_MAX_WAIT` seconds, then goes in whatever is in. The host renews a message's lock for a
limited time (host.json's ``maxAutoLockRenewalDuration``, 5 minutes), which must outlast its wait and its work after
the gate (up to its pair's lease, 2 minutes, and the settlement): a message held longer would lose its lock while it
waits, be delivered again (each time counting a delivery, the last ones dead-lettered ``MaxDeliveryCountExceeded``
with no reason of the app's) and its settlement refused.

`BULK_BESIDE_INTERACTIVE` bulk grants in flight keep bulk writing at Graph's quota for the process when the loop is
not the bottleneck (a grant's ledger and Graph round trips take some 50 to 100 ms: 2 in flight is 20 to 40 grants a
second, the quota's 20), and, when it is, cut the loop's work an interactive grant waits behind by up to 8 times.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

from shared.core.messaging import LANES, Lane

__all__ = ["BULK_BESIDE_INTERACTIVE", "BULK_MAX_WAIT", "LaneGate"]

#: Bulk messages let in beside interactive ones (host.json's maxConcurrentCalls is 16).
BULK_BESIDE_INTERACTIVE: Final = 2
#: The longest a bulk message waits at the gate, in seconds (with the lease and the settlement, well inside the 5
#: minutes the host renews its lock).
BULK_MAX_WAIT: Final = 60.0


class LaneGate:
    """Lets grant messages into the process's work: interactive ones at once, bulk ones while no interactive one is
    in, or fewer than `bulk_beside_interactive` bulk ones are, or once they have waited `max_wait` seconds."""

    def __init__(
        self, *, bulk_beside_interactive: int = BULK_BESIDE_INTERACTIVE, max_wait: float = BULK_MAX_WAIT
    ) -> None:
        if bulk_beside_interactive < 1:
            raise ValueError("bulk_beside_interactive must be at least 1: bulk work gives way, it never stops")
        if not max_wait > 0:
            raise ValueError("max_wait must be more than 0 seconds")
        self._beside = bulk_beside_interactive
        self._max_wait = max_wait
        self._inside: dict[Lane, int] = dict.fromkeys(LANES, 0)
        self._waiting: list[asyncio.Future[None]] = []  # bulk messages waiting for the next one to leave

    def inside(self, lane: Lane) -> int:
        """How many messages of `lane` are in the process's work now."""
        return self._inside[lane]

    def held(self) -> int:
        """How many bulk messages wait at the gate now."""
        return len(self._waiting)

    @asynccontextmanager
    async def enter(self, lane: Lane) -> AsyncIterator[None]:
        """Hold a message of `lane` at the gate until it may go in, at most `max_wait` seconds (an interactive one
        never waits); count it in until the block ends."""
        if lane is Lane.BULK:
            await self._hold()
        self._inside[lane] += 1
        try:
            yield
        finally:
            self._inside[lane] -= 1
            for left in self._waiting:
                if not left.done():
                    left.set_result(None)

    async def _hold(self) -> None:
        """Wait until a bulk message may go in, or `max_wait` seconds have passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_wait
        while not self._bulk_may_enter():
            left = loop.create_future()
            self._waiting.append(left)
            try:
                await asyncio.wait_for(left, timeout=max(deadline - loop.time(), 0.0))
            except TimeoutError:
                return
            finally:
                self._waiting.remove(left)

    def _bulk_may_enter(self) -> bool:
        return not self._inside[Lane.INTERACTIVE] or self._inside[Lane.BULK] < self._beside
