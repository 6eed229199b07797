"""Retry policy, pure: given the attempt that just failed and its error, retry after a delay or give up.

Waiting is not failing: a member not found yet (replication) is counted apart (`Waiting`, carried sealed by the
retry copies), by its own answers and the time between them, and the other failures without them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.core.errors import Reason, TransientError
from shared.core.messaging import NOT_FOUND_ANSWERS, NOT_FOUND_SINCE, property_of
from shared.core.times import read_time

__all__ = ["GiveUp", "Retry", "RetryPolicy", "Waiting", "delivery_count_problem"]

#: Transient reasons retried whatever the attempt count (the queue's message TTL is the only bound).
_NEVER_GIVE_UP = frozenset({Reason.LEDGER_UNAVAILABLE, Reason.PAIR_BUSY})


def delivery_count_problem(*, max_deliveries: int, max_attempts: int) -> str | None:
    """Why a queue's maxDeliveryCount of `max_deliveries` cannot carry a policy of `max_attempts`, or None.

    - Fewer than 2: the settlement ladder leaves a delivery it cannot settle yet (no retry copy could be sent, its
      status could not be recorded, the host did not answer) to its lock expiry, for the next delivery; with one
      delivery allowed there is none, and every such wait is dead-lettered at once.
    - Fewer than `max_attempts`: a message whose retry is its own redelivery (an HR event; a delivery whose copy could
      not be sent) counts each delivery as an attempt, so the last delivery would dead-letter it before
      ``GRANTS_MAX_ATTEMPTS`` attempts were made: the setting could never be reached.
    """
    if max_deliveries < 2:
        return (
            f"is {max_deliveries}: at least 2 are needed, as a delivery the app cannot settle yet is left to its lock "
            "expiry for the next one"
        )
    if max_deliveries < max_attempts:
        return (
            f"is {max_deliveries}, fewer than GRANTS_MAX_ATTEMPTS ({max_attempts}): a message retried by its "
            "redelivery (an HR event) counts each delivery as an attempt and could never reach GRANTS_MAX_ATTEMPTS; "
            "make the queues' maxDeliveryCount (infra: maxDeliveryCount) at least GRANTS_MAX_ATTEMPTS"
        )
    return None


@dataclass(frozen=True, slots=True)
class Retry:
    """Try again in `delay` seconds."""

    delay: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop retrying; `why` says which limit was reached, for the dead-letter description."""

    why: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Waiting:
    """A request's member-not-found answers before this attempt: how many (`answers`) and when the first came
    (`since`). Only these count toward giving up on a member not found: not the attempts that met something else (a
    429, a 503), nor the time before the first of them (queued behind a backlog, paced, retried for another reason)."""

    answers: int = 0
    since: datetime | None = None

    @classmethod
    def read(cls, properties: Mapping[Any, Any]) -> Waiting:
        """What a message carries (`NOT_FOUND_ANSWERS`, `NOT_FOUND_SINCE`: believed only on a sealed one, as every
        internal property); none when either is missing or unreadable."""
        answers, since = property_of(properties, NOT_FOUND_ANSWERS), read_time(property_of(properties, NOT_FOUND_SINCE))
        if isinstance(answers, str) and answers.isdecimal() and len(answers) <= 9:
            answers = int(answers)
        if not isinstance(answers, int) or isinstance(answers, bool) or answers < 1 or since is None:
            return cls()
        return cls(answers=answers, since=since)

    def after(self, error: TransientError, *, at: datetime) -> Waiting:
        """Counted with `error`, answered at `at`: one answer more when the member was not found (the first at
        `at`), else as it was."""
        if error.reason is not Reason.MEMBER_NOT_FOUND:
            return self
        return Waiting(answers=self.answers + 1, since=self.since or at)

    def properties(self) -> dict[str, str | int]:
        """The properties a copy carries it in (none before the first answer)."""
        if self.answers < 1 or self.since is None:
            return {}
        return {NOT_FOUND_ANSWERS: self.answers, NOT_FOUND_SINCE: self.since.isoformat()}


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Bounded exponential backoff with full jitter; a server's ``Retry-After`` wins.

    After failed attempt ``n`` (1-based) the delay is ``uniform(0, min(max_delay, base * 2 ** (n - 1)))``,
    or ``min(retry_after, max_delay)`` when the server asked for a delay. Giving up:

    - `Reason.MEMBER_NOT_FOUND` (replication delay): only once this answer is at least the
      ``member_not_found_min_attempts``-th member-not-found answer *and* ``member_not_found_window`` seconds (that of
      the request's `source` system in ``member_not_found_windows``, if any) have passed since the first of them
      (`Waiting`). Waiting is not failing: attempts that met another error and the time before the first such answer
      do not count, nor does ``max_attempts``.
    - any other reason: once ``n`` less the member-not-found answers reaches ``max_attempts``, never for the ledger's
      `LedgerUnavailable` and `PairBusy` (a message is not dead-lettered because the ledger is down or another
      request holds its pair).

    A base of 0 gives zero delays. ``max_deliveries`` is the queue's maxDeliveryCount (`last_delivery`).
    """

    max_attempts: int = 8
    max_deliveries: int = 10  # the queue's maxDeliveryCount
    base_delay: float = 10.0
    max_delay: float = 900.0
    member_not_found_window: float = 600.0
    member_not_found_windows: Mapping[str, float] = field(default_factory=dict)
    member_not_found_min_attempts: int = 5
    jitter: Callable[[], float] = field(default=random.random, repr=False)

    def last_delivery(self, delivery_count: int) -> bool:
        """Whether Service Bus would dead-letter this delivery itself (MaxDeliveryCountExceeded) were it left to
        its lock expiry: the last one it allows."""
        return delivery_count >= self.max_deliveries

    def decide(
        self,
        *,
        attempt: int,
        error: TransientError,
        now: datetime,
        waiting: Waiting | None = None,
        source: str | None = None,
    ) -> Retry | GiveUp:
        """Decide after failed `attempt` of a request from `source`, answered `error` at `now`, with the
        member-not-found answers before it (`waiting`)."""
        waiting = waiting or Waiting()
        if error.reason is Reason.MEMBER_NOT_FOUND:
            counted = waiting.after(error, at=now)
            window = self.member_not_found_windows.get(source or "", self.member_not_found_window)
            waited = (now - (counted.since or now)).total_seconds()
            if waited >= window and counted.answers >= self.member_not_found_min_attempts:
                return GiveUp(
                    f"the member was still not found {waited:.0f} s after it was first not found, after "
                    f"{counted.answers} such answers (attempt {attempt}; a {source or 'request'}'s window is "
                    f"{window:g} s, GRANTS_MEMBER_NOT_FOUND_WINDOWS or GRANTS_MEMBER_NOT_FOUND_WINDOW_SECONDS, and at "
                    f"least GRANTS_MEMBER_NOT_FOUND_MIN_ATTEMPTS={self.member_not_found_min_attempts} such answers)"
                )
        elif error.reason not in _NEVER_GIVE_UP and (failed := attempt - waiting.answers) >= self.max_attempts:
            besides = f", besides {waiting.answers} that found the member not replicated yet" if waiting.answers else ""
            return GiveUp(f"gave up after {failed} attempts{besides} (GRANTS_MAX_ATTEMPTS={self.max_attempts})")
        if error.retry_after is not None:
            return Retry(min(max(error.retry_after, 0.0), self.max_delay))
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** min(attempt - 1, 64))
        return Retry(ceiling * self.jitter())
