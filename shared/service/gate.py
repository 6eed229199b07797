"""The intent gate: every grant delivery passes the ledger before it may write to Graph.

`IntentGate.run` turns the command into an intent for its (member, target) pair (`requestedAt`, else the time
its first message was enqueued) with its effect on the pair's grants (`shared.core.pairs`), and asks the ledger
(`shared.adapters.ledger`):

- a request id already used with the same content by another message: ``duplicate``, nothing written;
  with other content: `PermanentError(RequestIdConflict)`;
- an intent older than its grant's newest (or a newer revoke-all): ``superseded``, nothing written;
- an intent that ends a grant while another grant still holds the membership (or the app did not make it):
  ``released``, no Graph write, the grants that hold it named (`Result.held_by`);
- another attempt holds the pair's lease: `TransientError(PairBusy)`, retried when the lease ends at the latest;
- otherwise the write runs holding the lease, which is returned with how it ended. The Graph work must end before
  the lease does (it is cancelled, as `GraphUnavailable`, otherwise), so two writes for one pair never run at
  once. A Graph success whose ledger update fails is retried: it ends ``already_member`` (or ``not_member``).

An add whose ``expiresAt`` has passed is refused `Expired` before the ledger, changing nothing. The app's own
removals (application property ``expiryOf``: an expiry; any other request of the app: a drift repair) are not
subject to a producer's policy: an expiry ends only the grant it names, once it has expired, and a repair writes
only what the grants say. Dry runs write nothing, the ledger included. `sweep` (the timer trigger) sends the expiry
of every grant whose pending removal is due, so an expiry whose removal was never scheduled, or kept failing,
still ends its grant.
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

from shared.core.contract import Action, DirectoryRole, GrantCommand, Guid, Target, encode
from shared.core.errors import PermanentError, Reason, TransientError
from shared.core.intents import Effect, Intent, effect_of, expiry_removal, intent_of, pair_of, parse_pair
from shared.core.ledger import Absorbed, Admitted, GateLedger, Ticket
from shared.core.messaging import EXPIRY_OF, PRODUCER, Lane, MessageSender, derived_message_id
from shared.core.pairs import Grant, NotDue, PairState, Released, Superseded, confirm_at, due_grants
from shared.core.producers import APP_PRODUCER, Producer
from shared.core.statuses import Holder, Status, StatusRecord, StatusWrite
from shared.service.grants import GrantService
from shared.service.membership import Result

__all__ = ["Arrival", "IntentGate"]

_log = logging.getLogger(__name__)

#: The Graph work stops this long before the lease ends, so a write in flight cannot outlive it.
LEASE_MARGIN: Final = timedelta(seconds=15)
#: Seconds added to an early expiry's wait, past the grant's expiry by this process's clock: one running behind the
#: broker's by less than this is met by the retry.
NOT_YET_MARGIN: Final = 5.0
#: Due pairs the expiry sweep reads a page (`IntentGate.sweep`).
SWEEP_PAGE: Final = 1000
#: How long one expiry sweep pages on before it stops after a page, leaving its cursor in the ledger for the next
#: (less than the timer's default 5 minutes between sweeps).
SWEEP_BUDGET: Final = timedelta(minutes=4)
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
    never raised), for an HR event's grant its intent's `Intent.tiebreak` (sealed with it), and the earliest time the
    app sealed it to run (`not_before`: a delivery past the early check came no sooner by the broker's clock, whatever
    this process's clock says)."""

    origin: str
    arrived_at: datetime
    producer: Producer
    lane: Lane = Lane.INTERACTIVE
    expiry_of: str | None = None
    progress: StatusRecord | None = None
    tiebreak: tuple[datetime, ...] = ()
    not_before: datetime | None = None


class IntentGate:
    """Runs commands through the ledger; one per process (built by the composition root)."""

    def __init__(
        self,
        *,
        ledger: GateLedger,
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
        kind = effect_of(command, expiry_of=arrival.expiry_of, app=producer.name == APP_PRODUCER)
        own_removal = kind in (Effect.EXPIRE, Effect.REPAIR)
        template = await self._grants.guard(command, producer=producer, own_removal=own_removal, lane=arrival.lane)
        now = self._now()
        if command.action is Action.ADD and command.expires_at is not None and command.expires_at <= now:
            raise PermanentError(
                Reason.EXPIRED,
                f"the grant expired at {command.expires_at.isoformat()} before it could be applied; nothing was "
                "granted and nothing changed",
            )
        pair = pair_of(_canonical(command.target, template), command.member.id)
        aliases = await self._aliases(command, template, arrival.lane)
        intent = intent_of(
            command,
            arrived_at=arrival.arrived_at,
            producer=producer.name,
            kind=kind,
            ends=arrival.expiry_of,
            tiebreak=arrival.tiebreak,
        )
        decision = await self._ledger.begin(intent, pair=pair, origin=arrival.origin, now=now, aliases=aliases)
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
                _superseded(intent.effect, newest, producer=producer.name),
                graph=None,
            )
        if isinstance(decision, NotDue):
            raise TransientError(
                Reason.EXPIRY_NOT_DUE,
                f"the grant this removal ends expires at {decision.until.isoformat()}: carried out then",
                retry_after=(decision.until - now).total_seconds() + NOT_YET_MARGIN,
            )
        if isinstance(decision, Released):
            holders = _holders(decision.held_by, preexisting=decision.preexisting)
            return Result(Status.RELEASED, _released(holders, producer=producer.name), graph=None, held_by=holders)
        if not isinstance(decision, Admitted):
            raise TransientError(
                Reason.PAIR_BUSY,
                "another request for the same member and target is being carried out; waiting for it",
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
        """Run the pair's Graph write within the lease (`Ticket.write`: a removal that ends a grant may be an add's
        confirmation, an expiry's write is a removal), then return the lease with how it ended: answered, refused
        (for good: `PermanentError`), or in doubt (a timeout, a connection lost after sending, a 5xx: it may still
        land). A write made while a write of the other action is in doubt is made once more when that one can no
        longer land (`Result.confirm_at`, `shared.core.pairs.confirm_at`): a late landing never outlives it. That
        moment is judged by the later of this process's clock and the time the delivery was sealed for: a confirming
        copy that Service Bus delivered when its time came is not scheduled again for that moment by a worker whose
        clock runs behind (Service Bus would deliver it at once, again and again, each a Graph write)."""
        assert ticket.state.lease is not None
        recorded = replace(command, requested_at=_requested_at(ticket, command))
        budget = (ticket.state.lease.until - LEASE_MARGIN - now).total_seconds()
        try:
            async with asyncio.timeout(budget):
                result = await self._grants.carry_out(recorded, template, producer=arrival.producer, lane=arrival.lane)
        except TimeoutError as error:
            await self._release_quietly(ticket, uncertain=True)
            raise TransientError(
                Reason.GRAPH_UNAVAILABLE,
                f"the Graph work did not finish within its lease ({budget:.0f} s)",
                uncertain=True,
            ) from error
        except TransientError as error:
            await self._release_quietly(ticket, uncertain=error.uncertain)
            raise
        except PermanentError:
            await self._release_quietly(ticket, gave_up=True)
            raise
        except BaseException:  # a failure or a bug: the lease goes back now, not when it expires
            await self._release_quietly(ticket)
            raise
        applied = _APPLIED.get(result.outcome)
        finished = self._now()
        already = result.outcome in (Status.ALREADY_MEMBER, Status.NOT_MEMBER)
        await self._ledger.finish(ticket, applied=applied, now=finished, already=already)
        if ticket.write is Action.ADD and arrival.expiry_of is None and arrival.producer.name != APP_PRODUCER:
            result = await self._grants.schedule_expiry(recorded, result, producer=arrival.producer, lane=arrival.lane)
        since = max(finished, arrival.not_before) if arrival.not_before is not None else finished
        again = confirm_at(ticket.state, action=applied, now=since) if applied is not None else None
        if again is None or applied is None:
            return result
        return replace(
            result,
            confirm_at=again,
            description=f"{result.description}; a {_other(applied)} for this member and target whose answer never "
            f"came may still land: this request is carried out once more at {again.isoformat()}",
        )

    async def sweep(self, sender: MessageSender) -> int:
        """The expiry sweep: for every grant whose pending removal is due, send the app's own removal ending it
        (`expiry_removal` of the grant's newest intent: a time-bound add, a remove not carried out, or an expiry that
        was admitted and failed, whose removal is then a new request ending it), for the grant function to carry
        out; return how many were sent. A sweep pages through every due removal, `SWEEP_PAGE` pairs a page, from
        where the last sweep that ran out of time stopped (kept in the ledger: whichever process runs the next one)
        round to it, so pairs whose removal keeps failing never hide the others; one that has worked for
        `SWEEP_BUDGET` stops after its page and leaves its cursor there. A pair whose record cannot be read back as
        one, or whose pending removal is on a grant that never expires (a hand-edited row: no expiry could end it), is
        skipped and reported (an error line naming it), never the end of the sweep; a send that fails raises
        (the next sweep sends it again: the removal stays pending in the ledger until it is carried out or refused
        for good)."""
        now = self._now()
        start = await self._ledger.sweep_cursor()
        passes: list[tuple[str | None, str | None]] = [(start, None)] + ([(None, start)] if start is not None else [])
        sent, cursor = 0, None
        for after, through in passes:
            while cursor is None:
                page = await self._ledger.due_removals(now=now, limit=SWEEP_PAGE, after=after, through=through)
                sent += await self._send_removals(page, sender, now=now)
                if len(page) < SWEEP_PAGE:
                    break
                after = page[-1][0]
                if self._now() - now >= SWEEP_BUDGET:
                    cursor = after
        if cursor != start:
            await self._ledger.keep_sweep_cursor(cursor)
        return sent

    async def _send_removals(self, page: list[tuple[str, PairState]], sender: MessageSender, *, now: datetime) -> int:
        """Send the expiry removal of every grant of `page` whose pending removal is due at `now`; how many."""
        sent = 0
        for pair, state in page:
            try:
                due = due_grants(state, now=now)
            except (TypeError, ValueError) as error:  # a record edited by hand: this pair only
                _log.error("expiry sweep: skipped the pending removals of %s (%s)", json.dumps(pair), error)
                continue
            for grant in due:
                if grant.newest.expires_at is None and grant.holds(now=now, floor=state.floor):
                    _log.error(  # no expiry can end it: a removal sent would change nothing, every sweep
                        "expiry sweep: skipped the pending removal of %s (a grant of %s that never expires)",
                        json.dumps(pair),
                        json.dumps(grant.producer),
                    )
                    continue
                try:
                    target, member_id = parse_pair(pair)
                    of = grant.newest
                    removal = expiry_removal(target, member_id, of=of)
                except (ValueError, OverflowError) as error:
                    _log.error("expiry sweep: skipped the pending removal of %s (%s)", json.dumps(pair), error)
                    continue
                when = grant.removal_due.isoformat() if grant.removal_due else ""
                producer = grant.producer or APP_PRODUCER  # a grant recorded before producers had names: the app's
                await sender.schedule(
                    body=encode(removal),
                    message_id=derived_message_id("sweep", producer, removal.request_id, when),
                    application_properties={EXPIRY_OF: of.request_id, PRODUCER: producer},
                    scheduled_enqueue_time=now,
                )
                sent += 1
        return sent

    async def _aliases(self, command: GrantCommand, template: Guid | None, lane: Lane) -> tuple[str, ...]:
        """The other pair a directory role's membership may be recorded under: by the role's object id (before a
        role was kept on its template's pair); none for other targets."""
        target = command.target
        if not isinstance(target, DirectoryRole) or template is None:
            return ()
        role_id = target.id or await self._grants.role_id(template, lane=lane)
        return (pair_of(DirectoryRole(id=role_id), command.member.id),) if role_id else ()

    def _record_progress(self, record: StatusRecord | None) -> Callable[[], Awaitable[object]] | None:
        """Writes `record` as a progress status (None: there is nothing to write)."""
        if record is None:
            return None
        return lambda: self._ledger.record(record, now=self._now(), write=StatusWrite.PROGRESS)

    async def _release_quietly(self, ticket: Ticket, *, uncertain: bool = False, gave_up: bool = False) -> None:
        """Return the lease after a failure (its write in doubt when `uncertain`; `gave_up` when the request is
        refused for good); if the ledger fails too, the lease simply expires and the write stays in doubt."""
        with contextlib.suppress(TransientError):
            await self._ledger.finish(ticket, applied=None, now=self._now(), uncertain=uncertain, gave_up=gave_up)


def _canonical(target: Target, template: Guid | None) -> Target:
    """The target as its pair is keyed: a directory role named by id, by its template (one membership, one pair,
    however a producer names the role)."""
    if isinstance(target, DirectoryRole) and target.id is not None and template is not None:
        return DirectoryRole(role_template_id=template)
    return target


def _requested_at(ticket: Ticket, command: GrantCommand) -> datetime | None:
    """The command's intent time as the ledger first recorded it (a retry copy's stand-in time must not move it)."""
    for grant in ticket.state.grants:
        if grant.newest.request_id == command.request_id:
            return grant.newest.requested_at
    floor = ticket.state.floor
    return floor.requested_at if floor is not None and floor.request_id == command.request_id else command.requested_at


def _holders(grants: tuple[Grant, ...], *, preexisting: bool) -> tuple[Holder, ...]:
    holders = tuple(
        Holder(producer=grant.producer, request_id=grant.newest.request_id, expires_at=grant.newest.expires_at)
        for grant in grants
    )
    return (*holders, Holder(preexisting=True)) if preexisting else holders


def _released(holders: tuple[Holder, ...], *, producer: str) -> str:
    """A released request's description: what keeps the membership (another producer's grant by its name only), or
    that the app has none to remove."""
    if not holders:
        return (
            "ended this producer's grant; the app made no membership of this member and target that is still there "
            "to remove (a membership made outside the app stays: a revokeAll removal ends it)"
        )
    named = [
        "a membership the app did not make (a revokeAll removal ends it)"
        if holder.preexisting
        else f"{holder.producer}'s grant {holder.request_id}"
        if holder.producer == producer
        else f"a grant of producer {holder.producer}"
        for holder in holders
    ]
    return "ended this producer's grant; the membership stays, held by " + ", ".join(named)


def _superseded(effect: Effect, newest: Intent, *, producer: str) -> str:
    """A superseded request's description: what won (another producer's revoke-all by its producer only)."""
    if effect is Effect.EXPIRE:
        return "the grant this removal ends has changed since (a newer request of its producer); nothing written"
    if effect is Effect.REPAIR:
        return "nothing to repair: the grants of this member and target say otherwise now; nothing written"
    if newest.producer not in (None, producer):
        return f"superseded by a newer revokeAll of producer {newest.producer}; nothing written"
    return (
        f"superseded by request {newest.request_id} ({newest.action.value}, requested "
        f"{newest.requested_at.isoformat()}); nothing written"
    )


def _other(action: Action) -> str:
    return "removal" if action is Action.ADD else "add"


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
