"""``grants smoke --local`` as an operator runs it: the real command, the real Graph, ARM and Log Analytics clients
over HTTP against the local deployment's doubles, the dry run sent into the local namespace and processed by the
local host. Pass, and each way it fails: a Graph permission missing, a Service Bus role missing, the outcome never
arriving, the outcome arriving dead-lettered; each failure with its fix."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from grants_cli.main import main
from grants_cli.smoke import DIRECTORY_READERS, smoke_message
from grants_local.deployment import APP_PRINCIPAL_ID, DATA_RECEIVER, DATA_SENDER, NAMESPACE_ID, LocalDeployment
from grants_local.graph_double import GraphDouble
from grants_local.namespace import LocalNamespace
from grants_local.token_endpoint import TokenEndpoint
from shared.core.contract import parse_grant
from tests.conftest import GLOBAL_ADMIN

LINE = re.compile(r"^(PASS|FAIL)  (\S+(?: \S+)?)\s+(.*)$")


@pytest.fixture
def deployment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalDeployment:
    """A fresh local namespace, deployed as ``azd up`` would leave it; the doubles are the command's own."""
    for name in ("GRAPH_BASE_URL", "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "AZURE_CLIENT_ID", "GRANTS_POLICY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GRANTS_LOCAL_NAMESPACE", str(tmp_path / "servicebus"))
    return LocalDeployment(tmp_path / "servicebus")


def smoke(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[tuple[str, str, str]], str]:
    """Run ``grants smoke --local``: exit code, the (verdict, area, detail) lines, and the whole output."""
    code = main(["smoke", "--local", *args])
    printed = capsys.readouterr().out
    lines = [match.groups() for line in printed.splitlines() if (match := LINE.match(line))]
    return code, [(verdict, area, detail) for verdict, area, detail in lines], printed


def fixes(printed: str) -> list[str]:
    return [line.strip().removeprefix("fix: ") for line in printed.splitlines() if line.startswith("      fix: ")]


def test_a_healthy_deployment_passes_every_check(
    deployment: LocalDeployment, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines, printed = smoke(capsys)
    assert code == 0
    assert [(verdict, area) for verdict, area, _ in lines] == [
        ("PASS", "send"),
        ("PASS", "graph"),
        ("PASS", "graph"),
        ("PASS", "service bus"),
        ("PASS", "service bus"),
        ("PASS", "outcome"),
    ]
    assert "AdministrativeUnit.ReadWrite.All granted" in lines[1][2]
    assert "RoleManagement.ReadWrite.Directory granted" in lines[2][2]
    assert lines[3][2].startswith("Azure Service Bus Data Receiver on sb-grants-local")
    assert lines[5][2].startswith("not_member after")
    assert not fixes(printed)
    assert printed.rstrip().endswith("grants smoke: all 6 checks passed")
    [logged] = deployment.logged_outcomes()  # processed once by the local host, read back over the query API
    record = logged["record"]
    assert record["requestId"].startswith("smoke-")
    assert (record["outcome"], record["dryRun"], record["action"], record["memberId"]) == (
        "not_member",
        True,
        "remove",
        APP_PRINCIPAL_ID,
    )
    with LocalNamespace(deployment.directory).open("grant-membership") as (queue, _):
        assert queue.active_count == 0
        assert queue.dead_letters() == []


def test_a_missing_graph_permission_fails_its_line_with_the_permission_script(
    deployment: LocalDeployment, capsys: pytest.CaptureFixture[str]
) -> None:
    deployment.revoke_graph_permission("RoleManagement.ReadWrite.Directory")
    code, lines, printed = smoke(capsys)
    assert code == 1
    assert [verdict for verdict, _, _ in lines] == ["PASS", "PASS", "FAIL", "PASS", "PASS", "PASS"]
    assert lines[2][2] == f"RoleManagement.ReadWrite.Directory not granted to {APP_PRINCIPAL_ID}"
    [fix] = fixes(printed)
    script = rf"sh infra/scripts/grant-graph-permissions\.sh {APP_PRINCIPAL_ID} http://127\.0\.0\.1:\d+"
    assert re.fullmatch(rf"az login as a Privileged Role Administrator, then: {script}", fix)
    assert printed.rstrip().endswith("grants smoke: 1 of 6 checks failed")


def test_a_missing_service_bus_role_fails_its_line_with_the_role_assignment(
    deployment: LocalDeployment, capsys: pytest.CaptureFixture[str]
) -> None:
    deployment.revoke_role(DATA_SENDER)
    code, lines, printed = smoke(capsys)
    assert code == 1
    assert [verdict for verdict, _, _ in lines] == ["PASS", "PASS", "PASS", "PASS", "FAIL", "PASS"]
    assert lines[4][2] == f"Azure Service Bus Data Sender missing on sb-grants-local for {APP_PRINCIPAL_ID}"
    [fix] = fixes(printed)
    assert fix.endswith(
        f"az role assignment create --assignee-object-id {APP_PRINCIPAL_ID} --assignee-principal-type "
        f'ServicePrincipal --role "Azure Service Bus Data Sender" --scope {NAMESPACE_ID}'
    )


def test_without_data_receiver_the_outcome_never_arrives_and_both_lines_fail(
    deployment: LocalDeployment, capsys: pytest.CaptureFixture[str]
) -> None:
    """The trigger cannot receive: the role line fails, and the dry run waits in the queue past the timeout."""
    deployment.revoke_role(DATA_RECEIVER)
    code, lines, printed = smoke(capsys, "--timeout", "0.6")
    assert code == 1
    assert [verdict for verdict, _, _ in lines] == ["PASS", "PASS", "PASS", "FAIL", "PASS", "FAIL"]
    assert lines[3][2].startswith("Azure Service Bus Data Receiver missing")
    assert re.fullmatch(r"no settled outcome for smoke-\S+ within 1 s in Application Insights", lines[5][2])
    assert "az functionapp show" in fixes(printed)[1]
    assert deployment.logged_outcomes() == []
    with LocalNamespace(deployment.directory).open("grant-membership") as (queue, _):
        assert queue.active_count == 1  # still there, for the trigger once it can receive


def test_a_stopped_app_never_settles_the_outcome(
    deployment: LocalDeployment, capsys: pytest.CaptureFixture[str]
) -> None:
    deployment.stop()
    code, lines, printed = smoke(capsys, "--timeout", "0.4")
    assert code == 1
    assert [verdict for verdict, _, _ in lines] == ["PASS"] * 5 + ["FAIL"]
    assert lines[5][2].startswith("no settled outcome for smoke-")
    [fix] = fixes(printed)
    assert "--query state" in fix
    assert "grants smoke --timeout 600" in fix


def test_a_dead_lettered_outcome_fails_with_its_reason_and_the_dlq_commands(
    deployment: LocalDeployment, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A grant policy that lets source ``other`` change nothing: the dry run is dead-lettered PolicyDenied."""
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"sources": {"hr": {"administrativeUnits": ["*"]}}}))
    monkeypatch.setenv("GRANTS_POLICY", str(policy))
    code, lines, printed = smoke(capsys)
    assert code == 1
    assert [verdict for verdict, _, _ in lines] == ["PASS"] * 5 + ["FAIL"]
    assert lines[5][2].startswith("dead_lettered PolicyDenied after 1 attempt(s): ")
    [fix] = fixes(printed)
    request_id = re.search(r"grants smoke: (smoke-\S+),", printed)
    assert request_id is not None
    assert fix.startswith(f"grants dlq show {request_id.group(1)}; the grant policy refuses the dry run: ")
    assert "--source and --role-template your GRANTS_POLICY allows" in fix
    assert "grants dlq purge --reason PolicyDenied --yes" in fix
    with LocalNamespace(deployment.directory).open("grant-membership") as (queue, _):
        [dead] = queue.dead_letters()
    assert (dead.message_id, dead.reason) == (request_id.group(1), "PolicyDenied")


def test_the_dry_run_is_built_by_the_contract_and_writes_nothing() -> None:
    body = smoke_message(request_id="smoke-x", principal_id=APP_PRINCIPAL_ID, role_template=GLOBAL_ADMIN, source="hr")
    command = parse_grant(body)
    assert command.dry_run is True
    assert (command.action.value, command.member.id, command.source.system.value) == ("remove", APP_PRINCIPAL_ID, "hr")
    assert json.loads(body)["target"] == {"type": "directoryRole", "roleTemplateId": GLOBAL_ADMIN}
    assert DIRECTORY_READERS == "88d8e3e3-8f55-4a1e-953a-9b9898b8876b"


def test_the_graph_double_lists_exactly_the_permissions_granted(token_endpoint: TokenEndpoint) -> None:
    """What the Graph check reads, against the double: Graph's own app roles, and a principal's assignments."""
    import httpx

    with GraphDouble(token_endpoint) as graph:
        graph.add_service_principal(APP_PRINCIPAL_ID)
        graph.grant_app_role(APP_PRINCIPAL_ID, "AdministrativeUnit.ReadWrite.All")
        from azure.identity import ManagedIdentityCredential

        from grants_cli.azure_apis import GraphReader, Tokens

        with httpx.Client() as http:
            reader = GraphReader(base_url=graph.base_url, tokens=Tokens(ManagedIdentityCredential()), http=http)
            assert reader.app_permissions(APP_PRINCIPAL_ID) == {"AdministrativeUnit.ReadWrite.All"}
            graph.revoke_app_role(APP_PRINCIPAL_ID, "AdministrativeUnit.ReadWrite.All")
            assert reader.app_permissions(APP_PRINCIPAL_ID) == set()
        paths = [(r.method, r.path.split("?")[0], r.status) for r in graph.requests]
    assert paths[:2] == [
        ("GET", "/servicePrincipals(appId='00000003-0000-0000-c000-000000000000')", 200),
        ("GET", f"/servicePrincipals/{APP_PRINCIPAL_ID}/appRoleAssignments", 200),
    ]


def test_what_the_operator_cannot_read_fails_with_the_access_it_needs(
    deployment: LocalDeployment, capsys: pytest.CaptureFixture[str]
) -> None:
    """Role assignments and logs asked of resources the operator cannot see (here: ids the APIs do not know)."""
    import functools
    import io

    import httpx
    from azure.identity import ManagedIdentityCredential

    from grants_cli.azure_apis import GraphReader, LogOutcomes, RoleAssignments, Tokens
    from grants_cli.smoke import run_smoke
    from grants_local.azure_double import serve_local_deployment
    from grants_local.backend import open_local_backend

    other = NAMESPACE_ID.replace("rg-grants-local", "rg-elsewhere")
    out = io.StringIO()
    with serve_local_deployment(deployment) as local, httpx.Client() as http:
        tokens = Tokens(ManagedIdentityCredential())
        code = run_smoke(
            principal_id=local.principal_id,
            namespace_id=other,
            queue="grant-membership",
            open_backend=functools.partial(open_local_backend, "grant-membership"),
            graph=GraphReader(base_url=local.graph_url, tokens=tokens, http=http),
            roles=RoleAssignments(base_url=local.arm_url, tokens=tokens, http=http),
            outcomes=LogOutcomes(app_insights_id=other, base_url=local.logs_url, tokens=tokens, http=http),
            timeout=5,
            out=out,
            log=io.StringIO(),
        )
    printed = out.getvalue()
    lines = [match.groups() for line in printed.splitlines() if (match := LINE.match(line))]
    assert code == 1
    assert [verdict for verdict, _, _ in lines] == ["PASS", "PASS", "PASS", "FAIL", "FAIL", "FAIL"]
    assert "could not read role assignments on sb-grants-local: Azure Resource Manager answered 404" in lines[3][2]
    assert lines[5][2].startswith("could not read the outcome from Application Insights: ")
    assert "404 PathNotFoundError" in lines[5][2]
    assert "Monitoring Reader or Log Analytics Reader" in fixes(printed)[-1]
