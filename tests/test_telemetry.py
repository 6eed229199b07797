"""Outcome fields as Application Insights customDimensions (shared/adapters/telemetry.py), with the real
OpenTelemetry SDK in process and the real Azure Monitor distro, configured as the Functions worker configures it,
in a process of its own against the loopback ingestion stub."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

from grants_local.graph_double import GraphDouble
from grants_local.ingestion import UNSET, IngestionStub, local_environment
from shared.adapters.telemetry import QUIETED_LOGGERS, dimensions, install
from shared.service.settle import outcome_log
from tests.conftest import AU, GLOBAL_ADMIN, USER, body

TIER0 = {"type": "directoryRole", "roleTemplateId": GLOBAL_ADMIN}  # refused by the default policy

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def exported() -> Iterator[InMemoryLogRecordExporter]:
    """An SDK logger provider exporting in memory, its logging handler on the ``shared`` logger (as the distro
    puts one on the root logger), and the outcome dimensions installed on it; all removed afterwards."""
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    distro = LoggingHandler(logger_provider=provider)
    shared = logging.getLogger("shared")
    shared.addHandler(distro)
    levels = {name: logging.getLogger(name).level for name in QUIETED_LOGGERS}
    handler = install(outcome_log, logger_provider=provider)
    assert handler is not None
    try:
        yield exporter
    finally:
        handler.remove(outcome_log)
        shared.removeHandler(distro)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        provider.shutdown()


def test_dimensions_are_flat_strings_and_numbers_without_empty_fields() -> None:
    record = {"outcome": "granted", "reason": None, "attempts": 2, "terminal": True, "dryRun": False, "ids": ["a"]}
    assert dimensions(record) == {
        "outcome": "granted",
        "attempts": 2,
        "terminal": "true",
        "dryRun": "false",
        "ids": '["a"]',
    }


async def test_one_grant_exports_one_log_record_whose_attributes_are_the_flat_record_fields(
    exported: InMemoryLogRecordExporter, make_run: Callable[..., Any]
) -> None:
    run = await make_run()
    outcomes = await run.deliver(body(requestId="tel-1"))
    record = outcomes["m-1"]
    lines = [d.log_record for d in exported.get_finished_logs() if str(d.log_record.body).startswith("grant ")]
    assert len(lines) == 1
    [line] = lines
    assert dict(line.attributes or {}) == dimensions(record)
    assert "grant" not in (line.attributes or {})
    assert line.body == f"grant granted {json.dumps(record)}"  # the JSON line, unchanged
    assert (line.severity_text, line.severity_number is not None and line.severity_number.value) == ("INFO", 9)
    assert (record["outcome"], record["requestId"]) == ("granted", "tel-1")
    assert (record["memberId"], record["targetId"]) == (USER, AU)


async def test_a_dead_letter_is_exported_as_a_warning_with_its_reason(
    exported: InMemoryLogRecordExporter, make_run: Callable[..., Any]
) -> None:
    run = await make_run()
    outcomes = await run.deliver(body(requestId="tel-2", target=TIER0))
    [line] = [d.log_record for d in exported.get_finished_logs() if str(d.log_record.body).startswith("grant ")]
    assert line.attributes is not None
    assert (line.attributes["outcome"], line.attributes["reason"]) == ("dead_lettered", "PolicyDenied")
    assert line.attributes["reason"] == outcomes["m-1"]["reason"]
    assert line.severity_text == "WARN"


def test_without_the_distro_install_warns_and_changes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    before = list(outcome_log.handlers)
    with caplog.at_level(logging.WARNING, logger="shared.adapters.telemetry"):
        assert install(outcome_log) is None
    assert outcome_log.handlers == before
    assert "no OpenTelemetry logging handler" in caplog.text


def test_telemetry_off_imports_no_opentelemetry_at_start_up() -> None:
    env = {name: value for name, value in os.environ.items() if name != "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"}
    code = "import sys, function_app; print([m for m in sys.modules if m.startswith(('opentelemetry', 'azure.mon'))])"
    out = subprocess.run(  # noqa: S603 (this interpreter, fixed code)
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_the_worker_s_distro_exports_each_outcome_once_with_its_fields_as_dimensions(
    graph: GraphDouble, tmp_path: Path
) -> None:
    """The Azure Monitor distro configured as the worker configures it (`grants_local.worker_telemetry`, in a
    process of its own), function_app's own set-up, two grants through run-local, the exporters flushed: the
    ingestion stub holds one trace per outcome, its message the JSON line and its properties the record's fields."""
    messages = tmp_path / "messages.jsonl"
    messages.write_bytes(body(requestId="tel-3") + b"\n" + body(requestId="tel-4", target=TIER0) + b"\n")
    with IngestionStub() as stub:
        env = {name: value for name, value in os.environ.items() if name not in UNSET}
        env.update(local_environment(stub.connection_string))
        env.update(GRAPH_BASE_URL=graph.base_url, PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY="true")
        env.update(GRANTS_RETRY_BASE_SECONDS="0", GRANTS_MEMBER_NOT_FOUND_WINDOW_SECONDS="0")
        out = subprocess.run(  # noqa: S603 (this interpreter, our module)
            [sys.executable, "-m", "grants_local.worker_telemetry", str(messages)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        traces = stub.messages("grant ")
    printed = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(p["requestId"], p["outcome"]) for p in printed] == [("tel-3", "granted"), ("tel-4", "dead_lettered")]
    assert sorted(t["properties"]["requestId"] for t in traces) == ["tel-3", "tel-4"]  # one each, no duplicate
    for trace in traces:
        record = json.loads(trace["message"].split(" ", 2)[2])
        expected = {key: str(value) for key, value in dimensions(record).items()}
        assert {key: trace["properties"][key] for key in expected} == expected
        assert "grant" not in trace["properties"]
        assert trace["severityLevel"] == (2 if record["outcome"] == "dead_lettered" else 1)
    assert not [t for t in stub.messages("") if "Transmission" in t["message"] or "Request URL" in t["message"]]
