"""Outcome events and signed callbacks end to end, through the registered functions on the local host: the signed
webhook, the grant trigger against the Graph double, the outcomes topic, the callback triggers, and a callback
receiver on loopback (examples/callback_receiver.py) that checks the signature and the timestamp window. Time is
a ManualClock: retry backoff costs no real time."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import azure.functions as func
import pytest

import function_app
from grants_cli.dlq import resubmitted_copy
from grants_local.app import LocalApp, LocalCallbacks, local_app
from grants_local.azurite import AzuriteTables, new_ledger_table
from grants_local.graph_double import GraphDouble
from grants_local.host import LocalHost, registered_function
from grants_local.queue import ManualClock
from shared.core.messaging import DeadLetter, callback_copy_id
from shared.core.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from shared.runtime import services
from tests.conftest import AU, HELPDESK_TEMPLATE, USER, USER_2, body, settings_for
from tests.test_function_app import CrashingActions

WEBHOOK = registered_function(function_app.app, "grant_webhook")
GRANT = registered_function(function_app.app, "grant_membership")
SECRET = "s3cret-for-tests-only-0123456789abcdef"
ROOT = Path(__file__).resolve().parent.parent


def _receiver_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("callback_receiver", ROOT / "examples" / "callback_receiver.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("callback_receiver", module)
    spec.loader.exec_module(module)
    return module


receiver_example = _receiver_module()


class Harness:
    """The app on the local host with the outcomes topic, and a callback receiver on loopback."""

    def __init__(self, app: LocalApp, receiver: Any) -> None:
        self.app, self.receiver = app, receiver
        assert app.callbacks is not None
        self.callbacks: LocalCallbacks = app.callbacks
        self.clock = app.clock
        assert isinstance(self.clock, ManualClock)

    @property
    def callback_url(self) -> str:
        return f"http://127.0.0.1:{self.receiver.port}/callbacks/grants"

    async def post(self, document: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        raw = json.dumps(document).encode()
        timestamp = str(int(self.clock()))
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(secret=SECRET, timestamp=timestamp, body=raw),
        }
        response = await WEBHOOK(func.HttpRequest("POST", "http://localhost/api/grants", headers=headers, body=raw))
        return response.status_code, json.loads(response.get_body())

    def events(self) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        """What the outcomes topic accepted: (MessageId, application properties but the app's seal, which each
        carries, body as JSON)."""
        accepted = self.callbacks.topic.accepted
        assert all(str(props.get("seal", "")).startswith("v1.") for _, props, _ in accepted)
        return [(mid, {k: v for k, v in props.items() if k != "seal"}, json.loads(raw)) for mid, props, raw in accepted]


def ticket(callback_url: str | None, number: str = "RITM0010001", **extra: Any) -> dict[str, Any]:
    document = {
        "ticketNumber": number,
        "requester": "alice@contoso.com",
        "approver": "j.smith@contoso.com",
        "target": {"type": "directoryRole", "roleTemplateId": HELPDESK_TEMPLATE},
        "member": USER_2,
        "summary": "Helpdesk Administrator for the night shift",
        **extra,
    }
    if callback_url is not None:
        document["callbackUrl"] = callback_url
    return document


@pytest.fixture
def receiver_output() -> io.StringIO:
    return io.StringIO()


def by_request(outcomes: Mapping[str, Mapping[str, Any]], request_id: str) -> Mapping[str, Any]:
    """The one terminal outcome of `request_id` (webhook requests have derived MessageIds)."""
    (record,) = (record for record in outcomes.values() if record["requestId"] == request_id)
    return record


@pytest.fixture
async def make_harness(
    graph: GraphDouble, receiver_output: io.StringIO, azurite: AzuriteTables
) -> AsyncIterator[Callable[..., Any]]:
    """Builds the harness: retries 10 s apart (doubling, jittered) up to 4 attempts, on a manual clock."""
    async with AsyncExitStack() as stack:

        async def make(*, fail: int = 0, **env: str) -> Harness:
            clock = ManualClock(start=float(int(time.time())))  # whole seconds: datetimes round-trip exactly
            receiver = receiver_example.Receiver(secret=SECRET, fail=fail, out=receiver_output, clock=clock)
            stack.callback(receiver.close)
            settings = settings_for(
                graph,
                GRANTS_WEBHOOK_SECRET=SECRET,
                GRANTS_OUTCOMES_TOPIC="grant-outcomes",
                GRANTS_CALLBACK_HOSTS='{"ticketing": ["itsm.example.com"]}',
                GRANTS_CALLBACK_LOOPBACK="true",
                **({"GRANTS_RETRY_BASE_SECONDS": "10", "GRANTS_MAX_ATTEMPTS": "4"} | env),
            )
            ledger = await new_ledger_table(azurite)
            app = await stack.enter_async_context(local_app(settings, clock=clock, ledger=ledger))
            return Harness(app, receiver)

        yield make


async def test_given_a_signed_ticket_with_a_callback_url_then_granted_one_event_and_one_signed_callback(
    make_harness: Callable[..., Any], receiver_output: io.StringIO
) -> None:
    """Signed ticket with callbackUrl -> 202 -> granted -> exactly one outcome event on the topic -> the callback
    arrives once, signed with the ticketing secret, inside the receiver's timestamp window."""
    h: Harness = await make_harness()
    started = time.monotonic()
    accepted = {"requestId": "RITM0010001", "producer": "ticketing", "status": "accepted"}
    assert await h.post(ticket(h.callback_url)) == (202, accepted)
    await h.app.drain()
    assert by_request(h.app.outcomes(), "RITM0010001")["outcome"] == "granted"
    [(event_id, properties, record)] = h.events()
    assert event_id.startswith("outcome/")
    assert properties == {
        "outcome": "granted",
        "producer": "ticketing",
        "sourceSystem": "ticketing",
        "requestId": "RITM0010001",
        "callbackUrl": h.callback_url,
    }
    line = dict(by_request(h.app.outcomes(), "RITM0010001"))
    assert record == line | {name: record[name] for name in record.keys() - line.keys()}  # the line's, and more:
    assert (record["status"], record["jobId"], record["lastAttemptAt"]) == ("granted", None, line["finishedAt"])
    assert record["intentAt"]  # the status record's fields (status, intentAt, jobId, …)
    await h.app.drain_callbacks()
    assert h.receiver.deliveries == 1
    assert list(h.receiver.applied) == [event_id]
    assert h.receiver.applied[event_id] == record
    [callback] = h.callbacks.outcomes()
    assert (callback["outcome"], callback["status"], callback["attempts"]) == ("delivered", 204, 1)
    assert callback["callbackHost"] == f"127.0.0.1:{h.receiver.port}"
    assert h.callbacks.calls() == ["Complete"]
    printed = receiver_output.getvalue()
    assert "-> 204 signature ok, 0 s old" in printed
    assert f"X-Grants-Event-Id: {event_id}" in printed
    assert time.monotonic() - started < 10  # no real waiting anywhere


async def test_a_callback_retry_resubmitted_before_its_time_is_not_posted_until_then(
    make_harness: Callable[..., Any],
) -> None:
    """A receiver that fails once; the callback's retry copy is due up to two hours later. A copy of it as ``dlq
    resubmit`` makes one of a sealed message (every property, its MessageId as resubmittedFrom), sent at once, is
    delivered at once: nothing is POSTed, it is queued again for the retry's time (deferred). Nothing reaches the
    receiver before that time; then the event is applied, once."""
    h: Harness = await make_harness(fail=1, GRANTS_RETRY_BASE_SECONDS="3600", GRANTS_RETRY_MAX_SECONDS="7200")
    await h.post(ticket(h.callback_url))
    await h.app.drain()
    [(event_id, _, record)] = h.events()
    first, retries = h.app.callback_hosts()
    await first.drain(until=h.clock())
    assert [c["outcome"] for c in h.callbacks.outcomes()] == ["retry_scheduled"]
    (copy,) = h.callbacks.retry_queue.snapshot()["active"]
    due = datetime.fromisoformat(str(copy["applicationProperties"]["notBefore"]))
    assert due > datetime.fromtimestamp(h.clock(), UTC)
    held = DeadLetter(
        sequence_number=copy["sequenceNumber"],
        message_id=copy["messageId"],
        body=base64.b64decode(copy["body"]),
        application_properties=copy["applicationProperties"],
        reason=None,
        description=None,
        delivery_count=0,
        enqueued_time=None,
    )
    resubmitted = resubmitted_copy(held)
    h.callbacks.retry_queue.send(
        resubmitted.body,
        message_id=resubmitted.message_id,
        application_properties=resubmitted.application_properties,
    )
    await retries.drain(until=h.clock())
    early = h.callbacks.outcomes()[-1]
    assert (early["messageId"], early["outcome"], early["status"]) == (resubmitted.message_id, "deferred", None)
    assert h.receiver.deliveries == 1  # the first attempt's 503 only
    await h.app.drain_callbacks()
    assert h.receiver.applied == {event_id: record}
    delivered = [c for c in h.callbacks.outcomes() if c["outcome"] == "delivered"]
    assert delivered
    assert all(datetime.fromisoformat(c["startedAt"]) >= due for c in delivered)


async def test_given_a_receiver_that_fails_twice_then_the_third_attempt_delivers_on_the_retry_policy(
    make_harness: Callable[..., Any],
) -> None:
    h: Harness = await make_harness(fail=2)
    await h.post(ticket(h.callback_url))
    await h.app.drain()
    [(event_id, _, record)] = h.events()
    before, started = h.clock(), time.monotonic()
    await h.app.drain_callbacks()
    assert h.receiver.deliveries == 3
    assert h.receiver.applied == {event_id: record}
    outcomes = [(c["outcome"], c["attempts"]) for c in h.callbacks.outcomes()]
    assert outcomes == [("retry_scheduled", 1), ("retry_scheduled", 2), ("delivered", 3)]
    assert h.callbacks.outcomes()[0]["reason"] == "CallbackFailed"
    assert "the receiver answered 503" in h.callbacks.outcomes()[0]["description"]
    assert h.callbacks.retry_queue.stats.sent == 2
    assert [c["messageId"] for c in h.callbacks.outcomes()] == [
        event_id,
        callback_copy_id(event_id, 2),
        callback_copy_id(event_id, 3),
    ]
    assert h.callbacks.calls() == ["Complete", "Complete", "Complete"]  # each copy scheduled, then completed
    assert h.clock() > before  # the backoff passed on the manual clock...
    assert time.monotonic() - started < 5  # ...not on the wall clock


async def test_given_a_receiver_that_always_fails_then_callback_failed_is_dead_lettered_and_the_grant_stands(
    make_harness: Callable[..., Any], graph: GraphDouble
) -> None:
    h: Harness = await make_harness(fail=1000)
    await h.post(ticket(h.callback_url))
    await h.app.drain()
    await h.app.drain_callbacks()
    assert h.receiver.deliveries == 4  # GRANTS_MAX_ATTEMPTS
    assert h.receiver.applied == {}
    [dead] = h.callbacks.retry_queue.dead_letters()
    assert dead.reason == "CallbackFailed"
    assert dead.description is not None
    assert "gave up after 4 attempts" in dead.description
    assert "The grant itself is unaffected" in dead.description
    assert by_request(h.app.outcomes(), "RITM0010001")["outcome"] == "granted"
    assert graph.members_of(graph.role_id_of(HELPDESK_TEMPLATE) or "") == {USER_2}
    assert h.app.queue.dead_letters() == []


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example/cb",
        "http://itsm.example.com/cb",
        "https://169.254.169.254/metadata/identity/oauth2/token",
        "https://0x7f000001/cb",
        "https://user:pw@itsm.example.com/cb",
        "https://itsm.example.com:8443/cb",
    ],
)
async def test_given_a_disallowed_callback_url_then_the_webhook_answers_400_and_it_is_never_called(
    make_harness: Callable[..., Any], url: str
) -> None:
    h: Harness = await make_harness()
    status, problem = await h.post(ticket(url))
    assert status == 400
    assert [error["pointer"] for error in problem["errors"]] == ["/callbackUrl"]
    assert problem["errors"][0]["detail"].startswith("callback URL not allowed: ")
    assert h.app.queue.stats.sent == 0
    await h.app.drain()
    await h.app.drain_callbacks()
    assert h.events() == []
    assert h.receiver.deliveries == 0


async def test_given_callbacks_are_not_enabled_then_a_callback_url_is_refused(
    make_run: Callable[..., Any],
) -> None:
    from tests.test_webhook import call

    run = await make_run(GRANTS_WEBHOOK_SECRET=SECRET)
    status, problem, _ = await call(run, ticket("https://itsm.example.com/cb"))
    assert (status, problem["errors"]) == (
        400,
        [{"pointer": "/callbackUrl", "detail": "callbacks are not enabled on this app"}],
    )


async def test_given_a_contract_body_with_callback_url_then_it_travels_with_the_message(
    make_harness: Callable[..., Any],
) -> None:
    h: Harness = await make_harness()
    document = json.loads(body(requestId="INC0000042", source={"system": "ticketing", "reference": "INC0000042"}))
    status, _ = await h.post(document | {"callback": {"url": h.callback_url}})
    assert status == 202
    queued = h.app.queue.receive()
    assert queued is not None
    assert json.loads(queued.body)["callback"] == {"url": h.callback_url}
    h.app.queue.abandon(queued.lock_token)
    await h.app.drain()
    await h.app.drain_callbacks()
    assert [record["requestId"] for record in h.receiver.applied.values()] == ["INC0000042"]


async def test_given_a_settlement_redelivered_after_a_crash_then_one_event_is_published_and_one_callback_sent(
    make_harness: Callable[..., Any], graph: GraphDouble
) -> None:
    """The host dies after the event was published and before Complete: the redelivery finds the membership in
    place (already_member), publishes the same MessageId, and the topic's duplicate detection keeps one."""
    h: Harness = await make_harness()
    await h.post(ticket(h.callback_url))
    crashed = CrashingActions(h.app.actions, crash_on="complete")
    host = LocalHost(queue=h.app.queue, function=GRANT, actions=crashed, clock=h.clock)
    await host.drain()
    assert host.failed_invocations == 0  # the settlement failure ends in an unsettled line, not a raise
    assert by_request(h.app.outcomes(), "RITM0010001")["outcome"] == "already_member"
    assert (h.callbacks.topic.stats.sent, h.callbacks.topic.stats.duplicates_dropped) == (1, 1)
    [(_, properties, record)] = h.events()
    assert (properties["outcome"], record["outcome"], record["attempts"]) == ("granted", "granted", 1)
    await h.app.drain_callbacks()
    assert h.receiver.deliveries == 1


async def test_given_the_event_cannot_be_published_then_it_waits_for_its_lock_expiry_and_is_never_completed(
    make_harness: Callable[..., Any], graph: GraphDouble
) -> None:
    h: Harness = await make_harness()
    h.callbacks.publisher.fail_next(1000)
    h.app.queue.send(body(), message_id="m-1")
    await h.app.drain()
    # never Complete without its event: left to its lock expiry (no immediate abandon), then on the last delivery
    # the queue allows, dead-lettered by the app with the reason (not MaxDeliveryCountExceeded)
    assert h.app.calls() == ["Deadletter"]
    assert h.app.queue.stats.locks_expired == 9
    [dead] = h.app.queue.dead_letters()
    assert dead.reason == "QueueUnavailable"
    assert "event could not be published" in (dead.description or "")
    assert graph.members_of(AU) == {USER}  # the grant itself is idempotent: written, then found in place
    assert h.events() == []
    left = [r for r in h.app.recorder.records if r["outcome"] == "unsettled"]
    assert "could not be published" in left[0]["description"]


async def test_given_a_publish_that_fails_once_then_the_redelivery_publishes_and_completes(
    make_harness: Callable[..., Any],
) -> None:
    h: Harness = await make_harness()
    h.callbacks.publisher.fail_next(1)
    h.app.queue.send(body(), message_id="m-1")
    await h.app.drain()
    assert h.app.calls() == ["Complete"]
    assert (h.app.queue.stats.locks_expired, h.app.queue.stats.abandoned) == (1, 0)
    [(_, properties, record)] = h.events()
    # the first delivery granted and recorded it; its redelivery finds the member in place and tells the recorded
    # outcome (the status keeps what Graph did)
    assert (properties["outcome"], record["outcome"], record["attempts"]) == ("granted", "granted", 2)


async def test_given_events_of_every_kind_then_their_properties_let_subscriptions_filter(
    make_harness: Callable[..., Any], graph: GraphDouble
) -> None:
    """A bulk job's row carries jobId, an HR event's grant hrEventId; a dead letter carries its reason; an unreadable
    body has no sourceSystem; none of them has a callback URL, so the callbacks subscription takes none; a failures
    subscription takes the dead letters."""
    h: Harness = await make_harness()
    failures = h.callbacks.topic.add_subscription("failures", sql_filter="outcome = 'dead_lettered'")
    graph.deny("administrativeUnit")
    job_row = {"bulkJob": "job-7", "jobRow": 1, "jobRows": 1}
    h.app.queue.send(body(requestId="job-7:1"), message_id="job-7:1", application_properties=job_row)
    await h.app.host(function="grant_membership_bulk").drain()  # a job's row: on the bulk queue
    h.app.queue.send(b"{not json", message_id="m-2")
    await services().senders.schedule(  # an HR event's grant: the app's own message (sealed)
        body=body(requestId="~hr:evt-1:0a1b", member={"id": USER_2, "type": "user"}),
        message_id="~hr:evt-1:0a1b",
        application_properties={"hrEvent": "evt-1"},
        scheduled_enqueue_time=h.app.clock.utcnow(),
    )
    await h.app.drain()
    events = {props.get("requestId"): props for _, props, _ in h.events()}
    assert events["~hr:evt-1:0a1b"]["hrEventId"] == "evt-1"
    assert events["job-7:1"] == {
        "outcome": "dead_lettered",
        "reason": "Forbidden",
        "producer": "ops",
        "sourceSystem": "bulk",
        "requestId": "job-7:1",
        "jobId": "job-7",
    }
    assert events[None] == {"outcome": "dead_lettered", "reason": "InvalidJson", "producer": "bulk"}
    assert failures.stats.sent == 3
    assert h.callbacks.subscription.stats.sent == 0
    assert h.callbacks.topic.stats.unmatched == 0


async def test_given_a_dry_run_then_would_grant_is_published_and_nothing_is_written(
    make_harness: Callable[..., Any], graph: GraphDouble
) -> None:
    h: Harness = await make_harness()
    h.app.queue.send(body(requestId="dry-1", dryRun=True), message_id="dry-1")
    await h.app.drain()
    [(_, properties, record)] = h.events()
    assert (properties["outcome"], record["dryRun"]) == ("would_grant", True)
    assert graph.members_of(AU) == set()


async def test_given_a_request_naming_a_callback_its_producer_may_not_use_then_nothing_is_granted_or_called(
    make_harness: Callable[..., Any], graph: GraphDouble
) -> None:
    """A producer on a queue may name a callback too; bulk has no callback hosts (and no secret to sign with), so
    its request is dead-lettered CallbackNotAllowed before any Graph write, and no callback is ever attempted."""
    h: Harness = await make_harness()
    h.app.queue.send(body(callback={"url": h.callback_url}), message_id="m-1")
    await h.app.drain()
    await h.app.drain_callbacks()
    assert h.app.outcomes()["m-1"]["reason"] == "CallbackNotAllowed"
    assert graph.members_of(AU) == set()
    assert h.receiver.deliveries == 0
    assert h.callbacks.subscription.dead_letters() == []


async def test_given_a_redirect_then_it_is_not_followed_and_the_callback_is_dead_lettered_at_once(
    make_harness: Callable[..., Any],
) -> None:
    from grants_local._http import LoopbackServer, Request, Response

    seen: list[Request] = []

    def redirect(request: Request) -> Response:
        seen.append(request)
        return Response(302, None, {"Location": "http://127.0.0.1:9/elsewhere"})

    h: Harness = await make_harness()
    with _closing(LoopbackServer(redirect)) as server:
        await h.post(ticket(f"http://127.0.0.1:{server.port}/cb"))
        await h.app.drain()
        await h.app.drain_callbacks()
    assert len(seen) == 1
    [dead] = h.callbacks.subscription.dead_letters()
    assert "answered 302 (a redirect; redirects are not followed)" in (dead.description or "")


class _closing:
    def __init__(self, server: Any) -> None:
        self.server = server

    def __enter__(self) -> Any:
        return self.server

    def __exit__(self, *exc: object) -> None:
        self.server.close()


def test_the_receivers_own_check_refuses_tampering_staleness_and_the_future() -> None:
    verify = receiver_example.verify
    raw = b'{"requestId":"RITM1"}'
    good = sign(secret=SECRET, timestamp="1700000000", body=raw)
    assert verify(secret=SECRET, timestamp="1700000000", signature=good, body=raw, now=1_700_000_300) is None
    assert "does not match" in verify(
        secret=SECRET, timestamp="1700000000", signature=good, body=raw + b" ", now=1_700_000_000
    )
    assert "older than 300" in verify(
        secret=SECRET, timestamp="1700000000", signature=good, body=raw, now=1_700_000_301
    )
    assert "future" in verify(secret=SECRET, timestamp="1700000000", signature=good, body=raw, now=1_699_999_969)
