"""The ledger's index of each person's HR events (`HrEventStore.hr_events`: every copy of an event derives the same
requests) and each event's own record per person.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ResourceExistsError, ResourceModifiedError
from azure.data.tables import UpdateMode

from shared.adapters.tables import (
    MAX_RACES,
    TableRows,
    _aware,
    _chunked,
    _dumps,
    _dumps_times,
    _unavailable,
    _unchunked,
    producer_row,
    table_key,
)
from shared.core.contract import Guid, Target, parse_target, target_document
from shared.core.errors import ContractError, Reason, TransientError
from shared.core.hr_events import HrEvent, KnownEvent, Placement

_log = logging.getLogger(__name__)

__all__ = ["PERSON_EVENTS", "HrEventStore"]

#: The most HR events of one person `Ledger.hr_events` reads (a career's worth many times over).
PERSON_EVENTS: Final = 1000


class HrEventStore(TableRows):
    """HR events as recorded, per person (`shared.adapters.ledger.Ledger`'s part)."""

    async def record_event(
        self, event_id: str, record: Mapping[str, Any], *, producer: str, member: str, now: datetime
    ) -> None:
        """Write `producer`'s HR event `event_id`'s own record for person `member` (its outcome, how many grants it
        sends the person, which could not be sent) beside its rows: one per person under the event id.

        Raises `TransientError(LedgerUnavailable)` when the storage fails.
        """
        entity = {
            "PartitionKey": table_key("hrEvent", event_id),
            "RowKey": producer_row(producer, f"event.{member}"),
            "producer": producer,
            "memberId": member,
            "event": True,
            "updatedAt": now,
            **_chunked("record", _dumps(record)),  # many rows not sent outgrow one column
        }
        try:
            await self._table.upsert_entity(entity, mode=UpdateMode.REPLACE)
        except AzureError as error:
            raise _unavailable("record an HR event", error) from error

    async def hr_events(self, *, producer: str, event: KnownEvent, now: datetime) -> list[KnownEvent]:
        """Record `event` in the index of its person's HR events (`producer`'s), unless an event of that id is recorded
        there already (its first record stays: its placement, the events it is derived against), then read the index:
        every HR event of the person `producer` sent (at most `PERSON_EVENTS`), the one of `event`'s id as first
        recorded. Two requests, one after the other: of two events of one person recorded at once, at least one reads
        the other. A row that cannot be read as an event is reported and skipped.

        Raises `TransientError(LedgerUnavailable)` when the storage fails.
        """
        partition = _person_key(producer, event.event.user_id)
        entity = {
            "PartitionKey": partition,
            "RowKey": table_key("event", event.event.event_id),
            "producer": producer,
            "eventId": event.event.event_id,
            "memberId": event.event.user_id,
            "recordedAt": now,
            **_known_fields(event),
        }
        try:
            await self._table.create_entity(entity)
        except ResourceExistsError:
            pass  # a copy of the event (a redelivery, a resubmission, a resend): its first record stays
        except AzureError as error:
            raise _unavailable("record an HR event of a person", error) from error
        found: list[KnownEvent] = []
        try:
            async for row in self._table.query_entities("PartitionKey eq @key", parameters={"key": partition}):
                try:
                    found.append(_known_from(row))
                except (KeyError, TypeError, ValueError) as error:  # not a row the app wrote: reported, skipped
                    _log.error("skipped an unreadable HR event of a person: %s (%r)", row.get("RowKey"), error)
                if len(found) >= PERSON_EVENTS:
                    _log.warning("a person has over %d HR events: the first in key order are read", PERSON_EVENTS)
                    break
        except AzureError as error:
            raise _unavailable("read the HR events of a person", error) from error
        return found

    async def hr_event(self, *, producer: str, event: HrEvent) -> KnownEvent | None:
        """`producer`'s HR event of `event`'s id and person as its index first recorded it (one read), None when it is
        not recorded (or not as an event): for an event past the first `PERSON_EVENTS` of its person `hr_events` reads.

        Raises `TransientError(LedgerUnavailable)` when the storage fails.
        """
        partition, row = _person_key(producer, event.user_id), table_key("event", event.event_id)
        entity = await self._get(partition, row, doing="read an HR event of a person")
        try:
            return _known_from(entity) if entity is not None else None
        except (KeyError, TypeError, ValueError) as error:  # not a row the app wrote: reported
            _log.error("an unreadable HR event of a person: %s (%r)", row, error)
            return None

    async def consider(
        self,
        *,
        producer: str,
        event: KnownEvent,
        considered: tuple[str, ...],
        gives: tuple[tuple[Target, tuple[str, ...]], ...] = (),
    ) -> tuple[str, ...]:
        """Fix the events of its person that `event` is derived against as `considered`, and what the rules give by
        it as `gives` (`KnownEvent.gives`), unless they are fixed already; return the considered events fixed (one
        read and one write, ETag-guarded: of two copies at once, one wins).

        Raises `TransientError(LedgerUnavailable)` when the storage fails.
        """
        partition, row = _person_key(producer, event.event.user_id), table_key("event", event.event.event_id)
        for _ in range(MAX_RACES):
            entity = await self._get(partition, row, doing="read an HR event of a person")
            if entity is None:
                raise _unavailable("read an HR event of a person that was just there", None)
            if entity.get("considered") is not None:
                return tuple(json.loads(_unchunked("considered", entity)))
            try:
                await self._table.update_entity(  # hundreds of event ids outgrow one column
                    {
                        "PartitionKey": partition,
                        "RowKey": row,
                        **_chunked("considered", json.dumps(list(considered))),
                        **_chunked("gives", _gives_json(gives)),
                    },
                    mode=UpdateMode.MERGE,
                    etag=entity.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
            except ResourceModifiedError:
                continue
            except AzureError as error:
                raise _unavailable("record what an HR event is derived against", error) from error
            return considered
        raise TransientError(
            Reason.LEDGER_UNAVAILABLE, f"the grant ledger could not fix an HR event's derivation: {MAX_RACES} races"
        )


def _person_key(producer: str, member: str) -> str:
    """The partition of the index of a person's HR events (`Ledger.hr_events`)."""
    return table_key("hrPerson", f"{producer}.{member}")


def _known_fields(known: KnownEvent) -> dict[str, Any]:
    """The index row's columns of `known`: the event (JSON), its placement, what it is derived against (if fixed)."""
    event = known.event
    document = {
        "eventId": event.event_id,
        "kind": event.kind,
        "employeeId": event.employee_id,
        "userObjectId": event.user_id,
        "attributes": dict(event.attributes),
        "previous": dict(event.previous),
        "effectiveDate": event.effective_date,
        "occurredAt": event.occurred_at.isoformat() if event.occurred_at else None,
    }
    fields: dict[str, Any] = {
        "event": _dumps(document),
        "moment": known.placement.moment.isoformat(),
        "tiebreak": _dumps_times(known.placement.tiebreak),
    }
    if known.considered is not None:
        fields |= _chunked("considered", json.dumps(list(known.considered)))
        fields |= _chunked("gives", _gives_json(known.gives))
    return fields


def _gives_json(gives: tuple[tuple[Target, tuple[str, ...]], ...]) -> str:
    """`KnownEvent.gives` as its column holds it: a list of [target document, rule names]."""
    return json.dumps([[target_document(target), list(names)] for target, names in gives], separators=(",", ":"))


def _gives_from(entity: Mapping[str, Any]) -> tuple[tuple[Target, tuple[str, ...]], ...]:
    """`KnownEvent.gives` from its column (none on a row written before the column: what its rules gave is unknown)."""
    if entity.get("gives") is None:
        return ()
    try:
        return tuple(
            (parse_target(document), tuple(str(name) for name in names))
            for document, names in json.loads(_unchunked("gives", entity))
        )
    except ContractError as error:  # a target the contract no longer reads: the row is unreadable, as any other
        raise ValueError(f"gives: {error}") from error


def _known_from(entity: Mapping[str, Any]) -> KnownEvent:
    """The `KnownEvent` an index row holds (KeyError, TypeError or ValueError for one the app did not write)."""
    document = json.loads(entity["event"])
    occurred = document.get("occurredAt")
    event = HrEvent(
        event_id=str(document["eventId"]),
        kind=str(document["kind"]),
        employee_id=str(document["employeeId"]),
        user_id=Guid(str(document["userObjectId"])),
        attributes=dict(document["attributes"]),
        previous=dict(document["previous"]),
        effective_date=document.get("effectiveDate"),
        occurred_at=_aware(occurred) if occurred else None,
    )
    moments = json.loads(entity["tiebreak"])
    if not isinstance(moments, list) or len(moments) != 2:
        raise ValueError(f"not a tiebreak: {entity['tiebreak']!r}")
    considered = json.loads(_unchunked("considered", entity)) if entity.get("considered") is not None else None
    return KnownEvent(
        event=event,
        placement=Placement(moment=_aware(entity["moment"]), tiebreak=(_aware(moments[0]), _aware(moments[1]))),
        considered=tuple(str(name) for name in considered) if considered is not None else None,
        gives=_gives_from(entity),
    )
