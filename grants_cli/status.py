"""What the app's status API answers, for an operator: ``grants status REQUEST_ID``, ``grants job JOB_ID``,
``grants hr-event EVENT_ID`` and ``grants history (--member ID | --target ID)``.

They read ``GET /api/grants/{requestId}``, ``/api/jobs/{jobId}``, ``/api/hr-events/{eventId}`` and
``/api/history?member=…|target=…[&since=…]``: in Azure at ``--url`` (or ``GRANTS_APP_URL``, e.g.
``https://<app>.azurewebsites.net``) with an Entra ID token for the function app (App Service authentication):
``--token`` (or ``GRANTS_API_TOKEN``) as it is, else one the Azure CLI's or the environment's credential gets for
``--scope`` (or ``GRANTS_API_SCOPE``, e.g. ``api://<app client id>/.default``); what the token's principal reads is
its rights' (docs/status-api.md). With ``--serve-local``, at a running ``serve-local``'s ``http://127.0.0.1:7071``
(``--port``), as its local operator (``--as reader``, or ``--as <producer>`` to read as one), whose ledger lives as
long as serve-local runs (``submit --serve-local`` sends a job there). ``--producer`` names the producer whose
request, job or event it is, where two producers used one id. ``--local`` means the in-process local namespace
everywhere (``submit``, ``dlq``, ``smoke``), which keeps no ledger: here it is refused with one line saying so.

Ids are checked before any request: request, job and event ids with the contract's rule, ``--member`` and
``--target`` as GUIDs. Everything printed that came from the API is escaped (`printable`).

``job`` and ``hr-event`` print how many of the requests sent have ended (``rows``, ``terminal``), how many
succeeded and failed, the totals by status, and with ``--failed`` each failed row. ``--failed-csv FILE`` writes
the failed rows as a bulk CSV to fix and resubmit (`grants_cli.bulk.write_failed_csv`). ``--watch`` polls every
``--interval`` seconds until every row has ended, showing progress on stderr (one line redrawn on a terminal,
otherwise a line whenever the counts change), then prints the same summary. While watching, a 404 means no row is
recorded yet (it waits), a 503 means the ledger is unavailable (it waits, at least ``Retry-After``), and once the
API has answered, a failed connection is retried; any other answer ends the watch.

Exit codes: ``status`` 0 when the request is known (whatever its status: read it), 1 when it is not. ``job`` and
``hr-event`` 0 when every row has ended and succeeded, 1 otherwise (failed rows, rows still running, or an unknown
job); with ``--watch``, 2 when ``--timeout`` seconds pass before every row has ended. ``history`` 0 when the API
answered (even with no request). All: 2 when an id is invalid or the API cannot be reached or refuses the call;
130 when stopped with Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO
from urllib.parse import quote

import httpx

from grants_cli.bulk import write_failed_csv
from grants_common.printable import printable
from shared.core.contract import Guid, is_request_id, parse_guid
from shared.core.errors import ContractError

__all__ = ["add_parsers", "main", "unreachable"]

#: The exit code of a command stopped by Ctrl-C (SIGINT): 128 + 2, as `grants_cli.main` (which imports this module).
_INTERRUPTED_EXIT: Final = 130

_ROWS = (
    ("producer", "producer"),
    ("action", "action"),
    ("targetType", "target type"),
    ("targetId", "target"),
    ("roleTemplateId", "role template"),
    ("roleDefinitionId", "definition"),
    ("directoryScopeId", "scope"),
    ("memberId", "member"),
    ("sourceSystem", "source"),
    ("sourceReference", "reference"),
    ("requestedBy", "requested by"),
    ("jobId", "job"),
    ("hrEventId", "HR event"),
    ("jobRow", "row"),
    ("requestedAt", "requested at"),
    ("intentAt", "intent at"),
    ("expiresAt", "expires at"),
    ("removal", "removal"),
    ("heldBy", "held by"),
    ("scheduledFor", "scheduled for"),
    ("acceptedAt", "accepted at"),
    ("attempts", "attempts"),
    ("firstAttemptAt", "first attempt"),
    ("lastAttemptAt", "last attempt"),
    ("nextRetryAt", "next retry"),
    ("graphRequestId", "graph request"),
    ("reason", "reason"),
    ("description", "description"),
    ("updatedAt", "updated at"),
)
_EVENT_ROWS = (
    ("eventType", "event type"),
    ("employeeId", "employee"),
    ("outcome", "outcome"),
    ("scheduledFor", "scheduled for"),
    ("description", "description"),
)
#: job and hr-event: the route and how a job is named in what is printed.
_FOLLOWED: Final[Mapping[str, tuple[str, str]]] = {"job": ("jobs", "job"), "hr-event": ("hr-events", "HR event")}
_BAR_WIDTH: Final = 30


def api_arguments() -> argparse.ArgumentParser:
    """The parent parser of every command that asks the app's HTTP API: ``--url`` with ``--token`` or ``--scope``
    (Azure), ``--serve-local``/``--port``/``--as`` (a running serve-local), ``--local`` (refused: the local namespace
    has no API) and ``--json`` (`api_location` reads them)."""
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--url", help="the function app, e.g. https://<app>.azurewebsites.net (GRANTS_APP_URL)")
    where.add_argument("--token", help="an Entra ID access token for the function app (GRANTS_API_TOKEN)")
    where.add_argument(
        "--scope", help="get a token for this scope, e.g. api://<app client id>/.default (GRANTS_API_SCOPE)"
    )
    where.add_argument("--serve-local", action="store_true", help="ask a running serve-local on 127.0.0.1 (--port)")
    where.add_argument("--port", type=int, default=7071, help="serve-local's port (default 7071)")
    where.add_argument(
        "--as",
        dest="as_",
        default=LOCAL_OPERATOR,
        metavar="WHO",
        help="with --serve-local: ask as its operator (default), reader, or a producer's name",
    )
    where.add_argument(
        "--local", action="store_true", help="not here: the local namespace keeps no ledger (use --serve-local)"
    )
    where.add_argument("--json", action="store_true", help="print the API's JSON as it is")
    return where


def add_parsers(commands: Any) -> None:
    where = api_arguments()
    where.add_argument(
        "--producer", help="the producer whose request, job or event it is, where two producers used one id"
    )
    follow = argparse.ArgumentParser(add_help=False)
    follow.add_argument("--watch", action="store_true", help="poll until every row has ended, showing progress")
    follow.add_argument(
        "--interval", type=_seconds, default=2.0, metavar="SECONDS", help="seconds between polls (default 2)"
    )
    follow.add_argument(
        "--timeout", type=_seconds, metavar="SECONDS", help="with --watch: give up after this many seconds (exit 2)"
    )
    follow.add_argument("--failed", action="store_true", help="print every failed row with its reason")
    follow.add_argument(
        "--failed-csv", type=Path, metavar="FILE", help="write the failed rows as a bulk CSV to fix and resubmit"
    )
    status = commands.add_parser("status", parents=[where], help="a request's status, from the grant ledger")
    status.add_argument("request_id", metavar="REQUEST_ID")
    job = commands.add_parser("job", parents=[where, follow], help="a bulk job's progress, totals and failed rows")
    job.add_argument("job_id", metavar="JOB_ID")
    event = commands.add_parser(
        "hr-event", parents=[where, follow], help="an HR event's grants: progress, totals and failed rows"
    )
    event.add_argument("event_id", metavar="EVENT_ID")
    history = commands.add_parser("history", parents=[where], help="the requests that touched a member or a target")
    subject = history.add_mutually_exclusive_group(required=True)
    subject.add_argument("--member", metavar="ID", help="a member's object id (GUID)")
    subject.add_argument("--target", metavar="ID", help="a target's object id (GUID)")
    history.add_argument("--since", metavar="DATE", help="only requests since YYYY-MM-DD or an RFC 3339 time")


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text}")
    return value


def main(
    args: argparse.Namespace,
    *,
    out: TextIO,
    err: TextIO,
    transport: httpx.BaseTransport | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Run ``status``, ``job``, ``hr-event`` or ``history`` as parsed into `args`; return the exit code (see the
    module). `sleep` waits between polls of ``--watch`` and `clock` measures its ``--timeout`` (seconds)."""
    try:
        return _run(args, out=out, err=err, transport=transport, sleep=sleep, clock=clock)
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback
        err.write("interrupted: nothing was changed (these commands only read)\n")
        return _INTERRUPTED_EXIT


def _run(
    args: argparse.Namespace,
    *,
    out: TextIO,
    err: TextIO,
    transport: httpx.BaseTransport | None,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> int:
    if args.command == "history":
        try:
            subject = _history_subject(args)
        except ContractError as error:
            err.write(f"error: {printable(error.description)}\n")
            return 2
    else:
        identifier = _identifier(args)
        if not is_request_id(identifier):
            err.write(f"error: {printable(identifier)} is not a valid id (1 to 128 of A-Z a-z 0-9 . _ : @ -)\n")
            return 2
    where = api_location(args, err)
    if where is None:
        return 2
    local = args.serve_local
    with httpx.Client(timeout=30, transport=transport, follow_redirects=False, trust_env=not local) as client:
        api = _Api(client=client, base=where[0], headers=where[1], serve_local=local, producer=args.producer)
        if args.command == "history":
            return _history(api, args, subject=subject, out=out, err=err)
        if args.command == "status":
            return _status(api, args, out=out, err=err)
        return _follow(api, args, out=out, err=err, sleep=sleep, clock=clock)


def _identifier(args: argparse.Namespace) -> str:
    """The request, job or event id of a ``status``, ``job`` or ``hr-event`` command."""
    return str(getattr(args, {"status": "request_id", "job": "job_id", "hr-event": "event_id"}[args.command]))


def _history_subject(args: argparse.Namespace) -> tuple[str, Guid]:
    """``("member", guid)`` or ``("target", guid)``; raise `ContractError` when the GUID is not one."""
    name = "member" if args.member is not None else "target"
    return name, parse_guid(getattr(args, name), field=f"--{name}")


#: Who a command asks a running serve-local as, by default: its operator (serve-local stands in for App Service
#: authentication with local tokens: `grants_local.serve`).
LOCAL_OPERATOR: Final = "operator"


def api_location(args: argparse.Namespace, err: TextIO) -> tuple[str, dict[str, str]] | None:
    """The API's base URL and the headers that authenticate the caller (`api_arguments`), or None (said on `err`)
    when neither ``--url`` nor ``--serve-local``, or no token could be had."""
    if args.local:
        err.write(
            f"error: --local is the in-process namespace, which keeps no status; to ask a running serve-local: "
            f"grants {args.command} … --serve-local\n"
        )
        return None
    if args.serve_local:
        return f"http://127.0.0.1:{args.port}", {"Authorization": f"Bearer local:{args.as_}"}
    base = args.url or os.environ.get("GRANTS_APP_URL") or ""
    token = args.token or os.environ.get("GRANTS_API_TOKEN") or ""
    scope = args.scope or os.environ.get("GRANTS_API_SCOPE") or ""
    if not base or not (token or scope):
        err.write(
            "error: give --url (or GRANTS_APP_URL) with --token (GRANTS_API_TOKEN) or --scope (GRANTS_API_SCOPE), "
            "or --serve-local\n"
        )
        return None
    if not token:
        try:
            from azure.identity import DefaultAzureCredential

            with DefaultAzureCredential(exclude_interactive_browser_credential=True) as credential:
                token = credential.get_token(scope).token
        except Exception as error:  # the credential's own words, on one line
            err.write(f"error: no token for {printable(scope)}: {printable(str(error).splitlines()[0])}\n")
            return None
    return base, {"Authorization": f"Bearer {token}"}


@dataclass(frozen=True, slots=True)
class _Reply:
    """An HTTP answer: status code, its JSON (None when not JSON), reason phrase and ``Retry-After`` seconds."""

    status: int
    document: Any
    reason: str
    retry_after: float | None

    def detail(self) -> str:
        """The problem's ``detail``, else the reason phrase (escaped)."""
        if isinstance(self.document, dict) and "detail" in self.document:
            return printable(self.document["detail"])
        return printable(self.reason)


@dataclass(frozen=True, slots=True)
class _Api:
    """The status API at `base`, called with `client` and the `headers` that authenticate the caller."""

    client: httpx.Client
    base: str
    headers: Mapping[str, str]
    serve_local: bool = False
    producer: str | None = None

    def get(self, route: str, params: Mapping[str, str] | None = None) -> _Reply:
        """``GET {base}/api/{route}`` (``?producer=`` when one is named); raise `httpx.HTTPError` when no answer
        came."""
        params = {**(params or {}), **({"producer": self.producer} if self.producer else {})}
        url = f"{self.base.rstrip('/')}/api/{route}"
        response = self.client.get(url, params=params or None, headers=self.headers)
        try:
            document = response.json()
        except ValueError:
            document = None
        retry_after = response.headers.get("retry-after", "")
        return _Reply(
            response.status_code,
            document,
            response.reason_phrase,
            float(retry_after) if retry_after.isdigit() else None,
        )

    def unreachable(self, error: httpx.HTTPError) -> str:
        """The line saying the API could not be reached (`unreachable`)."""
        return unreachable(self.base, error, serve_local=self.serve_local)


def unreachable(base: str, error: httpx.HTTPError, *, serve_local: bool) -> str:
    """The one line (newline included) saying `base` (``scheme://host:port``) gave no answer: for a serve-local, the
    command that starts it on that port; otherwise the kind of `error` (``ConnectError``, ``ReadTimeout``…)."""
    if serve_local:
        port = base.rstrip("/").rpartition(":")[2]
        return (
            f"error: no serve-local answers on {printable(base)}: start it in another terminal with "
            f"`.venv/bin/grants serve-local --port {printable(port)}`\n"
        )
    return f"error: {printable(base)} could not be reached: {printable(type(error).__name__)}\n"


def _refused(reply: _Reply, err: TextIO) -> int:
    err.write(f"error: the status API answered {reply.status}: {reply.detail()}\n")
    return 2


def _print_json(document: Any, out: TextIO) -> None:
    out.write(json.dumps(document, ensure_ascii=True, indent=2) + "\n")


def _read(api: _Api, route: str, args: argparse.Namespace, *, out: TextIO, err: TextIO) -> dict[str, Any] | int:
    """The document the API answers with 200 at `route`, or else the exit code: 1 for a 404 problem (its detail
    printed, or its JSON with ``--json``), 2 when the API cannot be reached or refuses (said on `err`)."""
    try:
        reply = api.get(route)
    except httpx.HTTPError as error:
        err.write(api.unreachable(error))
        return 2
    if reply.status == 404 and isinstance(reply.document, dict):
        if args.json:
            _print_json(reply.document, out)
        else:
            err.write(f"{reply.detail()}\n")
        return 1
    if reply.status != 200 or not isinstance(reply.document, dict):
        return _refused(reply, err)
    return reply.document


def _status(api: _Api, args: argparse.Namespace, *, out: TextIO, err: TextIO) -> int:
    record = _read(api, f"grants/{quote(_identifier(args), safe='@')}", args, out=out, err=err)
    if isinstance(record, int):
        return record
    if args.json:
        _print_json(record, out)
    else:
        out.write(f"request {printable(record.get('requestId'))}: {printable(record.get('status'))}\n")
        _print_fields(record, _ROWS, out)
    return 0


def _print_fields(record: Mapping[str, Any], rows: tuple[tuple[str, str], ...], out: TextIO) -> None:
    for name, label in rows:
        value = record.get(name)
        if isinstance(value, Mapping):  # a time-bound grant's removal: its status, and when or by which request
            value = " ".join(str(value[key]) for key in ("status", "dueAt", "requestId", "reason") if value.get(key))
        if isinstance(value, list):  # a released request's: what keeps the membership
            value = _holders(value)
        if value is not None and value != "":
            out.write(f"  {label:<14} {printable(value)}\n")


def _holders(held: list[Any]) -> str:
    """``heldBy`` in words: each grant as ``producer request (until …)``, a membership the app did not make as
    ``pre-existing``; ``nothing of the app's`` when empty."""
    named: list[str] = []
    for holder in held:
        if not isinstance(holder, Mapping):
            continue
        if holder.get("preexisting"):
            named.append("pre-existing (made outside the app)")
            continue
        words = [str(holder.get("producer") or "?")]
        words += [str(holder["requestId"])] if holder.get("requestId") else []
        words += [f"(until {holder['expiresAt']})"] if holder.get("expiresAt") else []
        named.append(" ".join(words))
    return ", ".join(named) or "nothing of the app's"


# job and hr-event


def _follow(
    api: _Api,
    args: argparse.Namespace,
    *,
    out: TextIO,
    err: TextIO,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> int:
    route, kind = _FOLLOWED[args.command]
    identifier = _identifier(args)
    name = f"{kind} {printable(identifier)}"
    path = f"{route}/{quote(identifier, safe='@')}"
    if not args.watch:
        document = _read(api, path, args, out=out, err=err)
        return document if isinstance(document, int) else _report(document, args, name=name, out=out, err=err)
    progress = _ProgressLine(err)
    try:
        return _watch(api, path, args, name=name, progress=progress, out=out, err=err, sleep=sleep, clock=clock)
    except KeyboardInterrupt:
        progress.close()
        command = f"grants {args.command} {shlex.quote(identifier)} --watch"
        err.write(f"interrupted: stopped watching {name}; it goes on in the app ({printable(command)} again)\n")
        return _INTERRUPTED_EXIT


def _watch(
    api: _Api,
    path: str,
    args: argparse.Namespace,
    *,
    name: str,
    progress: _ProgressLine,
    out: TextIO,
    err: TextIO,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> int:
    """Poll `path` until its document says ``done`` (then report it), or until ``--timeout`` (exit 2)."""
    started = clock()
    answered = False
    last: dict[str, Any] | None = None
    while True:
        wait = args.interval
        try:
            reply = api.get(path)
        except httpx.HTTPError as error:
            if not answered:
                err.write(api.unreachable(error))
                return 2
            progress.show(f"{name}: the status API could not be reached ({printable(type(error).__name__)}): retrying")
        else:
            answered = True
            if reply.status == 200 and isinstance(reply.document, dict):
                last = reply.document
                progress.show(_progress_text(last, name))
                if last.get("done") is True:
                    progress.close()
                    return _report(last, args, name=name, out=out, err=err)
            elif reply.status == 404 and isinstance(reply.document, dict):
                progress.show(f"{name}: no row recorded yet: waiting")
            elif reply.status == 503:
                progress.show(f"{name}: the status API is unavailable ({reply.detail()}): retrying")
                wait = max(wait, reply.retry_after or 0)
            else:
                progress.close()
                return _refused(reply, err)
        if args.timeout is not None:
            remaining = args.timeout - (clock() - started)
            if remaining <= 0:
                progress.close()
                err.write(f"{name}: still running after {args.timeout:g} s\n")
                if last is not None:
                    _report(last, args, name=name, out=out, err=err)
                return 2
            wait = min(wait, remaining)
        sleep(wait)


class _ProgressLine:
    """Progress on `stream`: one line redrawn with ``\\r`` on a terminal, otherwise a line each time it changes."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._last = ""
        self._width = 0  # the redrawn line's length; 0 when no line is open

    def show(self, text: str) -> None:
        """Show `text` (already escaped) unless it is what is shown."""
        if text == self._last:
            return
        self._last = text
        if self._tty:
            self._stream.write("\r" + text.ljust(self._width))
            self._width = len(text)
        else:
            self._stream.write(text + "\n")
        self._stream.flush()

    def close(self) -> None:
        """End the redrawn line, so that what follows starts on a line of its own."""
        if self._width:
            self._stream.write("\n")
            self._stream.flush()
            self._width = 0


def _count(document: Mapping[str, Any], name: str) -> int | None:
    value = document.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _shown(count: int | None) -> str:
    return "?" if count is None else str(count)


def _totals(document: Mapping[str, Any]) -> str:
    totals = document.get("totals")
    if not isinstance(totals, dict):
        return ""
    return ", ".join(f"{printable(status)} {printable(count)}" for status, count in totals.items())


def _failed_rows(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    failed = document.get("failed")
    return [row for row in failed if isinstance(row, dict)] if isinstance(failed, list) else []


def _progress_text(document: Mapping[str, Any], name: str) -> str:
    """``job x [#####.....] 6/10 ended  granted 5, in_progress 4, dead_lettered 1`` (no bar when the row count
    is not known)."""
    rows, terminal = _count(document, "rows"), _count(document, "terminal")
    if rows is None:
        head = f"{name}: {_shown(_count(document, 'recorded'))} recorded, {_shown(terminal)} ended"
    else:
        filled = _BAR_WIDTH * min(terminal or 0, rows) // max(rows, 1)
        head = f"{name} [{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {_shown(terminal)}/{rows} ended"
    return f"{head}  {_totals(document)}"


def _summary(document: Mapping[str, Any], name: str) -> str:
    """``job x: 6 of 10 requests ended, 5 succeeded, 1 failed, 4 still running``."""
    rows, terminal = _count(document, "rows"), _count(document, "terminal")
    recorded, pending = _count(document, "recorded"), _count(document, "pending")
    if rows is None:
        head = f"{name}: {_shown(recorded)} requests recorded (how many were sent is not known)"
        pending = recorded - terminal if recorded is not None and terminal is not None else None
    else:
        head = f"{name}: {_shown(terminal)} of {rows} requests ended"
    head += f", {_shown(_count(document, 'succeeded'))} succeeded, {len(_failed_rows(document))} failed"
    return head + (f", {pending} still running" if pending else "")


def _report(document: dict[str, Any], args: argparse.Namespace, *, name: str, out: TextIO, err: TextIO) -> int:
    """Print `document` (a job's or an HR event's answer), write ``--failed-csv``; 0 when every row succeeded."""
    if args.json:
        _print_json(document, out)
    else:
        out.write(_summary(document, name) + "\n")
        out.write(f"  {_totals(document)}\n")
        event = document.get("event")
        if isinstance(event, dict):
            _print_fields(event, _EVENT_ROWS, out)
        if args.failed:
            for row in _failed_rows(document):
                out.write(
                    f"  row {_shown(_count(row, 'jobRow'))}  {printable(row.get('requestId'))}  "
                    f"{printable(row.get('reason'))}  {printable(row.get('description'))}\n"
                )
    if args.failed_csv is not None:
        with args.failed_csv.open("w", encoding="utf-8", newline="") as stream:
            written = write_failed_csv(_failed_rows(document), stream)
        err.write(f"{written} failed row(s) written to {printable(args.failed_csv)}\n")
    rows = _count(document, "rows")
    succeeded = document.get("done") is True and rows is not None and _count(document, "succeeded") == rows
    return 0 if succeeded else 1


# history


def _history(api: _Api, args: argparse.Namespace, *, subject: tuple[str, Guid], out: TextIO, err: TextIO) -> int:
    name, guid = subject
    params = {name: guid} | ({"since": args.since} if args.since is not None else {})
    try:
        reply = api.get("history", params)
    except httpx.HTTPError as error:
        err.write(api.unreachable(error))
        return 2
    if reply.status != 200 or not isinstance(reply.document, dict):
        return _refused(reply, err)
    if args.json:
        _print_json(reply.document, out)
        return 0
    requests = reply.document.get("requests")
    records = [record for record in requests if isinstance(record, dict)] if isinstance(requests, list) else []
    since = reply.document.get("since")
    when = f" since {printable(since)}" if since else ""
    if not records:
        out.write(f"no request touched {name} {guid}{when}\n")
        return 0
    out.write(f"{len(records)} request(s) touched {name} {guid}{when}, newest first:\n")
    for record in records:
        out.write(_history_line(record) + "\n")
    return 0


def _history_line(record: Mapping[str, Any]) -> str:
    """One request: intent time, status (reason), action, target, member, source, requested by, Graph request."""

    def field(name: str) -> str:
        value = record.get(name)
        return "-" if value is None or value == "" else printable(value)

    status = field("status") + (f" ({field('reason')})" if record.get("reason") else "")
    if record.get("targetType") == "scopedRole":
        target = f"scopedRole {field('roleTemplateId')} in {field('targetId')}"
    elif record.get("roleDefinitionId"):
        target = f"{field('targetType')} {field('roleDefinitionId')} at {field('directoryScopeId')}"
    elif record.get("targetId"):
        target = f"{field('targetType')} {field('targetId')}"
    else:
        target = f"{field('targetType')} template {field('roleTemplateId')}"
    return (
        f"{field('intentAt')}  {status}  {field('action')}  {target}  member {field('memberId')}  "
        f"source {field('sourceSystem')}/{field('sourceReference')}  by {field('requestedBy')}  "
        f"graph {field('graphRequestId')}"
    )
