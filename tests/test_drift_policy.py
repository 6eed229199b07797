"""The grant policy's drift section: each target's mode, the default, the guard; a bad section stops the app."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared.core.contract import AdministrativeUnit, DirectoryRole, Guid, ScopedRole
from shared.core.drift import Guard, Mode
from shared.core.drift_policy import DriftPolicy
from shared.core.errors import ConfigError
from shared.core.policy import GrantPolicy
from tests.conftest import AU, GLOBAL_ADMIN, HELPDESK_TEMPLATE

SOURCES = {"ticketing": {"administrativeUnits": ["*"]}}


def write(tmp_path: Path, document: Any) -> Path:
    file = tmp_path / "policy.json"
    file.write_text(json.dumps(document))
    return file


def test_each_named_target_has_its_mode_and_every_other_the_default(tmp_path: Path) -> None:
    scoped = {"type": "scopedRole", "roleTemplateId": HELPDESK_TEMPLATE, "administrativeUnitId": AU}
    file = write(
        tmp_path,
        {
            "sources": SOURCES,
            "drift": {
                "defaultMode": "restore",
                "guard": {"fraction": 0.1, "cap": 5},
                "targets": [
                    {"target": {"type": "administrativeUnit", "id": AU}, "mode": "authoritative"},
                    {"target": {"type": "directoryRole", "roleTemplateId": GLOBAL_ADMIN}, "mode": "report"},
                    {"target": scoped, "mode": "report"},
                ],
            },
        },
    )
    policy = DriftPolicy.load(file)
    assert GrantPolicy.load(file).systems  # the grant policy reads the same file, drift section and all
    assert policy.mode_of(AdministrativeUnit(id=Guid(AU))) is Mode.AUTHORITATIVE
    assert policy.mode_of(DirectoryRole(role_template_id=Guid(GLOBAL_ADMIN))) is Mode.REPORT
    assert policy.mode_of(ScopedRole(role_template_id=Guid(HELPDESK_TEMPLATE), administrative_unit_id=Guid(AU))) is (
        Mode.REPORT
    )
    assert policy.mode_of(DirectoryRole(role_template_id=Guid(HELPDESK_TEMPLATE))) is Mode.RESTORE
    assert policy.guard == Guard(fraction=0.1, cap=5)
    assert len(policy.targets) == 3


def test_without_a_policy_file_or_a_drift_section_every_target_is_report_only(tmp_path: Path) -> None:
    assert DriftPolicy.load(None) == DriftPolicy()
    assert DriftPolicy.load(write(tmp_path, {"sources": SOURCES})) == DriftPolicy()
    assert DriftPolicy().mode_of(AdministrativeUnit(id=Guid(AU))) is Mode.REPORT
    assert DriftPolicy().guard == Guard(fraction=0.2, cap=50)


@pytest.mark.parametrize(
    ("drift", "says"),
    [
        ([], "drift must be an object"),
        ({"mode": "restore"}, "unknown key 'mode'"),
        ({"defaultMode": "fix"}, "defaultMode must be one of report, restore, authoritative"),
        ({"guard": {"fraction": 2}}, "fraction must be a number from 0 to 1"),
        ({"guard": {"cap": -1}}, "cap must be a whole number"),
        ({"targets": {}}, "targets must be a list"),
        ({"targets": [{"target": {"type": "administrativeUnit", "id": AU}}]}, 'with "target" and "mode"'),
        ({"targets": [{"target": {"type": "administrativeUnit", "id": "EMEA"}, "mode": "report"}]}, "GUID"),
        (
            {"targets": [{"target": {"type": "directoryRole", "id": AU}, "mode": "report"}]},
            "by its roleTemplateId",
        ),
        (
            {"targets": [{"target": {"type": "directoryRole", "roleTemplateId": GLOBAL_ADMIN}, "mode": "restore"}]},
            "tier-0",
        ),
        (
            {"targets": [{"target": {"type": "administrativeUnit", "id": AU}, "mode": "report"}] * 2},
            "named twice",
        ),
    ],
)
def test_a_bad_drift_section_stops_the_app_with_an_error_naming_it(tmp_path: Path, drift: Any, says: str) -> None:
    with pytest.raises(ConfigError, match="GRANTS_POLICY") as caught:
        DriftPolicy.load(write(tmp_path, {"sources": SOURCES, "drift": drift}))
    assert says in str(caught.value)
