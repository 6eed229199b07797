"""The one settlement ladder: run a delivery's work, then settle it so that nothing is lost, and log how it ended.

Every trigger that reads a queue (grants, HR events, callbacks) describes its delivery as a `Work` and calls
`settle`, which climbs one ladder:

- the work succeeded: ``complete``;
- `PermanentError`: ``deadletter`` with its reason code and a description for a person;
- `TransientError`: the retry policy decides. Give up: ``deadletter``. Retry: send a **copy** (attempt + 1, a
  MessageId of the work's, deliverable at now + delay) *then* ``complete`` the original, so that a crash in
  between duplicates the work instead of losing it; a copy that cannot be sent, or work that has no retry copies:
  ``abandon`` (Service Bus delivers it again; its MaxDeliveryCount is the backstop);
- any other exception (a bug): ``abandon``, logged with its stack; never ``complete``.

A terminal end is first announced (`Work.announce`: a grant's outcome event and status record); an announcement
that fails turns it into ``abandon``. The settlement call is made within `deadline` seconds
(`shared.adapters.settlement`): a host that does not answer in time leaves the delivery ``unsettled`` (not
terminal, logged as a warning naming what had been decided); should the late call still succeed, the decided
outcome line is logged then. One outcome line per delivery, on the ``shared.outcome`` logger (`log_outcome`).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shared.adapters.settlement import Settlement, SettlementTimeout, abandon, complete, deadletter
from shared.core.errors import GrantError, GraphAnswer, PermanentError, TransientError
from shared.core.messaging import (
    ATTEMPT,
    FIRST_ATTEMPT_AT,
    MAX_DESCRIPTION_CHARS,
    ORIGINAL_MESSAGE_ID,
    Delivery,
    MessageActions,
    MessageSender,
    clip,
)
from shared.core.retry import GiveUp, RetryPolicy
from shared.core.statuses import Settled, Status

__all__ = ["Done", "RetryCopy", "Work", "log_outcome", "outcome_log", "sentence", "settle"]

outcome_log = logging.getLogger("shared.outcome")
_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Done:
    """The work succeeded: with `status`, as `description` says."""

    status: Status
    description: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryCopy:
    """How a delivery is tried again: its copy goes through `sender` (None: none is configured, the delivery is
    abandoned) with MessageId ``message_id(attempt)`` and the `carried` properties, besides the ladder's own
    ``attempt``, ``firstAttemptAt`` and ``originalMessageId``."""

    sender: MessageSender | None
    message_id: Callable[[int], str]
    carried: Mapping[str, str | int]


class Work:
    """One delivery's work, as its trigger's handler describes it to `settle` (a subclass per trigger).

    `kind` names the outcome line (``grant``, ``hr-event``, ``callback``); `retry` says how a transient failure
    is tried again (None: the delivery is abandoned and Service Bus delivers it again); `note` ends every dead
    letter's description.
    """

    kind: str = "work"
    retry: RetryCopy | None = None
    note: str = ""

    async def run(self) -> Done:
        """Do the work; raise `PermanentError` or `TransientError` when it did not succeed."""
        raise NotImplementedError

    def record(self, settled: Settled, *, finished: datetime) -> dict[str, Any]:
        """The outcome line's record of how the delivery ended."""
        raise NotImplementedError

    async def announce(self, settled: Settled, record: dict[str, Any]) -> str | None:
        """Before a terminal settlement: publish or record the end (`record` is the outcome line's); None when done,
        else what failed (the delivery is then abandoned)."""
        return None

    async def retrying(self, settled: Settled, *, when: datetime) -> None:
        """After the retry copy (deliverable at `when`) was sent: best-effort bookkeeping; never raises."""


async def settle(
    delivery: Delivery,
    work: Work,
    *,
    actions: MessageActions,
    policy: RetryPolicy,
    now: Callable[[], datetime],
    deadline: float,
) -> Settled:
    """Run `work` for `delivery` and settle it as the ladder says (module docstring); return how it ended (also
    logged)."""
    started = now()
    attempt = delivery.attempt
    settlement: Settlement
    try:
        done = await work.run()
    except PermanentError as error:
        settled, settlement = _dead(actions, delivery, work, error, why=None, attempt=attempt)
    except TransientError as error:
        first_attempt_at = delivery.first_attempt_at(started)
        decision = policy.decide(attempt=attempt, error=error, elapsed=(started - first_attempt_at).total_seconds())
        if isinstance(decision, GiveUp):
            settled, settlement = _dead(actions, delivery, work, error, why=decision.why, attempt=attempt)
        else:
            when = started + timedelta(seconds=decision.delay)
            settled, settlement = await _retry(actions, delivery, work, error, first_attempt_at, when, attempt)
            if settled.outcome is Status.RETRY_SCHEDULED:
                await work.retrying(settled, when=when)
    except Exception as error:
        _log.exception("unexpected error in %s message %s; abandoning it", work.kind, _safe(delivery.message_id))
        settlement = functools.partial(abandon, actions, delivery)
        settled = Settled(
            outcome=Status.ABANDONED,
            reason=None,
            description=f"unexpected {type(error).__name__}; Service Bus will redeliver the message",
            attempts=attempt,
        )
    else:
        settlement = functools.partial(complete, actions, delivery)
        settled = Settled(outcome=done.status, reason=None, description=done.description, attempts=attempt)

    announced: dict[str, Any] | None = None
    if settled.terminal:
        announced = work.record(settled, finished=now())
        failed = await work.announce(settled, announced)
        if failed is not None:
            announced = None
            settlement = functools.partial(abandon, actions, delivery)
            settled = Settled(
                outcome=Status.ABANDONED,
                reason=settled.reason,
                description=f"{sentence(settled.description)} Its {settled.outcome} {failed}; "
                "Service Bus will redeliver the message.",
                attempts=settled.attempts,
            )

    def logged(how: Settled) -> None:
        published = announced if announced is not None and how.terminal else None
        log_outcome(work.kind, how, published or work.record(how, finished=now()))

    settled = await _within(settlement, settled, deadline=deadline, late=logged)
    logged(settled)
    return settled


def log_outcome(kind: str, settled: Settled, record: dict[str, Any]) -> None:
    """One outcome line: ``<kind> <outcome> <record as JSON>``, the record also as the log record's attribute for
    `kind` (``grant``, ``hrEvent``, ``callback``); a warning when the delivery was dead-lettered, abandoned or left
    unsettled."""
    warn = settled.outcome in (Status.DEAD_LETTERED, Status.ABANDONED, Status.UNSETTLED)
    attribute = "hrEvent" if kind == "hr-event" else kind
    outcome_log.log(
        logging.WARNING if warn else logging.INFO,
        "%s %s %s",
        kind,
        settled.outcome,
        json.dumps(record),
        extra={attribute: record},
    )


def sentence(text: str) -> str:
    """`text`, stripped, ending with a full stop unless it ends with one already (or ``!``, ``?``)."""
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def _dead(
    actions: MessageActions, delivery: Delivery, work: Work, error: GrantError, *, why: str | None, attempt: int
) -> tuple[Settled, Settlement]:
    parts = [error.description, why, _graph_line(error.graph), f"Attempts: {attempt}.", work.note]
    description = clip(" ".join(sentence(part) for part in parts if part), MAX_DESCRIPTION_CHARS)
    settlement = functools.partial(deadletter, actions, delivery, reason=error.reason.value, description=description)
    settled = Settled(
        outcome=Status.DEAD_LETTERED, reason=error.reason.value, description=description, attempts=attempt
    )
    return settled, settlement


def _graph_line(graph: GraphAnswer | None) -> str | None:
    if graph is None:
        return None
    return f"Last Graph answer: {graph.status} {graph.code or ''} {graph.message or ''}; request-id {graph.request_id}"


async def _retry(
    actions: MessageActions,
    delivery: Delivery,
    work: Work,
    error: TransientError,
    first_attempt_at: datetime,
    when: datetime,
    attempt: int,
) -> tuple[Settled, Settlement]:
    """Send the retry copy; then the original is to be completed (or abandoned, when no copy was sent)."""
    copy = work.retry
    try:
        if copy is None:
            raise _NoCopy()
        if copy.sender is None:
            raise RuntimeError(f"no sender is configured for the retry copies of {work.kind} messages")
        properties: dict[str, str | int] = {
            **copy.carried,
            ATTEMPT: attempt + 1,
            FIRST_ATTEMPT_AT: first_attempt_at.isoformat(),
            ORIGINAL_MESSAGE_ID: delivery.original_message_id,
        }
        await copy.sender.schedule(
            body=delivery.body,
            message_id=copy.message_id(attempt + 1),
            application_properties=properties,
            scheduled_enqueue_time=when,
        )
    except _NoCopy:
        return _abandoned(error, attempt, "Service Bus will redeliver the message."), functools.partial(
            abandon, actions, delivery
        )
    except Exception:
        _log.exception("could not schedule the retry copy of %s message %s", work.kind, _safe(delivery.message_id))
        return _abandoned(error, attempt, "The retry copy could not be sent; Service Bus will redeliver."), (
            functools.partial(abandon, actions, delivery)
        )
    settled = Settled(
        outcome=Status.RETRY_SCHEDULED,
        reason=error.reason.value,
        description=f"{sentence(error.description)} Attempt {attempt + 1} scheduled for {when.isoformat()}.",
        attempts=attempt,
    )
    return settled, functools.partial(complete, actions, delivery)


class _NoCopy(Exception):
    """The work makes no retry copies: Service Bus's redelivery is its retry."""


def _abandoned(error: TransientError, attempt: int, then: str) -> Settled:
    return Settled(
        outcome=Status.ABANDONED,
        reason=error.reason.value,
        description=f"{sentence(error.description)} {then}",
        attempts=attempt,
    )


async def _within(
    settlement: Settlement, settled: Settled, *, deadline: float, late: Callable[[Settled], None]
) -> Settled:
    """Make `settlement` (decided as `settled`) within `deadline` seconds and return `settled`; if the host does not
    answer in time, return it as ``unsettled`` and call `late` with `settled` should the call still succeed later
    (from the settlement's thread)."""
    try:
        await settlement(deadline=deadline)
    except SettlementTimeout as stalled:
        if stalled.late is not None:
            stalled.late.add_done_callback(functools.partial(_finished_late, settled, stalled.method, late))
        return Settled(
            outcome=Status.UNSETTLED,
            reason=settled.reason,
            description=clip(
                f"{settled.outcome}: {sentence(settled.description)} But {stalled}: the message is left to its "
                "lock expiry and Service Bus delivers it again; should the call still succeed, this outcome is "
                "logged then.",
                MAX_DESCRIPTION_CHARS,
            ),
            attempts=settled.attempts,
        )
    return settled


def _finished_late(settled: Settled, method: str, late: Callable[[Settled], None], call: Future[None]) -> None:
    if call.cancelled():
        return
    if (error := call.exception()) is None:
        late(settled)
    else:
        _log.info(
            "a %s that answered after its deadline failed (%s); Service Bus delivers the message again",
            method,
            type(error).__name__,
        )


def _safe(value: object) -> str:
    return json.dumps(str(value), ensure_ascii=True)
