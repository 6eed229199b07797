"""The ledger's pairs and request ids: `PairStore.begin` claims a request id and takes its pair's lease, `finish`
returns it with what was written; the sweep's due removals. Decisions are `shared.core.pairs`'.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Final

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from shared.adapters.tables import (
    _APP_PARTITION,
    _LEGACY_REQUEST_ROW,
    _LEGACY_STATUS_ROW,
    _SWEEP_ROW,
    MAX_RACES,
    TableRows,
    _absent,
    _aware,
    _chunked,
    _dumps,
    _dumps_list,
    _dumps_times,
    _loads_times,
    _time,
    _unavailable,
    _unchunked,
    producer_row,
    table_key,
)
from shared.core.contract import Action
from shared.core.errors import PermanentError, Reason, TransientError
from shared.core.intents import Effect, Intent, RequestCheck, RequestRecord, check_request
from shared.core.ledger import Absorbed, Admitted, Ticket
from shared.core.pairs import (
    Applied,
    Doubt,
    Grant,
    Lease,
    NotDue,
    PairState,
    Proceed,
    Released,
    Superseded,
    Wait,
    admit,
    merged_states,
    release,
)

_log = logging.getLogger(__name__)

__all__ = ["LEASE_FOR", "UNCERTAIN_WINDOW", "PairStore"]

#: How long a lease lasts: longer than one Graph write can take (the service stops writing before it ends).
LEASE_FOR: Final = timedelta(seconds=120)
#: How long a write whose outcome is unknown may still land (Graph gives no bound: a write it has not applied in
#: this long is taken as lost); a write of the other action meanwhile is made again then (`confirm_at`).
UNCERTAIN_WINDOW: Final = timedelta(minutes=5)
_PAIR_ROW: Final = "pair"
_LEGACY_TOKEN: Final = "legacy"  # noqa: S105  # the attempt of a doubt recorded before doubts were a set (no secret)


class PairStore(TableRows):
    """The pairs' entities and the request claims (`shared.adapters.ledger.Ledger`'s part)."""

    _lease_for: timedelta
    uncertain_window: timedelta

    async def begin(
        self, intent: Intent, *, pair: str, origin: str, now: datetime, aliases: tuple[str, ...] = ()
    ) -> Admitted | Released | Absorbed | Superseded | NotDue | Wait:
        """Record `intent` (first carried by message `origin`) and take the pair's lease for its Graph write
        (`Admitted`), or record it needing none (`Released`: it ended a grant, and the membership stays or was never
        the app's to remove), or say why not (`shared.core.pairs.admit`).

        A producer's add claims the request id, then creates the pair's entity without reading it first (most adds
        are their pair's first intent: two requests; a known pair costs a read and a write more); any other intent (a
        repair's re-grant included: it is decided on the grants recorded, so it must read them) reads the pair at
        once with the claim, then writes it (three requests, two round trips).

        `aliases`: other names the pair was recorded under (a role's pair by object id, from before a role was kept on
        its template's): read with it, merged into it (`merged_states`) and removed once it is written.

        Raises `PermanentError(RequestIdConflict)` when the request id was used for other content, and
        `TransientError` when the storage fails (`LedgerUnavailable`) or races keep being lost (`PairBusy`).
        """
        assert intent.producer is not None, "an intent the app records has its producer"
        record = RequestRecord(
            request_id=intent.request_id,
            content_hash=intent.content_hash,
            origin=origin,
            pair=pair,
            requested_at=intent.requested_at,
            producer=intent.producer,
            tiebreak=intent.tiebreak,
        )
        state: PairState | None = None
        etag: str | None = None
        blind = intent.effect is Effect.GRANT  # an add that creates the pair unread (`admit` of None proceeds)
        if blind:
            claimed = await self._claim(record, now)
        else:  # a removal, or a repair's re-grant (written only while a grant holds the pair): read it at once
            claimed, (state, etag) = await asyncio.gather(self._claim(record, now), self._read_pair(pair))
        check = check_request(claimed, intent=intent, origin=origin)
        if check is RequestCheck.DUPLICATE and intent.effect is Effect.EXPIRE:  # the sweep's or drift's copy of an
            check = RequestCheck.SAME_MESSAGE  # expiry: safe to carry out again (it ends only its grant, once due)
        if check is RequestCheck.SAME_MESSAGE:
            assert claimed is not None
            intent = replace(  # as first recorded, not this copy's
                intent, requested_at=claimed.requested_at, tiebreak=claimed.tiebreak
            )
            if blind:  # a retry: its pair is recorded already, most likely
                state, etag = await self._read_pair(pair)
        if check is RequestCheck.CONFLICT:
            assert claimed is not None
            raise PermanentError(
                Reason.REQUEST_ID_CONFLICT,
                f"requestId {intent.request_id} was first used for a different request (message {claimed.origin}, "
                f"{claimed.pair}); a request id names one request: send a new one with a new id",
            )
        if check is RequestCheck.DUPLICATE:
            assert claimed is not None
            return Absorbed(claimed)
        token = uuid.uuid4().hex
        moved: list[tuple[str, str]] = []
        if aliases:
            state, etag, moved = await self._read_merged(pair, aliases)
        for _ in range(MAX_RACES):
            decision = admit(
                state, intent, token=token, now=now, lease_for=self._lease_for, window=self.uncertain_window
            )
            if not isinstance(decision, Proceed | Released):
                return decision
            written = await self._write_pair(pair, decision.state, etag)
            if written is not None:
                await self._retire(moved)
            if written is not None and isinstance(decision, Released):
                return decision
            if written is not None:
                assert isinstance(decision, Proceed)
                ticket = Ticket(pair=pair, token=token, state=decision.state, etag=written, write=decision.write)
                return Admitted(ticket)
            if aliases:  # a lost race: read it all again
                state, etag, moved = await self._read_merged(pair, aliases)
                continue
            state, etag = await self._read_pair(pair)  # a lost race, or an add's pair that was there already
        raise TransientError(
            Reason.PAIR_BUSY,
            f"lost {MAX_RACES} races in a row for the ledger record of {pair}; trying again shortly",
            retry_after=1.0,
        )

    async def _read_merged(
        self, pair: str, aliases: tuple[str, ...]
    ) -> tuple[PairState | None, str | None, list[tuple[str, str]]]:
        """`pair`'s state and ETag with the states recorded under `aliases` merged in, and the aliases found (their
        partition keys and ETags, to retire once the merged state is written). One round trip."""
        reads = await asyncio.gather(self._read_pair(pair), *(self._read_pair(alias) for alias in aliases))
        (state, etag), found = reads[0], list(zip(aliases, reads[1:], strict=True))
        moved = [(alias, alias_etag) for alias, (alias_state, alias_etag) in found if alias_state and alias_etag]
        for _, (alias_state, _etag) in found:
            if alias_state is not None:
                state = merged_states(state, alias_state) if state is not None else alias_state
        return state, etag, moved

    async def _retire(self, moved: list[tuple[str, str]]) -> None:
        """Delete the alias entities merged into their pair (If-Match: one changed since is left for next time)."""
        for alias, etag in moved:
            try:
                await self._table.delete_entity(
                    table_key("pair", alias), _PAIR_ROW, etag=etag, match_condition=MatchConditions.IfNotModified
                )
            except AzureError as error:  # it is merged again next time (merging twice changes nothing)
                _log.warning("could not retire the pair %s merged into its role's template pair (%r)", alias, error)

    async def finish(
        self,
        ticket: Ticket,
        *,
        applied: Action | None,
        now: datetime,
        uncertain: bool = False,
        already: bool = False,
        gave_up: bool = False,
    ) -> bool:
        """Return the lease and record how its write ended (`shared.core.pairs.release`): `applied` (the action done,
        `already` when Graph found it so), or none (refused, or not sent; `gave_up` when the request is refused for
        good), or `uncertain` (no answer: it may still land). False: the lease was lost.

        Raises `TransientError(LedgerUnavailable)` when the storage fails.
        """
        state: PairState | None = ticket.state
        etag: str | None = ticket.etag
        for _ in range(MAX_RACES):
            if state is None:
                return False
            released = release(
                state,
                token=ticket.token,
                applied=applied,
                now=now,
                window=self.uncertain_window,
                uncertain=uncertain,
                already=already,
                gave_up=gave_up,
            )
            if released is None:
                return False
            if await self._write_pair(ticket.pair, released, etag) is not None:
                return True
            state, etag = await self._read_pair(ticket.pair)
        raise TransientError(
            Reason.PAIR_BUSY, f"lost {MAX_RACES} races in a row returning the lease of {ticket.pair}", retry_after=1.0
        )

    async def pair(self, pair: str) -> PairState | None:
        """The recorded state of `pair`, if any."""
        return (await self._read_pair(pair))[0]

    async def request(self, request_id: str, *, producer: str) -> RequestRecord | None:
        """What is recorded for `producer`'s `request_id`, if anything (its own claim, else, on a ledger from before
        producers had names, the claim its source system made then)."""
        own = await self._read_request(request_id, producer)
        if own is None and await self._legacy_rows():
            return await self._legacy_claim(request_id, producer)
        return own

    async def due_removals(
        self, *, now: datetime, limit: int = 1000, after: str | None = None, through: str | None = None
    ) -> list[tuple[str, PairState]]:
        """Pairs whose pending removal is due at `now` (at most `limit`, in key order: after the pair named `after`
        and up to the one named `through`, each when given): one filtered scan of the table; a record that cannot be
        read as a pair's is logged and skipped.

        Raises `TransientError(LedgerUnavailable)` when the storage fails.
        """
        query = "RowKey eq @row and removalDue le @now"
        parameters: dict[str, Any] = {"row": _PAIR_ROW, "now": now}
        if after is not None:
            query += " and PartitionKey gt @after"
            parameters["after"] = table_key("pair", after)
        if through is not None:
            query += " and PartitionKey le @through"
            parameters["through"] = table_key("pair", through)
        found: list[tuple[str, PairState]] = []
        try:
            async for entity in self._table.query_entities(query, parameters=parameters):
                try:
                    found.append((entity["pair"], _pair_state(entity, window=self.uncertain_window)))
                except (KeyError, TypeError, ValueError) as error:  # not a record the app wrote: reported, skipped
                    _log.error("expiry sweep: skipped the unreadable record of %s (%r)", entity.get("pair"), error)
                if len(found) >= limit:
                    break
        except AzureError as error:
            raise _unavailable("list the pending removals", error) from error
        return found

    async def sweep_cursor(self) -> str | None:
        """The pair the last expiry sweep that ran out of time stopped at (any process's), None when the last one
        went through every due removal.

        Raises `TransientError(LedgerUnavailable)` when the storage fails.
        """
        entity = await self._get(_APP_PARTITION, _SWEEP_ROW, doing="read the expiry sweep's cursor")
        after = entity.get("after") if entity is not None else None
        return after if isinstance(after, str) and after else None

    async def keep_sweep_cursor(self, pair: str | None) -> None:
        """Record where the expiry sweep stopped (`pair`; None: it went through every due removal), for the next
        sweep whichever process runs it (one sweep runs at a time: the timer trigger is a singleton).

        Raises `TransientError(LedgerUnavailable)` when the storage fails.
        """
        entity = {"PartitionKey": _APP_PARTITION, "RowKey": _SWEEP_ROW, "after": pair or ""}
        try:
            await self._table.upsert_entity(entity, mode=UpdateMode.REPLACE)
        except AzureError as error:
            raise _unavailable("record the expiry sweep's cursor", error) from error

    async def _claim(self, record: RequestRecord, now: datetime) -> RequestRecord | None:
        """Insert `record`; None when it was new, else the record that was there first (on a ledger from before
        producers had names, the claim its producer's source system made then, read first: nothing is inserted)."""
        assert record.producer is not None
        if await self._legacy_rows():
            legacy = await self._legacy_claim(record.request_id, record.producer)
            if legacy is not None:
                return legacy
        entity = {
            "PartitionKey": table_key("request", record.request_id),
            "RowKey": producer_row(record.producer, "request"),
            "producer": record.producer,
            "requestId": record.request_id,
            "contentHash": record.content_hash,
            "origin": record.origin,
            "pair": record.pair,
            "requestedAt": record.requested_at,
            "recordedAt": now,
        }
        if record.tiebreak:
            entity["tiebreak"] = _dumps_times(record.tiebreak)
        try:
            await self._table.create_entity(entity)
        except ResourceExistsError:
            existing = await self._read_request(record.request_id, record.producer)
            if existing is None:  # deleted in between (by an operator): claim again on the next attempt
                raise _unavailable("read a request record that was just there", None) from None
            return existing
        except AzureError as error:
            raise _unavailable("record the request", error) from error
        return None

    async def _legacy_claim(self, request_id: str, producer: str) -> RequestRecord | None:
        """The claim of `request_id` made before producers had names, when its status names `producer`'s source
        system (one partition query of the two rows); else None."""
        query = "PartitionKey eq @key and ( RowKey eq @request or RowKey eq @status )"
        parameters = {
            "key": table_key("request", request_id),
            "request": _LEGACY_REQUEST_ROW,
            "status": _LEGACY_STATUS_ROW,
        }
        try:
            rows = {entity["RowKey"]: entity for entity in await self._query(query, parameters)}
        except AzureError as error:
            raise _unavailable("read a request record", error) from error
        claim, status = rows.get(_LEGACY_REQUEST_ROW), rows.get(_LEGACY_STATUS_ROW)
        if claim is None or status is None or self._legacy_owner_of(status) != producer:
            return None
        return _request_record(claim, producer)

    async def _read_request(self, request_id: str, producer: str) -> RequestRecord | None:
        partition, row = table_key("request", request_id), producer_row(producer, "request")
        entity = await self._get(partition, row, doing="read a request record")
        return _request_record(entity, producer) if entity is not None else None

    async def _read_pair(self, pair: str) -> tuple[PairState | None, str | None]:
        """The pair's state and ETag; a grant recorded before producers had names is its source system's (its newest
        request's status read once more, only for such a pair)."""
        entity = await self._get(table_key("pair", pair), _PAIR_ROW, doing="read the state of a member and target")
        if entity is None:
            return None, None
        state = _pair_state(entity, window=self.uncertain_window)
        unowned = [grant for grant in state.grants if not grant.producer]
        for grant in unowned:
            key = table_key("request", grant.newest.request_id)
            legacy = await self._get(key, _LEGACY_STATUS_ROW, doing="read the state of a member and target")
            owner = self._legacy_owner_of(legacy) if legacy is not None else None
            if owner:
                state = replace(state, grants=tuple(g for g in state.grants if g is not grant)).with_grant(
                    replace(grant, producer=owner)
                )
        return state, entity.metadata["etag"]

    async def _write_pair(self, pair: str, state: PairState, etag: str | None) -> str | None:
        """Write `state` if the entity is still at `etag` (absent when None); its new ETag, or None on a lost race."""
        entity = {"PartitionKey": table_key("pair", pair), "RowKey": _PAIR_ROW, "pair": pair, **_pair_fields(state)}
        try:
            if etag is None:
                written = await self._table.create_entity(entity)
            else:
                written = await self._table.update_entity(
                    entity, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
                )
        except (ResourceExistsError, ResourceModifiedError):
            return None
        except ResourceNotFoundError as error:
            if _absent(error):  # deleted since it was read
                return None
            raise _unavailable("record the state of a member and target", error) from error
        except AzureError as error:
            raise _unavailable("record the state of a member and target", error) from error
        new_etag: str = written["etag"]
        return new_etag


def _request_record(entity: Mapping[str, Any], producer: str) -> RequestRecord:
    return RequestRecord(
        request_id=entity["requestId"],
        content_hash=entity["contentHash"],
        origin=entity["origin"],
        pair=entity["pair"],
        requested_at=_time(entity["requestedAt"]),
        producer=producer,
        tiebreak=_loads_times(entity.get("tiebreak")),
    )


def _pair_fields(state: PairState) -> dict[str, Any]:
    """The pair entity's columns: ``grants``, ``floor`` and ``doubts`` as JSON, the lease and the last answered write
    as columns, ``preexisting``, and ``removalDue`` (the earliest pending removal: what `due_removals` queries)."""
    lease, applied = state.lease, state.applied
    fields: dict[str, Any] = _chunked("grants", _dumps_list([_grant_json(grant) for grant in state.grants]))
    fields["removalDue"] = state.removal_due
    if state.floor is not None:
        fields["floor"] = _dumps(_intent_json(state.floor))
    if state.doubts:
        fields["doubts"] = _dumps_list([_doubt_json(doubt) for doubt in state.doubts])
    if state.preexisting:
        fields["preexisting"] = True
    if lease is not None:
        fields.update(leaseToken=lease.token, leaseRequestId=lease.request_id, leaseUntil=lease.until)
    if applied is not None:
        fields.update(appliedRequestId=applied.request_id, appliedAction=applied.action.value, appliedAt=applied.at)
    return {name: value for name, value in fields.items() if value is not None}


def _pair_state(entity: Mapping[str, Any], *, window: timedelta = UNCERTAIN_WINDOW) -> PairState:
    """The state an entity holds; one written before grants had owners (``newest*`` columns, one ``uncertain*``
    write) reads as one grant of the producer its newest request recorded ("" when it recorded none) and one doubt
    until `window` after it was sent."""
    lease = None
    if "leaseToken" in entity:
        lease = Lease(
            token=entity["leaseToken"], request_id=entity["leaseRequestId"], until=_time(entity["leaseUntil"])
        )
    applied = None
    if "appliedRequestId" in entity:
        applied = Applied(
            request_id=entity["appliedRequestId"],
            action=Action(entity["appliedAction"]),
            at=_time(entity["appliedAt"]),
        )
    if "grants" not in entity:
        return _legacy_pair_state(entity, lease=lease, applied=applied, window=window)
    floor = _intent_from(json.loads(entity["floor"])) if entity.get("floor") else None
    return PairState(
        grants=tuple(_grant_from(item) for item in json.loads(_unchunked("grants", entity))),
        floor=floor,
        lease=lease,
        applied=applied,
        doubts=tuple(_doubt_from(item) for item in json.loads(entity.get("doubts") or "[]")),
        preexisting=bool(entity.get("preexisting")),
    )


def _legacy_pair_state(
    entity: Mapping[str, Any], *, lease: Lease | None, applied: Applied | None, window: timedelta
) -> PairState:
    newest = Intent(
        request_id=entity["newestRequestId"],
        content_hash=entity["newestContentHash"],
        action=Action(entity["newestAction"]),
        requested_at=_time(entity["newestRequestedAt"]),
        expires_at=_time(entity["newestExpiresAt"]) if "newestExpiresAt" in entity else None,
        producer=entity.get("newestProducer"),
    )
    removal_due = _time(entity["removalDue"]) if entity.get("removalDue") is not None else None
    grant = Grant(producer=newest.producer or "", newest=newest, removal_due=removal_due)
    doubts: tuple[Doubt, ...] = ()
    if "uncertainRequestId" in entity:
        since = _time(entity["uncertainSince"])
        doubts = (
            Doubt(
                token=_LEGACY_TOKEN,
                request_id=entity["uncertainRequestId"],
                action=Action(entity["uncertainAction"]),
                until=since + window,
            ),
        )
    return PairState(grants=(grant,), lease=lease, applied=applied, doubts=doubts)


def _intent_json(intent: Intent) -> dict[str, Any]:
    document: dict[str, Any] = {
        "requestId": intent.request_id,
        "contentHash": intent.content_hash,
        "action": intent.action.value,
        "requestedAt": intent.requested_at.isoformat(),
        "expiresAt": intent.expires_at.isoformat() if intent.expires_at else None,
        "producer": intent.producer,
        "kind": intent.kind.value if intent.kind else None,
        "ends": intent.ends,
        "tiebreak": [moment.isoformat() for moment in intent.tiebreak] or None,
    }
    return {name: value for name, value in document.items() if value is not None}


def _intent_from(document: Mapping[str, Any]) -> Intent:
    return Intent(
        request_id=document["requestId"],
        content_hash=document["contentHash"],
        action=Action(document["action"]),
        requested_at=_aware(document["requestedAt"]),
        expires_at=_aware(document["expiresAt"]) if document.get("expiresAt") else None,
        producer=document.get("producer"),
        kind=Effect(document["kind"]) if document.get("kind") else None,
        ends=document.get("ends"),
        tiebreak=tuple(_aware(moment) for moment in document.get("tiebreak") or ()),
    )


def _grant_json(grant: Grant) -> dict[str, Any]:
    document: dict[str, Any] = {"producer": grant.producer, "newest": _intent_json(grant.newest)}
    if grant.removal_due is not None:
        document["removalDue"] = grant.removal_due.isoformat()
    return document


def _grant_from(document: Mapping[str, Any]) -> Grant:
    due = document.get("removalDue")
    return Grant(
        producer=document["producer"],
        newest=_intent_from(document["newest"]),
        removal_due=_aware(due) if due else None,
    )


def _doubt_json(doubt: Doubt) -> dict[str, Any]:
    return {
        "token": doubt.token,
        "requestId": doubt.request_id,
        "action": doubt.action.value,
        "until": doubt.until.isoformat(),
    }


def _doubt_from(document: Mapping[str, Any]) -> Doubt:
    return Doubt(
        token=document["token"],
        request_id=document["requestId"],
        action=Action(document["action"]),
        until=_aware(document["until"]),
    )
