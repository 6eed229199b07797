"""``make bench``: throughput at Graph's write quota through the registered function object, and cold start.

Figures, one line each:

1. ``throughput``: N grants (default 10,000; ``--quick`` 1,000) through the local host and the registered
   function object, 16 at a time, against the Graph double in another process with a write budget of 200
   per 10 s (Graph's 20/s) and 30 ms latency; ``GRAPH_WRITE_RATE=20``. Sustained writes/s and its fraction
   of the budget, 429s, p50/p99 invocation time, CPU ms per grant (this process only), token requests,
   TCP connections.
2. ``cpu``: 2,000 grants with no budget and no latency (``GRAPH_WRITE_RATE=0``): CPU ms per grant of the
   whole pipeline (function object, settlement over gRPC, Graph call), the figure to compare with a
   msgraph-sdk client.
3. ``cold_start``: median wall time and peak RSS of a fresh ``python -c "import function_app"``.

Not yet here: the msgraph-sdk comparison (its own venv; a later change).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.doubles import member_id
from shared.local.run import run_local

ROOT = Path(__file__).resolve().parent.parent


def grants(count: int, unit: str) -> list[bytes]:
    return [
        json.dumps(
            {
                "schemaVersion": 1,
                "requestId": f"bench-{n}",
                "target": {"type": "administrativeUnit", "id": unit},
                "member": {"id": member_id(n), "type": "user"},
                "source": {"system": "bulk", "reference": "bench"},
            }
        ).encode()
        for n in range(count)
    ]


async def pipeline(count: int, *, budget: str, latency: float, write_rate: str) -> dict[str, Any]:
    doubles = subprocess.Popen(  # noqa: S603, ASYNC220 (this interpreter, our module; started before the run)
        [
            sys.executable,
            "-m",
            "benchmarks.doubles",
            "--users",
            str(count),
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
    assert doubles.stdin is not None
    assert doubles.stdout is not None
    try:
        config = json.loads(doubles.stdout.readline())
        env = {**os.environ, **config["env"], "GRAPH_WRITE_RATE": write_rate, "GRANTS_RETRY_BASE_SECONDS": "1"}
        cpu, wall = time.process_time(), time.perf_counter()
        run = await run_local(grants(count, config["unit"]), env=env, concurrency=16)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        doubles.stdin.close()
        counters = json.loads(doubles.stdout.readline())
    finally:
        doubles.kill() if doubles.poll() is None else None
        doubles.wait(timeout=10)
    outcomes = [o.outcome for o in run.outcomes]
    return {"run": run, "cpu": cpu, "wall": wall, "counters": counters, "outcomes": outcomes}


def cold_start(runs: int = 7) -> tuple[float, float]:
    code = "import resource, function_app; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    walls, peaks = [], []
    for _ in range(runs):
        start = time.perf_counter()
        out = subprocess.run(  # noqa: S603 (this interpreter, fixed code)
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        walls.append(time.perf_counter() - start)
        peaks.append(int(out.strip()) / 1024)
    return statistics.median(walls), statistics.median(peaks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 grants instead of 10,000")
    parser.add_argument("--grants", type=int, default=None)
    args = parser.parse_args()
    count = args.grants or (1_000 if args.quick else 10_000)
    quiet = logging.StreamHandler()
    quiet.setLevel(logging.CRITICAL)  # the outcome lines are recorded, not printed
    logging.basicConfig(level=logging.INFO, handlers=[quiet])

    first = asyncio.run(pipeline(count, budget="200/10", latency=0.03, write_rate="20"))
    c = first["counters"]
    rate = c["writes_ok"] / first["wall"]
    dead = first["outcomes"].count("dead_lettered")
    print(
        f"throughput: grants={count} wall_s={first['wall']:.1f} writes_per_s={rate:.2f} "
        f"quota_fraction={rate / 20:.3f} throttled={c['throttled']} "
        f"({100 * c['throttled'] / max(c['requests'], 1):.2f}%) "
        f"dead_lettered={dead} cpu_ms_per_grant={1000 * first['cpu'] / count:.2f} "
        f"token_requests={c['token_requests']} tcp_connections={c['connections']} members={c['members']}"
    )
    second = asyncio.run(pipeline(2_000, budget="none", latency=0.0, write_rate="0"))
    print(
        f"cpu: grants=2000 wall_s={second['wall']:.1f} cpu_ms_per_grant={1000 * second['cpu'] / 2000:.2f} "
        f"token_requests={second['counters']['token_requests']} tcp_connections={second['counters']['connections']}"
    )
    wall, peak = cold_start()
    print(f"cold_start: import_function_app_s={wall:.3f} peak_rss_mb={peak:.0f}")
    print(
        f"summary: quota_fraction={rate / 20:.3f} throttled={c['throttled']} token_requests={c['token_requests']} "
        f"cpu_ms_per_grant={1000 * second['cpu'] / 2000:.2f} import_s={wall:.3f}"
    )


if __name__ == "__main__":
    main()
