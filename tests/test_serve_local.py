"""``serve-local`` end to end on loopback: a signed webhook and an HR event over real HTTP, granted by the time
it stops."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from grants_local.demo import EXAMPLES
from grants_local.serve import LOCAL_WEBHOOK_SECRET, _batch_problem, serve_local
from shared.core.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

ALICE = "11111111-1111-4111-8111-111111111111"
ERIN = "12121212-1212-4212-8212-121212121212"
HELPDESK_TEMPLATE = "729827e3-9c14-49f7-bb1b-9608f156bbb8"

#: What `grants … --serve-local` sends: serve-local stands in for App Service authentication with local tokens.
LOCAL_OPERATOR = {"Authorization": "Bearer local:operator"}


@asynccontextmanager
async def serving(env: dict[str, str]) -> AsyncIterator[tuple[int, io.StringIO]]:
    """serve-local on a free port for the block (its port and what it prints); stopped after it, exiting 0."""
    out, stop, started, ports = io.StringIO(), asyncio.Event(), asyncio.Event(), []

    def ready(port: int) -> None:
        ports.append(port)
        started.set()

    server = asyncio.create_task(serve_local(out, port=0, env=env, stop=stop, ready=ready))
    await started.wait()
    try:
        yield ports[0], out
    finally:
        stop.set()
        assert await server == 0


def signed_ticket(number: str, **fields: Any) -> tuple[bytes, dict[str, str]]:
    """A ticket asking the helpdesk role for Alice, and its signed headers (the local secret, now)."""
    ticket = {
        "ticketNumber": number,
        "requester": "alice@contoso.com",
        "approver": "j.smith@contoso.com",
        "target": {"type": "directoryRole", "roleTemplateId": HELPDESK_TEMPLATE},
        "member": ALICE,
        **fields,
    }
    body = json.dumps(ticket).encode()
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret=LOCAL_WEBHOOK_SECRET, timestamp=timestamp, body=body),
    }
    return body, headers


async def test_given_serve_local_when_a_webhook_and_an_hr_event_are_posted_then_both_are_settled() -> None:
    body, headers = signed_ticket("RITM0010001")
    hr_event = (EXAMPLES / "hr-events.jsonl").read_bytes().splitlines()[0]
    async with (
        serving({"GRANTS_RETRY_BASE_SECONDS": "0", "GRANTS_MEMBER_NOT_FOUND_WINDOW_SECONDS": "0"}) as (port, out),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        accepted = await client.post("/api/grants", content=body, headers=headers)
        unsigned = await client.post("/api/grants", content=body, headers={"Content-Type": "application/json"})
        queued = await client.post("/local/hr-events", content=hr_event, headers={"X-Message-Id": "hr-1"})
        unknown = await client.get("/")
    accepted_document = {"requestId": "RITM0010001", "producer": "ticketing", "status": "accepted"}
    assert (accepted.status_code, accepted.json()) == (202, accepted_document)
    assert (unsigned.status_code, unsigned.headers["content-type"]) == (401, "application/problem+json")
    assert "examples/send_webhook.py" in out.getvalue()  # the unsigned request is told how to sign
    assert (queued.status_code, queued.json()) == (202, {"messageId": "hr-1"})
    assert unknown.status_code == 404
    lines = out.getvalue().splitlines()
    assert any(line.startswith("grant    granted         RITM0010001 ") for line in lines)
    assert any(line.startswith("hr-event completed       wd-evt-1001 ") for line in lines)
    assert sum(line.startswith("grant    granted         ~hr:wd-evt-1001:") for line in lines) == 2


async def test_given_serve_local_when_a_ticket_names_a_local_receiver_then_it_gets_one_signed_callback() -> None:
    """serve-local runs the callback trigger: the ticket is granted, and examples/callback_receiver.py (on loopback,
    allowed by serve-local's local mode) receives the outcome once, with a signature it accepts."""
    from tests.test_callbacks import receiver_example

    printed = io.StringIO()
    receiver = receiver_example.Receiver(secret=LOCAL_WEBHOOK_SECRET, out=printed)
    body, headers = signed_ticket("RITM0010002", callbackUrl=f"http://127.0.0.1:{receiver.port}/callbacks/grants")
    try:
        async with serving({}) as (port, out), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            accepted = await client.post("/api/grants", content=body, headers=headers)
    finally:
        receiver.close()
    assert accepted.status_code == 202
    assert receiver.deliveries == 1
    [record] = receiver.applied.values()
    assert (record["requestId"], record["outcome"]) == ("RITM0010002", "granted")
    assert "-> 204 signature ok" in printed.getvalue()
    assert any(line.startswith("callback delivered       RITM0010002 ") for line in out.getvalue().splitlines())


async def test_given_serve_local_then_grants_status_and_grants_job_serve_local_read_its_ledger() -> None:
    """accepted, then granted, as `grants status --serve-local` prints it; an unknown id exits 1, a hostile one 2
    without a request; `grants job --serve-local` of a job with no rows exits 1."""
    import argparse

    from grants_cli.main import main as grants_main
    from grants_cli.status import main as status_main

    body, headers = signed_ticket("RITM0030001")
    ports: list[int] = []

    def cli(*argv: str) -> tuple[int, str, str]:
        printed, errors = io.StringIO(), io.StringIO()
        parser = argparse.Namespace(
            serve_local=True,
            local=False,
            port=ports[0],
            url=None,
            token=None,
            scope=None,
            as_="operator",
            producer=None,
            json=False,
            failed=False,
            failed_csv=None,
            watch=False,
        )
        args = vars(parser) | dict(zip(("command", "id"), argv, strict=False))
        namespace = argparse.Namespace(**args, request_id=args["id"], job_id=args["id"])
        if "--json" in argv:
            namespace.json = True
        return status_main(namespace, out=printed, err=errors), printed.getvalue(), errors.getvalue()

    async with serving({}) as (port, _):
        ports.append(port)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            accepted = await client.post("/api/grants", content=body, headers=headers)
        assert accepted.headers["Location"] == "/api/grants/RITM0030001"
        for _ in range(100):
            code, printed, _ = await asyncio.to_thread(cli, "status", "RITM0030001")
            if "granted" in printed.splitlines()[0]:
                break
            await asyncio.sleep(0.1)
        assert code == 0
        assert printed.splitlines()[0] == "request RITM0030001: granted"
        assert "  source         ticketing" in printed
        code, printed, _ = await asyncio.to_thread(cli, "status", "RITM0030001", "--json")
        assert (code, json.loads(printed)["status"]) == (0, "granted")
        assert (await asyncio.to_thread(cli, "status", "RITM-unknown"))[0] == 1
        code, _, errors = await asyncio.to_thread(cli, "status", "a/\x1b[2J")
        assert code == 2
        assert "\x1b" not in errors
        assert (await asyncio.to_thread(cli, "job", "job-none"))[0] == 1
        assert grants_main(["status", "RITM0030001", "--url", "http://127.0.0.1:9"]) == 2  # unreachable
        assert grants_main(["status", "RITM0030001", "--local"]) == 2  # the local namespace keeps no status


async def test_given_serve_local_then_a_job_submitted_to_it_is_watched_and_hr_events_and_history_are_served(
    tmp_path: Path,
) -> None:
    """`grants submit --serve-local` puts a job on serve-local's bulk queue (the bulk function carries it out, while
    an HR grant scheduled for 2099 waits without holding anything up);
    `grants job --serve-local --watch` follows it to its end; an HR event is asked by its id; the member's history lists
    both; a batch that is not one is refused with 400, and a queue serve-local does not have is 404."""
    from grants_cli.main import main as grants_main

    job = tmp_path / "job.csv"
    job.write_text((EXAMPLES / "bulk-job.csv").read_text())

    def grants(*argv: str) -> tuple[int, str]:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            code = grants_main(list(argv))
        return code, printed.getvalue()

    future_hire = json.loads((EXAMPLES / "hr-events.jsonl").read_bytes().splitlines()[0])
    future_hire.update(eventId="wd-evt-later", userObjectId=ALICE, effectiveDate="2099-01-04")
    env = {"GRANTS_MEMBER_NOT_FOUND_WINDOW_SECONDS": "0", "GRANTS_MAX_ATTEMPTS": "1"}
    async with serving(env) as (number, out):
        port = str(number)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:  # due in 2099: holds nothing up
            await client.post("/local/hr-events", content=json.dumps(future_hire), headers={"X-Message-Id": "hr-0"})
        code, printed = await asyncio.to_thread(
            grants, "submit", str(job), "--job-id", "job-s1", "--serve-local", "--port", port
        )
        assert code == 0, printed
        assert f"follow it: grants job job-s1 --serve-local --port {port} --watch" in printed
        code, printed = await asyncio.to_thread(
            grants, "job", "job-s1", "--serve-local", "--port", port, "--watch", "--interval", "0.1", "--failed"
        )
        assert code == 1, printed
        assert "job job-s1: 4 of 4 requests ended, 3 succeeded, 1 failed" in printed
        assert "MemberNotFound" in printed
        hire = (EXAMPLES / "hr-events.jsonl").read_bytes().splitlines()[0]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            queued = await client.post("/local/hr-events", content=hire, headers={"X-Message-Id": "hr-1"})
            refused = await client.post("/local/queues/grant-membership-bulk/messages", content=b'{"not": "a list"}')
            unknown = await client.post("/local/queues/elsewhere/messages", content=b"[]")
            for _ in range(100):
                event = await client.get("/api/hr-events/wd-evt-1001", headers=LOCAL_OPERATOR)
                if event.status_code == 200 and event.json()["done"]:
                    break
                await asyncio.sleep(0.1)
            history = await client.get("/api/history", params={"member": ERIN}, headers=LOCAL_OPERATOR)
        assert queued.status_code == 202
        assert (refused.status_code, refused.headers["content-type"]) == (400, "application/problem+json")
        assert unknown.status_code == 404
        assert (event.json()["kind"], event.json()["rows"], event.json()["succeeded"]) == ("hrEvent", 2, 2)
        sources = {record["sourceSystem"] for record in history.json()["requests"]}
        assert sources == {"bulk", "hr"}
        code, printed = await asyncio.to_thread(grants, "history", "--member", ERIN, "--serve-local", "--port", port)
        assert code == 0
        assert "hr/EMP-4720" in printed
        assert "bulk/job-s1" in printed
    assert "2 message(s) scheduled for later are dropped with the in-memory queues" in out.getvalue()


@pytest.mark.parametrize(
    ("batch", "problem"),
    [
        ({"not": "a list"}, "the body must be a JSON array of 1 to 500 messages"),
        ([], "the body must be a JSON array of 1 to 500 messages"),
        ([{"body": "{}", "messageId": "m"}] * 501, "the body must be a JSON array of 1 to 500 messages"),
        ([{"body": b"x".hex(), "messageId": ""}], "message 1: messageId must be a string of 1 to 128 characters"),
        ([{"body": 7, "messageId": "m"}], "message 1: body must be the message body as a string"),
        (
            [{"body": "{}", "messageId": "m", "applicationProperties": {"jobRow": 2**63}}],
            "message 1: applicationProperties must map names to strings or 64-bit whole numbers",
        ),
        (
            [{"body": "{}", "messageId": "m", "applicationProperties": {"dry": True}}],
            "message 1: applicationProperties must map names to strings or 64-bit whole numbers",
        ),
        ([{"body": "{}", "messageId": "m", "applicationProperties": {"jobRow": 1, "bulkJob": "j"}}], None),
    ],
)
def test_a_batch_for_a_local_queue_is_checked_whole_before_anything_is_enqueued(
    batch: Any, problem: str | None
) -> None:
    assert _batch_problem(batch) == problem


async def test_given_serve_local_when_sigterm_arrives_then_it_stops_as_ctrl_c_does() -> None:
    """SIGTERM (a service manager, `kill`) sets the stop: what was accepted is delivered, Azurite stops, exit 0."""
    import os
    import signal

    out, stop, started = io.StringIO(), asyncio.Event(), asyncio.Event()
    server = asyncio.create_task(serve_local(out, port=0, env={}, stop=stop, ready=lambda _: started.set()))
    await started.wait()
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(server, 60) == 0
    assert stop.is_set()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone with serve-local


async def test_given_graph_base_url_serve_local_writes_to_that_graph_with_tokens_from_identity_endpoint() -> None:
    """As run-local does: with GRAPH_BASE_URL (and IDENTITY_ENDPOINT) set, serve-local starts no doubles of its own
    and the grant lands in the Graph those settings name (here a second Graph double, as a test tenant would be)."""
    from grants_local.graph_double import GraphDouble
    from grants_local.token_endpoint import TokenEndpoint

    body, headers = signed_ticket("RITM0010009")
    with TokenEndpoint() as tokens, GraphDouble(tokens) as tenant:
        tenant.load(EXAMPLES / "directory.json")
        env = {**tokens.env(), "GRAPH_BASE_URL": tenant.base_url}
        async with serving(env) as (port, out), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            accepted = await client.post("/api/grants", content=body, headers=headers)
        assert accepted.status_code == 202
        assert f"graph      Graph at {tenant.base_url} (GRAPH_BASE_URL)" in out.getvalue()
        assert tenant.write_count == 1
        assert tokens.request_count == 1


async def test_given_graph_base_url_without_a_token_endpoint_serve_local_says_what_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from shared.core.errors import ConfigError

    monkeypatch.delenv("IDENTITY_ENDPOINT", raising=False)
    with pytest.raises(ConfigError, match="IDENTITY_ENDPOINT is not set"):
        await serve_local(io.StringIO(), port=0, env={"GRAPH_BASE_URL": "http://127.0.0.1:9/v1.0"})
