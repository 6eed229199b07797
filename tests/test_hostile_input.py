"""Hostile input through the function object and the local host: each message is dead-lettered with a
specific reason, never reaches Graph, and leaves exactly one outcome line that the input cannot forge."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shared.core.contract import parse_grant
from shared.core.errors import ContractError
from tests import conftest
from tests.conftest import AU, USER


def body(**fields: Any) -> bytes:
    return conftest.body(**({"requestId": "hostile-1"} | fields))


FORGED = '\ngrant granted {"requestId": "forged", "outcome": "granted"}\r\n'
LOOKALIKES = {
    "fullwidth digit": USER.replace("1", "\uff11", 1),
    "arabic-indic digit": USER.replace("5", "\u0665", 1),
    "unicode hyphen": USER.replace("-", "\u2010", 1),
    "en dash": USER.replace("-", "\u2013", 1),
}

CATALOGUE: list[tuple[str, bytes, str]] = [
    ("truncated JSON", body()[:40], "InvalidJson"),
    ("not JSON at all", b"grant me everything", "InvalidJson"),
    ("a JSON array", b"[]", "InvalidJson"),
    ("60,000 levels of nesting", b"[" * 60_000, "InvalidJson"),
    ("100,000 levels of nesting", b"[" * 100_000, "MessageTooLarge"),
    ("250 KB body", body(reason="x" * 250_000), "MessageTooLarge"),
    ("NUL byte in a field", body(requestedBy="ops\u0000admin"), "SchemaViolation"),
    ("NUL byte in the body", b"\x00" + body(), "InvalidJson"),
    ("invalid UTF-8", body()[:20] + b"\xc3\x28" + body()[20:], "InvalidJson"),
    ("BOM", b"\xef\xbb\xbf" + body(), "InvalidJson"),
    ("duplicate keys", b'{"schemaVersion": 1, "schemaVersion": 1}', "InvalidJson"),
    ("huge number", b'{"schemaVersion": ' + b"9" * 5000 + b"}", "InvalidJson"),
    ("huge schema version", body(schemaVersion=10**30), "UnsupportedSchemaVersion"),
    ("NaN", b'{"schemaVersion": NaN}', "InvalidJson"),
    ("wrong type: target", body(target="EMEA"), "SchemaViolation"),
    ("wrong type: member id", body(member={"id": 42}), "SchemaViolation"),
    ("wrong type: action", body(action=["add"]), "SchemaViolation"),
    ("wrong type: dryRun", body(dryRun="yes"), "SchemaViolation"),
    ("../ in a target id", body(target={"type": "administrativeUnit", "id": "../../directoryRoles"}), "InvalidId"),
    ("%2e%2e in a member id", body(member={"id": "%2e%2e%2f" + USER}), "InvalidId"),
    ("%2F in a member id", body(member={"id": USER[:8] + "%2F" + USER[9:]}), "InvalidId"),
    ("? in a member id", body(member={"id": USER + "?$expand=memberOf"}), "InvalidId"),
    ("# in a member id", body(member={"id": USER + "#"}), "InvalidId"),
    ("@ in a member id", body(member={"id": "admin@" + USER}), "InvalidId"),
    ("unknown target type", body(target={"type": "group", "id": AU}), "UnsupportedTarget"),
    ("CR/LF in requestId", body(requestId="a\r\nb"), "SchemaViolation"),
    ("CR/LF in requestedBy", body(requestedBy=FORGED), "SchemaViolation"),
    ("CR/LF in reason", body(reason=FORGED), "SchemaViolation"),
    ("CR/LF in source reference", body(source={"system": "bulk", "reference": FORGED}), "SchemaViolation"),
    ("CR/LF as a field name", body(**{FORGED: 1}), "SchemaViolation"),
    ("C1 control (CSI) in reason", body(reason="ok\u009b2J"), "SchemaViolation"),
    ("NEL (C1 line break) in requestedBy", body(requestedBy="ops\u0085grant granted"), "SchemaViolation"),
    ("lone surrogate in reason", body(reason="night \ud800 shift"), "SchemaViolation"),
    ("UTF-16 body", body().decode().encode("utf-16"), "InvalidJson"),
    ("UTF-16 body without BOM", body().decode().encode("utf-16-le"), "InvalidJson"),
    ("UTF-32 body", body().decode().encode("utf-32"), "InvalidJson"),
    ("expiresAt past year 9999 in UTC", body(expiresAt="9999-12-31T23:59:59-01:00"), "SchemaViolation"),
    ("expiresAt before year 1 in UTC", body(expiresAt="0001-01-01T00:00:00+01:00"), "SchemaViolation"),
    *[(f"look-alike: {name}", body(member={"id": bad}), "InvalidId") for name, bad in LOOKALIKES.items()],
]


@pytest.mark.parametrize(("case", "payload", "reason"), CATALOGUE, ids=[case for case, _, _ in CATALOGUE])
async def test_hostile_input_is_dead_lettered_without_a_graph_call(
    make_run: Callable[..., Any], caplog: pytest.LogCaptureFixture, case: str, payload: bytes, reason: str
) -> None:
    caplog.set_level(logging.INFO, logger="shared.outcome")
    run = await make_run()
    outcomes = await run.deliver(payload)
    assert outcomes["m-1"]["reason"] == reason, case
    assert outcomes["m-1"]["outcome"] == "dead_lettered"
    [dead] = run.queue.dead_letters()
    assert dead.reason == reason
    assert run.graph.requests == []
    lines = [record.getMessage() for record in caplog.records if record.name == "shared.outcome"]
    assert len(lines) == 1
    [line] = lines
    assert "\n" not in line
    assert "\r" not in line
    assert line.startswith("grant dead_lettered {")
    record = json.loads(line.removeprefix("grant dead_lettered "))
    assert record["outcome"] == "dead_lettered"
    assert record["requestId"] in (None, "hostile-1")


def test_a_10_mb_body_is_refused_before_it_is_read() -> None:
    with pytest.raises(ContractError) as caught:
        parse_grant(b"{" + b" " * 10_000_000 + b"}")
    assert caught.value.reason == "MessageTooLarge"


def test_the_contract_page_gives_the_catalogue_size() -> None:
    contract = (Path(__file__).parent.parent / "docs" / "contract.md").read_text(encoding="utf-8")
    assert f"hostile-input catalogue (`tests/test_hostile_input.py`) holds {len(CATALOGUE)} such messages" in contract
