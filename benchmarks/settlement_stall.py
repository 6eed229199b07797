"""A host that takes 2 s to answer a settlement: how long does a webhook request sent meanwhile wait?

One grant message is delivered through the local host (the registered function, the real
`ServiceBusMessageActions` over gRPC); the local settlement server holds its ``Complete`` for ``--stall``
seconds. ``--after`` seconds after the delivery started, a thread sends a signed webhook request to the
registered ``grant_webhook`` function on the same event loop (as the Functions worker runs both) and times the
answer, as its caller would see it. Prints one line per run and the median.

    .venv/bin/python -m benchmarks.settlement_stall [--stall 2.0] [--after 0.3] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import threading
import time
from typing import Any, cast

import azure.functions as func

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

SECRET = "bench-only-webhook-secret-0123456789abcdef"  # noqa: S105 (a local benchmark's)
AU = "ae000000-0000-4000-8000-000000000001"
USER = "11111111-1111-4111-8111-111111111111"


async def one_run(*, stall: float, after: float) -> tuple[float, float]:
    """(webhook latency, time the delivery took) in seconds."""
    import function_app
    from grants_local.app import local_app
    from grants_local.graph_double import GraphDouble
    from grants_local.host import registered_function
    from grants_local.queue import ManualClock
    from grants_local.run import EXAMPLES, os_environment
    from grants_local.token_endpoint import TokenEndpoint
    from shared.config import Settings
    from shared.core.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

    webhook = registered_function(function_app.app, "grant_webhook")
    grant = registered_function(function_app.app, "grant_membership")
    with TokenEndpoint() as tokens, GraphDouble(tokens) as graph, os_environment(tokens.env()):
        graph.load(EXAMPLES / "directory.json")
        settings = Settings.from_env({"GRAPH_BASE_URL": graph.base_url, "GRANTS_WEBHOOK_SECRET": SECRET})
        clock = ManualClock(start=time.time())
        async with local_app(settings, clock=clock) as app:
            loop = asyncio.get_running_loop()
            body = json.dumps(
                {
                    "ticketNumber": "RITM1",
                    "requester": "alice@contoso.com",
                    "approver": "bob@contoso.com",
                    "target": {"type": "administrativeUnit", "id": AU},
                    "member": USER,
                }
            ).encode()
            stamp = int(clock())
            headers = {
                "Content-Type": "application/json",
                TIMESTAMP_HEADER: str(stamp),
                SIGNATURE_HEADER: sign(secret=SECRET, timestamp=stamp, body=body),
            }

            async def call_webhook() -> int:
                request = func.HttpRequest("POST", "http://127.0.0.1/api/grants", headers=headers, body=body)
                response = cast(func.HttpResponse, await webhook(request))
                return response.status_code

            latency: list[float] = []

            def client() -> None:
                time.sleep(after)
                sent = time.perf_counter()
                status = asyncio.run_coroutine_threadsafe(call_webhook(), loop).result(timeout=60)
                latency.append(time.perf_counter() - sent)
                assert status == 202, status

            hold = app.server.hold("Complete", seconds=stall)
            app.queue.send(
                json.dumps(
                    {
                        "schemaVersion": 1,
                        "requestId": "bench-1",
                        "target": {"type": "administrativeUnit", "id": AU},
                        "member": {"id": USER, "type": "user"},
                        "source": {"system": "bulk"},
                    }
                ).encode(),
                message_id="m-1",
            )
            locked = app.queue.receive()
            assert locked is not None
            from grants_local.binding import to_received_message

            message = to_received_message(locked)
            thread = threading.Thread(target=client)
            started = time.perf_counter()
            thread.start()
            await grant(receivedmessage=message, message_actions=app.actions)
            delivery = time.perf_counter() - started
            await asyncio.to_thread(thread.join)
            hold.release.set()
    return latency[0], delivery


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--stall", type=float, default=2.0, help="seconds the host takes to answer Complete")
    parser.add_argument("--after", type=float, default=0.3, help="seconds after the delivery the webhook is called")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    latencies: list[float] = []
    for run in range(1, args.runs + 1):
        latency, delivery = asyncio.run(one_run(stall=args.stall, after=args.after))
        latencies.append(latency)
        print(f"run {run}: webhook answered in {latency * 1000:.1f} ms; the delivery took {delivery:.2f} s", flush=True)
    summary: dict[str, Any] = {
        "stall_s": args.stall,
        "after_s": args.after,
        "webhook_latency_median_ms": round(statistics.median(latencies) * 1000, 1),
        "webhook_latency_max_ms": round(max(latencies) * 1000, 1),
    }
    print("summary: " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
