"""What a grant costs in the quantities Azure bills (`make bench`'s ``cost`` line; docs/limits.md, "What it
costs").

``python -m benchmarks.cost --count N [--line]`` starts the Graph double and token endpoint in a process of their own
(`benchmarks.doubles`: ``5N`` users, the units `UNIT` and `SECOND_UNIT`, answering in 30 ms, no write budget) and a
local Azurite, runs each scenario below through the registered function objects and the local host, 16 invocations
at a time (host.json's ``maxConcurrentCalls``), on a `ManualClock` (a week until a grant expires takes no time), each
in a fresh app with a ledger table of its own, and prints one JSON line: what each scenario counted, and this
process's peak RSS (with ``--line``: the ``cost:`` line `cost_line` makes of it, per 1,000 of each scenario's unit).

Scenarios (`SCENARIOS`), each for N members of its own:

- ``interactive``: N grant messages on the grants queue (producer ``other``); unit: a grant.
- ``bulk``: a bulk job of N rows, built as ``grants submit`` builds it (`grants_cli.bulk.read_job`), on the bulk queue
  (producer ``bulk``, the bulk lane); unit: a row.
- ``timebound``: N grant messages with an ``expiresAt`` a week later; the clock jumps to each removal, which runs
  too; unit: a grant and its removal.
- ``webhook``: N signed requests through the registered ``grant_webhook``, then the messages it queued; unit: a request.
- ``hr_event``: N joiner events on the hr-events queue (producer ``hr``), each mapped by the rules (`HR_RULES`) to two
  grants; unit: an event.

Each scenario fails (`ScenarioError`) unless every grant ended as it should (granted, and revoked for the removals).
Then, once each, the timers as Azure runs them (every 5 minutes and every hour: `infra/`): the drift sweep after
``interactive`` (the first scenario: the unit holds just its N members, all in step with the ledger) and the expiry
sweep after ``timebound`` (its N removals done, nothing due); each fails the run if it finds anything to do.

What is counted, and where (`Meter`):

- **Table Storage transactions**: every HTTP request the app's one HTTP client sends to the ledger's endpoint
  (Azurite), counted by an httpx request hook on that client. Each is one storage transaction (the app sends no
  entity-group batches).
- **Service Bus operations**: the producers' sends (the harness's), the app's sends at its `MessageSender` (the local
  queue's seam: ``sends`` deliverable at once, ``scheduled`` for later, each one send), the outcome events published to
  the topic and the subscription's deliveries (the local topic), every delivery (a peek-lock receive, the local
  queues' counters) and every settlement (the local settlement servers' calls: complete, abandon, dead-letter, lock
  renewals). Service Bus bills each as one operation per 64 KB: ``largest_message_bytes`` shows none is larger.
- **Executions**: invocations of the registered functions (webhook, triggers, timers), by function.
- **Execution seconds**: each invocation's wall time, summed (``execution_s``), and the time during which at least one
  invocation ran (``busy_s``, the union of their intervals, `busy_seconds`): Flex Consumption bills an instance's
  memory for the time it is executing, however many invocations it runs at once.
- **Memory**: this process's peak RSS (``VmHWM``): the app, the local host and its doubles of Service Bus (the Graph
  double and Azurite run in processes of their own). Flex Consumption bills the instance memory size
  (infra/modules/functionapp.bicep: ``instanceMemoryMB: 2048``), not what the process uses.
- **Log volume**: every log record at INFO or above with the root logger at INFO (as the Functions Python worker sets
  it), each record's message in UTF-8 bytes, the outcome lines (``shared.outcome``) apart; what Application Insights
  adds per record, and the host's own records, are not counted (docs/limits.md says what is not measured).
- **What the ledger keeps**: its table's entities after the scenario, and their size as JSON (`stored`).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import logging
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import httpx

from benchmarks.directory import UNIT, member_id, unit_id
from grants_cli.bulk import BulkJob, read_job
from grants_local.app import LocalApp, local_app
from grants_local.azurite import AzuriteTables, LedgerTable, new_ledger_table
from grants_local.host import LocalHost, Source, registered_function
from grants_local.queue import LocalQueue, LocalSender, ManualClock
from grants_local.run import check_identity, identity_environment
from grants_local.settlement_server import LocalSettlementServer, point_message_actions_at
from shared.adapters.ledger import table_client
from shared.config import Settings
from shared.core.contract import draft
from shared.core.messaging import MessageSender
from shared.core.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from shared.service.settle import outcome_log

__all__ = [
    "SCENARIOS",
    "SECOND_UNIT",
    "CountingSender",
    "LogVolume",
    "Meter",
    "ScenarioError",
    "busy_seconds",
    "cost_line",
    "gb_seconds",
    "instance_memory_mb",
    "measure",
    "measure_scenario",
    "per_thousand",
    "service_bus_operations",
    "stored",
]

#: The scenarios, in the order they run, and what one unit of each is.
SCENARIOS: Final[Mapping[str, str]] = {
    "interactive": "grant",
    "bulk": "bulk row",
    "timebound": "time-bound grant with its removal",
    "webhook": "webhook request",
    "hr_event": "HR joiner event (two grants)",
}
#: How long the Graph double takes to answer (seconds), as in the throughput and light-load parts.
GRAPH_LATENCY: Final = 0.03
#: host.json's ``maxConcurrentCalls``.
CONCURRENCY: Final = 16
#: The second unit the HR rules grant (`benchmarks.doubles --units 1` creates it).
SECOND_UNIT: Final = unit_id(0)
#: A joiner in EMEA gets `UNIT`, one in IT `SECOND_UNIT`: every event here is both, so two grants.
HR_RULES: Final[Mapping[str, Any]] = {
    "rules": [
        {"name": "emea", "when": {"location": "EMEA"}, "grants": [{"type": "administrativeUnit", "id": UNIT}]},
        {"name": "it", "when": {"department": "IT"}, "grants": [{"type": "administrativeUnit", "id": SECOND_UNIT}]},
    ]
}
WEBHOOK_SECRET: Final = "cost-benchmark-webhook-secret-0123456789"  # noqa: S105 (local only, published)
#: The Function App's instance memory size, as infra sets it (Flex Consumption bills it per busy second).
FUNCTION_APP_BICEP: Final = Path(__file__).resolve().parent.parent / "infra" / "modules" / "functionapp.bicep"
#: Service Bus bills a message of up to 64 KB as one operation.
OPERATION_BYTES: Final = 64 * 1024
#: Loggers of the harness, not the app: their records are not the app's log volume.
HARNESS_LOGGERS: Final = ("grants_local", "benchmarks")


class ScenarioError(RuntimeError):
    """A scenario's grants did not end as they should: its counts would not be a grant's."""


def busy_seconds(intervals: Iterable[tuple[float, float]]) -> float:
    """The length of the union of `intervals` (``(start, end)``, end >= start): the time during which at least one
    ran. Overlapping and touching intervals count once; gaps between them not at all."""
    total, covered_to = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > covered_to:
            total += end - max(start, covered_to)
            covered_to = end
    return total


def per_thousand(value: float, units: int) -> float:
    """`value` measured over `units` units, per 1,000 units."""
    if units <= 0:
        raise ValueError("a figure per 1,000 needs at least one unit")
    return 1000 * value / units


class CountingSender:
    """The app's `MessageSender` on the local queue, counting what it sent: ``sends`` deliverable at once (at or before
    the clock's now), ``scheduled`` for later, and the largest body. A send that raised is not counted."""

    def __init__(self, inner: MessageSender, clock: Callable[[], float]) -> None:
        self._inner = inner
        self._clock = clock
        self.sends = 0
        self.scheduled = 0
        self.largest = 0

    async def schedule(
        self,
        *,
        body: bytes,
        message_id: str,
        application_properties: Mapping[str, str | int],
        scheduled_enqueue_time: datetime,
    ) -> None:
        later = scheduled_enqueue_time.timestamp() > self._clock()
        await self._inner.schedule(
            body=body,
            message_id=message_id,
            application_properties=application_properties,
            scheduled_enqueue_time=scheduled_enqueue_time,
        )
        if later:
            self.scheduled += 1
        else:
            self.sends += 1
        self.largest = max(self.largest, len(body))


class LogVolume(logging.Handler):
    """Every record at INFO or above but the harness's: how many, and the UTF-8 bytes of their messages, the outcome
    lines (``shared.outcome``) apart from the rest."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(HARNESS_LOGGERS):
            return
        kind = "outcome" if record.name == outcome_log.name else "other"
        self.lines[kind] += 1
        self.bytes[kind] += len(record.getMessage().encode("utf-8", "surrogatepass"))

    @contextmanager
    def attached(self) -> Iterator[LogVolume]:
        """On the root logger, which is at INFO for the block (the Functions Python worker's level)."""
        root = logging.getLogger()
        level = root.level
        root.addHandler(self)
        root.setLevel(logging.INFO)
        try:
            yield self
        finally:
            root.removeHandler(self)
            root.setLevel(level)


@dataclass
class Meter:
    """Everything a scenario counts (module docstring): `reading` is the totals so far, one flat mapping, so that
    what a step cost is the difference of two readings."""

    clock: Callable[[], float]
    ledger_endpoint: str
    sender: CountingSender | None = None
    log: LogVolume = field(default_factory=LogVolume)
    table_requests: int = 0
    graph_requests: int = 0
    producer_sends: int = 0
    largest_message: int = 0
    spans: list[tuple[str, float, float]] = field(default_factory=list)
    queues: list[LocalQueue] = field(default_factory=list)
    servers: list[LocalSettlementServer] = field(default_factory=list)
    app: LocalApp | None = None

    def sending(self, local: LocalSender) -> CountingSender:
        """`local_app`'s ``sender``: the app's sends, counted."""
        self.sender = CountingSender(local, self.clock)
        return self.sender

    async def request(self, request: httpx.Request) -> None:
        """The httpx request hook on the app's client."""
        if str(request.url).startswith(self.ledger_endpoint):
            self.table_requests += 1
        else:
            self.graph_requests += 1  # Graph and its token endpoint

    def watch(self, app: LocalApp, *, queues: Sequence[LocalQueue], servers: Sequence[LocalSettlementServer]) -> None:
        """Count `app`'s HTTP requests, and the deliveries of `queues` and settlements of `servers` (the app's own
        besides)."""
        self.app = app
        app.services.http.event_hooks["request"].append(self.request)
        self.queues = [app.queue, *(entry.queue for entry in app.producer_queues.values()), *queues]
        self.servers = [app.server, *(entry.server for entry in app.producer_queues.values()), *servers]
        if app.callbacks is not None:  # the callback retry queue, and the settlements of callback deliveries
            self.queues.append(app.callbacks.retry_queue)
            self.servers += [app.callbacks.subscription_server, app.callbacks.retry_server]

    def send(
        self, queue: LocalQueue, body: bytes, *, message_id: str, properties: Mapping[str, Any] | None = None
    ) -> None:
        """A producer's send to `queue`."""
        queue.send(body, message_id=message_id, application_properties=properties, content_type="application/json")
        self.producer_sends += 1
        self.largest_message = max(self.largest_message, len(body))

    def timed(self, name: str, function: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        """`function` (a registered function), each invocation's wall time recorded under `name`."""

        async def invoke(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await function(*args, **kwargs)
            finally:
                self.spans.append((name, start, time.perf_counter()))

        return invoke

    def executions(self) -> Counter[str]:
        return Counter(name for name, _, _ in self.spans)

    def seconds_by_function(self) -> dict[str, float]:
        """Execution seconds, summed by function."""
        seconds: dict[str, float] = {}
        for name, start, end in self.spans:
            seconds[name] = seconds.get(name, 0.0) + end - start
        return seconds

    def reading(self) -> dict[str, float]:
        assert self.app is not None
        assert self.sender is not None
        assert self.app.callbacks is not None
        topic = self.app.callbacks.topic.stats
        settlements = [call.method for server in self.servers for call in server.calls]
        return {
            "table": self.table_requests,
            "graph": self.graph_requests,
            "producer_sends": self.producer_sends,
            "sends": self.sender.sends,
            "scheduled": self.sender.scheduled,
            "publishes": topic.sent + topic.duplicates_dropped,
            "subscription_deliveries": self.app.callbacks.subscription.stats.received,
            "deliveries": sum(queue.stats.received for queue in self.queues),
            "settlements": len(settlements),
            "renewals": settlements.count("RenewMessageLock"),
            "executions": len(self.spans),
            "execution_s": sum(end - start for _, start, end in self.spans),
            "busy_s": busy_seconds((start, end) for _, start, end in self.spans),
            "outcome_lines": self.log.lines["outcome"],
            "outcome_bytes": self.log.bytes["outcome"],
            "other_lines": self.log.lines["other"],
            "other_bytes": self.log.bytes["other"],
        }

    def largest(self) -> int:
        assert self.sender is not None
        return max(self.largest_message, self.sender.largest)


def difference(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    return {name: after[name] - before.get(name, 0) for name in after}


def service_bus_operations(reading: Mapping[str, float]) -> float:
    """Every Service Bus operation of a reading: sends (the producers', the app's, its scheduled ones and its outcome
    events), deliveries (the queues' and the callbacks subscription's) and settlements (lock renewals included)."""
    return sum(
        reading[name]
        for name in (
            "producer_sends",
            "sends",
            "scheduled",
            "publishes",
            "deliveries",
            "subscription_deliveries",
            "settlements",
        )
    )


@dataclass
class _HrQueue:
    queue: LocalQueue
    server: LocalSettlementServer
    actions: Any


@asynccontextmanager
async def _hr_queue(clock: ManualClock) -> AsyncIterator[_HrQueue]:
    """The hr-events queue and its settlement server (`local_app` wires the grant queues only)."""
    queue = LocalQueue(clock=clock)
    with LocalSettlementServer(queue) as server:
        yield _HrQueue(queue, server, point_message_actions_at(server.address))


def _host(app: LocalApp, hr: _HrQueue, meter: Meter) -> LocalHost:
    """The grants queue, each producer's own queue (the bulk queue) and the hr-events queue, delivered to their
    registered functions, timed."""
    import function_app

    def timed(name: str) -> Callable[..., Awaitable[Any]]:
        return meter.timed(name, registered_function(function_app.app, name))

    sources = [Source(entry.queue, timed(entry.function), entry.actions) for entry in app.producer_queues.values()]
    sources.append(Source(hr.queue, timed("hr_events"), hr.actions))
    return LocalHost(
        queue=app.queue,
        function=timed("grant_membership"),
        actions=app.actions,
        clock=app.clock,
        concurrency=CONCURRENCY,
        sources=tuple(sources),
    )


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def _grant(request_id: str, member: str, *, system: str, **extra: Any) -> bytes:
    document = draft(
        requestId=request_id,
        target={"type": "administrativeUnit", "id": UNIT},
        member={"id": member, "type": "user"},
        source={"system": system, "reference": "cost"},
        **extra,
    )
    return json.dumps(document).encode()


async def _interactive(app: LocalApp, hr: _HrQueue, meter: Meter, members: Sequence[str]) -> None:
    for n, member in enumerate(members):
        meter.send(app.queue, _grant(f"cost-{n}", member, system="other"), message_id=f"cost-{n}")


async def _timebound(app: LocalApp, hr: _HrQueue, meter: Meter, members: Sequence[str]) -> None:
    expires = _iso(app.clock() + timedelta(days=7).total_seconds())
    for n, member in enumerate(members):
        body = _grant(f"cost-tb-{n}", member, system="other", expiresAt=expires)
        meter.send(app.queue, body, message_id=f"cost-tb-{n}")


def bulk_job(members: Sequence[str]) -> BulkJob:
    """A bulk job adding each of `members` to `UNIT`, read as ``grants submit`` reads its CSV file."""
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(("action", "targetType", "targetId", "memberId", "memberType"))
    writer.writerows(("add", "administrativeUnit", UNIT, member, "user") for member in members)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "cost.csv")
        path.write_text(rows.getvalue(), encoding="utf-8")
        job = read_job(path, job_id="cost-bulk")
    if job.invalid:
        raise ScenarioError(f"the bulk job has invalid rows: {job.invalid[:3]}")
    return job


async def _bulk(app: LocalApp, hr: _HrQueue, meter: Meter, members: Sequence[str]) -> None:
    queue = app.queue_of("bulk")
    for message in bulk_job(members).messages:
        meter.send(queue, message.body, message_id=message.message_id, properties=message.application_properties)


async def _webhook(app: LocalApp, hr: _HrQueue, meter: Meter, members: Sequence[str]) -> None:
    import azure.functions as func

    import function_app

    webhook = meter.timed("grant_webhook", registered_function(function_app.app, "grant_webhook"))
    for n, member in enumerate(members):
        body = _grant(f"COST{n:07d}", member, system="ticketing")
        timestamp = str(int(app.clock()))
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(secret=WEBHOOK_SECRET, timestamp=timestamp, body=body),
        }
        meter.largest_message = max(meter.largest_message, len(body))
        response = await webhook(func.HttpRequest("POST", "http://localhost/api/grants", headers=headers, body=body))
        if response.status_code != 202:
            raise ScenarioError(f"the webhook answered {response.status_code}: {response.get_body()[:300]!r}")


async def _hr_event(app: LocalApp, hr: _HrQueue, meter: Meter, members: Sequence[str]) -> None:
    day = datetime.fromtimestamp(app.clock(), UTC).date().isoformat()
    for n, member in enumerate(members):
        event = {
            "eventId": f"cost-hire-{n}",
            "eventType": "hire",
            "employeeId": f"EMP-{n}",
            "userObjectId": member,
            "department": "IT",
            "location": "EMEA",
            "jobCode": "HD1",
            "effectiveDate": day,
        }
        meter.send(hr.queue, json.dumps(event).encode(), message_id=f"cost-hire-{n}")


_SENDERS: Final[Mapping[str, Callable[[LocalApp, _HrQueue, Meter, Sequence[str]], Awaitable[None]]]] = {
    "interactive": _interactive,
    "bulk": _bulk,
    "timebound": _timebound,
    "webhook": _webhook,
    "hr_event": _hr_event,
}


async def stored(ledger: LedgerTable) -> tuple[int, int]:
    """The entities in `ledger`'s table, and their size as JSON (UTF-8 bytes, as the service returns them, keys and
    properties with their values): what the ledger keeps, read with a client of its own (not counted)."""
    count, size = 0, 0
    async with (
        httpx.AsyncClient() as http,
        table_client(endpoint=ledger.endpoint, table=ledger.table, credential=ledger.credential(), http=http) as table,
    ):
        async for entity in table.list_entities():
            count += 1
            size += len(json.dumps({**entity}, default=str).encode())
    return count, size


def rules_file(folder: Path) -> str:
    """`HR_RULES` written to a file in `folder`; its path."""
    path = folder / "hr-rules.json"
    path.write_text(json.dumps(HR_RULES), encoding="utf-8")
    return str(path)


def _expected(scenario: str, count: int) -> Counter[str]:
    """The terminal outcomes a scenario's grants must end with."""
    if scenario == "timebound":
        return Counter({"granted": count, "revoked": count})
    return Counter({"granted": 2 * count if scenario == "hr_event" else count})


async def measure_scenario(
    scenario: str, members: Sequence[str], *, env: Mapping[str, str], azurite: AzuriteTables
) -> dict[str, Any]:
    """Run `scenario` for `members` in a fresh app and ledger table; what it counted (and, after ``interactive`` and
    ``timebound``, what the drift sweep and the expiry sweep cost: ``sweep``)."""
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings.from_env(
            {
                **env,
                "GRANTS_OUTCOMES_TOPIC": "grant-outcomes",  # as infra sets it: every outcome is published
                "GRANTS_HR_RULES": rules_file(Path(folder)),
                "GRANTS_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "GRAPH_WRITE_RATE": "0",  # unpaced: the app's own time (docs/limits.md, What it costs)
            }
        )
        check_identity(settings, env)
        clock = ManualClock()
        ledger = await new_ledger_table(azurite)
        meter = Meter(clock=clock, ledger_endpoint=ledger.endpoint)
        with identity_environment(env):
            async with (
                local_app(settings, clock=clock, ledger=ledger, sender=meter.sending) as app,
                _hr_queue(clock) as hr,
            ):
                meter.watch(app, queues=[hr.queue], servers=[hr.server])
                with meter.log.attached():  # from here on: the app's start-up is done
                    return await _run(scenario, members, app=app, hr=hr, meter=meter, ledger=ledger)


async def _run(
    scenario: str, members: Sequence[str], *, app: LocalApp, hr: _HrQueue, meter: Meter, ledger: LedgerTable
) -> dict[str, Any]:
    import function_app

    host = _host(app, hr, meter)
    await _SENDERS[scenario](app, hr, meter, members)
    await host.drain()
    outcomes = Counter(str(record["outcome"]) for record in app.outcomes().values())
    if outcomes != _expected(scenario, len(members)):
        raise ScenarioError(f"{scenario}: the grants ended {dict(outcomes)}, not as expected")
    entities, entity_bytes = await stored(ledger)
    figures: dict[str, Any] = {
        "units": len(members),
        "grants": sum(outcomes.values()),
        "counts": meter.reading(),
        "functions": dict(meter.executions()),
        "function_s": meter.seconds_by_function(),
        "largest_message_bytes": meter.largest(),
        "entities": entities,
        "entity_bytes": entity_bytes,
    }
    sweep = {"interactive": "drift_sweep", "timebound": "expiry_sweep"}.get(scenario)
    if sweep is not None:
        before = meter.reading()
        await meter.timed(sweep, registered_function(function_app.app, sweep))(timer=None)
        await host.drain()
        swept = difference(meter.reading(), before)
        if swept["publishes"] or swept["sends"] or swept["scheduled"]:
            raise ScenarioError(f"{sweep} found work to do where everything was in step: {swept}")
        figures["sweep"] = {"function": sweep, "pairs": len(members), **swept}
    return figures


async def measure(count: int, *, env: Mapping[str, str], azurite: AzuriteTables) -> dict[str, Any]:
    """Every scenario for `count` units, each for members of its own (`member_id` n·count … n·count+count-1)."""
    results: dict[str, Any] = {}
    for n, scenario in enumerate(SCENARIOS):
        members = [member_id(n * count + k) for k in range(count)]
        results[scenario] = await measure_scenario(scenario, members, env=env, azurite=azurite)
    return results


def instance_memory_mb(bicep: Path = FUNCTION_APP_BICEP) -> int:
    """The ``instanceMemoryMB`` infra gives the Function App (infra/modules/functionapp.bicep)."""
    found = re.search(r"instanceMemoryMB:\s*(\d+)", bicep.read_text(encoding="utf-8"))
    if found is None:
        raise LookupError(f"no instanceMemoryMB in {bicep}")
    return int(found.group(1))


def gb_seconds(seconds: float, memory_mb: int) -> float:
    """What Flex Consumption bills for an instance of `memory_mb` executing for `seconds`: GB-seconds, with Azure's
    metric conversion (MB-milliseconds / 1,024,000)."""
    return memory_mb * seconds * 1000 / 1_024_000


def peak_rss_mb() -> float:
    """This process's peak resident set size (``VmHWM``), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cost_line(figures: Mapping[str, Any], *, memory_mb: int | None = None) -> str:
    """The ``cost:`` line: per 1,000 units of each scenario, what `scenario_text` says; then what one drift sweep and
    one expiry sweep cost, the largest message and the peak RSS. GB-seconds are the busy seconds at `memory_mb` (by
    default infra's instance memory size)."""
    memory_mb = memory_mb or instance_memory_mb()
    found = figures["scenarios"]
    sweeps = [sweep_text(found[name]["sweep"]) for name in SCENARIOS if "sweep" in found[name]]
    largest = max(scenario["largest_message_bytes"] for scenario in found.values())
    return (
        f"cost: per 1,000 units ({figures['count']} of each measured, {CONCURRENCY} invocations at a time, "
        f"instance_mb={memory_mb}) "
        + "; ".join(f"{name}: {scenario_text(found[name], memory_mb=memory_mb)}" for name in SCENARIOS)
        + "; "
        + "; ".join(sweeps)
        + f"; largest_message_bytes={largest} peak_rss_mb={figures['peak_rss_mb']:.0f}"
    )


def scenario_text(found: Mapping[str, Any], *, memory_mb: int) -> str:
    """One scenario's figures per 1,000 units: grants ended, Table Storage transactions, Service Bus operations and
    what they were, executions, busy seconds and their GB-seconds, summed invocation seconds, log bytes and lines."""
    units, counts = found["units"], found["counts"]

    def k(name: str) -> float:
        return per_thousand(counts[name], units)

    busy = k("busy_s")
    return (
        f"grants={per_thousand(found['grants'], units):.0f} table={k('table'):.0f} "
        f"sb_ops={per_thousand(service_bus_operations(counts), units):.0f} producer_sends={k('producer_sends'):.0f} "
        f"app_sends={k('sends'):.0f} scheduled_sends={k('scheduled'):.0f} events={k('publishes'):.0f} "
        f"receives={k('deliveries') + k('subscription_deliveries'):.0f} settlements={k('settlements'):.0f} "
        f"executions={k('executions'):.0f} busy_s={busy:.1f} gb_s={gb_seconds(busy, memory_mb):.1f} "
        f"invocation_s={k('execution_s'):.1f} log_kb={(k('outcome_bytes') + k('other_bytes')) / 1000:.0f} "
        f"outcome_lines={k('outcome_lines'):.0f} other_lines={k('other_lines'):.0f} "
        f"ledger_entities={per_thousand(found['entities'], units):.0f} "
        f"ledger_kb={per_thousand(found['entity_bytes'], units) / 1000:.0f}"
    )


def sweep_text(sweep: Mapping[str, Any]) -> str:
    """What one timer invocation cost: Table Storage transactions, Graph requests, Service Bus operations, its
    milliseconds, over how many ledger pairs."""
    return (
        f"{sweep['function']}: pairs={sweep['pairs']} table={sweep['table']:.0f} graph={sweep['graph']:.0f} "
        f"sb_ops={service_bus_operations(sweep):.0f} ms={1000 * sweep['execution_s']:.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, required=True, help="units per scenario")
    parser.add_argument("--line", action="store_true", help="print the cost: line, not the JSON figures")
    args = parser.parse_args()
    quiet = logging.StreamHandler()
    quiet.setLevel(logging.CRITICAL)  # the app's lines are counted, not printed
    logging.basicConfig(level=logging.WARNING, handlers=[quiet])
    with ExitStack() as stack:
        env = dict(os.environ)
        if not env.get("GRAPH_BASE_URL"):  # run alone: the doubles in a process of their own, as `make bench` runs them
            from benchmarks.bench import doubles

            users = len(SCENARIOS) * args.count
            env = stack.enter_context(doubles(users=users, budget="none", latency=GRAPH_LATENCY, units=1)).env
        azurite = stack.enter_context(AzuriteTables())
        scenarios = asyncio.run(measure(args.count, env=env, azurite=azurite))
    largest = max(found["largest_message_bytes"] for found in scenarios.values())
    if largest > OPERATION_BYTES:
        raise SystemExit(f"a message of {largest} bytes: Service Bus bills it as more than one operation")
    figures = {"count": args.count, "scenarios": scenarios, "peak_rss_mb": peak_rss_mb()}
    print(cost_line(figures) if args.line else json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
