"""Our side of the msgraph-sdk comparison, at the engine level, in a process of its own.

``python -m benchmarks.engine --unit AU --count N [--concurrency 16]`` with ``GRAPH_BASE_URL``,
``IDENTITY_ENDPOINT`` and ``IDENTITY_HEADER`` in the environment: builds the app's services (`bootstrap`:
one httpx client, the managed-identity credential, the Graph client; ``GRAPH_WRITE_RATE=0``), then sends N
add-to-unit commands through `GrantService.execute` (policy check, handler, Graph POST, classified `Result`),
`concurrency` at a time. Commands are built before the clock starts (a message's decoding and validation
is the pipeline's, not the Graph call's). Prints one JSON line: CPU seconds (``time.process_time``), wall
seconds, and the outcomes counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections import Counter

from benchmarks.directory import grants
from grants_local.azurite import local_ledger
from grants_local.queue import LocalQueue, LocalSender
from shared.bootstrap import Services, bootstrap
from shared.config import Settings
from shared.core.contract import AdministrativeUnit, GrantCommand, parse_grant


def commands(*, unit: str, count: int) -> list[GrantCommand]:
    """N add commands for distinct users of one administrative unit."""
    return [parse_grant(body) for body in grants(count, unit)]


async def run(*, unit: str, count: int, concurrency: int) -> dict[str, object]:
    async with local_ledger() as ledger:  # the app needs its ledger configured; the engine alone does not use it
        settings = ledger.settings(Settings.from_env({**os.environ, "GRAPH_WRITE_RATE": "0"}))
        services = bootstrap(settings, sender=LocalSender(LocalQueue()), ledger_credential=ledger.credential())
        return await _run(services, unit=unit, count=count, concurrency=concurrency)


async def _run(services: Services, *, unit: str, count: int, concurrency: int) -> dict[str, object]:
    todo = commands(unit=unit, count=count)
    assert all(isinstance(c.target, AdministrativeUnit) for c in todo)
    outcomes: Counter[str] = Counter()
    producer = services.settings.producers.for_system(todo[0].source.system.value) if todo else None
    assert producer is not None or not todo

    async def worker(share: list[GrantCommand]) -> None:
        assert producer is not None
        for command in share:
            try:
                outcomes[(await services.grants.execute(command, producer=producer)).outcome.value] += 1
            except Exception as error:  # counted: the figures show every outcome
                outcomes[type(error).__name__] += 1

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(todo[i::concurrency]) for i in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await services.aclose()
    return {"cpu_s": cpu, "wall_s": wall, "outcomes": dict(outcomes)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--unit", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(unit=args.unit, count=args.count, concurrency=args.concurrency))), flush=True)


if __name__ == "__main__":
    main()
