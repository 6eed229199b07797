"""Signatures, pure: the HMAC-SHA256 the ticketing webhook checks on a request and the app puts on a callback."""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "sign"]

SIGNATURE_HEADER: Final = "X-Grants-Signature"
TIMESTAMP_HEADER: Final = "X-Grants-Timestamp"


def sign(*, secret: str, timestamp: int | str, body: bytes) -> str:
    """The ``X-Grants-Signature`` value for `body` sent at `timestamp`: ``sha256=<hex HMAC-SHA256>``.

    The signed text is the ``X-Grants-Timestamp`` header exactly as sent, a dot, and the body's bytes.
    """
    digest = hmac.new(secret.encode(), f"{timestamp}".encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"
