"""The fleet benchmark (part of ``make bench``): K instances sharing Graph's write quota, lanes, light load.

Graph's quota (3,000 writes per 150 s per app and tenant: 20/s) is scaled down in time, not in rate: the double
enforces `Scale.limit` writes per `Scale.window` s (600 per 30 s; ``--quick`` 200 per 10 s), a sliding window
shared by every process, with Graph's throttle headers and priority shedding; every worker is told the
window (``GRAPH_WRITE_WINDOW_SECONDS``), as the app is told Graph's 150 s, and nothing about the others. Each
worker (`benchmarks.fleet_worker`) is a local host with its own services, governor and token; the doubles run
in a process of their own (`benchmarks.doubles`), 30 ms per answer. Every worker records its grants in the grant
ledger, all of a run in one table of one Azurite (`grants_local.azurite`), as a fleet shares one table. Every address
is on 127.0.0.1; every process stops by itself (`--max-seconds`).

1. ``fleet``: K = 1, 4, 16, and K = 1 → 16 → 4 (a third of the run each; ``--smoke``: 1, 2, 3 and 1 → 3 → 2),
   every worker with a bulk backlog of its own (its own unit), adaptive pacing (``GRAPH_WRITE_RATE=20`` as the
   ceiling); and today's static split (``GRAPH_WRITE_PACING=static``, ``GRAPH_WRITE_RATE`` = 20 / 40 instances =
   0.5) with K = 4 (``--smoke``: 2) as the baseline; and K = 16 (``--smoke``: 3) again with a CPU hog beside the
   workers (``hog=2``: one process per CPU spinning at normal priority from the start to the end of the run), so that
   each worker is scheduled late: the governor must not count on being scheduled on time.
   ``quota_fraction``: writes let through / (quota rate * time), from the end of the first window (the empty
   window's free burst left out) to the end; per phase for the changing run. ``throttled_pct``: writes
   answered 429 / all writes, the whole run. ``dead_throttled``: messages dead-lettered ``Throttled``.
   ``tokens``: token requests / processes started.
2. ``onboarding``: one instance, a trickle of interactive grants (1/s, ``grant_membership``, High priority)
   alone, then the same trickle while the bulk queue holds 10,000 rows (``grant_membership_bulk``, Low):
   enqueue → settled p50 / p99 of the trickle, and their ratio (``--smoke``: 50 rows).
3. ``light_load``: one instance, one interactive grant at a time (each sent 0.5 s after the previous one
   settled), against the double answering in 30 ms, no quota: enqueue → settled p50 / p99, and the app's own
   overhead = that minus Graph's latency * Graph calls per grant.

The interactive grants speak as the grants queue's producer (``other``); the part fails should any of them be
dead-lettered (a refusal's latency measures no grant). Every line ends with the run's engine CPU ms per grant and the
machine's load (`benchmarks.stamp`), and states its CPU per grant as a multiple of the engine's (``..._vs_engine``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from benchmarks.directory import unit_id
from benchmarks.stamp import StampedLines, engine_cpu_ms
from grants_local.azurite import AzuriteTables, LedgerTable, new_ledger_table

ROOT = Path(__file__).resolve().parent.parent
QUOTA_RATE = 20.0  # Graph's: 3,000 per 150 s
LATENCY = 0.03
STATIC_INSTANCE_CAP = 40  # infra's maximumInstanceCount before this change: GRAPH_WRITE_RATE = 20 / 40
#: The hog run's processes spinning beside the workers: one per CPU.
HOG = os.cpu_count() or 2


@dataclass(frozen=True)
class Scale:
    """Graph's write window, scaled down in time (the rate stays 20/s); how long each run lasts; how many rows
    the onboarding backlog holds; the fleet sizes (`most`: the largest K; `some`: the static split's K, the second
    adaptive run's and the changing run's last phase)."""

    window: float
    run_seconds: float
    onboarding_seconds: float
    light_grants: int
    backlog: int = 10_000
    most: int = 16
    some: int = 4

    @property
    def limit(self) -> int:
        return round(QUOTA_RATE * self.window)


FULL = Scale(window=30.0, run_seconds=90.0, onboarding_seconds=60.0, light_grants=120)
QUICK = Scale(window=10.0, run_seconds=25.0, onboarding_seconds=25.0, light_grants=40)
#: Every part at a tiny scale (seconds): `make test` runs it, so that a benchmark that no longer runs fails CI.
SMOKE = Scale(window=2.0, run_seconds=4.0, onboarding_seconds=3.0, light_grants=3, backlog=50, most=3, some=2)


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))] if ordered else float("nan")


class Doubles:
    def __init__(self, args: list[str]) -> None:
        self.process = subprocess.Popen(  # noqa: S603 (this interpreter, our module)
            [sys.executable, "-m", "benchmarks.doubles", *args],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        started = json.loads(self._out.readline())
        self.env: dict[str, str] = started["env"]

    @property
    def _out(self) -> IO[str]:
        assert self.process.stdout is not None
        return self.process.stdout

    def counters(self) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.close()
        counters: dict[str, Any] = json.loads(self._out.readline())
        self.process.wait(timeout=30)
        return counters

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


class Worker:
    def __init__(self, env: dict[str, str], args: list[str]) -> None:
        self.process = subprocess.Popen(  # noqa: S603 (this interpreter, our module)
            [sys.executable, "-m", "benchmarks.fleet_worker", *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.started = False
        self.result: dict[str, Any] | None = None

    def _line(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"a fleet worker ended early (exit code {self.process.wait()})")
        value: dict[str, Any] = json.loads(line)
        return value

    def _say(self, text: str) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(text + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:  # it stopped by itself (--max-seconds); its figures are on its stdout
            pass

    def ready(self) -> None:
        assert self._line() == {"ready": True}

    def go(self) -> None:
        self.started = True
        self._say("go")

    def stop(self) -> None:
        self._say("stop")

    def finish(self) -> dict[str, Any]:
        if self.result is None:
            self.result = self._line()
            self.process.wait(timeout=60)
        return self.result

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


@contextmanager
def hogs(count: int) -> Iterator[None]:
    """`count` processes spinning on the CPU (each a busy loop at normal priority) until the block ends."""
    spinning = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for process in spinning:
            process.kill()
            process.wait(timeout=10)


def ledger_env(ledger: LedgerTable) -> dict[str, str]:
    """The app's settings for `ledger` (the workers pass Azurite's development key as the ledger's credential)."""
    return {"GrantsLedger__tableServiceUri": ledger.endpoint, "GrantsLedger__tableName": ledger.table}


@contextmanager
def cluster(
    doubles_args: list[str], env: dict[str, str], workers: list[list[str]], azurite: AzuriteTables
) -> Iterator[tuple[Doubles, list[Worker]]]:
    """The doubles and the workers, all ready (imported, services built) and sharing a new ledger table in
    `azurite`; killed on the way out if still alive."""
    ledger = asyncio.run(new_ledger_table(azurite))
    doubles = Doubles(doubles_args)
    started: list[Worker] = []
    try:
        worker_env = {**os.environ, **doubles.env, **env, **ledger_env(ledger)}
        started = [Worker(worker_env, args) for args in workers]
        for worker in started:
            worker.ready()
        yield doubles, started
    finally:
        for worker in started:
            worker.kill()
        doubles.kill()


def app_env(scale: Scale, *, pacing: str = "adaptive", rate: float = QUOTA_RATE) -> dict[str, str]:
    return {
        "GRAPH_WRITE_PACING": pacing,
        "GRAPH_WRITE_RATE": f"{rate:g}",
        "GRAPH_WRITE_WINDOW_SECONDS": f"{scale.window:g}",
        "GRANTS_RETRY_BASE_SECONDS": "1",
        "GRPC_VERBOSITY": "ERROR",
    }


def fleet_run(
    name: str,
    schedule: list[tuple[float, int]],
    scale: Scale,
    azurite: AzuriteTables,
    *,
    pacing: str = "adaptive",
    rate: float = QUOTA_RATE,
    hog: int = 0,
) -> dict[str, Any]:
    """Run workers as `schedule` says ((offset in the run, active K) steps) for `scale.run_seconds` per step
    span, with `hog` processes spinning on the CPU beside them from the first step to the end; return the
    figures."""
    duration = schedule[-1][0] + (scale.run_seconds if len(schedule) == 1 else schedule[1][0])
    most = max(k for _, k in schedule)
    backlog = round(QUOTA_RATE * duration * 1.2) + 200  # more than one worker alone could write in the run
    doubles_args = [
        "--users",
        str(backlog),
        "--units",
        str(most),
        "--budget",
        f"{scale.limit}/{scale.window:g}",
        "--latency",
        str(LATENCY),
        "--write-log",
    ]
    workers = [["--unit", unit_id(n), "--bulk", str(backlog), "--max-seconds", str(duration + 30)] for n in range(most)]
    with (
        cluster(doubles_args, app_env(scale, pacing=pacing, rate=rate), workers, azurite) as (doubles, fleet),
        hogs(hog),
    ):
        start = time.monotonic()
        for offset, k in schedule:
            time.sleep(max(start + offset - time.monotonic(), 0.0))
            leaving = [worker for n, worker in enumerate(fleet) if n >= k and worker.started and worker.result is None]
            for worker in leaving:
                worker.stop()
            for n, worker in enumerate(fleet):
                if n < k and not worker.started:
                    worker.go()
            for worker in leaving:
                worker.finish()
        time.sleep(max(start + duration - time.monotonic(), 0.0))
        end = time.monotonic()
        for worker in fleet:
            if worker.started and worker.result is None:
                worker.stop()
        results = [worker.finish() for worker in fleet if worker.started]
        counters = doubles.counters()
    log = counters.pop("write_log")
    boundaries = [start + offset for offset, _ in schedule] + [end]
    phases = []
    for (_, k), (begin, finish) in zip(schedule, itertools.pairwise(boundaries), strict=True):
        begin = max(begin, start + scale.window)  # the empty first window's free burst is left out
        admitted = sum(1 for at, _, ok in log if ok and begin <= at < finish)
        phases.append((k, admitted / (QUOTA_RATE * (finish - begin))))
    measured_from = start + scale.window
    admitted = sum(1 for at, _, ok in log if ok and measured_from <= at < end)
    throttled = sum(1 for _, _, ok in log if not ok)
    return {
        "name": name,
        "hog": hog,
        "schedule": "→".join(str(k) for _, k in schedule),
        "pacing": pacing,
        "rate": rate,
        "seconds": end - start,
        "quota_fraction": admitted / (QUOTA_RATE * (end - measured_from)),
        "phases": phases,
        "writes": len(log),
        "throttled": throttled,
        "throttled_pct": 100 * throttled / max(len(log), 1),
        "dead_throttled": sum(r["dead_lettered_throttled"] for r in results),
        "dead": sum(r["dead_lettered"] for r in results),
        "granted": sum(r["granted"] for r in results),
        "token_requests": counters["token_requests"],
        "processes": len(results),
        "log": log,
        "start": start,
        "cpu_ms_per_grant": 1000 * sum(r["cpu_s"] for r in results) / max(sum(r["granted"] for r in results), 1),
    }


def print_fleet(run: dict[str, Any], *, engine_ms: float) -> None:
    phases = " ".join(f"K{k}={fraction:.3f}" for k, fraction in run["phases"]) if len(run["phases"]) > 1 else ""
    print(
        f"fleet: run={run['name']} K={run['schedule']} pacing={run['pacing']} rate={run['rate']:g} hog={run['hog']} "
        f"seconds={run['seconds']:.0f} quota_fraction={run['quota_fraction']:.3f}{' ' + phases if phases else ''} "
        f"writes={run['writes']} throttled={run['throttled']} ({run['throttled_pct']:.2f}%) "
        f"dead_throttled={run['dead_throttled']} dead={run['dead']} granted={run['granted']} "
        f"token_requests={run['token_requests']}/{run['processes']} processes "
        f"cpu_ms_per_grant={run['cpu_ms_per_grant']:.2f} cpu_vs_engine={run['cpu_ms_per_grant'] / engine_ms:.2f}",
        flush=True,
    )


def onboarding(scale: Scale, azurite: AzuriteTables, *, backlog: int, hog: int = 0) -> dict[str, Any]:
    """One instance: the 1/s interactive trickle, with `backlog` bulk rows queued (0: alone), `hog` processes spinning
    on the CPU beside it."""
    seconds = scale.onboarding_seconds
    doubles_args = [
        "--users",
        str(max(backlog, 1)),
        "--extra-users",
        str(round(seconds) + 20),
        "--units",
        "1",
        "--budget",
        f"{scale.limit}/{scale.window:g}",
        "--latency",
        str(LATENCY),
        "--write-log",
    ]
    worker = ["--unit", unit_id(0), "--bulk", str(backlog), "--interactive-rate", "1", "--max-seconds", str(seconds)]
    with cluster(doubles_args, app_env(scale), [worker], azurite) as (doubles, (one,)), hogs(hog):
        one.go()
        result = one.finish()
        counters = doubles.counters()
    log = counters["write_log"]
    latencies = result["interactive_s"]
    return {
        "backlog": backlog,
        "trickle": len(latencies),
        "p50_ms": 1000 * percentile(latencies, 0.5),
        "p90_ms": 1000 * percentile(latencies, 0.9),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "max_ms": 1000 * max(latencies, default=float("nan")),
        "writes_per_s": sum(1 for _, _, ok in log if ok) / result["wall_s"],
        "throttled": sum(1 for _, _, ok in log if not ok),
        "throttled_high": sum(1 for _, priority, ok in log if not ok and priority == "High"),
        "bulk_settled": result["settled"] - len(latencies),
        "token_requests": counters["token_requests"],
        "dead": result["dead_lettered"],
        "dead_reasons": result["dead_reasons"],
    }


def light_load(scale: Scale, azurite: AzuriteTables) -> dict[str, Any]:
    doubles_args = ["--users", "1", "--extra-users", str(scale.light_grants + 10), "--budget", "none"]
    doubles_args += ["--latency", str(LATENCY)]
    worker = ["--unit", unit_id(0), "--serial", str(scale.light_grants), "--max-seconds", "600"]
    with cluster([*doubles_args, "--units", "1"], app_env(scale), [worker], azurite) as (doubles, (one,)):
        one.go()
        result = one.finish()
        counters = doubles.counters()
    latencies = result["interactive_s"]
    calls = counters["requests"] / max(len(latencies), 1)
    graph = calls * LATENCY
    return {
        "grants": len(latencies),
        "p50_ms": 1000 * percentile(latencies, 0.5),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "graph_calls_per_grant": calls,
        "graph_ms": 1000 * graph,
        "overhead_p50_ms": 1000 * (percentile(latencies, 0.5) - graph),
        "overhead_p99_ms": 1000 * (percentile(latencies, 0.99) - graph),
        "token_requests": counters["token_requests"],
        "cpu_ms_per_grant": 1000 * result["cpu_s"] / max(len(latencies), 1),
        "dead": result["dead_lettered"],
        "dead_reasons": result["dead_reasons"],
    }


def onboardings(scale: Scale, azurite: AzuriteTables, *, hog: int = 0) -> tuple[dict[str, Any], dict[str, Any], float]:
    """The trickle alone, then during the backlog (both beside `hog` spinning processes), each line printed once its
    run is over (so that each states its own load), then their ratio; the two runs' figures and the ratio."""
    runs = []
    for label, backlog in (("alone", 0), ("during_backlog", scale.backlog)):
        figures = onboarding(scale, azurite, backlog=backlog, hog=hog)
        print(
            f"onboarding: trickle={label} hog={hog} interactive_grants={figures['trickle']} "
            f"p50_ms={figures['p50_ms']:.0f} p90_ms={figures['p90_ms']:.0f} p99_ms={figures['p99_ms']:.0f} "
            f"max_ms={figures['max_ms']:.0f} "
            f"bulk_settled={figures['bulk_settled']} "
            f"writes_per_s={figures['writes_per_s']:.2f} throttled={figures['throttled']} "
            f"(High {figures['throttled_high']}) dead={figures['dead']} token_requests={figures['token_requests']}",
            flush=True,
        )
        runs.append(figures)
    alone, busy = runs
    ratio: float = busy["p99_ms"] / alone["p99_ms"]
    print(f"onboarding_ratio: p99_during_backlog / p99_alone = {ratio:.2f}", flush=True)
    return alone, busy, ratio


def print_light(light: dict[str, Any], *, engine_ms: float) -> None:
    print(
        f"light_load: grants={light['grants']} one_at_a_time graph_latency_ms={1000 * LATENCY:.0f} "
        f"graph_calls_per_grant={light['graph_calls_per_grant']:.2f} p50_ms={light['p50_ms']:.1f} "
        f"p99_ms={light['p99_ms']:.1f} app_overhead_p50_ms={light['overhead_p50_ms']:.1f} "
        f"app_overhead_p99_ms={light['overhead_p99_ms']:.1f} dead={light['dead']} "
        f"token_requests={light['token_requests']} "
        f"worker_cpu_ms_per_grant={light['cpu_ms_per_grant']:.1f} "
        f"app_overhead_p99_vs_engine={light['overhead_p99_ms'] / engine_ms:.1f} "
        f"worker_cpu_vs_engine={light['cpu_ms_per_grant'] / engine_ms:.1f}",
        flush=True,
    )


def run_all(scale: Scale, *, engine_ms: float) -> dict[str, Any]:
    """Every fleet run, onboarding and light load; prints a line for each (with ratios to `engine_ms`, the run's
    engine CPU ms per grant); returns the summary figures."""
    with AzuriteTables() as azurite:  # the fleet's table storage: a new table for each run
        return _run_all(scale, azurite, engine_ms=engine_ms)


def _run_all(scale: Scale, azurite: AzuriteTables, *, engine_ms: float) -> dict[str, Any]:
    third = scale.run_seconds * 0.6
    most, some = scale.most, scale.some
    plans: list[tuple[str, list[tuple[float, int]], str, float, int]] = [
        ("static-split", [(0, some)], "static", QUOTA_RATE / STATIC_INSTANCE_CAP, 0),
        ("adaptive", [(0, 1)], "adaptive", QUOTA_RATE, 0),
        ("adaptive", [(0, some)], "adaptive", QUOTA_RATE, 0),
        ("adaptive", [(0, most)], "adaptive", QUOTA_RATE, 0),
        ("adaptive", [(0, 1), (third, most), (2 * third, some)], "adaptive", QUOTA_RATE, 0),
        ("adaptive-hog", [(0, most)], "adaptive", QUOTA_RATE, HOG),
    ]
    runs = []
    for name, schedule, pacing, rate, hog in plans:  # each line as soon as its run is over
        runs.append(fleet_run(name, schedule, scale, azurite, pacing=pacing, rate=rate, hog=hog))
        print_fleet(runs[-1], engine_ms=engine_ms)
    adaptive, hogged = runs[1:-1], runs[-1]
    alone, busy, ratio = onboardings(scale, azurite)
    light = light_load(scale, azurite)
    print_light(light, engine_ms=engine_ms)
    refused = sorted({reason for figures in (alone, busy, light) for reason in figures["dead_reasons"]})
    if refused:  # latencies of refusals are no measurement of grants
        raise SystemExit(f"fleet: onboarding or light-load grants were dead-lettered ({', '.join(refused)})")
    return {
        "fleet_quota_fraction_min": min(run["quota_fraction"] for run in adaptive),
        "fleet_throttled_pct_max": max(run["throttled_pct"] for run in adaptive),
        "fleet_dead_throttled": sum(run["dead_throttled"] for run in [*adaptive, hogged]),
        "hog_throttled_pct": hogged["throttled_pct"],
        "hog_quota_fraction": hogged["quota_fraction"],
        "onboarding_p99_ratio": ratio,
        "static_quota_fraction_k4": runs[0]["quota_fraction"],
        "light_overhead_p99_ms": light["overhead_p99_ms"],
        "tokens_per_process_max": max(
            [run["token_requests"] / run["processes"] for run in runs] + [light["token_requests"]]
        ),
    }


#: Grants of the engine run that gives a fleet part run on its own its speed (`benchmarks.stamp.engine_cpu_ms`).
ENGINE_GRANTS = {"smoke": 50, "quick": 500, "full": 2_000}


def main() -> None:
    """``python -m benchmarks.fleet [--quick|--smoke] [K=16] [--hog N] [onboarding] [light]``: every part, or one
    adaptive run of K workers, or onboarding and light load (K workers or onboarding with N processes spinning on the
    CPU beside them); each line stamped with the run's engine CPU per grant (one engine run first) and the machine's
    load."""
    size = "smoke" if "--smoke" in sys.argv else "quick" if "--quick" in sys.argv else "full"
    scale = {"smoke": SMOKE, "quick": QUICK, "full": FULL}[size]
    hog = int(sys.argv[sys.argv.index("--hog") + 1]) if "--hog" in sys.argv else 0
    printed = StampedLines(sys.stdout)
    sys.stdout = printed
    try:
        engine = printed.engine_ms = engine_cpu_ms(ENGINE_GRANTS[size])
        only = [arg for arg in sys.argv[1:] if arg.startswith("K=")]
        if only:  # e.g. python -m benchmarks.fleet --quick K=16 --hog 2: one adaptive run
            with AzuriteTables() as azurite:
                name = "adaptive-hog" if hog else "adaptive"
                run = fleet_run(name, [(0, int(only[0][2:]))], scale, azurite, hog=hog)
                print_fleet(run, engine_ms=engine)
            return
        if "onboarding" in sys.argv or "light" in sys.argv:  # e.g. python -m benchmarks.fleet --quick onboarding
            with AzuriteTables() as azurite:
                if "onboarding" in sys.argv:
                    onboardings(scale, azurite, hog=hog)
                if "light" in sys.argv:
                    print_light(light_load(scale, azurite), engine_ms=engine)
            return
        summary = run_all(scale, engine_ms=engine)
        print("fleet_summary: " + " ".join(f"{key}={value:.3f}" for key, value in summary.items()), flush=True)
    finally:
        sys.stdout = printed.out


if __name__ == "__main__":
    main()
