"""What every line of ``make bench`` says about the run it came from, so that a figure can be compared across
machines: the run's own speed and the machine's load while the part ran.

- **speed**: ``engine_cpu_ms``, the engine's CPU ms per grant (`benchmarks.engine`: policy, handler, one Graph POST,
  16 at a time, no latency; the median of the run's engine runs), measured first in the same run. A part's CPU
  figure divided by it (``..._vs_engine``) is a property of the code, close to the same on a faster or a slower
  machine; its milliseconds are not.
- **load**: the 1-minute load average at the part's start and at its end (``os.getloadavg``, a lagging average),
  the share of the machine's CPU time that was busy during the part (``/proc/stat``: every process's, this run's
  included) and the CPU count: ``load=0.90..1.40 busy=63% cpus=2``.

`StampedLines` writes both at the end of each line printed; a part's start is the end of the line before it (each
part prints its line when it is over).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["Doubles", "Load", "StampedLines", "client_run", "doubles", "engine_cpu_ms"]


@dataclass(frozen=True, slots=True)
class Load:
    """The machine's load at one moment: the 1-minute load average and ``/proc/stat``'s busy and total CPU time."""

    average: float
    busy: int
    total: int

    @classmethod
    def now(cls) -> Load:
        busy = total = 0
        try:
            with open("/proc/stat") as stat:
                ticks = [int(value) for value in stat.readline().split()[1:]]
            idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle and iowait
            total = sum(ticks[:8])  # guest time is already counted in user time
            busy = total - idle
        except (OSError, ValueError, IndexError):  # not Linux: the load average alone
            pass
        return cls(average=os.getloadavg()[0], busy=busy, total=total)

    def until(self, end: Load) -> str:
        """``load=<start>..<end> busy=<percent>% cpus=<count>`` from this moment to `end`."""
        spent = end.total - self.total
        busy = f" busy={100 * (end.busy - self.busy) / spent:.0f}%" if spent > 0 else ""
        return f"load={self.average:.2f}..{end.average:.2f}{busy} cpus={os.cpu_count()}"


class StampedLines:
    """Standard output, passed through with `prefix` before each line and the run's speed and load after it (once
    `engine_ms` is set); the part names of the lines printed (the text before the first colon)."""

    def __init__(self, out: TextIO, *, prefix: str = "") -> None:
        self.out = out
        self.prefix = prefix
        self.parts: set[str] = set()
        self.engine_ms: float | None = None
        self._line = ""  # the line written so far
        self._since = Load.now()  # the start of the part whose line comes next

    def write(self, text: str) -> int:
        for piece in text.splitlines(keepends=True):
            if not self._line:
                self.out.write(self.prefix)
            self._line += piece
            if piece.endswith("\n"):
                self.out.write(piece[:-1] + self.stamp() + "\n")
                self.parts.add(self._line.split(":", 1)[0])
                self._line = ""
            else:
                self.out.write(piece)
        return len(text)

    def stamp(self) -> str:
        """`` | engine_cpu_ms=… load=… busy=…% cpus=…`` for the part that ends now; the next one starts now."""
        end = Load.now()
        speed = f"engine_cpu_ms={self.engine_ms:.2f} " if self.engine_ms is not None else ""
        stamp, self._since = f" | {speed}{self._since.until(end)}", end
        return stamp

    def flush(self) -> None:
        self.out.flush()


class Doubles:
    """The Graph double and token endpoint in their own process (`benchmarks.doubles`)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdin is not None
        assert process.stdout is not None
        self._process = process
        started = json.loads(process.stdout.readline())
        self.env: dict[str, str] = {**os.environ, **started["env"]}
        self.unit: str = started["unit"]

    def counters(self) -> dict[str, Any]:
        """Stop serving and return the double's counters."""
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._process.stdin.close()
        counters: dict[str, Any] = json.loads(self._process.stdout.readline())
        return counters


@contextmanager
def doubles(*, users: int, budget: str, latency: float, units: int = 0) -> Iterator[Doubles]:
    process = subprocess.Popen(  # noqa: S603 (this interpreter, our module)
        [
            sys.executable,
            "-m",
            "benchmarks.doubles",
            "--users",
            str(users),
            "--units",
            str(units),
            "--budget",
            budget,
            "--latency",
            str(latency),
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield Doubles(process)
    finally:
        process.kill() if process.poll() is None else None
        process.wait(timeout=10)


def client_run(python: Path, module: str, count: int) -> dict[str, Any]:
    """Run one comparison client (`module` in `python`) against a fresh double; its figures and the double's."""
    with doubles(users=count, budget="none", latency=0.0) as served:
        out = subprocess.run(  # noqa: S603 (a venv's interpreter, our module)
            [str(python), "-m", module, "--unit", served.unit, "--count", str(count), "--concurrency", "16"],
            cwd=ROOT,
            env=served.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        figures: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        figures["counters"] = served.counters()
    return figures


def engine_cpu_ms(count: int) -> float:
    """The engine's CPU ms per grant, one run of `count` grants (`benchmarks.engine`): the speed of a run that does
    not run the engine comparison (a fleet part on its own)."""
    return 1000 * float(client_run(Path(sys.executable), "benchmarks.engine", count)["cpu_s"]) / count
