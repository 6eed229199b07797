"""Times, pure: the one reader of the ISO 8601 times the app wrote itself (stored records, its own properties)."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["read_time"]


def read_time(value: object) -> datetime | None:
    """`value` as an aware UTC datetime when it is an ISO 8601 string (no offset means UTC); None otherwise."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
