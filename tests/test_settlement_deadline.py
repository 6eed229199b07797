"""Settlement off the event loop, with a deadline: a host that is slow to answer (or never answers) a settlement
call over gRPC holds one thread, never the worker's event loop; a call past its deadline leaves the message to its
lock expiry, and a late answer still writes the outcome line."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import azure.functions as func
import pytest

import function_app
from grants_local.binding import to_received_message
from grants_local.host import registered_function
from shared.core.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from shared.service.settle import outcome_log
from tests.conftest import AU, USER, Run, body

WEBHOOK = registered_function(function_app.app, "grant_webhook")
GRANT = registered_function(function_app.app, "grant_membership")
SECRET = "s3cret-for-tests-only-0123456789abcdef"
#: How long the held call stalls at most: long against what the assertions allow, so a blocked loop shows.
STALL_SECONDS = 3.0


def signed_ticket(now: float) -> func.HttpRequest:
    raw = json.dumps(
        {
            "ticketNumber": "RITM1",
            "requester": "alice@contoso.com",
            "approver": "bob@contoso.com",
            "target": {"type": "administrativeUnit", "id": AU},
            "member": USER,
        }
    ).encode()
    headers = {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: str(int(now)),
        SIGNATURE_HEADER: sign(secret=SECRET, timestamp=int(now), body=raw),
    }
    return func.HttpRequest("POST", "http://localhost/api/grants", headers=headers, body=raw)


class TerminalLine(logging.Handler):
    """Sets `seen` when a terminal grant outcome line is logged (from any thread)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        grant: Mapping[str, Any] | None = getattr(record, "grant", None)
        if grant is not None and grant.get("terminal"):
            self.seen.set()


async def test_given_a_host_stalling_a_complete_when_a_webhook_request_comes_meanwhile_then_it_is_answered_at_once(
    make_run: Callable[..., Any],
) -> None:
    run: Run = await make_run(GRANTS_WEBHOOK_SECRET=SECRET)  # the deadline (5 s) is longer than the stall
    hold = run.app.server.hold("Complete", seconds=STALL_SECONDS)
    loop = asyncio.get_running_loop()
    answers: list[tuple[int, float]] = []

    def ticketing_system() -> None:
        """Calls the webhook once the delivery is waiting for the host, as a client on another machine would."""
        assert hold.arrived.wait(10)
        sent = time.perf_counter()
        response = asyncio.run_coroutine_threadsafe(WEBHOOK(signed_ticket(run.clock())), loop).result(timeout=30)
        answers.append((response.status_code, time.perf_counter() - sent))
        hold.release.set()  # and now the host answers

    client = threading.Thread(target=ticketing_system)
    client.start()
    run.queue.send(body(requestId="slow-1"), message_id="m-1")
    await run.app.drain()
    await asyncio.to_thread(client.join)

    [(status, latency)] = answers
    assert status == 202
    assert latency < STALL_SECONDS / 4  # milliseconds in practice; a blocked event loop would wait out the stall
    assert run.app.outcomes()["m-1"]["outcome"] == "granted"


async def test_given_a_host_that_never_answers_when_delivered_then_the_deadline_frees_the_worker_and_it_is_redelivered(
    make_run: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shared.outcome")
    run: Run = await make_run(GRANTS_SETTLEMENT_TIMEOUT_SECONDS="0.3")
    hold = run.app.server.hold("Complete", seconds=STALL_SECONDS)  # "never", against the 0.3 s deadline
    run.queue.send(body(requestId="stuck-1"), message_id="m-1")
    caplog.clear()

    started = time.perf_counter()
    await run.app.drain()  # the first delivery gives up on its Complete; the lock expires (virtual time); again
    elapsed = time.perf_counter() - started

    assert elapsed < STALL_SECONDS / 2
    records = run.app.recorder.records
    assert [(r["outcome"], r["terminal"]) for r in records] == [("unsettled", False), ("already_member", True)]
    assert records[0]["description"].startswith("granted: added user")
    assert "the host did not answer complete within 0.3 s" in records[0]["description"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith("grant unsettled {")
    assert run.graph.members_of(AU) == {USER}
    assert run.queue.stats.completed == 1
    hold.release.set()  # the stalled call now meets a lock that is gone: it fails, and changes nothing


async def test_given_a_settlement_that_answers_after_its_deadline_then_the_outcome_line_is_written_then(
    make_run: Callable[..., Any],
) -> None:
    run: Run = await make_run(GRANTS_SETTLEMENT_TIMEOUT_SECONDS="0.2")
    hold = run.app.server.hold("Complete", seconds=STALL_SECONDS)
    run.queue.send(body(requestId="late-1"), message_id="m-1")
    locked = run.queue.receive()
    assert locked is not None
    terminal = TerminalLine()
    outcome_log.addHandler(terminal)
    try:
        await GRANT(receivedmessage=to_received_message(locked), message_actions=run.actions)
        assert [r["outcome"] for r in run.app.recorder.records] == ["unsettled"]
        hold.release.set()  # the host answers at last, within the lock
        assert await asyncio.to_thread(terminal.seen.wait, 10)
    finally:
        outcome_log.removeHandler(terminal)
    assert [(r["outcome"], r["terminal"]) for r in run.app.recorder.records] == [
        ("unsettled", False),
        ("granted", True),
    ]
    assert run.app.calls() == ["Complete"]
    assert run.queue.stats.completed == 1


async def test_given_a_lock_lost_mid_write_then_one_outcome_line_each_delivery_and_the_granted_record_stays(
    make_run: Callable[..., Any], graph: Any
) -> None:
    """The host answers the granting delivery's complete FAILED_PRECONDITION (its lock was lost while Graph wrote):
    that delivery logs one outcome line (unsettled, saying it granted), the function does not raise, and the
    redelivery, which finds the member in place, ends already_member without writing over the granted status and its
    Graph request id; one outcome event (the topic keeps the first)."""
    run: Run = await make_run(GRANTS_OUTCOMES_TOPIC="grant-outcomes")
    run.app.server.lose_lock("Complete")
    host = run.app.host()
    run.queue.send(body(requestId="lost-1"), message_id="m-lost")

    await host.drain()

    assert host.failed_invocations == 0, "the function did not raise"
    assert [(c.method, c.code) for c in run.app.server.calls] == [
        ("Complete", "FAILED_PRECONDITION"),
        ("Complete", "OK"),
    ]
    first, second = run.app.recorder.records
    assert (first["outcome"], first["terminal"]) == ("unsettled", False)
    assert first["description"].startswith("granted: added user")
    assert "the host refused complete (SettlementError" in first["description"]
    assert (second["outcome"], second["attempts"]) == ("already_member", 2)
    assert "status stays granted" in second["description"]
    assert first["graphRequestId"] in second["description"]
    status = await run.app.services.ledger.status("lost-1", producer="bulk")
    assert status is not None
    assert (status.status.value, status.graph_request_id) == ("granted", first["graphRequestId"])
    assert graph.members_of(AU) == {USER}
    assert run.app.callbacks is not None
    events = [json.loads(body) for _, _, body in run.app.callbacks.topic.accepted]
    assert [(e["requestId"], e["outcome"]) for e in events] == [("lost-1", "granted")]
