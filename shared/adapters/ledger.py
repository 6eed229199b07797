"""The grant ledger: request ids, the state of every (member, target) pair and the status records, in one table.

The decisions are `shared.core.intents`'; this adapter reads and writes what they decide, every pair write guarded
by the entity's ETag (a lost race re-reads and decides again), through ``azure-data-tables``' async client over the
process's httpx client (`HttpxTransport`), its pipeline trimmed to the policies the ledger needs (`table_client`).
Every storage failure raises `TransientError(LedgerUnavailable)`. The entities (with drift's holds and the app's
seal key), their keys, and what one grant costs (requests, round trips, CPU) are in docs/ledger.md.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import secrets
import uuid
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Literal

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import UpdateMode

from shared.adapters.identity import HttpxTransport
from shared.core.contract import Action, Guid, Target
from shared.core.errors import PermanentError, Reason, TransientError
from shared.core.intents import Effect, Intent, RequestCheck, RequestRecord, check_request, pair_of, parse_pair
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
from shared.core.producers import APP_PRODUCER
from shared.core.statuses import Status, StatusRecord, StatusWrite
from shared.core.times import read_time

if TYPE_CHECKING:
    import httpx
    from azure.core.credentials import AzureNamedKeyCredential
    from azure.core.credentials_async import AsyncTokenCredential
    from azure.data.tables import TableEntity
    from azure.data.tables.aio import TableClient

_log = logging.getLogger(__name__)

__all__ = [
    "Absorbed",
    "Admitted",
    "DriftHold",
    "Group",
    "GroupKind",
    "Ledger",
    "Ticket",
    "history_key",
    "table_client",
    "table_key",
]

_log = logging.getLogger(__name__)
#: How long a lease lasts: longer than one Graph write can take (the service stops writing before it ends).
LEASE_FOR: Final = timedelta(seconds=120)
#: How long a write whose outcome is unknown may still land (Graph gives no bound: a write it has not applied in
#: this long is taken as lost); a write of the other action meanwhile is made again then (`confirm_at`).
UNCERTAIN_WINDOW: Final = timedelta(minutes=5)
#: Lost ETag races in a row before `begin` gives up for now (`PairBusy`, retried shortly).
MAX_RACES: Final = 5
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]")
_PAIR_ROW: Final = "pair"
#: Rows written before producers had names: a request's claim and status, an HR event's record, and a job's or HR
#: event's rows (``row.<7 digits>``); each belongs to the producer named as the source system its record names.
_LEGACY_REQUEST_ROW: Final = "request"
_LEGACY_STATUS_ROW: Final = "status"
_LEGACY_EVENT_ROW: Final = "event"
_LEGACY_ROW_PREFIX: Final = "row."
#: The app's own secrets: a partition no `table_key` can name (those have dots).
_APP_PARTITION: Final = "app"
_SEAL_ROW: Final = "seal"
_LEGACY_TOKEN: Final = "legacy"  # noqa: S105  # the attempt of a doubt recorded before doubts were a set (no secret)
_SCHEMA: Final = 2  # the seal row's ``schema`` on a ledger whose every row has its producer (no legacy rows)
_END_OF_TIME: Final = datetime(9999, 12, 31, tzinfo=UTC)

#: The kinds of group a request can belong to: a bulk job (``jobId``) or an HR event (``hrEventId``).
GroupKind = Literal["job", "hrEvent"]


@dataclass(slots=True)
class Group:
    """One producer's bulk job or HR event as recorded: every row's ``requestId``, ``status``, ``jobRow`` and
    ``jobRows``; the failed rows' whole status records; and for an HR event its own record (`Ledger.record_event`)."""

    rows: list[dict[str, Any]]
    failed: list[StatusRecord] = field(default_factory=list)
    event: dict[str, Any] | None = None
    producer: str | None = None


#: The columns a job's progress is counted from (`Ledger.group`).
_COUNTED: Final = ("RowKey", "requestId", "status", "jobRow", "jobRows", "producer", "event")


def producer_row(producer: str, row: str) -> str:
    """A producer's row in a shared partition: ``p.<producer>.<row>`` (a request id's partition holds each
    producer's claim and status of that id; a job's or HR event's, each producer's rows)."""
    return f"p.{producer}.{row}"


def _producer_rows(producer: str) -> tuple[str, str]:
    """The row-key range ``[low, high)`` of every row of `producer` in a shared partition."""
    return f"p.{producer}.", f"p.{producer}/"


def table_key(kind: str, value: str) -> str:
    """``<kind>.<readable>.<digest>``: `value`'s first 40 characters made safe, and 26 base32 digits of its SHA-256."""
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()
    readable = _UNSAFE.sub("_", value[:40])
    return f"{kind}.{readable}.{base64.b32encode(digest).decode().lower()[:26]}"


def table_client(
    *,
    endpoint: str,
    table: str,
    credential: AsyncTokenCredential | AzureNamedKeyCredential,
    http: httpx.AsyncClient,
) -> TableClient:
    """A client for `table` at `endpoint` over `http` (the caller closes it), without the SDK pipeline's policies the
    ledger does not need, each of which costs CPU on every request: retries (off: the message's retry policy
    decides) and the secondary host they would use, redirects, proxies, the custom hook, network trace and HTTP
    logging, azure-core's tracing spans, a client request id per request. It keeps the date, version and user agent
    headers, the credential's signature or token, and the JSON decoding.

    In Azure the credential is the app's managed identity (HTTPS only); against Azurite, its development key.
    """
    from azure.core.pipeline import policies as core
    from azure.data.tables._policies import StorageHosts
    from azure.data.tables.aio import TableClient

    class _PrimaryLocation(core.SansIOHTTPPolicy[Any, Any]):
        """Says every request went to the primary location, as the retry policy it replaces did (a query's result
        reads it from the request's context)."""

        def on_request(self, request: Any) -> None:
            request.context["location_mode"] = "primary"

    dropped = (
        core.RequestIdPolicy,  # a client request id per request (uuid1): the service's own request id is enough
        core.AsyncRetryPolicy,  # the message's retry policy decides: every storage failure is transient
        StorageHosts,  # the secondary host, for retries only
        core.AsyncRedirectPolicy,  # table storage does not redirect
        core.ProxyPolicy,
        core.CustomHookPolicy,
        core.NetworkTraceLoggingPolicy,
        core.DistributedTracingPolicy,  # the httpx instrumentation records each request as a dependency already
        core.HttpLoggingPolicy,  # its logger is at WARNING (`shared.bootstrap.quiet_library_loggers`)
    )

    class LeanTableClient(TableClient):
        """The SDK's client without the pipeline policies the ledger does not need (`table_client`)."""

        def _configure_policies(self, *, audience: str | None = None, **kwargs: Any) -> list[Any]:
            policies: list[Any] = super()._configure_policies(audience=audience, **kwargs)
            return [_PrimaryLocation(), *(policy for policy in policies if not isinstance(policy, dropped))]

    return LeanTableClient(endpoint=endpoint, table_name=table, credential=credential, transport=HttpxTransport(http))


@dataclass(frozen=True, slots=True)
class Ticket:
    """A held lease: what `finish` needs to return it (`etag` is the pair entity's as this attempt wrote it), and the
    Graph write it holds the lease for (`write`)."""

    pair: str
    token: str
    state: PairState
    etag: str
    write: Action


@dataclass(frozen=True, slots=True)
class Admitted:
    """The intent holds the pair's lease until ``ticket.state.lease.until``: write to Graph, then `finish`."""

    ticket: Ticket


@dataclass(frozen=True, slots=True)
class Absorbed:
    """The request id arrived before in another message with the same content: this delivery does nothing."""

    record: RequestRecord


class Ledger:
    """The grant ledger over one table (`table_client`). One per process; `aclose` closes the client."""

    def __init__(
        self,
        table: TableClient,
        *,
        lease_for: timedelta = LEASE_FOR,
        uncertain_window: timedelta = UNCERTAIN_WINDOW,
        legacy: bool | None = None,
        producers_of_systems: Mapping[str, str] | None = None,
    ) -> None:
        """`legacy`: whether the table may hold rows from before producers had names; None: read it from the seal
        row once, on first need (`_legacy_rows`). `producers_of_systems`: whose such a row is, by the source system
        it recorded (`Producers.for_system`); by default the producer named as that system."""
        self._table = table
        self._systems = dict(producers_of_systems or {})
        self._lease_for = lease_for
        self.uncertain_window = uncertain_window
        self._legacy = legacy

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
            intent = replace(intent, requested_at=claimed.requested_at)  # as first recorded, not this copy's
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

    async def record(self, status: StatusRecord, *, now: datetime, write: StatusWrite = StatusWrite.FINAL) -> bool:
        """Write `status` as its request's status record and its copies: in the history of its member and of each
        target id it names, in its bulk job's or HR event's rows, and (for an expiry removal) as the ``removal`` of
        the grant it ends; all at once. `write` decides, for each stored copy on its own, whether it replaces what
        is there (`StatusWrite`). True when the status itself was written.

        Raises `TransientError(LedgerUnavailable)` when the storage fails.
        """
        assert status.request_id is not None
        assert status.producer is not None, "a status record the app writes has its producer"
        request_id, record = status.request_id, status.to_json()
        entities = _status_entities(request_id, record, now, history=write is not StatusWrite.PROGRESS)
        removal = _removal_entity(record, now)
        calls: list[Awaitable[object]] = [self._write_status(entity, write, owned=owned) for entity, owned in entities]
        if removal is not None and write is not StatusWrite.FIRST:
            calls.append(self._merge_removal(removal, producer=str(record["producer"])))
        results = await asyncio.gather(*calls, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return bool(results[0])

    async def status(self, request_id: str, *, producer: str) -> StatusRecord | None:
        """`producer`'s status record of `request_id` (with ``acceptedAt``, ``updatedAt`` and a time-bound grant's
        ``removal``), None when there is none (or what is stored cannot be read as one: reported). A status recorded
        before producers had names is `producer`'s when its source system is `producer`'s name (one read more, only
        when the producer has none of its own).

        Raises `TransientError(LedgerUnavailable)` when the storage fails.
        """
        partition, doing = table_key("request", request_id), "read the status of a request"
        entity = await self._get(partition, producer_row(producer, "status"), doing=doing)
        if entity is None:
            legacy = await self._get(partition, _LEGACY_STATUS_ROW, doing=doing)
            record = _status_record(legacy) if legacy is not None else None
            if record is None or legacy is None or self._legacy_owner_of(legacy) != producer:
                return None
            return record.replace(producer=producer)
        return _status_record(entity)

    async def statuses(self, request_id: str) -> list[StatusRecord]:
        """Every producer's status record of `request_id` (one partition query), by producer name; a status from before
        producers had names only when its producer has none of its own since (the same request carried again).

        Raises `TransientError(LedgerUnavailable)` when the storage fails.
        """
        query = "PartitionKey eq @key and ( RowKey eq @legacy or ( RowKey ge @low and RowKey lt @high ) )"
        parameters = {"key": table_key("request", request_id), "legacy": _LEGACY_STATUS_ROW, "low": "p.", "high": "p/"}
        try:
            entities = await self._query(query, parameters)
        except AzureError as error:
            raise _unavailable("read the statuses of a request id", error) from error
        own_rows = [entity for entity in entities if entity["RowKey"].endswith(".status")]
        own = {entity.get("producer") for entity in own_rows}
        legacy = [
            entity
            for entity in entities
            if entity["RowKey"] == _LEGACY_STATUS_ROW and self._legacy_owner_of(entity) not in own
        ]
        kept = [record for entity in own_rows if (record := _status_record(entity)) is not None]
        kept += [
            record.replace(producer=self._legacy_owner_of(entity))
            for entity in legacy
            if (record := _status_record(entity)) is not None
        ]
        return sorted(kept, key=lambda record: record.producer or "")

    async def group(self, kind: GroupKind, group_id: str, *, producer: str | None) -> list[Group]:
        """Bulk job or HR event `group_id` as recorded, one `Group` per producer that has rows under that id (a job id
        is its producer's own): each row's status (only the columns that count it), the failed rows' whole records,
        and an HR event's own record. With `producer`, only its group (at most one). Rows recorded before producers
        had names belong to the producer named as their source system (a legacy HR event's own record, to the producer
        of its rows), beside that producer's own rows of the same group (a job that spanned the upgrade; a row it has
        of its own wins). Three partition queries at once.

        Raises `TransientError(LedgerUnavailable)` when the storage fails.
        """
        key = table_key(kind, group_id)
        low, high = _producer_rows(producer) if producer is not None else ("p.", "p/")
        parameters = {"key": key, "low": low, "high": high}
        where = "PartitionKey eq @key and RowKey ge @low and RowKey lt @high"
        try:
            counted, detailed, legacy = await asyncio.gather(
                self._query(where, parameters, select=_COUNTED),
                self._query(
                    f"{where} and ( status eq @failed or event eq true )", {**parameters, "failed": "dead_lettered"}
                ),
                self._legacy_group(key),
            )
        except AzureError as error:
            raise _unavailable(f"list the requests of {kind} {group_id}", error) from error
        groups: dict[str, Group] = {}
        own_rows: dict[str, set[object]] = {}
        for entity in counted:
            if not _is_event(entity):
                row = {name: entity.get(name) for name in _COUNTED if name not in ("RowKey", "producer", "event")}
                name = str(entity.get("producer") or producer or "")
                groups.setdefault(name, Group(rows=[])).rows.append(row)
                own_rows.setdefault(name, set()).add(row.get("jobRow"))
        for entity in detailed:
            group = groups.setdefault(str(entity.get("producer") or producer or ""), Group(rows=[]))
            if _is_event(entity):
                group.event = _loads(entity.get("record"))
            elif (record := _status_record(entity)) is not None:
                group.failed.append(record)
        for owner, entity in legacy:
            if producer is not None and owner != producer:
                continue
            group = groups.setdefault(owner, Group(rows=[]))
            if _is_event(entity):
                group.event = group.event or _loads(entity.get("record"))
                continue
            row = {name: entity.get(name) for name in _COUNTED if name not in ("RowKey", "producer", "event")}
            if row.get("jobRow") in own_rows.get(owner, set()):
                continue  # the row was recorded again since, as its producer's own
            group.rows.append(row)
            if entity.get("status") == "dead_lettered" and (record := _status_record(entity)) is not None:
                group.failed.append(record.replace(producer=owner))
        return [replace(group, producer=name or None) for name, group in sorted(groups.items())]

    def _legacy_owner_of(self, entity: Mapping[str, Any]) -> str | None:
        """The producer a row from before producers had names belongs to: the one of the source system it recorded."""
        system = _legacy_owner(entity)
        return self._systems.get(system, system) if system is not None else None

    async def _legacy_group(self, key: str) -> list[tuple[str, Any]]:
        """The rows of a group recorded before producers had names, each with its owner: the producer named as its
        source system; the group's own record (an HR event's), the owner of its rows when they have one."""
        query = "PartitionKey eq @key and ( RowKey eq @event or ( RowKey ge @low and RowKey lt @high ) )"
        parameters = {"key": key, "event": _LEGACY_EVENT_ROW, "low": _LEGACY_ROW_PREFIX, "high": "row/"}
        entities = await self._query(query, parameters)
        owners = {owner for entity in entities if (owner := self._legacy_owner_of(entity)) is not None}
        found = []
        for entity in entities:
            owner = self._legacy_owner_of(entity)
            if _is_event(entity) and owner is None and len(owners) == 1:
                owner = next(iter(owners))
            if owner is not None:
                found.append((owner, entity))
        return found

    async def _query(
        self, query: str, parameters: dict[str, Any], *, select: tuple[str, ...] | None = None
    ) -> list[Any]:
        return [
            entity
            async for entity in self._table.query_entities(
                query, parameters=parameters, select=list(select) if select else None
            )
        ]

    async def record_event(self, event_id: str, record: Mapping[str, Any], *, producer: str, now: datetime) -> None:
        """Write `producer`'s HR event `event_id`'s own record (its outcome and how many grants it sent) beside its
        rows.

        Raises `TransientError(LedgerUnavailable)` when the storage fails.
        """
        entity = {
            "PartitionKey": table_key("hrEvent", event_id),
            "RowKey": producer_row(producer, "event"),
            "producer": producer,
            "event": True,
            "updatedAt": now,
            "record": _dumps(record),
        }
        try:
            await self._table.upsert_entity(entity, mode=UpdateMode.REPLACE)
        except AzureError as error:
            raise _unavailable("record an HR event", error) from error

    async def history(
        self,
        *,
        member: str | None = None,
        target: str | None = None,
        since: datetime | None = None,
        limit: int = 5000,
        producer: str | None = None,
    ) -> list[StatusRecord]:
        """The status records of every request that named `member` (or `target`: an administrative unit, role, role
        template or role definition id), newest intent first, from `since` on; only `producer`'s requests when given;
        at most `limit` (the newest). One partition query in key order (rows are keyed newest first: `history_key`),
        read no further than `limit` rows; a row that cannot be read as a status record is skipped and reported.

        Raises `TransientError(LedgerUnavailable)` when the storage fails.
        """
        key = table_key("member", member) if member is not None else table_key("target", target or "")
        query, parameters = "PartitionKey eq @key", dict[str, Any](key=key)
        if since is not None:
            query += " and RowKey lt @bound"
            parameters["bound"] = history_key(since, "")[:-1] + "/"  # "/" sorts after the "." after the time
        found: dict[str, StatusRecord] = {}
        try:
            async for entity in self._table.query_entities(query, parameters=parameters):
                record = _status_record(entity)
                if record is None or (producer is not None and record.producer != producer):
                    continue
                name = f"{record.producer}:{record.request_id}"
                kept = found.setdefault(name, record)
                if _later(record.updated_at, kept.updated_at):  # one request, two intent times: the last written
                    found[name] = record
                if len(found) >= limit:
                    break
        except AzureError as error:
            raise _unavailable("read the history of a member or target", error) from error
        return list(found.values())

    async def due_removals(
        self, *, now: datetime, limit: int = 1000, after: str | None = None
    ) -> list[tuple[str, PairState]]:
        """Pairs whose pending removal is due at `now` (at most `limit`, in key order, after the pair named `after`
        when given: the sweep's cursor): one filtered scan of the table; a record that cannot be read as a pair's is
        logged and skipped.

        Raises `TransientError(LedgerUnavailable)` when the storage fails.
        """
        query = "RowKey eq @row and removalDue le @now"
        parameters: dict[str, Any] = {"row": _PAIR_ROW, "now": now}
        if after is not None:
            query += " and PartitionKey gt @after"
            parameters["after"] = table_key("pair", after)
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

    async def seal_keys(self) -> tuple[bytes, ...]:
        """The keys of the app's seal (`shared.adapters.seal`), newest first: the row ``(app, seal)``, created with a
        random 32-byte key on first use (insert-only: every instance ends up with the one that was written first).
        To rotate, move ``key`` to ``previous`` and write a new ``key``: messages sealed with either still check out.

        Raises `TransientError(LedgerUnavailable)` when the storage fails.
        """
        for _ in range(2):
            entity = await self._get(_APP_PARTITION, _SEAL_ROW, doing="read the app's seal key")
            if entity is not None:
                self._legacy = not entity.get("schema")
                return tuple(base64.b64decode(entity[name]) for name in ("key", "previous") if entity.get(name))
            try:
                await self._table.create_entity(
                    {
                        "PartitionKey": _APP_PARTITION,
                        "RowKey": _SEAL_ROW,
                        "key": base64.b64encode(secrets.token_bytes(32)).decode(),
                        "schema": _SCHEMA,
                    }
                )
            except ResourceExistsError:
                pass  # another instance wrote it first: read that one
            except AzureError as error:
                raise _unavailable("create the app's seal key", error) from error
        raise _unavailable("read the app's seal key that was just written", None)

    async def aclose(self) -> None:
        await self._table.close()

    # --- drift: the pairs of one target, the targets, the guard's held removals ------------------------------

    async def target_pairs(self, target: Target) -> list[tuple[Guid, PairState]]:
        """The member id and recorded state of every pair of `target` (as named: a role by id and by template are
        two targets here): one partition-key range query, filtered on the ``pair`` column.

        Raises `TransientError(LedgerUnavailable)` when the storage fails.
        """
        prefix = pair_of(target, "")
        low, high = _pair_range(prefix)
        query = f"{_PAIRS_BETWEEN} and pair ge @first and pair lt @last"
        parameters = {"low": low, "high": high, "row": _PAIR_ROW, "first": prefix, "last": _after(prefix)}
        found: list[tuple[Guid, PairState]] = []
        try:
            async for entity in self._table.query_entities(query, parameters=parameters):
                named = _parsed_pair(entity.get("pair"))
                if named is not None:
                    found.append((named[1], _pair_state(entity, window=self.uncertain_window)))
        except AzureError as error:
            raise _unavailable("list the pairs of a target", error) from error
        return found

    async def pair_targets(self, *, prefix: str = "") -> list[Target]:
        """Every target with a pair whose id starts with `prefix` (e.g. ``au.<unit>.``, ``scoped.``; all when
        empty), in key order. A unit's pairs form a block of keys of their own, skipped after its first pair is
        read (one request a unit); the pairs of roles, templates and scoped roles share blocks cut inside an id,
        so such a block is read whole (its ``pair`` column only).

        Raises `TransientError(LedgerUnavailable)` when the storage fails.
        """
        low, high = _pair_range(prefix)
        found: dict[Target, None] = {}
        bounds = {"row": _PAIR_ROW, "first": prefix, "last": _after(prefix)} if prefix else {"row": _PAIR_ROW}
        narrowed = " and pair ge @first and pair lt @last" if prefix else ""
        try:
            while True:
                first = await self._first_pair({**bounds, "low": low, "high": high}, narrowed)
                if first is None:
                    break
                block = _UNSAFE.sub("_", first[:40])
                named = _parsed_pair(first)
                if named is not None and len(pair_of(named[0], "")) == len(block) == 40:
                    found[named[0]] = None  # the block is this target's alone
                else:
                    parameters = {**bounds, "low": f"pair.{block}.", "high": f"pair.{block}/"}
                    async for entity in self._table.query_entities(
                        _PAIRS_BETWEEN + narrowed, parameters=parameters, select=["pair"]
                    ):
                        if (named := _parsed_pair(entity.get("pair"))) is not None:
                            found[named[0]] = None
                low = f"pair.{block}/"
        except AzureError as error:
            raise _unavailable("list the targets of the recorded pairs", error) from error
        return list(found)

    async def drift_hold(self, target: Target) -> DriftHold | None:
        """The removals of `target` the blast-radius guard holds (or held, and a confirm released), if recorded.

        Raises `TransientError(LedgerUnavailable)` when the storage fails.
        """
        held = await self._read_hold(target)
        return held[0] if held is not None else None

    async def hold_drift(
        self, target: Target, *, digest: str, removals: int, limit: int, members: int, now: datetime
    ) -> DriftHold:
        """Record that the guard holds `removals` removals of `target` (the set named by `digest`); what is recorded
        for the same digest already (its ``heldAt``, a release) is kept. Return what is recorded.

        Raises `TransientError(LedgerUnavailable)` when the storage fails.
        """
        for _ in range(MAX_RACES):
            known = await self._read_hold(target)
            if known is not None and known[0].digest == digest:
                return known[0]
            hold = DriftHold(digest=digest, removals=removals, limit=limit, members=members, held_at=now)
            if await self._write_hold(target, hold, known[1] if known is not None else None):
                return hold
        raise TransientError(
            Reason.LEDGER_UNAVAILABLE, f"the grant ledger could not record a drift hold: {MAX_RACES} writes raced it"
        )

    async def release_drift(self, target: Target, *, digest: str, now: datetime, by: str) -> DriftHold | None:
        """Mark the held removals `digest` of `target` released by operator `by`, once: the record as released, or
        None when no such set is held (another digest, none, or released already: see `drift_hold`).

        Raises `TransientError(LedgerUnavailable)` when the storage fails.
        """
        for _ in range(MAX_RACES):
            known = await self._read_hold(target)
            if known is None or known[0].digest != digest or known[0].released_at is not None:
                return None
            released = replace(known[0], released_at=now, released_by=by)
            if await self._write_hold(target, released, known[1]):
                return released
        raise TransientError(
            Reason.LEDGER_UNAVAILABLE, f"the grant ledger could not release a drift hold: {MAX_RACES} writes raced it"
        )

    async def _first_pair(self, parameters: dict[str, Any], narrowed: str) -> str | None:
        """The ``pair`` of the first pair entity in the key range of `parameters` (None when there is none)."""
        async for entity in self._table.query_entities(
            _PAIRS_BETWEEN + narrowed, parameters=parameters, select=["pair"], results_per_page=1
        ):
            return str(entity.get("pair", ""))
        return None

    async def _read_hold(self, target: Target) -> tuple[DriftHold, str] | None:
        entity = await self._get(table_key("drift", pair_of(target, "*")), _HOLD_ROW, doing="read a drift hold")
        if entity is None:
            return None
        hold = DriftHold(
            digest=entity["digest"],
            removals=entity["removals"],
            limit=entity["limit"],
            members=entity["members"],
            held_at=_time(entity["heldAt"]),
            released_at=_time(entity["releasedAt"]) if entity.get("releasedAt") is not None else None,
            released_by=entity.get("releasedBy"),
        )
        return hold, str(entity.metadata["etag"])

    async def _write_hold(self, target: Target, hold: DriftHold, etag: str | None) -> bool:
        """Write `hold` if the entity is still at `etag` (absent when None); False on a lost race."""
        entity: dict[str, Any] = {
            "PartitionKey": table_key("drift", pair_of(target, "*")),
            "RowKey": _HOLD_ROW,
            "target": pair_of(target, "*"),
            "digest": hold.digest,
            "removals": hold.removals,
            "limit": hold.limit,
            "members": hold.members,
            "heldAt": hold.held_at,
        }
        if hold.released_at is not None:
            entity["releasedAt"] = hold.released_at
        if hold.released_by is not None:
            entity["releasedBy"] = hold.released_by
        try:
            if etag is None:
                await self._table.create_entity(entity)
            else:
                await self._table.update_entity(
                    entity, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
                )
        except (ResourceExistsError, ResourceModifiedError):
            return False
        except ResourceNotFoundError as error:
            if _absent(error):
                return False
            raise _unavailable("record a drift hold", error) from error
        except AzureError as error:
            raise _unavailable("record a drift hold", error) from error
        return True

    # --- storage ----------------------------------------------------------------------------------------------

    async def _write_status(self, entity: dict[str, Any], write: StatusWrite, *, owned: bool = False) -> bool:
        """Write one stored copy of a status record as `write` says; False when what was there is kept. An `owned`
        copy (a bulk job's or HR event's row) is only ever written by the request that first recorded it: another
        request naming the same row leaves it as it is."""
        try:
            if write is StatusWrite.FINAL and not owned:
                await self._table.upsert_entity(entity, mode=UpdateMode.MERGE)  # keeps acceptedAt
                return True
            if write is StatusWrite.FIRST:
                try:
                    await self._table.create_entity(entity)
                except ResourceExistsError:
                    return False
                return True
            for _ in range(MAX_RACES):
                if (written := await self._progress(entity, final=write is StatusWrite.FINAL)) is not None:
                    return written
        except AzureError as error:
            raise _unavailable("record the status of a request", error) from error
        raise TransientError(
            Reason.LEDGER_UNAVAILABLE,
            f"the grant ledger could not record a status: {MAX_RACES} writes in a row raced it",
        )

    async def _progress(self, entity: dict[str, Any], *, final: bool = False) -> bool | None:
        """Write `entity` unless another request's status, or (but for a `final` write) a terminal one, is stored
        there (an insert first: one request when nothing is there, a read and a conditional merge otherwise); None
        when another write came in between."""
        try:
            await self._table.create_entity(entity)
            return True
        except ResourceExistsError:
            pass
        current = await self._get(entity["PartitionKey"], entity["RowKey"], doing="record the status of a request")
        if current is None:
            return None  # deleted in between: insert again
        try:
            if current.get("requestId") != entity.get("requestId"):
                return False  # a row belongs to the request that first recorded it
            if not final and (status := Status.read(current.get("status"))) is not None and status.terminal:
                return False
            await self._table.update_entity(
                entity,
                mode=UpdateMode.MERGE,
                etag=current.metadata["etag"],
                match_condition=MatchConditions.IfNotModified,
            )
        except (ResourceExistsError, ResourceModifiedError):
            return None
        return True

    async def _merge_removal(self, entity: dict[str, Any], *, producer: str) -> None:
        """Note an expiry removal's status on the grant it ends: on its producer's status, else on the status recorded
        before producers had names when that names `producer`'s source system, or when the removal is the app's (one
        queued before producers had names); nothing when the grant has neither."""
        doing = "note the removal of a time-bound grant"
        try:
            await self._table.update_entity(entity, mode=UpdateMode.MERGE)
            return
        except ResourceNotFoundError as error:
            if not _absent(error):
                raise _unavailable(doing, error) from error
        except AzureError as error:
            raise _unavailable(doing, error) from error
        legacy = await self._get(entity["PartitionKey"], _LEGACY_STATUS_ROW, doing=doing)
        if legacy is None or producer not in (APP_PRODUCER, self._legacy_owner_of(legacy)):
            return
        try:
            await self._table.update_entity(
                {**entity, "RowKey": _LEGACY_STATUS_ROW},
                mode=UpdateMode.MERGE,
                etag=legacy.metadata["etag"],
                match_condition=MatchConditions.IfNotModified,
            )
        except (ResourceNotFoundError, ResourceModifiedError):
            pass  # changed or gone since: the next run of the removal notes it again
        except AzureError as error:
            raise _unavailable(doing, error) from error

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

    async def _legacy_rows(self) -> bool:
        """True when this ledger may hold rows from before producers had names: its seal row (`seal_keys`) is older
        than the schema that named them (no ``schema`` column). Read once per process."""
        if self._legacy is None:
            entity = await self._get(_APP_PARTITION, _SEAL_ROW, doing="read the app's seal key")
            self._legacy = entity is not None and not entity.get("schema")
        return self._legacy

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

    async def _get(self, partition: str, row: str, *, doing: str) -> TableEntity | None:
        """The entity at (`partition`, `row`), None when it is absent; `TransientError(LedgerUnavailable)` saying what
        the ledger was `doing` when the storage fails (or the whole table is missing)."""
        try:
            entity = await self._table.get_entity(partition, row)
        except ResourceNotFoundError as error:
            if _absent(error):
                return None
            raise _unavailable(doing, error) from error
        except AzureError as error:
            raise _unavailable(doing, error) from error
        return entity

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


def _status_entities(
    request_id: str, record: Mapping[str, Any], now: datetime, *, history: bool
) -> list[tuple[dict[str, Any], bool]]:
    """The stored copies of a producer's status record, each with whether it is *owned* (a row of a job or HR event,
    written only by the request that first recorded it): the request's own first (its producer's row in the request
    id's partition), then (with `history`) one in the history of its member and of each target id it names, then
    its row in its producer's bulk job or HR event (when it is one's)."""
    status = str(record.get("status") or "")
    producer = str(record["producer"])
    common: dict[str, Any] = {
        "requestId": request_id,
        "producer": producer,
        "status": status,
        "updatedAt": now,
        "record": _dumps(record),
    }
    for name in ("jobRow", "jobRows"):
        if isinstance(record.get(name), int) and not isinstance(record[name], bool):
            common[name] = record[name]
    intent_at = read_time(record.get("intentAt"))
    if intent_at is not None:
        common["intentAt"] = intent_at
    if status in ("accepted", "scheduled"):
        common["acceptedAt"] = now
    request_key = table_key("request", request_id)
    entities = [({"PartitionKey": request_key, "RowKey": producer_row(producer, "status"), **common}, False)]
    indexed = (
        ("member", ("memberId",)),
        ("target", ("targetId", "roleTemplateId", "administrativeUnitId", "roleDefinitionId")),
    )
    history_row = history_key(intent_at, f"{request_key}.{producer}")
    for kind, names in indexed if history else ():
        for guid in dict.fromkeys(str(record[name]) for name in names if record.get(name)):
            entities.append(({"PartitionKey": table_key(kind, guid), "RowKey": history_row, **common}, False))
    row = record.get("jobRow")
    row_key = producer_row(producer, f"row.{row:07d}" if isinstance(row, int) and row > 0 else request_key)
    for kind, name in (("job", "jobId"), ("hrEvent", "hrEventId")):
        if record.get(name):
            entities.append(({"PartitionKey": table_key(kind, str(record[name])), "RowKey": row_key, **common}, True))
    return entities


def history_key(intent_at: datetime | None, request_row: str) -> str:
    """A history row's key: the intent time's microseconds before 9999-12-31, 18 digits (so a partition reads newest
    first), a dot, and the request's key; with no intent time, all nines (last)."""
    if intent_at is None:
        return "9" * 18 + "." + request_row
    micros = (_END_OF_TIME - intent_at) // timedelta(microseconds=1)
    return f"{max(micros, 0):018d}.{request_row}"


def _removal_entity(record: Mapping[str, Any], now: datetime) -> dict[str, Any] | None:
    """For an expiry removal's status: the ``removal`` column of the grant it ends (``expiryOf``); else None."""
    of, producer = record.get("expiryOf"), record.get("producer")
    if not of or not producer:
        return None
    removal = {
        "status": record.get("status"),
        "requestId": record.get("requestId"),
        "reason": record.get("reason"),
        "updatedAt": now.isoformat(),
    }
    return {
        "PartitionKey": table_key("request", str(of)),
        "RowKey": producer_row(str(producer), "status"),
        "removal": _dumps(removal),
    }


def _status_record(entity: Mapping[str, Any]) -> StatusRecord | None:
    """The status record a stored copy holds (its JSON with the entity's own columns), as the API shows it
    (`StatusRecord.with_removal_view`); None, reported, when it cannot be read as one."""
    document = _loads(entity.get("record"))
    document["requestId"] = entity.get("requestId", document.get("requestId"))
    document["status"] = entity.get("status", document.get("status"))
    document["producer"] = entity.get("producer") or document.get("producer") or _legacy_owner(entity)
    for name in ("acceptedAt", "updatedAt", "intentAt"):
        if entity.get(name) is not None:
            document[name] = _time(entity[name]).isoformat()
    if entity.get("removal"):
        document["removal"] = _loads(entity["removal"])
    try:
        return StatusRecord.from_json(document).with_removal_view()
    except ValueError as error:
        _log.error("the ledger holds a status record it cannot read, skipped: %s (%s)", entity.get("RowKey"), error)
        return None


def _request_record(entity: Mapping[str, Any], producer: str) -> RequestRecord:
    return RequestRecord(
        request_id=entity["requestId"],
        content_hash=entity["contentHash"],
        origin=entity["origin"],
        pair=entity["pair"],
        requested_at=_time(entity["requestedAt"]),
        producer=producer,
    )


def _legacy_owner(entity: Mapping[str, Any]) -> str | None:
    """The producer a row from before producers had names belongs to: the one named as its record's source system."""
    system = _loads(entity.get("record")).get("sourceSystem")
    return system if isinstance(system, str) and system else None


def _owner(entity: Mapping[str, Any], producer: str | None) -> str:
    """The producer a group's row belongs to: its column, else (from before producers had names) its source's
    when its record was read, else "" (unknown)."""
    return str(entity.get("producer") or producer or _legacy_owner(entity) or "")


def _is_event(entity: Mapping[str, Any]) -> bool:
    """True for an HR event's own record (not one of its rows)."""
    return bool(entity.get("event")) or entity.get("RowKey") == _LEGACY_EVENT_ROW


def _later(one: datetime | None, other: datetime | None) -> bool:
    return one is not None and (other is None or one > other)


def _dumps(record: Mapping[str, Any]) -> str:
    return json.dumps(dict(record), separators=(",", ":"), ensure_ascii=False)


def _loads(text: object) -> dict[str, Any]:
    """A stored JSON object; an empty one when `text` is not one."""
    try:
        value = json.loads(text) if isinstance(text, str) else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


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


def _aware(text: object) -> datetime:
    """A time the app wrote into a pair's JSON: ISO 8601 with an offset; ValueError for anything else (a hand-edited
    row is skipped and reported, never taken as local time)."""
    if not isinstance(text, str):
        raise ValueError(f"not a time: {text!r}")
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"a time without its offset: {text!r}")
    return moment


#: Characters per string column of a pair's JSON: Table Storage takes at most 64 KiB of UTF-16 (32 Ki characters) in
#: one property, so a long list goes on in ``<name>1``, ``<name>2``, … (a pair of every producer of a large registry).
_COLUMN_CHARS: Final = 30_000


def _chunked(name: str, text: str) -> dict[str, str]:
    """`text` as the column `name` and, past `_COLUMN_CHARS`, its continuation columns."""
    pieces = [text[start : start + _COLUMN_CHARS] for start in range(0, max(len(text), 1), _COLUMN_CHARS)]
    return {(name if number == 0 else f"{name}{number}"): piece for number, piece in enumerate(pieces)}


def _unchunked(name: str, entity: Mapping[str, Any]) -> str:
    """The text `_chunked` wrote under `name`."""
    pieces = [str(entity[name])]
    number = 1
    while f"{name}{number}" in entity:
        pieces.append(str(entity[f"{name}{number}"]))
        number += 1
    return "".join(pieces)


def _dumps_list(items: list[dict[str, Any]]) -> str:
    return json.dumps(items, separators=(",", ":"), ensure_ascii=False)


def _time(value: datetime) -> datetime:
    """A plain UTC datetime (the SDK returns its own subclass)."""
    return datetime(*value.utctimetuple()[:6], value.microsecond, tzinfo=UTC)


def _unavailable(doing: str, error: AzureError | None) -> TransientError:
    """`TransientError(LedgerUnavailable)` naming what failed, with the storage's status and error code if any."""
    detail = type(error).__name__ if error is not None else "the record vanished"
    retry_after = None
    if isinstance(error, HttpResponseError):
        detail = f"HTTP {error.status_code} {_error_code(error) or error.reason or ''}".strip()
        header = getattr(error.response, "headers", {}).get("Retry-After")
        retry_after = float(header) if header and header.isdigit() else None
    return TransientError(
        Reason.LEDGER_UNAVAILABLE, f"the grant ledger could not {doing}: {detail}", retry_after=retry_after
    )


def _error_code(error: HttpResponseError) -> str | None:
    """The storage error code, e.g. ``TableNotFound``: the SDK's decoding of it, else the ``x-ms-error-code`` header."""
    code = getattr(error, "error_code", None) or getattr(error.response, "headers", {}).get("x-ms-error-code")
    value = getattr(code, "value", code)  # the SDK's TableErrorCode enum, or the header's text
    return str(value) if value else None


def _absent(error: ResourceNotFoundError) -> bool:
    """True when the entity is absent; False when the whole table is (a deployment fault, not a state)."""
    return _error_code(error) != "TableNotFound"


# --- drift ------------------------------------------------------------------------------------------------------

_HOLD_ROW: Final = "hold"
_PAIRS_BETWEEN: Final = "PartitionKey ge @low and PartitionKey lt @high and RowKey eq @row"


@dataclass(frozen=True, slots=True, kw_only=True)
class DriftHold:
    """Removals of one target the blast-radius guard holds: the set's `digest` (`shared.core.drift.Held`), how many
    removals of how many members against the `limit`, since when, and when a confirm released it (None: held) and
    which operator did (`shared.core.access.Caller.label`)."""

    digest: str
    removals: int
    limit: int
    members: int
    held_at: datetime
    released_at: datetime | None = None
    released_by: str | None = None


def _pair_range(prefix: str) -> tuple[str, str]:
    """The partition keys of the pairs whose id starts with `prefix`: ``[low, high)``. A pair's key starts with its
    id's first 40 characters (`table_key`), so a longer prefix narrows the keys to those 40 only."""
    if len(prefix) >= 40:
        block = _UNSAFE.sub("_", prefix[:40])
        return f"pair.{block}.", f"pair.{block}/"
    low = f"pair.{_UNSAFE.sub('_', prefix)}"
    return low, _after(low)


def _after(prefix: str) -> str:
    """The least string above every string starting with `prefix` (not empty): the upper end of a key range."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _parsed_pair(value: object) -> tuple[Target, Guid] | None:
    """The target and member of a stored ``pair`` column; None for one no `pair_of` made (left alone)."""
    try:
        return parse_pair(value) if isinstance(value, str) else None
    except ValueError:
        return None
