"""The CLI speaks plainly: one meaning per flag, help without markup, and everyday mistakes in one line (no
traceback) saying what to do."""

from __future__ import annotations

import contextlib
import io
import json
import socket
from pathlib import Path

import pytest

from grants_cli.main import main
from grants_local.namespace import LocalNamespace
from tests.conftest import body


@pytest.fixture
def namespace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty local namespace for the block (``GRANTS_LOCAL_NAMESPACE``)."""
    directory = tmp_path / "servicebus"
    monkeypatch.setenv("GRANTS_LOCAL_NAMESPACE", str(directory))
    return directory


def grants(*argv: str) -> tuple[int, str, str]:
    """``grants ARGV…`` in this process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit_:  # argparse: --help, --version, usage errors
            code = int(exit_.code or 0)
    return code, out.getvalue(), err.getvalue()


def test_help_is_plain_text_and_names_the_flags_meaning() -> None:
    code, out, _ = grants("--help")
    assert code == 0
    assert "``" not in out
    assert "--local means the in-process local namespace" in out
    assert "--serve-local a running `grants serve-local`" in out


def test_version_is_the_installed_packages() -> None:
    from importlib.metadata import version

    code, out, _ = grants("--version")
    assert (code, out.strip()) == (0, f"grants (entra-grants) {version('entra-grants')}")


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("demo", "--help"), "built-in Graph double and token endpoint"),
        (("serve-local", "--help"), "(default 7071)"),
        (("dlq", "list", "--help"), "default: both, grant-membership and grant-membership-bulk"),
        (("submit", "--help"), "default grant-membership-bulk"),
        (("status", "--help"), "--serve-local"),
    ],
)
def test_each_commands_help_says_what_it_does_and_its_defaults(
    argv: tuple[str, ...], says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # no line wrapped inside a queue name
    code, out, _ = grants(*argv)
    assert code == 0
    assert says in " ".join(out.split())


@pytest.mark.parametrize("command", ["run-local", "submit"])
def test_a_missing_input_file_is_one_line(command: str, tmp_path: Path, namespace: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    args = [command, str(missing), *(["--local"] if command == "submit" else [])]
    code, _, err = grants(*args)
    assert (code, err) == (2, f"grants {command}: error: {missing}: no such file\n")


def test_serve_local_on_a_port_in_use_names_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = grants("serve-local", "--port", str(port))
    assert code == 2
    assert err.count("\n") == 1
    assert f"port {port} on 127.0.0.1 is in use" in err
    assert "--port" in err


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_no_serve_local_running_says_how_to_start_it(tmp_path: Path) -> None:
    port = str(free_port())
    code, _, err = grants("status", "RITM0010001", "--serve-local", "--port", port)
    assert (code, err.count("\n")) == (2, 1)
    assert f"start it in another terminal with `.venv/bin/grants serve-local --port {port}`" in err
    job = tmp_path / "job.jsonl"
    job.write_bytes(body(requestId="r-1") + b"\n")
    code, _, err = grants("submit", str(job), "--serve-local", "--port", port)
    assert (code, err.count("\n")) == (2, 1)
    assert f"`.venv/bin/grants serve-local --port {port}`" in err


@pytest.mark.parametrize(
    "command",
    [("status", "RITM0010001"), ("job", "job-1"), ("history", "--member", "12121212-1212-4212-8212-121212121212")],
)
def test_local_means_the_local_namespace_everywhere_so_the_status_commands_refuse_it(command: tuple[str, ...]) -> None:
    code, _, err = grants(*command, "--local")
    assert code == 2
    assert "--local is the in-process namespace, which keeps no status" in err
    assert "--serve-local" in err


def put_dead_letter(directory: Path, queue: str, request_id: str) -> None:
    local = LocalNamespace(directory)
    with local.open(queue) as (q, _):
        q.send(body(requestId=request_id), message_id=f"m-{request_id}", application_properties={"bulkJob": "j"})
        locked = q.receive()
        assert locked is not None
        q.deadletter(locked.lock_token, reason="MemberNotFound", description="not there")


def test_dlq_lists_both_queues_each_labelled_and_shows_properties_as_json(namespace: Path) -> None:
    put_dead_letter(namespace, "grant-membership-bulk", "bulk-1")
    code, out, _ = grants("dlq", "list", "--local")
    assert code == 0
    grants_part, bulk_part = out.split("queue grant-membership-bulk, dead letters:")
    assert grants_part.startswith("queue grant-membership, dead letters:")
    assert "0 dead letter(s)" in grants_part
    assert "bulk-1" in bulk_part
    assert "1 dead letter(s)" in bulk_part
    code, out, _ = grants("dlq", "show", "bulk-1", "--local")
    assert code == 0  # found in one of the two queues
    [properties] = [line for line in out.splitlines() if line.startswith("properties:")]
    shown = json.loads(properties.removeprefix("properties:").strip())
    assert shown["bulkJob"] == "j"
    code, out, _ = grants("dlq", "list", "--local", "--queue", "grant-membership")
    assert (code, "queue " in out) == (0, False)  # one queue named: no labels
