"""``demo``: the examples through the whole pipeline, against the built-in Graph double and token endpoint.

The retry policy runs with its real delays (10 s base, doubling, ``Retry-After`` honoured) on a virtual
clock: when nothing is due, time jumps to the next scheduled retry, so minutes of backoff take no time.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import TextIO

from grants_local.graph_double import Fault, GraphDouble
from grants_local.queue import ManualClock
from grants_local.run import EXAMPLES, LocalRun, print_dead_letters, print_table, run_local
from grants_local.token_endpoint import TokenEndpoint

__all__ = ["EXAMPLES", "demo"]

#: The virtual clock's start: fixed, so that the examples' expiresAt never goes stale.
DEMO_START = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
#: The example files, in the order the demo tells their story.
_FILES = {
    "hr-onboarding.jsonl": ("hr", "HR onboarding events"),
    "ticketing.jsonl": ("ticketing", "Ticketing system requests"),
    "bulk.jsonl": ("bulk", "Bulk job 42"),
}


async def demo(out: TextIO) -> int:
    """Run the example files; print each one's outcomes and dead-letter queue. Exit code 0 when every
    message reached a terminal state."""
    random.seed(4711)  # the same jitter, and so the same table, on every run
    clock = ManualClock(start=DEMO_START.timestamp())
    with TokenEndpoint() as tokens, GraphDouble(tokens, clock=clock) as graph:
        graph.now = clock.utcnow  # PIM's schedules start and end on the virtual clock (Entra's own expiry too)
        graph.load(EXAMPLES / "directory.json")
        graph.inject(
            Fault.status(429, retry_after=30, method="POST", path="roleTemplateId="),  # Graph throttles once
            Fault.status(503, method="POST", path="000000000002/members"),  # and is briefly down
        )
        os.environ.update(tokens.env())  # as the App Service platform sets them
        env = {**os.environ, "GRAPH_BASE_URL": graph.base_url}
        out.write(
            "Local demo: Graph double at "
            f"{graph.base_url}, managed-identity token endpoint at {tokens.url}.\n"
            "Retry delays are the real policy's (10 s base, doubling, Retry-After honoured) on a virtual clock\n"
            f"starting {DEMO_START.isoformat()}: waiting time (backoff, a week until a grant expires) is skipped.\n"
            "No GRANTS_POLICY is set, so the built-in default applies: tier-0 roles are refused.\n"
        )
        runs: list[LocalRun] = []
        started = clock()
        for name, (producer, title) in _FILES.items():
            path = EXAMPLES / name
            run = await run_local(path.read_bytes().splitlines(), env=env, clock=clock, producer=producer)
            runs.append(run)
            print_table(run, out, title=f"{title} (examples/{name}, from producer {producer})")
            print_dead_letters(run, out)
        outcomes = [o for run in runs for o in run.outcomes]
        out.write(
            f"\n{len(outcomes)} messages: "
            + ", ".join(f"{n} {kind}" for kind, n in sorted(Counter(o.outcome for o in outcomes).items()))
            + f". Graph writes: {graph.write_count}; token requests: {tokens.request_count} "
            f"(one per run-local process); virtual time elapsed: {timedelta(seconds=round(clock() - started))}.\n"
        )
    return 0 if all(run.complete for run in runs) else 1
