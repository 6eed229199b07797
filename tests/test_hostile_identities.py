"""Producer identities under attack: a producer with send rights on its own queue, a caller with a reading right on
the HTTP API, and a careless operator (a registry that is wrong, authentication off, a registry changed while
messages are queued, rows recorded before producers had names).

Every test drives the registered functions (the local host, the ledger in Azurite, the Graph double) and pins the
behaviour docs/trust.md promises. A test that fails is an attack that worked.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import azure.functions as func
import pytest

import function_app
from grants_local.app import LocalApp, local_app
from grants_local.azurite import AzuriteTables, new_ledger_table
from grants_local.graph_double import GraphDouble
from grants_local.host import registered_function
from grants_local.producers import LOCAL_PRODUCERS, PRINCIPALS
from grants_local.queue import LocalQueue, ManualClock
from shared.adapters.ledger import table_key
from shared.config import Settings
from shared.core.access import CLIENT_PRINCIPAL_HEADER, client_principal_header
from shared.core.errors import ConfigError
from shared.core.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from shared.core.statuses import Status, StatusRecord, StatusWrite
from tests.conftest import AU, AU_OTHER, USER, USER_2, Run, as_operator, as_producer, as_reader, message, settings_for

WEBHOOK = registered_function(function_app.app, "grant_webhook")
STATUS = registered_function(function_app.app, "grant_status")
JOB = registered_function(function_app.app, "job_status")
HR_STATUS = registered_function(function_app.app, "hr_event_status")
HISTORY = registered_function(function_app.app, "grant_history")
DRIFT = registered_function(function_app.app, "drift_report")
CONFIRM = registered_function(function_app.app, "drift_confirm")
SECRET = "s3cret-for-tests-only-0123456789abcdef"
ITSM_SECRET = "itsm-secret-for-tests-only-0123456789ab"


def grant(request_id: str, *, system: str, **fields: Any) -> bytes:
    return json.dumps(
        message(requestId=request_id, source={"system": system, "reference": request_id}, **fields)
    ).encode()


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def read(function: Any, headers: dict[str, str], **parts: Any) -> tuple[int, Any]:
    method = "POST" if function is CONFIRM else "GET"
    request = func.HttpRequest(method, "http://localhost/api/x", headers=headers, body=parts.pop("body", b""), **parts)
    response = await function(request)
    return response.status_code, json.loads(response.get_body())


async def post_webhook(
    clock: Callable[[], float],
    document: dict[str, Any],
    *,
    secret: str | None = SECRET,
    producer: str | None = None,
    extra: dict[str, str] | None = None,
) -> tuple[int, Any]:
    raw = json.dumps(document).encode()
    timestamp = str(int(clock()))
    headers = {"Content-Type": "application/json", **(extra or {})}
    if secret is not None:
        headers |= {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: sign(secret=secret, timestamp=timestamp, body=raw)}
    if producer is not None:
        headers["X-Grants-Producer"] = producer
    response = await WEBHOOK(func.HttpRequest("POST", "http://localhost/api/grants", headers=headers, body=raw))
    return response.status_code, json.loads(response.get_body())


def principal(claims: list[dict[str, Any]] | Any, **document: Any) -> dict[str, str]:
    """An ``X-MS-CLIENT-PRINCIPAL`` header of any shape (a forged one, were authentication off)."""
    raw = json.dumps({"auth_typ": "aad", "claims": claims, **document}).encode()
    return {CLIENT_PRINCIPAL_HEADER: base64.b64encode(raw).decode()}


def registry_without(*names: str) -> str:
    return json.dumps({"producers": [p for p in LOCAL_PRODUCERS["producers"] if p["name"] not in names]})


# --- 1. a producer with send rights on its own queue ----------------------------------------------------------------


async def test_a_forged_producer_property_and_seal_on_a_producers_own_queue_change_nothing(
    make_run: Callable[..., Any],
) -> None:
    """Tried: other sends producer=ticketing, a made-up seal, expiryOf, hrEvent and attempt properties."""
    run: Run = await make_run()
    forged = {
        "producer": "ticketing",
        "seal": "v1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "expiryOf": "RITM1",
        "hrEvent": "evt-1",
        "attempt": 9,
    }
    run.queue_of("other").send(grant("O-F", system="other"), message_id="f-1", application_properties=forged)
    run.queue_of("other").send(
        grant("O-T", system="ticketing", member={"id": USER_2, "type": "user"}),
        message_id="f-2",
        application_properties=forged,
    )
    await run.app.drain()
    outcomes = run.app.outcomes()
    assert (outcomes["f-1"]["outcome"], outcomes["f-1"]["producer"]) == ("granted", "other")
    assert outcomes["f-1"].get("expiryOf") is None
    assert outcomes["f-1"].get("hrEventId") is None
    assert outcomes["f-1"]["attempts"] == 1
    assert (outcomes["f-2"]["reason"], outcomes["f-2"]["producer"]) == ("SourceMismatch", "other")
    assert (await read(STATUS, as_producer("ticketing"), route_params={"requestId": "O-F"}))[0] == 404
    assert run.graph.members_of(AU) == {USER}


@pytest.mark.parametrize(
    ("producer", "system"),
    [("itsm", "hr"), ("itsm", "other"), ("ops", "ticketing"), ("hr", "bulk"), ("bulk", "hr"), ("other", "bulk")],
)
async def test_a_body_naming_another_producers_source_is_refused_source_mismatch(
    make_run: Callable[..., Any], producer: str, system: str
) -> None:
    """Tried: a producer's own queue carrying a body that speaks as another source system."""
    run: Run = await make_run()
    outcomes = await run.deliver(grant("X-1", system=system), producer=producer)
    (outcome,) = outcomes.values()
    assert (outcome["reason"], outcome["producer"]) == ("SourceMismatch", producer)
    assert run.writes() == []


async def test_a_sealed_outcome_event_replayed_onto_a_producers_queue_is_not_taken_as_the_apps_request(
    make_run: Callable[..., Any],
) -> None:
    """Tried: replaying a sealed outcome event (id, body, properties, seal as published) onto a producer's queue."""
    run: Run = await make_run(GRANTS_OUTCOMES_TOPIC="grant-outcomes")
    await run.deliver(grant("B-R", system="bulk"))
    assert run.app.callbacks is not None
    message_id, properties, raw = run.app.callbacks.topic.accepted[-1]
    assert properties["producer"] == "bulk"
    assert "seal" in properties
    before = len(run.writes())
    run.queue_of("other").send(raw, message_id=message_id, application_properties=properties)
    host = run.app.host()
    await host.drain()
    assert host.failed_invocations == 0
    assert run.app.outcomes()[message_id]["outcome"] == "dead_lettered"
    assert len(run.writes()) == before


async def test_another_producers_request_id_job_id_and_hr_event_id_are_other_requests(
    make_run: Callable[..., Any],
) -> None:
    """Tried: ops reuses bulk's request id (other content) and job id, and reads bulk's job naming producer=bulk."""
    run: Run = await make_run()
    bulk = run.queue_of("bulk")
    bulk.send(
        grant("Q-1", system="bulk"),
        message_id="b-1",
        application_properties={"bulkJob": "J", "jobRow": 1, "jobRows": 1},
    )
    await run.app.drain()
    ops = run.queue_of("ops")
    ops.send(
        grant("Q-1", system="bulk", action="remove"),
        message_id="o-1",
        application_properties={"bulkJob": "J", "jobRow": 1, "jobRows": 1},
    )
    await run.app.drain()
    outcomes = run.app.outcomes()
    assert outcomes["o-1"]["outcome"] == "released"  # ops ends its own grant (none): bulk's still holds
    assert outcomes["o-1"]["producer"] == "ops"
    code, own = await read(STATUS, as_producer("bulk"), route_params={"requestId": "Q-1"})
    assert (code, own["producer"], own["action"]) == (200, "bulk", "add")
    code, job = await read(JOB, as_producer("bulk"), route_params={"jobId": "J"})
    assert (code, job["producer"], job["succeeded"]) == (200, "bulk", 1)
    assert (await read(JOB, as_producer("ops"), route_params={"jobId": "J"}, params={"producer": "bulk"}))[0] == 403


@pytest.mark.parametrize(
    "properties",
    [
        {"bulkJob": "J", "jobRow": 0, "jobRows": 1},
        {"bulkJob": "J", "jobRow": -1, "jobRows": 1},
        {"bulkJob": "J", "jobRow": 1, "jobRows": 0},
        {"bulkJob": "J", "jobRow": "1.5", "jobRows": "2"},
        {"bulkJob": "J", "jobRow": "x", "jobRows": "2"},
        {"bulkJob": "J", "jobRow": 3, "jobRows": 2},
        {"bulkJob": "J", "jobRow": True, "jobRows": 2},
        {"bulkJob": "J", "jobRow": "1"},
    ],
)
async def test_a_job_row_that_is_not_a_whole_number_within_the_jobs_count_is_refused_invalid_job_row(
    make_run: Callable[..., Any], properties: dict[str, Any]
) -> None:
    """Tried: zero, negative, fractional, non-numeric, boolean, past-the-count and count-less job rows."""
    run: Run = await make_run()
    run.queue_of("ops").send(grant("R-1", system="bulk"), message_id="r-1", application_properties=properties)
    host = run.app.host()
    await host.drain()
    assert host.failed_invocations == 0
    assert run.app.outcomes()["r-1"]["reason"] == "InvalidJobRow"
    assert run.writes() == []


@pytest.mark.parametrize(
    "properties",
    [
        {"bulkJob": "J", "jobRow": 1, "jobRows": 2**31},
        {"bulkJob": "J", "jobRow": 2**31, "jobRows": 2**31},
        {"jobRow": 2**31},
        {"jobRows": 2**40},
    ],
    ids=["rows-2^31", "row-and-rows-2^31", "row-2^31-without-job", "rows-2^40-without-job"],
)
async def test_a_huge_job_row_count_is_refused_or_recorded_never_left_to_loop(
    make_run: Callable[..., Any], properties: dict[str, Any]
) -> None:
    """Tried: jobRow/jobRows that fit Service Bus's int64 but not Table storage's Int32 (with and without bulkJob)."""
    run: Run = await make_run()
    run.queue_of("ops").send(grant("H-1", system="bulk"), message_id="h-1", application_properties=properties)
    host = run.app.host()
    await host.drain()
    outcome = run.app.outcomes()["h-1"]
    deliveries = sum(1 for r in run.app.recorder.records if r.get("originalMessageId") == "h-1")
    assert deliveries == 1, (
        f"{deliveries} deliveries, ended {outcome['outcome']} {outcome.get('reason')}, "
        f"member written: {USER in run.graph.members_of(AU)}"
    )
    assert outcome["reason"] in ("InvalidJobRow", None)
    if outcome["reason"] is None:
        code, status = await read(STATUS, as_producer("ops"), route_params={"requestId": "H-1"})
        assert (code, status["status"]) == (200, outcome["outcome"])


# --- 2. a caller with a reading right -------------------------------------------------------------------------------


@pytest.fixture
async def two_producers(make_run: Callable[..., Any]) -> Run:
    """bulk's request B-1 (job JB, member USER) and other's O-1 (member USER_2, target AU_OTHER)."""
    run: Run = await make_run()
    run.queue_of("bulk").send(
        grant("B-1", system="bulk"),
        message_id="b-1",
        application_properties={"bulkJob": "JB", "jobRow": 1, "jobRows": 1},
    )
    run.queue_of("other").send(
        grant(
            "O-1",
            system="other",
            member={"id": USER_2, "type": "user"},
            target={"type": "administrativeUnit", "id": AU_OTHER},
        ),
        message_id="o-1",
        application_properties={"bulkJob": "JO", "jobRow": 1, "jobRows": 1},
    )
    await run.app.drain()
    return run


@pytest.mark.parametrize(
    ("function", "parts", "allowed"),
    [
        (STATUS, {"route_params": {"requestId": "O-1"}}, (404,)),
        (STATUS, {"route_params": {"requestId": "O-1"}, "params": {"producer": "other"}}, (403,)),
        (STATUS, {"route_params": {"requestId": "O-1"}, "params": {"producer": "OTHER"}}, (400,)),
        (STATUS, {"route_params": {"requestId": "O-1"}, "params": {"producer": " other"}}, (400,)),
        (STATUS, {"route_params": {"requestId": "O-1"}, "params": {"producer": "other,bulk"}}, (400,)),
        (STATUS, {"route_params": {"requestId": "O-1"}, "params": {"Producer": "other"}}, (404,)),
        (STATUS, {"route_params": {"requestId": "O-1"}, "params": {"producer": ""}}, (400,)),
        (STATUS, {"route_params": {"requestId": "O%2D1"}}, (400,)),
        (STATUS, {"route_params": {"requestId": "B-1/../O-1"}}, (400,)),
        (STATUS, {"route_params": {"requestId": "p.other.status"}}, (404,)),
        (STATUS, {"route_params": {"requestId": "o-1"}}, (404,)),
        (JOB, {"route_params": {"jobId": "JO"}}, (404,)),
        (JOB, {"route_params": {"jobId": "JO"}, "params": {"producer": "other"}}, (403,)),
        (JOB, {"route_params": {"jobId": "jo"}}, (404,)),
        (HR_STATUS, {"route_params": {"eventId": "JO"}}, (404,)),
        (HISTORY, {"params": {"member": USER_2}}, (200,)),
        (HISTORY, {"params": {"member": USER_2.upper()}}, (200,)),
        (HISTORY, {"params": {"target": AU_OTHER}}, (200,)),
        (HISTORY, {"params": {"target": AU_OTHER, "since": "2000-01-01"}}, (200,)),
        (HISTORY, {"params": {"target": AU_OTHER, "producer": "other"}}, (403,)),
        (HISTORY, {"params": {"member": USER_2, "target": AU_OTHER}}, (400,)),
        (HISTORY, {"params": {"member": f"{USER_2}%00"}}, (400,)),
        (DRIFT, {"params": {"target": AU_OTHER}}, (403,)),
        (CONFIRM, {"route_params": {"target": AU_OTHER}}, (403,)),
    ],
)
async def test_a_producer_reads_nothing_of_another_producers_through_any_route_or_parameter(
    two_producers: Run, function: Any, parts: dict[str, Any], allowed: tuple[int, ...]
) -> None:
    """Tried: bulk reading other's status/job/HR event/history/drift via every route, parameter and id trick."""
    code, answer = await read(function, as_producer("bulk"), **parts)
    assert code in allowed, answer
    if function is HISTORY and code == 200:
        assert [r["producer"] for r in answer["requests"]] in ([], ["bulk"]), answer
        assert "O-1" not in json.dumps(answer["requests"])


def _claims(oid: str | None = None, **more: str) -> list[dict[str, str]]:
    found = [{"typ": "http://schemas.microsoft.com/identity/claims/objectidentifier", "val": oid}] if oid else []
    return found + [{"typ": typ, "val": val} for typ, val in more.items()]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({CLIENT_PRINCIPAL_HEADER: "not base64 !!"}, 401),
        ({CLIENT_PRINCIPAL_HEADER: base64.b64encode(b"[1, 2]").decode()}, 401),
        ({CLIENT_PRINCIPAL_HEADER: base64.b64encode(b"\xff\xfe{").decode()}, 401),
        ({CLIENT_PRINCIPAL_HEADER: "A" * (16 * 1024 + 4)}, 401),
        (principal("claims"), 401),
        (principal({"typ": "roles", "val": "Grants.Reader"}), 401),
        (principal(_claims(None, groups="Grants.Reader")), 403),
        (principal(_claims(None, scp="Grants.Reader")), 403),
        (principal(_claims(None, wids="Grants.Operator")), 403),
        (principal([{"typ": "roles", "val": ["Grants.Reader"]}]), 403),
        (principal([{"typ": "oid", "val": "not-a-guid"}, {"typ": "oid", "val": PRINCIPALS["other"]}]), 403),
        (principal([{"typ": "oid", "val": PRINCIPALS["bulk"]}, {"typ": "oid", "val": PRINCIPALS["other"]}]), 404),
        (principal([{"typ": "oid", "val": PRINCIPALS["other"] + " "}]), 403),
        (principal([{"typ": "oid", "val": "{" + PRINCIPALS["other"] + "}"}]), 403),
        (principal([{"typ": "name", "val": PRINCIPALS["other"]}]), 403),
        (principal([{"typ": "appid", "val": PRINCIPALS["other"]}]), 403),
    ],
    ids=[
        "not-base64",
        "json-list",
        "not-utf8",
        "huge",
        "claims-not-a-list",
        "claims-an-object",
        "role-as-groups",
        "role-as-scope",
        "role-as-wids",
        "role-as-list",
        "bad-oid-first",
        "two-oids-bulk-first",
        "oid-padded",
        "oid-braced",
        "oid-as-name",
        "oid-as-appid",
    ],
)
async def test_a_forged_or_malformed_client_principal_reads_nothing_of_other(
    two_producers: Run, headers: dict[str, str], expected: int
) -> None:
    """Tried: malformed/huge principals, roles in other claim types, non-GUID or duplicate oids, oid elsewhere."""
    code, answer = await read(STATUS, headers, route_params={"requestId": "O-1"})
    assert code == expected, answer


async def test_authentication_off_a_principal_header_neither_reads_nor_submits(make_run: Callable[..., Any]) -> None:
    """Tried: with authentication off, operator/reader/producer principal headers on the API and the webhook."""
    run: Run = await make_run(WEBSITE_AUTH_ENABLED="false", GRANTS_WEBHOOK_SECRET=SECRET)
    await run.deliver(grant("B-1", system="bulk"))
    for headers in (as_operator(), as_reader(), as_producer("bulk")):
        assert (await read(STATUS, headers, route_params={"requestId": "B-1"}))[0] == 401
        assert (await read(HISTORY, headers, params={"target": AU}))[0] == 401
        assert (await read(CONFIRM, headers, route_params={"target": AU}))[0] == 401
    code, _ = await post_webhook(
        run.clock, message(requestId="B-2", source={"system": "bulk"}), secret=None, extra=as_producer("bulk")
    )
    assert code == 401


@pytest.mark.parametrize(
    ("producer", "secret", "expected"),
    [
        ("other", SECRET, 401),  # other has no secret: ticketing's signature does not make it other's
        ("itsm", SECRET, 401),
        ("Ticketing", SECRET, 401),
        ("app", SECRET, 401),
        ("ticketing", ITSM_SECRET, 401),
        ("ticketing ", SECRET, 202),  # padded: the same producer
        (None, SECRET, 202),  # only ticketing signs
    ],
)
async def test_the_webhook_signature_counts_only_for_the_producer_whose_secret_made_it(
    make_run: Callable[..., Any], producer: str | None, secret: str, expected: int
) -> None:
    """Tried: X-Grants-Producer naming a producer without secret, unknown, app, odd casing; a wrong secret."""
    run: Run = await make_run(GRANTS_WEBHOOK_SECRET=SECRET)
    code, answer = await post_webhook(
        run.clock, message(requestId="T-1", source={"system": "ticketing"}), secret=secret, producer=producer
    )
    assert code == expected, answer
    if code == 202:
        assert answer["producer"] == "ticketing"


async def test_a_principal_and_another_producers_signature_together_never_speak_as_the_signer(
    make_run: Callable[..., Any],
) -> None:
    """Tried: other's principal plus ticketing's valid signature and X-Grants-Producer: ticketing on the webhook."""
    run: Run = await make_run(GRANTS_WEBHOOK_SECRET=SECRET)
    code, answer = await post_webhook(
        run.clock,
        message(requestId="T-9", source={"system": "ticketing"}),
        producer="ticketing",
        extra=as_producer("other"),
    )
    assert code == 400, answer
    await run.app.drain()
    assert run.writes() == []
    code, answer = await post_webhook(
        run.clock,
        {
            "ticketNumber": "T-10",
            "requester": "a@x",
            "approver": "b@x",
            "target": {"type": "administrativeUnit", "id": AU},
            "member": USER,
        },
        producer="ticketing",
        extra=as_producer("other"),
    )
    assert (code, answer.get("producer")) == (202, "other")  # a ticket payload is mapped to the caller's own system
    await run.app.drain()
    assert (await read(STATUS, as_producer("ticketing"), route_params={"requestId": "T-10"}))[0] == 404


async def test_a_callback_to_another_producers_host_is_refused_through_the_webhook_and_the_queue(
    make_run: Callable[..., Any],
) -> None:
    """Tried: itsm naming ticketing's callback host, through the webhook (its own secret) and its own queue."""
    registry = json.loads(json.dumps(LOCAL_PRODUCERS))
    for entry in registry["producers"]:
        if entry["name"] == "itsm":
            entry |= {"secretSetting": "ITSM_SECRET", "callbackHosts": ["itsm.example.com"]}
        if entry["name"] == "ticketing":
            entry |= {"callbackHosts": ["snow.example.com"]}
    run: Run = await make_run(
        GRANTS_PRODUCERS=json.dumps(registry),
        GRANTS_WEBHOOK_SECRET=SECRET,
        ITSM_SECRET=ITSM_SECRET,
        GRANTS_OUTCOMES_TOPIC="grant-outcomes",
    )
    foreign = {"url": "https://snow.example.com/api/cb"}
    code, _ = await post_webhook(
        run.clock,
        message(requestId="I-1", source={"system": "ticketing"}, callback=foreign),
        secret=ITSM_SECRET,
        producer="itsm",
    )
    assert code == 400
    outcomes = await run.deliver(grant("I-2", system="ticketing", callback=foreign), producer="itsm")
    (outcome,) = outcomes.values()
    assert (outcome["reason"], outcome["producer"]) == ("CallbackNotAllowed", "itsm")
    assert run.writes() == []
    assert run.app.callbacks is not None
    assert run.app.callbacks.subscription.stats.sent == 0


async def test_the_outcome_event_names_the_producer_its_entry_point_established(
    make_run: Callable[..., Any],
) -> None:
    """Tried: itsm's message with a producer=ticketing property: whose the outcome event and status are."""
    run: Run = await make_run(GRANTS_OUTCOMES_TOPIC="grant-outcomes")
    run.queue_of("itsm").send(
        grant("RITM42", system="ticketing"), message_id="i-1", application_properties={"producer": "ticketing"}
    )
    await run.app.drain()
    assert run.app.callbacks is not None
    events = [(p, json.loads(b)) for _, p, b in run.app.callbacks.topic.accepted]
    assert [(p["producer"], b["producer"]) for p, b in events] == [("itsm", "itsm")]
    assert (await read(STATUS, as_producer("ticketing"), route_params={"requestId": "RITM42"}))[0] == 404


# --- 3. a careless operator: the registry --------------------------------------------------------------------------


def test_start_up_refuses_a_producer_of_another_system_bound_to_the_hr_events_queue() -> None:
    """Tried: a ticketing producer given the HR events queue as its `queue` (its messages read as HR events)."""
    registry = {"producers": [{"name": "snow", "system": "ticketing", "queue": "hr-events"}]}
    with pytest.raises(ConfigError):
        Settings.from_env({"GRANTS_PRODUCERS": json.dumps(registry)})


def test_start_up_refuses_a_producer_queue_that_is_the_callback_retry_queue() -> None:
    """Tried: a producer given the callback retry queue (GRANTS_CALLBACK_QUEUE) as its own queue."""
    registry = {"producers": [{"name": "snow", "system": "ticketing", "queue": "grant-callbacks"}]}
    with pytest.raises(ConfigError):
        Settings.from_env({"GRANTS_PRODUCERS": json.dumps(registry)})


async def test_an_hr_event_on_a_queue_bound_to_no_producer_is_dead_lettered_unknown_producer(
    make_run: Callable[..., Any], tmp_path: Any
) -> None:
    """Tried: a registry without hr, and an HR leaver event on the HR events queue."""
    from grants_local.host import LocalHost
    from grants_local.settlement_server import LocalSettlementServer, point_message_actions_at

    rules = tmp_path / "rules.json"
    rules.write_text(
        json.dumps({"rules": [{"name": "all", "when": {}, "grants": [{"type": "administrativeUnit", "id": AU}]}]})
    )
    run: Run = await make_run(GRANTS_PRODUCERS=registry_without("hr"), GRANTS_HR_RULES=str(rules))
    run.graph.add_member(AU, USER)
    hr_queue = LocalQueue(clock=run.clock)
    event = {"eventId": "E-1", "eventType": "leaver", "employeeId": "1", "userObjectId": USER}
    hr_queue.send(json.dumps(event).encode(), message_id="e-1")
    with LocalSettlementServer(hr_queue) as server:
        host = LocalHost(
            queue=hr_queue,
            function=registered_function(function_app.app, "hr_events"),
            actions=point_message_actions_at(server.address),
            clock=run.clock,
        )
        await host.drain()
        assert host.failed_invocations == 0
    assert [d.reason for d in hr_queue.dead_letters()] == ["UnknownProducer"]
    assert run.graph.members_of(AU) == {USER}


# --- 3. a careless operator: the registry changed while messages are queued -----------------------------------------


@pytest.fixture
async def two_registries(graph: GraphDouble, azurite: AzuriteTables) -> AsyncIterator[Callable[..., Any]]:
    """`start(**env)`: the app on one grants queue, clock and ledger; a second call restarts it with other settings
    (a new registry), the queue and the ledger kept, as a redeployment would."""
    ledger = await new_ledger_table(azurite)
    clock = ManualClock(start=float(int(time.time())))
    queue = LocalQueue(clock=clock)
    async with AsyncExitStack() as outer:
        current: list[AsyncExitStack] = []

        async def start(**env: str) -> LocalApp:
            if current:
                await current.pop().aclose()
            stack = AsyncExitStack()
            await outer.enter_async_context(stack)
            current.append(stack)
            return await stack.enter_async_context(
                local_app(settings_for(graph, **env), clock=clock, queue=queue, ledger=ledger)
            )

        yield start


async def test_removing_a_producer_from_the_registry_does_not_keep_its_time_bound_grants_forever(
    two_registries: Callable[..., Any], graph: GraphDouble
) -> None:
    """Tried: removing itsm from the registry while its one-hour grant's expiry removal is queued."""
    app: LocalApp = await two_registries()
    now = app.clock()
    expires = datetime.fromtimestamp(now, UTC) + timedelta(hours=1)
    app.queue_of("itsm").send(grant("RITM7", system="ticketing", expiresAt=iso(expires)), message_id="i-7")
    await app.host().drain(until=now)
    assert app.outcomes()["i-7"]["outcome"] == "granted"
    assert USER in graph.members_of(AU)
    app = await two_registries(GRANTS_PRODUCERS=registry_without("itsm"))
    host = app.host()
    await host.drain()  # time jumps to the expiry removal
    await app.services.expiry_sweep()
    await host.drain()
    assert host.failed_invocations == 0
    removals = [r for r in app.recorder.records if str(r.get("messageId", "")).startswith(("~expire", "~sweep"))]
    assert USER not in graph.members_of(AU), [(r["messageId"][:8], r["outcome"], r["reason"]) for r in removals]


async def test_a_webhook_request_whose_producer_is_removed_before_it_runs_does_not_stay_accepted(
    two_registries: Callable[..., Any],
) -> None:
    """Tried: removing ticketing from the registry after its webhook request was accepted, before it runs."""
    app: LocalApp = await two_registries(GRANTS_WEBHOOK_SECRET=SECRET)
    code, _ = await post_webhook(app.clock, message(requestId="RITM8", source={"system": "ticketing"}))
    assert code == 202
    app = await two_registries(GRANTS_PRODUCERS=registry_without("ticketing"))
    host = app.host()
    await host.drain()
    assert host.failed_invocations == 0
    assert [d.reason for d in app.queue.dead_letters()] == ["UnknownProducer"]
    code, status = await read(
        STATUS, as_reader(), route_params={"requestId": "RITM8"}, params={"producer": "ticketing"}
    )
    assert (code, status["status"]) == (200, "dead_lettered"), status


# --- 3. a careless operator: rows recorded before producers had names ------------------------------------------------


def _legacy_record(request_id: str, status: str, system: str, **more: Any) -> dict[str, Any]:
    return {"requestId": request_id, "status": status, "sourceSystem": system, "attempts": 1, **more}


async def _legacy_row(run: Run, partition: str, row: str, record: dict[str, Any], **columns: Any) -> None:
    await run.app.services.ledger._table.create_entity(
        {
            "PartitionKey": partition,
            "RowKey": row,
            "requestId": record["requestId"],
            "status": record["status"],
            "record": json.dumps(record),
            **columns,
        }
    )


async def test_a_legacy_status_is_read_only_by_the_producer_named_as_its_source(make_run: Callable[..., Any]) -> None:
    """Tried: itsm, other and bulk reading a ticketing status recorded before producers had names."""
    run: Run = await make_run()
    record = _legacy_record("OLD-1", "granted", "ticketing", memberId=USER, targetId=AU, action="add")
    await _legacy_row(run, table_key("request", "OLD-1"), "status", record)
    for producer in ("itsm", "other", "bulk"):
        assert (await read(STATUS, as_producer(producer), route_params={"requestId": "OLD-1"}))[0] == 404
    assert (await read(STATUS, as_producer("ticketing"), route_params={"requestId": "OLD-1"}))[0] == 200


async def test_a_request_carried_again_after_the_upgrade_is_not_ambiguous_with_itself(
    make_run: Callable[..., Any],
) -> None:
    """Tried: a reader reading a request with a legacy status that was carried out again after the upgrade."""
    run: Run = await make_run()
    await _legacy_row(run, table_key("request", "B-OLD"), "status", _legacy_record("B-OLD", "in_progress", "bulk"))
    await run.deliver(grant("B-OLD", system="bulk"))
    code, answer = await read(STATUS, as_reader(), route_params={"requestId": "B-OLD"})
    assert code == 200, (code, answer.get("producers"))
    assert answer["producer"] == "bulk"


async def test_a_legacy_job_reads_as_its_producers_for_a_reader(make_run: Callable[..., Any]) -> None:
    """Tried: a reader reading a legacy bulk job (two rows, one dead-lettered) without producer=."""
    run: Run = await make_run()
    key = table_key("job", "OLDJ")
    await _legacy_row(
        run,
        key,
        "row.0000001",
        _legacy_record("J:1", "granted", "bulk", jobId="OLDJ", jobRow=1, jobRows=2),
        jobRow=1,
        jobRows=2,
    )
    await _legacy_row(
        run,
        key,
        "row.0000002",
        _legacy_record("J:2", "dead_lettered", "bulk", jobId="OLDJ", jobRow=2, jobRows=2, reason="MemberNotFound"),
        jobRow=2,
        jobRows=2,
    )
    code, own = await read(JOB, as_producer("bulk"), route_params={"jobId": "OLDJ"})
    assert (code, own["producer"], own["done"], len(own["failed"])) == (200, "bulk", True, 1)
    code, answer = await read(JOB, as_reader(), route_params={"jobId": "OLDJ"})
    assert code == 200, (code, answer.get("producers"))
    assert (answer["producer"], answer["done"], answer["recorded"]) == ("bulk", True, 2)


async def test_a_job_that_spanned_the_upgrade_finishes_for_its_producer(make_run: Callable[..., Any]) -> None:
    """Tried: bulk's 2-row job, row 1 recorded before the upgrade and row 2 after, read by bulk and a reader."""
    run: Run = await make_run()
    key = table_key("job", "SPAN")
    await _legacy_row(
        run,
        key,
        "row.0000001",
        _legacy_record("S:1", "granted", "bulk", jobId="SPAN", jobRow=1, jobRows=2),
        jobRow=1,
        jobRows=2,
    )
    run.queue_of("bulk").send(
        grant("S:2", system="bulk", member={"id": USER_2, "type": "user"}),
        message_id="s-2",
        application_properties={"bulkJob": "SPAN", "jobRow": 2, "jobRows": 2},
    )
    await run.app.drain()
    code, own = await read(JOB, as_producer("bulk"), route_params={"jobId": "SPAN"})
    assert code == 200
    assert (own["recorded"], own["terminal"], own["done"]) == (2, 2, True), {
        k: own[k] for k in ("rows", "recorded", "terminal", "done")
    }
    code, reader_view = await read(JOB, as_reader(), route_params={"jobId": "SPAN"})
    assert (code, reader_view.get("producer")) == (200, "bulk"), (code, reader_view.get("producers"))


async def test_a_legacy_hr_event_shows_its_own_record_to_its_producer(make_run: Callable[..., Any]) -> None:
    """Tried: hr and a reader reading an HR event (its own record and one row) recorded before the upgrade."""
    run: Run = await make_run()
    key = table_key("hrEvent", "OLDE")
    await _legacy_row(
        run,
        key,
        "row.0000001",
        _legacy_record("~hr:OLDE:1", "granted", "hr", hrEventId="OLDE", jobRow=1, jobRows=1),
        jobRow=1,
        jobRows=1,
    )
    await run.app.services.ledger._table.create_entity(
        {
            "PartitionKey": key,
            "RowKey": "event",
            "record": json.dumps({"eventId": "OLDE", "eventType": "joiner", "outcome": "completed", "rows": 1}),
        }
    )
    code, own = await read(HR_STATUS, as_producer("hr"), route_params={"eventId": "OLDE"})
    assert code == 200, own
    assert (own.get("event") or {}).get("eventType") == "joiner", ("event", own.get("event"))
    code, answer = await read(HR_STATUS, as_reader(), route_params={"eventId": "OLDE"})
    assert (code, answer.get("producer")) == (200, "hr"), (code, answer.get("producer"), answer.get("producers"))


async def test_the_removal_of_a_legacy_time_bound_grant_is_shown_on_its_status(make_run: Callable[..., Any]) -> None:
    """Tried: the app's removal of a legacy time-bound grant, then its producer reading the grant's status."""
    run: Run = await make_run()
    expires = datetime(2024, 1, 1, tzinfo=UTC)
    record = _legacy_record(
        "OLD-3", "granted", "ticketing", expiresAt=expires.isoformat(), memberId=USER, targetId=AU, action="add"
    )
    await _legacy_row(run, table_key("request", "OLD-3"), "status", record)
    removal = StatusRecord(
        request_id="~expire:OLD-3",
        producer="app",
        status=Status.REVOKED,
        expiry_of="OLD-3",
    )
    await run.app.services.ledger.record(removal, now=datetime.now(UTC), write=StatusWrite.FINAL)
    code, answer = await read(STATUS, as_producer("ticketing"), route_params={"requestId": "OLD-3"})
    assert code == 200
    assert answer["removal"]["status"] == "revoked", answer["removal"]


# --- HR event ids of two HR systems ----------------------------------------------------------------------------------

HR2 = "a0000000-0000-4000-8000-000000000099"


async def test_two_hr_systems_using_one_event_id_each_keep_their_own_event_and_grants(
    make_run: Callable[..., Any], tmp_path: Any
) -> None:
    """Tried: a second HR system sending the same event id, employee and content as hr's event."""
    from grants_local.host import LocalHost
    from grants_local.settlement_server import LocalSettlementServer, point_message_actions_at
    from shared.runtime import process_hr_event

    registry = json.loads(json.dumps(LOCAL_PRODUCERS))
    registry["producers"].append({"name": "hr2", "system": "hr", "hrEventsQueue": "hr2-events", "principals": [HR2]})
    rules = tmp_path / "rules.json"
    rules.write_text(
        json.dumps(
            {
                "rules": [
                    {"name": "all", "when": {"location": "EMEA"}, "grants": [{"type": "administrativeUnit", "id": AU}]}
                ]
            }
        )
    )
    run: Run = await make_run(GRANTS_PRODUCERS=json.dumps(registry), GRANTS_HR_RULES=str(rules))

    async def hr2_trigger(receivedmessage: Any, message_actions: Any) -> None:
        await process_hr_event(receivedmessage, message_actions, queue="hr2-events")

    event = json.dumps(
        {"eventId": "E-1", "eventType": "joiner", "employeeId": "7", "userObjectId": USER, "location": "EMEA"}
    ).encode()
    failed = 0
    for function, queue_name in ((registered_function(function_app.app, "hr_events"), "hr"), (hr2_trigger, "hr2")):
        queue = LocalQueue(clock=run.clock)
        queue.send(event, message_id="E-1")
        with LocalSettlementServer(queue) as server:
            host = LocalHost(
                queue=queue, function=function, actions=point_message_actions_at(server.address), clock=run.clock
            )
            await host.drain()
            failed += host.failed_invocations
        assert queue.dead_letters() == [], queue_name
    host = run.app.host()
    await host.drain()
    assert failed + host.failed_invocations == 0
    ended = sorted((r["producer"], r["outcome"]) for r in run.app.recorder.records if r.get("terminal"))
    assert [p for p, _ in ended] == ["hr", "hr2"], ended
    assert {o for _, o in ended} <= {"granted", "already_member"}
    as_hr2 = {CLIENT_PRINCIPAL_HEADER: client_principal_header(object_id=HR2, name="hr2-app")}
    for producer, headers in (("hr", as_producer("hr")), ("hr2", as_hr2)):
        code, own = await read(HR_STATUS, headers, route_params={"eventId": "E-1"})
        assert (code, own["producer"], own["done"], own["event"]["eventType"]) == (200, producer, True, "joiner")
    code, ambiguous = await read(HR_STATUS, as_reader(), route_params={"eventId": "E-1"})
    assert (code, sorted(ambiguous["producers"])) == (409, ["hr", "hr2"])
    assert (await read(HR_STATUS, as_hr2, route_params={"eventId": "E-1"}, params={"producer": "hr"}))[0] == 403


# --- no exception escapes a registered function ---------------------------------------------------------------------


async def test_a_client_principal_nested_too_deeply_is_refused_not_raised(make_run: Callable[..., Any]) -> None:
    """Tried: an X-MS-CLIENT-PRINCIPAL whose JSON nests 12 000 arrays deep (under the 16 KB limit)."""
    run: Run = await make_run()
    await run.deliver(grant("B-1", system="bulk"))
    headers = {CLIENT_PRINCIPAL_HEADER: base64.b64encode(b"[" * 12000).decode()}
    code, answer = await read(STATUS, headers, route_params={"requestId": "B-1"})
    assert code == 401, answer


async def test_a_drift_confirm_body_nested_too_deeply_is_refused_not_raised(make_run: Callable[..., Any]) -> None:
    """Tried: an operator's drift confirm whose body nests 100 000 arrays deep."""
    run: Run = await make_run()
    await run.deliver(grant("B-1", system="bulk"))
    code, answer = await read(CONFIRM, as_operator(), route_params={"target": AU}, body=b"[" * 100_000)
    assert code == 400, answer


@pytest.mark.parametrize(
    "headers",
    [
        {"X-MS-CLIENT-PRINCIPAL": "forged"},
        {"x-ms-client-principal": "forged"},
        {"X-Ms-Client-Principal": "forged", "Authorization": "Bearer local:app"},
        {"X-MS-CLIENT-PRINCIPAL": "forged", "Authorization": "Bearer local:nobody"},
        {"X-MS-CLIENT-PRINCIPAL-ID": PRINCIPALS["other"], "X-MS-CLIENT-PRINCIPAL-NAME": "other"},
    ],
)
def test_serve_local_drops_every_client_principal_a_caller_sends(headers: dict[str, str]) -> None:
    """Tried: X-MS-* headers of any casing sent to serve-local, with a local token for the app or no one."""
    from grants_local.serve import _authenticated

    registry = Settings.from_env({"GRANTS_PRODUCERS": json.dumps(LOCAL_PRODUCERS)}).producers
    passed = _authenticated(headers, registry)
    assert not any(name.lower().startswith("x-ms-") for name in passed), passed


async def test_an_expiry_removal_queued_before_producers_had_names_is_not_the_other_producers(
    make_run: Callable[..., Any],
) -> None:
    """Tried: a legacy (producer-less, sealed) expiry removal of a ticketing grant running after the upgrade."""
    from shared.core.contract import Action, AdministrativeUnit, encode
    from shared.core.intents import Intent, content_hash, expiry_removal, pair_of

    run: Run = await make_run()
    run.graph.add_member(AU, USER)
    ledger = run.app.services.ledger
    made = datetime.fromtimestamp(run.clock(), UTC) - timedelta(days=2)
    expires = made + timedelta(days=1)
    target = AdministrativeUnit(id=AU)
    newest = Intent(request_id="OLD-4", content_hash="0" * 64, action=Action.ADD, requested_at=made, expires_at=expires)
    pair = pair_of(target, USER)
    await ledger._table.create_entity(  # the pair as recorded then: one newest intent, applied, no producer
        {
            "PartitionKey": table_key("pair", pair),
            "RowKey": "pair",
            "pair": pair,
            "newestRequestId": "OLD-4",
            "newestContentHash": newest.content_hash,
            "newestAction": "add",
            "newestRequestedAt": made,
            "newestExpiresAt": expires,
            "appliedRequestId": "OLD-4",
            "appliedAction": "add",
            "appliedAt": made,
            "removalDue": expires,
        }
    )
    record = _legacy_record(
        "OLD-4", "granted", "ticketing", memberId=USER, targetId=AU, action="add", expiresAt=expires.isoformat()
    )
    await _legacy_row(run, table_key("request", "OLD-4"), "status", record)
    removal = expiry_removal(target, USER, of=newest)
    raw = encode(removal)
    sealer = run.app.services.grant._sealer
    message_id = await sealer.message_id(f"~expire:{content_hash(removal)}")
    properties = await sealer.sealed(message_id=message_id, body=raw, properties={"expiryOf": "OLD-4"})
    run.queue.send(raw, message_id=message_id, application_properties=properties)
    host = run.app.host()
    await host.drain()
    assert host.failed_invocations == 0
    assert USER not in run.graph.members_of(AU)
    (ended,) = [r for r in run.app.recorder.records if r.get("terminal")]
    assert ended["producer"] != "other", (ended["requestId"], ended["producer"], ended["outcome"])
    code, history = await read(HISTORY, as_producer("other"), params={"member": USER})
    assert (code, history["requests"]) == (200, [])


async def test_a_request_id_claimed_before_producers_had_names_is_not_reused_for_other_content(
    make_run: Callable[..., Any],
) -> None:
    """Tried: ticketing reusing a request id claimed before the upgrade, with other content (a removal)."""
    run: Run = await make_run(GRANTS_WEBHOOK_SECRET=SECRET)
    run.graph.add_member(AU, USER)
    first = message(requestId="RITM-L", source={"system": "ticketing"})
    from shared.core.contract import parse_grant
    from shared.core.intents import content_hash, pair_of

    command = parse_grant(json.dumps(first).encode())
    partition = table_key("request", "RITM-L")
    await run.app.services.ledger._table.upsert_entity(  # a seal row from before producers had names: no schema
        {"PartitionKey": "app", "RowKey": "seal", "key": base64.b64encode(b"k" * 32).decode()}
    )
    await run.app.services.ledger._table.create_entity(
        {
            "PartitionKey": partition,
            "RowKey": "request",
            "requestId": "RITM-L",
            "contentHash": content_hash(command),
            "origin": "m-old",
            "pair": pair_of(command.target, USER),
            "requestedAt": datetime(2024, 1, 1, tzinfo=UTC),
        }
    )
    await _legacy_row(
        run,
        partition,
        "status",
        _legacy_record("RITM-L", "granted", "ticketing", memberId=USER, targetId=AU, action="add"),
    )
    code, answer = await post_webhook(
        run.clock, message(requestId="RITM-L", source={"system": "ticketing"}, action="remove")
    )
    await run.app.drain()
    assert USER in run.graph.members_of(AU)
    assert code == 409, (code, answer)
