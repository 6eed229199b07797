"""How long a Service Bus send takes to fail when the namespace cannot be reached (loopback only).

Two unreachable namespaces on 127.0.0.1: a port that refuses connections, and one that accepts them and never
answers. For each, the time until ``send_messages`` raises, with azure-servicebus's default retry options (what
the app's sender used before: ``ServiceBusClient(namespace, credential)``) and with the app's
`shared.adapters.servicebus.ServiceBusSender` as configured now.

    .venv/bin/python -m benchmarks.servicebus_unreachable [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from grants_local.unreachable import StaticToken, refusing_port, stalling_port


async def defaults_send(port: int) -> None:
    from azure.servicebus import ServiceBusMessage, TransportType
    from azure.servicebus.aio import ServiceBusClient

    client = ServiceBusClient(
        "127.0.0.1",
        StaticToken(),  # type: ignore[arg-type]
        custom_endpoint_address=f"sb://127.0.0.1:{port}",
        transport_type=TransportType.Amqp,  # a custom endpoint means websockets otherwise
    )
    async with client:
        sender = client.get_queue_sender("grant-membership")
        await sender.send_messages(ServiceBusMessage(b"{}", message_id="bench"))


async def app_send(port: int) -> None:
    from shared.adapters.servicebus import ServiceBusSender

    sender = ServiceBusSender(
        namespace="127.0.0.1",
        queue="grant-membership",
        credential=StaticToken(),  # type: ignore[arg-type]
        custom_endpoint_address=f"sb://127.0.0.1:{port}",
    )
    try:
        await sender.schedule(
            body=b"{}", message_id="bench", application_properties={}, scheduled_enqueue_time=datetime.now(UTC)
        )
    finally:
        await sender.close()


async def time_to_fail(send: Any, port: int, limit: float) -> tuple[float, str]:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(send(port), limit)
    except TimeoutError:
        return time.perf_counter() - started, f"still trying after {limit:g} s"
    except Exception as error:
        return time.perf_counter() - started, type(error).__name__
    return time.perf_counter() - started, "sent?!"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--limit", type=float, default=60.0, help="give up waiting after this many seconds")
    parser.add_argument("--only", choices=["defaults", "app"], help="measure only one sender")
    args = parser.parse_args(argv)
    summary: dict[str, float] = {}
    senders = {"defaults": defaults_send, "app": app_send}
    for name, send in senders.items():
        if args.only and name != args.only:
            continue
        for where, port_of in (("refused", refusing_port), ("stalled", stalling_port)):
            times = []
            for run in range(1, args.runs + 1):
                with port_of() as port:
                    elapsed, how = asyncio.run(time_to_fail(send, port, args.limit))
                times.append(elapsed)
                print(f"{name:<8} {where:<8} run {run}: failed after {elapsed:.2f} s ({how})", flush=True)
            summary[f"{name}_{where}_median_s"] = round(statistics.median(times), 2)
    print("summary: " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
