"""``grants status REQUEST_ID`` and ``grants job JOB_ID``: what the app's status API answers, for an operator.

Both read ``GET /api/grants/{requestId}`` / ``GET /api/jobs/{jobId}``: in Azure at ``--url`` (or
``GRANTS_APP_URL``, e.g. ``https://<app>.azurewebsites.net``) with the function key ``--key`` (or
``GRANTS_FUNCTION_KEY``, sent as ``x-functions-key``); with ``--local``, at ``serve-local``'s
``http://127.0.0.1:7071`` (``--port``), whose ledger lives as long as serve-local runs. (``submit --local`` and
``dlq --local`` use the local namespace, which runs no app and keeps no ledger: their requests have no status.)

The id is checked with the contract's rule before any request. Everything printed that came from a message is
escaped (`printable`). Exit codes: ``status`` 0 when the request is known (whatever its status: read it), ``job``
0 when every row recorded so far succeeded; 1 otherwise (unknown, or failed rows); 2 when the id is invalid or
the API cannot be reached or refuses the call. A job's rows are recorded as they end: ``requests recorded``
below the job's row count (``submit`` prints it) means rows are still queued.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, TextIO
from urllib.parse import quote

import httpx

from grants_cli.printable import printable
from shared.core.contract import is_request_id

__all__ = ["add_parsers", "main"]

_ROWS = (
    ("action", "action"),
    ("targetType", "target type"),
    ("targetId", "target"),
    ("roleTemplateId", "role template"),
    ("memberId", "member"),
    ("sourceSystem", "source"),
    ("sourceReference", "reference"),
    ("requestedBy", "requested by"),
    ("jobId", "job"),
    ("requestedAt", "requested at"),
    ("expiresAt", "expires at"),
    ("acceptedAt", "accepted at"),
    ("attempts", "attempts"),
    ("lastAttemptAt", "last attempt"),
    ("graphRequestId", "graph request"),
    ("reason", "reason"),
    ("description", "description"),
    ("updatedAt", "updated at"),
)


def add_parsers(commands: Any) -> None:
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--url", help="the function app, e.g. https://<app>.azurewebsites.net (GRANTS_APP_URL)")
    where.add_argument("--key", help="a function key (GRANTS_FUNCTION_KEY)")
    where.add_argument("--local", action="store_true", help="ask serve-local on 127.0.0.1 (--port)")
    where.add_argument("--port", type=int, default=7071, help="serve-local's port (with --local)")
    where.add_argument("--json", action="store_true", help="print the API's JSON as it is")
    status = commands.add_parser("status", parents=[where], help="a request's status, from the grant ledger")
    status.add_argument("request_id", metavar="REQUEST_ID")
    job = commands.add_parser("job", parents=[where], help="a bulk job's totals by status, and its failed rows")
    job.add_argument("job_id", metavar="JOB_ID")
    job.add_argument("--failed", action="store_true", help="print every failed row with its reason")


def main(args: argparse.Namespace, *, out: TextIO, err: TextIO, transport: httpx.BaseTransport | None = None) -> int:
    identifier = args.request_id if args.command == "status" else args.job_id
    if not is_request_id(identifier):
        err.write(f"error: {printable(identifier)!s} is not a valid id (1 to 128 of A-Z a-z 0-9 . _ : @ -)\n")
        return 2
    key: str | None = None
    if args.local:
        base = f"http://127.0.0.1:{args.port}"
    else:
        base = args.url or os.environ.get("GRANTS_APP_URL") or ""
        key = args.key or os.environ.get("GRANTS_FUNCTION_KEY")
        if not base:
            err.write("error: give --url (or GRANTS_APP_URL) and --key (or GRANTS_FUNCTION_KEY), or --local\n")
            return 2
    route = "grants" if args.command == "status" else "jobs"
    url = f"{base.rstrip('/')}/api/{route}/{quote(identifier, safe='@')}"
    headers = {"x-functions-key": key} if key else {}
    try:
        with httpx.Client(timeout=30, transport=transport, follow_redirects=False) as client:
            response = client.get(url, headers=headers)
    except httpx.HTTPError as error:
        err.write(f"error: {printable(base)} could not be reached: {printable(type(error).__name__)}\n")
        return 2
    try:
        document = response.json()
    except ValueError:
        document = None
    if response.status_code == 404 and isinstance(document, dict):
        if args.json:
            out.write(json.dumps(document, ensure_ascii=True) + "\n")
        else:
            err.write(f"{printable(document.get('detail', 'unknown'))}\n")
        return 1
    if response.status_code != 200 or not isinstance(document, dict):
        detail = document.get("detail") if isinstance(document, dict) else response.reason_phrase
        err.write(f"error: the status API answered {response.status_code}: {printable(detail)}\n")
        return 2
    if args.json:
        out.write(json.dumps(document, ensure_ascii=True, indent=2) + "\n")
    elif args.command == "status":
        _print_status(document, out)
    else:
        _print_job(document, out, failed=args.failed)
    if args.command == "status":
        return 0
    return 0 if document.get("succeeded") == document.get("requests") else 1


def _print_status(record: dict[str, Any], out: TextIO) -> None:
    out.write(f"request {printable(record.get('requestId'))}: {printable(record.get('status'))}\n")
    for name, label in _ROWS:
        value = record.get(name)
        if value is not None and value != "":
            out.write(f"  {label:<14} {printable(value)}\n")


def _print_job(document: dict[str, Any], out: TextIO, *, failed: bool) -> None:
    totals = document.get("totals") or {}
    summary = ", ".join(f"{printable(status)} {printable(count)}" for status, count in totals.items())
    out.write(
        f"job {printable(document.get('jobId'))}: {printable(document.get('requests'))} requests recorded, "
        f"{printable(document.get('succeeded'))} succeeded, {len(document.get('failed') or [])} failed\n"
    )
    out.write(f"  {summary}\n")
    if failed:
        for row in document.get("failed") or []:
            out.write(
                f"  {printable(row.get('requestId'))}  {printable(row.get('reason'))}  "
                f"{printable(row.get('description'))}\n"
            )
