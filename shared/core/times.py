"""Times, pure: one bounded domain for every time the app reads, and the one parser of the times producers send.

**The domain** is [`EARLIEST`, `LATEST`): 2000-01-01T00:00:00Z to 2100-01-01T00:00:00Z. Every real request, HR
date and expiry falls inside it, and nothing outside it can reach the app's bookkeeping: the arithmetic the app
does on times (an expiry removal's microsecond, a leaver's next midnight, a retry's delay, a history key) then never
overflows Python's years 1 to 9999, every time converts to and from any UTC offset (±14 h), and Table Storage and
its SDK round-trip every stored time (azure-data-tables cannot read back a year before 1000).

- `parse_timestamp` reads an RFC 3339 timestamp with an offset (what a producer sends) into UTC inside the domain;
  `parse_date` a ``YYYY-MM-DD`` date inside it. Both raise `TimeRefused`, whose message names the field.
- `read_time` reads what the app wrote itself (a stored record, its own message property): None for anything
  that is not an ISO 8601 time inside the domain.
- `intent_time`: a request's place among the intents for its member and target. A producer's ``requestedAt`` is
  kept only when it is not later than the request's first arrival (the broker's enqueue time of its first
  message): a producer's clock cannot date an intent in the future, so a later request (a leaver made after it)
  always wins. The producer's own value stays in the status record for the audit.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Final

__all__ = [
    "EARLIEST",
    "LATEST",
    "TimeRefused",
    "in_domain",
    "intent_time",
    "parse_date",
    "parse_timestamp",
    "read_time",
]

EARLIEST: Final = datetime(2000, 1, 1, tzinfo=UTC)
LATEST: Final = datetime(2100, 1, 1, tzinfo=UTC)
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})", re.ASCII)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_DOMAIN: Final = "between 2000-01-01 and 2100-01-01 (UTC)"


class TimeRefused(ValueError):
    """A time a producer sent is not one the app accepts; the message names the field and why."""


def in_domain(value: datetime) -> bool:
    """True for an aware datetime inside [`EARLIEST`, `LATEST`)."""
    return value.tzinfo is not None and EARLIEST <= value < LATEST


def parse_timestamp(value: object, *, field: str) -> datetime:
    """`value` (an RFC 3339 timestamp with ``Z`` or an offset, at most microseconds) in UTC, inside the domain;
    raise `TimeRefused` naming `field` otherwise."""
    rfc3339 = f"{field} must be an RFC 3339 timestamp with a time zone, e.g. 2027-01-31T00:00:00Z"
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise TimeRefused(rfc3339)
    try:
        written = datetime.fromisoformat(value)
    except ValueError:
        raise TimeRefused(rfc3339) from None
    try:
        utc = written.astimezone(UTC)
    except OverflowError:  # a valid local time whose UTC one lies before year 1 or after year 9999
        utc = None
    if utc is None or not in_domain(utc):
        raise TimeRefused(f"{field} must be {_DOMAIN}")
    return utc


def parse_date(value: object, *, field: str) -> date:
    """`value` (``YYYY-MM-DD``) as a date inside the domain; raise `TimeRefused` naming `field` otherwise."""
    if not isinstance(value, str) or not _DATE.fullmatch(value):
        raise TimeRefused(f"{field} must be a date, YYYY-MM-DD")
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise TimeRefused(f"{field} must be a date, YYYY-MM-DD (this one does not exist)") from None
    if not EARLIEST.date() <= day < LATEST.date():
        raise TimeRefused(f"{field} must be {_DOMAIN}")
    return day


def read_time(value: object) -> datetime | None:
    """`value` as an aware UTC datetime when it is an ISO 8601 string (no offset means UTC) inside the domain;
    None otherwise (never raises)."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
        utc = parsed.astimezone(UTC) if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        return None
    return utc if in_domain(utc) else None


def intent_time(requested_at: datetime | None, *, arrived_at: datetime) -> datetime:
    """When a request's intent counts as made: its ``requestedAt`` unless that is later than its first arrival
    (`arrived_at`), in which case its first arrival."""
    return arrived_at if requested_at is None or requested_at > arrived_at else requested_at
