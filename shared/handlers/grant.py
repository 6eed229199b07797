"""The grant triggers (``grant_membership``, ``grant_membership_bulk``): one grant message, parsed, passed through
the intent gate, settled by the one ladder (`shared.service.settle`).

The handler parses the body (`parse_grant`), runs the command through `IntentGate.run` in the trigger's lane
(handing it the ``in_progress`` status record to write should the attempt hold its pair's lease for over a
second), and gives the ladder how it ended with the grant's `Ending`: its status record (`grant_status`), outcome
line and outcome event, and its retry copy (back to the lane's queue, MessageId `retry_message_id`, the job's row
and HR event carried on).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

from shared.adapters.lanes import LaneSender
from shared.adapters.ledger import Ledger
from shared.core.contract import GrantCommand, parse_grant
from shared.core.errors import ContractError, GrantError
from shared.core.messaging import (
    BULK_JOB,
    EXPIRY_OF,
    HR_EVENT,
    JOB_ROW,
    JOB_ROWS,
    RESUBMISSION,
    Delivery,
    Lane,
    MessageActions,
    OutcomePublisher,
    derived_message_id,
)
from shared.core.records import grant_status, outcome_event, outcome_line
from shared.core.retry import RetryPolicy
from shared.core.statuses import Settled, Status, StatusRecord
from shared.service.gate import Arrival, IntentGate
from shared.service.settle import Done, Ending, RetryCopy, settle

__all__ = ["GrantHandler", "retry_message_id"]

#: The properties a retry copy carries on: the copy is still the job's (or HR event's) row, and the resubmission's.
_CARRIED = (RESUBMISSION, BULK_JOB, HR_EVENT, JOB_ROW, JOB_ROWS)


class GrantHandler:
    """Handles grant deliveries for one process (built by the composition root)."""

    def __init__(
        self,
        *,
        gate: IntentGate,
        ledger: Ledger,
        senders: LaneSender,
        publisher: OutcomePublisher | None,
        policy: RetryPolicy,
        now: Callable[[], datetime],
        deadline: float,
    ) -> None:
        self._gate = gate
        self._ledger = ledger
        self._senders = senders
        self._publisher = publisher
        self._policy = policy
        self._now = now
        self._deadline = deadline

    async def __call__(self, message: Any, actions: MessageActions, *, lane: Lane = Lane.INTERACTIVE) -> Settled:
        """Process and settle one received grant message of `lane`; return how it ended (also logged)."""
        delivery = Delivery.of(message)
        attempt = _Attempt(delivery=delivery, started=self._now())
        outcome: Done | Exception
        try:
            attempt.command = command = parse_grant(delivery.body)
            attempt.request_id = command.request_id
            expiry_of = delivery.text_property(EXPIRY_OF)
            arrival = Arrival(
                origin=delivery.original_message_id,
                enqueued_at=delivery.enqueued_time or attempt.started,
                lane=lane,
                expiry_of=expiry_of,
                progress=attempt.in_progress(),
            )
            result = await self._gate.run(command, arrival)
        except ContractError as error:
            attempt.request_id = error.request_id
            outcome = error
        except GrantError as error:
            attempt.noted(error.graph.request_id if error.graph else None, error.role_template_id)
            outcome = error
        except Exception as error:  # a bug: the ladder abandons the message
            outcome = error
        else:
            attempt.noted(result.graph.request_id if result.graph else None, result.role_template_id)
            outcome = Done(status=result.outcome, description=result.description)
        return await settle(
            delivery,
            outcome,
            attempt.ending(self._senders.lane(lane)),
            actions=actions,
            policy=self._policy,
            now=self._now,
            deadline=self._deadline,
            publisher=self._publisher,
            ledger=self._ledger,
        )


class _Attempt:
    """What one grant delivery's records and retry copy need to know about it, gathered as it is processed."""

    def __init__(self, *, delivery: Delivery, started: datetime) -> None:
        self.delivery = delivery
        self.started = started
        self.command: GrantCommand | None = None
        self.request_id: str | None = None
        self.graph_request_id: str | None = None
        self.role_template_id: str | None = None

    def noted(self, graph_request_id: str | None, role_template_id: str | None) -> None:
        self.graph_request_id, self.role_template_id = graph_request_id, role_template_id

    def status(self, settled: Settled, finished: datetime, next_retry_at: datetime | None = None) -> StatusRecord:
        """The attempt's status record (`grant_status`)."""
        return grant_status(
            self.delivery,
            command=self.command,
            request_id=self.request_id,
            settled=settled,
            started=self.started,
            finished=finished,
            graph_request_id=self.graph_request_id,
            role_template_id=self.role_template_id,
            next_retry_at=next_retry_at,
        )

    def in_progress(self) -> StatusRecord:
        """The ``in_progress`` status record of this attempt, as the gate writes it once the attempt has held its
        pair's lease for a while."""
        attempt = self.delivery.attempt
        settled = Settled(
            outcome=Status.IN_PROGRESS,
            reason=None,
            description=f"attempt {attempt} is being carried out",
            attempts=attempt,
        )
        return self.status(settled, self.started)

    def line(self, settled: Settled, finished: datetime) -> dict[str, Any]:
        """The outcome line's record: the status record with the line's own fields."""
        return outcome_line(self.status(settled, finished), settled, finished=finished)

    def ending(self, sender: Any) -> Ending:
        delivery = self.delivery
        return Ending(
            kind="grant",
            line=self.line,
            status=self.status,
            event=functools.partial(outcome_event, delivery, self.command),
            owner=self.command is not None,
            retry=RetryCopy(
                sender=sender,
                message_id=functools.partial(retry_message_id, delivery),
                carried={
                    name: value
                    for name in _CARRIED
                    if isinstance(value := delivery.application_property(name), str | int)
                    and not isinstance(value, bool)
                    and value != ""
                },
            ),
        )


def retry_message_id(delivery: Delivery, attempt: int) -> str:
    """``~retry:<digest>:<attempt>``: the digest of the original MessageId, the body and the resubmission (if
    any), so retry copies of two messages never share an id, whatever their request ids."""
    resubmission = str(delivery.application_property(RESUBMISSION) or "")
    body_hash = hashlib.sha256(delivery.body).hexdigest()
    return derived_message_id("retry", delivery.original_message_id, body_hash, resubmission, suffix=str(attempt))
