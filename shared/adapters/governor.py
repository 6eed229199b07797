"""Process-wide pacing of Graph writes: a token bucket, and a shared pause after any ``429``.

Graph allows 3,000 directory writes per 150 s per app and tenant (20/s). `WriteGovernor.acquire` lets
writes through at `rate` per second (bursts of up to `burst`, by default 1: strict pacing, since a burst
at the full rate overshoots Graph's window and draws 429s), first come first served; `pause` holds
*every* writer in the process until a throttled request's ``Retry-After`` has passed, not only the one
that was throttled. A rate of 0 turns pacing off (the shared pause still applies).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

__all__ = ["WriteGovernor"]

_EPSILON = 1e-9


class WriteGovernor:
    """A token bucket for Graph writes with a process-wide pause."""

    def __init__(
        self,
        *,
        rate: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else 1.0
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._updated = clock()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()
        self.pauses = 0

    async def acquire(self) -> None:
        """Wait until a write may be sent (in arrival order), then take its token."""
        async with self._lock:
            while True:
                now = self._clock()
                wait = self._paused_until - now
                if wait <= 0:
                    if self.rate <= 0:
                        return
                    self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
                    self._updated = now
                    # Tolerate float error and the clock's resolution (a virtual clock at epoch seconds moves in
                    # steps of 2.4e-7 s): a shorter wait would not move it, and this loop would never end.
                    if self._tokens >= 1 - max(_EPSILON, self.rate * math.ulp(now)):
                        self._tokens = max(self._tokens - 1, 0.0)
                        return
                    wait = (1 - self._tokens) / self.rate
                await self._sleep(wait)

    def pause(self, seconds: float) -> None:
        """Hold every writer for `seconds` from now (a later pause extends an earlier one); then resume at the
        rate with no burst: Graph's window is still full, and writes saved up during the pause would be
        throttled again."""
        self.pauses += 1
        self._paused_until = max(self._paused_until, self._clock() + seconds)
        self._tokens, self._updated = 0.0, self._paused_until
