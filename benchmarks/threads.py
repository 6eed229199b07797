"""CPU time per thread of this process, grouped by what the thread does (Linux: ``/proc/self/task``).

The local pipeline runs the app and two local doubles in one process: the app's coroutines and the local host and
queue on the event loop, the app's blocking settlement calls on their own threads (``settlement-N``, as in Azure),
the local settlement server's gRPC handlers on threads of its own (``settlement_N``: the Functions host's part in
Azure), and gRPC's own C threads (both sides). `ThreadCpu` samples every thread's CPU time while it runs and keeps
each thread's last sample, so threads that end before the run does still count (up to one interval short).
"""

from __future__ import annotations

import asyncio
import os
import threading

__all__ = ["GROUPS", "ThreadCpu"]

#: The groups `ThreadCpu.groups` reports, in this order.
GROUPS = ("event_loop", "settlement_calls", "settlement_server", "grpc_core", "other")
_TICK = os.sysconf("SC_CLK_TCK")


def _group(name: str | None, *, main: int, tid: int) -> str:
    if tid == main:
        return "event_loop"
    if name is None:
        return "grpc_core"  # a thread Python did not start: gRPC's completion queue and timer threads
    if name.startswith("settlement-"):
        return "settlement_calls"
    if name.startswith("settlement_"):
        return "settlement_server"
    return "other"


class ThreadCpu:
    """CPU seconds of each thread since the first `sample`, grouped (`groups`); `run` samples until cancelled."""

    def __init__(self) -> None:
        self._start: dict[int, float] = {}
        self._last: dict[int, tuple[str, float]] = {}
        self._main = threading.main_thread().native_id or 0

    def sample(self) -> None:
        names = {thread.native_id: thread.name for thread in threading.enumerate()}
        first = not self._start and not self._last
        for entry in os.listdir("/proc/self/task"):
            tid = int(entry)
            try:
                with open(f"/proc/self/task/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:  # it ended in between
                continue
            seconds = (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime
            if first:
                self._start[tid] = seconds
            self._last[tid] = (_group(names.get(tid), main=self._main, tid=tid), seconds)

    async def run(self, every: float = 0.1) -> None:
        while True:
            self.sample()
            await asyncio.sleep(every)

    def groups(self) -> dict[str, float]:
        """CPU seconds by group (`GROUPS`) since the first sample."""
        totals: dict[str, float] = dict.fromkeys(GROUPS, 0.0)
        for tid, (group, seconds) in self._last.items():
            totals[group] = totals.get(group, 0.0) + seconds - self._start.get(tid, 0.0)
        return {group: totals[group] for group in GROUPS}
