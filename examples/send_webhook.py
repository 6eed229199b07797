"""Sign a request body and POST it to the grants webhook (``python -m shared serve-local`` by default), with the
producer client (``client/``, `grants_client.Webhook`).

    .venv/bin/python examples/send_webhook.py examples/ticket.json
    .venv/bin/python examples/send_webhook.py BODY.json --url "https://<app>.azurewebsites.net/api/grants"

The secret is GRANTS_WEBHOOK_SECRET from the environment, else serve-local's published local secret; ``--producer``
names the producer that signs (X-Grants-Producer: needed once several producers sign). Exit codes: 0 the webhook
accepted it (202), 1 it answered otherwise (printed), 2 the file cannot be read, the client cannot be set up with what
was given, or nothing answered at the URL (one line saying so, with the command that starts serve-local when the URL
is on 127.0.0.1).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from grants_client import LOCAL_WEBHOOK_SECRET, GrantsError, Webhook


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("body", type=Path, help="the JSON body: a v1 grant message or a ticket payload")
    parser.add_argument("--url", default="http://127.0.0.1:7071/api/grants")
    parser.add_argument("--producer", help="the producer whose secret signs (X-Grants-Producer)")
    args = parser.parse_args()
    try:
        body = args.body.read_bytes()
    except FileNotFoundError:
        return _refuse(parser, f"{args.body}: no such file")
    except OSError as error:
        return _refuse(parser, f"{args.body}: cannot read it ({error.strerror})")
    secret = os.environ.get("GRANTS_WEBHOOK_SECRET") or LOCAL_WEBHOOK_SECRET
    try:
        with Webhook(url=args.url, secret=secret, producer=args.producer) as webhook:
            answer = webhook.post(body=body)
    except GrantsError as error:  # nothing answered, or the URL or secret cannot be used: one line, no traceback
        sys.stderr.write(f"error: {error}\n")
        return 2
    print(answer.status, answer.content_type, answer.text)
    return 0 if answer.status == 202 else 1


def _refuse(parser: argparse.ArgumentParser, problem: str) -> int:
    """Say `problem` in one line on stderr, as argparse says a usage error; return the exit code 2."""
    sys.stderr.write(f"{parser.prog}: error: {problem}\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
