"""Who asked is established by how a request arrived, never by what it says: the producer registry, the findings of
the hostile review reproduced through the registered functions, and the rights on the HTTP API.

Each producer is known by the queue only it may send to, by the secret it signs webhook requests with, or by an Entra
principal App Service authentication vouches for (`shared.core.producers`, `shared.core.access`). The tests' registry
(`tests.conftest.TEST_PRODUCERS`) has six: ticketing, hr, bulk, other, ops (a bulk team) and itsm (a second ticketing
system), each on a queue of its own.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

import function_app
from examples import callback_receiver as receiver_example
from grants_local.host import registered_function
from grants_local.queue import ManualClock
from shared.adapters.ledger import table_key
from shared.config import Settings
from shared.core.errors import ConfigError
from shared.core.producers import Producers
from shared.core.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from tests.conftest import (
    AU,
    GLOBAL_ADMIN,
    GLOBAL_ADMIN_ROLE,
    USER,
    USER_2,
    Run,
    as_operator,
    as_producer,
    as_reader,
    message,
)

WEBHOOK = registered_function(function_app.app, "grant_webhook")
STATUS = registered_function(function_app.app, "grant_status")
JOB = registered_function(function_app.app, "job_status")
HISTORY = registered_function(function_app.app, "grant_history")
DRIFT = registered_function(function_app.app, "drift_report")
CONFIRM = registered_function(function_app.app, "drift_confirm")
SECRET = "s3cret-for-tests-only-0123456789abcdef"
ITSM_SECRET = "itsm-secret-for-tests-only-0123456789ab"
EXAMPLE_POLICY = str(Path(__file__).resolve().parent.parent / "examples" / "policy.json")


def grant(request_id: str, *, system: str, **fields: Any) -> bytes:
    return json.dumps(
        message(requestId=request_id, source={"system": system, "reference": request_id}, **fields)
    ).encode()


async def webhook(run: Run, document: dict[str, Any], *, secret: str = SECRET, producer: str | None = None) -> Any:
    raw = json.dumps(document).encode()
    timestamp = str(int(run.clock()))
    headers = {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(secret=secret, timestamp=timestamp, body=raw),
        **({"X-Grants-Producer": producer} if producer else {}),
    }
    response = await WEBHOOK(func.HttpRequest("POST", "http://localhost/api/grants", headers=headers, body=raw))
    return response.status_code, json.loads(response.get_body())


async def read(function: Any, headers: dict[str, str], **parts: Any) -> tuple[int, Any]:
    method = "POST" if function is CONFIRM else "GET"
    request = func.HttpRequest(method, "http://localhost/api/x", headers=headers, body=parts.pop("body", b""), **parts)
    response = await function(request)
    return response.status_code, json.loads(response.get_body())


# --- the registry ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("producers", "says"),
    [
        (
            [{"name": "a", "system": "other", "queue": "q"}, {"name": "b", "system": "bulk", "queue": "q"}],
            "share the queue q",
        ),
        (
            [
                {"name": "a", "system": "other", "principals": ["a0000000-0000-4000-8000-000000000001"]},
                {"name": "b", "system": "other", "principals": ["A0000000-0000-4000-8000-000000000001"]},
            ],
            "share the principal",
        ),
        (
            [
                {"name": "a", "system": "ticketing", "secretSetting": "SECRET_A"},
                {"name": "b", "system": "ticketing", "secretSetting": "SECRET_B"},
            ],
            "sign with the same secret",
        ),
        ([{"name": "a", "system": "other", "queue": "q"}, {"name": "a", "system": "bulk", "queue": "r"}], "twice"),
        ([{"name": "app", "system": "other", "queue": "q"}], "the app's own name"),
        ([{"name": "Ops Team", "system": "other", "queue": "q"}], "lower-case letters"),
        ([{"name": "a", "system": "payroll", "queue": "q"}], "system must be one of"),
        ([{"name": "a", "system": "other"}], "at least one way it is known"),
        ([{"name": "a", "system": "other", "hrEventsQueue": "hr"}], "only a producer of system hr"),
        ([{"name": "a", "system": "other", "queue": "q", "callbackHosts": ["x.example.com"]}], "no secretSetting"),
        ([{"name": "a", "system": "other", "queue": "q", "role": "admin"}], "unknown field 'role'"),
        ([], "empty"),
    ],
)
def test_start_up_refuses_a_registry_in_which_two_producers_share_an_identity_or_one_is_unknowable(
    producers: list[dict[str, Any]], says: str
) -> None:
    env = {"SECRET_A": "x" * 40, "SECRET_B": "x" * 40, "GRANTS_PRODUCERS": json.dumps({"producers": producers})}
    with pytest.raises(ConfigError, match="GRANTS_PRODUCERS") as caught:
        Settings.from_env(env)
    assert says in str(caught.value)
    assert "x" * 40 not in str(caught.value)


def test_the_built_in_registry_tells_its_four_kinds_of_sender_apart() -> None:
    registry = Settings.from_env({}).producers
    assert [(p.name, p.system.value) for p in registry] == [
        ("ticketing", "ticketing"),
        ("hr", "hr"),
        ("bulk", "bulk"),
        ("other", "other"),
    ]
    assert registry.on_queue("grant-membership") is registry.get("other")
    assert registry.on_queue("grant-membership-bulk") is registry.get("bulk")
    assert registry.on_queue("hr-events") is registry.get("hr")
    assert registry.get("ticketing") is not None
    assert registry.get("ticketing").queue is None  # type: ignore[union-attr]  # the webhook only


def test_a_policy_naming_a_producer_the_registry_lacks_stops_the_app(tmp_path: Path, graph: Any) -> None:
    from shared.bootstrap import bootstrap
    from tests.conftest import settings_for

    file = tmp_path / "policy.json"
    file.write_text(json.dumps({"producers": {"servicenow": {"administrativeUnits": ["*"]}}}))
    with pytest.raises(ConfigError, match=r"producers\.servicenow is not in the producer registry"):
        bootstrap(settings_for(graph, GRANTS_POLICY=str(file)))


# --- any sender can be any source: no longer -------------------------------------------------------------------


async def test_a_message_naming_another_source_is_dead_lettered_source_mismatch_and_grants_nothing(
    make_run: Callable[..., Any],
) -> None:
    """With examples/policy.json, ticketing may grant Global Administrator and bulk may not. A message on other's
    queue that says it is ticketing's, and one on bulk's queue that says it is hr's and removes a member: both are
    dead-lettered SourceMismatch, before any Graph write."""
    run: Run = await make_run(GRANTS_POLICY=EXAMPLE_POLICY)
    run.graph.add_member(AU, USER_2)
    tier0 = {"type": "directoryRole", "roleTemplateId": GLOBAL_ADMIN}
    outcomes = await run.deliver(grant("RITM-X", system="ticketing", target=tier0), producer="other")
    outcomes |= await run.deliver(
        grant("HR-X", system="hr", action="remove", member={"id": USER_2, "type": "user"}), producer="bulk"
    )
    assert {o["requestId"]: o["reason"] for o in outcomes.values()} == {
        "RITM-X": "SourceMismatch",
        "HR-X": "SourceMismatch",
    }
    assert "came from producer 'other'" in outcomes["m-1"]["description"]
    assert run.writes() == []
    assert run.graph.members_of(GLOBAL_ADMIN_ROLE) == set()
    assert run.graph.members_of(AU) == {USER_2}


async def test_a_queue_bound_to_no_producer_takes_only_the_apps_own_messages(
    make_run: Callable[..., Any], tmp_path: Path
) -> None:
    """A registry that gives the grants queue to nobody: a producer's message there is dead-lettered UnknownProducer
    (and no status is written for anyone); the app's own sealed messages still run on it."""
    registry = {"producers": [{"name": "ticketing", "system": "ticketing", "secretSetting": "GRANTS_WEBHOOK_SECRET"}]}
    run: Run = await make_run(GRANTS_PRODUCERS=json.dumps(registry), GRANTS_WEBHOOK_SECRET=SECRET)
    run.queue.send(grant("Q-1", system="ticketing"), message_id="m-1")
    await run.app.drain()
    assert run.app.outcomes()["m-1"]["reason"] == "UnknownProducer"
    assert run.graph.members_of(AU) == set()
    status, _ = await webhook(run, message(requestId="T-1", source={"system": "ticketing"}))
    assert status == 202
    await run.app.drain()  # the webhook's sealed message, on the same queue: the app's own, ticketing's
    assert run.graph.members_of(AU) == {USER}


# --- request ids are one namespace for everyone: no longer ------------------------------------------------------


async def test_two_producers_use_one_request_id_without_touching_each_other(make_run: Callable[..., Any]) -> None:
    """A queue producer sends RITM0010002 first; the real signed ticket RITM0010002 is still accepted (202, not
    409) and granted; each producer reads its own status; an operator is asked which one, then reads each."""
    run: Run = await make_run(GRANTS_WEBHOOK_SECRET=SECRET)
    squat = grant("RITM0010002", system="other", member={"id": USER_2, "type": "user"}, action="remove")
    await run.deliver(squat, producer="other")
    status, _ = await webhook(run, message(requestId="RITM0010002", source={"system": "ticketing"}))
    assert status == 202
    await run.app.drain()
    assert run.graph.members_of(AU) == {USER}
    code, own = await read(STATUS, as_producer("ticketing"), route_params={"requestId": "RITM0010002"})
    assert (code, own["producer"], own["status"], own["action"]) == (200, "ticketing", "granted", "add")
    code, theirs = await read(STATUS, as_producer("other"), route_params={"requestId": "RITM0010002"})
    assert (code, theirs["producer"], theirs["status"]) == (200, "other", "released")  # it had no grant to end
    code, ambiguous = await read(STATUS, as_operator(), route_params={"requestId": "RITM0010002"})
    assert (code, sorted(ambiguous["producers"])) == (409, ["other", "ticketing"])
    code, named = await read(
        STATUS, as_reader(), route_params={"requestId": "RITM0010002"}, params={"producer": "ticketing"}
    )
    assert (code, named["status"]) == (200, "granted")


async def test_a_producer_never_reads_another_producers_requests_or_history(make_run: Callable[..., Any]) -> None:
    run: Run = await make_run()
    await run.deliver(grant("B-1", system="bulk"), grant("O-1", system="other", member={"id": USER_2, "type": "user"}))
    code, _ = await read(STATUS, as_producer("bulk"), route_params={"requestId": "O-1"})
    assert code == 404  # not its own: as if it were not there
    code, refused = await read(
        STATUS, as_producer("bulk"), route_params={"requestId": "O-1"}, params={"producer": "other"}
    )
    assert (code, refused["type"]) == (403, "urn:entra-grants:problem:forbidden")
    code, history = await read(HISTORY, as_producer("bulk"), params={"target": AU})
    assert (code, [r["requestId"] for r in history["requests"]]) == (200, ["B-1"])
    code, everyone = await read(HISTORY, as_reader(), params={"target": AU})
    assert sorted(r["requestId"] for r in everyone["requests"]) == ["B-1", "O-1"]
    code, nobody = await read(STATUS, {}, route_params={"requestId": "B-1"})
    assert (code, nobody["type"]) == (401, "urn:entra-grants:problem:unauthenticated")
    stranger = {**as_reader()}  # a principal with no role and acting for no producer
    from shared.core.access import CLIENT_PRINCIPAL_HEADER, client_principal_header

    stranger[CLIENT_PRINCIPAL_HEADER] = client_principal_header(
        object_id="c0000000-0000-4000-8000-000000000009", name="someone"
    )
    assert (await read(STATUS, stranger, route_params={"requestId": "B-1"}))[0] == 403


async def test_without_app_service_authentication_nobody_reads_anything(make_run: Callable[..., Any]) -> None:
    """Authentication off: the principal header could come from anyone, so it is not read at all."""
    run: Run = await make_run(WEBSITE_AUTH_ENABLED="false")
    await run.deliver(grant("B-1", system="bulk"))
    code, answer = await read(STATUS, as_operator(), route_params={"requestId": "B-1"})
    assert (code, answer["type"]) == (401, "urn:entra-grants:problem:unauthenticated")
    assert "App Service authentication is off" in answer["detail"]


async def test_reading_is_not_operating_and_every_confirm_is_recorded_with_who(make_run: Callable[..., Any]) -> None:
    """The drift report needs Grants.Reader (a producer may not see every producer's intents); a confirm, which
    releases held removals, needs Grants.Operator: a reader is refused 403 and nothing is released."""
    run: Run = await make_run()
    await run.deliver(grant("B-1", system="bulk"))
    assert (await read(DRIFT, as_producer("bulk"), params={"target": AU}))[0] == 403
    assert (await read(DRIFT, as_reader(), params={"target": AU}))[0] == 200
    code, refused = await read(CONFIRM, as_reader(), route_params={"target": AU})
    assert (code, "Grants.Operator" in refused["detail"]) == (403, True)
    assert (await read(CONFIRM, as_producer("bulk"), route_params={"target": AU}))[0] == 403
    assert (await read(CONFIRM, as_operator(), route_params={"target": AU}))[0] == 409  # allowed: nothing held


# --- callbacks go only to the requester's own hosts, signed with its own secret --------------------------------


async def test_a_queue_producer_naming_the_ticketing_host_as_callback_gets_nothing_granted_and_no_callback(
    make_run: Callable[..., Any],
) -> None:
    """The finding: naming a real ticket's id and the ticketing host made the app sign a callback with the ticketing
    secret. Now the request is other's own (its id touches nobody's), and other has no callback hosts: dead-lettered
    CallbackNotAllowed, nothing granted, nothing published to call back."""
    run: Run = await make_run(
        GRANTS_WEBHOOK_SECRET=SECRET,
        GRANTS_OUTCOMES_TOPIC="grant-outcomes",
        GRANTS_CALLBACK_HOSTS='{"ticketing": ["itsm.example.com"]}',
    )
    forged = grant("RITM0010001", system="other", callback={"url": "https://itsm.example.com/api/callback"})
    outcomes = await run.deliver(forged, producer="other")
    assert (outcomes["m-1"]["reason"], outcomes["m-1"]["producer"]) == ("CallbackNotAllowed", "other")
    assert run.writes() == []
    assert run.app.callbacks is not None
    assert run.app.callbacks.subscription.stats.sent == 0


async def test_each_producer_is_called_back_on_its_own_hosts_signed_with_its_own_secret(
    make_run: Callable[..., Any],
) -> None:
    """Two ticketing systems, each with its own secret: itsm's ticket, signed with itsm's secret and naming it, is
    accepted as itsm's; its callback is signed with itsm's secret (its receiver takes it; ticketing's would not);
    ticketing's secret does not sign for itsm."""
    clock = ManualClock(start=float(int(time.time())))
    registry = {
        "producers": [
            {"name": "ticketing", "system": "ticketing", "secretSetting": "GRANTS_WEBHOOK_SECRET"},
            {"name": "itsm", "system": "ticketing", "secretSetting": "ITSM_SECRET"},
            {"name": "bulk", "system": "bulk", "queue": "grant-membership"},
        ]
    }
    itsm_receiver = receiver_example.Receiver(secret=ITSM_SECRET, out=io.StringIO(), clock=clock)
    ticketing_receiver = receiver_example.Receiver(secret=SECRET, out=io.StringIO(), clock=clock)
    try:
        run: Run = await make_run(
            GRANTS_PRODUCERS=json.dumps(registry),
            GRANTS_WEBHOOK_SECRET=SECRET,
            ITSM_SECRET=ITSM_SECRET,
            GRANTS_OUTCOMES_TOPIC="grant-outcomes",
            GRANTS_CALLBACK_LOOPBACK="true",
        )
        run.clock.advance_to(clock())
        ticket = message(
            requestId="INC-7",
            source={"system": "ticketing"},
            callback={"url": f"http://127.0.0.1:{itsm_receiver.port}/cb"},
        )
        assert (await webhook(run, ticket, secret=SECRET, producer="itsm"))[0] == 401  # not itsm's secret
        status, accepted = await webhook(run, ticket, secret=ITSM_SECRET, producer="itsm")
        assert (status, accepted["producer"]) == (202, "itsm")
        await run.app.drain()
        await run.app.drain_callbacks()
        assert itsm_receiver.deliveries == 1
        assert list(itsm_receiver.applied) == [next(iter(itsm_receiver.applied))]  # its signature checked out
        assert ticketing_receiver.deliveries == 0
    finally:
        itsm_receiver.close()
        ticketing_receiver.close()


# --- bulk jobs belong to their submitter --------------------------------------------------------------------------


def row(job: str, number: int, rows: int) -> dict[str, Any]:
    return {"bulkJob": job, "jobRow": number, "jobRows": rows}


async def test_another_senders_rows_never_claim_hide_or_reopen_a_job(make_run: Callable[..., Any]) -> None:
    """Job q4 of producer bulk has two rows, the second dead-lettered. Producer ops sends rows of a job it also calls
    q4 (before and after), one of them granted where bulk's failed: bulk's job still says 2 rows, 1 failed, done;
    ops's rows are its own job's. A row of bulk's own past its row count is refused and reopens nothing."""
    run: Run = await make_run()
    ops = run.queue_of("ops")
    ops.send(grant("q4:2", system="bulk"), message_id="ops-q4-2", application_properties=row("q4", 2, 5))
    await run.app.drain()
    run.queue.send(grant("q4:1", system="bulk"), message_id="q4-1", application_properties=row("q4", 1, 2))
    unknown = {"id": "00000000-0000-4000-8000-000000000000", "type": "user"}
    run.queue.send(
        grant("q4:2", system="bulk", member=unknown), message_id="q4-2", application_properties=row("q4", 2, 2)
    )
    await run.app.drain()
    run.queue.send(
        grant("q4:3", system="bulk", member={"id": USER_2, "type": "user"}),
        message_id="q4-3",
        application_properties=row("q4", 3, 2),
    )
    await run.app.drain()
    assert run.app.outcomes()["q4-3"]["reason"] == "InvalidJobRow"
    code, job = await read(JOB, as_producer("bulk"), route_params={"jobId": "q4"})
    assert code == 200
    assert (job["producer"], job["rows"], job["terminal"], job["done"], job["succeeded"]) == ("bulk", 2, 2, True, 1)
    assert [r["requestId"] for r in job["failed"]] == ["q4:2"]
    code, theirs = await read(JOB, as_producer("ops"), route_params={"jobId": "q4"})
    assert (theirs["producer"], theirs["rows"], theirs["done"]) == ("ops", 5, False)
    code, ambiguous = await read(JOB, as_operator(), route_params={"jobId": "q4"})
    assert (code, sorted(ambiguous["producers"])) == (409, ["bulk", "ops"])


async def test_a_row_claiming_another_row_count_is_rejected_from_the_count(make_run: Callable[..., Any]) -> None:
    """The job's size is fixed by its first row: a later row of the same producer claiming 10 rows does not reopen
    the finished 1-row job; it is listed as rejected."""
    run: Run = await make_run()
    run.queue.send(grant("j:1", system="bulk"), message_id="j-1", application_properties=row("j", 1, 1))
    await run.app.drain()
    run.queue.send(
        grant("j:2", system="bulk", member={"id": USER_2, "type": "user"}),
        message_id="j-2",
        application_properties=row("j", 2, 10),
    )
    await run.app.drain()
    code, job = await read(JOB, as_producer("bulk"), route_params={"jobId": "j"})
    assert (code, job["rows"], job["done"], job["rejected"]) == (200, 1, True, [{"requestId": "j:2", "jobRow": 2}])


# --- what was recorded before producers had names ---------------------------------------------------------------


async def test_a_status_recorded_before_producers_had_names_is_the_producer_of_its_source(
    make_run: Callable[..., Any],
) -> None:
    run: Run = await make_run()
    legacy = {"requestId": "OLD-1", "status": "granted", "sourceSystem": "ticketing", "attempts": 1}
    table = run.app.services.ledger._table
    await table.create_entity(
        {
            "PartitionKey": table_key("request", "OLD-1"),
            "RowKey": "status",
            "requestId": "OLD-1",
            "status": "granted",
            "record": json.dumps(legacy),
        }
    )
    code, own = await read(STATUS, as_producer("ticketing"), route_params={"requestId": "OLD-1"})
    assert (code, own["producer"], own["status"]) == (200, "ticketing", "granted")
    assert (await read(STATUS, as_producer("itsm"), route_params={"requestId": "OLD-1"}))[0] == 404
    code, read_all = await read(STATUS, as_operator(), route_params={"requestId": "OLD-1"})
    assert (code, read_all["producer"]) == (200, "ticketing")


def test_the_registry_can_be_a_file_in_the_package(tmp_path: Path) -> None:
    file = tmp_path / "producers.json"
    file.write_text(json.dumps({"producers": [{"name": "itsm", "system": "ticketing", "queue": "grants-itsm"}]}))
    registry: Producers = Settings.from_env({"GRANTS_PRODUCERS": str(file)}).producers
    assert [p.name for p in registry] == ["itsm"]
    assert registry.origin == str(file)
