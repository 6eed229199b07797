"""Log volume at the app's default configuration: a grant is one INFO line (its outcome line); the libraries the
app uses (httpx, httpcore, azure-core, azure-identity, azure-servicebus, uamqp) log warnings only; host.json keeps
the outcome lines out of Application Insights sampling."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.bootstrap import LIBRARY_LOGGERS
from tests.conftest import body

HOST_JSON = Path(__file__).parent.parent / "host.json"


@pytest.fixture
def worker_root_logger() -> Iterator[None]:
    """The root logger at INFO, as the Functions Python worker sets it; library loggers as they come (NOTSET)."""
    root = logging.getLogger()
    saved = root.level, {name: logging.getLogger(name).level for name in LIBRARY_LOGGERS}
    root.setLevel(logging.INFO)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    yield
    root.setLevel(saved[0])
    for name, level in saved[1].items():
        logging.getLogger(name).setLevel(level)


async def test_given_the_default_configuration_when_a_grant_is_made_then_one_info_line_and_no_library_info(
    worker_root_logger: None, make_run: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    run = await make_run()  # the app's start-up (bootstrap) configures the library loggers
    caplog.clear()
    outcomes = await run.deliver(body(requestId="one"))
    assert outcomes["m-1"]["outcome"] == "granted"  # token request and Graph POST included
    lines = [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) == 1, lines
    [(name, message)] = lines
    assert name == "shared.outcome"
    assert message.startswith("grant granted {")
    assert not [r for r in caplog.records if r.name.startswith(("httpx", "httpcore", "azure"))]


def test_given_an_explicit_level_for_a_library_logger_then_start_up_leaves_it(
    worker_root_logger: None, make_run: Callable[..., Any]
) -> None:
    from shared.bootstrap import quiet_library_loggers

    logging.getLogger("httpx").setLevel(logging.DEBUG)  # an operator debugging the Graph client
    quiet_library_loggers()
    assert logging.getLogger("httpx").level == logging.DEBUG
    assert logging.getLogger("azure.core").getEffectiveLevel() == logging.WARNING


def test_host_json_never_samples_the_outcome_lines_and_keeps_library_noise_out() -> None:
    host = json.loads(HOST_JSON.read_text())
    logging_config = host["logging"]
    levels = logging_config["logLevel"]
    assert levels["default"] == "Warning"
    assert levels["Function"] == "Information"  # the functions' own logs: the outcome lines are among them
    sampling = logging_config["applicationInsights"]["samplingSettings"]
    assert sampling["isEnabled"] is True
    assert "Trace" in sampling["excludedTypes"].split(";")  # traces (log lines) are never sampled away…
    assert "Request" in sampling["excludedTypes"].split(";")
    assert "Dependency" not in sampling["excludedTypes"].split(";")  # …while dependency telemetry (noise) is
