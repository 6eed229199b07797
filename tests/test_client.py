"""The producer client (``client/``, package `grants_client`) against the app: every message it makes is one the JSON
Schema and the app's parser accept (and every one it refuses, both refuse); over real HTTP against the app's real
serve-local it sends as a queue producer and as webhook producers and follows requests, jobs of rows and HR events to
their end; its errors are typed and one line each. azure-servicebus runs for real up to the connection (a refused
address): there is no AMQP Service Bus here."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import io
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from grants_client import (
    LOCAL_WEBHOOK_SECRET,
    AdministrativeUnit,
    ConfigError,
    DirectoryRole,
    GrantRequest,
    GrantsError,
    InvalidRequest,
    Member,
    NotAuthorized,
    NotFound,
    QueueSender,
    RequestIdConflict,
    RequestStatus,
    ScopedRole,
    StatusApi,
    TimedOut,
    Unavailable,
    Webhook,
    local_token,
    sign,
)
from grants_client._message import check, document_of
from grants_client._status import FAILED, PENDING, SUCCEEDED
from grants_client._tokens import LOCAL_TOKEN_PREFIX
from hypothesis import given, settings
from hypothesis import strategies as st

from grants_local import serve
from grants_local._http import LoopbackServer, Request, Response
from grants_local.token_endpoint import TokenEndpoint
from shared.core import signing
from shared.core.contract import ContractError, parse_grant
from shared.core.statuses import Status
from tests.conftest import TEST_PRODUCERS
from tests.test_contract import VALIDATOR

ROOT = Path(__file__).resolve().parent.parent
CLIENT_README = ROOT / "client" / "README.md"
#: A last-resort guard (seconds) for each wait on serve-local; a run that works never reaches it.
GUARD_SECONDS = 600.0

ALICE = "11111111-1111-4111-8111-111111111111"
ERIN = "12121212-1212-4212-8212-121212121212"
FRANK = "13131313-1313-4313-8313-131313131313"
GRACE = "14141414-1414-4414-8414-141414141414"
EMEA = "ae000000-0000-4000-8000-000000000001"
APAC = "ae000000-0000-4000-8000-000000000002"
HELPDESK_TEMPLATE = "729827e3-9c14-49f7-bb1b-9608f156bbb8"
NOT_ACTIVATED_TEMPLATE = "4d6ac14f-3453-41d0-bef9-a3e0c569773a"  # License Administrator, not activated in the seed
ITSM_SECRET = "itsm-signs-its-own-webhook-requests-with-this"


# --- the message: the contract's rules, in step with the JSON Schema and the app's parser -----------------------


def request(**fields: Any) -> GrantRequest:
    """A valid request (Frank into APAC, from producer ``other``), any field replaced."""
    defaults: dict[str, Any] = {
        "request_id": "client-1",
        "source_system": "other",
        "target": AdministrativeUnit(id=APAC),
        "member": Member(id=FRANK, type="user"),
    }
    return GrantRequest(**(defaults | fields))


def written(**fields: Any) -> dict[str, Any]:
    """The document the client writes for `fields` (`document_of`), whether or not it accepts them."""
    unchecked = object.__new__(GrantRequest)
    for field in dataclasses.fields(GrantRequest):
        if field.init:
            default = field.default if field.default is not dataclasses.MISSING else None
            object.__setattr__(unchecked, field.name, fields.get(field.name, default))
    return document_of(unchecked)


guids = st.one_of(
    st.uuids().map(str),
    st.uuids().map(lambda value: str(value).upper()),
    st.sampled_from(["", "x", "../../users/1", ALICE + "\n", " " + ALICE, ALICE[:-1] + "g", ALICE.replace("-", "")]),
)
maybe_guids = st.one_of(st.none(), guids)
request_ids = st.one_of(
    st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}\Z"),
    st.sampled_from(["", "~expire:RITM1", "a b", "x" * 129, "x" * 128, "RITM\n", "b\u00fccher", "a/../b", ".x"]),
)


def texts(limit: int) -> st.SearchStrategy[str | None]:
    return st.one_of(
        st.none(),
        st.text(max_size=12),
        st.integers(limit - 1, limit + 1).map(lambda size: "\u00e9" * size),
        st.sampled_from(["a\nb", "tab\there", "\x85", "\u2028", "\ud800", "\x1b[31m", "ok \u00fc \U0001f600"]),
    )


zones = st.sampled_from(
    [UTC, timezone(timedelta(hours=14)), timezone(timedelta(hours=-14)), timezone(timedelta(hours=5, seconds=30))]
)
times = st.one_of(
    st.none(),
    st.datetimes(min_value=datetime(1995, 1, 1), max_value=datetime(2105, 1, 1), timezones=zones),
    st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1)),  # naive: refused
    st.sampled_from(
        [
            datetime(2000, 1, 1, tzinfo=UTC),
            datetime(2100, 1, 1, tzinfo=UTC),
            datetime(2099, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
            datetime(2000, 1, 1, tzinfo=timezone(timedelta(hours=1))),  # 1999 in UTC
            datetime(2099, 12, 31, 23, tzinfo=timezone(timedelta(hours=-2))),  # 2100 in UTC
            datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))),  # before year 1 in UTC
            datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-2))),  # after year 9999 in UTC
        ]
    ),
)
targets = st.one_of(
    st.builds(AdministrativeUnit, id=guids),
    st.builds(DirectoryRole, id=maybe_guids, role_template_id=maybe_guids),
    st.builds(ScopedRole, role_template_id=guids, administrative_unit_id=guids),
)
members = st.builds(
    Member, id=guids, type=st.sampled_from([None, "user", "group", "servicePrincipal", "device", "robot"])
)
callback_urls = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "https://itsm.example.com/api/grants/callback",
            "http://127.0.0.1:8765/callbacks/grants",
            "ftp://x.example/",
            "https://x.example/a b",
            "https://b\u00fccher.example/",
            "https://",
            "https://x.example/" + "a" * 2030,
            "https://x.example/" + "a" * 2031,
        ]
    ),
)
grant_fields = st.fixed_dictionaries(
    {
        "request_id": request_ids,
        "target": targets,
        "member": members,
        "source_system": st.sampled_from(["hr", "ticketing", "bulk", "other", "crm"]),
    },
    optional={
        "action": st.sampled_from(["add", "remove", "grant"]),
        "source_reference": texts(256),
        "requested_by": texts(256),
        "reason": texts(1024),
        "expires_at": times,
        "requested_at": times,
        "dry_run": st.booleans(),
        "callback_url": callback_urls,
    },
)


@given(grant_fields)
@settings(max_examples=400)
def test_the_client_accepts_exactly_the_requests_the_schema_and_the_apps_parser_accept(fields: dict[str, Any]) -> None:
    """Whatever the fields, the client's verdict is the JSON Schema's and the app's parser's on the document it writes;
    a request it makes is that document, and the app reads it back to the same document."""
    document = written(**fields)
    try:
        made: GrantRequest | None = GrantRequest(**fields)
    except InvalidRequest as refusal:
        made = None
        assert refusal.problems == tuple(check(document))
        assert "\n" not in str(refusal)
    try:
        command = parse_grant(json.dumps(document).encode())
    except ContractError:
        command = None
    schema_says_valid = VALIDATOR.is_valid(copy.deepcopy(document))
    assert (made is not None) == (command is not None) == schema_says_valid, document
    if made is not None:
        assert made.document() == document
        assert parse_grant(made.body) == command


def test_an_invalid_request_raises_before_anything_is_sent_naming_every_bad_field_in_one_line() -> None:
    with pytest.raises(InvalidRequest) as refused:
        GrantRequest(
            request_id="RITM 1",
            source_system="ticketing",
            target=ScopedRole(role_template_id=HELPDESK_TEMPLATE, administrative_unit_id="../../x"),
            member=Member(id=ALICE, type="device"),
            reason="line\nbreak",
            expires_at=datetime(2027, 1, 31),  # naive
        )
    assert [problem.pointer for problem in refused.value.problems] == [
        "/requestId",
        "/target/administrativeUnitId",
        "/member/type",
        "/reason",
        "/expiresAt",
    ]
    assert str(refused.value) == (
        "invalid grant request: requestId must be 1 to 128 characters: letters, digits and . _ : @ -, starting with a "
        'letter or digit; target.administrativeUnitId must be a GUID (8-4-4-4-12 hexadecimal digits), got "../../x"; '
        "member.type device cannot be a member of a role scoped to an administrative unit (it takes: group, user); "
        "reason must not contain control characters or line breaks; expiresAt must be an aware datetime (with a time "
        "zone) between 2000-01-01 and 2100-01-01 (UTC)"
    )


def test_the_message_id_is_the_same_for_the_same_request_and_another_for_other_content_under_the_same_id() -> None:
    first, again = request(reason="night shift"), request(reason="night shift")
    other = request(reason="day shift")
    assert first.message_id == again.message_id
    assert re.fullmatch(r"client-1:[0-9a-f]{16}", first.message_id)
    assert other.message_id != first.message_id  # reaches the app, refused as a conflict, never dropped as a copy
    long = request(request_id="r" * 128)
    assert re.fullmatch(r"[0-9a-f]{64}", long.message_id)  # Service Bus takes at most 128 characters


def test_times_are_sent_in_utc_and_requested_at_only_when_given() -> None:
    made = request(expires_at=datetime(2027, 1, 31, 2, tzinfo=timezone(timedelta(hours=2))))
    assert made.document()["expiresAt"] == "2027-01-31T00:00:00Z"
    assert "requestedAt" not in made.document()  # the app dates it at first arrival: a retried body is the same


@given(st.text(min_size=32, max_size=64), st.integers(0, 2**40), st.binary(max_size=200))
def test_the_signature_is_the_one_the_app_checks(secret: str, timestamp: int, body: bytes) -> None:
    assert sign(secret=secret, timestamp=timestamp, body=body) == signing.sign(
        secret=secret, timestamp=timestamp, body=body
    )


def test_the_clients_local_settings_are_serve_locals() -> None:
    assert LOCAL_WEBHOOK_SECRET == serve.LOCAL_WEBHOOK_SECRET
    assert LOCAL_TOKEN_PREFIX == serve.LOCAL_TOKEN_PREFIX


def test_every_status_the_client_names_is_classified_as_the_app_classifies_it() -> None:
    for name in PENDING | SUCCEEDED | FAILED:
        status = Status(name)
        assert (name in SUCCEEDED or name in FAILED, name in SUCCEEDED) == (status.terminal, status.succeeded), name
        assert status.pending == (name in PENDING), name


def test_a_status_the_client_does_not_know_is_as_terminal_as_the_answer_says() -> None:
    """A status added to the app later (say ``released``) is followed by the answer's own ``terminal``."""
    told = RequestStatus.from_json({"requestId": "r", "status": "released", "terminal": True, "succeeded": True})
    untold = RequestStatus.from_json({"requestId": "r", "status": "released"})
    assert (told.terminal, told.succeeded) == (True, True)
    assert (untold.terminal, untold.succeeded) == (False, False)  # an older answer: keep following


# --- against the app's serve-local, over real HTTP -------------------------------------------------------------


#: The registry serve-local runs with: the tests' (each producer on its own queue, `itsm` too), `itsm` also signing
#: webhook requests with a secret of its own, so two producers sign (the webhook needs X-Grants-Producer).
REGISTRY: dict[str, Any] = copy.deepcopy(TEST_PRODUCERS)
[ITSM] = [producer for producer in REGISTRY["producers"] if producer["name"] == "itsm"]
ITSM["secretSetting"] = "GRANTS_ITSM_SECRET"


@dataclass
class ServeLocal:
    """A running serve-local: its port, and the outcome lines it printed."""

    port: int
    out: io.StringIO

    def printed(self, pattern: str) -> str:
        """The first line printed matching `pattern`, once printed."""
        deadline = time.monotonic() + GUARD_SECONDS
        while time.monotonic() < deadline:
            found = re.search(pattern, self.out.getvalue(), re.MULTILINE)
            if found:
                return found.group(0)
            time.sleep(0.05)
        raise AssertionError(f"serve-local printed no line matching {pattern!r}:\n{self.out.getvalue()}")


@pytest.fixture(scope="module")
def app() -> Iterator[ServeLocal]:
    """The app's serve-local (`grants_local.serve.serve_local`) on a free loopback port, in a thread of its own (the
    client is synchronous), for the module; stopped after it, exiting 0."""
    out, ready, ports, ended = io.StringIO(), threading.Event(), list[int](), dict[str, Any]()
    control: dict[str, Any] = {}
    env = {"GRANTS_PRODUCERS": json.dumps(REGISTRY), "GRANTS_ITSM_SECRET": ITSM_SECRET}

    async def run() -> int:
        control["loop"], control["stop"] = asyncio.get_running_loop(), asyncio.Event()

        def started(port: int) -> None:
            ports.append(port)
            ready.set()

        return await serve.serve_local(out, port=0, env=env, stop=control["stop"], ready=started)

    def thread() -> None:
        try:
            ended["code"] = asyncio.run(run())
        except BaseException as error:
            ended["error"] = error
            ready.set()

    runner = threading.Thread(target=thread, name="serve-local", daemon=True)
    runner.start()
    assert ready.wait(GUARD_SECONDS), "serve-local did not start"
    assert ports, f"serve-local ended before it was ready: {ended}"
    try:
        yield ServeLocal(ports[0], out)
    finally:
        control["loop"].call_soon_threadsafe(control["stop"].set)
        runner.join(GUARD_SECONDS)
    assert ended == {"code": 0}


def test_the_readme_example_runs_as_written_against_serve_local(app: ServeLocal) -> None:
    """client/README.md's first example, on serve-local's port: the ticket is granted and followed to its end."""
    [example, *_] = re.findall(r"```python\n(.*?)```", CLIENT_README.read_text(encoding="utf-8"), re.DOTALL)
    assert len(example.strip().splitlines()) <= 14  # about ten lines
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(example.replace(".serve_local(", f".serve_local(port={app.port}, "), "README", "exec"), {})  # noqa: S102
    assert printed.getvalue().startswith(
        f"granted True added user {ALICE} to directory role with template {HELPDESK_TEMPLATE}"
    )


def test_the_readmes_other_examples_are_python() -> None:
    for example in re.findall(r"```python\n(.*?)```", CLIENT_README.read_text(encoding="utf-8"), re.DOTALL):
        compile(example, "README", "exec")


def test_a_queue_producers_request_is_granted_and_followed_to_its_end_as_that_producers(app: ServeLocal) -> None:
    made = request(
        request_id="client-queue-1", target=AdministrativeUnit(id=APAC), member=Member(id=FRANK, type="user")
    )
    with QueueSender.serve_local(queue="grants-other", port=app.port) as queue:
        sent = queue.send(made)
    with StatusApi.serve_local(producer="other", port=app.port) as api:
        status = api.wait(made.request_id, timeout=GUARD_SECONDS, interval=0.05)
    assert (sent.request_id, sent.message_id, sent.queue, sent.duplicate) == (
        "client-queue-1",
        made.message_id,
        "grants-other",
        False,
    )
    assert (status.status, status.terminal, status.succeeded, status.producer) == ("granted", True, True, "other")
    assert status.description == f"added user {FRANK} to administrative unit {APAC}"
    assert status.record["messageId"] == made.message_id


def test_the_same_request_sent_again_is_dropped_by_duplicate_detection_and_other_content_ends_as_a_conflict(
    app: ServeLocal,
) -> None:
    made = request(request_id="client-queue-2", target=AdministrativeUnit(id=APAC), member=Member(id=GRACE))
    changed = request(request_id="client-queue-2", target=AdministrativeUnit(id=EMEA), member=Member(id=GRACE))
    with QueueSender.serve_local(queue="grants-other", port=app.port) as queue:
        first, again = queue.send(made), queue.send(made)
        with StatusApi.serve_local(producer="other", port=app.port) as api:
            status = api.wait(made.request_id, timeout=GUARD_SECONDS, interval=0.05)
        conflicting = queue.send(changed)
    assert (first.duplicate, again.duplicate, again.message_id) == (False, True, first.message_id)
    assert status.status == "granted"
    assert conflicting.duplicate is False  # another MessageId: it reaches the app, which refuses it
    app.printed(r"^grant +dead_lettered +client-queue-2 RequestIdConflict: .*$")


def test_a_webhook_request_is_accepted_with_where_its_status_is_then_followed_to_granted(app: ServeLocal) -> None:
    made = request(
        request_id="RITM0030001",
        source_system="ticketing",
        source_reference="RITM0030001",
        requested_by="alice@contoso.com",
        target=AdministrativeUnit(id=EMEA),
        member=Member(id=GRACE, type="user"),
    )
    with Webhook.serve_local(port=app.port, producer="ticketing") as webhook:
        accepted = webhook.send(made)
    with StatusApi.serve_local(producer="ticketing", port=app.port) as api:
        status = api.wait(accepted.request_id, timeout=GUARD_SECONDS, interval=0.05)
    assert (accepted.request_id, accepted.producer) == ("RITM0030001", "ticketing")
    assert accepted.status_url == f"http://127.0.0.1:{app.port}/api/grants/RITM0030001"
    assert (status.status, status.succeeded, status.record["requestedBy"]) == ("granted", True, "alice@contoso.com")


def test_with_two_signing_producers_the_webhook_is_told_which_one_signed(app: ServeLocal) -> None:
    made = request(request_id="ITSM-1", source_system="ticketing", target=AdministrativeUnit(id=EMEA))
    with Webhook.serve_local(port=app.port, secret=ITSM_SECRET, producer="itsm") as webhook:
        accepted = webhook.send(made)
    with Webhook.serve_local(port=app.port, secret=ITSM_SECRET) as unnamed, pytest.raises(NotAuthorized) as refused:
        unnamed.send(request(request_id="ITSM-2", source_system="ticketing"))
    assert accepted.producer == "itsm"
    assert str(refused.value) == (
        "the webhook answered 401: X-Grants-Producer must name the producer whose secret signed the request"
    )


def test_a_producer_known_by_its_entra_principal_sends_to_the_webhook_with_a_token_and_no_signature(
    app: ServeLocal,
) -> None:
    """serve-local stands in for App Service authentication: ``Bearer local:itsm`` is itsm's principal."""
    made = request(request_id="ITSM-3", source_system="ticketing", target=AdministrativeUnit(id=EMEA))
    with Webhook(url=f"http://127.0.0.1:{app.port}/api/grants", token=local_token("itsm")) as webhook:
        accepted = webhook.send(made)
    assert (accepted.request_id, accepted.producer) == ("ITSM-3", "itsm")


def test_a_wrong_secret_or_a_stale_signature_is_not_authorized_in_one_line(app: ServeLocal) -> None:
    made = request(request_id="RITM0030002", source_system="ticketing")
    wrong = Webhook.serve_local(port=app.port, secret="x" * 32, producer="ticketing")
    stale = Webhook(
        url=f"http://127.0.0.1:{app.port}/api/grants",
        secret=LOCAL_WEBHOOK_SECRET,
        producer="ticketing",
        clock=lambda: time.time() - 400,  # signed 400 s ago
    )
    with wrong, stale:
        with pytest.raises(NotAuthorized) as refused_wrong:
            wrong.send(made)
        with pytest.raises(NotAuthorized) as refused_stale:
            stale.send(made)
    assert str(refused_wrong.value) == (
        "the webhook answered 401: the signature does not match the body and timestamp under that producer's secret"
    )
    assert str(refused_stale.value) == "the webhook answered 401: the request is older than 300 seconds"


def test_what_the_app_refuses_of_a_valid_message_is_invalid_naming_the_field(app: ServeLocal) -> None:
    """The webhook speaks for ticketing only: an HR source is refused 400, the field named."""
    with Webhook.serve_local(port=app.port, producer="ticketing") as webhook, pytest.raises(InvalidRequest) as refused:
        webhook.send(request(request_id="RITM0030003", source_system="hr"))
    assert [problem.pointer for problem in refused.value.problems] == ["/source/system"]
    assert str(refused.value).startswith("the webhook refused the request: the request has invalid fields: /source/")


def test_a_request_id_used_before_with_other_content_is_a_conflict_at_the_webhook(app: ServeLocal) -> None:
    """Once the app has taken the first up (the ledger holds what it asks), the webhook refuses another ask under the
    same id: 409. (Free text and requestedAt are not what a request asks: another reason is the same request.)"""
    with Webhook.serve_local(port=app.port, producer="ticketing") as webhook:
        webhook.send(request(request_id="RITM0030004", source_system="ticketing", reason="first"))
        with StatusApi.serve_local(producer="ticketing", port=app.port) as api:
            api.wait("RITM0030004", timeout=GUARD_SECONDS, interval=0.05)
        with pytest.raises(RequestIdConflict) as refused:
            webhook.send(
                request(request_id="RITM0030004", source_system="ticketing", target=AdministrativeUnit(id=EMEA))
            )
    assert str(refused.value) == (
        "requestId RITM0030004 was used before for a different request; send this one with a new id"
    )


def test_a_dead_lettered_request_is_followed_to_its_end_and_returned_with_its_reason_not_raised(
    app: ServeLocal,
) -> None:
    made = request(
        request_id="client-queue-3",
        target=DirectoryRole(role_template_id=NOT_ACTIVATED_TEMPLATE),
        member=Member(id=ERIN, type="user"),
    )
    with QueueSender.serve_local(queue="grants-other", port=app.port) as queue:
        queue.send(made)
    with StatusApi.serve_local(producer="other", port=app.port) as api:
        status = api.wait(made.request_id, timeout=GUARD_SECONDS, interval=0.05)
    assert (status.status, status.terminal, status.succeeded, status.reason) == (
        "dead_lettered",
        True,
        False,
        "RoleNotActivated",
    )


def test_an_hr_event_is_followed_until_every_row_has_ended(app: ServeLocal) -> None:
    """An HR system's event (its send: serve-local's hr-events queue), followed by the HR producer."""
    import httpx

    event = (ROOT / "examples" / "hr-events.jsonl").read_bytes().splitlines()[0]
    httpx.post(f"http://127.0.0.1:{app.port}/local/hr-events", content=event, trust_env=False).raise_for_status()
    with StatusApi.serve_local(producer="hr", port=app.port) as api:
        progress = api.wait_hr_event("wd-evt-1001", timeout=GUARD_SECONDS, interval=0.05)
    assert (progress.kind, progress.rows, progress.terminal, progress.done) == ("hrEvent", 2, 2, True)
    assert (progress.succeeded, progress.failed, progress.producer) == (2, (), "hr")


def test_a_bulk_job_is_followed_until_every_row_has_ended(app: ServeLocal) -> None:
    """A job's rows as `grants submit --serve-local` sends them (rows numbered in their application properties), on the
    bulk producer's queue; followed by that producer, a failed row's status among them."""
    import httpx

    rows = [
        request(request_id="client-job:1", source_system="bulk", member=Member(id=ALICE, type="user")),
        request(
            request_id="client-job:2",
            source_system="bulk",
            target=DirectoryRole(role_template_id=NOT_ACTIVATED_TEMPLATE),
        ),
    ]
    batch = [
        {
            "body": row.body.decode(),
            "messageId": row.message_id,
            "applicationProperties": {"bulkJob": "client-job", "jobRow": number, "jobRows": len(rows)},
        }
        for number, row in enumerate(rows, start=1)
    ]
    url = f"http://127.0.0.1:{app.port}/local/queues/grant-membership-bulk/messages"
    httpx.post(url, json=batch, trust_env=False).raise_for_status()
    with StatusApi.serve_local(producer="ops", port=app.port) as api:
        progress = api.wait_job("client-job", timeout=GUARD_SECONDS, interval=0.05)
    assert (progress.kind, progress.rows, progress.terminal, progress.done, progress.succeeded) == (
        "bulk",
        2,
        2,
        True,
        1,
    )
    [failed] = progress.failed
    assert (failed.request_id, failed.status, failed.reason, failed.terminal) == (
        "client-job:2",
        "dead_lettered",
        "RoleNotActivated",
        True,
    )


def test_following_a_request_nobody_sent_times_out_saying_so(app: ServeLocal) -> None:
    with StatusApi.serve_local(producer="other", port=app.port) as api:
        with pytest.raises(NotFound) as unknown:
            api.status("never-sent")
        with pytest.raises(TimedOut) as gave_up:
            api.wait("never-sent", timeout=0.2, interval=0.01)
    assert str(unknown.value) == "no request never-sent is recorded"
    assert (str(gave_up.value), gave_up.value.last) == (
        "request never-sent had not ended after 0.2 s (nothing recorded yet)",
        None,
    )


def test_a_producer_reads_only_its_own_requests(app: ServeLocal) -> None:
    with StatusApi.serve_local(producer="itsm", port=app.port) as api:
        with pytest.raises(NotFound):
            api.status("RITM0030001")  # ticketing's: not itsm's
        with pytest.raises(NotAuthorized) as refused:
            api.status("RITM0030001", producer="ticketing")
    assert str(refused.value) == "the status API answered 403: producer itsm reads only its own requests"


def test_an_id_no_request_can_have_is_refused_without_asking(free_port: int) -> None:
    """Nothing listens on the port: had it asked, the error would be Unavailable."""
    with StatusApi.serve_local(producer="other", port=free_port) as api, pytest.raises(InvalidRequest) as refused:
        api.status("x/../y")
    assert (
        str(refused.value)
        == "'x/../y' is not an id the app gives (1 to 128 of A-Z a-z 0-9 . _ : @ -): nothing was asked"
    )


def test_with_no_serve_local_running_every_part_says_how_to_start_it_in_one_line(free_port: int) -> None:
    expected = (
        f"no serve-local answers on http://127.0.0.1:{free_port}: start it in another terminal with "
        f"`.venv/bin/grants serve-local --port {free_port}`"
    )
    calls: list[Callable[[], object]] = [
        lambda: Webhook.serve_local(port=free_port).send(request(source_system="ticketing")),
        lambda: QueueSender.serve_local(queue="grants-other", port=free_port).send(request()),
        lambda: StatusApi.serve_local(producer="other", port=free_port).status("client-1"),
    ]
    for call in calls:
        with pytest.raises(Unavailable) as unavailable:
            call()
        assert str(unavailable.value) == expected


def test_a_queue_serve_local_does_not_have_is_a_config_error(app: ServeLocal) -> None:
    with QueueSender.serve_local(queue="grants-nobody", port=app.port) as queue, pytest.raises(ConfigError) as wrong:
        queue.send(request())
    assert str(wrong.value).startswith("serve-local has no queue grants-nobody: ")


def test_the_webhook_and_status_api_refuse_plain_http_beyond_this_machine_and_short_secrets() -> None:
    refusals = [
        lambda: Webhook(url="http://func-grants.azurewebsites.net/api/grants", secret="s" * 32),
        lambda: Webhook(url="https://func-grants.azurewebsites.net/api/grants", secret="short"),
        lambda: Webhook(url="https://func-grants.azurewebsites.net/api/grants"),
        lambda: StatusApi(url="http://func-grants.azurewebsites.net", token=lambda: "t"),
    ]
    for refusal in refusals:
        with pytest.raises(ConfigError):
            refusal()


# --- Entra tokens (azure-identity, for real, against a local managed-identity endpoint) -----------------------


@pytest.fixture
def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def api_double() -> Iterator[tuple[str, list[Request]]]:
    """A status API on loopback that answers every request with a granted record, and the requests it received."""
    received: list[Request] = []

    def answer(incoming: Request) -> Response:
        received.append(incoming)
        return Response(200, {"requestId": "RITM1", "producer": "itsm", "status": "granted", "terminal": True})

    server = LoopbackServer(answer)
    try:
        yield f"http://127.0.0.1:{server.port}", received
    finally:
        server.close()


def test_in_azure_the_status_api_is_asked_with_an_entra_token_for_the_apis_scope(
    token_endpoint: TokenEndpoint, api_double: tuple[str, list[Request]]
) -> None:
    from azure.identity import ManagedIdentityCredential

    url, received = api_double
    with StatusApi.azure(url=url, scope="api://grants-api/.default", credential=ManagedIdentityCredential()) as api:
        first, second = api.status("RITM1"), api.status("RITM1")
    tokens = [incoming.headers["Authorization"].removeprefix("Bearer ") for incoming in received]
    assert tokens[0] == tokens[1]
    assert token_endpoint.is_valid(tokens[0], "api://grants-api")
    assert token_endpoint.request_count == 1  # kept until it nears its expiry
    assert (first.status, second.terminal) == ("granted", True)


def test_a_credential_that_gives_no_token_is_not_authorized_in_one_line(
    token_endpoint: TokenEndpoint, monkeypatch: pytest.MonkeyPatch, api_double: tuple[str, list[Request]]
) -> None:
    from azure.identity import ManagedIdentityCredential

    monkeypatch.setenv("IDENTITY_HEADER", "not-the-endpoints")
    url, received = api_double
    with (
        StatusApi.azure(url=url, scope="api://grants-api/.default", credential=ManagedIdentityCredential()) as api,
        pytest.raises(NotAuthorized) as refused,
    ):
        api.status("RITM1")
    assert received == []
    assert str(refused.value).startswith("no token for api://grants-api/.default from ManagedIdentityCredential: ")
    assert "\n" not in str(refused.value)


# --- azure-servicebus, for real up to the connection -----------------------------------------------------------


def test_a_namespace_that_cannot_be_reached_fails_the_send_with_unavailable_within_seconds(free_port: int) -> None:
    """A connection string (the emulator's form, plain AMQP on the port given) to a port that refuses connections."""
    connection = (
        f"Endpoint=sb://127.0.0.1:{free_port};SharedAccessKeyName=producer;SharedAccessKey=not-a-key;"
        "UseDevelopmentEmulator=true"
    )
    started = time.monotonic()
    with (
        QueueSender.from_connection_string(connection_string=connection, queue="grants-itsm") as queue,
        pytest.raises(Unavailable) as unavailable,
    ):
        queue.send(request())
    assert time.monotonic() - started < 60
    assert str(unavailable.value).startswith(
        f"queue grants-itsm in 127.0.0.1:{free_port} could not be reached: ServiceBusConnectionError: "
    )


def test_a_connection_string_azure_servicebus_cannot_read_is_a_config_error_before_any_send() -> None:
    with pytest.raises(ConfigError) as wrong:
        QueueSender.from_connection_string(connection_string="Endpoint=sb://ns/;SharedAccessKeyName=k", queue="q")
    assert str(wrong.value) == (
        "these settings cannot reach Service Bus namespace ns: Connection string must have both SharedAccessKeyName "
        "and SharedAccessKey."
    )


def test_a_producer_identitys_send_to_a_namespace_that_cannot_be_reached_is_unavailable(
    token_endpoint: TokenEndpoint,
) -> None:
    """`QueueSender.azure` (a token credential; TLS on 5671) to this machine, where no namespace listens."""
    from azure.identity import ManagedIdentityCredential

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 5671)) == 0:
            pytest.skip("something listens on 127.0.0.1:5671")
    with (
        QueueSender.azure(namespace="127.0.0.1", queue="grants-itsm", credential=ManagedIdentityCredential()) as queue,
        pytest.raises(Unavailable) as unavailable,
    ):
        queue.send(request())
    assert str(unavailable.value).startswith("queue grants-itsm in 127.0.0.1 could not be reached: ")


def test_every_error_is_a_grants_error() -> None:
    for error in (ConfigError, InvalidRequest, NotAuthorized, NotFound, RequestIdConflict, TimedOut, Unavailable):
        assert issubclass(error, GrantsError)
