"""Adaptive pacing across instances that know nothing of each other, on virtual time (no real sleeps): K write
governors, each with writers always waiting, against one sliding-window write quota that answers as Graph does
(x-ms-throttle-limit-percentage above 0.8 of the limit, 429 with Retry-After when full). The benchmark
(`benchmarks/fleet.py`) measures the same with real processes, HTTP and the Graph double."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections import deque

import pytest

from shared.adapters.governor import WriteGovernor

WINDOW = 40.0
LIMIT = 800  # 20/s, Graph's write quota, in a window scaled down from 150 s
LATENCY = 0.03


class VirtualTime:
    """A clock and `sleep` for many tasks: time jumps to the next deadline once every task is blocked."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.now + max(seconds, 0.0), next(self._order), future))
        await future

    async def run_until(self, end: float) -> None:
        while self.now < end:
            for _ in range(20):  # let every runnable task reach its next sleep
                await asyncio.sleep(0)
            if not self._timers:
                return
            deadline, _, future = heapq.heappop(self._timers)
            self.now = max(self.now, deadline)
            if not future.done():
                future.set_result(None)


class Quota:
    """Graph's write quota as the double enforces it: `LIMIT` writes in any `WINDOW` seconds."""

    def __init__(self, clock: VirtualTime) -> None:
        self.clock = clock
        self.admitted: list[float] = []
        self.refused = 0
        self._recent: deque[float] = deque()

    def write(self) -> tuple[float | None, float | None]:
        """(usage header, None) for a write let through; (None, Retry-After) for a 429."""
        now = self.clock()
        while self._recent and self._recent[0] <= now - WINDOW:
            self._recent.popleft()
        if len(self._recent) >= LIMIT:
            self.refused += 1
            return None, max(1.0, math.ceil(self._recent[0] + WINDOW - now))
        self._recent.append(now)
        self.admitted.append(now)
        used = len(self._recent) / LIMIT
        return (round(used, 2) if used > 0.8 else None), None


async def instance(governor: WriteGovernor, quota: Quota, clock: VirtualTime, stop: asyncio.Event) -> None:
    async def writer() -> None:
        while not stop.is_set():
            await governor.acquire("bulk")
            await clock.sleep(LATENCY)
            usage, retry_after = quota.write()
            if retry_after is not None:
                governor.throttled(retry_after, "bulk")
            else:
                governor.admitted(usage)

    await asyncio.gather(*(writer() for _ in range(16)))


async def fleet(schedule: list[tuple[float, int]], seconds: float) -> tuple[float, float]:
    """Run instances as `schedule` says ((from, how many) steps); (quota fraction after the first window, % 429)."""
    clock = VirtualTime()
    quota = Quota(clock)
    running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []
    for (start, count), end in zip(schedule, [s for s, _ in schedule[1:]] + [seconds], strict=True):
        await clock.run_until(start)
        while len(running) < count:
            stop = asyncio.Event()
            governor = WriteGovernor(rate=20, adaptive=True, window_seconds=WINDOW, clock=clock, sleep=clock.sleep)
            running.append((stop, asyncio.create_task(instance(governor, quota, clock, stop))))
        while len(running) > count:
            stop, task = running.pop()
            stop.set()
            task.cancel()
        await clock.run_until(end)
    for stop, task in running:
        stop.set()
        task.cancel()
    await asyncio.gather(*(task for _, task in running), return_exceptions=True)
    measured = sum(1 for at in quota.admitted if at >= WINDOW)
    fraction = measured / (20 * (seconds - WINDOW))
    return fraction, 100 * quota.refused / (len(quota.admitted) + quota.refused)


@pytest.mark.parametrize("count", [1, 2, 4, 8, 16])
async def test_instances_that_do_not_know_their_number_share_the_whole_quota(count: int) -> None:
    """At least 0.95 of the quota from the end of the first window (the empty window's free burst left out), and
    under 1 % of writes answered 429."""
    fraction, throttled = await fleet([(0, count)], 160)
    assert fraction >= 0.95
    assert throttled < 1


async def test_the_quota_stays_used_as_instances_come_and_go() -> None:
    """1 instance, then 16 (15 newcomers with no share yet), then 4 (12 leave)."""
    fraction, throttled = await fleet([(0, 1), (80, 16), (160, 4)], 240)
    assert fraction >= 0.95
    assert throttled < 1
