"""Serve the token endpoint and the Graph double in their own process, so a benchmark measures only the app.

``python -m benchmarks.doubles --users N [--budget 200/10] [--latency 0.03] [--units K] [--extra-users M]``
prints one JSON line with the environment to use (``GRAPH_BASE_URL``, ``IDENTITY_ENDPOINT``,
``IDENTITY_HEADER``), the unit's id and the double's clock (``time.monotonic``, shared by every process on the
machine), then serves until its standard input closes, and prints one JSON line of counters, with
``--write-log`` also every write the budget saw (``[monotonic time, priority, admitted]``).

The directory: users 0..N-1 and 1,000,000..1,000,000+M-1 (the fleet benchmark's interactive grants), the
unit `UNIT` and, with ``--units K``, units ``unit_id(0..K-1)``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from benchmarks.directory import UNIT, member_id, unit_id
from grants_local.graph_double import GraphDouble
from grants_local.token_endpoint import TokenEndpoint

EXTRA_USERS_FROM = 1_000_000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--extra-users", type=int, default=0)
    parser.add_argument("--units", type=int, default=0)
    parser.add_argument("--budget", default="200/10", help="writes/seconds, or 'none'")
    parser.add_argument("--latency", type=float, default=0.03)
    parser.add_argument("--write-log", action="store_true")
    args = parser.parse_args()
    budget = None if args.budget == "none" else tuple(map(float, args.budget.split("/")))
    units = [UNIT, *(unit_id(n) for n in range(args.units))]
    with (
        TokenEndpoint() as tokens,
        GraphDouble(
            tokens,
            write_budget=(int(budget[0]), budget[1]) if budget else None,
            latency_seconds=args.latency,
            clock=time.monotonic,
        ) as graph,
    ):
        users = [member_id(n) for n in range(args.users)]
        users += [member_id(EXTRA_USERS_FROM + n) for n in range(args.extra_users)]
        graph.load({"users": users, "administrativeUnits": [{"id": unit} for unit in units]})
        print(
            json.dumps(
                {"env": {"GRAPH_BASE_URL": graph.base_url, **tokens.env()}, "unit": UNIT, "now": time.monotonic()}
            ),
            flush=True,
        )
        sys.stdin.read()
        requests = graph.requests
        statuses = [r.status for r in requests]
        counters = {
            "writes_ok": sum(1 for r in requests if r.method == "POST" and r.status == 204),
            "writes": sum(1 for r in requests if r.method in ("POST", "DELETE")),
            "throttled": statuses.count(429),
            "requests": len(statuses),
            "connections": graph.connections_opened,
            "token_requests": tokens.request_count,
            "members": sum(len(graph.members_of(unit)) for unit in units),
        }
        if args.write_log:
            counters["write_log"] = [[w.at, w.priority, w.admitted] for w in graph.write_log]
        print(json.dumps(counters), flush=True)


if __name__ == "__main__":
    main()
