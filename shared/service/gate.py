"""The intent gate: every grant delivery passes the ledger before it may write to Graph.

`IntentGate.run` turns the command into an intent for its (member, target) pair (`requestedAt`, else the time
its first message was enqueued) and asks the ledger (`shared.adapters.ledger`):

- a request id already used with the same content by another message: ``duplicate``, nothing written;
  with other content: `PermanentError(RequestIdConflict)`;
- an intent older than the newest recorded for the pair: ``superseded``, nothing written;
- another attempt holds the pair's lease: `TransientError(PairBusy)`, retried when the lease ends at the latest;
- otherwise the command runs holding the lease, which is returned with what was applied. The Graph work must
  end before the lease does (it is cancelled, as `GraphUnavailable`, otherwise), so two intents for one pair
  never write at once. A Graph success whose ledger update fails is retried: it ends ``already_member`` (or
  ``not_member``) with the record corrected.

An expiry removal (application property ``expiryOf``) is the app's own act and bypasses the source's policy,
but only when the ledger confirms it: it names the pair's newest intent and the pair's pending removal is due
(or the newest intent is this removal itself, retried). Dry runs write nothing, the ledger included. `sweep`
(the timer trigger) sends the removal of every pair whose pending removal is due, so an expiry whose removal
was never scheduled, or kept failing, still ends the membership.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Final

from shared.adapters.ledger import Absorbed, Admitted, Ledger, Ticket
from shared.core.contract import Action, GrantCommand, Guid, encode
from shared.core.errors import Reason, TransientError
from shared.core.intents import (
    Superseded,
    confirm_at,
    expiry_removal,
    intent_of,
    pair_of,
    parse_pair,
    removal_is_due,
)
from shared.core.messaging import EXPIRY_OF, PRODUCER, Lane, MessageSender, derived_message_id
from shared.core.producers import APP_PRODUCER, Producer
from shared.core.statuses import Status, StatusRecord, StatusWrite
from shared.service.grants import GrantService
from shared.service.membership import Result

__all__ = ["Arrival", "IntentGate"]

_log = logging.getLogger(__name__)

#: The Graph work stops this long before the lease ends, so a write in flight cannot outlive it.
LEASE_MARGIN: Final = timedelta(seconds=15)
#: Seconds an admitted attempt works before ``in_progress`` is recorded (`Arrival.admitted`): most Graph writes
#: take less, and a status no one could see for longer than this is not worth two storage requests a grant.
PROGRESS_AFTER: Final = 1.0
_APPLIED: Final = {
    Status.GRANTED: Action.ADD,
    Status.ALREADY_MEMBER: Action.ADD,
    Status.REVOKED: Action.REMOVE,
    Status.NOT_MEMBER: Action.REMOVE,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Arrival:
    """How a command arrived: the MessageId that first carried it, when that was first enqueued (its first
    arrival, which bounds its intent time: `intent_of`), who asked (its `producer`, established by how it arrived:
    the request id is that producer's own), its lane, for an expiry
    removal the request id of the grant it ends, and the status record to write once it has held its pair's lease
    for `PROGRESS_AFTER` seconds (`progress`, ``in_progress``: written beside the Graph work and waited for before
    the result is returned, never when the work ends sooner, never over a terminal status; its failure is logged,
    never raised)."""

    origin: str
    arrived_at: datetime
    producer: Producer
    lane: Lane = Lane.INTERACTIVE
    expiry_of: str | None = None
    progress: StatusRecord | None = None


class IntentGate:
    """Runs commands through the ledger; one per process (built by the composition root)."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        grants: GrantService,
        now: Callable[[], datetime],
        progress_after: float = PROGRESS_AFTER,
    ) -> None:
        self._ledger = ledger
        self._grants = grants
        self._now = now
        self._progress_after = progress_after

    async def run(self, command: GrantCommand, arrival: Arrival) -> Result:
        """Guard `command` (policy), pass it through the ledger, and carry it out holding the pair's lease."""
        producer = arrival.producer
        if not self._grants.writes(command):
            return await self._grants.execute(command, producer=producer, lane=arrival.lane)
        pair = pair_of(command.target, command.member.id)
        own_removal = await self._is_due_expiry(command, arrival, pair)
        template = await self._grants.guard(command, producer=producer, own_removal=own_removal, lane=arrival.lane)
        now = self._now()
        intent = intent_of(command, arrived_at=arrival.arrived_at, producer=producer.name)
        decision = await self._ledger.begin(intent, pair=pair, origin=arrival.origin, now=now)
        if isinstance(decision, Absorbed):
            return Result(
                Status.DUPLICATE,
                f"request {command.request_id} was first carried by message {decision.record.origin}; "
                "this message is the same request and changes nothing",
                graph=None,
            )
        if isinstance(decision, Superseded):
            newest = decision.newest
            return Result(
                Status.SUPERSEDED,
                f"superseded by request {newest.request_id} ({newest.action.value}, requested "
                f"{newest.requested_at.isoformat()}); nothing written",
                graph=None,
            )
        if not isinstance(decision, Admitted):
            raise TransientError(
                Reason.PAIR_BUSY,
                f"request {decision.holder} for the same member and target is being carried out; waiting for it",
                retry_after=max((decision.until - now).total_seconds(), 0.0),
            )
        progress = _Progress(
            self._record_progress(arrival.progress), after=self._progress_after, request_id=command.request_id
        )
        try:
            return await self._carry_out(command, template, decision.ticket, now, arrival)
        finally:
            await progress.settle()

    async def _carry_out(
        self, command: GrantCommand, template: Guid | None, ticket: Ticket, now: datetime, arrival: Arrival
    ) -> Result:
        """Run the Graph work within the lease, then return the lease with what was applied, or with the pair left
        uncertain about a write whose outcome is unknown (a timeout, a connection lost after sending, a 5xx: it may
        still land). A write of the other action on an uncertain pair is made now and, once that write can no longer
        land, once more (`Result.confirm_at`, `shared.core.intents.confirm_at`): a late landing never outlives it."""
        assert ticket.state.lease is not None
        recorded = replace(command, requested_at=ticket.state.newest.requested_at)
        budget = (ticket.state.lease.until - LEASE_MARGIN - now).total_seconds()
        try:
            async with asyncio.timeout(budget):
                result = await self._grants.carry_out(recorded, template, producer=arrival.producer, lane=arrival.lane)
        except TimeoutError as error:
            await self._release_quietly(ticket, uncertain=command.action)
            raise TransientError(
                Reason.GRAPH_UNAVAILABLE,
                f"the Graph work did not finish within its lease ({budget:.0f} s)",
                uncertain=True,
            ) from error
        except TransientError as error:
            await self._release_quietly(ticket, uncertain=command.action if error.uncertain else None)
            raise
        except BaseException:  # a failure or a bug: the lease goes back now, not when it expires
            await self._release_quietly(ticket)
            raise
        applied = _APPLIED.get(result.outcome)
        finished = self._now()
        await self._ledger.finish(ticket, applied=applied, now=finished)
        again = None
        if applied is not None:
            again = confirm_at(ticket.state, action=applied, now=finished, window=self._ledger.uncertain_window)
        if again is None:
            return result
        doubt = ticket.state.uncertain
        assert doubt is not None
        return replace(
            result,
            confirm_at=again,
            description=f"{result.description}; a {doubt.action.value} of request {doubt.request_id} whose answer "
            f"never came may still land: this request is carried out once more at {again.isoformat()}",
        )

    async def sweep(self, sender: MessageSender) -> int:
        """The expiry sweep: send the app's own removal (`expiry_removal`) for every pair whose pending removal is
        due, for the grant function to carry out; return how many were sent. A pair whose record cannot be read back
        as one is skipped and reported (an error line naming it), never the end of the sweep; a send that fails
        raises (the next sweep sends it again: the removal stays pending in the ledger until it is applied)."""
        now = self._now()
        sent = 0
        for pair, state in await self._ledger.due_removals(now=now):
            try:
                target, member_id = parse_pair(pair)
                removal = expiry_removal(target, member_id, of=state.newest)
            except (ValueError, OverflowError) as error:
                _log.error("expiry sweep: skipped the pending removal of %s (%s)", json.dumps(pair), error)
                continue
            due = state.removal_due.isoformat() if state.removal_due else ""
            producer = state.newest.producer or APP_PRODUCER  # a pair recorded before producers had names: the app's
            await sender.schedule(
                body=encode(removal),
                message_id=derived_message_id("sweep", producer, removal.request_id, due),
                application_properties={EXPIRY_OF: state.newest.request_id, PRODUCER: producer},
                scheduled_enqueue_time=now,
            )
            sent += 1
        return sent

    async def _is_due_expiry(self, command: GrantCommand, arrival: Arrival, pair: str) -> bool:
        """True for an expiry removal the ledger confirms: it names the pair's newest intent (of its own producer, or
        of no recorded producer) and the pair's pending removal is due, or the newest intent is this removal
        already (a retry)."""
        if arrival.expiry_of is None or command.action is not Action.REMOVE:
            return False
        state = await self._ledger.pair(pair)
        producer = arrival.producer.name
        if state is None or (state.newest.producer not in (None, producer) and producer != APP_PRODUCER):
            return False
        if state.newest.request_id == arrival.expiry_of:
            return removal_is_due(state, now=self._now())
        return state.newest.request_id == command.request_id

    def _record_progress(self, record: StatusRecord | None) -> Callable[[], Awaitable[object]] | None:
        """Writes `record` as a progress status (None: there is nothing to write)."""
        if record is None:
            return None
        return lambda: self._ledger.record(record, now=self._now(), write=StatusWrite.PROGRESS)

    async def _release_quietly(self, ticket: Ticket, *, uncertain: Action | None = None) -> None:
        """Return the lease after a failure (leaving the pair uncertain about a write of `uncertain` whose outcome
        is unknown); if the ledger fails too, the lease simply expires."""
        with contextlib.suppress(TransientError):
            await self._ledger.finish(ticket, applied=None, now=self._now(), uncertain=uncertain)


class _Progress:
    """Calls `hook` once the Graph work has taken `after` seconds (a quick write records nothing in
    between); `settle` cancels it if it has not started, else waits for it, logging a failure instead of raising."""

    def __init__(self, hook: Callable[[], Awaitable[object]] | None, *, after: float, request_id: str) -> None:
        self._started = False
        self._request_id = request_id
        self._task = asyncio.ensure_future(self._run(hook, after)) if hook is not None else None

    async def _run(self, hook: Callable[[], Awaitable[object]], after: float) -> None:
        await asyncio.sleep(after)
        self._started = True
        await hook()

    async def settle(self) -> None:
        if self._task is None:
            return
        if not self._started:
            self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            if not self._task.cancelled():
                raise
        except Exception:
            _log.warning("could not record request %s as in progress", json.dumps(self._request_id), exc_info=True)
