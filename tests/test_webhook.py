"""The ticketing webhook through the registered function object: a real `azure.functions.HttpRequest` in, the
message on the in-process grants queue, then the grant trigger against the Graph double."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import azure.functions as func
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import function_app
from grants_local.host import registered_function
from grants_local.queue import LocalQueue, LocalSender, ManualClock
from shared.config import Settings
from shared.core.contract import MAX_MESSAGE_BYTES, encoding_problem, parse_grant
from shared.core.errors import ConfigError
from shared.core.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from shared.handlers.webhook import receive, webhook_message_id
from tests.conftest import AU, HELPDESK_TEMPLATE, USER, USER_2, Run, message, producers

WEBHOOK = registered_function(function_app.app, "grant_webhook")
SECRET = "s3cret-for-tests-only-0123456789abcdef"


def contract(request_id: str = "INC0012345", **extra: Any) -> dict[str, Any]:
    return message(**({"requestId": request_id, "source": {"system": "ticketing", "reference": request_id}} | extra))


def ticket(**extra: Any) -> dict[str, Any]:
    return {
        "ticketNumber": "RITM0010001",
        "requester": "alice@contoso.com",
        "approver": "j.smith@contoso.com",
        "target": {"type": "directoryRole", "roleTemplateId": HELPDESK_TEMPLATE},
        "member": {"id": USER_2, "type": "user"},
        "summary": "Helpdesk Administrator for the night shift",
        **extra,
    }


def request(
    body: bytes,
    *,
    timestamp: float,
    secret: str = SECRET,
    content_type: str = "application/json",
    headers: Mapping[str, str] | None = None,
) -> func.HttpRequest:
    signed = {
        "Content-Type": content_type,
        TIMESTAMP_HEADER: str(int(timestamp)),
        SIGNATURE_HEADER: sign(secret=secret, timestamp=int(timestamp), body=body),
    }
    return func.HttpRequest("POST", "http://localhost/api/grants", headers={**signed, **(headers or {})}, body=body)


async def call(run: Run, body: bytes | dict[str, Any], **options: Any) -> tuple[int, dict[str, Any], str]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await WEBHOOK(request(raw, timestamp=options.pop("timestamp", run.clock()), **options))
    return response.status_code, json.loads(response.get_body()), str(response.mimetype)


@pytest.fixture
async def run(make_run: Callable[..., Any]) -> Run:
    made: Run = await make_run(GRANTS_WEBHOOK_SECRET=SECRET)
    return made


async def test_given_a_signed_contract_body_when_posted_then_202_and_the_message_is_queued_under_its_webhook_id(
    run: Run,
) -> None:
    status, answer, media_type = await call(run, contract())
    accepted = {"requestId": "INC0012345", "producer": "ticketing", "status": "accepted"}
    assert (status, answer, media_type) == (202, accepted, "application/json")
    queued = run.queue.receive()
    assert queued is not None
    received = datetime.fromtimestamp(run.clock(), UTC).isoformat().replace("+00:00", "Z")
    queued_command = parse_grant(queued.body)  # the request as sent, with when it was received
    assert queued_command == parse_grant(json.dumps({**contract(), "requestedAt": received}).encode())
    # under its webhook id, keyed by the app (no producer can send a message under it first)
    assert queued.message_id.startswith(webhook_message_id(parse_grant(queued.body), producer="ticketing") + "~")
    assert queued.message_id.startswith("~webhook:")
    run.queue.abandon(queued.lock_token)


async def test_given_a_zero_padded_timestamp_signed_as_sent_when_posted_then_202(run: Run) -> None:
    """The signature covers the timestamp header's text as sent, not a re-formatted number."""
    body = json.dumps(contract()).encode()
    timestamp = f"{int(run.clock()):012d}"
    headers = {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: sign(secret=SECRET, timestamp=timestamp, body=body)}
    response = await WEBHOOK(request(body, timestamp=run.clock(), headers=headers))
    assert response.status_code == 202


async def test_given_an_accepted_webhook_when_the_queue_is_drained_then_the_member_is_granted(run: Run) -> None:
    await call(run, contract())
    (outcome,) = (await run.deliver()).values()
    assert (outcome["requestId"], outcome["outcome"]) == ("INC0012345", "granted")
    assert outcome["sourceSystem"] == "ticketing"
    assert run.graph.members_of(AU) == {USER}


async def test_given_the_same_webhook_twice_when_posted_then_both_202_and_duplicate_detection_keeps_one(
    run: Run,
) -> None:
    body = json.dumps(contract()).encode()
    first = await call(run, body)
    replayed = await call(run, body)
    assert first[0] == replayed[0] == 202
    assert run.queue.stats.duplicates_dropped == 1
    outcomes = await run.deliver()
    assert [o["requestId"] for o in outcomes.values()] == ["INC0012345"]
    assert run.writes() == [("POST", f"/directory/administrativeUnits/{AU}/members/$ref")]


async def test_given_a_ticket_sent_again_as_a_remove_under_its_request_id_then_409_and_nothing_is_queued(
    run: Run,
) -> None:
    """Issue 13, 3: the same requestId with other content is refused (409), not dropped by duplicate detection."""
    await call(run, contract())
    await run.deliver()
    sent = run.queue.stats.sent
    status, problem, media_type = await call(run, contract(action="remove"))
    assert (status, media_type) == (409, "application/problem+json")
    assert "used before for a different request" in problem["detail"]
    assert run.queue.stats.sent == sent
    assert run.graph.members_of(AU) == {USER}


async def test_given_a_tampered_body_when_posted_then_401_and_nothing_is_queued(
    run: Run, caplog: pytest.LogCaptureFixture
) -> None:
    body = json.dumps(contract()).encode()
    signed = request(body, timestamp=run.clock())
    tampered = body.replace(USER.encode(), USER_2.encode())
    forged = func.HttpRequest("POST", signed.url, headers=dict(signed.headers), body=tampered)
    response = await WEBHOOK(forged)
    problem = json.loads(response.get_body())
    assert (response.status_code, response.mimetype) == (401, "application/problem+json")
    assert problem["detail"] == "the signature does not match the body and timestamp under that producer's secret"
    assert run.queue.stats.sent == 0
    assert "webhook refused an unauthenticated request" in caplog.text
    assert signed.headers[SIGNATURE_HEADER].removeprefix("sha256=") not in caplog.text
    assert SECRET not in caplog.text


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({SIGNATURE_HEADER: ""}, "X-Grants-Signature must be sha256=<64 hexadecimal digits>"),
        ({TIMESTAMP_HEADER: "yesterday"}, "X-Grants-Timestamp must be the unix time in seconds"),
    ],
)
async def test_given_a_missing_signature_or_timestamp_when_posted_then_401(
    run: Run, headers: dict[str, str], detail: str
) -> None:
    status, problem, _ = await call(run, contract(), headers=headers)
    assert (status, problem["detail"]) == (401, detail)
    assert run.queue.stats.sent == 0


async def test_given_a_wrong_secret_when_posted_then_401(run: Run) -> None:
    status, _, _ = await call(run, contract(), secret="another-secret-of-sufficient-length-000")
    assert status == 401


@pytest.mark.parametrize(
    ("age", "status"),
    [(301, 401), (300, 202), (-30, 202), (-31, 401)],
)
async def test_given_a_timestamp_at_the_replay_window_edges_when_posted_then_fresh_ones_pass(
    run: Run, age: int, status: int
) -> None:
    answer, problem, _ = await call(run, contract(), timestamp=run.clock() - age)
    assert answer == status
    if status == 401:
        assert "older than 300 seconds" in problem["detail"] or "in the future" in problem["detail"]


async def test_given_a_captured_request_replayed_after_the_window_when_posted_then_401(run: Run) -> None:
    body = json.dumps(contract()).encode()
    captured = request(body, timestamp=run.clock())
    assert (await WEBHOOK(captured)).status_code == 202
    run.clock.advance(301)
    replayed = await WEBHOOK(captured)
    assert replayed.status_code == 401
    assert json.loads(replayed.get_body())["detail"] == "the request is older than 300 seconds"
    assert run.queue.stats.sent == 1


async def test_given_an_oversized_body_when_posted_then_413_before_the_signature_is_checked(run: Run) -> None:
    body = b" " * (MAX_MESSAGE_BYTES + 1)
    status, problem, _ = await call(run, body, secret="not-the-secret")
    assert (status, problem["status"], problem["type"]) == (413, 413, "urn:entra-grants:problem:too-large")


async def test_given_a_content_length_over_the_limit_when_posted_then_413(run: Run) -> None:
    status, _, _ = await call(run, contract(), headers={"Content-Length": str(MAX_MESSAGE_BYTES + 1)})
    assert status == 413


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1", ""]
)
async def test_given_a_wrong_content_type_when_posted_then_415(run: Run, content_type: str) -> None:
    status, _, _ = await call(run, contract(), content_type=content_type)
    assert status == 415


async def test_given_lower_case_header_names_as_the_host_sends_them_when_posted_then_accepted(run: Run) -> None:
    body = json.dumps(contract()).encode()
    signed = request(body, timestamp=run.clock())
    lowered = {name.lower(): value for name, value in signed.headers.items()}
    response = await WEBHOOK(func.HttpRequest("POST", signed.url, headers=lowered, body=body))
    assert response.status_code == 202


async def test_given_json_with_a_charset_when_posted_then_accepted(run: Run) -> None:
    status, _, _ = await call(run, contract(), content_type="Application/JSON; Charset=UTF-8; profile=x")
    assert status == 202


def _ticket_text(**extra: Any) -> bytes:
    return json.dumps(ticket(**extra)).encode()


@pytest.mark.parametrize(
    ("case", "body", "says"),
    [
        ("UTF-8 with a byte-order mark", b"\xef\xbb\xbf" + _ticket_text(), "byte-order mark"),
        ("UTF-16 LE with its BOM", json.dumps(ticket()).encode("utf-16"), "UTF-16"),
        ("UTF-16 BE, no BOM", json.dumps(ticket()).encode("utf-16-be"), "UTF-16"),
        ("UTF-16 LE, no BOM", json.dumps(ticket()).encode("utf-16-le"), "UTF-16"),
        ("UTF-32 with its BOM", json.dumps(ticket()).encode("utf-32"), "UTF-32"),
        ("UTF-32 BE, no BOM", json.dumps(ticket()).encode("utf-32-be"), "UTF-32"),
        ("Latin-1 bytes", json.dumps(ticket(summary="caf\u00e9"), ensure_ascii=False).encode("latin-1"), "not UTF-8"),
    ],
)
async def test_given_a_body_that_is_not_utf8_though_declared_so_when_posted_then_415(
    run: Run, case: str, body: bytes, says: str
) -> None:
    status, problem, media_type = await call(run, body, content_type="application/json; charset=utf-8")
    assert (status, media_type) == (415, "application/problem+json"), case
    assert says in problem["detail"], case
    assert run.queue.stats.sent == 0


@pytest.mark.parametrize(
    ("case", "body", "pointer", "says"),
    [
        (
            "member twice",
            b'{"ticketNumber": "RITM1", "requester": "a@x", "approver": "b@x", "member": "'
            + USER.encode()
            + b'", "member": "'
            + USER_2.encode()
            + b'", "target": {"type": "administrativeUnit", "id": "'
            + AU.encode()
            + b'"}}',
            "",
            'the key "member" appears twice',
        ),
        (
            "action add then remove",
            _ticket_text()[:-1] + b', "action": "add", "action": "remove"}',
            "",
            'the key "action" appears twice',
        ),
        ("a C1 control in the requester", _ticket_text(requester="alice\u009b2J@contoso.com"), "/requester", "control"),
        ("a lone surrogate in the summary", _ticket_text(summary="night \ud800 shift"), "/summary", "control"),
        ("a C1 control in a contract body", json.dumps(contract(reason="x\u0085y")).encode(), "/reason", "control"),
    ],
)
async def test_given_a_ticket_with_duplicate_keys_or_hostile_text_when_posted_then_400_names_it(
    run: Run, case: str, body: bytes, pointer: str, says: str
) -> None:
    status, problem, _ = await call(run, body)
    assert status == 400, case
    assert [error["pointer"] for error in problem["errors"]][:1] == [pointer], case
    assert says in problem["errors"][0]["detail"], case
    assert run.queue.stats.sent == 0


async def test_given_a_ticket_payload_when_posted_then_it_is_mapped_and_granted(run: Run) -> None:
    status, answer, _ = await call(run, ticket())
    assert (status, answer["requestId"]) == (202, "RITM0010001")
    (outcome,) = (await run.deliver()).values()
    assert outcome["outcome"] == "granted"
    assert (outcome["sourceSystem"], outcome["sourceReference"]) == ("ticketing", "RITM0010001")
    assert outcome["requestedBy"] == "alice@contoso.com"
    assert outcome["requestReason"] == "Approved by j.smith@contoso.com: Helpdesk Administrator for the night shift"
    assert run.graph.members_of(run.graph.role_id_of(HELPDESK_TEMPLATE) or "") == {USER_2}


async def test_given_a_ticket_with_several_bad_fields_when_posted_then_400_lists_each(run: Run) -> None:
    bad = ticket(requester="", approver=None, priority="P1")
    del bad["target"]
    status, problem, media_type = await call(run, bad)
    assert (status, media_type, problem["title"]) == (400, "application/problem+json", "Invalid grant request")
    assert sorted(error["pointer"] for error in problem["errors"]) == [
        "/approver",
        "/priority",
        "/requester",
        "/target",
    ]
    assert run.queue.stats.sent == 0


async def test_given_a_contract_body_with_several_bad_fields_when_posted_then_400_lists_each(run: Run) -> None:
    bad = contract(action="grant", member={"id": "nope"}, reason="two\nlines", colour="red")
    del bad["target"]
    status, problem, _ = await call(run, bad)
    assert status == 400
    assert [error["pointer"] for error in problem["errors"]] == [
        "/target",
        "/member/id",
        "/action",
        "/reason",
        "/colour",
    ]


async def test_given_fields_valid_alone_but_not_together_when_posted_then_400_names_the_conflict(run: Run) -> None:
    body = contract(
        target={"type": "directoryRole", "roleTemplateId": HELPDESK_TEMPLATE}, member={"id": USER, "type": "device"}
    )
    status, problem, _ = await call(run, body)
    assert (status, problem["errors"]) == (
        400,
        [
            {
                "pointer": "/member/type",
                "detail": "member.type device cannot be a member of a directory role (it takes: group, "
                "servicePrincipal, user)",
            }
        ],
    )


async def test_given_a_ticket_approved_by_its_requester_when_posted_then_400(run: Run) -> None:
    status, problem, _ = await call(run, ticket(approver="Alice@contoso.com"))
    assert (status, problem["errors"]) == (
        400,
        [{"pointer": "/approver", "detail": "must be someone other than the requester"}],
    )


@pytest.mark.parametrize(
    ("body", "pointer", "detail"),
    [
        (contract(member={"id": "../users", "type": "user"}), "/member/id", "member.id must be a GUID"),
        (contract(colour="red"), "/colour", "colour is not a field of this contract"),
        (contract(source={"system": "hr"}), "/source/system", "must be 'ticketing': producer 'ticketing' speaks as"),
        (ticket(member="not-a-guid"), "/member/id", "member.id must be a GUID"),
        (ticket(ticketNumber="INC 1"), "/ticketNumber", "requestId must be 1 to 128 characters"),
        (
            ticket(
                target={"type": "directoryRole", "roleTemplateId": HELPDESK_TEMPLATE},
                member={"id": USER, "type": "device"},
            ),
            "/member/type",
            "member.type device cannot",
        ),
        (contract("~expire:INC1"), "/requestId", "requestId must be 1 to 128 characters"),
        (ticket(expiresAt="9999-12-31T23:59:59-01:00"), "/expiresAt", "expiresAt must be"),
        (contract(expiresAt="0001-01-01T00:00:00+01:00"), "/expiresAt", "expiresAt must be"),
        (ticket(ticketNumber="~hr:evt-1:0123456789abcdef"), "/ticketNumber", "requestId must be 1 to 128 characters"),
        (b"{not json", "", "the message body is not JSON"),
        ([1, 2], "", "the message body must be a JSON object"),
        ({"hello": "world"}, "", "send a grant message (schemaVersion 1) or a ticket payload (ticketNumber)"),
    ],
)
async def test_given_an_invalid_body_when_posted_then_400_points_at_the_field(
    run: Run, body: Any, pointer: str, detail: str
) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, problem, _ = await call(run, raw)
    assert status == 400
    assert problem["errors"][0]["pointer"] == pointer
    assert problem["errors"][0]["detail"].startswith(detail)
    assert run.queue.stats.sent == 0


async def test_given_a_send_failure_when_posted_then_503_with_retry_after(run: Run) -> None:
    sender = run_sender(run)
    sender.fail_next()
    response = await WEBHOOK(request(json.dumps(contract()).encode(), timestamp=run.clock()))
    assert (response.status_code, response.headers.get("Retry-After")) == (503, "30")


def run_sender(run: Run) -> LocalSender:

    sender = run.app.sender
    assert isinstance(sender, LocalSender)
    return sender


async def test_given_no_secret_when_posted_then_503_and_nothing_is_queued(make_run: Callable[..., Any]) -> None:
    """No producer can sign (the built-in registry, its secret unset) nor be known by a principal: 503."""
    run: Run = await make_run(GRANTS_PRODUCERS="")
    status, problem, _ = await call(run, contract())
    assert (status, problem["type"]) == (503, "urn:entra-grants:problem:webhook-disabled")
    assert run.queue.stats.sent == 0


def test_given_an_unresolved_key_vault_reference_then_the_webhook_has_no_secret() -> None:
    reference = "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/webhook/)"
    assert Settings.from_env({"GRANTS_WEBHOOK_SECRET": reference}).webhook_secret is None


def test_given_a_short_secret_then_configuration_fails_without_showing_it() -> None:
    with pytest.raises(ConfigError, match="GRANTS_WEBHOOK_SECRET must be at least 32") as caught:
        Settings.from_env({"GRANTS_WEBHOOK_SECRET": "hunter2"})
    assert "hunter2" not in str(caught.value)
    assert SECRET not in repr(Settings.from_env({"GRANTS_WEBHOOK_SECRET": SECRET}))


# Properties: whatever the body and headers, the answer is one of the documented ones, a problem is well
# formed, and only a correctly signed, valid message is ever queued.

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
_bodies = st.one_of(
    st.binary(max_size=200),
    _json.map(lambda value: json.dumps(value).encode()),
    st.builds(
        lambda extra: json.dumps({**contract(), **extra}).encode(),
        st.dictionaries(
            st.sampled_from(["requestId", "action", "target", "member", "source", "reason"]), _json, max_size=2
        ),
    ),
    st.builds(
        lambda extra: json.dumps({**ticket(), **extra}).encode(),
        st.dictionaries(
            st.sampled_from(["ticketNumber", "requester", "approver", "target", "member", "summary"]), _json, max_size=2
        ),
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_bodies, signed=st.booleans(), age=st.integers(min_value=-100, max_value=400))
async def test_property_any_request_gets_a_documented_answer_and_only_valid_signed_ones_are_queued(
    body: bytes, signed: bool, age: int
) -> None:
    clock = ManualClock()
    queue = LocalQueue(clock=clock)
    timestamp = int(clock()) - age
    signature = sign(secret=SECRET if signed else SECRET[::-1], timestamp=timestamp, body=body)
    headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: signature}
    answer = await receive(
        headers=headers, body=body, producers=producers(SECRET), sender=LocalSender(queue), now=clock.utcnow
    )
    assert answer.status in (202, 400, 401, 415)
    document = json.loads(answer.body)
    fresh = -30 <= age <= 300
    if answer.status == 202:
        assert signed
        assert fresh
        assert queue.stats.sent == 1
        queued = queue.receive()
        assert queued is not None
        assert webhook_message_id(parse_grant(queued.body), producer="ticketing") == queued.message_id
    else:
        assert queue.stats.sent == 0
        assert answer.content_type == "application/problem+json"
        assert document["status"] == answer.status
        assert set(document) >= {"type", "title", "status", "detail"}
        if not (signed and fresh):
            assert answer.status == 401
        if answer.status == 415:
            assert encoding_problem(body) is not None
        if answer.status == 400:
            assert document["errors"]
            assert all(set(error) == {"pointer", "detail"} for error in document["errors"])
