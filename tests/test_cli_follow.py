"""Producers learn what happened, from the operator CLI: ``grants job|hr-event ID [--watch] [--failed-csv FILE]``
and ``grants history``, against a double of the status API (an `httpx.MockTransport` serving the documents the API
answers), on a fake clock (nothing sleeps); and ``submit`` numbering its messages (``jobRow``/``jobRows``)."""

from __future__ import annotations

import argparse
import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from grants_cli.bulk import CSV_COLUMNS, read_job, run_submit
from grants_cli.status import add_parsers, main
from grants_local.backend import LocalBackend
from grants_local.deployment import LocalDeployment
from grants_local.queue import LocalQueue, ManualClock
from shared.core.contract import AdministrativeUnit, DirectoryRole, ScopedRole, parse_grant
from shared.core.messaging import BULK_JOB, JOB_ROW, JOB_ROWS
from tests.conftest import AU, HELPDESK_ROLE, HELPDESK_TEMPLATE, USER, USER_2

URL = "https://app.example"
PROBLEM = "urn:entra-grants:problem:"
#: Clear screen, a window title, a C1 CSI, a right-to-left override and a forged line.
HOSTILE = "x\x1b]0;pwned\x07\x1b[2J\x9b31m\u202eexe\nforged: line"


def parse(*argv: str) -> argparse.Namespace:
    """`argv` as the ``grants`` command parses it (the status commands' own parsers)."""
    parser = argparse.ArgumentParser(prog="grants")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args([*argv, "--url", URL, "--token", "k"])


class FakeApi:
    """The status API's double: answers each GET of a path with the next of its queued answers (the last one
    again once they run out), and keeps every request."""

    def __init__(self, answers: dict[str, list[httpx.Response]]) -> None:
        self.answers = answers
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        queued = self.answers.get(request.url.path)
        if not queued:
            return httpx.Response(404, text="no such route")
        return queued.pop(0) if len(queued) > 1 else queued[0]


class FakeClock:
    """Monotonic seconds that move only when slept."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(
    api: FakeApi, *argv: str, clock: FakeClock | None = None, err: io.StringIO | None = None
) -> tuple[int, str, str]:
    out, err = io.StringIO(), err if err is not None else io.StringIO()
    clock = clock or FakeClock()
    code = main(parse(*argv), out=out, err=err, transport=httpx.MockTransport(api), sleep=clock.sleep, clock=clock)
    return code, out.getvalue(), err.getvalue()


def problem(status: int, kind: str, detail: str, **headers: str) -> httpx.Response:
    document = {"type": PROBLEM + kind, "title": kind, "status": status, "detail": detail}
    return httpx.Response(status, json=document, headers={"content-type": "application/problem+json", **headers})


def failed_row(row: int, **fields: Any) -> dict[str, Any]:
    """A dead-lettered status record of row `row` of job-3f2a: a user added to `AU`, unless `fields` say else."""
    record = {
        "requestId": f"job-3f2a:{row}",
        "status": "dead_lettered",
        "reason": "MemberNotFound",
        "description": f"user {USER} was not found",
        "attempts": 1,
        "action": "add",
        "targetType": "administrativeUnit",
        "targetId": AU,
        "roleTemplateId": None,
        "memberId": USER,
        "memberType": "user",
        "sourceSystem": "bulk",
        "sourceReference": "job-3f2a",
        "requestedBy": "ops@contoso.com",
        "requestReason": "night shift",
        "expiresAt": None,
        "dryRun": False,
        "jobId": "job-3f2a",
        "jobRow": row,
    }
    return record | fields


def job(
    rows: int | None, terminal: int, *, failed: list[dict[str, Any]] | None = None, **totals: int
) -> httpx.Response:
    """The job document: `terminal` rows ended (the `failed` ones among them), `totals` by status."""
    failed = failed or []
    recorded = sum(totals.values())
    document = {
        "jobId": "job-3f2a",
        "kind": "bulk",
        "rows": rows,
        "recorded": recorded,
        "terminal": terminal,
        "pending": None if rows is None else rows - terminal,
        "done": rows is not None and terminal == rows,
        "totals": totals,
        "succeeded": terminal - len(failed),
        "failed": failed,
    }
    return httpx.Response(200, json=document)


JOB_PATH = "/api/jobs/job-3f2a"


def test_given_a_job_not_yet_recorded_then_running_when_watched_then_a_line_per_change_and_exit_1_for_a_failure() -> (
    None
):
    """404 (no row yet) is waited for, unchanged counts print nothing on a pipe, the summary ends it."""
    api = FakeApi(
        {
            JOB_PATH: [
                problem(404, "unknown-job", "no request of job job-3f2a is recorded"),
                job(3, 1, granted=1, in_progress=1),
                job(3, 1, granted=1, in_progress=1),
                job(3, 3, failed=[failed_row(2)], granted=2, dead_lettered=1),
            ]
        }
    )
    clock = FakeClock()
    code, out, err = run(api, "job", "job-3f2a", "--watch", "--failed", clock=clock)
    assert code == 1
    assert err.splitlines() == [
        "job job-3f2a: no row recorded yet: waiting",
        "job job-3f2a [##########....................] 1/3 ended  granted 1, in_progress 1",
        "job job-3f2a [##############################] 3/3 ended  granted 2, dead_lettered 1",
    ]
    assert out.splitlines() == [
        "job job-3f2a: 3 of 3 requests ended, 2 succeeded, 1 failed",
        "  granted 2, dead_lettered 1",
        f"  row 2  job-3f2a:2  MemberNotFound  user {USER} was not found",
    ]
    assert clock.slept == [2.0, 2.0, 2.0]
    assert {request.headers["authorization"] for request in api.requests} == {"Bearer k"}
    assert len(api.requests) == 4


def test_given_an_hr_event_that_ends_granted_when_watched_on_a_terminal_then_one_redrawn_line_and_exit_0() -> None:
    event = {"outcome": "completed", "eventType": "joiner", "employeeId": "EMP-1", "description": HOSTILE}
    done = job(2, 2, granted=2).json() | {"jobId": None, "eventId": "evt-1", "kind": "hrEvent", "event": event}
    api = FakeApi(
        {
            "/api/hr-events/evt-1": [
                job(2, 0, in_progress=2),
                job(2, 1, granted=1, in_progress=1),
                httpx.Response(200, json=done),
            ]
        }
    )
    terminal = Terminal()
    code, out, _ = run(api, "hr-event", "evt-1", "--watch", "--interval", "5", err=terminal)
    assert code == 0
    shown = terminal.getvalue()
    assert shown.count("\r") == 3
    assert shown.endswith("] 2/2 ended  granted 2" + " " * 15 + "\n")  # spaces over the longer line before
    assert "\r" + "HR event evt-1 [" + "." * 30 + "] 0/2 ended  in_progress 2" in shown
    lines = out.splitlines()
    assert lines[:2] == ["HR event evt-1: 2 of 2 requests ended, 2 succeeded, 0 failed", "  granted 2"]
    assert lines[2:4] == ["  event type     joiner", "  employee       EMP-1"]
    assert len(lines) == 6  # the hostile description: one line, escaped
    assert all(line.isprintable() for line in lines)


def test_given_a_job_that_never_ends_when_watched_with_a_timeout_then_still_running_and_exit_2() -> None:
    api = FakeApi({JOB_PATH: [job(1000, 600, failed=[failed_row(7)], granted=599, in_progress=400, dead_lettered=1)]})
    clock = FakeClock()
    code, out, err = run(api, "job", "job-3f2a", "--watch", "--timeout", "5", clock=clock)
    assert code == 2
    assert clock.slept == [2.0, 2.0, 1.0]  # the last poll at the timeout
    assert err.splitlines()[-1] == "job job-3f2a: still running after 5 s"
    assert out.splitlines()[0] == "job job-3f2a: 600 of 1000 requests ended, 599 succeeded, 1 failed, 400 still running"


def test_given_an_unavailable_ledger_while_watching_then_it_waits_retry_after_and_goes_on() -> None:
    api = FakeApi(
        {
            JOB_PATH: [
                problem(503, "ledger-unavailable", "the grant ledger is unavailable now", **{"Retry-After": "5"}),
                job(1, 1, granted=1),
            ]
        }
    )
    clock = FakeClock()
    code, _, err = run(api, "job", "job-3f2a", "--watch", clock=clock)
    assert (code, clock.slept) == (0, [5.0])
    assert (
        err.splitlines()[0]
        == "job job-3f2a: the status API is unavailable (the grant ledger is unavailable now): retrying"
    )


def test_given_ctrl_c_while_watching_then_one_line_and_exit_130() -> None:
    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    terminal, out = Terminal(), io.StringIO()
    args = parse("job", "job-3f2a", "--watch")
    api = FakeApi({JOB_PATH: [job(2, 1, granted=1, in_progress=1)]})
    code = main(args, out=out, err=terminal, transport=httpx.MockTransport(api), sleep=interrupted)
    assert code == 130
    line = terminal.getvalue().split("\n")[1]
    assert (
        line == "interrupted: stopped watching job job-3f2a; it goes on in the app (grants job job-3f2a --watch again)"
    )
    assert terminal.getvalue().count("\n") == 2
    assert out.getvalue() == ""


def test_given_an_api_that_cannot_be_reached_when_watched_then_exit_2_at_once() -> None:
    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    out, err, clock = io.StringIO(), io.StringIO(), FakeClock()
    code = main(
        parse("job", "job-3f2a", "--watch"),
        out=out,
        err=err,
        transport=httpx.MockTransport(unreachable),
        sleep=clock.sleep,
        clock=clock,
    )
    assert (code, clock.slept) == (2, [])
    assert err.getvalue() == f"error: {URL} could not be reached: ConnectError\n"


@pytest.mark.parametrize(
    ("answer", "code", "first"),
    [
        (
            job(2, 1, granted=1, in_progress=1),
            1,
            "job job-3f2a: 1 of 2 requests ended, 1 succeeded, 0 failed, 1 still running",
        ),
        (job(2, 2, granted=2), 0, "job job-3f2a: 2 of 2 requests ended, 2 succeeded, 0 failed"),
        (
            job(None, 2, granted=2, in_progress=1),
            1,
            "job job-3f2a: 3 requests recorded (how many were sent is not known), 2 succeeded, 0 failed, "
            "1 still running",
        ),
    ],
)
def test_given_a_job_when_read_once_then_exit_0_only_when_every_row_ended_and_succeeded(
    answer: httpx.Response, code: int, first: str
) -> None:
    got, out, _ = run(FakeApi({JOB_PATH: [answer]}), "job", "job-3f2a")
    assert (got, out.splitlines()[0]) == (code, first)


def test_given_failed_rows_when_written_as_csv_then_read_job_reads_every_row_back_as_the_same_grant(
    tmp_path: Path,
) -> None:
    """Every target type maps back to its CSV columns; no request id is carried; formulas are made inert."""
    rows = [
        failed_row(1, requestReason='=HYPERLINK("http://evil")', description='a, "quoted"\nsecond line'),
        failed_row(2, targetType="directoryRole", targetId=HELPDESK_ROLE, roleTemplateId=HELPDESK_TEMPLATE),
        failed_row(3, targetType="directoryRole", targetId=None, roleTemplateId=HELPDESK_TEMPLATE, memberType=None),
        failed_row(4, targetType="scopedRole", targetId=AU, roleTemplateId=HELPDESK_TEMPLATE, memberId=USER_2),
        failed_row(5, action="remove", expiresAt="2027-01-31T00:00:00+00:00", requestedBy="@ops"),
    ]
    api = FakeApi({JOB_PATH: [job(9, 9, failed=rows, granted=4, dead_lettered=5)]})
    path = tmp_path / "failed.csv"
    code, _, err = run(api, "job", "job-3f2a", "--failed-csv", str(path))
    assert code == 1
    assert err == f"5 failed row(s) written to {path}\n"
    header, *_ = path.read_text(encoding="utf-8").splitlines()
    assert header.split(",") == [*CSV_COLUMNS, "failedReason", "failedDescription"]
    assert "requestId" not in header
    resubmitted = read_job(path, job_id="job-fix")
    assert (resubmitted.rows, resubmitted.invalid) == (5, [])
    commands = [parse_grant(message.body) for message in resubmitted.messages]
    assert [command.request_id for command in commands] == [f"job-fix:{n}" for n in range(1, 6)]
    assert [command.target for command in commands] == [
        AdministrativeUnit(id=AU),
        DirectoryRole(id=HELPDESK_ROLE),
        DirectoryRole(role_template_id=HELPDESK_TEMPLATE),
        ScopedRole(role_template_id=HELPDESK_TEMPLATE, administrative_unit_id=AU),
        AdministrativeUnit(id=AU),
    ]
    assert commands[0].reason == '\'=HYPERLINK("http://evil")'  # inert in a spreadsheet
    assert commands[4].requested_by == "'@ops"
    assert (commands[4].action.value, commands[4].expires_at is not None) == ("remove", True)
    assert (commands[3].member.id, commands[2].member.type) == (USER_2, None)


def test_given_a_dry_run_row_when_written_as_csv_then_it_stays_a_dry_run(tmp_path: Path) -> None:
    api = FakeApi({JOB_PATH: [job(2, 2, failed=[failed_row(1), failed_row(2, dryRun=True)], dead_lettered=2)]})
    path = tmp_path / "failed.csv"
    run(api, "job", "job-3f2a", "--failed-csv", str(path))
    resubmitted = read_job(path)
    assert resubmitted.invalid == []
    assert [parse_grant(message.body).dry_run for message in resubmitted.messages] == [False, True]


HISTORY = {
    "member": USER,
    "target": None,
    "since": "2026-11-01T00:00:00+00:00",
    "requests": [
        failed_row(2, intentAt="2026-11-20T10:00:00+00:00", requestedBy=HOSTILE, graphRequestId="g-2"),
        failed_row(
            1,
            status="granted",
            reason=None,
            intentAt="2026-11-02T09:00:00+00:00",
            targetType="scopedRole",
            roleTemplateId=HELPDESK_TEMPLATE,
            sourceSystem="ticketing",
            sourceReference="RITM\x1b[2J0001",
            graphRequestId=None,
        ),
    ],
}


def test_given_requests_that_touched_a_member_when_history_then_one_escaped_line_each_newest_first() -> None:
    api = FakeApi({"/api/history": [httpx.Response(200, json=HISTORY)]})
    code, out, _ = run(api, "history", "--member", USER.upper(), "--since", "2026-11-01")
    assert code == 0
    assert dict(api.requests[0].url.params) == {"member": USER, "since": "2026-11-01"}  # the GUID in lower case
    lines = out.splitlines()
    assert lines[0] == f"2 request(s) touched member {USER} since 2026-11-01T00:00:00+00:00, newest first:"
    assert lines[1] == (
        f"2026-11-20T10:00:00+00:00  dead_lettered (MemberNotFound)  add  administrativeUnit {AU}  member {USER}  "
        "source bulk/job-3f2a  by x\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m\\u202eexe\\x0aforged: line  graph g-2"
    )
    assert lines[2] == (
        f"2026-11-02T09:00:00+00:00  granted  add  scopedRole {HELPDESK_TEMPLATE} in {AU}  member {USER}  "
        "source ticketing/RITM\\x1b[2J0001  by ops@contoso.com  graph -"
    )
    assert len(lines) == 3
    assert all(line.isprintable() for line in lines)


def test_given_nothing_touched_a_target_when_history_then_it_says_so_and_exits_0() -> None:
    api = FakeApi(
        {"/api/history": [httpx.Response(200, json={"member": None, "target": AU, "since": None, "requests": []})]}
    )
    assert run(api, "history", "--target", AU) == (0, f"no request touched target {AU}\n", "")


@pytest.mark.parametrize("hostile", ["not-a-guid", f"{USER}\n", "\x1b[2J", f"{USER}' or 1 eq 1"])
def test_given_an_invalid_guid_when_history_then_exit_2_and_nothing_is_sent(hostile: str) -> None:
    api = FakeApi({})
    code, out, err = run(api, "history", "--member", hostile)
    assert (code, out, api.requests) == (2, "", [])
    assert err.startswith("error: --member must be a GUID")
    assert err.count("\n") == 1
    assert err[:-1].isprintable()


def test_given_a_refusal_when_history_then_exit_2_with_the_problem() -> None:
    api = FakeApi({"/api/history": [problem(400, "invalid-history", "since must be a date or an RFC 3339 time")]})
    assert run(api, "history", "--member", USER, "--since", "soon") == (
        2,
        "",
        "error: the status API answered 400: since must be a date or an RFC 3339 time\n",
    )


def test_given_a_csv_job_when_submitted_then_every_message_carries_its_row_and_the_row_count(tmp_path: Path) -> None:
    header = ",".join(CSV_COLUMNS)
    path = tmp_path / "job.csv"
    path.write_text(
        f"{header}\nadd,administrativeUnit,{AU},,,{USER},user,ops,a,\n"
        f"add,administrativeUnit,not-a-guid,,,{USER},user,ops,b,\n"
        f"add,administrativeUnit,{AU},,,{USER_2},user,ops,c,\n",
        encoding="utf-8",
    )
    job = read_job(path, job_id="j1")
    assert [(m.message_id.rsplit(":", 1)[0], dict(m.application_properties)) for m in job.messages] == [
        ("j1:1", {BULK_JOB: "j1", JOB_ROW: 1, JOB_ROWS: 2}),
        ("j1:3", {BULK_JOB: "j1", JOB_ROW: 3, JOB_ROWS: 2}),
    ]
    queue = LocalQueue(clock=ManualClock())
    deployment = LocalDeployment(tmp_path / "ns")
    deployment.stop()  # the local app receives nothing: the queue keeps what was sent

    @contextmanager
    def backend() -> Iterator[LocalBackend]:
        yield LocalBackend(queue, deployment=deployment)

    out = io.StringIO()
    code = run_submit(
        path=path,
        job_id="j1",
        dry_run=False,
        skip_invalid=True,
        open_backend=backend,
        queue="q",
        out=out,
        err=io.StringIO(),
    )
    assert code == 0
    assert "follow it" not in out.getvalue()  # the local namespace keeps no ledger to follow it in
    sent = []
    while (locked := queue.receive()) is not None:
        sent.append((locked.message_id.rsplit(":", 1)[0], dict(locked.application_properties)))
        queue.complete(locked.lock_token)
    assert sent == [
        ("j1:1", {BULK_JOB: "j1", JOB_ROW: 1, JOB_ROWS: 2}),
        ("j1:3", {BULK_JOB: "j1", JOB_ROW: 3, JOB_ROWS: 2}),
    ]


def test_status_prints_a_retry_s_next_attempt_and_a_time_bound_grant_s_removal() -> None:
    """The status record's pending and time-bound fields, escaped: nextRetryAt, the HR event and row, removal."""
    record = {
        "requestId": "hr:evt-1:0a1b",
        "status": "granted",
        "hrEventId": "evt-1",
        "jobRow": 2,
        "expiresAt": "2026-12-31T00:00:00+00:00",
        "removal": {"status": "scheduled", "dueAt": "2026-12-31T00:00:00+00:00"},
        "nextRetryAt": "2026-11-25T10:00:30+00:00",
        "description": HOSTILE,
    }
    api = FakeApi({"/api/grants/hr:evt-1:0a1b": [httpx.Response(200, json=record)]})
    code, out, _ = run(api, "status", "hr:evt-1:0a1b")
    assert code == 0
    assert "  HR event       evt-1\n  row            2\n" in out
    assert "  removal        scheduled 2026-12-31T00:00:00+00:00\n" in out
    assert "  next retry     2026-11-25T10:00:30+00:00\n" in out
    assert "\x1b" not in out
    assert "\nforged: line" not in out


def test_status_says_what_holds_a_membership_a_released_request_left_in_place() -> None:
    """A released removal: each grant that still holds the membership (another producer's by name only), and a
    membership made outside the app."""
    record = {
        "requestId": "RITM2",
        "status": "released",
        "heldBy": [
            {"producer": "hr", "requestId": None, "expiresAt": None},
            {"producer": "ticketing", "requestId": "RITM1", "expiresAt": "2026-12-31T00:00:00+00:00"},
            {"preexisting": True},
        ],
    }
    api = FakeApi({"/api/grants/RITM2": [httpx.Response(200, json=record)]})
    code, out, _ = run(api, "status", "RITM2")
    assert code == 0
    assert (
        "  held by        hr, ticketing RITM1 (until 2026-12-31T00:00:00+00:00), pre-existing (made outside the app)\n"
        in out
    )


def test_given_a_pim_request_when_status_and_history_then_its_role_definition_and_scope_are_shown() -> None:
    """A roleEligibility request's status names its role definition and directory scope; its history line reads
    ``roleEligibility <definition> at <scope>``."""
    record = failed_row(
        1,
        requestId="RITM7",
        status="granted",
        reason=None,
        targetType="roleEligibility",
        targetId=AU,
        roleDefinitionId=HELPDESK_TEMPLATE,
        directoryScopeId=f"/administrativeUnits/{AU}",
        intentAt="2026-11-02T09:00:00+00:00",
        graphRequestId="g-7",
    )
    api = FakeApi(
        {
            "/api/grants/RITM7": [httpx.Response(200, json=record)],
            "/api/history": [httpx.Response(200, json={"member": USER, "requests": [record]})],
        }
    )
    code, out, _ = run(api, "status", "RITM7")
    assert code == 0
    assert f"  target type    roleEligibility\n  target         {AU}\n" in out
    assert f"  definition     {HELPDESK_TEMPLATE}\n  scope          /administrativeUnits/{AU}\n" in out
    code, out, _ = run(api, "history", "--member", USER)
    assert f"granted  add  roleEligibility {HELPDESK_TEMPLATE} at /administrativeUnits/{AU}  member {USER}" in out
