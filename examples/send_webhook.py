"""Sign a request body and POST it to the grants webhook (``python -m shared serve-local`` by default).

    .venv/bin/python examples/send_webhook.py examples/ticket.json
    .venv/bin/python examples/send_webhook.py BODY.json --url "https://<app>.azurewebsites.net/api/grants?code=<key>"

The secret is GRANTS_WEBHOOK_SECRET from the environment, else serve-local's published local secret. Exit codes:
0 the webhook accepted it (202), 1 it answered otherwise (printed), 2 the file cannot be read or nothing answered
at the URL (one line saying so, with the command that starts serve-local when the URL is on 127.0.0.1).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grants_cli.status import unreachable
from grants_local.serve import LOCAL_WEBHOOK_SECRET
from shared.core.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("body", type=Path, help="the JSON body: a v1 grant message or a ticket payload")
    parser.add_argument("--url", default="http://127.0.0.1:7071/api/grants")
    args = parser.parse_args()
    try:
        body = args.body.read_bytes()
    except FileNotFoundError:
        return _refuse(parser, f"{args.body}: no such file")
    except OSError as error:
        return _refuse(parser, f"{args.body}: cannot read it ({error.strerror})")
    timestamp = int(time.time())
    secret = os.environ.get("GRANTS_WEBHOOK_SECRET") or LOCAL_WEBHOOK_SECRET
    headers = {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret=secret, timestamp=timestamp, body=body),
    }
    try:
        response = httpx.post(args.url, content=body, headers=headers, timeout=30)
    except httpx.HTTPError as error:
        url = urlsplit(args.url)
        base = f"{url.scheme}://{url.netloc}"
        local = url.hostname in ("127.0.0.1", "localhost") and url.port is not None  # serve-local's URL
        sys.stderr.write(unreachable(base, error, serve_local=local))
        return 2
    print(response.status_code, response.headers.get("content-type"), response.text)
    return 0 if response.status_code == 202 else 1


def _refuse(parser: argparse.ArgumentParser, problem: str) -> int:
    """Say `problem` in one line on stderr, as argparse says a usage error; return the exit code 2."""
    sys.stderr.write(f"{parser.prog}: error: {problem}\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
