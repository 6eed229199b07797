"""A whole drift sweep of the app (`benchmarks.drift`'s small directory): the intents in the ledger in Azurite, the
registered drift functions, the repairs carried out by the bulk grant function."""

from __future__ import annotations

import pytest

from benchmarks.drift import SMOKE, run

#: What the sweep sets or clears in the environment (its token endpoint's variables): each restored afterwards.
IDENTITY = (
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "IDENTITY_SERVER_THUMBPRINT",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "AZURE_CLIENT_ID",
    "IMDS_ENDPOINT",
)


async def test_a_sweep_finds_exactly_the_pairs_changed_behind_the_apps_back_and_the_pipeline_repairs_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In step: no finding and no write. Drifted: every drifted pair found and published, every one repaired by the
    grant function but the tier-0 role's (one Graph write each, nothing else), while neither the repairs nor the
    writes beside them are throttled."""
    for name in IDENTITY:
        monkeypatch.setenv(name, "")  # the sweep announces its own token endpoint; restored afterwards

    result = await run(SMOKE)

    assert (result["in_step_findings"], result["in_step_writes"]) == (0, 0)
    assert result["in_step_reads"] == 2 + 4 + 4  # one page per unit of 500, one per role, each role's id once
    assert result["findings_exact"] is True
    assert result["events"] == result["findings"]  # drift_detected: one per finding
    assert result["repairs_exact"] is True
    assert result["repairs_carried_out"] == result["repair_writes"] == result["drifted"] - 1
    assert result["repair_writes_429"] == 0
    assert result["tier0_untouched"] == 1
    assert (result["writes_beside_429"], result["reads_429"]) == (0, 0)
