"""``run-local``: push a file of JSON-lines messages through the registered function and the local host.

Configuration comes from the environment, as in Azure (``GRAPH_BASE_URL``, ``IDENTITY_ENDPOINT`` /
``IDENTITY_HEADER``, ``GRANTS_*``); only Service Bus is replaced, by the in-process queue.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from grants_common.printable import printable
from grants_local.app import local_app
from grants_local.host import LineOutcome, OutcomeRecorder, line_outcomes
from grants_local.queue import LocalQueue, ManualClock
from shared.config import APP_ROOT, Settings
from shared.core.errors import ConfigError
from shared.core.messaging import DeadLetter

__all__ = [
    "LocalRun",
    "check_identity",
    "graph_environment",
    "identity_environment",
    "os_environment",
    "print_dead_letters",
    "print_json",
    "print_table",
    "process_queue",
    "run_local",
]

EXAMPLES = APP_ROOT / "examples"


@dataclass(frozen=True, slots=True)
class LocalRun:
    """What a local run produced: one outcome per input message, and the dead-letter queue."""

    outcomes: list[LineOutcome]
    missing_lines: list[int]
    dead_letters: list[DeadLetter]
    follow_ups: list[Mapping[str, Any]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every input message reached a terminal state."""
        return not self.missing_lines


async def run_local(
    lines: Iterable[bytes],
    *,
    env: Mapping[str, str] = os.environ,
    clock: Callable[[], float] | None = None,
    concurrency: int = 16,
    producer: str | None = None,
) -> LocalRun:
    """Send each non-blank line as one message (MessageId ``line-N``) from `producer` (its own queue; None: the
    producer the registry binds the grants queue to, ``other`` by default) and deliver until the queue is idle.

    Time is `clock`, by default a `ManualClock` starting now: retry backoff and an ``expiresAt`` removal are
    jumped over, never waited for in real time.
    """
    clock = clock or ManualClock(start=time.time())
    queue = LocalQueue(clock=clock)
    message_ids: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        body = line.rstrip(b"\r\n")
        if body.strip():
            message_ids[f"line-{number}"] = number
            queue.send(body, message_id=f"line-{number}", content_type="application/json")
    recorder = await process_queue(queue, env=env, clock=clock, concurrency=concurrency, producer=producer)
    outcomes = line_outcomes(message_ids, recorder, queue)
    follow_ups = [record for key, record in recorder.terminal().items() if key not in message_ids]
    return LocalRun(
        outcomes=[outcomes[line] for line in sorted(outcomes)],
        missing_lines=sorted(set(message_ids.values()) - set(outcomes)),
        dead_letters=queue.dead_letters(),
        follow_ups=follow_ups,
    )


async def process_queue(
    queue: LocalQueue,
    *,
    env: Mapping[str, str] = os.environ,
    clock: Callable[[], float] = time.time,
    concurrency: int = 16,
    producer: str | None = None,
) -> OutcomeRecorder:
    """Deliver everything in `queue` (`producer`'s own queue, when given) to the registered function until it is
    idle; return the outcome records."""
    settings = Settings.from_env(env)
    check_identity(settings, env)
    with identity_environment(env):
        async with local_app(settings, queue=queue, clock=clock, entry=producer) as app:
            await app.drain(concurrency=concurrency)
    return app.recorder


def check_identity(settings: Settings, env: Mapping[str, str]) -> None:
    """Raise `ConfigError` when Graph is a local one (plain http) but no token endpoint is set: the
    managed-identity credential would look for Azure's instance metadata service instead."""
    if settings.graph_root.startswith("http://") and not (
        env.get("IDENTITY_ENDPOINT") or os.environ.get("IDENTITY_ENDPOINT")
    ):
        raise ConfigError(
            "GRAPH_BASE_URL is a local Graph but IDENTITY_ENDPOINT is not set: the managed-identity credential "
            "would look for Azure's instance metadata service; point it at a local token endpoint"
        )


@contextmanager
def graph_environment(env: Mapping[str, str], *, clock: Callable[[], float] | None = None) -> Iterator[dict[str, str]]:
    """`env` as is when it sets ``GRAPH_BASE_URL``; otherwise `env` pointed at the built-in Graph double (seeded
    from examples/directory.json) and token endpoint, which run until the block ends."""
    if env.get("GRAPH_BASE_URL"):
        yield dict(env)
        return
    from grants_local.graph_double import GraphDouble
    from grants_local.token_endpoint import TokenEndpoint

    with TokenEndpoint() as tokens, GraphDouble(tokens, clock=clock or time.monotonic) as graph:
        if clock is not None:  # epoch seconds (a run's clock): PIM's schedules start and end on it
            epoch = clock
            graph.now = lambda: datetime.fromtimestamp(epoch(), UTC)
        graph.load(EXAMPLES / "directory.json")
        yield {**env, **tokens.env(), "GRAPH_BASE_URL": graph.base_url}


def identity_environment(env: Mapping[str, str]) -> AbstractContextManager[None]:
    """azure-identity reads the managed-identity endpoint from os.environ: apply `env`'s for the run."""
    names = ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "AZURE_CLIENT_ID")
    return os_environment({name: env[name] for name in names if name in env})


@contextmanager
def os_environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set `values` in os.environ for the block (as the App Service platform sets the identity endpoint), then
    put back what was there."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def print_json(run: LocalRun, out: TextIO) -> None:
    """One JSON object per input message, in input order (the ``--json`` contract)."""
    for outcome in run.outcomes:
        out.write(json.dumps(outcome.as_json(), ensure_ascii=True) + "\n")


def print_table(run: LocalRun, out: TextIO, *, title: str = "") -> None:
    """A readable table of the outcomes."""
    if title:
        out.write(f"\n{title}\n")
    header = f"{'line':>4}  {'requestId':<26} {'outcome':<15} {'reason':<25} {'tries':>5}  description"
    out.write(header + "\n" + "-" * len(header) + "\n")
    for o in run.outcomes:  # what came from a message is escaped (`printable`)
        request_id = printable(o.request_id or "-")[:26]
        out.write(
            f"{o.line:>4}  {request_id:<26} {o.outcome:<15} {printable(o.reason or '-'):<25} {o.attempts:>5}  "
            f"{_clip(printable(o.description), 90)}\n"
        )
    for line in run.missing_lines:
        out.write(f"{line:>4}  NO TERMINAL OUTCOME (this is a bug: please report it)\n")
    for record in run.follow_ups:  # messages the app scheduled itself, e.g. the removal of an expiring grant
        request_id = printable(record.get("requestId") or "-")[:26]
        out.write(
            f"{'then':>4}  {request_id:<26} {printable(record['outcome']):<15} "
            f"{printable(record.get('reason') or '-'):<25} {record.get('attempts', 0):>5}  "
            f"at {printable(record.get('startedAt', ''))[:19]}: {_clip(printable(record.get('description', '')), 70)}\n"
        )


def print_dead_letters(run: LocalRun, out: TextIO) -> None:
    """The dead-letter queue: reason and description of each message in it."""
    out.write(f"Dead-letter queue: {len(run.dead_letters)} message(s)\n")
    for entry in run.dead_letters:
        out.write(
            f"  {printable(entry.original_message_id):<8} {printable(entry.reason)}: "
            f"{_clip(printable(entry.description or ''), 110)}\n"
        )


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
