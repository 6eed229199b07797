"""Everyday mistakes with the commands the docs tell people to run, each run as a person runs it (a subprocess from
the checkout): one line saying what is wrong and what to do, no traceback, and a non-zero exit."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: A last-resort guard against a hung command; the test decides on the command's exit.
GUARD_SECONDS = 600


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    """`argv` from the checkout, as a person types it (``python`` is this venv's)."""
    command = [sys.executable if argv[0] == "python" else argv[0], *argv[1:]]
    return subprocess.run(  # noqa: S603 (the project's own commands)
        command, cwd=ROOT, capture_output=True, text=True, timeout=GUARD_SECONDS, check=False
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line `result` printed (stdout and stderr together), after checking it failed and printed only that."""
    printed = result.stdout + result.stderr
    assert result.returncode != 0, printed
    assert "Traceback" not in printed, printed
    [line] = printed.splitlines()
    assert printed == line + "\n", printed
    return line


@pytest.fixture
def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port something listens on, for the block."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def test_send_webhook_with_no_serve_local_running_says_how_to_start_it(free_port: int) -> None:
    url = f"http://127.0.0.1:{free_port}/api/grants"
    line = one_line(run("python", "examples/send_webhook.py", "examples/ticket.json", "--url", url))
    assert line == (
        f"error: no serve-local answers on http://127.0.0.1:{free_port}: start it in another terminal with "
        f"`.venv/bin/grants serve-local --port {free_port}`"
    )


def test_send_webhook_with_a_mistyped_file_name_names_the_file() -> None:
    line = one_line(run("python", "examples/send_webhook.py", "examples/tikcet.json"))
    assert line == "send_webhook.py: error: examples/tikcet.json: no such file"


def test_send_webhook_to_plain_http_beyond_this_machine_says_to_use_https() -> None:
    url = "http://func-grants.example.com/api/grants"
    line = one_line(run("python", "examples/send_webhook.py", "examples/ticket.json", "--url", url))
    assert line == f"error: the webhook URL must be https (plain http only to a loopback serve-local): {url}"


def test_callback_receiver_on_a_busy_port_names_the_port_and_the_flag(busy_port: int) -> None:
    line = one_line(run("python", "examples/callback_receiver.py", "--port", str(busy_port)))
    assert line.startswith(f"callback_receiver.py: error: port {busy_port} on 127.0.0.1 is in use")
    assert "--port" in line


def test_drift_with_no_serve_local_running_says_how_to_start_it_as_the_other_commands_do(free_port: int) -> None:
    line = one_line(run("python", "-m", "shared", "drift", "--serve-local", "--port", str(free_port)))
    assert line.endswith(f"start it in another terminal with `.venv/bin/grants serve-local --port {free_port}`")
    status = one_line(run("python", "-m", "shared", "status", "RITM0010001", "--serve-local", "--port", str(free_port)))
    assert line == status


@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl on this machine")
def test_the_readmes_curl_with_nothing_listening_says_the_connection_was_refused(free_port: int) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    [command, *_] = re.findall(r"^\$ (sed -n \dp examples/hr-events\.jsonl \| curl .*)$", readme, re.MULTILINE)
    line = one_line(run("bash", "-c", command.replace(":7071/", f":{free_port}/")))
    assert line.startswith("curl: (7) ")  # couldn't connect
