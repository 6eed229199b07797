"""The Bicep, parsed with pycep: the settings the app's safety depends on, exactly the roles it needs, and app
settings that match what the code reads (shared/config.py: APP_SETTINGS). Runs in .venv-infra (infra/check.sh)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from bicep import BICEP_FILES, INFRA, accessor, loop, module, parse, resource

ROOT = INFRA.parent
sys.path.insert(0, str(ROOT))

from shared.config import APP_SETTINGS  # noqa: E402 (stdlib-only module of the app)

SERVICE_BUS_DATA_OWNER = "090c5cfd-751d-490a-894a-3ce6f1109419"
MONITORING_READER = "43d0d8ad-25c7-4714-9337-8ba259a9fe05"
#: Built-in role definition GUIDs (the same in every tenant) -> why an identity holds them.
EXPECTED_ROLES = {
    "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0": "Azure Service Bus Data Receiver: the trigger",
    "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39": "Azure Service Bus Data Sender: retry copies, scheduled removals",
    "acdd72a7-3385-48ef-bd42-f606fba81ae7": "Reader: target-based scaling reads the namespace",
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner: host storage and Flex deployment container",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher: telemetry with local auth off",
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor: the grant ledger's table",
    MONITORING_READER: "Monitoring Reader: the log search alert rules' own identities query Application Insights",
}
GRAPH_ROOTS = {
    "https://graph.microsoft.com/v1.0",
    "https://graph.microsoft.us/v1.0",
    "https://dod-graph.microsoft.us/v1.0",
    "https://microsoftgraph.chinacloudapi.cn/v1.0",
}
GRAPH_PERMISSIONS = {
    "AdministrativeUnit.ReadWrite.All",
    "RoleManagement.ReadWrite.Directory",
    "RoleEligibilitySchedule.ReadWrite.Directory",
    "RoleAssignmentSchedule.ReadWrite.Directory",
}
CUSTOM_CHECKS = ("CKV_GRANTS_SB_1", "CKV_GRANTS_SB_2", "CKV_GRANTS_SB_3", "CKV_GRANTS_SB_4")


def app_settings() -> dict[str, Any]:
    settings = resource("functionapp", "app")["properties"]["siteConfig"]["appSettings"]
    names = [item["name"] for item in settings]
    assert len(names) == len(set(names)), "an app setting is listed twice"
    return {item["name"]: item["value"] for item in settings}


def test_every_bicep_file_parses() -> None:
    """Given infra/, every .bicep file parses (checkov silently skips one that does not)."""
    assert INFRA / "main.bicep" in BICEP_FILES
    for path in BICEP_FILES:
        assert parse(path).get("resources") or parse(path).get("modules"), path


@pytest.mark.parametrize("queue", ["grants", "grantsBulk", "hrEvents", "callbackRetries"])
def test_queues_dead_letter_deduplicate_and_lock_briefly(queue: str) -> None:
    properties = resource("servicebus", queue)["properties"]
    assert properties["maxDeliveryCount"] == "maxDeliveryCount"  # the one parameter (test_one_delivery_count_...)
    assert properties["lockDuration"] == "PT1M"
    assert properties["requiresDuplicateDetection"] is True
    assert properties["duplicateDetectionHistoryTimeWindow"] == "PT10M"
    assert properties["deadLetteringOnMessageExpiration"] is True


def test_queue_names_are_the_app_defaults_and_feed_the_app_settings() -> None:
    names = {resource("servicebus", q)["name"] for q in ("grants", "grantsBulk", "hrEvents")}
    assert names == {APP_SETTINGS["GRANTS_QUEUE"], APP_SETTINGS["GRANTS_BULK_QUEUE"], APP_SETTINGS["HR_EVENTS_QUEUE"]}
    params = parse(INFRA / "main.bicep")["modules"]["functionApp"]["config"]["params"]
    assert accessor(params["grantsQueue"]) == ["servicebus", "outputs", "grantsQueue"]
    assert accessor(params["grantsBulkQueue"]) == ["servicebus", "outputs", "grantsBulkQueue"]
    assert app_settings()["GRANTS_BULK_QUEUE"] == "grantsBulkQueue"
    assert accessor(params["hrEventsQueue"]) == ["servicebus", "outputs", "hrEventsQueue"]
    assert app_settings()["GRANTS_QUEUE"] == "grantsQueue"
    assert app_settings()["HR_EVENTS_QUEUE"] == "hrEventsQueue"


def test_the_outcomes_topic_deduplicates_and_its_callbacks_subscription_filters_on_a_callback_url() -> None:
    """Given the outcomes topic: duplicate detection (a redelivered settlement publishes the same MessageId) over
    at least the grants queue's window; the callbacks subscription dead-letters a poison event after 10 deliveries
    and takes only events with a callbackUrl, by a rule named $Default (it replaces the implicit 1=1 rule)."""
    topic = resource("servicebus", "outcomes")
    assert topic["name"] == "grant-outcomes"
    assert topic["properties"]["requiresDuplicateDetection"] is True
    assert topic["properties"]["duplicateDetectionHistoryTimeWindow"] == "PT1H"
    subscription = resource("servicebus", "callbacks")
    assert (subscription["parent"], subscription["name"]) == ("outcomes", "callbacks")
    properties = subscription["properties"]
    assert properties["maxDeliveryCount"] == "maxDeliveryCount"
    assert properties["lockDuration"] == "PT1M"
    assert properties["deadLetteringOnMessageExpiration"] is True
    assert properties["deadLetteringOnFilterEvaluationExceptions"] is True
    rule = resource("servicebus", "callbacksFilter")
    assert (rule["parent"], rule["name"]) == ("callbacks", "$Default")
    assert rule["properties"] == {"filterType": "SqlFilter", "sqlFilter": {"sqlExpression": "EXISTS(callbackUrl)"}}
    rules = [r for r in module("servicebus")["resources"].values() if r["type"].endswith("/rules")]
    assert len(rules) == 1


def test_the_callback_trigger_reads_the_subscription_and_queue_infra_creates() -> None:
    """function_app.py's callback triggers name the subscription and the settings that infra sets."""
    source = (ROOT / "function_app.py").read_text()
    subscription = resource("servicebus", "callbacks")["name"]
    assert f'subscription_name="{subscription}"' in source
    assert 'topic_name="%GRANTS_OUTCOMES_TOPIC%"' in source
    assert 'queue_name="%GRANTS_CALLBACK_QUEUE%"' in source
    assert resource("servicebus", "callbackRetries")["name"] == APP_SETTINGS["GRANTS_CALLBACK_QUEUE"]
    params = parse(INFRA / "main.bicep")["modules"]["functionApp"]["config"]["params"]
    assert accessor(params["outcomesTopic"]) == ["servicebus", "outputs", "outcomesTopic"]
    assert accessor(params["callbackQueue"]) == ["servicebus", "outputs", "callbackQueue"]
    assert app_settings()["GRANTS_OUTCOMES_TOPIC"] == "outcomesTopic"
    assert app_settings()["GRANTS_CALLBACK_QUEUE"] == "callbackQueue"
    assert app_settings()["GRANTS_CALLBACK_HOSTS"] == "callbackHosts"


def test_azure_never_runs_callbacks_in_local_mode() -> None:
    """Given the app settings infra writes, loopback callbacks are off as a literal (no parameter can turn them
    on), and the app's own configuration, read with them, refuses a loopback or plain-http callback URL; the
    setting is refused outright where the App Service platform runs the app."""
    from shared.config import Settings
    from shared.core.callbacks import CallbackRefused
    from shared.core.errors import ConfigError

    assert app_settings()["GRANTS_CALLBACK_LOOPBACK"] == "false"
    azure = {
        "GRANTS_OUTCOMES_TOPIC": "grant-outcomes",
        "GRANTS_CALLBACK_LOOPBACK": app_settings()["GRANTS_CALLBACK_LOOPBACK"],
        "GRANTS_CALLBACK_HOSTS": '{"ticketing": ["contoso.service-now.com"]}',
    }
    policy = Settings.from_env(azure).callbacks
    for url in (
        "http://127.0.0.1:8080/cb",
        "https://localhost/cb",
        "https://[::1]/cb",
        "http://contoso.service-now.com/",
    ):
        with pytest.raises(CallbackRefused):
            policy.check(url, producer="ticketing")
    assert policy.check("https://contoso.service-now.com/api/x", producer="ticketing").host == "contoso.service-now.com"
    with pytest.raises(ConfigError, match="local run only"):
        Settings.from_env({**azure, "GRANTS_CALLBACK_LOOPBACK": "true", "WEBSITE_INSTANCE_ID": "a1b2"})


def test_callback_hosts_are_a_comma_list_parameter_made_into_the_json_setting() -> None:
    main = parse(INFRA / "main.bicep")
    parameter = main["parameters"]["callbackHosts"]
    assert (parameter["type"], parameter["default"]) == ("string", "")
    value = main["modules"]["functionApp"]["config"]["params"]["callbackHosts"]["operator"]
    assert value["type"] == "conditional"
    assert value["operands"]["true_value"] == ""
    converted = value["operands"]["false_value"]["function"]
    assert converted["type"] == "string"
    assert list(converted["parameters"]["value_to_convert"]) == ["ticketing"]
    azd = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert azd["callbackHosts"] == {"value": "${GRANTS_CALLBACK_HOSTS=}"}


def test_service_bus_storage_and_monitoring_accept_no_keys() -> None:
    namespace = resource("servicebus", "namespace")
    assert namespace["sku"]["name"] == "Standard"
    assert namespace["properties"]["disableLocalAuth"] is True
    assert namespace["properties"]["minimumTlsVersion"] == "1.2"
    for storage in ("storage", "ledger"):
        account = resource(storage, "account")["properties"]
        assert account["allowSharedKeyAccess"] is False
        assert account["allowBlobPublicAccess"] is False
        assert account["minimumTlsVersion"] == "TLS1_2"
        assert account["supportsHttpsTrafficOnly"] is True
    assert resource("monitoring", "appInsights")["properties"]["DisableLocalAuth"] is True
    assert resource("monitoring", "workspace")["properties"]["features"]["disableLocalAuth"] is True


def test_nothing_in_infra_reads_or_builds_a_key() -> None:
    files = [*BICEP_FILES, *INFRA.rglob("*.json"), *INFRA.rglob("*.sh"), ROOT / "azure.yaml"]
    forbidden = ("listKeys(", "listConnectionStrings(", "listAccountSas(", "listServiceSas(")
    forbidden += ("AccountKey=", "SharedAccessKey", "SharedAccessSignature")
    for path in files:
        text = path.read_text()
        for needle in forbidden:
            assert needle not in text, f"{needle} in {path}"


def role_definitions() -> dict[str, str]:
    """rbac.bicep's variables that hold a built-in role definition: variable name -> role GUID."""
    found = {}
    for name, variable in module("rbac")["variables"].items():
        function = variable["value"]["function"]
        assert function["type"] == "subscription_resource_id", name
        assert function["parameters"]["resource_type"] == "Microsoft.Authorization/roleDefinitions"
        found[name] = function["parameters"]["resource_name_1"]
    return found


def test_exactly_the_listed_roles_exist_never_service_bus_data_owner() -> None:
    assert sorted(role_definitions().values()) == sorted(EXPECTED_ROLES)
    for path in BICEP_FILES:
        assert SERVICE_BUS_DATA_OWNER not in re.sub(r"//.*", "", path.read_text()), path


def role_assignments() -> list[tuple[dict[str, Any], str, str]]:
    """rbac.bicep's role assignments but the producers' (`test_each_producer_may_send_to_its_own_queue_only`):
    (body, principal expression, where the principal comes from). The app's identity is the parameter principalId;
    the alert rules' identities are a loop over alertRulePrincipalIds."""
    found = []
    for r in module("rbac")["resources"].values():
        if r["type"] == "Microsoft.Authorization/roleAssignments":
            if r["config"].get("loop_type", {}).get("detail", {}).get("array_name") == "producerSenders":
                continue
            if "loop_type" in r["config"]:
                item, array, body = loop(r["config"])
                found.append((body, item, array))
            else:
                found.append((r["config"], "principalId", "principalId"))
    return found


def test_each_role_is_assigned_once_to_the_identity_named_by_scope_principal_and_role() -> None:
    """Each assignment: guid(<its scope>.id, <principal>, <its role definition id>), a service principal; the app's
    identity holds the app's roles, the alert rules' identities Monitoring Reader only."""
    roles = role_definitions()
    resources = module("rbac")["resources"]
    assigned: dict[str, str] = {}
    for body, principal, source in role_assignments():
        properties = body["properties"]
        assert properties["principalType"] == "ServicePrincipal"
        assert properties["principalId"] == principal
        role = properties["roleDefinitionId"]
        assert role in roles, role  # a variable above, not an inline or guessed ID
        name = body["name"]["function"]
        assert name["type"] == "guid"
        arguments = name["parameters"]
        assert accessor(arguments["base_string"]) == [body["scope"], "id"]
        assert resources[body["scope"]]["existing"] is True
        assert (arguments["extra_string_1"], arguments["extra_string_2"]) == (principal, role)
        assert set(arguments) == {"base_string", "extra_string_1", "extra_string_2"}
        assert roles[role] not in assigned, roles[role]
        assigned[roles[role]] = source
    assert sorted(assigned) == sorted(EXPECTED_ROLES)
    assert {role for role, source in assigned.items() if source != "principalId"} == {MONITORING_READER}
    assert assigned[MONITORING_READER] == "alertRulePrincipalIds"


def test_role_scopes_are_the_resources_that_need_them() -> None:
    resources = module("rbac")["resources"]
    roles = role_definitions()
    scope_type = {
        roles[body["properties"]["roleDefinitionId"]]: resources[body["scope"]]["type"]
        for body, _, _ in role_assignments()
    }
    assert scope_type == {
        "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0": "Microsoft.ServiceBus/namespaces",
        "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39": "Microsoft.ServiceBus/namespaces",
        "acdd72a7-3385-48ef-bd42-f606fba81ae7": "Microsoft.ServiceBus/namespaces",
        "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Microsoft.Storage/storageAccounts",
        "3913510d-42f4-4e42-8a64-420c390055eb": "Microsoft.Insights/components",
        "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Microsoft.Storage/storageAccounts/tableServices/tables",
        MONITORING_READER: "Microsoft.Insights/components",
    }


def test_each_producer_may_send_to_its_own_queue_only() -> None:
    """Azure Service Bus Data Sender for each producer's principal, scoped to its one queue (an existing queue named by
    the same loop's item), never the namespace; named guid(queue id, principal, role) like every other assignment."""
    resources = module("rbac")["resources"]
    sender = resources["producerSender"]["config"]
    detail = sender["loop_type"]["detail"]
    assert (detail["array_name"], detail["item_name"], detail["index_name"]) == ("producerSenders", "sender", "index")
    body = sender["config"]
    assert role_definitions()[body["properties"]["roleDefinitionId"]] == "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39"
    assert accessor(body["properties"]["principalId"]) == ["sender", "principalId"]
    scope = body["scope"]["operator"]
    assert scope["type"] == "index_accessor"
    assert scope["operands"] == {"operand_1": "producerQueues", "operand_2": "index"}
    queues = resources["producerQueues"]
    assert (queues["type"], queues["existing"]) == ("Microsoft.ServiceBus/namespaces/queues", True)
    assert accessor(queues["config"]["config"]["name"]) == ["sender", "queue"]
    arguments = body["name"]["function"]["parameters"]
    assert accessor(arguments["extra_string_1"]) == ["sender", "principalId"]
    assert arguments["extra_string_2"] == body["properties"]["roleDefinitionId"]
    main = (INFRA / "main.bicep").read_text()
    assert "queue: producer.entry == 'hrEvents' ? 'hr-events' : 'grants-${producer.name}'" in main
    assert "producers: producers" in main  # the same list makes the queues (servicebus.bicep)


def test_no_role_assignment_outside_the_rbac_module() -> None:
    for path in BICEP_FILES:
        if path.name != "rbac.bicep":
            types = {r["type"] for r in parse(path).get("resources", {}).values()}
            assert "Microsoft.Authorization/roleAssignments" not in types, path


def test_every_setting_the_code_reads_is_set() -> None:
    assert set(APP_SETTINGS) <= set(app_settings())


def test_every_app_setting_of_ours_is_one_the_code_reads() -> None:
    ours = [n for n in app_settings() if n.startswith(("GRANTS_", "GRAPH_", "ServiceBusConnection__", "AZURE_"))]
    assert ours
    for name in ours:
        assert name in APP_SETTINGS or name == "HR_EVENTS_QUEUE", name


def test_connections_are_identity_based() -> None:
    settings = app_settings()
    assert settings["ServiceBusConnection__credential"] == "managedidentity"
    assert settings["ServiceBusConnection__clientId"] == "identityClientId"
    assert settings["ServiceBusConnection__fullyQualifiedNamespace"] == "serviceBusNamespaceFqdn"
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert settings["AzureWebJobsStorage__clientId"] == "identityClientId"
    assert settings["AzureWebJobsStorage__accountName"] == "storageAccountName"
    assert settings["AZURE_CLIENT_ID"] == "identityClientId"
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == "ClientId=${identityClientId};Authorization=AAD"
    assert "AzureWebJobsStorage" not in settings  # the connection-string form
    main = parse(INFRA / "main.bicep")["modules"]["functionApp"]["config"]["params"]
    assert accessor(main["identityClientId"]) == ["identity", "outputs", "clientId"]


def test_the_ledger_table_feeds_the_app_settings_and_its_one_role() -> None:
    """The app reads the ledger's endpoint and table from the ledger module; its role is on that table only."""
    main = parse(INFRA / "main.bicep")["modules"]
    params = main["functionApp"]["config"]["params"]
    assert accessor(params["ledgerTableServiceUri"]) == ["ledger", "outputs", "tableServiceUri"]
    assert accessor(params["ledgerTableName"]) == ["ledger", "outputs", "tableName"]
    assert app_settings()["GrantsLedger__tableServiceUri"] == "ledgerTableServiceUri"
    assert app_settings()["GrantsLedger__tableName"] == "ledgerTableName"
    assert module("ledger")["parameters"]["tableName"]["default"] == APP_SETTINGS["GrantsLedger__tableName"]
    rbac = main["rbac"]["config"]["params"]
    assert accessor(rbac["ledgerAccountName"]) == ["ledger", "outputs", "name"]
    assert accessor(rbac["ledgerTableName"]) == ["ledger", "outputs", "tableName"]
    assert resource("ledger", "account")["sku"]["name"] == "Standard_ZRS"


def test_no_app_setting_carries_a_secret() -> None:
    """Names that usually hold secrets are absent, except two that demonstrably hold none."""
    settings = app_settings()
    exempt = {
        # Only locates the component: Application Insights refuses its key (DisableLocalAuth, asserted above).
        "APPLICATIONINSIGHTS_CONNECTION_STRING",
        # The code reads it (APP_SETTINGS); its value is empty or a Key Vault reference, never a literal.
        "GRANTS_WEBHOOK_SECRET",
    }
    for name in settings.keys() - exempt:
        normalized = name.lower().replace("_", "")
        assert not normalized.endswith(("connectionstring", "key", "secret", "password", "sas")), name
    webhook = settings["GRANTS_WEBHOOK_SECRET"]["operator"]
    assert webhook["type"] == "conditional"
    assert webhook["operands"]["true_value"] == ""
    assert webhook["operands"]["false_value"] == "@Microsoft.KeyVault(SecretUri=${webhookSecretUri})"
    assert resource("monitoring", "appInsights")["properties"]["DisableLocalAuth"] is True


def test_function_app_is_flex_consumption_python_311_with_one_user_assigned_identity() -> None:
    plan = resource("functionapp", "plan")
    assert plan["sku"] == {"tier": "FlexConsumption", "name": "FC1"}
    app = resource("functionapp", "app")
    assert app["identity"]["type"] == "UserAssigned"
    config = app["properties"]["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.11"}
    assert config["scaleAndConcurrency"]["maximumInstanceCount"] == "maximumInstanceCount"
    authentication = config["deployment"]["storage"]["authentication"]
    assert authentication == {"type": "UserAssignedIdentity", "userAssignedIdentityResourceId": "identityId"}
    assert app["properties"]["httpsOnly"] is True
    assert app["properties"]["keyVaultReferenceIdentity"] == "identityId"


def test_pacing_is_a_parameter_adaptive_by_default_and_static_keeps_the_per_instance_split() -> None:
    main = parse(INFRA / "main.bicep")
    parameter = main["parameters"]["graphWritePacing"]
    assert parameter["default"] == APP_SETTINGS["GRAPH_WRITE_PACING"] == "adaptive"
    allowed = next(d["argument"] for d in parameter["decorators"] if d["type"] == "allowed")
    assert set(allowed) == {"adaptive", "static"}
    assert main["modules"]["functionApp"]["config"]["params"]["graphWritePacing"] == "graphWritePacing"
    assert app_settings()["GRAPH_WRITE_PACING"] == "graphWritePacing"
    assert app_settings()["GRAPH_WRITE_WINDOW_SECONDS"] == APP_SETTINGS["GRAPH_WRITE_WINDOW_SECONDS"] == "150"
    # adaptive: every instance may write the whole quota (a ceiling); static: the old per-instance split
    rate = main["variables"]["graphWriteRate"]["value"]["operator"]
    assert rate["type"] == "conditional"
    condition = rate["operands"]["condition"]["operator"]
    assert condition == {"type": "equals", "operands": {"operand_1": "graphWritePacing", "operand_2": "static"}}
    assert rate["operands"]["true_value"] == "staticWriteRate"
    assert rate["operands"]["false_value"] == APP_SETTINGS["GRAPH_WRITE_RATE"] == "20"


def test_instance_cap_is_a_parameter_that_also_sets_the_static_per_instance_graph_write_rate() -> None:
    main = parse(INFRA / "main.bicep")
    parameter = main["parameters"]["maximumInstanceCount"]
    assert parameter["type"] == "int"
    assert parameter["default"] == 40
    host = json.loads((ROOT / "host.json").read_text())
    concurrent = host["extensions"]["serviceBus"]["maxConcurrentCalls"]
    description = next(d["argument"] for d in parameter["decorators"] if d["type"] == "description")
    assert f"maxConcurrentCalls ({concurrent})" in description
    params = main["modules"]["functionApp"]["config"]["params"]
    assert params["maximumInstanceCount"] == "maximumInstanceCount"
    assert params["graphWriteRate"] == "graphWriteRate"
    assert app_settings()["GRAPH_WRITE_RATE"] == "graphWriteRate"
    milli = main["variables"]["graphWriteRateMilli"]["value"]["operator"]
    assert milli == {"type": "divide", "operands": {"operand_1": 20000, "operand_2": "maximumInstanceCount"}}


def test_graph_base_url_is_a_parameter_limited_to_the_national_clouds() -> None:
    parameter = parse(INFRA / "main.bicep")["parameters"]["graphBaseUrl"]
    allowed = next(d["argument"] for d in parameter["decorators"] if d["type"] == "allowed")
    assert set(allowed) == GRAPH_ROOTS
    assert parameter["default"] == APP_SETTINGS["GRAPH_BASE_URL"]
    assert app_settings()["GRAPH_BASE_URL"] == "graphBaseUrl"


def test_outputs_feed_the_permission_script() -> None:
    outputs = parse(INFRA / "main.bicep")["outputs"]
    script = (INFRA / "scripts" / "grant-graph-permissions.sh").read_text()
    for name in ("MANAGED_IDENTITY_PRINCIPAL_ID", "GRAPH_BASE_URL"):
        assert name in outputs
        assert f"${{{name}" in script, name


def test_azd_project_deploys_the_root_as_a_python_function_and_runs_the_grant_hook() -> None:
    project = yaml.safe_load((ROOT / "azure.yaml").read_text())
    assert project["services"] == {"api": {"project": ".", "language": "python", "host": "function"}}
    assert project["infra"]["path"] == "infra"
    hook = project["hooks"]["postprovision"]["posix"]
    script = ROOT / hook["run"]
    assert script.is_file()
    assert script.stat().st_mode & 0o111, "the hook script must be executable"
    assert "tags: union(tags, { 'azd-service-name': 'api' })" in (INFRA / "main.bicep").read_text()


#: The entities whose maxDeliveryCount the app's GRANTS_MAX_DELIVERY_COUNT stands for (every one a receiver settles).
DELIVERY_ENTITIES = ("grants", "grantsBulk", "hrEvents", "callbackRetries", "callbacks")


def delivery_count_problems(main: dict[str, Any], servicebus: dict[str, Any], functionapp: dict[str, Any]) -> list[str]:
    """Why the queues' maxDeliveryCount and the app's GRANTS_MAX_DELIVERY_COUNT could disagree (empty: they cannot):
    one bounded parameter in main.bicep, passed to servicebus.bicep, used by every entity the app receives from, the
    least of what they get output and passed to the app as GRANTS_MAX_DELIVERY_COUNT; its least value at least the
    app's GRANTS_MAX_ATTEMPTS (shared/config.py refuses fewer deliveries than attempts), its greatest at most 10."""
    problems: list[str] = []

    def bounds(parameter: dict[str, Any]) -> tuple[Any, Any]:
        found = {d["type"]: d["argument"] for d in parameter.get("decorators", [])}
        return found.get("min_value"), found.get("max_value")

    attempts = int(APP_SETTINGS["GRANTS_MAX_ATTEMPTS"])
    for where, template in (("main.bicep", main), ("servicebus.bicep", servicebus)):
        parameter = template["parameters"].get("maxDeliveryCount")
        if parameter is None or parameter["type"] != "int":
            problems.append(f"{where} has no int parameter maxDeliveryCount")
            continue
        low, high = bounds(parameter)
        if not (isinstance(low, int) and low >= attempts and isinstance(high, int) and high <= 10):
            problems.append(f"{where}'s maxDeliveryCount is not bounded to {attempts}..10: {low}..{high}")
    if main["modules"]["servicebus"]["config"]["params"].get("maxDeliveryCount") != "maxDeliveryCount":
        problems.append("main.bicep does not pass maxDeliveryCount to the servicebus module")
    for name in DELIVERY_ENTITIES:
        count = servicebus["resources"][name]["config"]["properties"].get("maxDeliveryCount")
        if count != "maxDeliveryCount":
            problems.append(f"{name}'s maxDeliveryCount is {count!r}, not the parameter")
    output = servicebus["outputs"].get("maxDeliveryCount", {}).get("value", {})
    arguments = output.get("function", {}).get("parameters", {}) if isinstance(output, dict) else {}
    if output.get("function", {}).get("type") != "min" or sorted(
        accessor(argument)[0] for argument in arguments.values()
    ) != sorted(DELIVERY_ENTITIES):
        problems.append("servicebus.bicep does not output the least maxDeliveryCount of the entities")
    passed = main["modules"]["functionApp"]["config"]["params"].get("maxDeliveryCount")
    if accessor(passed) != ["servicebus", "outputs", "maxDeliveryCount"]:
        problems.append("the app's maxDeliveryCount is not the servicebus module's output")
    settings = functionapp["resources"]["app"]["config"]["properties"]["siteConfig"]["appSettings"]
    setting = next((item["value"] for item in settings if item["name"] == "GRANTS_MAX_DELIVERY_COUNT"), None)
    if setting != {"function": {"type": "string", "parameters": {"value_to_convert": "maxDeliveryCount"}}}:
        problems.append(f"GRANTS_MAX_DELIVERY_COUNT is {setting!r}, not string(maxDeliveryCount)")
    return problems


def test_one_delivery_count_feeds_the_queues_and_the_app() -> None:
    """Given infra/: the queues' maxDeliveryCount and the app's GRANTS_MAX_DELIVERY_COUNT are one parameter."""
    assert delivery_count_problems(parse(INFRA / "main.bicep"), module("servicebus"), module("functionapp")) == []
    parameters = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert parameters["maxDeliveryCount"] == {"value": "${GRANTS_MAX_DELIVERY_COUNT=10}"}
    assert parse(INFRA / "main.bicep")["parameters"]["maxDeliveryCount"]["default"] == 10


@pytest.mark.parametrize(
    ("file", "old", "new", "says"),
    [
        ("servicebus.bicep", "maxDeliveryCount: maxDeliveryCount", "maxDeliveryCount: 5", "not the parameter"),
        ("functionapp.bicep", "value: string(maxDeliveryCount)", "value: '10'", "not string(maxDeliveryCount)"),
        ("servicebus.bicep", "@minValue(8)", "@minValue(1)", "not bounded to 8..10"),
    ],
    ids=["a queue's literal", "the app's literal", "fewer deliveries than attempts"],
)
def test_a_delivery_count_that_could_disagree_is_refused(
    tmp_path: Path, file: str, old: str, new: str, says: str
) -> None:
    """Given a copy of the module with one way to disagree, the check names it."""
    text = (INFRA / "modules" / file).read_text()
    assert old in text
    (tmp_path / file).write_text(text.replace(old, new, 1))
    tampered = parse(tmp_path / file)
    templates = {"servicebus.bicep": module("servicebus"), "functionapp.bicep": module("functionapp"), file: tampered}
    problems = delivery_count_problems(
        parse(INFRA / "main.bicep"), templates["servicebus.bicep"], templates["functionapp.bicep"]
    )
    assert any(says in problem for problem in problems), problems


def test_permission_script_grants_exactly_the_four_graph_application_permissions() -> None:
    script = (INFRA / "scripts" / "grant-graph-permissions.sh").read_text()
    loop = re.search(r"^for permission in (.+); do$", script, re.MULTILINE)
    assert loop is not None
    assert set(loop.group(1).split()) == GRAPH_PERMISSIONS
    assert "Directory.ReadWrite.All" not in script
    assert "SKIP_GRAPH_PERMISSIONS" in script


BAD_SERVICE_BUS = """
resource openNamespace 'Microsoft.ServiceBus/namespaces@2024-01-01' = {
  name: 'open'
  location: 'westeurope'
  sku: { name: 'Standard' }
  properties: { disableLocalAuth: false, minimumTlsVersion: '1.2' }
}
resource oldTlsNamespace 'Microsoft.ServiceBus/namespaces@2024-01-01' = {
  name: 'oldtls'
  location: 'westeurope'
  sku: { name: 'Standard' }
  properties: { disableLocalAuth: true, minimumTlsVersion: '1.0' }
}
resource endlessQueue 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = {
  parent: oldTlsNamespace
  name: 'endless'
  properties: { requiresDuplicateDetection: true, duplicateDetectionHistoryTimeWindow: 'PT10M' }
}
resource duplicatingQueue 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = {
  parent: oldTlsNamespace
  name: 'duplicating'
  properties: { maxDeliveryCount: 10, requiresDuplicateDetection: false }
}
resource duplicatingTopic 'Microsoft.ServiceBus/namespaces/topics@2024-01-01' = {
  parent: oldTlsNamespace
  name: 'duplicating-topic'
  properties: { requiresDuplicateDetection: false }
}
resource endlessSubscription 'Microsoft.ServiceBus/namespaces/topics/subscriptions@2024-01-01' = {
  parent: duplicatingTopic
  name: 'endless'
  properties: { lockDuration: 'PT1M' }
}
"""


def test_each_service_bus_check_fails_exactly_the_resource_missing_its_setting(tmp_path: Path) -> None:
    """Given one bad setting per resource, each of our checks fails that resource and passes the others."""
    (tmp_path / "bad.bicep").write_text(BAD_SERVICE_BUS)
    checkov = Path(sys.executable).parent / "checkov"
    command = [str(checkov), "-d", str(tmp_path), "--framework", "bicep", "--skip-download"]
    command += ["--external-checks-dir", str(INFRA / "checks"), "--check", ",".join(CUSTOM_CHECKS), "-o", "json"]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)  # noqa: S603
    assert result.returncode == 1, result.stderr
    results = json.loads(result.stdout)["results"]
    failed = {(c["check_id"], c["resource"].rpartition(".")[2]) for c in results["failed_checks"]}
    assert failed == {
        ("CKV_GRANTS_SB_1", "openNamespace"),
        ("CKV_GRANTS_SB_2", "oldTlsNamespace"),
        ("CKV_GRANTS_SB_3", "endlessQueue"),
        ("CKV_GRANTS_SB_3", "endlessSubscription"),
        ("CKV_GRANTS_SB_4", "duplicatingQueue"),
        ("CKV_GRANTS_SB_4", "duplicatingTopic"),
    }
    passed = {(c["check_id"], c["resource"].rpartition(".")[2]) for c in results["passed_checks"]}
    assert passed == {
        ("CKV_GRANTS_SB_1", "oldTlsNamespace"),
        ("CKV_GRANTS_SB_2", "openNamespace"),
        ("CKV_GRANTS_SB_3", "duplicatingQueue"),
        ("CKV_GRANTS_SB_4", "endlessQueue"),
    }
