"""Retry policy, pure: given the attempt that just failed and its error, retry after a delay or give up."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from shared.core.errors import Reason, TransientError

__all__ = ["GiveUp", "Retry", "RetryPolicy", "delivery_count_problem"]

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


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Bounded exponential backoff with full jitter; a server's ``Retry-After`` wins.

    After failed attempt ``n`` (1-based) the delay is ``uniform(0, min(max_delay, base * 2 ** (n - 1)))``,
    or ``min(retry_after, max_delay)`` when the server asked for a delay. The policy gives up when
    ``n >= max_attempts`` (never for the ledger's `LedgerUnavailable` and `PairBusy`: a message is not
    dead-lettered because the ledger is down or another request holds its pair), and for
    `Reason.MEMBER_NOT_FOUND` (replication delay) also once both ``member_not_found_window`` seconds (that of the
    request's `source` system in ``member_not_found_windows``, if any) have passed since the first attempt *and*
    ``member_not_found_min_attempts`` attempts were made: time spent waiting in a queue (a backlog, pacing, a
    retry behind others) is not counted as failing. A base of 0 gives zero delays. ``max_deliveries`` is the
    queue's maxDeliveryCount (`last_delivery`).
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
        self, *, attempt: int, error: TransientError, elapsed: float, source: str | None = None
    ) -> Retry | GiveUp:
        """Decide after failed `attempt` of a request from `source`, `elapsed` seconds after its first attempt."""
        if attempt >= self.max_attempts and error.reason not in _NEVER_GIVE_UP:
            return GiveUp(f"gave up after {attempt} attempts (GRANTS_MAX_ATTEMPTS={self.max_attempts})")
        window = self.member_not_found_windows.get(source or "", self.member_not_found_window)
        if (
            error.reason is Reason.MEMBER_NOT_FOUND
            and elapsed >= window
            and attempt >= self.member_not_found_min_attempts
        ):
            return GiveUp(
                f"the member was still not found {elapsed:.0f} s after the first attempt, after {attempt} attempts "
                f"(a {source or 'request'}'s window is {window:g} s, GRANTS_MEMBER_NOT_FOUND_WINDOWS or "
                "GRANTS_MEMBER_NOT_FOUND_WINDOW_SECONDS; at least GRANTS_MEMBER_NOT_FOUND_MIN_ATTEMPTS="
                f"{self.member_not_found_min_attempts} attempts)"
            )
        if error.retry_after is not None:
            return Retry(min(max(error.retry_after, 0.0), self.max_delay))
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** min(attempt - 1, 64))
        return Retry(ceiling * self.jitter())
