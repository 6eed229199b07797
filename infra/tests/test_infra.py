"""The Bicep, parsed (checkov's Bicep parser): the properties the app's safety depends on, and app settings
that match what the code reads (shared/config.py: APP_SETTINGS)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from checkov.bicep.parser import Parser

INFRA = Path(__file__).resolve().parent.parent
ROOT = INFRA.parent
sys.path.insert(0, str(ROOT))

from shared.config import APP_SETTINGS  # noqa: E402 (stdlib-only module of the app)

DATA_OWNER = "090c5cfd-751d-490a-894a-3ce6f1109419"
EXPECTED_ROLES = {
    "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0": "Azure Service Bus Data Receiver",
    "69a216fc-b8fb-44d8-bc22-1f3c2552ae39": "Azure Service Bus Data Sender",
    "acdd72a7-3385-48ef-bd42-f606fba81ae7": "Reader (target-based scaling)",
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner (Flex deployment + host)",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
}


def parse(module: str) -> dict[str, Any]:
    template, _ = Parser().parse(INFRA / "modules" / f"{module}.bicep")
    assert template is not None
    return template


def resource(module: str, name: str) -> dict[str, Any]:
    return parse(module)["resources"][name]["config"]


def app_settings() -> dict[str, Any]:
    settings = resource("functionapp", "app")["properties"]["siteConfig"]["appSettings"]
    return {item["name"]: item["value"] for item in settings}


@pytest.mark.parametrize("queue", ["grants", "hrEvents"])
def test_queues_dead_letter_deduplicate_and_lock_briefly(queue: str) -> None:
    properties = resource("servicebus", queue)["properties"]
    assert properties["maxDeliveryCount"] == 10
    assert properties["lockDuration"] == "PT1M"
    assert properties["requiresDuplicateDetection"] is True
    assert properties["duplicateDetectionHistoryTimeWindow"] == "PT10M"
    assert properties["deadLetteringOnMessageExpiration"] is True


def test_queue_names_match_the_app_defaults() -> None:
    names = {resource("servicebus", q)["name"] for q in ("grants", "hrEvents")}
    assert names == {APP_SETTINGS["GRANTS_QUEUE"], APP_SETTINGS["HR_EVENTS_QUEUE"]}


def test_service_bus_and_storage_and_insights_accept_no_keys() -> None:
    namespace = resource("servicebus", "namespace")["properties"]
    assert namespace["disableLocalAuth"] is True
    assert namespace["minimumTlsVersion"] == "1.2"
    assert resource("storage", "account")["properties"]["allowSharedKeyAccess"] is False
    assert resource("monitoring", "appInsights")["properties"]["DisableLocalAuth"] is True


def test_no_file_in_infra_reads_keys() -> None:
    for file in INFRA.rglob("*.bicep"):
        text = file.read_text()
        assert "listKeys(" not in text, file
        assert "AccountKey=" not in text, file
        assert "SharedAccessKey" not in text, file


def test_exactly_the_listed_roles_are_granted_never_data_owner() -> None:
    roles = parse("rbac")["variables"]["roles"]["value"]
    assert set(roles.values()) == set(EXPECTED_ROLES)
    assert DATA_OWNER not in (INFRA / "modules" / "rbac.bicep").read_text()
    assignments = [r for r in parse("rbac")["resources"].values() if r["type"].startswith("Microsoft.Authorization")]
    assert len(assignments) == len(EXPECTED_ROLES)
    for assignment in assignments:
        config = assignment["config"]
        assert config["properties"]["principalType"] == "ServicePrincipal"
        name = config["name"]["function"]
        assert name["type"] == "guid"  # guid(scope.id, principalId, role)
        assert "principalId" in str(name["parameters"])


def test_every_setting_the_code_reads_is_set_identity_based() -> None:
    settings = app_settings()
    assert set(APP_SETTINGS) <= set(settings)
    assert settings["ServiceBusConnection__credential"] == "managedidentity"
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert "AzureWebJobsStorage" not in settings  # no connection string, only the identity-based form


def test_no_app_setting_carries_a_secret() -> None:
    allowed = {
        "APPLICATIONINSIGHTS_CONNECTION_STRING",
        "GRANTS_WEBHOOK_SECRET",
        "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
    }
    for name in app_settings():
        if name not in allowed:
            assert not name.lower().endswith(("key", "secret", "password", "connectionstring", "sas")), name
    assert "@Microsoft.KeyVault(SecretUri=" in str(app_settings()["GRANTS_WEBHOOK_SECRET"])


def test_graph_settings_known_to_the_code() -> None:
    for name in app_settings():
        if name.startswith(("GRANTS_", "GRAPH_", "ServiceBusConnection__")) or name == "HR_EVENTS_QUEUE":
            assert name in APP_SETTINGS, name


BAD_NAMESPACE = """
resource ns 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' = {
  name: 'bad'
  location: 'westeurope'
  sku: { name: 'Standard' }
  properties: { disableLocalAuth: false, minimumTlsVersion: '1.0' }
}
resource q 'Microsoft.ServiceBus/namespaces/queues@2022-10-01-preview' = {
  parent: ns
  name: 'q'
  properties: { requiresDuplicateDetection: false }
}
"""


def test_our_checkov_checks_fire_on_a_bad_namespace(tmp_path: Path) -> None:
    (tmp_path / "bad.bicep").write_text(BAD_NAMESPACE)
    result = subprocess.run(  # noqa: S603 (checkov from this venv, fixed arguments)
        [
            str(Path(sys.executable).parent / "checkov"),
            "-d",
            str(tmp_path),
            "--framework",
            "bicep",
            "--skip-download",
            "--external-checks-dir",
            str(INFRA / "checks"),
            "--compact",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    for check in ("CKV_GRANTS_SB_1", "CKV_GRANTS_SB_2", "CKV_GRANTS_SB_3", "CKV_GRANTS_SB_4"):
        assert check in result.stdout, result.stdout
    assert result.returncode != 0
