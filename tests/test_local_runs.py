"""The local commands as an operator runs them: run-local never waits in real time and needs no Graph of its own;
Ctrl-C stops run-local, submit and dlq with one line and a non-zero exit; dlq resubmit reports only what is saved."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from grants_cli.dlq import Selector, run_dlq
from grants_cli.main import INTERRUPTED_EXIT
from grants_local.backend import open_local_backend
from grants_local.namespace import LocalNamespace
from grants_local.unreachable import stalling_port
from tests.conftest import message

ROOT = Path(__file__).resolve().parent.parent
#: In examples/directory.json, which the built-in Graph double is seeded from.
EMEA_UNIT = "ae000000-0000-4000-8000-000000000001"
ALICE = "11111111-1111-4111-8111-111111111111"
LOCAL_SETTINGS = ("GRAPH_BASE_URL", "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET")
#: A last-resort guard (wall seconds) against a hung command. Each test decides on events (the command reaching the
#: stalled endpoint, its exit), never on this: a loaded machine only makes them take longer.
GUARD_SECONDS = 600


def environment(**values: str) -> dict[str, str]:
    """This process's environment without any Graph or identity endpoint, plus `values`."""
    env = {name: value for name, value in os.environ.items() if name not in LOCAL_SETTINGS}
    return {**env, "GRPC_VERBOSITY": "ERROR", **values}


def grant_line(request_id: str, **fields: object) -> str:
    """A grant of producer ``other`` (the built-in registry's, on the grants queue), unless `fields` say otherwise."""
    return json.dumps(
        message(
            requestId=request_id,
            target={"type": "administrativeUnit", "id": EMEA_UNIT},
            member={"id": ALICE, "type": "user"},
            **({"source": {"system": "other", "reference": request_id}} | fields),
        )
    )


def test_given_a_grant_expiring_in_a_week_and_no_graph_configured_when_run_local_then_it_ends_at_once(
    tmp_path: Path,
) -> None:
    week = (datetime.now(UTC) + timedelta(days=7)).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    messages = tmp_path / "week.jsonl"
    messages.write_text(grant_line("week-1", expiresAt=week) + "\n")
    result = subprocess.run(  # noqa: S603 (our own module, fixed arguments)
        [sys.executable, "-m", "shared", "run-local", str(messages)],
        cwd=ROOT,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=GUARD_SECONDS,  # the wall clock would make it wait a week; the real Graph is never tried
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("   1  week-1 ") and " granted " in line for line in lines), result.stdout
    assert any(line.startswith("then  ~expire:week-1 ") and " revoked " in line for line in lines), result.stdout


def interrupt(args: list[str], env: Mapping[str, str]) -> tuple[int, str, str]:
    """Run ``grants <args>`` against a Graph and token endpoint that never answer; Ctrl-C once it is waiting."""
    accepted = threading.Event()
    with stalling_port(accepted) as port:
        stalled = f"http://127.0.0.1:{port}"
        with sigint_not_ignored():
            process = subprocess.Popen(  # noqa: S603 (our own module, fixed arguments)
                [sys.executable, "-m", "shared", *args],
                cwd=ROOT,
                env={
                    **env,
                    "GRAPH_BASE_URL": f"{stalled}/v1.0",
                    "IDENTITY_ENDPOINT": f"{stalled}/msi/token",
                    "IDENTITY_HEADER": "local",
                },
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        try:
            if not reached(accepted, process):
                process.kill()
                out, err = process.communicate(timeout=GUARD_SECONDS)
                raise AssertionError(
                    f"the command never reached the Graph or token endpoint (exit {process.returncode}):\n{err}{out}"
                )
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=GUARD_SECONDS)
        finally:
            process.kill()
    return process.returncode, out, err


def reached(accepted: threading.Event, process: subprocess.Popen[str]) -> bool:
    """Wait for whichever comes first: `accepted` set (True) or `process` ended (False); `GUARD_SECONDS` at most."""
    deadline = time.monotonic() + GUARD_SECONDS
    while not accepted.wait(0.1):
        if process.poll() is not None:
            return accepted.is_set()
        assert time.monotonic() < deadline, f"neither reached the endpoint nor ended within {GUARD_SECONDS} s"
    return True


@contextmanager
def sigint_not_ignored() -> Iterator[None]:
    """Within the block, SIGINT is not ignored in this process, so a command started there gets Ctrl-C as a terminal
    gives it. A shell without job control starts background commands with SIGINT ignored, a child inherits that, and
    Python then never installs its handler; a handled SIGINT is the default again after exec.

    Not a ``preexec_fn`` resetting it in the child: that makes Popen fork (not vfork) and run gRPC's fork handlers,
    and once gRPC has run in this process (the soak, the local host) its restarted poller can abort the child before
    exec (SIGABRT, "epoll_wait error: Bad file descriptor"; grpc/grpc#43055), which a loaded machine makes likelier."""
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def assert_interrupted(code: int, err: str, command: str) -> None:
    assert code == INTERRUPTED_EXIT, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("sending [")]  # progress
    assert len(lines) == 1, err
    assert lines[0].startswith(f"interrupted: {command} stopped")
    assert err.count("interrupted:") == 1, err


def test_given_run_local_waiting_on_graph_when_interrupted_then_one_line_and_exit_130(tmp_path: Path) -> None:
    messages = tmp_path / "one.jsonl"
    messages.write_text(grant_line("int-1") + "\n")
    code, _, err = interrupt(["run-local", str(messages)], environment())
    assert_interrupted(code, err, "run-local")


def test_given_submit_local_processing_when_interrupted_then_one_line_exit_130_and_the_queue_saved(
    tmp_path: Path,
) -> None:
    job = tmp_path / "job.jsonl"
    job.write_text(grant_line("int-2", source={"system": "bulk"}) + "\n")
    namespace = tmp_path / "ns"
    code, out, err = interrupt(
        ["submit", str(job), "--local", "--job-id", "job-int"], environment(GRANTS_LOCAL_NAMESPACE=str(namespace))
    )
    assert_interrupted(code, err, "submit")
    assert "1 sent" in out
    saved = json.loads((namespace / "grant-membership-bulk.json").read_text())  # bulk jobs: the bulk lane's queue
    [saved_id] = [entry["messageId"] for entry in saved["queue"]["active"]]  # its lock died with it
    assert saved_id.startswith("job-int:1:")


def dead_letter_in(namespace: Path, request_id: str) -> None:
    with LocalNamespace(namespace).open("grant-membership") as (queue, _):
        queue.send(grant_line(request_id).encode(), message_id=request_id)
        locked = queue.receive()
        assert locked is not None
        queue.deadletter(locked.lock_token, reason="GraphUnavailable", description="retries exhausted")


def test_given_dlq_resubmit_processing_when_interrupted_then_one_line_and_exit_130(tmp_path: Path) -> None:
    namespace = tmp_path / "ns"
    dead_letter_in(namespace, "int-3")
    code, out, err = interrupt(["dlq", "resubmit", "--local"], environment(GRANTS_LOCAL_NAMESPACE=str(namespace)))
    assert_interrupted(code, err, "dlq")
    assert "resubmitted 1 dead letter(s)" in out


class ReadsTheNamespace(io.StringIO):
    """An output that, for each ``resubmitted`` line, notes whether the copy was already in the saved namespace."""

    def __init__(self, namespace: Path) -> None:
        super().__init__()
        self.namespace = namespace
        self.saved_when_printed: list[bool] = []

    def write(self, text: str) -> int:
        if text.startswith("resubmitted ") and " as " in text:
            copy = text.rsplit(" as ", 1)[1].strip()
            saved = json.loads((self.namespace / "grant-membership.json").read_text())
            self.saved_when_printed.append(copy in {entry["messageId"] for entry in saved["queue"]["active"]})
        return super().write(text)


def test_given_dlq_resubmit_local_when_a_copy_is_reported_then_it_is_already_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    namespace = tmp_path / "ns"
    monkeypatch.setenv("GRANTS_LOCAL_NAMESPACE", str(namespace))
    dead_letter_in(namespace, "saved-1")
    dead_letter_in(namespace, "saved-2")
    out = ReadsTheNamespace(namespace)

    class NoDrain:
        """The local backend, without processing what was resubmitted (not what this test is about)."""

        def __init__(self) -> None:
            self.opened = open_local_backend("grant-membership")

        def __enter__(self) -> object:
            backend = self.opened.__enter__()
            backend.drain = lambda out: None  # type: ignore[method-assign]
            return backend

        def __exit__(self, *exc: object) -> None:
            self.opened.__exit__(*exc)  # type: ignore[arg-type]

    code = run_dlq(
        action="resubmit",
        selector=Selector(),
        dry_run=False,
        yes=False,
        open_backend=NoDrain,  # type: ignore[arg-type]
        queue="grant-membership",
        out=out,
    )
    assert code == 0
    assert out.saved_when_printed == [True, True]  # a kill -9 after a line loses nothing it reported
