"""Alerts, the operations workbook and their queries, parsed: each alert's scope, query file, severity, timing and
action group; each workbook tile's query file; every query kept once, in infra/queries/, and shown as it is in
docs/runbook.md."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bicep import BICEP_FILES, INFRA, accessor, loop, module, parse, resource

QUERIES = INFRA / "queries"
PREAMBLE = "outcomes.kql"
DOCS = INFRA.parent / "docs"
#: A pipe into a KQL tabular operator: what a query looks like, wherever it is pasted.
KQL = re.compile(r"\|\s*(where|summarize|extend|project|join|union|sort|order|top|take|render|mv-expand)\b")


def every(column: str) -> dict[str, Any]:
    """A log alert dimension: one alert per value of `column`."""
    return {"name": column, "operator": "Include", "values": ["*"]}


#: Log search alert -> its query files (in order), severity, evaluation frequency, window and the rest of its condition.
LOG_ALERTS: dict[str, dict[str, Any]] = {
    "dead-letters": {
        "files": [PREAMBLE, "dead-letters-by-reason.kql"],
        "timing": (1, "PT15M", "PT1H"),
        "condition": {
            "timeAggregation": "Total",
            "metricMeasureColumn": "deadLettered",
            "dimensions": [every("reason")],
            "operator": "GreaterThan",
            "threshold": "deadLettersPerHour",
        },
    },
    "throttling": {
        "files": [PREAMBLE, "throttled-share.kql"],
        "timing": (2, "PT5M", "PT10M"),
        "condition": {
            "timeAggregation": "Maximum",
            "metricMeasureColumn": "throttledPercent",
            "dimensions": [every("signal")],
            "operator": "GreaterThan",
            "threshold": 5,
        },
    },
    "stalled": {
        "files": [PREAMBLE, "stalled.kql"],
        "timing": (1, "PT5M", "stalledWindow"),
        "condition": {
            "timeAggregation": "Total",
            "metricMeasureColumn": "landed",
            "operator": "LessThan",
            "threshold": 1,
        },
    },
    "pending-expiries": {
        "files": [PREAMBLE, "pending-expiries.kql"],
        "timing": (1, "PT15M", "P1D"),
        "condition": {"timeAggregation": "Count", "operator": "GreaterThan", "threshold": 0},
    },
    "drift": {
        "files": ["drift.kql"],
        "timing": (2, "PT15M", "P1D"),
        "condition": {
            "timeAggregation": "Count",
            "dimensions": [{"name": "state", "operator": "Include", "values": ["drifted", "failed"]}],
            "operator": "GreaterThan",
            "threshold": 0,
        },
    },
    "drift-held": {
        "files": ["drift.kql"],
        "timing": (1, "PT15M", "P1D"),
        "condition": {
            "timeAggregation": "Count",
            "dimensions": [{"name": "state", "operator": "Include", "values": ["held"]}],
            "operator": "GreaterThan",
            "threshold": 0,
        },
    },
    "function-failures": {
        "files": ["function-failures.kql"],
        "timing": (2, "PT5M", "PT15M"),
        "condition": {
            "timeAggregation": "Total",
            "metricMeasureColumn": "failures",
            "dimensions": [every("problem")],
            "operator": "GreaterThan",
            "threshold": 0,
        },
    },
}
#: Service Bus metric alert -> metric, queues (one series each), severity, evaluation frequency, window.
METRIC_ALERTS = {
    "deadLetterDepth": (
        "DeadletteredMessages",
        ["grantsQueue", "grantsBulkQueue", "hrEventsQueue"],
        (2, "PT1M", "PT5M"),
    ),
    "grantsBacklog": ("ActiveMessages", ["grantsQueue"], (1, "PT5M", "stalledWindow")),
}
#: Workbook log tile -> its query files.
LOG_TILES = {
    "grants-per-hour": [PREAMBLE, "grants-per-hour.kql"],
    "dead-letter-reasons": [PREAMBLE, "dead-letters-by-reason.kql"],
    "latency": [PREAMBLE, "settle-latency.kql"],
    "throttling": [PREAMBLE, "throttled-share.kql"],
    "write-rate": [PREAMBLE, "write-rate.kql"],
    "pending-expiries": [PREAMBLE, "pending-expiries.kql"],
    "drift": ["drift.kql"],
    "function-failures": ["function-failures.kql"],
}
#: Workbook metric tile -> the Service Bus metric it charts per queue.
METRIC_TILES = {"dead-letter-depth": "DeadletteredMessages", "active-messages": "ActiveMessages"}
#: Not deployed, shown in the runbook: the audit query (docs/guardrails.md), the smoke check's (grants_cli/smoke.py).
RUNBOOK_ONLY = {"audit.kql", "smoke-outcome.kql"}
#: azd variable (main.parameters.json) -> main.bicep parameter, for the alerts.
AZD_VARIABLES = {
    "AZURE_ALERT_EMAIL": ("alertEmail", ""),
    "AZURE_ALERT_WEBHOOK_URL": ("alertWebhookUrl", ""),
    "AZURE_ALERT_DEAD_LETTERS_PER_HOUR": ("alertDeadLettersPerHour", "10"),
    "AZURE_ALERT_STALLED_MINUTES": ("alertStalledMinutes", "30"),
}


def query_files(expression: Any, template: dict[str, Any]) -> list[str]:
    """The query files an expression concatenates, in order; inline text or anything else fails the test."""
    if isinstance(expression, str):
        assert expression in template["variables"], f"inline query text: {expression[:80]!r}"
        return query_files(template["variables"][expression]["value"], template)
    function = expression["function"]
    if function["type"] == "load_text_content":
        path = function["parameters"]["file_path"]
        assert path.startswith("../queries/"), path
        assert (QUERIES / Path(path).name).is_file(), path
        return [Path(path).name]
    assert function["type"] == "concat", function
    return [name for argument in function["parameters"].values() for name in query_files(argument, template)]


def log_alerts() -> dict[str, dict[str, Any]]:
    """alerts.bicep's logAlerts, by name."""
    return {spec["name"]: spec for spec in module("alerts")["variables"]["logAlerts"]["value"]}


def workbook_tiles() -> dict[str, dict[str, Any]]:
    """The workbook's items, by name."""
    items = module("workbook")["variables"]["content"]["value"]["items"]
    return {item["name"]: item for item in items}


def tile(name: str, base: str) -> dict[str, Any]:
    """A tile's own settings: its content is ``union(<base>, {settings})``."""
    function = workbook_tiles()[name]["content"]["function"]
    assert function["type"] == "union"
    assert function["parameters"]["arg_1"] == base
    settings: dict[str, Any] = function["parameters"]["arg_2"]
    return settings


def every_query() -> list[list[str]]:
    """The files of every query infra/ deploys: alerts and workbook tiles."""
    alerts = [query_files(spec["criterion"]["query"], module("alerts")) for spec in log_alerts().values()]
    tiles = [query_files(tile(name, "logTile")["query"], module("workbook")) for name in LOG_TILES]
    return alerts + tiles


def code(path: Path) -> str:
    """A query file without its comment lines."""
    return "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("//"))


def strings(node: Any) -> Iterator[str]:
    """Every string in a parsed template: keys, values, expressions' operands."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def runbook_blocks() -> list[tuple[str, str]]:
    """docs/runbook.md's kusto blocks: (the query file named last above the block, the block's text)."""
    text = (DOCS / "runbook.md").read_text()
    blocks = []
    for match in re.finditer(r"```kusto\n(.*?)```", text, re.DOTALL):
        named = re.findall(r"infra/queries/([\w-]+\.kql)", text[: match.start()])
        assert named, f"a kusto block names no query file: {match.group(1)[:80]!r}"
        blocks.append((named[-1], match.group(1)))
    return blocks


def test_alerts_are_the_action_group_two_metric_alerts_and_the_log_alert_loop() -> None:
    resources = module("alerts")["resources"]
    assert {name: (r["type"], r["api_version"]) for name, r in resources.items()} == {
        "actionGroup": ("Microsoft.Insights/actionGroups", "2023-01-01"),
        "deadLetterDepth": ("Microsoft.Insights/metricAlerts", "2018-03-01"),
        "grantsBacklog": ("Microsoft.Insights/metricAlerts", "2018-03-01"),
        "logAlertRules": ("Microsoft.Insights/scheduledQueryRules", "2023-12-01"),
    }
    assert set(log_alerts()) == set(LOG_ALERTS)


@pytest.mark.parametrize("name", sorted(LOG_ALERTS))
def test_log_alert_query_file_condition_severity_and_timing(name: str) -> None:
    spec, expected = log_alerts()[name], LOG_ALERTS[name]
    criterion = dict(spec["criterion"])
    assert query_files(criterion.pop("query"), module("alerts")) == expected["files"]
    assert criterion == expected["condition"]
    assert (spec["severity"], spec["evaluationFrequency"], spec["windowSize"]) == expected["timing"]
    assert set(spec) == {"name", "description", "severity", "evaluationFrequency", "windowSize", "criterion"}


def test_each_log_alert_queries_application_insights_as_its_own_identity_and_notifies_the_action_group() -> None:
    rules = module("alerts")["resources"]["logAlertRules"]
    item, array, body = loop(rules["config"])
    assert array == "logAlerts"
    assert body["kind"] == "LogAlert"
    assert body["identity"] == {"type": "SystemAssigned"}
    properties = body["properties"]
    assert properties["scopes"] == ["appInsightsId"]
    assert [accessor(group) for group in properties["actions"]["actionGroups"]] == [["actionGroup", "id"]]
    assert [accessor(condition) for condition in properties["criteria"]["allOf"]] == [[item, "criterion"]]
    for key in ("description", "severity", "evaluationFrequency", "windowSize"):
        assert accessor(properties[key]) == [item, key]
    assert (properties["enabled"], properties["autoMitigate"]) == (True, True)


def test_the_log_alerts_identities_are_handed_to_rbac() -> None:
    """alerts.bicep outputs each rule's principal ID; main.bicep passes them to rbac.bicep (Monitoring Reader)."""
    output = module("alerts")["outputs"]["logAlertPrincipalIds"]["value"]
    _, array, value = loop(output)
    assert array == "logAlerts"
    operands = value["operator"]["operands"]
    assert operands["operand_1"]["operator"] == {
        "type": "index_accessor",
        "operands": {"operand_1": "logAlertRules", "operand_2": output["loop_type"]["detail"]["index_name"]},
    }
    assert accessor(operands["operand_2"]) == ["identity", "principalId"]
    rbac = parse(INFRA / "main.bicep")["modules"]["rbac"]["config"]["params"]
    assert accessor(rbac["alertRulePrincipalIds"]) == ["alerts", "outputs", "logAlertPrincipalIds"]


@pytest.mark.parametrize("name", sorted(METRIC_ALERTS))
def test_metric_alert_reads_one_series_per_queue_for_the_whole_window(name: str) -> None:
    metric, queues, timing = METRIC_ALERTS[name]
    config = resource("alerts", name)
    assert config["location"] == "global"
    properties = config["properties"]
    assert properties["scopes"] == ["serviceBusNamespaceId"]
    assert [accessor(action["actionGroupId"]) for action in properties["actions"]] == [["actionGroup", "id"]]
    assert (properties["severity"], properties["evaluationFrequency"], properties["windowSize"]) == timing
    assert (properties["enabled"], properties["autoMitigate"]) == (True, True)
    criteria = {key.strip("'"): value for key, value in properties["criteria"].items()}  # pycep keeps the quotes
    assert criteria["odata.type"] == "Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria"
    [criterion] = criteria["allOf"]
    assert criterion["criterionType"] == "StaticThresholdCriterion"
    assert (criterion["metricNamespace"], criterion["metricName"]) == ("Microsoft.ServiceBus/namespaces", metric)
    assert criterion["dimensions"] == [{"name": "EntityName", "operator": "Include", "values": queues}]
    assert criterion["timeAggregation"] == "Minimum"
    assert (criterion["operator"], criterion["threshold"]) == ("GreaterThan", 0)


def test_stalled_window_is_the_parameter_in_minutes() -> None:
    window = module("alerts")["variables"]["stalledWindow"]["value"]["operator"]
    assert window["type"] == "conditional"
    assert window["operands"]["condition"]["operator"] == {
        "type": "equals",
        "operands": {"operand_1": "stalledMinutes", "operand_2": 60},
    }
    assert (window["operands"]["true_value"], window["operands"]["false_value"]) == ("PT1H", "PT${stalledMinutes}M")
    parameter = parse(INFRA / "main.bicep")["parameters"]["alertStalledMinutes"]
    allowed = next(d["argument"] for d in parameter["decorators"] if d["type"] == "allowed")
    assert allowed == [15, 30, 60]  # windows both a metric alert and a log alert accept


def test_action_group_mails_and_posts_only_where_an_address_is_given() -> None:
    properties = resource("alerts", "actionGroup")["properties"]
    assert properties["enabled"] is True
    receivers = {"emailReceivers": ("alertEmail", "emailAddress")}
    receivers["webhookReceivers"] = ("alertWebhookUrl", "serviceUri")
    assert {key for key in properties if key.endswith("Receivers")} == set(receivers)
    for key, (parameter, field) in receivers.items():
        operands = properties[key]["operator"]["operands"]
        assert operands["condition"] == {"function": {"type": "empty", "parameters": {"item_to_test": parameter}}}
        assert operands["true_value"] == []
        [receiver] = operands["false_value"]
        assert (receiver[field], receiver["useCommonAlertSchema"]) == (parameter, True)
    webhook = module("alerts")["parameters"]["alertWebhookUrl"]
    assert {"type": "secure"} in webhook["decorators"]


def test_alert_parameters_come_from_azd_and_may_be_empty() -> None:
    values = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    main = parse(INFRA / "main.bicep")
    passed = main["modules"]["alerts"]["config"]["params"]
    deploy = (DOCS / "deploy.md").read_text()
    for variable, (parameter, default) in AZD_VARIABLES.items():
        assert values[parameter] == {"value": f"${{{variable}={default}}}"}
        assert str(main["parameters"][parameter]["default"]) == default
        assert parameter in passed.values()
        assert f"`{variable}`" in deploy, variable
    assert {"type": "secure"} in main["parameters"]["alertWebhookUrl"]["decorators"]


def test_every_alert_names_a_runbook_section_that_exists() -> None:
    headings = set(re.findall(r"^#+ (.+)$", (DOCS / "runbook.md").read_text(), re.MULTILINE))
    descriptions = [spec["description"] for spec in log_alerts().values()]
    descriptions += [resource("alerts", name)["properties"]["description"] for name in METRIC_ALERTS]
    assert module("alerts")["variables"]["runbook"]["value"] == "Runbook: docs/runbook.md"
    for description in descriptions:
        section = re.fullmatch(r'.+ \$\{runbook\}, "([^"]+)"\.', description)
        assert section is not None, description
        assert section.group(1) in headings, section.group(1)


def test_the_runbook_lists_every_alert_with_its_kind_and_severity() -> None:
    text = (DOCS / "runbook.md").read_text()
    rows = re.findall(r"^\| `([\w-]+)` \| ([\w ]+) \| (\d) \|", text, re.MULTILINE)
    expected = {(name, "log search", str(spec["severity"])) for name, spec in log_alerts().items()}
    for symbol in METRIC_ALERTS:
        config = resource("alerts", symbol)
        name = config["name"].removeprefix("alert-${name}-")
        expected.add((name, "Service Bus metric", str(config["properties"]["severity"])))
    assert set(rows) == expected
    assert len(rows) == len(expected)


def test_workbook_is_the_serialized_content_linked_to_application_insights() -> None:
    workbook = module("workbook")["resources"]["workbook"]
    assert (workbook["type"], workbook["config"]["kind"]) == ("Microsoft.Insights/workbooks", "shared")
    properties = workbook["config"]["properties"]
    assert properties["serializedData"]["function"] == {"type": "string", "parameters": {"value_to_convert": "content"}}
    assert properties["sourceId"] == "appInsightsId"
    content = module("workbook")["variables"]["content"]["value"]
    assert (content["version"], content["fallbackResourceIds"]) == ("Notebook/1.0", ["appInsightsId"])
    params = parse(INFRA / "main.bicep")["modules"]["workbook"]["config"]["params"]
    assert accessor(params["appInsightsId"]) == ["monitoring", "outputs", "appInsightsId"]
    assert accessor(params["serviceBusNamespaceId"]) == ["servicebus", "outputs", "id"]


def test_each_workbook_log_tile_runs_its_query_file_over_the_time_range() -> None:
    tiles = workbook_tiles()
    assert {name for name, item in tiles.items() if item["type"] == 3} == set(LOG_TILES)
    for name, files in LOG_TILES.items():
        assert query_files(tile(name, "logTile")["query"], module("workbook")) == files, name
    base = module("workbook")["variables"]["logTile"]["value"]
    assert (base["version"], base["resourceType"]) == ("KqlItem/1.0", "microsoft.insights/components")
    assert base["timeContextFromParameter"] == "TimeRange"
    [time_range] = tiles["parameters"]["content"]["parameters"]
    assert (time_range["name"], time_range["type"]) == ("TimeRange", 4)


def test_each_workbook_metric_tile_charts_its_service_bus_metric_per_queue() -> None:
    tiles = workbook_tiles()
    assert {name for name, item in tiles.items() if item["type"] == 10} == set(METRIC_TILES)
    for name, metric in METRIC_TILES.items():
        [chart] = tile(name, "queueTile")["metrics"]
        assert chart["metric"] == f"microsoft.servicebus/namespaces--{metric}"
        assert chart["splitBy"] == ["EntityName"]
    base = module("workbook")["variables"]["queueTile"]["value"]
    assert (base["resourceType"], base["resourceIds"]) == ("microsoft.servicebus/namespaces", ["serviceBusNamespaceId"])


def test_a_query_over_outcome_lines_gets_the_preamble_first_and_no_other_does() -> None:
    preamble = code(QUERIES / PREAMBLE).strip()
    assert preamble.startswith("let outcomes = traces")
    assert preamble.endswith(";")
    for files in every_query():
        body = files[-1]
        reads = re.search(r"(^|\()\s*outcomes\b", code(QUERIES / body), re.MULTILINE)
        assert files == ([PREAMBLE, body] if reads else [body]), files


def test_no_bicep_or_other_infra_file_holds_kql_text() -> None:
    for path in BICEP_FILES:
        for text in strings(parse(path)):
            assert not KQL.search(text), f"{path.name}: {text[:80]!r}"
    for path in [*INFRA.rglob("*.json"), *INFRA.rglob("*.sh")]:
        assert not KQL.search(path.read_text()), path


def test_no_query_file_repeats_another() -> None:
    """No two query files share three consecutive lines of code, and only the preamble defines `outcomes`."""
    runs: dict[tuple[str, ...], str] = {}
    for path in sorted(QUERIES.glob("*.kql")):
        lines = [line.strip() for line in code(path).splitlines() if line.strip()]
        for run in {tuple(lines[i : i + 3]) for i in range(len(lines) - 2)}:
            assert run not in runs, f"{path.name} repeats {runs[run]}: {run}"
            runs[run] = path.name
        assert ("let outcomes" in code(path)) == (path.name == PREAMBLE), path.name


def test_the_readme_and_guardrails_show_no_query_of_their_own_and_point_to_the_files() -> None:
    """Any kusto block in the README or docs/guardrails.md (the audit record) is a query file as it is; the audit
    query is a pointer to its file."""
    for path in (INFRA.parent / "README.md", DOCS / "guardrails.md"):
        text = path.read_text()
        for match in re.finditer(r"```kusto\n(.*?)```", text, re.DOTALL):
            assert match.group(1) in {query.read_text() for query in QUERIES.glob("*.kql")}, match.group(1)[:80]
        assert not KQL.search(re.sub(r"```kusto\n.*?```", "", text, flags=re.DOTALL)), f"KQL outside a block: {path}"
    assert "infra/queries/audit.kql" in (DOCS / "guardrails.md").read_text()


def test_the_smoke_check_reads_its_query_file_with_the_preamble() -> None:
    smoke = (INFRA.parent / "grants_cli" / "azure_apis.py").read_text()
    assert '(QUERIES / "outcomes.kql").read_text()' in smoke
    assert '(QUERIES / "smoke-outcome.kql").read_text()' in smoke
    assert "smokeRequestId" in code(QUERIES / "smoke-outcome.kql")


def test_every_query_file_is_deployed_or_shown_in_the_runbook_as_it_is() -> None:
    files = {path.name for path in QUERIES.glob("*.kql")}
    deployed = {name for query in every_query() for name in query}
    assert files - deployed == RUNBOOK_ONLY
    blocks = runbook_blocks()
    for name, block in blocks:
        assert block == (QUERIES / name).read_text(), f"docs/runbook.md shows an old {name}"
    assert {name for name, _ in blocks} == files


def test_opentelemetry_is_one_deployment_choice_off_by_default() -> None:
    """One azd variable sets both halves: the worker's export (read by the app too, shared/config.py) and the
    host's telemetry mode (overriding host.json, which names none); off, both are the classic defaults."""
    main = parse(INFRA / "main.bicep")
    assert main["parameters"]["openTelemetry"]["type"] == "bool"
    assert main["parameters"]["openTelemetry"]["default"] is False
    assert main["modules"]["functionApp"]["config"]["params"]["openTelemetry"] == "openTelemetry"
    values = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert values["openTelemetry"] == {"value": "${GRANTS_OPENTELEMETRY=false}"}
    assert "`GRANTS_OPENTELEMETRY`" in (DOCS / "deploy.md").read_text()
    listed = resource("functionapp", "app")["properties"]["siteConfig"]["appSettings"]
    settings = {item["name"]: item["value"] for item in listed}
    for name, on, off in (
        ("PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY", "true", "false"),
        ("AzureFunctionsJobHost__telemetryMode", "OpenTelemetry", "ApplicationInsights"),
    ):
        operands = settings[name]["operator"]["operands"]
        assert (operands["condition"], operands["true_value"], operands["false_value"]) == ("openTelemetry", on, off)
    assert "telemetryMode" not in json.loads((INFRA.parent / "host.json").read_text())
    requirements = (INFRA.parent / "requirements.txt").read_text()
    assert re.search(r"^azure-monitor-opentelemetry==", requirements, re.MULTILINE)


def test_postdeploy_hook_runs_the_smoke_check_unless_skipped() -> None:
    """azure.yaml's postdeploy hook runs infra/scripts/smoke.sh (`grants smoke`), which SKIP_SMOKE=true skips; the
    deployment outputs it reads (as the command's defaults) are main.bicep outputs."""
    import yaml

    project = yaml.safe_load((INFRA.parent / "azure.yaml").read_text())
    hook = project["hooks"]["postdeploy"]["posix"]
    assert (hook["shell"], hook["run"], hook["continueOnError"]) == ("sh", "./infra/scripts/smoke.sh", False)
    script = INFRA.parent / hook["run"]
    assert script.stat().st_mode & 0o111, "the hook script must be executable"
    text = script.read_text()
    assert '"${SKIP_SMOKE:-false}" = "true"' in text
    assert re.search(r"^exec \.venv/bin/grants smoke ", text, re.MULTILINE)
    outputs = parse(INFRA / "main.bicep")["outputs"]
    assert accessor(outputs["SERVICE_BUS_NAMESPACE_ID"]["value"]) == ["servicebus", "outputs", "id"]
    assert accessor(outputs["APPLICATIONINSIGHTS_ID"]["value"]) == ["monitoring", "outputs", "appInsightsId"]
    smoke = (INFRA.parent / "grants_cli" / "smoke.py").read_text()
    for name in re.findall(r'env\.get\("([A-Z_]+)"', smoke):
        assert name in outputs, name
    assert "`SKIP_SMOKE`" in (DOCS / "deploy.md").read_text()
