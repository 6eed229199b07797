"""The write governor: pacing at the configured rate, and one 429 pausing every writer."""

from __future__ import annotations

import asyncio

import pytest

from grants_local.graph_double import Fault, GraphDouble
from grants_local.queue import ManualClock
from shared.adapters.governor import WriteGovernor
from shared.bootstrap import Services
from tests.test_grant_engine import command


class FakeTime:
    """A clock that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


async def test_by_default_writes_are_paced_strictly_at_the_rate() -> None:
    """No burst: a window as short as one second never sees more than the rate (a burst at the full rate
    overshoots a sliding window and draws 429s)."""
    time = FakeTime()
    governor = WriteGovernor(rate=20, clock=time, sleep=time.sleep)
    for _ in range(41):
        await governor.acquire()
    assert time.now == pytest.approx(2.0)  # one at once, then 40 at 20 per second


async def test_writes_are_paced_at_the_rate_after_an_explicit_burst() -> None:
    time = FakeTime()
    governor = WriteGovernor(rate=20, burst=20, clock=time, sleep=time.sleep)
    for _ in range(60):
        await governor.acquire()
    assert time.now == pytest.approx(2.0)  # 20 free (the burst), then 40 at 20 per second


async def test_concurrent_writers_share_the_rate() -> None:
    time = FakeTime()
    governor = WriteGovernor(rate=10, burst=1, clock=time, sleep=time.sleep)
    await asyncio.gather(*(governor.acquire() for _ in range(11)))
    assert time.now == pytest.approx(1.0)


async def test_a_pause_holds_every_writer_until_it_has_passed() -> None:
    time = FakeTime()
    governor = WriteGovernor(rate=0, clock=time, sleep=time.sleep)
    governor.pause(30)
    await asyncio.gather(*(governor.acquire() for _ in range(5)))
    assert time.now == pytest.approx(30)
    assert time.sleeps == [30]  # one wait, shared


async def test_pacing_on_a_virtual_clock_at_epoch_seconds_never_spins() -> None:
    """At 1.7e9 s a float moves in 2.4e-7 s steps: a token short by less than that must not wait forever."""
    clock = ManualClock()  # epoch seconds, as run-local and the tests use it
    governor = WriteGovernor(rate=20, clock=clock, sleep=clock.sleep)
    started = clock()

    for _ in range(60):
        await asyncio.wait_for(governor.acquire(), timeout=5)

    assert clock() - started == pytest.approx(59 / 20, abs=1e-3)  # one at once, then 59 at 20 per second


async def test_after_a_pause_writes_resume_at_the_rate_without_a_burst() -> None:
    """Tokens saved up before or during a 429's pause are dropped: Graph's window is still full."""
    time = FakeTime()
    governor = WriteGovernor(rate=20, clock=time, sleep=time.sleep)
    governor.pause(2)
    for _ in range(20):
        await governor.acquire()
    assert time.now == pytest.approx(3.0)  # the pause, then 20 at 20 per second: nothing saved up


async def test_rate_zero_does_not_pace() -> None:
    time = FakeTime()
    governor = WriteGovernor(rate=0, clock=time, sleep=time.sleep)
    for _ in range(1000):
        await governor.acquire()
    assert time.now == 0


async def test_a_429_from_graph_pauses_the_process_for_its_retry_after(services: Services, graph: GraphDouble) -> None:
    graph.inject(Fault.status(429, retry_after=3))
    with pytest.raises(Exception, match="Throttled"):
        await services.handle(command())
    governor = services.graph._governor
    assert governor is not None
    assert governor.pauses == 1
