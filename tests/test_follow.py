"""Following requests end to end, through the registered functions on the local host (real settlement over gRPC),
the ledger in Azurite and the Graph double: a 1,000-row bulk job with faults followed by ``grants job --watch``
while it runs; an HR joiner, mover and leaver in order in the member's history; an HR event's grants asked by
event id, ``scheduled`` until their effective day; a retry's status with its next attempt; ``in_progress`` while
Graph is writing."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import azure.functions as func
import httpx
import pytest

import function_app
from grants_cli.bulk import read_job
from grants_cli.status import add_parsers
from grants_cli.status import main as cli
from grants_local.graph_double import Fault, GraphDouble
from grants_local.host import LocalHost, OutcomeRecorder, registered_function, to_received_message
from grants_local.queue import LocalQueue
from grants_local.settlement_server import LocalSettlementServer, point_message_actions_at
from tests.conftest import AU, AU_OTHER, HELPDESK_TEMPLATE, USER, Run, as_operator, body

JOB = registered_function(function_app.app, "job_status")
STATUS = registered_function(function_app.app, "grant_status")
HR_EVENT = registered_function(function_app.app, "hr_event_status")
HISTORY = registered_function(function_app.app, "grant_history")
HR = registered_function(function_app.app, "hr_events")
BULK = "grant_membership_bulk"


async def get(function: Any, route: str, **params: str) -> tuple[int, dict[str, Any]]:
    """Call a registered GET function: `params` are route parameters, or query parameters for history."""
    request = func.HttpRequest(
        "GET",
        f"http://localhost/api/{route}",
        headers=as_operator(),
        body=b"",
        route_params={} if function is HISTORY else params,
        params=params if function is HISTORY else {},
    )
    response = await function(request)
    return response.status_code, json.loads(response.get_body())


def bridged(loop: asyncio.AbstractEventLoop, asked: list[str]) -> httpx.MockTransport:
    """The CLI's HTTP, answered by the registered status functions on `loop` (the Functions host's part)."""
    routes = {"jobs": (JOB, "jobId"), "hr-events": (HR_EVENT, "eventId"), "grants": (STATUS, "requestId")}

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        _, _, route, value = request.url.path.split("/", 3)
        if route == "history":
            function, incoming = (
                HISTORY,
                func.HttpRequest("GET", str(request.url), headers=as_operator(), body=b"", params=request.url.params),
            )
        else:
            function, name = routes[route]
            incoming = func.HttpRequest(
                "GET", str(request.url), headers=as_operator(), body=b"", route_params={name: value}
            )
        answer = asyncio.run_coroutine_threadsafe(function(incoming), loop).result()
        return httpx.Response(answer.status_code, content=answer.get_body(), headers={"content-type": answer.mimetype})

    return httpx.MockTransport(handler)


def run_cli(argv: list[str], transport: httpx.MockTransport) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args([*argv, "--url", "https://app.example", "--token", "k"])
    out, err = io.StringIO(), io.StringIO()
    code = cli(args, out=out, err=err, transport=transport)
    return code, out.getvalue(), err.getvalue()


# --- a bulk job -----------------------------------------------------------------------------------------------------


async def test_a_1000_row_bulk_job_with_faults_is_watched_to_its_end_with_totals_and_failed_rows(
    make_run: Callable[..., Any], graph: GraphDouble, tmp_path: Path
) -> None:
    """1,000 rows through the bulk function, 30 of them hit by a 503 or a 429 (retried: granted) and 10 naming users
    that do not exist (dead-lettered MemberNotFound after their attempts), while ``grants job --watch`` polls the
    status API: it shows the job advancing, then ends with 990 succeeded, 10 failed (exit 1), and the failed rows
    come out as a CSV that ``submit`` reads back as 10 valid rows."""
    run: Run = await make_run(GRANTS_MAX_ATTEMPTS="3", GRANTS_MEMBER_NOT_FOUND_MIN_ATTEMPTS="3")
    members = [f"{n:08x}-0000-4000-8000-00000000b01c" for n in range(1, 1001)]
    missing = set(members[99::100])
    for member in members:
        if member not in missing:
            graph.add_user(member)
    lines = ["action,targetType,targetId,memberId,memberType,requestedBy,reason"]
    lines += [f"add,administrativeUnit,{AU},{member},user,ops@contoso.com,Q4 access review" for member in members]
    (tmp_path / "q4.csv").write_text("\n".join(lines) + "\n")
    job = read_job(tmp_path / "q4.csv", job_id="job-q4")
    assert (len(job.messages), job.invalid) == (1000, [])
    for message in job.messages:
        run.queue.send(
            message.body, message_id=message.message_id, application_properties=message.application_properties
        )
    graph.inject(*(Fault.status(503, method="POST") for _ in range(20)))
    graph.inject(*(Fault.status(429, retry_after=1, method="POST") for _ in range(10)))
    loop, asked = asyncio.get_running_loop(), []
    failed_csv = tmp_path / "failed.csv"
    argv = ["job", "job-q4", "--watch", "--interval", "1", "--failed", "--failed-csv", str(failed_csv)]

    watch = asyncio.create_task(asyncio.to_thread(run_cli, argv, bridged(loop, asked)))
    await run.app.host(function=BULK).drain()
    code, out, err = await asyncio.wait_for(watch, 60)

    assert code == 1
    summary = out.splitlines()
    assert summary[0] == "job job-q4: 1000 of 1000 requests ended, 990 succeeded, 10 failed"
    assert set(summary[1].strip().split(", ")) == {"granted 990", "dead_lettered 10"}
    assert sum("MemberNotFound" in line for line in summary[2:]) == 10
    ended = [int(line.split("] ")[1].split("/")[0]) for line in err.splitlines() if "] " in line]
    assert ended == sorted(ended)  # progress only moves forward
    assert ended[-1] == 1000
    assert any(0 < count < 1000 for count in ended), err  # seen while running, not only at the end
    assert graph.pending_faults == 0
    assert len(graph.members_of(AU)) >= 990
    resubmit = read_job(failed_csv, job_id="job-q4-fix")
    assert resubmit.invalid == []
    assert sorted(json.loads(m.body)["member"]["id"] for m in resubmit.messages) == sorted(missing)
    status, document = await get(JOB, "jobs/job-q4", jobId="job-q4")
    assert (status, document["rows"], document["terminal"], document["done"]) == (200, 1000, 1000, True)
    assert [row["jobRow"] for row in document["failed"]] == [n for n in range(100, 1001, 100)]
    assert all(row["attempts"] == 3 for row in document["failed"])


# --- HR events ------------------------------------------------------------------------------------------------------

RULES = {
    "rules": [
        {"name": "emea", "when": {"location": "EMEA"}, "grants": [{"type": "administrativeUnit", "id": AU}]},
        {"name": "apac", "when": {"location": "APAC"}, "grants": [{"type": "administrativeUnit", "id": AU_OTHER}]},
        {
            "name": "helpdesk",
            "when": {"jobCode": "HD1"},
            "grants": [{"type": "directoryRole", "roleTemplateId": HELPDESK_TEMPLATE}],
        },
    ]
}


class Hr:
    """The hr-events queue with its own settlement server, beside the run's grants queue."""

    def __init__(self, run: Run, stack: ExitStack) -> None:
        self.run = run
        self.queue = LocalQueue(clock=run.clock)
        server = stack.enter_context(LocalSettlementServer(self.queue))
        self.actions = point_message_actions_at(server.address)
        self.recorder = stack.enter_context(OutcomeRecorder("hrEvent").attached())

    async def publish(self, event_id: str, event_type: str, occurred_at: str, **attributes: Any) -> None:
        document = {
            "eventId": event_id,
            "eventType": event_type,
            "employeeId": "EMP-4711",
            "userObjectId": USER,
            "occurredAt": occurred_at,
            **attributes,
        }
        self.queue.send(json.dumps(document).encode(), message_id=event_id)
        await LocalHost(queue=self.queue, function=HR, actions=self.actions, clock=self.run.clock).drain()


@pytest.fixture
def hr_run(make_run: Callable[..., Any], tmp_path: Path) -> Iterator[Callable[..., Any]]:
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps(RULES))
    with ExitStack() as stack:

        async def make() -> Hr:
            return Hr(await make_run(GRANTS_HR_RULES=str(rules)), stack)

        yield make


async def test_history_shows_a_joiner_a_mover_and_a_leaver_in_order(hr_run: Callable[..., Any]) -> None:
    """Hire (EMEA, helpdesk), move to APAC, leave: the member's history lists every request the three events made,
    newest intent first, each with who asked, the employee, the outcome and Graph's request id; a target's history
    lists only its own; since narrows to the leaver."""
    hr: Hr = await hr_run()
    hr.run.clock.advance_to(datetime(2026, 12, 1, tzinfo=UTC).timestamp())  # they arrive after they happened
    await hr.publish("evt-join", "hire", "2026-11-02T09:00:00Z", location="EMEA", jobCode="HD1")
    await hr.run.app.drain()
    await hr.publish(
        "evt-move", "move", "2026-11-10T09:00:00Z", location="APAC", jobCode="HD1", previous={"location": "EMEA"}
    )
    await hr.run.app.drain()
    await hr.publish("evt-leave", "leave", "2026-11-20T17:00:00Z", location="APAC", jobCode="HD1")
    await hr.run.app.drain()

    status, history = await get(HISTORY, "history", member=USER)
    assert status == 200
    rows = [
        (r["hrEventId"], r["action"], r["targetId"] or r["roleTemplateId"], r["status"]) for r in history["requests"]
    ]
    leaver, mover, joiner = rows[:3], rows[3:5], rows[5:]
    assert {row[0] for row in leaver} == {"evt-leave"}
    assert len(rows) == 7
    assert sorted(mover) == [("evt-move", "add", AU_OTHER, "granted"), ("evt-move", "remove", AU, "revoked")]
    assert sorted(joiner) == sorted(
        [("evt-join", "add", AU, "granted"), ("evt-join", "add", HELPDESK_TEMPLATE, "granted")]
    )
    assert {row[3] for row in leaver} == {"revoked", "not_member"}
    intents = [r["intentAt"] for r in history["requests"]]
    assert intents == sorted(intents, reverse=True)
    assert all(r["sourceSystem"] == "hr" and r["sourceReference"] == "EMP-4711" for r in history["requests"])
    assert all(r["requestedBy"] == "hr-events" and r["graphRequestId"] for r in history["requests"])
    _, unit = await get(HISTORY, "history", target=AU)
    assert [(r["hrEventId"], r["action"]) for r in unit["requests"]] == [
        ("evt-leave", "remove"),
        ("evt-move", "remove"),
        ("evt-join", "add"),
    ]
    _, recent = await get(HISTORY, "history", member=USER, since="2026-11-15")
    assert {r["hrEventId"] for r in recent["requests"]} == {"evt-leave"}


async def test_an_hr_event_is_asked_by_its_id_and_its_grants_stay_scheduled_until_their_day(
    hr_run: Callable[..., Any],
) -> None:
    """A hire effective in the future: GET /api/hr-events/{id} answers its two grants as rows, scheduled (for the
    effective day), not done; once the day comes and the grants run, both granted and done."""
    hr: Hr = await hr_run()
    today = hr.run.app.services.now()
    effective = f"{today.year + 1}-01-05"
    await hr.publish(
        "evt-future", "hire", "2026-11-02T09:00:00Z", location="EMEA", jobCode="HD1", effectiveDate=effective
    )
    status, event = await get(HR_EVENT, "hr-events/evt-future", eventId="evt-future")
    assert status == 200
    assert (event["kind"], event["rows"], event["terminal"], event["done"]) == ("hrEvent", 2, 0, False)
    assert event["totals"] == {"scheduled": 2}
    assert event["event"]["eventType"] == "joiner"
    assert event["event"]["scheduledFor"].startswith(effective)
    await hr.run.app.drain()  # the manual clock jumps to the effective day
    _, event = await get(HR_EVENT, "hr-events/evt-future", eventId="evt-future")
    assert (event["totals"], event["done"], event["succeeded"]) == ({"granted": 2}, True, 2)
    assert (await get(HR_EVENT, "hr-events/evt-none", eventId="evt-none"))[0] == 404


# --- pending statuses -------------------------------------------------------------------------------------------------


async def test_a_retried_request_shows_retry_scheduled_with_its_next_attempt_then_its_end(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    """A 503 on the first attempt: after it, the status is retry_scheduled with nextRetryAt; after the retry,
    granted with attempts 2."""
    run: Run = await make_run(GRANTS_RETRY_BASE_SECONDS="30")
    graph.inject(Fault.status(503, method="POST"))
    run.queue.send(body(requestId="r-retry"), message_id="m-1")
    await host_once(run)
    status, record = await get(STATUS, "grants/r-retry", requestId="r-retry")
    assert (status, record["status"], record["attempts"], record["reason"]) == (
        200,
        "retry_scheduled",
        1,
        "GraphUnavailable",
    )
    assert record["nextRetryAt"] > record["lastAttemptAt"]
    await run.app.drain()
    first = record["lastAttemptAt"]
    _, record = await get(STATUS, "grants/r-retry", requestId="r-retry")
    assert (record["status"], record["attempts"]) == ("granted", 2)
    assert record["firstAttemptAt"] <= first < record["lastAttemptAt"]


async def host_once(run: Run) -> None:
    """Deliver what is due now, and no more (a retry scheduled later stays queued)."""
    locked = run.queue.receive()
    assert locked is not None
    await registered_function(function_app.app, "grant_membership")(
        receivedmessage=to_received_message(locked), message_actions=run.actions
    )


async def test_a_request_is_in_progress_while_graph_is_writing(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    """While Graph takes its time with the write, the status reads in_progress (attempt 1); then granted."""
    run: Run = await make_run()
    graph.inject(Fault.delay(2.0, method="POST"))  # longer than PROGRESS_AFTER
    run.queue.send(body(requestId="r-slow"), message_id="m-1")
    drained = asyncio.create_task(run.app.drain())
    seen = set()
    while not drained.done():
        _, record = await get(STATUS, "grants/r-slow", requestId="r-slow")
        seen.add(record.get("status"))
        await asyncio.sleep(0.02)
    await drained
    assert "in_progress" in seen
    _, record = await get(STATUS, "grants/r-slow", requestId="r-slow")
    assert record["status"] == "granted"
