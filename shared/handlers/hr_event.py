"""The HR events trigger (``hr_events``): one joiner / mover / leaver event, turned into grant messages on the grants
queue, settled by the one ladder (`shared.service.settle`).

The event's producer is the one the HR events queue it came from is bound to (the producer registry: an HR system
is known by the queue only it may send to); an event on a queue bound to no producer is dead-lettered
``UnknownProducer``. Each grant message (`shared.core.hr_events.derive_messages`) is that producer's request,
scheduled for the event's effective time (`effective_at`) with the producer, the event id and its row, sealed; then
each is recorded in the ledger (``scheduled`` when due later,
``accepted`` when due now, only where it has no status yet) and the event's own record. Settlement: every message
sent and recorded → complete; an invalid event → dead-letter ``InvalidHrEvent`` (no rules file configured:
``HrRulesNotConfigured``); a send (``QueueUnavailable``) or a record that fails → abandon (the redelivery sends
again, and duplicate detection absorbs what had been sent). One ``hr-event <outcome> {json}`` line per delivery
(`hr_event_line`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from shared.adapters.ledger import Ledger
from shared.adapters.seal import Sealer
from shared.core.contract import target_document
from shared.core.errors import ContractError, Reason, TransientError
from shared.core.hr_events import (
    GrantMessage,
    HrEvent,
    KnownEvent,
    derive_messages,
    effective_at,
    gives,
    parse_event,
    place,
    tiebreak_text,
)
from shared.core.hr_rules import HrRules
from shared.core.messaging import (
    HR_EVENT,
    HR_TIEBREAK,
    JOB_ROW,
    JOB_ROWS,
    PRODUCER,
    Delivery,
    MessageActions,
    MessageSender,
)
from shared.core.producers import Producer, Producers, establish
from shared.core.records import accepted_status, hr_event_line
from shared.core.retry import RetryPolicy
from shared.core.statuses import Settled, Status, StatusWrite
from shared.service.settle import Done, Ending, NotYet, settle

__all__ = ["HrEventHandler"]

_log = logging.getLogger(__name__)


class HrEventHandler:
    """Handles HR event deliveries for one process (built by the composition root)."""

    def __init__(
        self,
        *,
        sealer: Sealer,
        rules: HrRules | None,
        sender: MessageSender,
        ledger: Ledger,
        policy: RetryPolicy,
        now: Callable[[], datetime],
        time_zone: str,
        deadline: float,
        producers: Producers,
        own_queue: str,
    ) -> None:
        self._producers = producers
        self._own_queue = own_queue
        self._sealer = sealer
        self._rules = rules
        self._sender = sender
        self._ledger = ledger
        self._policy = policy
        self._now = now
        self._time_zone = time_zone
        self._deadline = deadline

    async def __call__(self, message: Any, actions: MessageActions, *, queue: str | None = None) -> Settled:
        """Turn one HR event received from `queue` (None: the app's own HR events queue) into grant messages on the
        grants queue, and settle it; return how it ended (also logged)."""
        delivery = Delivery.of(message)
        event: HrEvent | None = None
        sent: list[str] = []
        outcome: Done | NotYet | Exception
        try:
            delivery = await self._sealer.trusted(delivery)  # an HR event is a producer's: no internal properties
            if (until := delivery.early(self._now())) is not None:  # a message the app sealed to run later, here:
                outcome = NotYet(until=until)  # never an HR event; with no copy, it waits for its lock expiry
            else:
                bound = self._producers.on_queue(queue or self._own_queue)
                producer = establish(self._producers, own=False, stated=None, bound=bound, system=None)
                if self._rules is None:
                    raise ContractError(Reason.HR_RULES_NOT_CONFIGURED, "GRANTS_HR_RULES is not set")
                event = parse_event(delivery.body, message_id=delivery.original_message_id)  # a resubmission's too
                outcome = await self._send(delivery, event, self._rules, producer, sent)
        except Exception as error:  # the ladder decides by its class
            outcome = error
        return await settle(
            delivery,
            outcome,
            Ending(kind="hr-event", line=functools.partial(hr_event_line, delivery, event, tuple(sent))),
            actions=actions,
            policy=self._policy,
            now=self._now,
            deadline=self._deadline,
        )

    async def _send(
        self, delivery: Delivery, event: HrEvent, rules: HrRules, producer: Producer, sent: list[str]
    ) -> Done:
        """Place the event (`place`: as first recorded in the index of its person's events, from its first arrival),
        derive its grant messages against the person's other events (fixed by its first derivation), schedule them,
        `producer`'s requests (each id appended to `sent` once sent), then record them; a send that fails records what
        was sent and what was not, and raises `TransientError(QueueUnavailable)`."""
        received = self._now()
        arrived = delivery.arrived_at(received)  # a resubmitted copy's first arrival: older, never newer
        placement = place(event, first_arrival=arrived, zone=self._time_zone, leavers=rules.leavers)
        known = await self._ledger.hr_events(
            producer=producer.name, event=KnownEvent(event=event, placement=placement), now=received
        )
        mine = next((k for k in known if k.event.event_id == event.event_id), None)
        if mine is None and event.kind == "leaver":  # past the first events of its person read: read by its key, a
            mine = await self._ledger.hr_event(producer=producer.name, event=event)  # leaver still ends every target
        if mine is None:
            raise TransientError(Reason.LEDGER_UNAVAILABLE, "the HR event just recorded could not be read back")
        if mine.event != event:
            raise ContractError(
                Reason.INVALID_HR_EVENT,
                f"eventId {event.event_id} was first used for another event of this person ({mine.event.kind}, "
                f"effective {mine.event.effective_date or 'when it occurred'}): a correction is an event of its own, "
                "with an eventId of its own",
            )
        considered = mine.considered
        if considered is None:
            others = tuple(sorted(k.event.event_id for k in known if k is not mine))
            considered = await self._ledger.consider(
                producer=producer.name, event=mine, considered=others, gives=gives(event, rules)
            )
        against = [k for k in known if k.event.event_id in set(considered)]
        messages = derive_messages(event, rules, placement=mine.placement, known=against)
        rows = len(messages)
        try:
            for row, message in enumerate(messages, start=1):
                properties: dict[str, str | int] = {
                    PRODUCER: producer.name,
                    HR_EVENT: event.event_id,
                    JOB_ROW: row,
                    JOB_ROWS: rows,
                    HR_TIEBREAK: tiebreak_text(message.placement),
                }
                await self._sender.schedule(  # two HR systems may use one event id: the MessageId names the producer
                    body=message.body,
                    message_id=f"{message.request_id}:{producer.name}",
                    application_properties=properties,
                    scheduled_enqueue_time=effective_at(message.placement, now=received),
                )
                sent.append(message.request_id)
        except Exception as error:
            unsent = TransientError(
                Reason.QUEUE_UNAVAILABLE,
                f"sent {len(sent)} of {rows} grant messages ({type(error).__name__}); the rest are sent when the event "
                "is delivered again",
            )
            try:
                await _record(
                    self._ledger,
                    mine,
                    messages,
                    sent=len(sent),
                    producer=producer.name,
                    delivery=delivery,
                    received=received,
                    problem=unsent,
                )
            except TransientError:
                _log.warning("could not record what HR event %s sent", json.dumps(event.event_id), exc_info=True)
            raise unsent from error
        await _record(
            self._ledger, mine, messages, sent=rows, producer=producer.name, delivery=delivery, received=received
        )
        due = effective_at(mine.placement, now=received)
        when = f", scheduled for {due.isoformat()}" if due > received else ""
        return Done(status=Status.COMPLETED, description=f"{event.kind}: {rows} grant message(s) sent{when}")


async def _record(
    ledger: Ledger,
    known: KnownEvent,
    messages: list[GrantMessage],
    *,
    sent: int,
    producer: str,
    delivery: Delivery,
    received: datetime,
    problem: TransientError | None = None,
) -> None:
    """Record each grant sent as ``scheduled`` (due later) or ``accepted`` (due now), unless it has a status already,
    as the event's rows of its person; then the event's own record for the person (``GET /api/hr-events/{eventId}``):
    ``completed``, or ``incomplete`` with the rows not sent (`problem`: why). Raises `TransientError`."""
    event = known.event
    records = []
    for row, message in enumerate(messages[:sent], start=1):
        due = effective_at(message.placement, now=received)
        later = due > received
        status = Status.SCHEDULED if later else Status.ACCEPTED
        record = accepted_status(message.command, producer=producer, received=received, status=status).replace(
            hr_event_id=event.event_id, job_row=row, job_rows=len(messages), scheduled_for=due if later else None
        )
        records.append(ledger.record(record, now=received, write=StatusWrite.FIRST))
    await asyncio.gather(*records)
    due = effective_at(known.placement, now=received)
    not_sent = [
        {"jobRow": row, "requestId": message.request_id, "action": message.command.action.value}
        | {"target": target_document(message.command.target)}
        for row, message in enumerate(messages, start=1)
        if row > sent
    ]
    await ledger.record_event(
        event.event_id,
        {
            "eventId": event.event_id,
            "eventType": event.kind,
            "employeeId": event.employee_id,
            "userObjectId": event.user_id,
            "effectiveDate": event.effective_date,
            "occurredAt": event.occurred_at.isoformat() if event.occurred_at else None,
            "effectiveAt": known.placement.moment.isoformat(),
            "firstArrivedAt": known.placement.tiebreak[1].isoformat(),
            "outcome": "incomplete" if problem is not None else Status.COMPLETED.value,
            "reason": problem.reason.value if problem is not None else None,
            "description": problem.description if problem is not None else None,
            "attempts": delivery.attempt,
            "rows": len(messages),
            "sent": sent,
            "notSent": not_sent,
            "scheduledFor": due.isoformat() if due > received else None,
            "receivedAt": received.isoformat(),
        },
        producer=producer,
        member=event.user_id,
        now=received,
    )
