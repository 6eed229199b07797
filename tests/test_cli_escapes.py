"""Terminal escapes never reach the operator: whatever a producer put in a message (ESC/OSC/CSI sequences, C1
controls, bidi overrides, line breaks), the CLIs print it escaped, one field on one line."""

from __future__ import annotations

import io
import json
from contextlib import nullcontext
from pathlib import Path

import pytest

from grants_cli.dlq import Selector, run_dlq
from grants_common.printable import printable
from grants_local.backend import LocalBackend
from grants_local.host import LineOutcome
from grants_local.queue import LocalQueue, ManualClock
from grants_local.run import LocalRun, print_dead_letters, print_table
from shared.core.messaging import DeadLetter
from tests.conftest import message

#: Clear screen, a window title (OSC), a C1 CSI, a right-to-left override, an isolate, and a forged line.
HOSTILE = "ok\x1b]0;pwned\x07\x1b[2J\x9b31m \u202egnp.exe\u2066 tab\there\nrequestId: forged\r\u2028"


def assert_terminal_safe(out: str, *, lines: int) -> None:
    assert out.count("\n") == lines, out
    for line in out.splitlines():
        assert line.isprintable(), repr(line)
    assert "forged" not in "".join(line for line in out.splitlines() if line.startswith("requestId: forged"))


def test_printable_escapes_controls_bidi_and_line_breaks_and_leaves_text_alone() -> None:
    assert printable("Approved by j.smith@contoso.com: night shift, café") == (
        "Approved by j.smith@contoso.com: night shift, café"
    )
    assert printable("a\x1b[2Jb\x9bc\u202ed\ne\r\t\u2028\x7f") == "a\\x1b[2Jb\\x9bc\\u202ed\\x0ae\\x0d\\x09\\u2028\\x7f"
    assert printable("\ud800") == "\\ud800"
    assert printable(42) == "42"
    assert printable(HOSTILE).isprintable()


def hostile_dead_letters() -> LocalQueue:
    queue = LocalQueue(clock=ManualClock())
    body = json.dumps({"schemaVersion": 1, "requestId": HOSTILE, "reason": HOSTILE}).encode()
    queue.send(body, message_id="m-1", application_properties={"originalMessageId": HOSTILE})
    locked = queue.receive()
    assert locked is not None
    queue.deadletter(locked.lock_token, reason=HOSTILE, description=HOSTILE)
    return queue


@pytest.mark.parametrize(("action", "lines"), [("list", 4), ("show", 9)])
def test_given_a_hostile_dead_letter_when_listed_or_shown_then_everything_is_escaped(action: str, lines: int) -> None:
    queue, out = hostile_dead_letters(), io.StringIO()
    code = run_dlq(
        action=action,
        selector=Selector(id="m-1" if action == "show" else None),
        dry_run=False,
        yes=False,
        open_backend=lambda: nullcontext(LocalBackend(queue)),
        queue="grant-membership",
        out=out,
    )
    assert code == 0
    assert_terminal_safe(out.getvalue(), lines=lines)
    assert "\\x1b]0;pwned" in out.getvalue()


def test_given_hostile_text_in_a_bulk_job_when_dry_run_then_rows_and_bodies_are_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from grants_cli.main import main

    valid = json.dumps(message(requestId="b-1", reason="night \u202eshift\u2066"), ensure_ascii=False)
    invalid = json.dumps(message(requestId="b-2", reason=HOSTILE))
    path = tmp_path / "job.jsonl"
    path.write_text(valid + "\n" + invalid + "\n", encoding="utf-8")
    assert main(["submit", str(path), "--job-id", "job", "--dry-run", "--local"]) == 1
    out = capsys.readouterr().out
    assert "line 2: SchemaViolation: reason must not contain control characters" in out
    assert "night \\u202eshift\\u2066" in out
    assert_terminal_safe(out, lines=4)


def test_given_hostile_outcomes_when_run_local_prints_its_table_then_they_are_escaped() -> None:
    run = LocalRun(
        outcomes=[
            LineOutcome(
                line=1, request_id=HOSTILE, outcome="dead_lettered", reason=HOSTILE, description=HOSTILE, attempts=1
            )
        ],
        missing_lines=[],
        dead_letters=[
            DeadLetter(
                sequence_number=1,
                message_id=HOSTILE,
                body=b"{}",
                application_properties={"originalMessageId": HOSTILE},
                reason=HOSTILE,
                description=HOSTILE,
                delivery_count=1,
                enqueued_time=None,
            )
        ],
        follow_ups=[{"requestId": HOSTILE, "outcome": "revoked", "reason": HOSTILE, "description": HOSTILE}],
    )
    out = io.StringIO()
    print_table(run, out)
    print_dead_letters(run, out)
    assert_terminal_safe(out.getvalue(), lines=6)
