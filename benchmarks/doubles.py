"""Serve the token endpoint and the Graph double in their own process, so a benchmark measures only the app.

``python -m benchmarks.doubles --users N [--budget 200/10] [--latency 0.03]`` prints one JSON line with the
environment to use (``GRAPH_BASE_URL``, ``IDENTITY_ENDPOINT``, ``IDENTITY_HEADER``) and the unit's id, then
serves until its standard input closes, and prints one JSON line of counters.
"""

from __future__ import annotations

import argparse
import json
import sys

from benchmarks.directory import UNIT, member_id
from grants_local.graph_double import GraphDouble
from grants_local.token_endpoint import TokenEndpoint


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--budget", default="200/10", help="writes/seconds, or 'none'")
    parser.add_argument("--latency", type=float, default=0.03)
    args = parser.parse_args()
    budget = None if args.budget == "none" else tuple(map(float, args.budget.split("/")))
    with (
        TokenEndpoint() as tokens,
        GraphDouble(
            tokens,
            write_budget=(int(budget[0]), budget[1]) if budget else None,
            latency_seconds=args.latency,
        ) as graph,
    ):
        graph.load({"users": [member_id(n) for n in range(args.users)], "administrativeUnits": [{"id": UNIT}]})
        print(json.dumps({"env": {"GRAPH_BASE_URL": graph.base_url, **tokens.env()}, "unit": UNIT}), flush=True)
        sys.stdin.read()
        statuses = [r.status for r in graph.requests]
        print(
            json.dumps(
                {
                    "writes_ok": sum(1 for r in graph.requests if r.method == "POST" and r.status == 204),
                    "throttled": statuses.count(429),
                    "requests": len(statuses),
                    "connections": graph.connections_opened,
                    "token_requests": tokens.request_count,
                    "members": len(graph.members_of(UNIT)),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
