"""Process-wide pacing of Graph writes: a token bucket with two lanes, a shared pause after any ``429``, and
(adaptive pacing) a rate that finds this process's share of the quota from Graph's own signals.

Graph allows 3,000 directory writes per 150 s per application and tenant (20/s), whatever the number of
instances writing. `WriteGovernor.acquire` lets writes through at `rate` per second, strictly paced (bursts of
up to `burst`, by default 1: a burst at the full rate overshoots Graph's window and draws 429s). Waiters of the
``interactive`` lane go before every waiter of the ``bulk`` lane; within a lane, first come first served. While
bulk writers wait, an interactive write does not wait for a token: it borrows one (up to `INTERACTIVE_DEBT`),
which the bulk lane pays back, so the rate over time is unchanged and a new hire's grant never queues behind a
bulk job's pacing (it does keep to this process's share of Graph's window, first in line: see below).
`pause` holds *every* writer in the process until a throttled request's ``Retry-After`` has passed; a ``429``
on a bulk write pauses only the bulk lane (Graph throttles Low-priority requests first: High ones may still
pass), one on an interactive write pauses both.

**Adaptive pacing** (``adaptive=True``; the app's default, ``GRAPH_WRITE_PACING=adaptive``). No instance knows
how many others write. Graph tells each of them how full the shared quota is: a write's answer carries
``x-ms-throttle-limit-percentage`` = u (a fraction, 0.8 to 1.8) once more than 0.8 of the limit is used. Over a
window W (`window_seconds`, the quota's: 150 s) the fleet wrote u·N writes, and this process knows how many of
them were its own (n), so its share of the fleet's traffic is n / (u·N). After each write (`admitted`):

- u present: the rate moves toward  g = (n / W) · G / u (+ PROBE · ceiling while u < TARGET),  with
  G = TARGET + (TARGET - u) / FILL,  by dt / (W · SMOOTHING) of the gap. n / (u · N) is this process's share of
  the fleet's writes, so summed over the fleet the first term is G · N / W: the quota's rate times `TARGET`, plus
  what fills the window back to TARGET (or drains it) over FILL of a window, whatever the number of instances
  and however stale each one's share. Every instance scales by the same factor, so the fleet converges
  without oscillating. The small `PROBE` term, only while the fleet is under its target (so it adds nothing at the
  target, whatever the number of instances), lets a newcomer (n = 0) in and evens the shares out.
- u absent (under 0.8 used) and writes are waiting here: the rate grows by a factor e^(GROWTH · dt / W), up
  to the ceiling. An idle process does not grow its rate (it would start its next burst at the ceiling).
- a ``429`` (`throttled`): every writer pauses for ``Retry-After``, and the rate is cut to BACKOFF * rate
  (once per pause).

**The window's count, not the clock, bounds the fleet** (the *cap*: this process's writes in the window plus those
in flight). A rate assumes each process is scheduled on time; a starved one (sixteen instances on two cores, a CPU
hog beside them) sends late and reads Graph's answers late, so every instance may act on the same stale u at once.
The cap does not depend on timing: each instance keeps to a share of the window's count that sums, over the fleet,
to at most TARGET of the limit, however late each one runs:

- u present: n · TARGET / u to shrink, n · (1 + REACH · (TARGET / u - 1)) to grow (REACH of the way: the others claim
  their part of the same room from answers as stale as this one's), at least `PROBE_WRITES`.
- u absent: the window holds under SIGNAL_FLOOR of the limit, so n · (1 + REACH · (TARGET / SIGNAL_FLOOR - 1)),
  or n + PROBE_WRITES: the fleet cannot pass TARGET in the blind zone before Graph's first signal has reached every
  instance. While a full window drains (within a window of the first answer under the signal), the share the last
  signal gave is kept too, so the writes of a burst are replaced as they leave, and no faster.
- A cap is a whole number of writes: a share's fraction rounds up with its probability (`uniform`), as sixteen
  instances each rounding up would overshoot a window of 200 writes by 8 %.
- Before its first answer an instance makes one write. A writer held by the cap waits for the answer to a write in
  flight (it may raise the cap), else for this process's oldest write to leave the window. A write that gets no
  answer (`unanswered`: a timeout, a cancelled invocation) leaves the count in flight and counts in the window.

Token accrual is capped at `burst` (1 by default) however long the loop was away, and a pause of every lane resumes
with no token saved, so a late wake-up never releases a burst either.

`rate` (``GRAPH_WRITE_RATE``) is then the ceiling: a process never writes faster than it; it starts at
INITIAL * ceiling. With ``adaptive=False`` (``GRAPH_WRITE_PACING=static``) the rate is fixed at `rate`, as
before. A rate of 0 turns pacing off (the shared pause still applies).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final

from shared.core.messaging import LANES, Lane

__all__ = ["WriteGovernor"]

#: Adaptive pacing's constants (see the module docstring).
TARGET: Final = 0.97
PROBE: Final = 0.005
PROBE_WRITES: Final = 1.0
SMOOTHING: Final = 0.1
FILL: Final = 0.15
REACH: Final = 0.75
GROWTH: Final = 1.5
BACKOFF: Final = 0.7
INITIAL: Final = 0.35
#: How many tokens interactive writes may borrow ahead of waiting bulk writers (host.json's maxConcurrentCalls).
INTERACTIVE_DEBT: Final = 16
#: Graph sends x-ms-throttle-limit-percentage only above this fraction of the limit.
SIGNAL_FLOOR: Final = 0.8

_EPSILON = 1e-9
#: `WriteGovernor._take`'s wait for the answer to a write in flight, rather than for a time.
UNTIL_ANSWERED: Final = math.inf


class WriteGovernor:
    """A two-lane token bucket for Graph writes with a process-wide pause and, optionally, adaptive pacing."""

    def __init__(
        self,
        *,
        rate: float,
        burst: float | None = None,
        adaptive: bool = False,
        window_seconds: float = 150.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        uniform: Callable[[], float] = random.random,
    ) -> None:
        self.ceiling = rate
        self.adaptive = adaptive and rate > 0
        self.rate = rate * INITIAL if self.adaptive else rate
        self.burst = burst if burst is not None else 1.0
        self.window = window_seconds
        self._clock = clock
        self._sleep = sleep
        self._uniform = uniform
        self._tokens = self.burst
        self._updated = clock()
        self._started = self._updated
        self._adjusted = self._updated
        self._paused_until: dict[Lane, float] = dict.fromkeys(LANES, 0.0)
        self._waiters: dict[Lane, deque[asyncio.Event]] = {name: deque() for name in LANES}
        self._waited = False  # a writer waited for a token since the last adjustment (demand >= rate)
        self._own: deque[float] = deque()  # when this process's recent writes were admitted
        self._in_flight = 0  # writes let through and not answered yet
        # Own writes allowed in the window (own + in flight); None: no cap. Adaptive: one until the first answer.
        self._cap: float | None = PROBE_WRITES if self.adaptive else None
        self._share: float | None = None  # the cap Graph's last signal gave (this process's share of a full window)
        self._quiet_since: float | None = None  # the first answer under the signal since then
        self._answered: list[asyncio.Future[None]] = []  # writers waiting for the next answer
        self.pauses = 0
        self.last_usage: float | None = None

    async def acquire(self, lane: Lane = Lane.INTERACTIVE) -> None:
        """Wait until a write of `lane` may be sent (interactive waiters first, then in arrival order), take its
        token."""
        name = lane
        waiters = self._waiters[name]
        if self._head() is None and self._take(self._clock(), name) <= 0:  # nobody waiting, a token at hand
            self._in_flight += 1
            return
        me = asyncio.Event()
        waiters.append(me)
        try:
            while True:
                if self._head() is not me:
                    me.clear()
                    await me.wait()
                    continue
                wait = self._take(self._clock(), name)
                if wait <= 0:
                    self._in_flight += 1
                    return
                self._waited = True
                await self._wait(wait)
        finally:
            waiters.remove(me)
            head = self._head()
            if head is not None:
                head.set()

    async def _wait(self, seconds: float) -> None:
        """Sleep `seconds`; `UNTIL_ANSWERED`: until the next write in flight is answered."""
        if seconds == UNTIL_ANSWERED:
            answered = asyncio.get_running_loop().create_future()
            self._answered.append(answered)
            try:
                await answered
            finally:
                self._answered.remove(answered)
        else:
            await self._sleep(seconds)

    def _answer(self) -> None:
        """A write let through is no longer in flight: wake the writer waiting at the head."""
        self._in_flight = max(self._in_flight - 1, 0)
        for answered in self._answered:
            if not answered.done():
                answered.set_result(None)

    @property
    def in_flight(self) -> int:
        """How many writes were let through and are not answered yet."""
        return self._in_flight

    def waiting(self, lane: Lane) -> int:
        """How many writers of `lane` are waiting."""
        return len(self._waiters[lane])

    def _head(self) -> asyncio.Event | None:
        for name in LANES:
            if self._waiters[name]:
                return self._waiters[name][0]
        return None

    def _take(self, now: float, lane: Lane) -> float:
        """Take a token and return 0, or return how long to wait for one."""
        wait = self._paused_until[lane] - now
        if wait > 0:
            return wait
        if self.rate <= 0:
            return 0.0
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._cap is not None:
            self._forget(now)
            if len(self._own) + self._in_flight >= self._cap:
                # This process's share of the window is used up: wait for the answer to a write in flight (it may
                # raise the share), else for its oldest write to leave the window. Interactive writes too (first):
                # a write past the share is a 429 in the making.
                if self._in_flight:
                    return UNTIL_ANSWERED
                return max(self._own[0] + self.window - now if self._own else 1 / self.ceiling, 1e-3)
        if lane == Lane.INTERACTIVE and self._waiters[Lane.BULK] and self._tokens > 1 - INTERACTIVE_DEBT:
            # Ahead of bulk writers, an interactive write does not wait for the bucket: it borrows a token, which the
            # bulk lane pays back. The rate over time is unchanged.
            self._tokens -= 1
            return 0.0
        # Tolerate float error and the clock's resolution (a virtual clock at epoch seconds moves in steps of
        # 2.4e-7 s): a shorter wait would not move it, and the caller's loop would never end.
        if self._tokens >= 1 - max(_EPSILON, self.rate * math.ulp(now)):
            self._tokens = max(self._tokens - 1, 0.0)
            return 0.0
        return (1 - self._tokens) / self.rate

    def pause(self, seconds: float, *, lanes: tuple[Lane, ...] = LANES) -> None:
        """Hold every writer of `lanes` (all by default) for `seconds` from now (a later pause extends an earlier
        one). A pause of every lane then resumes at the rate with no burst: Graph's window is still full, and
        writes saved up during the pause would be throttled again."""
        self.pauses += 1
        until = self._clock() + seconds
        for name in lanes:
            self._paused_until[name] = max(self._paused_until[name], until)
        if lanes == LANES:
            self._tokens, self._updated = 0.0, max(self._paused_until.values())

    def throttled(self, retry_after: float, lane: Lane = Lane.INTERACTIVE) -> None:
        """A write of `lane` was answered ``429``: pause that lane and those after it (a bulk 429 pauses bulk
        only), and (adaptive) cut the rate, once per pause."""
        already_paused = self._paused_until[lane] > self._clock()
        self.pause(retry_after, lanes=LANES[LANES.index(lane) :])
        self._answer()
        if self.adaptive:
            if self.last_usage is not None and self.last_usage >= SIGNAL_FLOOR:
                # Graph's window is full (it said it was filling): write only as this process's writes leave it.
                self._forget(self._clock())
                self._cap = self._share = float(len(self._own))
                self._quiet_since = None
            if not already_paused:
                self.rate = max(self._floor(), self.rate * BACKOFF)

    def unanswered(self) -> None:
        """A write let through got no answer (a transport error, a timeout, a cancelled invocation): it is no longer
        in flight, and counts in this process's window as a write (Graph may have counted it)."""
        now = self._clock()
        self._answer()
        self._own.append(now)
        self._forget(now)
        if self.adaptive:  # no news of the window: never a standstill for want of an answer, one more write at least
            self._cap = max(self._cap or 0.0, len(self._own) + PROBE_WRITES)

    def admitted(self, usage: float | None) -> None:
        """A write was answered (not ``429``); `usage` is its ``x-ms-throttle-limit-percentage``, if any."""
        now = self._clock()
        self.last_usage = usage
        self._answer()
        self._own.append(now)
        self._forget(now)
        if not self.adaptive:
            return
        elapsed, self._adjusted = max(now - self._adjusted, 0.0), now
        own = len(self._own)
        if usage is None or usage < SIGNAL_FLOOR:
            if self._quiet_since is None:
                self._quiet_since = now
            if now - self._quiet_since >= self.window:
                self._share = None  # a whole window under the signal: the full window's share is history
            # Under the signal the window holds less than SIGNAL_FLOOR of the limit: TARGET / SIGNAL_FLOOR of this
            # process's own writes there (or one more) keeps the fleet under TARGET before Graph's first signal has
            # reached every instance, however late each one is scheduled. And while a full window drains (its last
            # signal less than a window ago), the share it had of it.
            grow = max(self._whole(own * _room(SIGNAL_FLOOR)), own + PROBE_WRITES)
            self._cap = max(grow, self._share or 0.0)
            if self._waited:
                # capped: a virtual clock may jump days (an effective date), and exp() would overflow
                self.rate = min(self.ceiling, self.rate * math.exp(min(GROWTH * elapsed / self.window, 50.0)))
        else:
            under = usage < TARGET
            self._cap = self._share = max(self._whole(own * _room(usage)), PROBE_WRITES)
            self._quiet_since = None
            span = min(self.window, max(now - self._started, self.window * SMOOTHING))
            # This process's share of the fleet's writes, times the fleet's goal: the quota's rate at TARGET, plus
            # (minus) what fills (drains) the window back to TARGET over FILL of a window.
            fleet_goal = TARGET + (TARGET - usage) / FILL
            probe = PROBE * self.ceiling if under else 0.0
            goal = min(self.ceiling, max(own / span * fleet_goal / usage, 0.0) + probe)
            self.rate += (goal - self.rate) * min(1.0, elapsed / (self.window * SMOOTHING))
            self.rate = max(self.rate, self._floor())
        self._waited = False

    def _whole(self, share: float) -> float:
        """`share` as a whole number of writes: rounded up with the probability of its fraction (`uniform`), so that
        the fleet's caps add up to the shares on average; every instance rounding up would overshoot the window by up
        to one write each (16 instances sharing a window of 200 writes: 8 %)."""
        whole = math.floor(share)
        return whole + (1.0 if self._uniform() < share - whole else 0.0)

    def _forget(self, now: float) -> None:
        while self._own and self._own[0] <= now - self.window:
            self._own.popleft()

    def _floor(self) -> float:
        return PROBE * self.ceiling


def _room(usage: float) -> float:
    """How many times its own writes in the window a process may hold when Graph's window is `usage` full: TARGET /
    usage to shrink, and only a share (REACH) of the way to it to grow, since every other instance claims its part of
    the same room from answers as old as its own."""
    ratio = TARGET / usage
    return ratio if ratio <= 1 else 1 + REACH * (ratio - 1)
