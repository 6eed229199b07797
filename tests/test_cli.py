"""The README's commands as a user runs them: ``python -m shared demo`` and ``run-local --json``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from grants_local.graph_double import GraphDouble
from grants_local.token_endpoint import TokenEndpoint
from tests.conftest import AU, USER, message

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 (our own module, fixed arguments)
        [sys.executable, "-m", "shared", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_demo_runs_every_example_to_a_terminal_outcome() -> None:
    result = run("demo")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "HR onboarding events" in out
    assert "Dead-letter queue" in out
    reasons = ("RoleNotActivated", "InvalidId", "InvalidJson", "TargetNotFound", "MemberNotFound", "PolicyDenied")
    for reason in (*reasons, "RolePolicyViolation"):  # the last: a permanent eligibility the role's PIM settings refuse
        assert reason in out
    assert "would_grant" in out  # the dry-run request
    assert "~expire:INC0012353         revoked" in out  # the expiring grant's removal ran at its time
    assert "INC0012355                 granted         -                             1  made user" in out  # eligible
    assert "~expire:INC0012355         not_member" in out  # Entra ended it at its expiry: the app's removal found none
    assert "26 messages:" in out
    assert "token requests: 3" in out


def test_run_local_json_prints_one_object_per_input_line(
    tmp_path: Path, graph: GraphDouble, token_endpoint: TokenEndpoint
) -> None:
    good = message(requestId="cli-1", member={"id": USER})
    messages = tmp_path / "messages.jsonl"
    messages.write_text(json.dumps(good) + "\n" + "{oops\n" + json.dumps(good) + "\n")
    env = {"GRAPH_BASE_URL": graph.base_url, **token_endpoint.env()}
    result = run("run-local", str(messages), "--producer", "bulk", "--json", env=env)  # the lines are bulk's
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["line"] for line in lines] == [1, 2, 3]
    assert set(lines[0]) == {"line", "requestId", "outcome", "reason", "description", "attempts"}
    assert [line["outcome"] for line in lines] == ["granted", "dead_lettered", "granted"]
    # The same request twice: one Graph write; the line absorbed as a duplicate reports the other line's outcome.
    assert sum(line["description"].startswith("duplicate of line") for line in (lines[0], lines[2])) == 1
    assert [r.method for r in graph.requests if r.method == "POST"] == ["POST"]
    assert lines[1]["reason"] == "InvalidJson"
    assert lines[1]["requestId"] is None
    assert graph.members_of(AU) == {USER}


def test_run_local_dry_run_writes_nothing(tmp_path: Path, graph: GraphDouble, token_endpoint: TokenEndpoint) -> None:
    dry = message(requestId="cli-dry", member={"id": USER})
    messages = tmp_path / "messages.jsonl"
    messages.write_text(json.dumps(dry) + "\n")
    env = {"GRAPH_BASE_URL": graph.base_url, **token_endpoint.env()}
    result = run("run-local", str(messages), "--producer", "bulk", "--json", "--dry-run", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["outcome"] == "would_grant"
    assert {r.method for r in graph.requests} == {"GET"}
