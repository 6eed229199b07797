"""Azurite, the ledger's storage in tests and local runs: started once, answering, a fresh table per test."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
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


def test_a_parent_killed_from_outside_leaves_no_azurite_behind() -> None:
    """SIGKILL (a CI timeout, `kill -9`) gives the parent no chance to stop its child: the kernel's parent-death
    signal does, so Azurite does not linger as an orphan."""
    script = (
        "import sys, time\n"
        "from grants_local.azurite import AzuriteTables\n"
        "tables = AzuriteTables().start()\n"
        "print(tables.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen(  # noqa: S603 (this interpreter, a fixed script)
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), f"azurite {child} outlived its parent"
    finally:
        parent.kill()
        parent.wait()


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, waited for by init, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"
