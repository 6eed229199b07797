"""The status vocabulary of a request, and the rule that decides when one status record replaces another.

A request's status (``GET /api/grants/{requestId}``) moves through *pending* statuses to one *terminal* one:

- pending: ``accepted`` (the webhook queued it), ``scheduled`` (an HR event queued it for a later effective
  time), ``in_progress`` (an attempt holds the member and target's lease and is writing to Graph),
  ``retry_scheduled`` (an attempt failed transiently; ``nextRetryAt`` says when the next one runs);
- terminal and succeeded: ``granted``, ``already_member``, ``revoked``, ``not_member``, ``would_grant``,
  ``would_revoke`` (dry runs), ``superseded`` (a newer intent for the pair won), ``duplicate``;
- terminal and failed: ``dead_lettered`` (with its reason code and description).

`StatusWrite` says how a write treats what is recorded already, so that a copy of a request (a duplicate, a
retry racing a redelivery) can never move a finished request back to pending or overwrite its owner's outcome.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

__all__ = ["FAILED", "PENDING", "SUCCEEDED", "StatusWrite", "is_terminal"]

PENDING: Final = frozenset({"accepted", "scheduled", "in_progress", "retry_scheduled"})
SUCCEEDED: Final = frozenset(
    {"granted", "already_member", "revoked", "not_member", "would_grant", "would_revoke", "superseded", "duplicate"}
)
FAILED: Final = frozenset({"dead_lettered"})


def is_terminal(status: object) -> bool:
    """True for a status the request ends with (succeeded or failed)."""
    return status in SUCCEEDED or status in FAILED


class StatusWrite(StrEnum):
    """How a status record is written over what the ledger holds (decided for each stored copy on its own)."""

    FIRST = "first"  # only where nothing is recorded: accepted, scheduled, and what a duplicate or refused id says
    PROGRESS = "progress"  # unless a terminal status is recorded: in_progress, retry_scheduled
    FINAL = "final"  # always: the terminal outcome of the request's own message
