"""Guardrails, time-bound grants, dry-run, audit and AU-scoped roles, end to end through the function object."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from grants_local.binding import to_received_message
from grants_local.graph_double import GraphDouble
from grants_local.queue import LocalQueue, LocalSender
from grants_local.token_endpoint import TokenEndpoint
from shared.bootstrap import bootstrap
from shared.config import Settings
from shared.core.contract import Guid, parse_grant
from shared.core.errors import ConfigError, PermanentError
from shared.core.policy import TIER0_ROLE_TEMPLATES, GrantPolicy
from tests.conftest import (
    AU,
    AU_OTHER,
    GLOBAL_ADMIN,
    GLOBAL_ADMIN_ROLE,
    HELPDESK_ROLE,
    HELPDESK_TEMPLATE,
    USER,
    USER_2,
    body,
    producers,
)
from tests.test_function_app import GRANT


def grant(request_id: str = "req-1", *, target: dict[str, str], source: str = "ticketing", **extra: Any) -> bytes:
    return body(
        requestId=request_id,
        target=target,
        member={"id": extra.pop("member", USER), "type": "user"},
        source={"system": source, "reference": "T-1"},
        requestedBy="approver@contoso.com",
        reason="test",
        **extra,
    )


AU_TARGET = {"type": "administrativeUnit", "id": AU}
TIER0_TARGET = {"type": "directoryRole", "roleTemplateId": GLOBAL_ADMIN}
TIER0_BY_ID = {"type": "directoryRole", "id": GLOBAL_ADMIN_ROLE}


def policy_file(tmp_path: Path, sources: dict[str, Any]) -> str:
    file = tmp_path / "policy.json"
    file.write_text(json.dumps({"sources": sources}))
    return str(file)


# --- guardrail policy ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [TIER0_TARGET, TIER0_BY_ID])
async def test_tier0_roles_are_refused_by_default_with_no_graph_write(
    make_run: Callable[..., Any], target: dict[str, str]
) -> None:
    run = await make_run()
    outcomes = await run.deliver(grant(target=target))
    assert outcomes["m-1"]["outcome"] == "dead_lettered"
    assert outcomes["m-1"]["reason"] == "PolicyDenied"
    assert "Global Administrator" in outcomes["m-1"]["description"]
    assert run.writes() == []
    [dead] = run.queue_of("ticketing").dead_letters()
    assert dead.reason == "PolicyDenied"


async def test_a_role_given_by_id_is_checked_by_its_template_looked_up_once(make_run: Callable[..., Any]) -> None:
    run = await make_run()
    await run.deliver(grant("a", target=TIER0_BY_ID), grant("b", target=TIER0_BY_ID, member=USER_2))
    lookups = [r for r in run.graph.requests if r.path == f"/directoryRoles/{GLOBAL_ADMIN_ROLE}"]
    assert len(lookups) == 1


async def test_a_tier0_role_is_allowed_when_the_policy_names_it_for_that_source(
    make_run: Callable[..., Any], tmp_path: Path
) -> None:
    file = policy_file(tmp_path, {"ticketing": {"directoryRoles": [GLOBAL_ADMIN]}, "hr": {"directoryRoles": ["*"]}})
    run = await make_run(GRANTS_POLICY=file)
    outcomes = await run.deliver(grant(target=TIER0_TARGET), grant("hr-1", target=TIER0_TARGET, source="hr"))
    assert outcomes["m-1"]["outcome"] == "granted"
    assert outcomes["m-2"]["reason"] == "PolicyDenied"  # "*" never covers tier-0
    assert run.graph.members_of(GLOBAL_ADMIN_ROLE) == {USER}


async def test_rules_are_per_source_target_and_action(make_run: Callable[..., Any], tmp_path: Path) -> None:
    file = policy_file(
        tmp_path,
        {
            "bulk": {"actions": ["add"], "administrativeUnits": [AU]},
            "hr": {"administrativeUnits": ["*"], "directoryRoles": [HELPDESK_TEMPLATE]},
        },
    )
    run = await make_run(GRANTS_POLICY=file)
    outcomes = await run.deliver(
        grant("b1", target=AU_TARGET, source="bulk"),
        grant("b2", target={"type": "administrativeUnit", "id": AU_OTHER}, source="bulk"),
        grant("b3", target=AU_TARGET, source="bulk", action="remove"),
        grant("h1", target={"type": "directoryRole", "id": HELPDESK_ROLE}, source="hr"),
        grant("t1", target=AU_TARGET, source="ticketing"),
    )
    assert {key: (o["outcome"], o["reason"]) for key, o in outcomes.items()} == {
        "m-1": ("granted", None),
        "m-2": ("dead_lettered", "PolicyDenied"),
        "m-3": ("dead_lettered", "PolicyDenied"),
        "m-4": ("granted", None),
        "m-5": ("dead_lettered", "PolicyDenied"),
    }
    assert "may not remove" in outcomes["m-3"]["description"]
    assert "producer 'ticketing' may not grant or remove anything" in outcomes["m-5"]["description"]


@pytest.mark.parametrize(
    ("document", "says"),
    [
        ("not json", "not valid JSON"),
        ({"sources": {"sap": {}}}, "unknown source system"),
        ({"sources": {"hr": {"roles": []}}}, "unknown key 'roles'"),
        ({"sources": {"hr": {"administrativeUnits": ["EMEA"]}}}, "must be a GUID"),
        ({"sources": {"hr": {"actions": ["grant"]}}}, "only add, remove and revokeAll"),
        ({"rules": {}}, '"producers" (rules by producer name) and/or "sources"'),
        ({"producers": {"Not A Name": {}}}, "not a producer name"),
    ],
)
def test_a_bad_policy_file_stops_the_app_with_a_clear_error(tmp_path: Path, document: Any, says: str) -> None:
    file = tmp_path / "policy.json"
    file.write_text(document if isinstance(document, str) else json.dumps(document))
    with pytest.raises(ConfigError, match="GRANTS_POLICY") as caught:
        GrantPolicy.load(file)
    assert says in str(caught.value)


def test_the_example_policy_file_is_valid() -> None:
    policy = GrantPolicy.load(Path(__file__).parent.parent / "examples" / "policy.json")
    ticketing = policy.rules_for(producers().by_name["ticketing"])
    assert ticketing is not None
    assert GLOBAL_ADMIN in ticketing.directory_roles


def test_a_missing_policy_file_stops_bootstrap(graph: GraphDouble, tmp_path: Path) -> None:
    settings = Settings.from_env({"GRAPH_BASE_URL": graph.base_url, "GRANTS_POLICY": str(tmp_path / "nope.json")})
    with pytest.raises(ConfigError, match="cannot read"):
        bootstrap(settings, sender=LocalSender(LocalQueue()))


def test_the_default_policy_says_so_and_denies_every_tier0_template() -> None:
    policy = GrantPolicy.default()
    assert "built-in default" in policy.describe()
    assert len(TIER0_ROLE_TEMPLATES) >= 8
    for rules in policy.systems.values():
        assert not set(TIER0_ROLE_TEMPLATES) & rules.directory_roles


#: The review of the tier-0 list: each role the default list let through, and the decision (docs/guardrails.md).
REVIEWED = {
    "d29b2b05-8046-44ba-8758-1e26182fcf32": ("Directory Synchronization Accounts", "denied"),
    "9360feb5-f418-4baa-8175-e2a00bac4301": ("Directory Writers", "denied"),
    "4ba39ca4-527c-499a-b93d-d9b492c50246": ("Partner Tier1 Support", "denied"),
    "3a2c62db-5318-420d-8d74-23affee5d9d5": ("Intune Administrator", "denied"),
    "0526716b-113d-4c15-b2c8-68e3c22b9f80": ("Authentication Policy Administrator", "denied"),
    "966707d0-3269-4727-9be2-8c3a10f19b9d": ("Password Administrator", "allowed"),
}


@pytest.mark.parametrize("template", list(REVIEWED), ids=[name for name, _ in REVIEWED.values()])
def test_the_reviewed_roles_are_decided_as_documented_and_an_explicit_policy_still_allows_them(
    template: str, tmp_path: Path
) -> None:
    name, decision = REVIEWED[template]
    command = parse_grant(grant(target={"type": "directoryRole", "roleTemplateId": template}))
    default = GrantPolicy.default()
    ticketing = producers().by_name["ticketing"]
    if decision == "denied":
        with pytest.raises(PermanentError, match=f"{name} \\({template}\\) is a tier-0 role"):
            default.check(command, producer=ticketing, role_template_id=Guid(template))
    else:
        default.check(command, producer=ticketing, role_template_id=Guid(template))
    explicit = tmp_path / "policy.json"
    explicit.write_text(json.dumps({"producers": {"ticketing": {"directoryRoles": [template]}}}))
    GrantPolicy.load(explicit).check(command, producer=ticketing, role_template_id=Guid(template))


def test_the_guardrails_page_tables_every_tier0_template_with_a_reason() -> None:
    guardrails = (Path(__file__).parent.parent / "docs" / "guardrails.md").read_text(encoding="utf-8")
    rows = {
        cells[1].strip("` "): (cells[0].strip(), cells[2].strip(), cells[3].strip())
        for line in guardrails.splitlines()
        if line.startswith("| ")
        and (cells := [cell.strip() for cell in line.strip("|").split("|")])
        and len(cells) == 4
        and len(cells[1].strip("` ")) == 36
    }
    denied = {template for template, (_, decision, _) in rows.items() if decision == "denied"}
    assert denied == set(TIER0_ROLE_TEMPLATES)
    assert all(rows[template][0] == name for template, name in TIER0_ROLE_TEMPLATES.items())
    assert all(len(why) > 20 for _, _, why in rows.values())
    assert {template for template in REVIEWED} <= set(rows)


# --- time-bound grants ----------------------------------------------------------------------------------------


def by_request(outcomes: dict[str, dict[str, Any]], request_id: str) -> dict[str, Any]:
    """The one terminal outcome of `request_id` (the app's own messages have derived MessageIds)."""
    (record,) = (record for record in outcomes.values() if record["requestId"] == request_id)
    return record


async def test_an_expiring_grant_schedules_one_removal_that_runs_at_its_time(make_run: Callable[..., Any]) -> None:
    run = await make_run()
    expires_at = datetime.fromtimestamp(run.clock() + 7 * 86400, UTC)
    outcomes = await run.deliver(grant(target=AU_TARGET, expiresAt=expires_at.isoformat().replace("+00:00", "Z")))
    removal = by_request(outcomes, "~expire:req-1")  # the scheduled removal, under its own (derived) MessageId
    assert outcomes["m-1"]["outcome"] == "granted"
    assert removal["outcome"] == "revoked"
    assert datetime.fromisoformat(removal["startedAt"]) == expires_at
    assert run.graph.members_of(AU) == set()
    assert run.writes() == [
        ("POST", f"/directory/administrativeUnits/{AU}/members/$ref"),
        ("DELETE", f"/directory/administrativeUnits/{AU}/members/{USER}/$ref"),
    ]


async def test_a_redelivered_expiring_grant_does_not_schedule_a_second_removal(make_run: Callable[..., Any]) -> None:
    run = await make_run()
    body = grant(target=AU_TARGET, expiresAt="2099-01-01T00:00:00Z", source="bulk")
    run.queue.send(body, message_id="m-1")
    run.queue.send(body, message_id="m-1-resent")  # the producer sent it twice
    for _ in range(2):
        locked = run.queue.receive()
        assert locked is not None
        await GRANT(receivedmessage=to_received_message(locked), message_actions=run.actions)
    assert run.queue.scheduled_count == 1  # the resent message is the same request: absorbed by the ledger


async def test_an_add_whose_expiry_has_passed_is_dead_lettered_expired_and_grants_nothing(
    make_run: Callable[..., Any],
) -> None:
    """Nothing is granted and nothing changes: no Graph write, no removal queued, nothing in the ledger."""
    run = await make_run()
    outcomes = await run.deliver(grant(target=AU_TARGET, expiresAt="2001-01-01T00:00:00Z"))
    assert outcomes["m-1"]["reason"] == "Expired"
    assert [o["requestId"] for o in outcomes.values()] == ["req-1"]
    assert run.writes() == []
    assert await run.app.services.ledger.pair(f"au.{AU}.{USER}") is None


async def test_a_granted_membership_whose_removal_was_not_scheduled_is_removed_when_its_retry_comes_after_expiry(
    make_run: Callable[..., Any],
) -> None:
    """Given the write landed (and was recorded) but scheduling the removal failed, when the retry runs after
    expiresAt, then it is dead-lettered Expired, and the expiry sweep ends the grant its ledger keeps pending: the
    membership does not outlive its expiry."""
    run = await make_run()
    expires_at = datetime.fromtimestamp(run.clock() + 60, UTC)
    run.queue.send(grant(target=AU_TARGET, expiresAt=expires_at.isoformat(), source="bulk"), message_id="m-1")
    sender = run.app.sender
    assert isinstance(sender, LocalSender)
    sender.fail_next(1)  # scheduling the removal fails; the retry copy's send then works
    locked = run.queue.receive()
    assert locked is not None
    await GRANT(receivedmessage=to_received_message(locked), message_actions=run.actions)
    assert run.graph.members_of(AU) == {USER}
    run.clock.advance(3600)  # the retry copy runs after the expiry
    outcomes = await run.deliver()
    assert outcomes["m-1"]["reason"] == "Expired"
    assert run.graph.members_of(AU) == {USER}
    assert await run.app.services.expiry_sweep() == 1
    outcomes = await run.deliver()
    assert by_request(outcomes, "~expire:req-1")["outcome"] == "revoked"
    assert run.graph.members_of(AU) == set()


# --- dry run --------------------------------------------------------------------------------------------------


async def test_app_wide_dry_run_writes_nothing(make_run: Callable[..., Any], graph: GraphDouble) -> None:
    run = await make_run(GRANTS_DRY_RUN="true")
    outcomes = await run.deliver(
        grant("d1", target=AU_TARGET),
        grant("d2", target={"type": "directoryRole", "roleTemplateId": HELPDESK_TEMPLATE}, action="remove"),
        grant("d3", target=AU_TARGET, action="remove"),
    )
    assert [outcomes[f"m-{n}"]["outcome"] for n in (1, 2, 3)] == ["would_grant", "not_member", "not_member"]
    assert {r.method for r in graph.requests} == {"GET"}


async def test_a_dry_run_message_reports_already_member_and_would_revoke(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    run = await make_run()
    await run.deliver(grant("real", target=AU_TARGET))
    graph.reset_log()
    outcomes = await run.deliver(
        grant("d1", target=AU_TARGET, dryRun=True), grant("d2", target=AU_TARGET, action="remove", dryRun=True)
    )
    assert [outcomes["m-2"]["outcome"], outcomes["m-3"]["outcome"]] == ["already_member", "would_revoke"]
    assert {r.method for r in graph.requests} == {"GET"}
    assert graph.members_of(AU) == {USER}


# --- AU-scoped roles -----------------------------------------------------------------------------------------

SCOPED = {"type": "scopedRole", "roleTemplateId": HELPDESK_TEMPLATE, "administrativeUnitId": AU}


async def test_a_scoped_role_is_granted_once_and_removed(make_run: Callable[..., Any], graph: GraphDouble) -> None:
    run = await make_run()
    outcomes: dict[str, dict[str, Any]] = {}
    for each in (  # one at a time: messages in one batch run concurrently, in no set order
        grant("s1", target=SCOPED),
        grant("s2", target=SCOPED),
        grant("s3", target=SCOPED, action="remove"),
        grant("s4", target=SCOPED, action="remove"),
    ):
        outcomes.update(await run.deliver(each))
    assert [outcomes[f"m-{n}"]["outcome"] for n in (1, 2, 3, 4)] == [
        "granted",
        "already_member",
        "revoked",
        "released",  # its grant ended already: the app has no membership of it to remove
    ]
    assert outcomes["m-1"]["targetType"] == "scopedRole"
    assert outcomes["m-1"]["roleTemplateId"] == HELPDESK_TEMPLATE


async def test_a_tier0_scoped_role_is_refused(make_run: Callable[..., Any]) -> None:
    run = await make_run()
    outcomes = await run.deliver(grant(target={**SCOPED, "roleTemplateId": GLOBAL_ADMIN}))
    assert outcomes["m-1"]["reason"] == "PolicyDenied"
    assert run.writes() == []


# --- audit ------------------------------------------------------------------------------------------------------

AUDIT_FIELDS = {
    "requestId",
    "sourceSystem",
    "sourceReference",
    "requestedBy",
    "requestReason",
    "targetType",
    "targetId",
    "roleTemplateId",
    "memberId",
    "action",
    "outcome",
    "reason",
    "attempts",
    "graphRequestId",
    "startedAt",
    "finishedAt",
}


async def test_every_terminal_outcome_carries_the_audit_fields(make_run: Callable[..., Any]) -> None:
    run = await make_run()
    outcomes = await run.deliver(
        grant("a1", target=AU_TARGET),
        grant("a2", target=AU_TARGET),
        grant("a3", target={"type": "directoryRole", "id": HELPDESK_ROLE}),
        grant("a4", target=TIER0_TARGET),
    )
    for outcome in outcomes.values():
        assert set(outcome) >= AUDIT_FIELDS
    # a1 and a2 ask the same of one pair: a2 is the newer; a1 runs first (a2 then finds it done) or is superseded.
    assert sorted(outcomes[m]["outcome"] for m in ("m-1", "m-2")) in (
        ["already_member", "granted"],
        ["granted", "superseded"],
    )
    assert all(o["graphRequestId"] for o in outcomes.values() if o["outcome"] == "granted")
    assert outcomes["m-3"]["roleTemplateId"] == HELPDESK_TEMPLATE  # resolved from the role id


async def test_no_token_or_identity_secret_ever_reaches_a_log_line(
    make_run: Callable[..., Any], token_endpoint: TokenEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    run = await make_run()
    token_endpoint.expire_all()
    await run.deliver(grant("l1", target=AU_TARGET), grant("l2", target=TIER0_TARGET), b"{bad")
    token_endpoint.expire_all()
    await run.deliver(grant("l3", target=AU_TARGET, member=USER_2))
    text = "\n".join(record.getMessage() + repr(record.__dict__) for record in caplog.records)
    assert token_endpoint.issued_tokens
    for secret in [*token_endpoint.issued_tokens, token_endpoint.header_secret]:
        assert secret not in text


def test_a_bad_policy_file_stops_the_function_app_at_import(tmp_path: Path) -> None:
    file = tmp_path / "policy.json"
    file.write_text('{"sources": {"hr": {"directoryRoles": ["Global Administrator"]}}}')
    result = subprocess.run(
        [sys.executable, "-c", "import function_app"],
        cwd=Path(__file__).parent.parent,
        env={**os.environ, "GRANTS_POLICY": str(file)},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode != 0
    assert "ConfigError: GRANTS_POLICY" in result.stderr
    assert "directoryRoles must be a GUID" in result.stderr
