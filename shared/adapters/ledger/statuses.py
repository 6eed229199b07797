"""The ledger's status records and their copies: a request's status, its member's and target's history, its bulk job's
or HR event's row (`StatusStore.record`, one `StatusWrite` rule for each copy), and what the status API reads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from shared.adapters.tables import (
    _LEGACY_EVENT_ROW,
    _LEGACY_ROW_PREFIX,
    _LEGACY_STATUS_ROW,
    MAX_RACES,
    TableRows,
    _absent,
    _chunked_text,
    _dumps,
    _later,
    _legacy_owner,
    _loads,
    _producer_rows,
    _time,
    _unavailable,
    producer_row,
    table_key,
)
from shared.core.errors import Reason, TransientError
from shared.core.ledger import Group, GroupKind
from shared.core.producers import APP_PRODUCER
from shared.core.statuses import Status, StatusRecord, StatusWrite
from shared.core.times import read_time

_log = logging.getLogger(__name__)

__all__ = ["StatusStore", "history_key"]

_END_OF_TIME: Final = datetime(9999, 12, 31, tzinfo=UTC)
#: The columns a job's progress is counted from (`Ledger.group`).
_COUNTED: Final = ("RowKey", "requestId", "status", "jobRow", "jobRows", "memberId", "producer", "event")


class StatusStore(TableRows):
    """Status records and their stored copies (`shared.adapters.ledger.Ledger`'s part)."""

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
                group.events.append(_loads(_chunked_text("record", entity)))
            elif (record := _status_record(entity)) is not None:
                group.failed.append(record)
        for owner, entity in legacy:
            if producer is not None and owner != producer:
                continue
            group = groups.setdefault(owner, Group(rows=[]))
            if _is_event(entity):
                if not group.events:
                    group.events.append(_loads(_chunked_text("record", entity)))
                continue
            row = {name: entity.get(name) for name in _COUNTED if name not in ("RowKey", "producer", "event")}
            if row.get("jobRow") in own_rows.get(owner, set()):
                continue  # the row was recorded again since, as its producer's own
            group.rows.append(row)
            if entity.get("status") == "dead_lettered" and (record := _status_record(entity)) is not None:
                group.failed.append(record.replace(producer=owner))
        return [replace(group, producer=name or None) for name, group in sorted(groups.items())]

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
    numbered = f"row.{row:07d}" if isinstance(row, int) and row > 0 else request_key
    if record.get("jobId"):
        key = producer_row(producer, numbered)
        entities.append(({"PartitionKey": table_key("job", str(record["jobId"])), "RowKey": key, **common}, True))
    if record.get("hrEventId"):  # an HR event's rows are its persons': ``row.<member>.<row>``
        member = record.get("memberId")
        key = producer_row(producer, f"row.{member}.{numbered}" if member else numbered)
        person = {"memberId": member} if member else {}
        entities.append(
            ({"PartitionKey": table_key("hrEvent", str(record["hrEventId"])), "RowKey": key, **common, **person}, True)
        )
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


def _is_event(entity: Mapping[str, Any]) -> bool:
    """True for an HR event's own record (not one of its rows)."""
    return bool(entity.get("event")) or entity.get("RowKey") == _LEGACY_EVENT_ROW
