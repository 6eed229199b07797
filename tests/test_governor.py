"""The write governor: pacing at the configured rate, and one 429 pausing every writer."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from grants_local.graph_double import Fault, GraphDouble
from grants_local.queue import ManualClock
from shared.adapters.governor import BACKOFF, FILL, INITIAL, TARGET, WriteGovernor
from shared.adapters.graph import GraphClient
from shared.bootstrap import Services
from shared.core.errors import TransientError
from shared.core.messaging import Lane
from tests.conftest import USER_2, execute
from tests.test_grant_engine import command


def round_up() -> float:
    """A draw (`WriteGovernor`'s `uniform`) under every fraction: each share of the window rounds up, every run."""
    return 0.0


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
        await execute(services, command())
    governor = services.graph._governor
    assert governor is not None
    assert governor.pauses == 1


# --- lanes -----------------------------------------------------------------------------------------------


class SteppedTime:
    """A clock the test moves; `sleep` yields until the clock has passed its deadline."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        deadline = self.now + seconds
        while self.now < deadline - 1e-9:  # noqa: ASYNC110 (the test moves this clock by hand)
            await asyncio.sleep(0)

    async def run(self, tasks: list[asyncio.Task[None]], step: float = 0.01) -> None:
        while not all(task.done() for task in tasks):
            self.now += step
            for _ in range(3):
                await asyncio.sleep(0)


async def test_interactive_writers_go_before_bulk_writers_that_were_waiting_first() -> None:
    time = SteppedTime()
    governor = WriteGovernor(rate=10, clock=time, sleep=time.sleep)
    governor.pause(1)  # everyone queues
    order: list[str] = []

    async def write(lane: Lane, name: str) -> None:
        await governor.acquire(lane)
        order.append(name)

    tasks = [asyncio.create_task(write("bulk", f"bulk-{n}")) for n in range(3)]
    await asyncio.sleep(0)
    tasks += [asyncio.create_task(write("interactive", f"interactive-{n}")) for n in range(2)]
    await asyncio.sleep(0)
    assert (governor.waiting("bulk"), governor.waiting("interactive")) == (3, 2)
    await time.run(tasks)

    assert order == ["interactive-0", "interactive-1", "bulk-0", "bulk-1", "bulk-2"]


async def test_an_interactive_write_borrows_a_token_ahead_of_waiting_bulk_writers() -> None:
    """A new hire's grant does not queue behind a bulk job's pacing; the bulk lane pays the token back."""
    time = SteppedTime()
    governor = WriteGovernor(rate=1, clock=time, sleep=time.sleep)
    await governor.acquire("bulk")  # the one token
    bulk = [asyncio.create_task(governor.acquire("bulk")) for _ in range(2)]
    await asyncio.sleep(0)
    await asyncio.wait_for(governor.acquire("interactive"), timeout=1)  # no clock movement needed
    assert time.now == 0
    await time.run(bulk)
    assert time.now == pytest.approx(3.0, abs=0.02)  # 1 s each for the two bulk writes, plus the borrowed one


async def test_a_bulk_429_pauses_the_bulk_lane_only() -> None:
    """Graph throttles Low-priority writes first: a High one may still pass."""
    time = FakeTime()
    governor = WriteGovernor(rate=0, clock=time, sleep=time.sleep)
    governor.throttled(5, "bulk")
    await governor.acquire("interactive")
    assert time.now == 0
    await governor.acquire("bulk")
    assert time.now == pytest.approx(5)


async def test_an_interactive_429_pauses_both_lanes() -> None:
    time = FakeTime()
    governor = WriteGovernor(rate=0, clock=time, sleep=time.sleep)
    governor.throttled(3, "interactive")
    await governor.acquire("bulk")
    assert time.now == pytest.approx(3)


# --- adaptive pacing -------------------------------------------------------------------------------------


async def test_adaptive_pacing_starts_low_and_grows_only_while_writers_wait() -> None:
    time = FakeTime()
    busy = WriteGovernor(rate=20, adaptive=True, window_seconds=10, clock=time, sleep=time.sleep)
    assert busy.rate == pytest.approx(20 * INITIAL)
    for _ in range(400):  # more writers than the rate: each one waits; Graph sends no usage header
        await busy.acquire()
        busy.admitted(None)
    assert busy.rate == 20  # grown to the ceiling, not past it

    idle_time = FakeTime()
    idle = WriteGovernor(rate=20, adaptive=True, window_seconds=10, clock=idle_time, sleep=idle_time.sleep)
    for _ in range(10):  # one write every 5 s: nobody waits
        idle_time.now += 5
        await idle.acquire()
        idle.admitted(None)
    assert idle.rate == pytest.approx(20 * INITIAL)


async def test_adaptive_pacing_settles_on_its_share_of_the_fleets_goal() -> None:
    """Given Graph says the limit is fully used while this process writes 10/s of it (half of the fleet's 20/s),
    it settles on half of the rate that brings the window back to the target, whatever the number of others."""
    time = FakeTime()
    governor = WriteGovernor(rate=20, adaptive=True, window_seconds=10, clock=time, sleep=time.sleep)
    governor.rate = 10
    for _ in range(300):  # 30 s of writes at 10/s, each answered "1.00 of the limit used"
        time.now += 0.1
        governor.admitted(1.0)
    fleet_goal = TARGET + (TARGET - 1.0) / FILL  # a fraction of the quota's rate: under TARGET, to drain
    assert governor.rate == pytest.approx(10 * fleet_goal, rel=0.02)
    assert governor.rate < 10 * TARGET


async def test_adaptive_pacing_cuts_the_rate_once_per_429_pause() -> None:
    time = FakeTime()
    governor = WriteGovernor(rate=20, adaptive=True, window_seconds=10, clock=time, sleep=time.sleep)
    governor.rate = 10
    governor.throttled(2, "bulk")
    governor.throttled(2, "bulk")  # a second 429 from a write already in flight: same pause, no second cut
    assert governor.rate == pytest.approx(10 * BACKOFF)


async def test_after_a_429_a_process_writes_only_as_its_own_writes_leave_the_window() -> None:
    """Graph said its window was filling, then full: the process's own share of it is what it may keep writing."""
    time = FakeTime()
    governor = WriteGovernor(rate=20, adaptive=True, window_seconds=10, clock=time, sleep=time.sleep, uniform=round_up)
    governor.rate = 20
    for _ in range(5):  # five writes at t = 0 .. 0.4, "0.90 of the limit used"
        await governor.acquire()
        governor.admitted(0.9)
        time.now += 0.1
    await governor.acquire()
    governor.throttled(1, "interactive")  # the sixth is refused at t = 0.5
    await governor.acquire()
    assert time.now == pytest.approx(10.0)  # past the pause, it waits for its first write (t = 0) to leave


async def test_a_429_that_no_usage_signal_announced_only_pauses() -> None:
    """A 429 out of the blue (another limit, a busy service): pause for Retry-After, no share to keep to."""
    time = FakeTime()
    governor = WriteGovernor(rate=20, adaptive=True, window_seconds=150, clock=time, sleep=time.sleep)
    await governor.acquire()
    governor.admitted(None)
    await governor.acquire()
    governor.throttled(30, "interactive")  # after the second write, which waited for its token
    await governor.acquire()
    first_wait = 1 / (20 * INITIAL)
    assert time.now == pytest.approx(first_wait + 30 + 1 / (20 * INITIAL * BACKOFF))  # the pause, then one token


# --- the window's count: robust to late scheduling ------------------------------------------------------------


WINDOW = 1000.0  # long enough that no write leaves it unless a test moves the clock past it


def adaptive(time: FakeTime, *, uniform: float = 0.0) -> WriteGovernor:
    """An adaptive governor at 20/s over a `WINDOW`, its shares rounded by a draw of `uniform`."""
    return WriteGovernor(
        rate=20, adaptive=True, window_seconds=WINDOW, clock=time, sleep=time.sleep, uniform=lambda: uniform
    )


async def settled(task: asyncio.Future[None]) -> bool:
    """Whether `task` is done once every ready callback has run (FakeTime's sleeps end at once)."""
    for _ in range(5):
        await asyncio.sleep(0)
    return task.done()


async def write_answered(governor: WriteGovernor, usage: float | None, count: int = 1) -> None:
    for _ in range(count):
        await governor.acquire("bulk")
        governor.admitted(usage)


async def more_writes_allowed(governor: WriteGovernor, time: FakeTime) -> int:
    """How many more writes the process may send now (waiting for tokens, not for an answer or for its writes to
    leave the window): its cap less what it holds."""
    started, writes = time.now, 0
    while True:
        write = asyncio.ensure_future(governor.acquire("bulk"))
        if not await settled(write) or time.now - started > WINDOW / 2:
            write.cancel()
            return writes
        writes += 1


async def test_before_its_first_answer_a_process_makes_one_write() -> None:
    """A newcomer knows nothing of the window: its second write waits for the first one's answer, not for time."""
    time = FakeTime()
    governor = adaptive(time)
    await governor.acquire("bulk")
    second = asyncio.ensure_future(governor.acquire("bulk"))
    assert not await settled(second)
    governor.admitted(None)
    assert await settled(second)
    assert governor.in_flight == 1


async def test_a_first_write_that_gets_no_answer_leaves_the_probe_open() -> None:
    """A newcomer's first write times out: nothing was learnt of the window, so the next write goes as a probe at
    once, not after the window's 150 s (a cold start whose first write timed out would stall every write)."""
    time = FakeTime()
    governor = adaptive(time)
    await governor.acquire("interactive")
    governor.unanswered()
    second = asyncio.ensure_future(governor.acquire("interactive"))
    assert await settled(second)
    assert time.now < 1.0
    third = asyncio.ensure_future(governor.acquire("bulk"))
    assert not await settled(third)  # still one probe at a time: it waits for the second's answer
    governor.admitted(None)
    assert await settled(third)


async def test_under_graphs_signal_a_process_grows_its_share_of_the_window_a_bounded_step_at_a_time() -> None:
    """Graph says nothing under 0.8 of the limit: holding 40 writes there, a process may hold 40 * (1 + 0.75 * (0.97 /
    0.8 - 1)) = 46.4 before an answer tells it more, so 6 more: a fleet acting late on the same stale answers cannot
    pass TARGET before Graph's first signal has reached each instance."""
    time = FakeTime()
    governor = adaptive(time, uniform=0.5)  # the 0.4 rounds down
    await write_answered(governor, None, 40)
    assert await more_writes_allowed(governor, time) == 6


async def test_a_share_of_the_window_rounds_up_only_with_the_probability_of_its_fraction() -> None:
    """At 0.96 of the limit, 40 writes may grow to 40 * (1 + 0.75 * (0.97 / 0.96 - 1)) = 40.3: one more write for a
    draw under 0.3 only (sixteen instances each rounding up would overshoot a small window)."""
    for draw, more in ((0.2, 1), (0.5, 0)):
        time = FakeTime()
        governor = adaptive(time, uniform=draw)
        await write_answered(governor, None, 39)
        await write_answered(governor, 0.96)
        assert await more_writes_allowed(governor, time) == more


async def test_a_draining_window_keeps_the_share_the_last_signal_gave_for_a_window() -> None:
    """The window was full (Graph said 1.00 as this process's 40th write went in): once those writes have left it and
    Graph says nothing, the process may replace its share of them (40 * 0.97 = 38.8, rounded up by the draw), and
    only that, until a whole window of answers under the signal has passed."""
    time = FakeTime()
    governor = adaptive(time, uniform=0.5)
    await write_answered(governor, None, 39)
    await write_answered(governor, 1.0)
    time.now += WINDOW  # every one of them has left the window
    await write_answered(governor, None)  # 1 write held; its share of the full window: 39
    assert await more_writes_allowed(governor, time) == 38
    for _ in range(38):  # answered, under the signal
        governor.admitted(None)
    time.now += WINDOW  # a whole window under the signal: the full window's share is history
    await write_answered(governor, None)  # 1 write held: 1 * 1.16, or 1 more
    assert await more_writes_allowed(governor, time) == 1


async def test_an_interactive_write_keeps_to_the_share_of_the_window_first_in_line() -> None:
    """Ahead of waiting bulk writers an interactive write borrows a token, but not room in Graph's window: held by the
    cap, it waits too, and takes the first write the next answer allows."""
    time = FakeTime()
    governor = adaptive(time)  # shares round up
    await write_answered(governor, None, 40)  # 40 * 1.16 = 46.4: 47 writes in the window
    for _ in range(7):
        await governor.acquire("bulk")  # 7 in flight: the cap is reached
    bulk = asyncio.ensure_future(governor.acquire("bulk"))
    interactive = asyncio.ensure_future(governor.acquire("interactive"))
    assert not await settled(interactive)
    governor.admitted(None)  # 41 answered, 6 in flight: 41 * 1.16 = 47.5, so 48
    assert await settled(interactive)
    assert not await settled(bulk)
    bulk.cancel()


async def test_a_write_that_gets_no_answer_is_no_longer_in_flight(graph: GraphDouble) -> None:
    """A write whose connection fails (or whose invocation is cancelled) leaves the count in flight, which it would
    otherwise hold for ever, and the process may write again at once (no answer is no reason to stand still)."""
    time = FakeTime()
    governor = adaptive(time)

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    class Tokens:
        async def token(self, *, reject: str | None = None) -> str:
            return "token"

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as http:
        client = GraphClient(http=http, tokens=Tokens(), base_url=graph.base_url, governor=governor)
        with pytest.raises(TransientError):
            await client.send("POST", "/directory/administrativeUnits/x/members/$ref", json_body={})
    assert governor.in_flight == 0
    await governor.acquire("bulk")  # the next one goes without an answer, and without waiting for the window
    assert time.now < 1


async def test_graph_calls_carry_the_lanes_priority(services: Services, graph: GraphDouble) -> None:
    """x-ms-throttle-priority: High for interactive work (user-visible), Low for bulk."""
    graph.write_budget = (100, 10.0)
    await execute(services, command())
    await execute(services, command(member=USER_2), lane=Lane.BULK)
    await execute(services, command(member=USER_2, action="remove"))
    assert [w.priority for w in graph.write_log] == ["High", "Low", "High"]
