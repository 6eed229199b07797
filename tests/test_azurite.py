"""Azurite, the ledger's storage in tests and local runs: started once, answering, a fresh table per test."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from grants_local.azurite import AzuriteError, AzuriteTables

if TYPE_CHECKING:
    from azure.data.tables.aio import TableClient

    from tests.conftest import StorageCalls


async def test_a_fresh_table_is_empty_and_takes_writes(ledger_table: TableClient, storage_calls: StorageCalls) -> None:
    """Given a new table, when an entity is written and read back, then it is there: three requests, counted."""
    assert [entity async for entity in ledger_table.list_entities()] == []
    await ledger_table.create_entity({"PartitionKey": "p", "RowKey": "r", "value": 1})
    assert (await ledger_table.get_entity("p", "r"))["value"] == 1
    assert len(storage_calls) == 3  # list, create, get


def test_a_missing_installation_is_named(tmp_path: Path) -> None:
    with pytest.raises(AzuriteError, match="not installed"):
        AzuriteTables(home=tmp_path).start()
