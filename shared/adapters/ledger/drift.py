"""What drift reads of the ledger: the pairs of one target, the targets with pairs, and the blast-radius guard's held
removals (`DriftStore`).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Final

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from shared.adapters.ledger.pairs import _PAIR_ROW, _pair_state
from shared.adapters.tables import _UNSAFE, MAX_RACES, TableRows, _absent, _time, _unavailable, table_key
from shared.core.contract import Guid, Target
from shared.core.errors import Reason, TransientError
from shared.core.intents import pair_of, parse_pair
from shared.core.ledger import DriftHold
from shared.core.pairs import PairState

__all__ = ["DriftStore"]

_HOLD_ROW: Final = "hold"
_PAIRS_BETWEEN: Final = "PartitionKey ge @low and PartitionKey lt @high and RowKey eq @row"


class DriftStore(TableRows):
    """Drift's reads and holds (`shared.adapters.ledger.Ledger`'s part)."""

    uncertain_window: timedelta

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
