"""The cost benchmark's counting (`benchmarks.cost`): busy time as Flex Consumption bills it, the app's sends told
apart at the queue's seam, log bytes by kind, and a whole scenario's counts against the Graph double and Azurite."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from benchmarks.cost import (
    SECOND_UNIT,
    CountingSender,
    LogVolume,
    busy_seconds,
    gb_seconds,
    instance_memory_mb,
    measure_scenario,
    per_thousand,
    service_bus_operations,
)
from benchmarks.directory import UNIT, member_id
from grants_local.azurite import AzuriteTables
from grants_local.graph_double import GraphDouble
from grants_local.queue import LocalQueue, LocalSender, ManualClock, SendFailedError
from shared.service.settle import outcome_log


def test_overlapping_invocations_are_busy_time_once_and_gaps_not_at_all() -> None:
    """Two invocations at once on one instance are billed as one stretch of busy time; an idle gap is not billed."""
    assert busy_seconds([(0.0, 1.0), (0.5, 1.5), (3.0, 4.0)]) == pytest.approx(2.5)
    assert busy_seconds([(0.0, 10.0), (2.0, 3.0)]) == pytest.approx(10.0)  # one inside another
    assert busy_seconds([(1.0, 2.0), (0.0, 1.0)]) == pytest.approx(2.0)  # touching, in any order
    assert busy_seconds([]) == 0.0


def test_figures_per_thousand_scale_by_the_units_measured_and_refuse_none() -> None:
    assert per_thousand(6_030, 1_000) == pytest.approx(6_030)
    assert per_thousand(31, 5) == pytest.approx(6_200)
    with pytest.raises(ValueError, match="at least one unit"):
        per_thousand(1, 0)


def test_gb_seconds_are_the_instance_memory_times_busy_seconds_as_azure_converts_them() -> None:
    """Azure's execution units are MB-milliseconds, 1,024,000 to a GB-second: a 2,048 MB instance busy 1 s is 2."""
    assert gb_seconds(1.0, 2048) == pytest.approx(2.0)
    assert gb_seconds(30.0, 4096) == pytest.approx(120.0)


def test_the_instance_memory_is_read_from_infra() -> None:
    text = (Path(__file__).parent.parent / "infra" / "modules" / "functionapp.bicep").read_text(encoding="utf-8")
    assert f"instanceMemoryMB: {instance_memory_mb()}" in text


async def test_the_apps_sends_are_counted_as_now_or_later_and_a_failed_send_not_at_all() -> None:
    clock = ManualClock()
    local = LocalSender(LocalQueue(clock=clock))
    sender = CountingSender(local, clock)
    now = datetime.fromtimestamp(clock(), UTC)

    await sender.schedule(body=b"{}", message_id="a", application_properties={}, scheduled_enqueue_time=now)
    later = now + timedelta(days=7)
    await sender.schedule(body=b"{...}", message_id="b", application_properties={}, scheduled_enqueue_time=later)
    local.fail_next()
    with pytest.raises(SendFailedError):
        await sender.schedule(body=b"x" * 99, message_id="c", application_properties={}, scheduled_enqueue_time=now)

    assert (sender.sends, sender.scheduled, sender.largest) == (1, 1, 5)


def test_log_volume_counts_the_outcome_lines_apart_and_leaves_out_the_harness_and_debug() -> None:
    volume = LogVolume()
    with volume.attached():
        outcome_log.info("grant granted %s", '{"requestId": "é"}')
        logging.getLogger("shared.handlers.webhook").info("accepted")
        logging.getLogger("shared.handlers.webhook").debug("not shipped at INFO")
        logging.getLogger("grants_local.host").warning("the harness's own")
    assert volume.lines == {"outcome": 1, "other": 1}
    assert volume.bytes == {"outcome": len('grant granted {"requestId": "é"}'.encode()), "other": len(b"accepted")}


@pytest.fixture
def bench_directory(graph: GraphDouble) -> GraphDouble:
    """The Graph double with the benchmark's units and its first members."""
    graph.load({"users": [member_id(n) for n in range(4)], "administrativeUnits": [{"id": UNIT}, {"id": SECOND_UNIT}]})
    return graph


async def test_an_interactive_grant_costs_four_service_bus_operations_one_execution_and_one_outcome_line(
    bench_directory: GraphDouble, azurite: AzuriteTables
) -> None:
    """Producer's send, delivery, completion and outcome event; the ledger's requests counted at the app's client; and
    the drift sweep after it, with everything in step, finds nothing to do."""
    env = {**os.environ, "GRAPH_BASE_URL": bench_directory.base_url}
    found = await measure_scenario("interactive", [member_id(0), member_id(1)], env=env, azurite=azurite)

    counts = found["counts"]
    assert (found["units"], found["grants"], found["functions"]) == (2, 2, {"grant_membership": 2})
    assert {name: counts[name] for name in ("producer_sends", "deliveries", "settlements", "publishes")} == {
        "producer_sends": 2,
        "deliveries": 2,
        "settlements": 2,
        "publishes": 2,
    }
    assert service_bus_operations(counts) == 8
    assert counts["table"] >= 2 * 6  # the ledger's six requests per interactive grant (docs/ledger.md), at least
    assert counts["outcome_lines"] == 2
    assert counts["busy_s"] <= counts["execution_s"]
    assert bench_directory.members_of(UNIT) >= {member_id(0), member_id(1)}
    sweep = found["sweep"]
    assert (sweep["function"], sweep["executions"], service_bus_operations(sweep)) == ("drift_sweep", 1, 0)


async def test_a_time_bound_grant_schedules_its_removal_and_the_expiry_sweep_then_finds_nothing_due(
    bench_directory: GraphDouble, azurite: AzuriteTables
) -> None:
    env = {**os.environ, "GRAPH_BASE_URL": bench_directory.base_url}
    found = await measure_scenario("timebound", [member_id(2)], env=env, azurite=azurite)

    counts = found["counts"]
    assert found["grants"] == 2  # granted, then revoked at its expiry
    assert (counts["producer_sends"], counts["scheduled"], counts["sends"]) == (1, 1, 0)
    assert (counts["deliveries"], counts["settlements"], counts["publishes"]) == (2, 2, 2)
    assert member_id(2) not in bench_directory.members_of(UNIT)
    assert (found["sweep"]["function"], found["sweep"]["table"]) == ("expiry_sweep", 2)  # its cursor, its query
