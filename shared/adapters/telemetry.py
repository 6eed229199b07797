"""Outcome records as Application Insights customDimensions, when the worker exports with OpenTelemetry.

With ``PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true`` the Functions Python worker configures the Azure
Monitor OpenTelemetry distro (``configure_azure_monitor``) before it imports ``function_app``: a global
OpenTelemetry ``LoggerProvider`` exporting to Application Insights, and its ``LoggingHandler`` on the root
logger, which makes each log record's ``extra`` attributes customDimensions *as they are*. The outcome line's
record travels as one ``extra`` attribute holding a dict (``grant`` or ``hrEvent``), which would arrive as a
single dimension holding its Python repr.

`install` attaches `OutcomeDimensions` to the outcome logger. For each record carrying one of `RECORD_ATTRIBUTES`
it emits one OpenTelemetry log record through that global provider: the same body (``grant <outcome> {json}``,
unchanged), severity and trace context, and as attributes the record's fields, flat (`dimensions`). A filter on
the distro's handlers keeps them from exporting the same record a second time. Other handlers (the worker's
host log, a local console, the local host's recorders) see the log record untouched.

`install` also raises three loggers to WARNING (unless configured otherwise). The worker runs the root logger at
INFO; azure-core logs every HTTP request and response at INFO, and the exporter each transmission, so the
exporter's own requests to Application Insights, exported in turn, would feed the next export without end; and
httpx logs every Graph call at INFO, which the httpx instrumentation already records as a dependency.

Nothing here imports OpenTelemetry until `install` runs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["QUIETED_LOGGERS", "RECORD_ATTRIBUTES", "OutcomeDimensions", "dimensions", "install"]

#: The ``extra`` attributes that carry an outcome record (shared/service/settle.py: ``log_outcome``; a drift
#: sweep's target line: shared/service/drift.py).
RECORD_ATTRIBUTES: Final = ("grant", "hrEvent", "drift")
#: Loggers `install` sets to WARNING when unset (see the module docstring).
QUIETED_LOGGERS: Final = (
    "azure.core.pipeline.policies.http_logging_policy",
    "azure.monitor.opentelemetry.exporter",
    "httpx",
)

_log = logging.getLogger(__name__)

Dimension = str | int | float


def dimensions(record: Mapping[str, Any]) -> dict[str, Dimension]:
    """The record's fields as flat attributes, keys unchanged: strings and numbers as they are, booleans as
    ``"true"`` / ``"false"`` (as in the JSON line), lists and objects as their JSON text; None fields are left out."""
    flat: dict[str, Dimension] = {}
    for key, value in record.items():
        if value is None:
            continue
        if isinstance(value, bool):
            flat[key] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            flat[key] = value
        else:
            flat[key] = json.dumps(value, default=str)
    return flat


def _outcome_record(record: logging.LogRecord) -> Mapping[str, Any] | None:
    for name in RECORD_ATTRIBUTES:
        value = getattr(record, name, None)
        if isinstance(value, Mapping):
            return value
    return None


class _NotOutcomes(logging.Filter):
    """Put on the distro's handlers: `OutcomeDimensions` exports the outcome records."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _outcome_record(record) is None


class OutcomeDimensions(logging.Handler):
    """Emits each outcome record to an OpenTelemetry logger provider (the global one unless given) with its fields
    as attributes, under the logger's name; `skipped_by` (the distro's handlers) get a filter that skips them."""

    def __init__(self, *, skipped_by: list[logging.Handler], logger_provider: Any = None) -> None:
        super().__init__()
        self._provider = logger_provider
        self._loggers: dict[str, Any] = {}
        self._filter = _NotOutcomes()
        self._skipped_by = skipped_by
        for handler in skipped_by:
            handler.addFilter(self._filter)

    def emit(self, record: logging.LogRecord) -> None:
        fields = _outcome_record(record)
        if fields is None:
            return
        from opentelemetry._logs import LogRecord, SeverityNumber, get_logger
        from opentelemetry.context import get_current

        try:
            logger = self._loggers.get(record.name)
            if logger is None:
                logger = self._loggers[record.name] = get_logger(record.name, logger_provider=self._provider)
            logger.emit(
                LogRecord(
                    timestamp=int(record.created * 1e9),
                    observed_timestamp=time.time_ns(),
                    context=get_current(),
                    severity_text=_SEVERITY_TEXT.get(record.levelname, record.levelname),
                    severity_number=SeverityNumber(_severity_number(record.levelno)),
                    body=record.getMessage(),
                    attributes=dimensions(fields),
                )
            )
        except Exception:
            self.handleError(record)

    def remove(self, logger: logging.Logger) -> None:
        """Detach from `logger` and take the filter off the distro's handlers again."""
        logger.removeHandler(self)
        for handler in self._skipped_by:
            handler.removeFilter(self._filter)


_SEVERITY_TEXT: Final = {"WARNING": "WARN", "CRITICAL": "FATAL"}


def _severity_number(levelno: int) -> int:
    """OpenTelemetry's severity number for a logging level: DEBUG 5, INFO 9, WARNING 13, ERROR 17, CRITICAL 21."""
    for level, number in ((logging.CRITICAL, 21), (logging.ERROR, 17), (logging.WARNING, 13), (logging.INFO, 9)):
        if levelno >= level:
            return number
    return 5


def _distro_handlers(logger: logging.Logger) -> list[logging.Handler]:
    """OpenTelemetry's logging handlers on `logger` and on the loggers its records propagate to."""
    classes: list[type] = []
    try:
        from opentelemetry.instrumentation.logging.handler import LoggingHandler

        classes.append(LoggingHandler)
    except ImportError:  # an older distro attaches the SDK's handler
        pass
    try:
        from opentelemetry.sdk._logs import LoggingHandler as SdkLoggingHandler

        classes.append(SdkLoggingHandler)
    except ImportError:
        pass
    found: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        found += [h for h in current.handlers if isinstance(h, tuple(classes))]
        current = current.parent if current.propagate else None
    return found


def install(logger: logging.Logger, *, logger_provider: Any = None) -> OutcomeDimensions | None:
    """Export `logger`'s outcome records with flat dimensions through `logger_provider` (default: the global one the
    distro set), see the module docstring; None, with a warning, when no OpenTelemetry logging handler is configured
    (the distro missing or not set up). Installing twice is a no-op."""
    for handler in logger.handlers:
        if isinstance(handler, OutcomeDimensions):
            return handler
    distro = _distro_handlers(logger)
    if not distro:
        _log.warning(
            "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY is true but no OpenTelemetry logging handler is configured "
            "(is azure-monitor-opentelemetry installed?): outcome lines carry no customDimensions"
        )
        return None
    for name in QUIETED_LOGGERS:
        if logging.getLogger(name).level == logging.NOTSET:
            logging.getLogger(name).setLevel(logging.WARNING)
    handler = OutcomeDimensions(skipped_by=distro, logger_provider=logger_provider)
    logger.addHandler(handler)
    return handler
