"""The client's errors: one shallow tree, each error one line saying what went wrong and what to do."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from grants_client._status import GroupStatus, RequestStatus

__all__ = [
    "ConfigError",
    "GrantsError",
    "InvalidRequest",
    "NotAuthorized",
    "NotFound",
    "Problem",
    "RequestIdConflict",
    "TimedOut",
    "Unavailable",
    "one_line",
]

#: Anything that would break a line or hide text: C0 and C1 controls, DEL, the Unicode line separators, surrogates.
_UNPRINTABLE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
#: The longest text taken from an answer or an SDK's message into one error line.
_MAX_QUOTED: Final = 400


def one_line(text: str, *, limit: int = _MAX_QUOTED) -> str:
    """`text` as one printable line: runs of whitespace made one space, other control characters escaped
    (``\\x1b``), cut to `limit` characters with ``…``."""
    collapsed = " ".join(text.split())
    escaped = _UNPRINTABLE.sub(
        lambda match: match.group(0).encode("unicode_escape", "backslashreplace").decode(), collapsed
    )
    return escaped if len(escaped) <= limit else escaped[: limit - 1] + "…"


class GrantsError(Exception):
    """Every error the client raises; ``str()`` is one line a person can act on."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message, limit=2000))

    def __str__(self) -> str:
        return str(self.args[0])


class ConfigError(GrantsError):
    """The client is set up wrong (an endpoint, a queue, a secret): nothing was sent."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One invalid field: a JSON pointer into the message (``/member/id``; ``""`` for the whole) and what is wrong."""

    pointer: str
    detail: str


class InvalidRequest(GrantsError):
    """The request breaks the contract, found before sending (nothing sent) or by the app (nothing queued):
    `problems` lists every invalid field."""

    def __init__(self, message: str, *, problems: Sequence[Problem] = ()) -> None:
        super().__init__(message)
        self.problems: tuple[Problem, ...] = tuple(problems)


class RequestIdConflict(GrantsError):
    """The request id was used before for a request with other content: send this one with a new id."""


class NotAuthorized(GrantsError):
    """The app or Service Bus did not accept who is asking (signature, token, role), or it may not do that."""


class NotFound(GrantsError):
    """Nothing is recorded under that id (yet): a request the app has not taken up, or a mistyped id."""


class Unavailable(GrantsError):
    """Nothing answered, or the app answered that it cannot do it now: try again (after `retry_after` seconds,
    when the app said)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TimedOut(GrantsError):
    """Following a request (a job, an HR event) gave up before it ended; `last` is the last status read (None: none
    yet)."""

    def __init__(self, message: str, *, last: RequestStatus | GroupStatus | None = None) -> None:
        super().__init__(message)
        self.last = last
