"""The whole pipeline in a process of its own, with or without the worker's OpenTelemetry export.

``python -m benchmarks.pipeline --unit AU --count N [--telemetry]`` with ``GRAPH_BASE_URL``,
``IDENTITY_ENDPOINT`` and ``IDENTITY_HEADER`` in the environment (``benchmarks.doubles``): N add messages
through run-local (the registered function, binding decode, settlement over gRPC, Graph call), 16 at a time,
``GRAPH_WRITE_RATE=0``. With ``--telemetry`` (and ``PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true`` plus
`grants_local.ingestion.local_environment` in the environment), the Azure Monitor distro is configured first,
as the worker does (`grants_local.worker_telemetry.configure`), so every Graph call becomes a dependency span
and every outcome line a trace with its dimensions, exported to the loopback ingestion stub; the exporters are
flushed inside the measured window. Prints one JSON line: CPU seconds (``time.process_time``: every thread of
the process, the exporters' included), wall seconds, and the outcomes counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import time
from collections import Counter

from benchmarks.directory import grants
from grants_local.run import run_local


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--unit", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--telemetry", action="store_true")
    args = parser.parse_args()
    quiet = logging.StreamHandler()
    quiet.setLevel(logging.CRITICAL)  # the outcome lines are exported (or dropped), not printed
    logging.basicConfig(level=logging.INFO, handlers=[quiet])
    if args.telemetry:
        from grants_local.worker_telemetry import configure, flush

        configure()
    env = {**os.environ, "GRAPH_WRITE_RATE": "0", "GRANTS_RETRY_BASE_SECONDS": "1"}
    cpu, wall = time.process_time(), time.perf_counter()
    run = asyncio.run(run_local(grants(args.count, args.unit), env=env, concurrency=16, producer="bulk"))
    if args.telemetry:
        flush()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    outcomes = Counter(o.outcome for o in run.outcomes)
    print(json.dumps({"cpu_s": cpu, "wall_s": wall, "outcomes": dict(outcomes)}), flush=True)


if __name__ == "__main__":
    main()
