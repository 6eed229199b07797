"""Bulk jobs: a CSV or JSON-lines file of grants, validated as a whole, then sent in batches.

Every row becomes a contract-v1 message body and is read back with `shared.core.contract.parse_grant`, the
parser the trigger uses, so a job never sends what the app would dead-letter as bad input. Each message's
MessageId is ``<job-id>:<row>:<16 hex digits of the SHA-256 of the job id and the whole file>``: nobody who has not
the file itself can work one out and send under it first (duplicate detection would drop the real row), and sending
the same job again is absorbed by the queue's duplicate detection (within its window; after it, by the ledger:
the same request ids and content end ``duplicate``).

CSV (a header row, then one grant per row; empty cells are absent fields):
``action,targetType,targetId,roleTemplateId,administrativeUnitId,memberId,memberType,requestedBy,reason,expiresAt,``
``roleDefinitionId,directoryScopeId`` (the last two for a roleEligibility or roleAssignment row; a header may leave
out the columns its rows do not use) and optionally ``requestId`` and ``dryRun`` (``true``/``false``). Without a
``requestId`` column the request id is ``<job-id>:<row>``; ``source`` is ``{"system": "bulk", "reference":
<job-id>}``. The columns ``failedReason`` and ``failedDescription`` (what `write_failed_csv` adds) are read and
ignored. JSON lines: one message body per line, sent as it is. Rows are numbered from 1 (the CSV header is not a
row); errors name the file's line number.
Each message carries the application properties ``bulkJob`` (the job id), ``jobRow`` (its row) and ``jobRows``
(how many messages the job sends), from which the status API tells when the job has ended.

`write_failed_csv` writes a job's failed rows (the status API's records) back as such a CSV, to fix and submit
again as a new job.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shlex
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO

from grants_common.printable import printable
from grants_common.queues import Backend, BackendOpener, Outgoing, SendReport
from shared.core.contract import draft, parse_grant
from shared.core.errors import ContractError, Reason
from shared.core.intents import content_hash
from shared.core.messaging import BULK_JOB, JOB_ROW, JOB_ROWS

__all__ = [
    "CSV_COLUMNS",
    "FAILED_COLUMNS",
    "BulkJob",
    "Invalid",
    "Progress",
    "default_job_id",
    "print_dry_run",
    "print_invalid",
    "read_job",
    "run_submit",
    "submit",
    "summary",
    "write_failed_csv",
]

CSV_COLUMNS: Final = (
    "action",
    "targetType",
    "targetId",
    "roleTemplateId",
    "administrativeUnitId",
    "memberId",
    "memberType",
    "requestedBy",
    "reason",
    "expiresAt",
    "roleDefinitionId",
    "directoryScopeId",
)
_OPTIONAL_COLUMNS: Final = ("requestId", "dryRun")
#: Informational columns of `write_failed_csv`: why the row failed. `read_job` ignores them.
FAILED_COLUMNS: Final = ("failedReason", "failedDescription")


@dataclass(frozen=True, slots=True)
class Invalid:
    """A row that would be dead-lettered: its file line and why."""

    line: int
    reason: str
    description: str


@dataclass(frozen=True, slots=True)
class BulkJob:
    """A validated job: the messages to send (in row order) and the rows refused."""

    job_id: str
    rows: int
    messages: list[Outgoing]
    invalid: list[Invalid]


def default_job_id(content: bytes) -> str:
    """``job-`` and the first 12 hex digits of the file's SHA-256: the same file gets the same job id."""
    return "job-" + hashlib.sha256(content).hexdigest()[:12]


def read_job(path: Path, *, job_id: str | None = None) -> BulkJob:
    """Read and validate every row of `path` (``.csv`` is CSV, anything else JSON lines); send nothing."""
    content = path.read_bytes()
    job = job_id or default_job_id(content)
    if path.suffix.lower() == ".csv":
        rows = _csv_rows(content, job)
    else:
        rows = [(number, line) for number, line in enumerate(content.splitlines(), start=1) if line.strip()]
    valid: list[tuple[int, bytes]] = []
    invalid: list[Invalid] = []
    seen: dict[str, tuple[int, str]] = {}  # requestId -> (line, content hash): an id names one request
    for row, (line, body) in enumerate(rows, start=1):
        if isinstance(body, Invalid):
            invalid.append(body)
            continue
        try:
            command = parse_grant(body)
        except ContractError as error:
            invalid.append(Invalid(line, error.reason.value, error.description))
            continue
        first_line, asked = seen.setdefault(command.request_id, (line, content_hash(command)))
        if asked != content_hash(command):
            reason = Reason.REQUEST_ID_CONFLICT.value
            invalid.append(
                Invalid(line, reason, f"requestId {command.request_id} is line {first_line}'s, another request")
            )
            continue
        valid.append((row, body))
    nonce = hashlib.sha256(job.encode() + b"\x1f" + content).hexdigest()[:16]
    messages = [
        Outgoing(
            body=body,
            message_id=f"{job}:{row}:{nonce}",
            application_properties={BULK_JOB: job, JOB_ROW: row, JOB_ROWS: len(valid)},
        )
        for row, body in valid
    ]
    return BulkJob(job_id=job, rows=len(rows), messages=messages, invalid=invalid)


def _csv_rows(content: bytes, job_id: str) -> list[tuple[int, bytes | Invalid]]:
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        return [(1, Invalid(1, "InvalidCsv", f"the file is not UTF-8 (byte {error.start})"))]
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    header = reader.fieldnames or []
    unknown = [name for name in header if name not in CSV_COLUMNS + _OPTIONAL_COLUMNS + FAILED_COLUMNS]
    if unknown or not header:
        known = ",".join(CSV_COLUMNS)
        return [(1, Invalid(1, "InvalidCsv", f"unknown columns {unknown} (the columns are {known})"))]
    rows: list[tuple[int, bytes | Invalid]] = []
    try:
        for record in reader:
            line = reader.line_num
            if not any((value or "").strip() for value in record.values()):
                continue
            if None in record:
                rows.append((line, Invalid(line, "InvalidCsv", "the row has more cells than the header")))
                continue
            document = _document(record, request_id=f"{job_id}:{len(rows) + 1}", job_id=job_id)
            rows.append((line, json.dumps(document, separators=(",", ":")).encode()))
    except csv.Error as error:
        rows.append((reader.line_num, Invalid(reader.line_num, "InvalidCsv", str(error))))
    return rows


def _document(record: Mapping[str, str | None], *, request_id: str, job_id: str) -> dict[str, Any]:
    """The contract-v1 body for one CSV row (empty cells left out, so the parser names what is missing)."""
    cell = {key: (value or "").strip() for key, value in record.items() if (value or "").strip()}
    target = {
        key: cell[column]
        for key, column in (
            ("type", "targetType"),
            ("id", "targetId"),
            ("roleTemplateId", "roleTemplateId"),
            ("administrativeUnitId", "administrativeUnitId"),
            ("roleDefinitionId", "roleDefinitionId"),
            ("directoryScopeId", "directoryScopeId"),
        )
        if column in cell
    }
    member = {key: cell[column] for key, column in (("id", "memberId"), ("type", "memberType")) if column in cell}
    dry_run = cell.get("dryRun")
    return draft(
        requestId=cell.get("requestId", request_id),
        action=cell.get("action"),
        target=target,
        member=member,
        source={"system": "bulk", "reference": job_id},
        requestedBy=cell.get("requestedBy"),
        reason=cell.get("reason"),
        expiresAt=cell.get("expiresAt"),
        dryRun=None if dry_run is None else {"true": True, "false": False}.get(dry_run.lower(), dry_run),
    )


def write_failed_csv(records: Iterable[Mapping[str, Any]], stream: TextIO) -> int:
    """Write failed rows (status records, as the status API answers them) to `stream` as a bulk CSV; return how
    many.

    The columns are `CSV_COLUMNS` (``reason`` is the request's justification, the record's ``requestReason``), then
    ``failedReason`` and ``failedDescription`` (why it failed; `read_job` ignores them), and ``dryRun`` only when
    a row was a dry run. There is no ``requestId`` column: submitted again, the rows get new request ids. A
    scopedRole target's ``targetId`` (its administrative unit) goes to ``administrativeUnitId``; a directoryRole's
    object id to ``targetId``, or else its template to ``roleTemplateId``; a roleEligibility's or roleAssignment's
    ``roleDefinitionId`` and ``directoryScopeId`` to theirs. Cells that a spreadsheet would read
    as a formula (starting with ``= + - @``, a tab or a carriage return) get a leading ``'``, which stays in the
    text if the file is submitted as it is.
    """
    rows = [_failed_row(record) for record in records]
    columns = CSV_COLUMNS + FAILED_COLUMNS + (("dryRun",) if any("dryRun" in row for row in rows) else ())
    writer = csv.DictWriter(stream, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({name: _inert(value) for name, value in row.items()} for row in rows)
    return len(rows)


def _failed_row(record: Mapping[str, Any]) -> dict[str, str]:
    def text(name: str) -> str:
        value = record.get(name)
        return "" if value is None else str(value)

    kind, target_id, template = text("targetType"), text("targetId"), text("roleTemplateId")
    if kind in ("roleEligibility", "roleAssignment"):
        target = {"roleDefinitionId": text("roleDefinitionId"), "directoryScopeId": text("directoryScopeId")}
    elif kind == "scopedRole":
        target = {"roleTemplateId": template, "administrativeUnitId": target_id}
    elif kind == "directoryRole" and not target_id:
        target = {"roleTemplateId": template}
    else:
        target = {"targetId": target_id}
    row = {
        "action": text("action"),
        "targetType": kind,
        **target,
        "memberId": text("memberId"),
        "memberType": text("memberType"),
        "requestedBy": text("requestedBy"),
        "reason": text("requestReason"),
        "expiresAt": text("expiresAt"),
        "failedReason": text("reason"),
        "failedDescription": text("description"),
    }
    return row | ({"dryRun": "true"} if record.get("dryRun") is True else {})


def _inert(cell: str) -> str:
    """`cell` with a leading ``'`` when a spreadsheet would read it as a formula."""
    return "'" + cell if cell.startswith(("=", "+", "-", "@", "\t", "\r")) else cell


class Progress:
    """A progress line on `stream`: redrawn with ``\\r`` on a terminal, otherwise a line every 10 %."""

    def __init__(self, total: int, *, stream: TextIO = sys.stderr) -> None:
        self._total = total
        self._stream = stream
        self._tty = stream.isatty()
        self._last_tenth = -1

    def __call__(self, done: int) -> None:
        """Show that `done` of the messages have been sent."""
        width = 30
        filled = width * done // max(self._total, 1)
        text = f"sending [{'#' * filled}{'.' * (width - filled)}] {done}/{self._total}"
        if self._tty:
            self._stream.write("\r" + text + ("\n" if done >= self._total else ""))
        else:
            tenth = 10 * done // max(self._total, 1)
            if tenth == self._last_tenth:
                return
            self._last_tenth = tenth
            self._stream.write(text + "\n")
        self._stream.flush()


def submit(job: BulkJob, backend: Backend, *, progress: Progress) -> tuple[SendReport, float]:
    """Send the job's messages in batches; return the report and the elapsed seconds."""
    started = time.monotonic()
    report = backend.send_batches(job.messages, progress=progress)
    return report, time.monotonic() - started


def print_invalid(job: BulkJob, out: TextIO) -> None:
    """The refused rows, by line number (escaped: `printable`)."""
    for entry in job.invalid:
        out.write(f"line {entry.line}: {printable(entry.reason)}: {printable(entry.description)}\n")


def print_dry_run(job: BulkJob, out: TextIO) -> None:
    """What would be sent: MessageId and body of each message (escaped: `printable`)."""
    for message in job.messages:
        out.write(f"{printable(message.message_id)}  {printable(message.body.decode())}\n")


def summary(job: BulkJob, report: SendReport | None, elapsed: float) -> str:
    """The closing line: rows, valid, invalid, sent, batches, duplicates absorbed (when known), elapsed."""
    parts = [f"job {job.job_id}", f"{job.rows} rows", f"{len(job.messages)} valid", f"{len(job.invalid)} invalid"]
    if report is None:
        parts.append("0 sent")
    else:
        parts += [f"{report.sent} sent", f"{report.batches} batch(es)"]
        if report.duplicates is not None:
            parts.append(f"{report.duplicates} absorbed as duplicates")
    parts.append(f"{elapsed:.2f} s")
    return ", ".join(parts)


def run_submit(
    *,
    path: Path,
    job_id: str | None,
    dry_run: bool,
    skip_invalid: bool,
    open_backend: BackendOpener,
    queue: str,
    out: TextIO,
    err: TextIO,
) -> int:
    """``python -m shared submit``: exit code 0 when sent (or a clean dry run), 1 when rows are invalid or
    nothing was sent."""
    started = time.monotonic()
    job = read_job(path, job_id=job_id)
    print_invalid(job, out)
    if dry_run:
        print_dry_run(job, out)
        out.write(f"dry run: nothing sent; would send {len(job.messages)} message(s) to {queue}\n")
        out.write(summary(job, None, time.monotonic() - started) + "\n")
        return 1 if job.invalid and not skip_invalid else 0
    if job.invalid and not skip_invalid:
        out.write(
            f"{len(job.invalid)} invalid row(s): nothing sent. Fix them, or pass --skip-invalid to send the "
            f"{len(job.messages)} valid one(s).\n"
        )
        out.write(summary(job, None, time.monotonic() - started) + "\n")
        return 1
    if not job.messages:
        out.write(summary(job, None, time.monotonic() - started) + "\n")
        return 1
    with open_backend() as backend:
        report, _ = submit(job, backend, progress=Progress(len(job.messages), stream=err))
        out.write(summary(job, report, time.monotonic() - started) + "\n")
        follow = backend.follow(shlex.quote(job.job_id))
        if follow is not None:
            out.write(f"follow it: {printable(follow)}\n")
        backend.drain(out)
    return 0
