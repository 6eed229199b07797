"""Shared fixtures: the Graph double and token endpoint on loopback, and the app wired against them."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from hypothesis import settings

from grants_local.app import LocalApp, local_app
from grants_local.azurite import AzuriteTables, LedgerTable, new_ledger_table
from grants_local.graph_double import GraphDouble
from grants_local.producers import LOCAL_PRODUCERS, PRINCIPALS, declared
from grants_local.queue import LocalQueue, LocalSender, ManualClock
from grants_local.token_endpoint import TokenEndpoint
from shared.adapters.ledger import table_client
from shared.bootstrap import Services, bootstrap
from shared.config import Settings
from shared.core.access import CLIENT_PRINCIPAL_HEADER, Role, client_principal_header
from shared.core.contract import draft
from shared.core.producers import Producers

if TYPE_CHECKING:
    from azure.data.tables.aio import TableClient

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

#: The producer registry the tests run with (`settings_for`; `function_app` is imported with it, so each producer's
#: own queue has its registered trigger): `grants_local.producers.LOCAL_PRODUCERS`.
TEST_PRODUCERS: dict[str, Any] = LOCAL_PRODUCERS
with declared():
    import function_app  # noqa: F401 (its triggers, one per producer queue of the test registry)
#: Property tests check behaviour, never timing: no per-example deadline (a loaded machine is not a failure). Under CI
#: (``CI`` set, as `.ci/run` runs on a fresh clone) they draw the same examples every run, so a verdict is reproducible;
#: elsewhere each run explores new ones (a failure found there prints its seed and example to keep as a test).
settings.register_profile("behaviour", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "behaviour")

AU = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
AU_OTHER = "6c8e7f1a-2b3c-4d5e-8f90-a1b2c3d4e5f6"
USER = "15c1a2d5-9101-44b2-83ab-885db8a647ca"
USER_2 = "25c1a2d5-9101-44b2-83ab-885db8a647cb"
LATE_USER = "35c1a2d5-9101-44b2-83ab-885db8a647cc"
GROUP_ASSIGNABLE = "45c1a2d5-9101-44b2-83ab-885db8a647cd"
DEVICE = "55c1a2d5-9101-44b2-83ab-885db8a647ce"
UNKNOWN = "00000000-0000-4000-8000-000000000000"
GLOBAL_ADMIN = "62e90394-69f5-4237-9190-012177145e10"  # tier-0; the harness activates it
GLOBAL_ADMIN_ROLE = "d0000000-0000-4000-8000-0000000000a1"
HELPDESK_TEMPLATE = "729827e3-9c14-49f7-bb1b-9608f156bbb8"
HELPDESK_ROLE = "a1b2c3d4-0000-4000-8000-000000000001"
USER_ADMIN_TEMPLATE = "4d6ac14f-3453-41d0-bef9-a3e0c569773a"  # License Administrator: not activated in the seed

SEED: dict[str, Any] = {
    "users": [USER, USER_2, {"id": LATE_USER, "visibleAfterLookups": 2}],
    "groups": [{"id": GROUP_ASSIGNABLE, "isAssignableToRole": True}],
    "devices": [DEVICE],
    "administrativeUnits": [{"id": AU, "displayName": "EMEA"}, {"id": AU_OTHER, "displayName": "APAC"}],
    "roleTemplates": [
        {"id": HELPDESK_TEMPLATE, "displayName": "Helpdesk Administrator", "activated": True, "roleId": HELPDESK_ROLE},
        {"id": USER_ADMIN_TEMPLATE, "displayName": "License Administrator", "activated": False},
    ],
}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """With ``GRANTS_TEST_TALLY`` naming a file (the Makefile's ``unit`` does), write there how many tests passed, and
    how many were xfailed or skipped (``1101 tests (2 xfailed)``): `make test` ends with it in its verdict line."""
    tally = os.environ.get("GRANTS_TEST_TALLY")
    if not tally:
        return
    counts = {kind: len(terminalreporter.stats.get(kind, ())) for kind in ("passed", "xfailed", "skipped")}
    others = ", ".join(f"{counts[kind]} {kind}" for kind in ("xfailed", "skipped") if counts[kind])
    Path(tally).parent.mkdir(parents=True, exist_ok=True)
    Path(tally).write_text(f"{counts['passed']} tests" + (f" ({others})" if others else ""), encoding="utf-8")


def message(**fields: Any) -> dict[str, Any]:
    """The tests' one message builder: a valid v1 document (the contract's `draft`: requestId ``req-1``, a user
    added to `AU` by a bulk job), any field replaced, or left out when given None."""
    defaults: dict[str, Any] = {
        "requestId": "req-1",
        "target": {"type": "administrativeUnit", "id": AU},
        "member": {"id": USER, "type": "user"},
        "source": {"system": "bulk", "reference": "job-7"},
    }
    return draft(**(defaults | fields))


def body(**fields: Any) -> bytes:
    """`message` as a message body."""
    return json.dumps(message(**fields)).encode()


def source_of(raw: bytes) -> str:
    """The producer an honest sender of `raw` is: the one named as its ``source.system`` (``bulk``, whose queue is
    `Run.queue`, when the body names none readable)."""
    try:
        system = json.loads(raw)["source"]["system"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return "bulk"
    return system if isinstance(system, str) and system in ("hr", "ticketing", "bulk", "other") else "bulk"


@pytest.fixture
def token_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[TokenEndpoint]:
    """The App Service token endpoint, announced to azure-identity through the environment."""
    for name in ("IDENTITY_SERVER_THUMBPRINT", "MSI_ENDPOINT", "MSI_SECRET", "AZURE_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)  # keep azure-identity on its App Service path
    with TokenEndpoint() as endpoint:
        for name, value in endpoint.env().items():
            monkeypatch.setenv(name, value)
        yield endpoint


@pytest.fixture
def graph(token_endpoint: TokenEndpoint) -> Iterator[GraphDouble]:
    with GraphDouble(token_endpoint) as double:
        double.load(SEED)
        yield double


def producers(webhook_secret: str | None = None) -> Producers:
    """The built-in producer registry, ``ticketing`` signing with `webhook_secret`."""
    return Producers.default(
        grants_queue="grant-membership",
        bulk_queue="grant-membership-bulk",
        hr_events_queue="hr-events",
        webhook_secret=webhook_secret,
    )


async def execute(services: Services, command: Any, **options: Any) -> Any:
    """`GrantService.execute` for `command` as the producer of its source system would ask it (engine tests)."""
    producer = services.settings.producers.for_system(command.source.system.value)
    assert producer is not None
    return await services.grants.execute(command, producer=producer, **options)


_WINDOWS = ("GRANTS_MEMBER_NOT_FOUND_WINDOW_SECONDS", "GRANTS_MEMBER_NOT_FOUND_WINDOWS")


def settings_for(graph: GraphDouble, **env: str) -> Settings:
    """The app's settings against `graph`, retries without delay (so a member not found is given up after its
    minimum of such answers, with no window: without delays no time would pass; a test that sets a window gets
    one-second delays on the manual clock, as the app refuses zero delays beside a window), with the tests' producer
    registry unless `env` sets ``GRANTS_PRODUCERS`` (empty: the built-in one), behind App Service authentication (the
    tests stand in for it with `as_operator`, `as_reader` and `as_producer`)."""
    windowed = any(env.get(name) not in (None, "", "0") for name in _WINDOWS)  # zero delays would loop in it
    return Settings.from_env(
        {
            "GRAPH_BASE_URL": graph.base_url,
            "GRANTS_RETRY_BASE_SECONDS": "1" if windowed else "0",
            "GRANTS_MEMBER_NOT_FOUND_WINDOW_SECONDS": "0",
            "GRANTS_PRODUCERS": json.dumps(TEST_PRODUCERS),
            "WEBSITE_AUTH_ENABLED": "true",
            **env,
        }
    )


def as_operator() -> dict[str, str]:
    """The headers App Service authentication passes on for an operator (app role Grants.Operator)."""
    principal = client_principal_header(
        object_id="b0000000-0000-4000-8000-000000000001", name="ops@contoso.com", roles=(Role.OPERATOR.value,)
    )
    return {CLIENT_PRINCIPAL_HEADER: principal}


def as_reader() -> dict[str, str]:
    """The headers App Service authentication passes on for a reader (app role Grants.Reader)."""
    principal = client_principal_header(
        object_id="b0000000-0000-4000-8000-000000000002", name="audit@contoso.com", roles=(Role.READER.value,)
    )
    return {CLIENT_PRINCIPAL_HEADER: principal}


def as_producer(name: str) -> dict[str, str]:
    """The headers App Service authentication passes on for the principal acting for producer `name`."""
    return {CLIENT_PRINCIPAL_HEADER: client_principal_header(object_id=PRINCIPALS[name], name=f"{name}-app")}


@pytest.fixture
async def services(graph: GraphDouble, ledger_in_azurite: LedgerTable) -> AsyncIterator[Services]:
    """The app's real wiring (managed-identity credential, httpx, the ledger in Azurite) against the doubles."""
    wired = bootstrap(
        ledger_in_azurite.settings(settings_for(graph)),
        sender=LocalSender(LocalQueue()),
        ledger_credential=ledger_in_azurite.credential(),
    )
    yield wired
    await wired.aclose()


class Run:
    """The app on the local host (`local_app`: real settlement over gRPC, the app's services) against the Graph
    double, on a manual clock."""

    def __init__(self, graph: GraphDouble, app: LocalApp) -> None:
        self.graph, self.app = graph, app
        self.queue, self.clock, self.actions = app.queue, app.clock, app.actions
        self.sent = 0

    async def deliver(self, *bodies: bytes, producer: str | None = None) -> dict[str, dict[str, Any]]:
        """Send each body (MessageIds m-1, m-2, … across calls) from `producer` (its own queue; by default the
        producer of the body's source system, as an honest producer sends it), deliver all; terminal outcomes by
        MessageId."""
        for body in bodies:
            self.sent += 1
            self.queue_of(producer or source_of(body)).send(body, message_id=f"m-{self.sent}")
        await self.app.drain()
        return {key: dict(value) for key, value in self.app.outcomes().items()}

    def queue_of(self, producer: str) -> LocalQueue:
        """`producer`'s own queue in this run."""
        return self.app.queue_of(producer)

    def writes(self) -> list[tuple[str, str]]:
        return [(r.method, r.path) for r in self.graph.requests if r.method != "GET"]


@pytest.fixture
async def make_run(graph: GraphDouble, azurite: AzuriteTables) -> AsyncIterator[Callable[..., Any]]:
    """Builds a `Run` with app settings `env` (retries without delay unless told otherwise), each with a fresh
    ledger table in the session's Azurite and its own clock, which is also the Graph double's PIM clock."""
    graph.add_role_template(
        GLOBAL_ADMIN, display_name="Global Administrator", activated=True, role_id=GLOBAL_ADMIN_ROLE
    )
    async with AsyncExitStack() as stack:

        async def make(**env: str) -> Run:
            ledger = await new_ledger_table(azurite)
            clock = ManualClock()
            graph.now = clock.utcnow  # PIM's schedules start and end on the run's clock
            app = await stack.enter_async_context(local_app(settings_for(graph, **env), clock=clock, ledger=ledger))
            return Run(graph, app)

        yield make


# --- Azurite: the ledger's storage ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def azurite() -> Iterator[AzuriteTables]:
    """One azurite-table process (in memory, a free loopback port) for the whole session."""
    with AzuriteTables() as tables:
        yield tables


class StorageCalls:
    """The HTTP requests sent to Azurite through `http` (what a test counts as storage round trips)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []

    async def record(self, request: httpx.Request) -> None:
        self.requests.append((request.method, request.url.path))

    def __len__(self) -> int:
        return len(self.requests)


@pytest.fixture
async def ledger_in_azurite(azurite: AzuriteTables) -> LedgerTable:
    """A fresh ledger table in the session's Azurite, for `bootstrap` / `local_app`."""
    return await new_ledger_table(azurite)


@pytest.fixture
def storage_calls() -> StorageCalls:
    return StorageCalls()


@pytest.fixture
async def ledger_table(azurite: AzuriteTables, storage_calls: StorageCalls) -> AsyncIterator[TableClient]:
    """A fresh, empty table in Azurite (the app's `table_client`, over httpx); requests after its creation counted."""
    async with httpx.AsyncClient(event_hooks={"request": [storage_calls.record]}) as http:
        name = f"ledger{uuid.uuid4().hex[:16]}"
        table = table_client(endpoint=azurite.endpoint, table=name, credential=azurite.credential(), http=http)
        async with table:
            await table.create_table()
            storage_calls.requests.clear()
            yield table
