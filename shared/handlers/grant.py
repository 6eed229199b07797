"""The grant triggers (``grant_membership``, ``grant_membership_bulk``, and one per producer queue): one grant message,
its producer established, parsed, passed through the intent gate, settled by the one ladder (`shared.service.settle`).

Who asked is established by how the message arrived (`shared.core.producers.establish`): on a message the app sealed
(a retry copy, the webhook's queued request, an HR grant, an expiry removal), the producer sealed with it; on any
other, the producer the queue it came from is bound to, none (``UnknownProducer``) when the queue is bound to no
producer. A producer's own request naming another source system is dead-lettered ``SourceMismatch``. A message the
app sealed to run later (an HR grant, an expiry removal, a retry copy, a confirming copy) delivered before that time
(`Delivery.early`: a copy resent by someone who can read the queue, or resubmitted) is not read any further: the
ladder queues it again for its time (`NotYet`).

A delivery first passes the lane gate (`shared.service.lane_gate`: a bulk one gives way on the CPU while interactive
ones are in the process). The handler parses the body (`parse_grant`), runs the command through `IntentGate.run` in the
entry's lane (handing it the ``in_progress`` status record to write should the attempt hold its pair's lease for over a
second), and gives the ladder how it ended with the grant's `Ending`: its status record (`grant_status`, its
producer's), outcome line and outcome event, and its retry copy (back to the lane's queue, MessageId `retry_message_id`,
the producer, the job's row and HR event carried on, sealed).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from shared.adapters.lanes import LaneSender
from shared.adapters.ledger import Ledger
from shared.adapters.seal import Sealer
from shared.core.contract import DERIVED_PREFIX, GrantCommand, parse_grant
from shared.core.errors import ContractError, GrantError, Reason, TransientError
from shared.core.messaging import (
    ARRIVED_AT,
    BULK_JOB,
    EXPIRY_OF,
    HR_EVENT,
    HR_TIEBREAK,
    JOB_ROW,
    JOB_ROWS,
    PRODUCER,
    RESUBMISSION,
    Delivery,
    Lane,
    MessageActions,
    MessageSender,
    OutcomePublisher,
    derived_message_id,
    job_row_problem,
)
from shared.core.producers import Producer, Producers, check_source, establish
from shared.core.records import grant_status, outcome_event, outcome_line
from shared.core.retry import RetryPolicy
from shared.core.statuses import Holder, Settled, Status, StatusRecord
from shared.service.gate import Arrival, IntentGate
from shared.service.lane_gate import LaneGate
from shared.service.settle import Done, Ending, NotYet, RetryCopy, settle

__all__ = ["GrantHandler", "retry_message_id"]

#: The request ids of the app's own removals: an expiry's, a drift repair's (carried out even for a producer the
#: registry no longer has).
_REMOVALS = ("~expire:", "~drift")
#: The properties a retry copy carries on (sealed with it): the removal's grant, the job's (or HR event's) row, an HR
#: intent's tiebreak, and the resubmission's; besides its producer, its first arrival and the ladder's own.
_CARRIED = (EXPIRY_OF, HR_EVENT, HR_TIEBREAK, BULK_JOB, JOB_ROW, JOB_ROWS, RESUBMISSION)


class GrantHandler:
    """Handles grant deliveries for one process (built by the composition root)."""

    def __init__(
        self,
        *,
        gate: IntentGate,
        ledger: Ledger,
        sealer: Sealer,
        senders: LaneSender,
        publisher: OutcomePublisher | None,
        policy: RetryPolicy,
        now: Callable[[], datetime],
        deadline: float,
        producers: Producers,
        own_queues: dict[Lane, str],
        lanes: LaneGate,
    ) -> None:
        self._lanes = lanes
        self._producers = producers
        self._own_queues = own_queues
        self._gate = gate
        self._ledger = ledger
        self._sealer = sealer
        self._senders = senders
        self._publisher = publisher
        self._policy = policy
        self._now = now
        self._deadline = deadline

    async def __call__(
        self, message: Any, actions: MessageActions, *, lane: Lane = Lane.INTERACTIVE, queue: str | None = None
    ) -> Settled:
        """Process and settle one grant message received from `queue` (a producer's own; None: the app's own queue
        of `lane`), once the lane gate lets it in (a bulk one gives way to interactive ones); return how it ended
        (also logged)."""
        bound = self._producers.on_queue(queue or self._own_queues[lane])
        if queue is not None and bound is not None:
            lane = bound.lane
        async with self._lanes.enter(lane):
            return await self._handle(message, actions, lane, bound)

    async def _handle(self, message: Any, actions: MessageActions, lane: Lane, bound: Producer | None) -> Settled:
        received = Delivery.of(message)
        started = self._now()
        try:  # what the app believes of it: its internal properties only when the app sealed it
            delivery = await self._sealer.trusted(received, job_properties=bound is not None)
        except TransientError as error:  # the seal's key cannot be read now: the message may be the app's own
            unread = received.trusted(sealed=False, job_properties=False)
            return await self._settle(unread, error, None, lane, started, actions)
        attempt = _Attempt(delivery=delivery, started=started)
        if (until := delivery.early(started)) is not None:  # sealed to run later: nothing of it is carried out now
            attempt.came_early()
            return await self._settle(delivery, NotYet(until=until), attempt, lane, started, actions)
        outcome: Done | Exception
        try:
            stated = delivery.text_property(PRODUCER)
            if not delivery.own:  # who sent it is its queue's to say, before anything of it is read
                attempt.producer = establish(self._producers, own=False, stated=None, bound=bound, system=None)
            attempt.command = command = parse_grant(delivery.body, own=delivery.own)
            attempt.request_id = command.request_id
            if delivery.own:
                attempt.stated = stated  # its status is that producer's, even should it no longer be registered
                removal = delivery.text_property(EXPIRY_OF) is not None or command.request_id.startswith(_REMOVALS)
                attempt.producer = establish(
                    self._producers,
                    own=True,
                    stated=stated,
                    bound=bound,
                    system=command.source.system.value,
                    app_removal=removal,
                )
            producer = attempt.producer
            assert producer is not None
            if not command.request_id.startswith(DERIVED_PREFIX):  # a producer's own words: it speaks as itself
                check_source(producer, command)
            if not delivery.own and (problem := job_row_problem(delivery.application_properties)) is not None:
                raise ContractError(Reason.INVALID_JOB_ROW, problem, request_id=command.request_id)
            arrival = Arrival(
                origin=delivery.original_message_id,
                arrived_at=delivery.arrived_at(started),
                producer=producer,
                lane=lane,
                expiry_of=delivery.text_property(EXPIRY_OF),
                progress=attempt.in_progress(),
                tiebreak=delivery.tiebreak,
                not_before=delivery.not_before,
            )
            result = await self._gate.run(command, arrival)
        except ContractError as error:
            attempt.request_id = error.request_id or attempt.request_id
            outcome = error
        except GrantError as error:
            attempt.noted(error.graph.request_id if error.graph else None, error.role_template_id)
            outcome = error
        except Exception as error:  # a bug: the ladder abandons the message
            outcome = error
        else:
            attempt.noted(result.graph.request_id if result.graph else None, result.role_template_id)
            attempt.held_by = result.held_by
            outcome = Done(status=result.outcome, description=result.description, again_at=result.confirm_at)
        return await self._settle(delivery, outcome, attempt, lane, started, actions)

    async def _settle(
        self,
        delivery: Delivery,
        outcome: Done | NotYet | Exception,
        attempt: _Attempt | None,
        lane: Lane,
        started: datetime,
        actions: MessageActions,
    ) -> Settled:
        """Settle by the ladder; without an `attempt` (the delivery could not be read as the app's) it is only ever
        abandoned, never copied."""
        if attempt is None:
            ending = _Attempt(delivery=delivery, started=started).ending(None)
            ending = replace(ending, retry=None, status=None)
        else:
            ending = attempt.ending(self._senders.lane(lane))
        return await settle(
            delivery,
            outcome,
            ending,
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
        self.producer: Producer | None = None
        self.stated: str | None = None  # the producer a sealed message names, registered or not
        self.request_id: str | None = None
        self.graph_request_id: str | None = None
        self.role_template_id: str | None = None
        self.held_by: tuple[Holder, ...] | None = None  # a released request's: what keeps the membership
        self.waits = False  # it came before its time: sent again as it is (`NotYet`)

    def came_early(self) -> None:
        """The delivery came before the time it was sealed for: its outcome line names its request (read, not acted
        on), and its copy for then is the sealed message itself, whoever its producer."""
        self.waits = True
        try:
            self.request_id = parse_grant(self.delivery.body, own=True).request_id
        except ContractError as error:
            self.request_id = error.request_id

    def noted(self, graph_request_id: str | None, role_template_id: str | None) -> None:
        self.graph_request_id, self.role_template_id = graph_request_id, role_template_id

    def status(self, settled: Settled, finished: datetime, next_retry_at: datetime | None = None) -> StatusRecord:
        """The attempt's status record (`grant_status`); a row refused for its job properties is no row of the job."""
        record = grant_status(
            self.delivery,
            producer=self.owner,
            command=self.command,
            request_id=self.request_id,
            settled=settled,
            started=self.started,
            finished=finished,
            graph_request_id=self.graph_request_id,
            role_template_id=self.role_template_id,
            next_retry_at=next_retry_at,
        )
        if settled.reason == Reason.INVALID_JOB_ROW:
            record = record.replace(job_id=None, job_row=None, job_rows=None)
        if settled.outcome is Status.RELEASED:
            record = record.replace(held_by=self.held_by or ())
        return record

    @property
    def owner(self) -> str | None:
        """Whose request this is: the established producer's, else (a sealed message for a producer the registry no
        longer has) the one it names; None when nobody's."""
        return self.producer.name if self.producer is not None else self.stated

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

    def ending(self, sender: MessageSender | None) -> Ending:
        """How the ladder ends this delivery. Without an established producer there is no one whose status it could
        be: no status record, and no retry copy (nothing a copy could be sealed for), unless the delivery came before
        its time (its copy for then is the sealed message as it is)."""
        delivery, producer = self.delivery, self.producer
        return Ending(
            kind="grant",
            line=self.line,
            status=self.status if self.owner is not None else None,
            event=functools.partial(outcome_event, delivery, self.command),
            owner=self.command is not None,
            source=self.command.source.system.value if self.command is not None else None,
            retry=RetryCopy(
                sender=sender if producer is not None or self.waits else None,
                message_id=functools.partial(retry_message_id, delivery, producer.name if producer else ""),
                carried={
                    PRODUCER: producer.name if producer else "",
                    ARRIVED_AT: delivery.arrived_at(self.started).isoformat(),
                    **{
                        name: value
                        for name in _CARRIED
                        if isinstance(value := delivery.application_property(name), str | int)
                        and not isinstance(value, bool)
                        and value != ""
                    },
                },
            ),
        )


def retry_message_id(delivery: Delivery, producer: str, attempt: int) -> str:
    """``~retry:<digest>:<attempt>``: the digest of the producer, the original MessageId, the body and the
    resubmission (if any), so retry copies of two messages never share an id, whatever their request ids (two
    producers' messages may share a MessageId and a body, each on its own queue)."""
    resubmission = str(delivery.application_property(RESUBMISSION) or "")
    body_hash = hashlib.sha256(delivery.body).hexdigest()
    sources = (producer, delivery.original_message_id, body_hash, resubmission)
    return derived_message_id("retry", *sources, suffix=str(attempt))
