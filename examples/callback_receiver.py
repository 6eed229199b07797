"""A callback receiver to try signed callbacks locally: it checks each POST's signature and timestamp window the way
a ticketing system should, and prints the outcome record. Standard library only: a starting point for your own.

    .venv/bin/python examples/callback_receiver.py [--port 8765] [--fail 2]
    GRANTS_CALLBACK_LOOPBACK=true .venv/bin/grants serve-local      # in another shell
    # a ticket with "callbackUrl": "http://127.0.0.1:8765/callbacks/grants" (examples/ticket-with-callback.json)

The secret is GRANTS_WEBHOOK_SECRET from the environment, else serve-local's published local secret. ``--fail N``
answers 503 to the first N deliveries, to watch the app retry on its retry policy. Each event is applied once:
a delivery whose X-Grants-Event-Id was already applied is acknowledged and not applied again (retries of a
delivery the app did not see acknowledged carry the same id).

Answers: 204 applied (or already applied), 401 signature or timestamp not accepted, 413 body over 64 KiB,
415 not JSON, 503 when told to fail.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import hmac
import json
import os
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LOCAL_SECRET = "local-only-webhook-secret-do-not-deploy"  # noqa: S105 (serve-local's published local secret)
REPLAY_WINDOW_SECONDS = 300  # older than this: refused (a captured callback replayed later)
FUTURE_SKEW_SECONDS = 30  # clock skew tolerated the other way
MAX_BODY_BYTES = 64 * 1024
_SIGNATURE = re.compile(r"sha256=([0-9a-f]{64})")


def verify(*, secret: str, timestamp: str, signature: str, body: bytes, now: float) -> str | None:
    """None when `signature` is HMAC-SHA256(secret, "<timestamp>.<body>") and `timestamp` is fresh; else why not."""
    if not re.fullmatch(r"[0-9]{1,12}", timestamp):
        return "X-Grants-Timestamp must be the unix time in seconds"
    given = _SIGNATURE.fullmatch(signature.strip().lower())
    if given is None:
        return "X-Grants-Signature must be sha256=<64 hexadecimal digits>"
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, given.group(1)):
        return "the signature does not match the body and timestamp"
    age = now - int(timestamp)
    if age > REPLAY_WINDOW_SECONDS:
        return f"the callback is older than {REPLAY_WINDOW_SECONDS} seconds"
    if age < -FUTURE_SKEW_SECONDS:
        return "the callback's timestamp is in the future"
    return None


class Receiver(ThreadingHTTPServer):
    """Serves POSTs on 127.0.0.1:`port` from a daemon thread; `applied` holds each applied event's record."""

    daemon_threads = True

    def __init__(
        self, *, secret: str, port: int = 0, fail: int = 0, out: Any = sys.stdout, clock: Any = time.time
    ) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.secret, self.fail, self.out, self.clock = secret, fail, out, clock
        self.applied: dict[str, dict[str, Any]] = {}
        self.deliveries = 0
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            return self._answer(413, "too large")
        body = self.rfile.read(length)
        receiver = self.server
        with receiver.lock:
            receiver.deliveries += 1
            if receiver.fail > 0:
                receiver.fail -= 1
                return self._answer(503, "told to fail", body)
        if self.headers.get("Content-Type", "").split(";")[0].strip().lower() != "application/json":
            return self._answer(415, "not JSON", body)
        refusal = verify(
            secret=receiver.secret,
            timestamp=self.headers.get("X-Grants-Timestamp", ""),
            signature=self.headers.get("X-Grants-Signature", ""),
            body=body,
            now=receiver.clock(),
        )
        if refusal is not None:
            return self._answer(401, refusal, body)
        event_id = self.headers.get("X-Grants-Event-Id", "")
        record = json.loads(body)
        with receiver.lock:
            again = event_id in receiver.applied
            receiver.applied.setdefault(event_id, record)
        age = int(receiver.clock()) - int(self.headers["X-Grants-Timestamp"])
        self._answer(
            204, f"signature ok, {age} s old" + (" (already applied: not applied again)" if again else ""), body
        )

    def _answer(self, status: int, note: str, body: bytes = b"") -> None:
        out = self.server.out
        out.write(f"POST {self.path}  -> {status} {note}\n")
        for name in ("Content-Type", "X-Grants-Timestamp", "X-Grants-Signature", "X-Grants-Event-Id"):
            out.write(f"  {name}: {self.headers.get(name, '')}\n")
        out.write(f"  X-Grants-Delivery-Attempt: {self.headers.get('X-Grants-Delivery-Attempt', '')}\n")
        if body and status == 204:
            out.write("  " + json.dumps(json.loads(body), indent=2).replace("\n", "\n  ") + "\n")
        out.flush()
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: `_answer` prints each request."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--fail", type=int, default=0, help="answer 503 to the first N deliveries")
    args = parser.parse_args()
    try:
        receiver = Receiver(
            secret=os.environ.get("GRANTS_WEBHOOK_SECRET") or LOCAL_SECRET, port=args.port, fail=args.fail
        )
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise
        sys.stderr.write(
            f"{parser.prog}: error: port {args.port} on 127.0.0.1 is in use (another receiver?): stop that one, or "
            "give another with --port (and name it in the ticket's callbackUrl)\n"
        )
        return 2
    print(f"Receiving callbacks on http://127.0.0.1:{receiver.port}/ (Ctrl-C stops)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        receiver.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
