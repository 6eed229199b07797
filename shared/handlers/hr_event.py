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
from collections.abc import Callable
from datetime import datetime
from typing import Any

from shared.adapters.ledger import Ledger
from shared.adapters.seal import Sealer
from shared.core.contract import parse_grant
from shared.core.errors import ContractError, Reason, TransientError
from shared.core.hr_events import HrEvent, derive_messages, effective_at, parse_event
from shared.core.hr_rules import HrRules
from shared.core.messaging import HR_EVENT, JOB_ROW, JOB_ROWS, PRODUCER, Delivery, MessageActions, MessageSender
from shared.core.producers import Producer, Producers, establish
from shared.core.records import accepted_status, hr_event_line
from shared.core.retry import RetryPolicy
from shared.core.statuses import Settled, Status, StatusWrite
from shared.service.settle import Done, Ending, NotYet, settle

__all__ = ["HrEventHandler"]


class HrEventHandler:
    """Handles HR event deliveries for one process (built by the composition root)."""

    def __init__(
        self,
        *,
        sealer: Sealer,
        rules: HrRules | None,
        sender: MessageSender,
        ledger: Ledger | None,
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
                event = parse_event(delivery.body, message_id=delivery.message_id or "")
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
        """Schedule the event's grant messages, `producer`'s requests (each id appended to `sent` once sent), then
        record them."""
        messages = derive_messages(event, rules, received_at=delivery.enqueued_time or self._now())
        received = self._now()
        due = effective_at(event, zone=self._time_zone, leavers=rules.leavers, now=received)
        rows = len(messages)
        try:
            for row, (request_id, body) in enumerate(messages, start=1):
                properties: dict[str, str | int] = {
                    PRODUCER: producer.name,
                    HR_EVENT: event.event_id,
                    JOB_ROW: row,
                    JOB_ROWS: rows,
                }
                await self._sender.schedule(  # two HR systems may use one event id: the MessageId names the producer
                    body=body,
                    message_id=f"{request_id}:{producer.name}",
                    application_properties=properties,
                    scheduled_enqueue_time=due,
                )
                sent.append(request_id)
        except Exception as error:
            raise TransientError(
                Reason.QUEUE_UNAVAILABLE, f"sent {len(sent)} of {rows} grant messages ({type(error).__name__})"
            ) from error
        if self._ledger is not None:
            await _record(self._ledger, event, messages, producer=producer.name, due=due, received=received)
        when = f", scheduled for {due.isoformat()}" if due > received else ""
        return Done(status=Status.COMPLETED, description=f"{event.kind}: {rows} grant message(s) sent{when}")


async def _record(
    ledger: Ledger,
    event: HrEvent,
    messages: list[tuple[str, bytes]],
    *,
    producer: str,
    due: datetime,
    received: datetime,
) -> None:
    """Record each grant as ``scheduled`` (due later) or ``accepted`` (due now), unless it has a status already, as
    the event's rows; then the event's own record (``GET /api/hr-events/{eventId}``). Raises `TransientError`."""
    later = due > received
    status = Status.SCHEDULED if later else Status.ACCEPTED
    records = []
    for row, (_, body) in enumerate(messages, start=1):
        command = parse_grant(body, own=True)
        record = accepted_status(command, producer=producer, received=received, status=status).replace(
            hr_event_id=event.event_id, job_row=row, job_rows=len(messages), scheduled_for=due if later else None
        )
        records.append(ledger.record(record, now=received, write=StatusWrite.FIRST))
    await asyncio.gather(*records)
    await ledger.record_event(
        event.event_id,
        {
            "eventId": event.event_id,
            "eventType": event.kind,
            "employeeId": event.employee_id,
            "userObjectId": event.user_id,
            "effectiveDate": event.effective_date,
            "outcome": Status.COMPLETED.value,
            "rows": len(messages),
            "scheduledFor": due.isoformat() if later else None,
            "receivedAt": received.isoformat(),
        },
        producer=producer,
        now=received,
    )
