"""The ``grants`` command (also ``python -m shared``): the operator CLI and the local runs.

Everywhere, ``--local`` means the in-process local namespace (``submit``, ``dlq``, ``smoke``) and ``--serve-local`` a
running ``grants serve-local`` (``submit``, ``status``, ``job``, ``hr-event``, ``history``). Everyday mistakes (a
missing file, a port in use, no serve-local running) end with one line saying what to do, not a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import functools
import io
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from grants_common.queues import BackendOpener

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # before grpc loads: no C-core chatter on stderr


_DESCRIPTION = """\
Grant Entra ID memberships from Service Bus messages: operate the deployed app (submit bulk jobs, read and resubmit
dead letters, follow requests, smoke-check a deployment) or run it locally with no Azure account.

--local means the in-process local namespace (submit, dlq, smoke); --serve-local a running `grants serve-local`
(submit, status, job, hr-event, history). Start with `grants demo`."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("entra-grants")
    except PackageNotFoundError:  # a checkout without `pip install -e .`
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="grants", description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"grants (entra-grants) {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the app's outcome lines to stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run-local",
        help="run a JSON-lines file of messages through the local host",
        description="Run each line of MESSAGES (one message body per line) through the registered function on the "
        "local host, against GRAPH_BASE_URL or the built-in Graph double, on a virtual clock starting now.",
    )
    run.add_argument("messages", type=Path, help="one message body per line")
    run.add_argument(
        "--producer",
        help="the producer sending them: the lines arrive on its own queue (default: the producer the registry binds "
        "the grants queue to, `other` unless GRANTS_PRODUCERS says otherwise)",
    )
    run.add_argument("--json", action="store_true", help="print one JSON object per input line")
    run.add_argument("--concurrency", type=int, default=16, help="invocations at once (maxConcurrentCalls)")
    run.add_argument("--dry-run", action="store_true", help="read only: report what would change (GRANTS_DRY_RUN)")
    commands.add_parser(
        "demo",
        help="run the examples against the built-in Graph and token doubles",
        description="Run examples/hr-onboarding.jsonl, ticketing.jsonl and bulk.jsonl through the registered "
        "functions on the local host, against the built-in Graph double and token endpoint (seeded from "
        "examples/directory.json), on a virtual clock pinned to the examples' dates; print each message's outcome "
        "and the dead-letter queue. No Azure account, nothing to configure.",
    )
    serve = commands.add_parser(
        "serve-local",
        help="serve the app on loopback: webhook, status API, grants, bulk and HR queues (port 7071)",
        description="Serve the app on 127.0.0.1 until Ctrl-C: the webhook and status API, and in-process grants, "
        "bulk and hr-events queues drained through the registered functions, with the ledger in a local Azurite. "
        "Graph is GRAPH_BASE_URL (with IDENTITY_ENDPOINT) when set, else the built-in double.",
    )
    serve.add_argument("--port", type=int, default=7071, help="the port on 127.0.0.1 (default 7071)")
    _add_bulk_and_dlq(commands)
    from grants_cli.smoke import add_parser as add_smoke_parser

    add_smoke_parser(commands)
    from grants_cli.status import add_parsers as add_status_parsers

    add_status_parsers(commands)
    from grants_cli.drift import add_parser as add_drift_parser

    add_drift_parser(commands)
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.INFO if args.verbose else logging.ERROR)
    logging.basicConfig(level=logging.INFO, handlers=[handler])

    if args.command in ("run-local", "submit", "dlq"):
        try:
            return _run_local(args) if args.command == "run-local" else _bulk_or_dlq(args)
        except KeyboardInterrupt:  # Ctrl-C: one line, no traceback, a non-zero exit
            sys.stderr.write(f"interrupted: {_INTERRUPTED[args.command]}\n")
            return INTERRUPTED_EXIT
        except _Refused as refused:
            sys.stderr.write(f"grants {args.command}: error: {refused}\n")
            return 2

    if args.command in ("status", "job", "hr-event", "history"):
        from grants_cli.status import main as status

        return status(args, out=sys.stdout, err=sys.stderr)

    if args.command == "drift":
        from grants_cli.drift import main as drift

        return drift(args, out=sys.stdout, err=sys.stderr)

    if args.command == "smoke":
        from grants_cli.smoke import main as smoke

        return smoke(args, out=sys.stdout, err=sys.stderr)

    if args.command == "serve-local":
        from grants_local.serve import serve_local
        from shared.core.errors import ConfigError

        try:
            return asyncio.run(serve_local(sys.stdout, port=args.port))
        except KeyboardInterrupt:
            return 0
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise
            sys.stderr.write(
                f"grants serve-local: error: port {args.port} on 127.0.0.1 is in use (another serve-local, or func "
                "start?): stop that one, or give another with --port\n"
            )
            return 2
        except ConfigError as error:
            sys.stderr.write(f"grants serve-local: error: {error}\n")
            return 2

    from grants_local.demo import demo

    return asyncio.run(demo(sys.stdout))


#: The exit code of a command stopped by Ctrl-C (SIGINT), as a shell reports it: 128 + 2.
INTERRUPTED_EXIT = 130
_INTERRUPTED = {
    "run-local": "run-local stopped before every message reached an outcome; Graph changes already made stand "
    "(grants are idempotent: run the file again)",
    "submit": "submit stopped; messages already sent stay queued (sending the same file again is absorbed by "
    "duplicate detection within 10 minutes)",
    "dlq": "dlq stopped; every dead letter not reported as resubmitted or purged is still in the dead-letter queue",
}


def _run_local(args: argparse.Namespace) -> int:
    """``run-local``: on a virtual clock starting now (nothing scheduled is waited for in real time), against
    ``GRAPH_BASE_URL`` or, when it is unset, the built-in Graph double and token endpoint."""

    from grants_local.queue import ManualClock
    from grants_local.run import graph_environment, print_json, print_table, run_local

    lines = _read_input(args.messages).splitlines()
    clock = ManualClock(start=_start_time(args.messages))
    env = {**os.environ, **({"GRANTS_DRY_RUN": "true"} if args.dry_run else {})}
    with graph_environment(env, clock=clock) as graph_env:
        result = asyncio.run(
            run_local(lines, env=graph_env, clock=clock, concurrency=args.concurrency, producer=args.producer)
        )
    if args.json:
        print_json(result, sys.stdout)
    else:
        print_table(result, sys.stdout)
    return 0 if result.complete else 1


def _start_time(path: Path) -> float:
    """Where run-local's virtual clock starts: now, or for a file in examples/ the examples' own date (the demo's
    pinned clock: their expiresAt and effective dates never go stale), said on stderr."""
    import time

    from grants_local.demo import DEMO_START
    from grants_local.run import EXAMPLES

    if path.resolve().is_relative_to(EXAMPLES.resolve()):
        sys.stderr.write(
            f"{path} is an example: the virtual clock starts at the examples' date, {DEMO_START:%Y-%m-%d %H:%M} UTC\n"
        )
        return DEMO_START.timestamp()
    return time.time()


class _Refused(Exception):
    """An everyday mistake, said in one line (exit code 2)."""


def _read_input(path: Path) -> bytes:
    """The bytes of an input file; `_Refused` naming it when it cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise _Refused(f"{path}: no such file") from None
    except IsADirectoryError:
        raise _Refused(f"{path} is a directory, not a file") from None
    except OSError as error:
        raise _Refused(f"{path}: cannot read it ({error.strerror})") from None


def _add_bulk_and_dlq(commands: Any) -> None:
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--local", action="store_true", help="the local namespace's queue (GRANTS_LOCAL_NAMESPACE)")
    where.add_argument(
        "--namespace", help="Service Bus namespace (default: ServiceBusConnection__fullyQualifiedNamespace)"
    )
    # Each command its own --queue (argparse shares a parent's actions: a default set on one would change all).
    grants, bulk = _queue_names()
    grants_queue = argparse.ArgumentParser(add_help=False)
    grants_queue.add_argument(
        "--queue", help=f"one queue (default: both, {grants} and {bulk}: GRANTS_QUEUE, GRANTS_BULK_QUEUE)"
    )
    bulk_queue = argparse.ArgumentParser(add_help=False)
    bulk_queue.add_argument(
        "--queue", default=bulk, help=f"queue name (default {bulk}: the bulk lane's, behind interactive grants)"
    )
    submit = commands.add_parser(
        "submit", parents=[where, bulk_queue], help="validate a CSV / JSON-lines bulk job and send it"
    )
    submit.add_argument("file", type=Path, help="CSV (.csv) or JSON lines (one message body per line)")
    submit.add_argument("--job-id", help="the job's id: its rows are <job-id>:<row> (default: from the file's SHA-256)")
    submit.add_argument("--dry-run", action="store_true", help="validate and print what would be sent")
    submit.add_argument("--skip-invalid", action="store_true", help="send the valid rows even if some are not")
    submit.add_argument(
        "--serve-local",
        action="store_true",
        help="send to a running serve-local (follow it: job --serve-local --watch)",
    )
    submit.add_argument("--port", type=int, default=7071, help="serve-local's port (with --serve-local; default 7071)")
    dlq = commands.add_parser("dlq", help="list, show, resubmit or purge dead letters")
    actions = dlq.add_subparsers(dest="action", required=True)
    actions.add_parser("list", parents=[where, grants_queue], help="table of dead letters").add_argument("--reason")
    actions.add_parser("show", parents=[where, grants_queue], help="one dead letter in full").add_argument("id")
    resubmit = actions.add_parser(
        "resubmit", parents=[where, grants_queue], help="send fresh copies, then remove the dead letters"
    )
    chosen = resubmit.add_mutually_exclusive_group()
    chosen.add_argument("--reason", help="only dead letters with this reason code")
    chosen.add_argument("--id", help="only the dead letter with this requestId or MessageId")
    resubmit.add_argument("--dry-run", action="store_true", help="list what would be resubmitted")
    purge = actions.add_parser(
        "purge", parents=[where, grants_queue], help="delete dead letters for good (needs --yes)"
    )
    purge.add_argument("--reason")
    purge.add_argument("--yes", action="store_true", help="confirm the deletion")


def _bulk_or_dlq(args: argparse.Namespace) -> int:
    from shared.core.errors import ConfigError

    try:
        if args.command == "submit":
            from grants_cli.bulk import run_submit

            if args.local and args.serve_local:
                raise ConfigError("--local and --serve-local are two places to send to: give one")

            _read_input(args.file)  # a missing file: one line
            return run_submit(
                path=args.file,
                job_id=args.job_id,
                dry_run=args.dry_run,
                skip_invalid=args.skip_invalid,
                open_backend=_backend_opener(args),
                queue=args.queue,
                out=sys.stdout,
                err=sys.stderr,
            )
        from grants_cli.dlq import Selector, run_dlq
        from grants_common.printable import printable

        queues = [args.queue] if args.queue else list(_queue_names())
        if args.action == "purge" and not args.yes:
            queues = queues[:1]  # it refuses before opening any queue: say so once
        codes: list[int] = []
        labelled = 0
        for queue in queues:
            args.queue = queue
            # Each queue labelled when there are two; show prints only the queue that holds the dead letter (so it
            # is held back until known), the others print as they go (an interrupted resubmit loses no line).
            held_back = len(queues) > 1 and args.action == "show"
            if len(queues) > 1 and not held_back:
                sys.stdout.write(f"{chr(10) if labelled else ''}queue {queue}, dead letters:\n")
                labelled += 1
            buffer = io.StringIO()
            printed: TextIO = buffer if held_back else sys.stdout
            code = run_dlq(
                action=args.action,
                selector=Selector(reason=getattr(args, "reason", None), id=getattr(args, "id", None)),
                dry_run=getattr(args, "dry_run", False),
                yes=getattr(args, "yes", False),
                open_backend=_backend_opener(args),
                queue=queue,
                out=printed,
            )
            codes.append(code)
            if held_back and code == 0:
                sys.stdout.write(f"{chr(10) if labelled else ''}queue {queue}, dead letters:\n{buffer.getvalue()}")
                labelled += 1
        if args.action == "show" and len(queues) > 1 and min(codes) != 0:
            sys.stdout.write(
                f"no dead letter with requestId, MessageId or originalMessageId {printable(args.id)} "
                f"in {' or '.join(queues)}\n"
            )
        return min(codes) if args.action == "show" else max(codes)  # show: found in either queue is found
    except ConfigError as error:
        sys.stderr.write(f"grants: error: {error}\n")
        return 2


def _queue_names() -> tuple[str, str]:
    """The grants queue and the bulk queue, as the app's settings name them."""
    return os.environ.get("GRANTS_QUEUE", "grant-membership"), os.environ.get(
        "GRANTS_BULK_QUEUE", "grant-membership-bulk"
    )


def _backend_opener(args: argparse.Namespace) -> BackendOpener:
    """A running serve-local's queue with ``--serve-local``, the local namespace's with ``--local``, else the Service
    Bus queue (``--namespace`` or the setting)."""
    if getattr(args, "serve_local", False):
        from grants_local.serve_backend import open_serve_local_backend

        return functools.partial(open_serve_local_backend, args.queue, port=args.port)
    if args.local:
        from grants_local.backend import open_local_backend

        return functools.partial(open_local_backend, args.queue)
    from grants_cli.backends import servicebus_backend

    return functools.partial(servicebus_backend, namespace=args.namespace, queue=args.queue)
