"""Adaptive pacing across instances that know nothing of each other, on virtual time (no real sleeps): K write
governors, each with writers always waiting, against one sliding-window write quota that answers as Graph does
(x-ms-throttle-limit-percentage above 0.8 of the limit, 429 with Retry-After when full). The instances run in
lockstep (the worst case: every one of them decides on the same answers at the same instant), or scheduled late
(a starved process: each write sent, and each answer read, up to a few hundred ms late, from a seeded draw). The
benchmark (`benchmarks/fleet.py`) measures the same with real processes, HTTP and the Graph double."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import random
from collections import deque

import pytest

from shared.adapters.governor import WriteGovernor

WINDOW = 40.0  # 800 writes: 20/s, Graph's write quota, in a window scaled down from 150 s
LATENCY = 0.03
LATE = 0.3  # how late a starved process may send a write, or read its answer


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
            if future.cancelled():  # a sleep given up (the governor woke for an answer): no time passes for it
                continue
            self.now = max(self.now, deadline)
            if not future.done():
                future.set_result(None)


class Quota:
    """Graph's write quota as the double enforces it: 20/s, `limit` writes in any `window` seconds."""

    def __init__(self, clock: VirtualTime, window: float = WINDOW) -> None:
        self.clock = clock
        self.window = window
        self.limit = round(20 * window)
        self.admitted: list[float] = []
        self.refused = 0
        self._recent: deque[float] = deque()

    def write(self) -> tuple[float | None, float | None]:
        """(usage header, None) for a write let through; (None, Retry-After) for a 429."""
        now = self.clock()
        while self._recent and self._recent[0] <= now - self.window:
            self._recent.popleft()
        if len(self._recent) >= self.limit:
            self.refused += 1
            return None, max(1.0, math.ceil(self._recent[0] + self.window - now))
        self._recent.append(now)
        self.admitted.append(now)
        used = len(self._recent) / self.limit
        return (round(used, 2) if used > 0.8 else None), None


async def instance(
    governor: WriteGovernor, quota: Quota, clock: VirtualTime, stop: asyncio.Event, late: random.Random | None
) -> None:
    """16 writers, always waiting; each write sent, and its answer read, `late` (a draw of 0 to `LATE` s) or on
    time."""

    async def writer() -> None:
        while not stop.is_set():
            await governor.acquire("bulk")
            await clock.sleep(LATENCY + (late.uniform(0, LATE) if late else 0.0))  # sent late, then Graph's latency
            usage, retry_after = quota.write()
            if late:
                await clock.sleep(late.uniform(0, LATE))  # the answer read late
            if retry_after is not None:
                governor.throttled(retry_after, "bulk")
            else:
                governor.admitted(usage)

    await asyncio.gather(*(writer() for _ in range(16)))


async def fleet(
    schedule: list[tuple[float, int]], seconds: float, *, window: float = WINDOW, late: bool = False
) -> tuple[float, float]:
    """Run instances as `schedule` says ((from, how many) steps) against a quota of `window` seconds, scheduled
    `late` or in lockstep; (quota fraction after the first window, % 429)."""
    clock = VirtualTime()
    quota = Quota(clock, window)
    running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []
    numbers = itertools.count()
    for (start, count), end in zip(schedule, [s for s, _ in schedule[1:]] + [seconds], strict=True):
        await clock.run_until(start)
        while len(running) < count:
            stop = asyncio.Event()
            n = next(numbers)
            governor = WriteGovernor(
                rate=20,
                adaptive=True,
                window_seconds=window,
                clock=clock,
                sleep=clock.sleep,
                uniform=random.Random(n).random,  # seeded: the run is the same every time
            )
            lateness = random.Random(1000 + n) if late else None
            running.append((stop, asyncio.create_task(instance(governor, quota, clock, stop, lateness))))
        while len(running) > count:
            stop, task = running.pop()
            stop.set()
            task.cancel()
        await clock.run_until(end)
    for stop, task in running:
        stop.set()
        task.cancel()
    await asyncio.gather(*(task for _, task in running), return_exceptions=True)
    measured = sum(1 for at in quota.admitted if at >= window)
    fraction = measured / (20 * (seconds - window))
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


@pytest.mark.parametrize("count", [1, 4, 16])
async def test_instances_scheduled_late_share_the_quota_without_429s(count: int) -> None:
    """Each instance sends its writes, and reads Graph's answers, up to 0.3 s late (a starved process: sixteen
    instances on two cores, a CPU hog beside them): the window's count, not the clock, keeps the fleet under the
    limit."""
    fraction, throttled = await fleet([(0, count)], 160, late=True)
    assert fraction >= 0.95
    assert throttled < 1


async def test_instances_scheduled_late_keep_the_quota_as_they_come_and_go() -> None:
    fraction, throttled = await fleet([(0, 1), (80, 16), (160, 4)], 240, late=True)
    assert fraction >= 0.95
    assert throttled < 1


@pytest.mark.parametrize("late", [False, True])
async def test_sixteen_instances_share_a_window_of_200_writes(late: bool) -> None:
    """A window as small as make bench --quick's (200 writes in 10 s): about 12 writes each, where rounding every
    share up, or a newcomer's blind writes, would overshoot."""
    fraction, throttled = await fleet([(0, 16)], 40, window=10, late=late)
    assert fraction >= 0.95
    assert throttled < 1
