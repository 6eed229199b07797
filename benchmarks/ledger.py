"""The grant ledger's cost per grant (`make bench`'s ``ledger`` line): what `IntentGate` adds to each grant.

`ledger_cost` admits and finishes `count` adds for distinct new pairs (the common case: no contention) through
the app's `Ledger` against a local Azurite (in memory), over one httpx client whose requests are counted, and
measures this process's CPU (the app's side; Azurite runs in its own process) and the wall time per grant; then
records each one's terminal status as a bulk job's row (`Ledger.record`: the status, the member's and
the target's history, the job row, written at once) and measures that apart (``status_*``).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import httpx

from grants_local.azurite import AzuriteTables, new_ledger_table
from shared.adapters.ledger import Admitted, Ledger, table_client
from shared.core.contract import Action
from shared.core.intents import Intent
from shared.core.statuses import Status, StatusRecord

__all__ = ["ledger_cost"]


async def ledger_cost(count: int = 1_000) -> dict[str, Any]:
    """CPU ms, wall ms and storage requests per grant of `count` uncontended begin/finish pairs."""
    requests = 0

    async def counted(_: httpx.Request) -> None:
        nonlocal requests
        requests += 1

    with AzuriteTables() as azurite:
        table = await new_ledger_table(azurite)
        async with httpx.AsyncClient(event_hooks={"request": [counted]}) as http:
            ledger = Ledger(
                table_client(endpoint=table.endpoint, table=table.table, credential=table.credential(), http=http)
            )
            now = datetime.now(UTC)
            cpu, wall = time.process_time(), time.perf_counter()
            for n in range(count):
                intent = Intent(
                    request_id=f"bench-{n}", content_hash="c", action=Action.ADD, requested_at=now, producer="bulk"
                )
                admitted = await ledger.begin(intent, pair=f"au.bench.{n}", origin=f"m-{n}", now=now)
                assert isinstance(admitted, Admitted)
                await ledger.finish(admitted.ticket, applied=Action.ADD, now=now)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            begun = requests
            status_cpu, status_wall = time.process_time(), time.perf_counter()
            for n in range(count):
                record = StatusRecord(
                    request_id=f"bench-{n}",
                    producer="bulk",
                    status=Status.GRANTED,
                    member_id=f"{n:08x}-0000-4000-8000-000000000000",
                    target_id="3f2504e0-4f89-11d3-9a0c-0305e82c3301",
                    job_id="job-bench",
                    job_row=n + 1,
                    job_rows=count,
                    intent_at=now,
                    description="added user to administrative unit" + "." * 120,
                )
                await ledger.record(record, now=now)
            status_cpu, status_wall = time.process_time() - status_cpu, time.perf_counter() - status_wall
            await ledger.aclose()
    return {
        "grants": count,
        "storage_calls_per_grant": begun / count,
        "cpu_ms_per_grant": 1000 * cpu / count,
        "wall_ms_per_grant": 1000 * wall / count,
        "status_storage_calls_per_grant": (requests - begun) / count,
        "status_cpu_ms_per_grant": 1000 * status_cpu / count,
        "status_wall_ms_per_grant": 1000 * status_wall / count,
    }
