"""Command line: ``python -m shared run-local MESSAGES [--json]``, ``demo`` and ``serve-local``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # before grpc loads: no C-core chatter on stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log the app's outcome lines to stderr")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run-local", help="run a JSON-lines file of messages through the local host")
    run.add_argument("messages", type=Path, help="one message body per line")
    run.add_argument("--json", action="store_true", help="print one JSON object per input line")
    run.add_argument("--concurrency", type=int, default=16, help="invocations at once (maxConcurrentCalls)")
    run.add_argument("--dry-run", action="store_true", help="read only: report what would change (GRANTS_DRY_RUN)")
    commands.add_parser("demo", help="run the examples against the built-in Graph and token doubles")
    serve = commands.add_parser("serve-local", help="serve the webhook and the HR and grants queues on loopback")
    serve.add_argument("--port", type=int, default=7071, help="the webhook's port on 127.0.0.1")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.INFO if args.verbose else logging.ERROR)
    logging.basicConfig(level=logging.INFO, handlers=[handler])

    if args.command == "run-local":
        from shared.local.run import print_json, print_table, run_local

        lines = args.messages.read_bytes().splitlines()
        env = {**os.environ, **({"GRANTS_DRY_RUN": "true"} if args.dry_run else {})}
        result = asyncio.run(run_local(lines, env=env, concurrency=args.concurrency))
        if args.json:
            print_json(result, sys.stdout)
        else:
            print_table(result, sys.stdout)
        return 0 if result.complete else 1

    if args.command == "serve-local":
        from shared.local.serve import serve_local

        try:
            return asyncio.run(serve_local(sys.stdout, port=args.port))
        except KeyboardInterrupt:
            return 0

    from shared.local.demo import demo

    return asyncio.run(demo(sys.stdout))


if __name__ == "__main__":
    sys.exit(main())
