"""The grant ledger: request ids, the state of every (member, target) pair, the status records and their copies, HR
events by person, drift's holds and the app's seal key, in one table.

The decisions are `shared.core`'s; each part of the ledger reads and writes what they decide over one table client
(`shared.adapters.tables`): `pairs` (claims and leases), `statuses` (status records, history, job and HR event rows),
`hr_events` (each person's HR events), `drift` (a target's pairs, the guard's holds) and the seal key
(`shared.adapters.seal.SealKeys`). `Ledger` is all of them over one table, one per process. Every storage failure
raises `TransientError(LedgerUnavailable)`. The entities, their keys and what one grant costs are in docs/ledger.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING

from shared.adapters.ledger.drift import DriftStore
from shared.adapters.ledger.hr_events import PERSON_EVENTS, HrEventStore
from shared.adapters.ledger.pairs import LEASE_FOR, UNCERTAIN_WINDOW, PairStore
from shared.adapters.ledger.statuses import StatusStore, history_key
from shared.adapters.seal import SealKeys
from shared.adapters.tables import table_client, table_key
from shared.core.ledger import Absorbed, Admitted, DriftHold, Group, GroupKind, Ticket

if TYPE_CHECKING:
    from azure.data.tables.aio import TableClient

__all__ = [
    "LEASE_FOR",
    "PERSON_EVENTS",
    "UNCERTAIN_WINDOW",
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


class Ledger(PairStore, StatusStore, HrEventStore, DriftStore, SealKeys):
    """The grant ledger over one table (`table_client`): every part of it. One per process; `aclose` closes the
    client."""

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
