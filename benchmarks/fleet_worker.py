"""One instance of the fleet benchmark: a local host with its own services and write governor, told nothing of
the others. ``python -m benchmarks.fleet_worker --unit AU --bulk N [--interactive-rate R] [--serial N]``.

It builds everything first (the registered functions, one settlement server per lane's queue, `bootstrap` from
the environment: ``GRAPH_BASE_URL``, the token endpoint, ``GRAPH_WRITE_*``, the grant ledger's
``GrantsLedger__tableServiceUri`` and ``GrantsLedger__tableName``: a table of the one Azurite the fleet shares,
reached with its development key), prints ``{"ready": true}``, then waits for ``go`` on standard input. From then on
it delivers, up to 16 at a time per lane (host.json's ``maxConcurrentCalls``): the bulk queue (pre-filled with N adds
to `--unit`, users 0..N-1) through ``grant_membership_bulk``, and the interactive queue through ``grant_membership``,
fed with one add (source system ``other``: the grants queue's producer) per 1/R seconds (users from 1,000,000 on)
when `--interactive-rate` is given (request ids name the unit, so the workers of one fleet, one unit each, never
share one in their shared ledger); or, with `--serial N`, N interactive adds one at a time (each sent when the
previous one settled). ``stop`` on standard input (or
`--max-seconds`, or the end of the serial run) stops deliveries and cancels the ones in flight (an instance
scaled in: their locks expire); it prints one JSON line of figures and exits. Every address it talks to is
on 127.0.0.1 (the doubles and its own settlement servers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

from benchmarks.directory import member_id
from grants_local.azurite import dev_credential
from grants_local.binding import to_received_message
from grants_local.host import OutcomeRecorder, registered_function
from grants_local.queue import LocalQueue, LocalSender
from grants_local.settlement_server import LocalSettlementServer, point_message_actions_at
from shared.adapters.governor import WriteGovernor
from shared.adapters.lanes import LaneSender
from shared.bootstrap import bootstrap
from shared.config import Settings
from shared.core.messaging import Lane
from shared.runtime import installed

CONCURRENCY = 16
INTERACTIVE_FIRST_USER = 1_000_000


def grant(unit: str, user: int, request_id: str, system: str) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 1,
            "requestId": request_id,
            "target": {"type": "administrativeUnit", "id": unit},
            "member": {"id": member_id(user), "type": "user"},
            "source": {"system": system, "reference": "fleet"},
        }
    ).encode()


class Lanes:
    """One queue, settlement server, actions and function per lane; enqueue and settle times per message."""

    def __init__(self, app: Any) -> None:
        self.queues: dict[Lane, LocalQueue] = {
            "interactive": LocalQueue(clock=time.time),
            "bulk": LocalQueue(clock=time.time),
        }
        self.servers = {name: LocalSettlementServer(queue) for name, queue in self.queues.items()}
        self.functions = {
            "interactive": registered_function(app, "grant_membership"),
            "bulk": registered_function(app, "grant_membership_bulk"),
        }
        self.actions: dict[Lane, Any] = {}
        self.enqueued: dict[str, float] = {}
        self.settled: dict[str, float] = {}
        self.arrived: dict[Lane, asyncio.Event] = {"interactive": asyncio.Event(), "bulk": asyncio.Event()}
        self.one_settled = asyncio.Event()

    def __enter__(self) -> Lanes:
        for name, server in self.servers.items():
            server.__enter__()
            self.actions[name] = point_message_actions_at(server.address)
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self.servers.values():
            server.__exit__(None, None, None)

    def send(self, lane: Lane, body: bytes, message_id: str) -> None:
        self.enqueued[message_id] = time.perf_counter()
        self.queues[lane].send(body, message_id=message_id, content_type="application/json")
        self.arrived[lane].set()


async def deliver(lanes: Lanes, lane: Lane, stop: asyncio.Event) -> None:
    """Deliver `lane`'s queue, up to CONCURRENCY at a time, until `stop` is set; then let in-flight ones finish."""
    queue, function, actions = lanes.queues[lane], lanes.functions[lane], lanes.actions[lane]
    in_flight: set[asyncio.Task[None]] = set()

    async def invoke(message_id: str, message: Any) -> None:
        try:
            await function(receivedmessage=message, message_actions=actions)
        finally:
            lanes.settled[message_id] = time.perf_counter()
            lanes.one_settled.set()

    while not stop.is_set():
        while len(in_flight) < CONCURRENCY and (locked := queue.receive()) is not None:
            in_flight.add(asyncio.create_task(invoke(locked.message_id, to_received_message(locked))))
        waits: set[asyncio.Future[Any]] = {*in_flight, asyncio.ensure_future(stop.wait())}
        if len(in_flight) < CONCURRENCY:
            lanes.arrived[lane].clear()
            waits.add(asyncio.ensure_future(lanes.arrived[lane].wait()))
            waits.add(asyncio.ensure_future(asyncio.sleep(0.05)))  # scheduled retry copies coming due
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waits - in_flight:
            if waiter not in done:
                waiter.cancel()
        in_flight -= done
    for task in in_flight:  # scaled in: what this instance holds goes back to the queue when its locks expire
        task.cancel()
    await asyncio.gather(*in_flight, return_exceptions=True)


def stdin_lines(loop: asyncio.AbstractEventLoop) -> asyncio.Queue[str]:
    """Standard input's lines, read by a daemon thread (an executor thread would keep the process alive)."""
    lines: asyncio.Queue[str] = asyncio.Queue()

    def read() -> None:
        for line in iter(sys.stdin.readline, ""):
            loop.call_soon_threadsafe(lines.put_nowait, line.strip())
        loop.call_soon_threadsafe(lines.put_nowait, "")  # end of input

    threading.Thread(target=read, daemon=True).start()
    return lines


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    import function_app

    settings = Settings.from_env(os.environ)
    governor = WriteGovernor(
        rate=settings.graph_write_rate,
        adaptive=settings.graph_write_adaptive,
        window_seconds=settings.graph_write_window_seconds,
    )
    recorder = OutcomeRecorder()
    with Lanes(function_app.app) as lanes, recorder.attached():
        sender = LaneSender({name: LocalSender(queue) for name, queue in lanes.queues.items()})
        services = bootstrap(
            settings,
            sender=sender,
            now=lambda: datetime.now(UTC),
            governor=governor,
            ledger_credential=dev_credential(),  # the local Azurite's
        )
        for n in range(args.bulk):
            lanes.send("bulk", grant(args.unit, n, f"bulk-{args.unit}-{n}", "bulk"), f"bulk-{n}")
        commands = stdin_lines(asyncio.get_running_loop())
        print(json.dumps({"ready": True}), flush=True)
        if await commands.get() != "go":
            return {}
        started, cpu = time.perf_counter(), time.process_time()
        stop = asyncio.Event()
        with installed(services):
            tasks = [asyncio.create_task(deliver(lanes, name, stop)) for name in ("interactive", "bulk")]
            feeder = asyncio.create_task(feed(lanes, args, stop))
            reader = asyncio.create_task(commands.get())
            await asyncio.wait({reader, feeder}, timeout=args.max_seconds, return_when=asyncio.FIRST_COMPLETED)
            stop.set()
            feeder.cancel()
            reader.cancel()
            await asyncio.gather(*tasks)
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
            await services.aclose()
    terminal = recorder.terminal().values()
    interactive = [
        lanes.settled[key] - lanes.enqueued[key]
        for key in lanes.settled
        if key.startswith("interactive-") and key in lanes.enqueued
    ]
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "settled": len(lanes.settled),
        "granted": sum(1 for r in terminal if r["outcome"] == "granted"),
        "dead_lettered": sum(1 for r in terminal if r["outcome"] == "dead_lettered"),
        "dead_lettered_throttled": sum(
            1 for r in terminal if r["outcome"] == "dead_lettered" and r.get("reason") == "Throttled"
        ),
        "dead_reasons": sorted({str(r.get("reason")) for r in terminal if r["outcome"] == "dead_lettered"}),
        "retries": sum(1 for r in recorder.records if r.get("outcome") == "retry_scheduled"),
        "interactive_s": interactive,
        "rate": governor.rate,
        "pauses": governor.pauses,
    }


async def feed(lanes: Lanes, args: argparse.Namespace, stop: asyncio.Event) -> None:
    """The interactive trickle (every 1/R s), or the serial run (each grant after the previous one settled)."""
    user = INTERACTIVE_FIRST_USER
    if args.serial:
        for n in range(args.serial):
            key = f"interactive-{n}"
            lanes.send("interactive", grant(args.unit, user + n, f"{key}-{args.unit}", "other"), key)
            while key not in lanes.settled:
                lanes.one_settled.clear()
                await lanes.one_settled.wait()
            await asyncio.sleep(args.serial_gap)
        return
    if not args.interactive_rate:
        await stop.wait()
        return
    n = 0
    next_at = time.perf_counter()
    while not stop.is_set():
        key = f"interactive-{n}"
        lanes.send("interactive", grant(args.unit, user + n, f"{key}-{args.unit}", "other"), key)
        n += 1
        next_at += 1 / args.interactive_rate
        await asyncio.sleep(max(next_at - time.perf_counter(), 0.0))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--unit", required=True)
    parser.add_argument("--bulk", type=int, default=0)
    parser.add_argument("--interactive-rate", type=float, default=0.0)
    parser.add_argument("--serial", type=int, default=0)
    parser.add_argument("--serial-gap", type=float, default=0.5, help="seconds between serial grants")
    parser.add_argument("--max-seconds", type=float, default=600.0)
    args = parser.parse_args()
    quiet = logging.StreamHandler()
    quiet.setLevel(logging.CRITICAL)
    logging.basicConfig(level=logging.INFO, handlers=[quiet])
    print(json.dumps(asyncio.run(main_async(args))), flush=True)


if __name__ == "__main__":
    main()
