"""The soak's CI variant: 500 messages through the registered function and the local host, with faults."""

from __future__ import annotations

import logging

from grants_local.soak import FAULTS, run_soak


async def test_given_500_messages_and_seeded_faults_when_soaked_then_every_invariant_holds() -> None:
    # INFO and above, as host.json sends to Application Insights (make soak scans DEBUG too)
    report = await run_soak(count=500, seed=20261123, log_level=logging.INFO)

    failed = [(name, expected, actual) for name, expected, actual, ok in report.invariants if not ok]
    assert failed == [], report.numbers
    assert sum(report.outcomes.values()) >= 500
    injected = {fault for fault, n in report.faults.items() if n}
    assert len(injected & set(FAULTS)) >= 10  # most fault kinds actually fired
    assert report.numbers["deliveries_before_their_time_deferred"] > 0  # scheduled messages were replayed early
