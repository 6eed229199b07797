"""The app's seal, pure: an HMAC that tells the messages the app sent itself from everyone else's.

A producer may send any message with any application properties to a queue it can write. The app's own
bookkeeping travels in properties too (`shared.core.messaging.INTERNAL`: a retry copy's attempt and first
arrival, an expiry removal's ``expiryOf``, an HR grant's event and row), so the app seals every message it sends:
``seal = v1.<base64url HMAC-SHA256>`` over the MessageId, the SHA-256 of the body and the internal properties
present (names and values as text), under a key only the app holds (`shared.adapters.seal`: kept in the ledger).
A message whose seal does not check out is a producer's, whatever its properties claim
(`shared.core.messaging.Delivery.trusted`). The seal binds the properties to that MessageId and that body: they
cannot be moved to another message, nor the body swapped.

The MessageIds the app derives (``~<kind>:…``: retry copies, expiry removals, the sweep's, HR grants, the webhook's)
are keyed too (`keyed_message_id`): a producer who can work out such an id (from a ticket it knows) and sends a
message under it first would otherwise have Service Bus's duplicate detection drop the app's own message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

from shared.core.messaging import DERIVED_PREFIX, INTERNAL, SEAL, property_of

__all__ = ["SEAL_VERSION", "keyed_message_id", "seal", "verify"]

SEAL_VERSION: Final = "v1"


def seal(*, key: bytes, message_id: str, body: bytes, properties: Mapping[Any, Any]) -> str:
    """The seal of a message the app sends: ``v1.<base64url HMAC-SHA256>`` of its MessageId, body and internal
    properties under `key`."""
    internal = sorted((name, str(value)) for name in INTERNAL if (value := property_of(properties, name)) is not None)
    canonical = json.dumps(
        [SEAL_VERSION, message_id, hashlib.sha256(body).hexdigest(), internal], separators=(",", ":")
    )
    mac = hmac.new(key, canonical.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
    return f"{SEAL_VERSION}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"


def verify(*, keys: Sequence[bytes], message_id: str | None, body: bytes, properties: Mapping[Any, Any]) -> bool:
    """True when the message carries a seal made with one of `keys` over exactly this MessageId, body and internal
    properties (compared in constant time)."""
    value = property_of(properties, SEAL)
    if not isinstance(value, str) or message_id is None:
        return False
    return any(
        hmac.compare_digest(value, seal(key=key, message_id=message_id, body=body, properties=properties))
        for key in keys
    )


def keyed_message_id(*, key: bytes, message_id: str) -> str:
    """A MessageId the app derived (``~…``) as it is sent: its first 100 characters, ``~`` and 24 hex digits of an
    HMAC-SHA256 of the whole id under `key` (at most 125 characters; the same id and key, the same result, so
    duplicate detection still absorbs the app's own resends). Any other id is returned as it is."""
    if not message_id.startswith(DERIVED_PREFIX):
        return message_id
    mac = hmac.new(key, b"message-id\x1f" + message_id.encode("utf-8", "surrogatepass"), hashlib.sha256)
    return f"{message_id[:100]}{DERIVED_PREFIX}{mac.hexdigest()[:24]}"
