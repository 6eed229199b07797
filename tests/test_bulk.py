"""Bulk jobs: validation with line numbers, batches, duplicate absorption, dry run, progress and summary."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusMessageBatch
from azure.servicebus.exceptions import MessageSizeExceededError

from grants_cli.backends import fill_batches, to_service_bus_message
from grants_cli.bulk import Progress, default_job_id, read_job, run_submit, submit, summary, write_failed_csv
from grants_common.queues import Outgoing
from grants_local.backend import LocalBackend, open_local_backend
from grants_local.queue import LocalQueue, ManualClock
from shared.core.contract import parse_grant
from tests.conftest import AU, USER, USER_2, message

HEADER = (
    "action,targetType,targetId,roleTemplateId,administrativeUnitId,memberId,memberType,requestedBy,reason,expiresAt"
)
GOOD = f"add,administrativeUnit,{AU},,,{USER},user,ops@contoso.com,APAC,"
GOOD_2 = f"add,administrativeUnit,{AU},,,{USER_2},user,ops@contoso.com,APAC,"
BAD_ID = f"add,administrativeUnit,not-a-guid,,,{USER},user,ops@contoso.com,bad id,"
BAD_ACTION = f"grant,administrativeUnit,{AU},,,{USER},user,ops@contoso.com,bad action,"


def write(tmp_path: Path, name: str, *lines: str) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def drain(queue: LocalQueue) -> list[tuple[str, bytes]]:
    received = []
    while (locked := queue.receive()) is not None:
        received.append((locked.message_id, locked.body))
        queue.complete(locked.lock_token)
    return received


def submit_to(queue: LocalQueue, path: Path, *, job_id: str | None = None, **flags: bool) -> tuple[int, str]:
    """`submit` as the CLI runs it, into `queue` (the local namespace's queue, here in memory)."""
    out = io.StringIO()
    job = read_job(path, job_id=job_id)
    if job.invalid and not flags.get("skip_invalid"):
        return 1, "".join(f"line {i.line}: {i.reason}\n" for i in job.invalid)
    report, elapsed = submit(job, LocalBackend(queue), progress=Progress(len(job.messages), stream=out))
    return 0, out.getvalue() + summary(job, report, elapsed)


def test_csv_rows_name_pim_targets_by_role_definition_and_directory_scope_and_failed_rows_keep_them(
    tmp_path: Path,
) -> None:
    """A roleEligibility / roleAssignment row's roleDefinitionId and directoryScopeId become its target; a scope that
    is not / or /administrativeUnits/<GUID> is refused with its line; a failed PIM row is written back as it was."""
    header = "action,targetType,roleDefinitionId,directoryScopeId,memberId,memberType,expiresAt"
    path = write(
        tmp_path,
        "pim.csv",
        header,
        f"add,roleEligibility,{AU},/administrativeUnits/{AU},{USER},user,2027-01-31T00:00:00Z",
        f"add,roleAssignment,{AU},/,{USER_2},user,",
        f"add,roleAssignment,{AU},/groups/{AU},{USER_2},user,",
    )
    job = read_job(path, job_id="pim")
    targets = [json.loads(m.body)["target"] for m in job.messages]
    assert targets == [
        {"type": "roleEligibility", "roleDefinitionId": AU, "directoryScopeId": f"/administrativeUnits/{AU}"},
        {"type": "roleAssignment", "roleDefinitionId": AU, "directoryScopeId": "/"},
    ]
    [invalid] = job.invalid
    assert (invalid.line, invalid.reason) == (4, "SchemaViolation")
    assert invalid.description.startswith("target.directoryScopeId ")

    failed = {
        "action": "add",
        "targetType": "roleEligibility",
        "targetId": AU,
        "roleDefinitionId": AU,
        "directoryScopeId": f"/administrativeUnits/{AU}",
        "memberId": USER,
        "memberType": "user",
        "reason": "RolePolicyViolation",
    }
    out = io.StringIO()
    write_failed_csv([failed], out)
    again = read_job(write(tmp_path, "again.csv", *out.getvalue().splitlines()), job_id="again")
    assert [json.loads(m.body)["target"] for m in again.messages] == targets[:1]


def test_given_csv_with_bad_rows_when_submitted_then_errors_name_lines_and_nothing_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRANTS_LOCAL_NAMESPACE", str(tmp_path / "ns"))
    path = write(tmp_path, "job.csv", HEADER, GOOD, BAD_ID, "", BAD_ACTION)
    out = io.StringIO()
    code = run_submit(
        path=path,
        job_id="j1",
        dry_run=False,
        skip_invalid=False,
        open_backend=lambda: open_local_backend("grant-membership"),
        queue="grant-membership",
        out=out,
        err=io.StringIO(),
    )
    assert code == 1
    text = out.getvalue()
    assert "line 3: InvalidId: target.id must be a GUID" in text
    assert "line 5: SchemaViolation: action must be one of add, remove" in text
    assert "nothing sent" in text
    assert not (tmp_path / "ns").exists()  # the queue was never even opened


def test_given_skip_invalid_when_submitted_then_only_the_good_rows_are_sent_as_contract_messages(
    tmp_path: Path,
) -> None:
    queue = LocalQueue(clock=ManualClock())
    code, _ = submit_to(queue, write(tmp_path, "job.csv", HEADER, GOOD, BAD_ID, GOOD_2), job_id="j2", skip_invalid=True)
    assert code == 0
    received = drain(queue)
    assert [message_id.rsplit(":", 1)[0] for message_id, _ in received] == ["j2:1", "j2:3"]  # and the file's digest
    commands = [parse_grant(body) for _, body in received]
    assert [c.request_id for c in commands] == ["j2:1", "j2:3"]
    assert {(c.source.system.value, c.source.reference) for c in commands} == {("bulk", "j2")}
    assert [c.member.id for c in commands] == [USER, USER_2]


def test_given_the_same_job_twice_when_submitted_then_the_second_run_is_absorbed_as_duplicates(tmp_path: Path) -> None:
    queue = LocalQueue(clock=ManualClock())
    path = write(tmp_path, "job.csv", HEADER, GOOD, GOOD_2)
    _, first = submit_to(queue, path)
    _, second = submit_to(queue, path)  # no --job-id: the same file gets the same job id
    job_id = default_job_id(path.read_bytes())
    assert f"job {job_id}, 2 rows, 2 valid, 0 invalid, 2 sent, 1 batch(es), 0 absorbed as duplicates" in first
    assert "2 absorbed as duplicates" in second
    assert queue.stats.duplicates_dropped == 2
    assert [message_id.rsplit(":", 1)[0] for message_id, _ in drain(queue)] == [f"{job_id}:1", f"{job_id}:2"]


def test_given_a_dry_run_when_submitted_then_it_prints_what_would_be_sent_and_sends_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GRANTS_LOCAL_NAMESPACE", str(tmp_path / "ns"))
    from grants_cli.main import main

    assert (
        main(["submit", str(write(tmp_path, "job.csv", HEADER, GOOD)), "--job-id", "dry", "--dry-run", "--local"]) == 0
    )
    out = capsys.readouterr().out
    message_id, body = out.splitlines()[0].split("  ", 1)
    assert re.fullmatch(r"dry:1:[0-9a-f]{16}", message_id)
    assert json.loads(body)["member"] == {"id": USER, "type": "user"}
    assert "dry run: nothing sent; would send 1 message(s)" in out
    assert not (tmp_path / "ns").exists()


def test_given_an_expiry_out_of_range_in_utc_when_dry_run_then_an_invalid_row_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from grants_cli.main import main

    late = GOOD[: GOOD.rindex(",") + 1] + "9999-12-31T23:59:59-01:00"
    early = GOOD_2[: GOOD_2.rindex(",") + 1] + "0001-01-01T00:00:00+01:00"
    path = write(tmp_path, "job.csv", HEADER, GOOD, late, early)
    assert main(["submit", str(path), "--job-id", "dry", "--dry-run", "--local"]) == 1
    out = capsys.readouterr().out
    assert "line 3: SchemaViolation: expiresAt must be" in out
    assert "line 4: SchemaViolation: expiresAt must be" in out
    assert "Traceback" not in out


def test_given_json_lines_when_read_then_each_line_is_validated_with_its_line_number(tmp_path: Path) -> None:
    good = message(requestId="r-1", member={"id": USER}, source={"system": "bulk"})
    job = read_job(write(tmp_path, "job.jsonl", json.dumps(good), "", "{oops", json.dumps({**good, "x": 1})))
    assert [m.message_id.rsplit(":", 1)[0] for m in job.messages] == [f"{job.job_id}:1"]
    assert [(i.line, i.reason) for i in job.invalid] == [(3, "InvalidJson"), (4, "SchemaViolation")]


def test_given_one_request_id_on_two_rows_asking_different_things_then_the_second_row_is_a_conflict(
    tmp_path: Path,
) -> None:
    """Issue 13, 1: a reused requestId is refused at validation (RequestIdConflict), never silently dropped."""
    first = message(requestId="CHG0042", member={"id": USER}, source={"system": "bulk"})
    second = {**first, "member": {"id": "25c1a2d5-9101-44b2-83ab-885db8a647cb"}}
    job = read_job(write(tmp_path, "job.jsonl", json.dumps(first), json.dumps(second), json.dumps(first)))
    rows = [m.message_id.rsplit(":", 1)[0] for m in job.messages]
    assert rows == [f"{job.job_id}:1", f"{job.job_id}:3"]  # the same request twice
    assert [(i.line, i.reason) for i in job.invalid] == [(2, "RequestIdConflict")]


def test_given_a_pipe_when_sending_then_progress_is_printed_in_lines_ending_at_the_total() -> None:
    stream = io.StringIO()
    progress = Progress(250, stream=stream)
    for done in range(0, 251, 25):
        progress(done)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert len(lines) == 11
    assert lines[-1].endswith("250/250")


def test_given_outgoing_messages_when_adapted_then_service_bus_messages_carry_id_properties_and_type() -> None:
    message = to_service_bus_message(
        Outgoing(body=b"{}", message_id="job:1", application_properties={"bulkJob": "job"})
    )
    assert isinstance(message, ServiceBusMessage)
    assert message.message_id == "job:1"
    assert message.application_properties == {"bulkJob": "job"}
    assert message.content_type == "application/json"
    assert b"".join(message.body) == b"{}"


def test_given_small_real_batches_when_filled_then_each_is_sent_when_full_and_none_is_lost() -> None:
    sent: list[list[str]] = []
    messages = [ServiceBusMessage(b"x" * 100, message_id=f"m{i}") for i in range(10)]
    batches = fill_batches(
        messages,
        new_batch=lambda: ServiceBusMessageBatch(max_size_in_bytes=600),
        send_batch=lambda batch: sent.append([m.message_id for m in batch._messages]),
    )
    assert batches == len(sent) == 3
    assert [len(batch) for batch in sent] == [4, 4, 2]
    assert [message_id for batch in sent for message_id in batch] == [f"m{i}" for i in range(10)]
    with pytest.raises(MessageSizeExceededError):
        fill_batches(
            [ServiceBusMessage(b"x" * 1000)],
            new_batch=lambda: ServiceBusMessageBatch(max_size_in_bytes=600),
            send_batch=lambda batch: None,
        )
