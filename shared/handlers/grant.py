"""The grant triggers (``grant_membership``, ``grant_membership_bulk``): one grant message, parsed, passed through
the intent gate, settled by the one ladder (`shared.service.settle`).

A delivery's work: parse the body (`parse_grant`), then `IntentGate.run` in the trigger's lane, which records
``in_progress`` through the hook it is given once the attempt has held its pair's lease for a second. Its end:

- terminal: the outcome event is published (with an outcomes topic) and the status record written to the
  ledger, at once, before the message is settled; either failing abandons the message (a status the API shows as
  terminal is always one the message really ended with; the redelivery carries the request out again through
  the ledger, where it ends already_member). A *duplicate*, a message that could not be parsed, and one whose id
  names another request (``RequestIdConflict``) only write a status where the request id has none yet;
- a retry: its copy goes back to the lane's queue (MessageId `retry_message_id`, the job's row and HR event
  carried on), and ``retry_scheduled`` with ``nextRetryAt`` is recorded (best-effort: the copy is queued).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from shared.adapters.lanes import LaneSender
from shared.adapters.ledger import Ledger
from shared.core.contract import GrantCommand, parse_grant
from shared.core.errors import ContractError, GrantError, Reason
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
from shared.core.statuses import Settled, Status, StatusRecord, StatusWrite
from shared.service.gate import Arrival, IntentGate
from shared.service.settle import Done, RetryCopy, Work, settle

__all__ = ["GrantHandler", "retry_message_id"]

_log = logging.getLogger(__name__)

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
        work = _Grant(delivery, lane=lane, handler=self, started=self._now())
        return await settle(
            delivery, work, actions=actions, policy=self._policy, now=self._now, deadline=self._deadline
        )

    async def record(self, record: StatusRecord, write: StatusWrite) -> bool:
        """Write `record` as its request's status in the ledger, as `write` says (raises `TransientError`)."""
        return await self._ledger.record(record, now=self._now(), write=write)


class _Grant(Work):
    """One grant delivery being processed: what its records and its retry copy need to know about it."""

    kind = "grant"

    def __init__(self, delivery: Delivery, *, lane: Lane, handler: GrantHandler, started: datetime) -> None:
        self.delivery = delivery
        self.lane = lane
        self.handler = handler
        self.started = started
        self.command: GrantCommand | None = None
        self.request_id: str | None = None
        self.graph_request_id: str | None = None
        self.role_template_id: str | None = None
        self.status: StatusRecord | None = None
        self.retry = RetryCopy(
            sender=handler._senders.lane(lane),
            message_id=lambda attempt: retry_message_id(delivery, attempt),
            carried={
                name: value
                for name in _CARRIED
                if isinstance(value := delivery.application_property(name), str | int)
                and not isinstance(value, bool)
                and value != ""
            },
        )

    async def run(self) -> Done:
        try:
            self.command = command = parse_grant(self.delivery.body)
        except ContractError as error:
            self.request_id = error.request_id
            raise
        self.request_id = command.request_id
        expiry_of = self.delivery.application_property(EXPIRY_OF)
        arrival = Arrival(
            origin=self.delivery.original_message_id,
            enqueued_at=self.delivery.enqueued_time or self.handler._now(),
            lane=self.lane,
            expiry_of=str(expiry_of) if expiry_of else None,
            admitted=self._in_progress,
        )
        try:
            result = await self.handler._gate.run(command, arrival)
        except GrantError as error:
            self.graph_request_id = error.graph.request_id if error.graph else None
            self.role_template_id = error.role_template_id
            raise
        self.graph_request_id = result.graph.request_id if result.graph else None
        self.role_template_id = result.role_template_id
        return Done(status=result.outcome, description=result.description)

    def record(self, settled: Settled, *, finished: datetime) -> dict[str, Any]:
        self.status = self._status(settled, finished=finished)
        return outcome_line(self.status, settled, finished=finished)

    async def announce(self, settled: Settled, record: dict[str, Any]) -> str | None:
        """Publish the outcome event and record the status, at once; None when both succeeded, else what failed."""
        calls: dict[str, Awaitable[object]] = {}
        publisher = self.handler._publisher
        if publisher is not None:
            calls["event could not be published"] = publisher.publish(
                **outcome_event(self.delivery, self.command, settled, record)
            )
        if self.status is not None and self.request_id:
            owner = (
                self.command is not None
                and settled.outcome is not Status.DUPLICATE
                and settled.reason != Reason.REQUEST_ID_CONFLICT
            )
            calls["status could not be recorded"] = self.handler.record(
                self.status, StatusWrite.FINAL if owner else StatusWrite.FIRST
            )
        results = await asyncio.gather(*calls.values(), return_exceptions=True)
        failed = None
        for what, result in zip(calls, results, strict=True):
            if isinstance(result, BaseException):
                _log.error(
                    "the %s %s for %s; abandoning it",
                    settled.outcome,
                    what,
                    json.dumps(str(self.request_id)),
                    exc_info=result if isinstance(result, Exception) else None,
                )
                if not isinstance(result, Exception):
                    raise result
                failed = failed or what
        return failed

    async def retrying(self, settled: Settled, *, when: datetime) -> None:
        """Record ``retry_scheduled`` with ``nextRetryAt`` (never over a terminal status); a failure is only logged:
        the retry copy is queued already, and its outcome will be recorded."""
        record = self._status(settled, finished=self.handler._now(), next_retry_at=when)
        try:
            await self.handler.record(record, StatusWrite.PROGRESS)
        except Exception:
            _log.warning("could not record the retry of %s", json.dumps(str(self.request_id)), exc_info=True)

    async def _in_progress(self) -> bool:
        """Record ``in_progress`` (the gate calls it once the attempt has held its lease for a while)."""
        settled = Settled(
            outcome=Status.IN_PROGRESS,
            reason=None,
            description=f"attempt {self.delivery.attempt} is being carried out",
            attempts=self.delivery.attempt,
        )
        now = self.handler._now()
        return await self.handler.record(self._status(settled, finished=now, started=now), StatusWrite.PROGRESS)

    def _status(
        self,
        settled: Settled,
        *,
        finished: datetime,
        started: datetime | None = None,
        next_retry_at: datetime | None = None,
    ) -> StatusRecord:
        return grant_status(
            self.delivery,
            command=self.command,
            request_id=self.request_id,
            settled=settled,
            started=started or self.started,
            finished=finished,
            graph_request_id=self.graph_request_id,
            role_template_id=self.role_template_id,
            next_retry_at=next_retry_at,
        )


def retry_message_id(delivery: Delivery, attempt: int) -> str:
    """``~retry:<digest>:<attempt>``: the digest of the original MessageId, the body and the resubmission (if
    any), so retry copies of two messages never share an id, whatever their request ids."""
    resubmission = str(delivery.application_property(RESUBMISSION) or "")
    body_hash = hashlib.sha256(delivery.body).hexdigest()
    return derived_message_id("retry", delivery.original_message_id, body_hash, resubmission, suffix=str(attempt))
