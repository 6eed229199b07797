"""Request status end to end, through the registered functions on the local host: the signed webhook answers 202
with a Location, the status API reads ``accepted``, the grant trigger runs against the Graph double, and the status
API reads the terminal status (granted, or dead_lettered with its reason); unknown ids answer 404, hostile ones
400 (never looked up); a bulk job's totals come from one query on its rows."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import azure.functions as func
import pytest

import function_app
from grants_local.app import LocalApp, local_app
from grants_local.azurite import AzuriteTables, new_ledger_table
from grants_local.graph_double import GraphDouble
from grants_local.host import registered_function
from grants_local.queue import ManualClock
from shared.core.messaging import BULK_JOB, JOB_ROW, JOB_ROWS
from shared.core.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from shared.core.statuses import Status, StatusRecord
from tests.conftest import AU, UNKNOWN, USER, USER_2, as_operator, body, settings_for

WEBHOOK = registered_function(function_app.app, "grant_webhook")
STATUS = registered_function(function_app.app, "grant_status")
JOB = registered_function(function_app.app, "job_status")
SECRET = "s3cret-for-tests-only-0123456789abcdef"


@pytest.fixture
async def app(graph: GraphDouble, azurite: AzuriteTables) -> AsyncIterator[LocalApp]:
    clock = ManualClock(start=float(int(time.time())))
    settings = settings_for(graph, GRANTS_WEBHOOK_SECRET=SECRET, GRANTS_MAX_ATTEMPTS="2")
    async with AsyncExitStack() as stack:
        ledger = await new_ledger_table(azurite)
        yield await stack.enter_async_context(local_app(settings, clock=clock, ledger=ledger))


async def post(app: LocalApp, document: dict[str, Any]) -> func.HttpResponse:
    raw = json.dumps(document).encode()
    timestamp = str(int(app.clock()))
    headers = {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(secret=SECRET, timestamp=timestamp, body=raw),
    }
    return await WEBHOOK(func.HttpRequest("POST", "http://localhost/api/grants", headers=headers, body=raw))


async def get(function: Any, route: str, name: str, value: str) -> tuple[int, str, dict[str, Any]]:
    request = func.HttpRequest(
        "GET", f"http://localhost/api/{route}", headers=as_operator(), body=b"", route_params={name: value}
    )
    response = await function(request)
    return response.status_code, response.mimetype, json.loads(response.get_body())


def ticket(number: str, member: str) -> dict[str, Any]:
    return {
        "ticketNumber": number,
        "requester": "alice@contoso.com",
        "approver": "j.smith@contoso.com",
        "target": {"type": "administrativeUnit", "id": AU},
        "member": member,
        "summary": "Helpdesk for the night shift",
    }


async def test_a_signed_ticket_is_accepted_with_a_location_then_granted(app: LocalApp) -> None:
    response = await post(app, ticket("RITM0020001", USER_2))
    assert response.status_code == 202
    assert response.headers["Location"] == "/api/grants/RITM0020001"
    status, media, record = await get(STATUS, "grants/RITM0020001", "requestId", "RITM0020001")
    assert (status, media, record["status"], record["attempts"]) == (200, "application/json", "accepted", 0)
    assert (record["terminal"], record["succeeded"]) == (False, False)  # the answer says whether it ended
    assert (record["sourceSystem"], record["sourceReference"], record["requestedBy"]) == (
        "ticketing",
        "RITM0020001",
        "alice@contoso.com",
    )
    assert (record["action"], record["targetType"], record["targetId"], record["memberId"]) == (
        "add",
        "administrativeUnit",
        AU,
        USER_2,
    )
    await app.drain()
    status, _, record = await get(STATUS, "grants/RITM0020001", "requestId", "RITM0020001")
    assert (status, record["status"], record["attempts"], record["reason"]) == (200, "granted", 1, None)
    assert (record["terminal"], record["succeeded"]) == (True, True)
    assert record["graphRequestId"]
    assert record["lastAttemptAt"]
    assert record["acceptedAt"] <= record["updatedAt"]


async def test_a_failing_ticket_ends_dead_lettered_with_its_reason(app: LocalApp) -> None:
    assert (await post(app, ticket("RITM0020002", UNKNOWN))).status_code == 202
    await app.drain()
    status, _, record = await get(STATUS, "grants/RITM0020002", "requestId", "RITM0020002")
    assert status == 200
    assert (record["status"], record["reason"]) == ("dead_lettered", app.queue.dead_letters()[0].reason)
    assert (record["terminal"], record["succeeded"]) == (True, False)
    assert record["reason"] == "MemberNotFound"
    assert record["description"]


async def test_an_unknown_request_is_404_problem_details(app: LocalApp) -> None:
    status, media, problem = await get(STATUS, "grants/RITM404", "requestId", "RITM404")
    assert (status, media, problem["status"], problem["type"]) == (
        404,
        "application/problem+json",
        404,
        "urn:entra-grants:problem:unknown-request",
    )


@pytest.mark.parametrize(
    "hostile",
    ["", "a/b", "x' or PartitionKey ne '", "..", "id\x00", "é", "a" * 129, "-leading", "a b", "a%2Fb", "\ud800"],
)
async def test_a_hostile_request_id_is_400_and_never_looked_up(app: LocalApp, hostile: str) -> None:
    status, media, problem = await get(STATUS, "grants/x", "requestId", hostile)
    assert (status, media, problem["type"]) == (
        400,
        "application/problem+json",
        "urn:entra-grants:problem:invalid-request-id",
    )


async def test_a_bulk_job_reports_totals_and_its_failed_rows(app: LocalApp) -> None:
    for n, member in enumerate([USER, USER_2, UNKNOWN], start=1):
        app.queue.send(
            body(requestId=f"job-7:{n}", member={"id": member, "type": "user"}),
            message_id=f"job-7:{n}",
            application_properties={BULK_JOB: "job-7", JOB_ROW: n, JOB_ROWS: 3},
        )
    await app.host(function="grant_membership_bulk").drain()  # a job's rows: on the bulk queue
    status, _, job = await get(JOB, "jobs/job-7", "jobId", "job-7")
    assert status == 200
    assert (job["kind"], job["rows"], job["recorded"], job["terminal"], job["pending"], job["done"]) == (
        "bulk",
        3,
        3,
        3,
        0,
        True,
    )
    assert job["succeeded"] == 2
    assert job["totals"] == {"dead_lettered": 1, "granted": 2}
    [failed] = job["failed"]
    assert (failed["requestId"], failed["jobRow"], failed["reason"]) == ("job-7:3", 3, "MemberNotFound")
    assert (await get(JOB, "jobs/nope", "jobId", "nope"))[0] == 404


async def test_grants_job_prints_totals_and_the_failed_rows_and_exits_1(app: LocalApp) -> None:
    """`grants job JOB_ID --failed` against the registered function (the CLI's HTTP through a mock transport)."""
    import argparse
    import asyncio
    import io

    import httpx

    from grants_cli.status import add_parsers
    from grants_cli.status import main as cli

    for n, member in enumerate([USER, UNKNOWN]):
        app.queue.send(
            body(requestId=f"job-8:{n + 1}", member={"id": member, "type": "user"}),
            message_id=f"m-{n}",
            application_properties={BULK_JOB: "job-8", JOB_ROW: n + 1, JOB_ROWS: 2},
        )
    await app.host(function="grant_membership_bulk").drain()  # a job's rows: on the bulk queue
    loop = asyncio.get_running_loop()
    asked: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        job_id = request.url.path.rsplit("/", 1)[1]
        incoming = func.HttpRequest(
            "GET", str(request.url), headers=as_operator(), body=b"", route_params={"jobId": job_id}
        )
        answer = asyncio.run_coroutine_threadsafe(JOB(incoming), loop).result()
        return httpx.Response(answer.status_code, content=answer.get_body(), headers={"content-type": answer.mimetype})

    def run(job_id: str) -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        parser = argparse.ArgumentParser()
        add_parsers(parser.add_subparsers(dest="command"))
        args = parser.parse_args(["job", job_id, "--url", "https://app.example", "--token", "k", "--failed"])
        code = cli(args, out=out, err=err, transport=httpx.MockTransport(handler))
        return code, out.getvalue() + err.getvalue()

    code, printed = await asyncio.to_thread(run, "job-8")
    lines = printed.splitlines()
    assert code == 1
    assert lines[0] == "job job-8: 2 of 2 requests ended, 1 succeeded, 1 failed"
    assert set(lines[1].strip().split(", ")) == {"dead_lettered 1", "granted 1"}
    assert "  job-8:2  MemberNotFound  user 00000000-" in lines[2]
    assert asked[0].headers["authorization"] == "Bearer k"
    assert str(asked[0].url) == "https://app.example/api/jobs/job-8"
    code, _ = await asyncio.to_thread(run, "job\x1b[2J")
    assert code == 2
    assert len(asked) == 1  # an invalid id is never sent


async def test_a_status_that_cannot_be_recorded_leaves_the_message_to_its_lock_expiry_and_the_redelivery_records_it(
    app: LocalApp, monkeypatch: pytest.MonkeyPatch, graph: GraphDouble
) -> None:
    """The ledger fails the terminal status write once: the message is left to its lock expiry (never completed
    without its status), redelivered, ends already_member (no second Graph add), and the status is then recorded."""
    from shared.core.errors import Reason, TransientError

    ledger = app.services.ledger
    real = ledger.record
    failures = [TransientError(Reason.LEDGER_UNAVAILABLE, "the grant ledger could not record the status: HTTP 503")]

    async def flaky(record: StatusRecord, **options: Any) -> bool:
        if failures and record.status is not Status.IN_PROGRESS:  # in_progress is advisory: only logged
            raise failures.pop()
        return await real(record, **options)

    monkeypatch.setattr(ledger, "record", flaky)
    app.queue.send(body(requestId="r-flaky", member={"id": USER_2, "type": "user"}), message_id="m-1")
    await app.drain()
    outcomes = [record["outcome"] for record in app.recorder.records]
    assert outcomes == ["unsettled", "already_member"]
    assert "status could not be recorded" in app.recorder.records[0]["description"]
    assert USER_2 in graph.members_of(AU)
    status, _, record = await get(STATUS, "grants/r-flaky", "requestId", "r-flaky")
    assert (status, record["status"]) == (200, "already_member")


async def test_a_duplicate_or_a_conflicting_message_never_overwrites_the_status_of_the_request(app: LocalApp) -> None:
    app.queue.send(body(requestId="r-own", member={"id": USER, "type": "user"}), message_id="m-1")
    await app.drain()
    app.queue.send(body(requestId="r-own", member={"id": USER, "type": "user"}), message_id="m-2")  # duplicate
    app.queue.send(body(requestId="r-own", member={"id": USER_2, "type": "user"}), message_id="m-3")  # conflict
    await app.drain()
    outcomes = {mid: (r["outcome"], r["reason"]) for mid, r in app.outcomes().items()}
    assert outcomes == {
        "m-1": ("granted", None),
        "m-2": ("duplicate", None),
        "m-3": ("dead_lettered", "RequestIdConflict"),
    }
    status, _, record = await get(STATUS, "grants/r-own", "requestId", "r-own")
    assert (status, record["status"], record["memberId"], record["messageId"]) == (200, "granted", USER, "m-1")
