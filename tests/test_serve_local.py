"""``serve-local`` end to end on loopback: a signed webhook and an HR event over real HTTP, granted by the time
it stops."""

from __future__ import annotations

import asyncio
import io
import json
import time

import httpx

from grants_local.demo import EXAMPLES
from grants_local.serve import LOCAL_WEBHOOK_SECRET, serve_local
from shared.producers.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

ALICE = "11111111-1111-4111-8111-111111111111"
HELPDESK_TEMPLATE = "729827e3-9c14-49f7-bb1b-9608f156bbb8"


async def test_given_serve_local_when_a_webhook_and_an_hr_event_are_posted_then_both_are_settled() -> None:
    out, stop, started, ports = io.StringIO(), asyncio.Event(), asyncio.Event(), []

    def ready(port: int) -> None:
        ports.append(port)
        started.set()

    server = asyncio.create_task(
        serve_local(out, port=0, env={"GRANTS_RETRY_BASE_SECONDS": "0"}, stop=stop, ready=ready)
    )
    await started.wait()
    body = json.dumps(
        {
            "ticketNumber": "RITM0010001",
            "requester": "alice@contoso.com",
            "approver": "j.smith@contoso.com",
            "target": {"type": "directoryRole", "roleTemplateId": HELPDESK_TEMPLATE},
            "member": ALICE,
        }
    ).encode()
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret=LOCAL_WEBHOOK_SECRET, timestamp=timestamp, body=body),
    }
    hr_event = (EXAMPLES / "hr-events.jsonl").read_bytes().splitlines()[0]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports[0]}") as client:
        accepted = await client.post("/api/grants", content=body, headers=headers)
        unsigned = await client.post("/api/grants", content=body, headers={"Content-Type": "application/json"})
        queued = await client.post("/local/hr-events", content=hr_event, headers={"X-Message-Id": "hr-1"})
        unknown = await client.get("/")
    stop.set()
    assert await server == 0
    assert (accepted.status_code, accepted.json()) == (202, {"requestId": "RITM0010001", "status": "accepted"})
    assert (unsigned.status_code, unsigned.headers["content-type"]) == (401, "application/problem+json")
    assert (queued.status_code, queued.json()) == (202, {"messageId": "hr-1"})
    assert unknown.status_code == 404
    lines = out.getvalue().splitlines()
    assert any(line.startswith("grant    granted         RITM0010001 ") for line in lines)
    assert any(line.startswith("hr-event completed       wd-evt-1001 ") for line in lines)
    assert sum(line.startswith("grant    granted         hr:wd-evt-1001:") for line in lines) == 2


async def test_given_serve_local_when_a_ticket_names_a_local_receiver_then_it_gets_one_signed_callback() -> None:
    """serve-local runs the callback trigger: the ticket is granted, and examples/callback_receiver.py (on loopback,
    allowed by serve-local's local mode) receives the outcome once, with a signature it accepts."""
    from tests.test_callbacks import receiver_example

    printed = io.StringIO()
    receiver = receiver_example.Receiver(secret=LOCAL_WEBHOOK_SECRET, out=printed)
    out, stop, started, ports = io.StringIO(), asyncio.Event(), asyncio.Event(), []

    def ready(port: int) -> None:
        ports.append(port)
        started.set()

    server = asyncio.create_task(serve_local(out, port=0, env={}, stop=stop, ready=ready))
    await started.wait()
    body = json.dumps(
        {
            "ticketNumber": "RITM0010002",
            "requester": "alice@contoso.com",
            "approver": "j.smith@contoso.com",
            "target": {"type": "directoryRole", "roleTemplateId": HELPDESK_TEMPLATE},
            "member": ALICE,
            "callbackUrl": f"http://127.0.0.1:{receiver.port}/callbacks/grants",
        }
    ).encode()
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret=LOCAL_WEBHOOK_SECRET, timestamp=timestamp, body=body),
    }
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports[0]}") as client:
            accepted = await client.post("/api/grants", content=body, headers=headers)
        stop.set()
        assert await server == 0
    finally:
        receiver.close()
    assert accepted.status_code == 202
    assert receiver.deliveries == 1
    [record] = receiver.applied.values()
    assert (record["requestId"], record["outcome"]) == ("RITM0010002", "granted")
    assert "-> 204 signature ok" in printed.getvalue()
    assert any(line.startswith("callback delivered       RITM0010002 ") for line in out.getvalue().splitlines())
