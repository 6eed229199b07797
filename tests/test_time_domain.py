"""One time domain for every producer and every time field (requestedAt, expiresAt, occurredAt, effectiveDate, since).

Times are drawn over years 1 to 9999 at offsets of up to ±14 h, near the app's own now, and from the strings at the
domain's edges. Each is either refused with a reason naming its field, or read as a time inside the domain that the
app's own arithmetic handles (the intent, an expiry removal's microsecond, a leaver's midnight in any zone, history
keys, the message written back). End to end (a few examples through the registered functions, one app reused), no
function raises, every message ends or waits for its time, the expiry sweep never stops, and a later remove for the
same member and target is carried out: no pair stays stuck.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grants_cli.bulk import read_job
from shared.adapters.ledger import history_key
from shared.core.contract import Action, encode, parse_grant
from shared.core.errors import ContractError, Reason
from shared.core.hr_events import derive_messages, effective_at, parse_event
from shared.core.hr_rules import HrRules
from shared.core.intents import content_hash, expiry_removal, intent_of
from shared.core.times import EARLIEST, LATEST
from shared.handlers.status import history_answer
from shared.runtime import services
from tests.conftest import AU, body, message
from tests.test_trust_boundary import BULK, GRANT, RULES, App, hr_event, make_app, rules_file

__all__ = ["make_app", "rules_file"]  # fixtures used here

EXAMPLES = int(os.environ.get("TIME_DOMAIN_EXAMPLES", "400"))
END_TO_END_EXAMPLES = int(os.environ.get("TIME_DOMAIN_END_TO_END", "24"))
#: Strings at the domain's edges, and offsets that carry a time across one (or past Python's years 1 and 9999).
EDGES = (
    "2000-01-01T00:00:00Z",
    "1999-12-31T23:59:59.999999Z",
    "2099-12-31T23:59:59.999999+00:00",
    "2100-01-01T00:00:00Z",
    "2000-01-01T00:30:00+01:00",  # 1999-12-31T23:30Z: before
    "1999-12-31T23:30:00-01:00",  # 2000-01-01T00:30Z: inside
    "2099-12-31T23:30:00-01:00",  # 2100-01-01T00:30Z: after
    "2100-01-01T00:30:00+01:00",  # 2099-12-31T23:30Z: inside
    "2000-01-01T13:59:59+14:00",
    "2099-12-31T10:00:00-14:00",
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
    "0999-12-31T23:59:59Z",
    "1000-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999Z",
    "9999-12-31T23:59:59-01:00",  # after year 9999 in UTC
    "9999-01-01T00:00:00Z",
)
DATE_EDGES = ("0001-01-01", "0999-12-31", "1999-12-31", "2000-01-01", "2099-12-31", "2100-01-01", "9999-12-31")
ZONES = ("UTC", "Pacific/Kiritimati", "Etc/GMT+12", "Europe/Berlin", "America/St_Johns")
offsets = st.integers(-14 * 60, 14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))


def rfc3339(moment: datetime) -> str:
    """`moment` (aware) as RFC 3339: ``Z`` for UTC, else its offset."""
    return moment.isoformat().replace("+00:00", "Z")


anywhere = st.builds(
    lambda naive, zone: rfc3339(naive.replace(tzinfo=zone)),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999)),
    offsets,
)
times = st.one_of(st.sampled_from(EDGES), anywhere)
#: When a message can arrive: the broker's clock, inside the domain and not in its last second (an intent in its last
#: microsecond would date its expiry removal 2100-01-01, which the app's own parser refuses: not before 2100).
arrivals = times.filter(lambda text: inside(text) and utc_of(text) < LATEST - timedelta(seconds=1))
dates = st.one_of(st.sampled_from(DATE_EDGES), times.map(lambda text: text[:10]))


def utc_of(text: str) -> datetime | None:
    """The UTC instant `text` names, None when it has none (before year 1 or after 9999 in UTC)."""
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except OverflowError:
        return None


def inside(text: str) -> bool:
    instant = utc_of(text)
    return instant is not None and EARLIEST <= instant < LATEST


def date_inside(text: str) -> bool:
    return EARLIEST.date() <= date.fromisoformat(text) < LATEST.date()


# --- every parser: refused naming the field, or inside the domain and safe to compute with -------------------------


@settings(max_examples=EXAMPLES)
@given(field=st.sampled_from(["requestedAt", "expiresAt"]), text=times, arrived=arrivals)
def test_a_grant_time_is_refused_naming_its_field_or_read_inside_the_domain(
    field: str, text: str, arrived: str
) -> None:
    """Every grant producer's parser (the queue trigger, the webhook, a bulk job's rows: `parse_grant`)."""
    raw = body(**{field: text})
    try:
        command = parse_grant(raw)
    except ContractError as error:
        assert not inside(text), (text, error.description)
        assert (error.reason, error.description.split(" ")[0]) == (Reason.SCHEMA_VIOLATION, field)
        return
    assert inside(text)
    value = command.requested_at if field == "requestedAt" else command.expires_at
    assert value == utc_of(text)
    assert parse_grant(encode(command)) == command  # written back and read again
    for arrival in (EARLIEST, utc_of(arrived), LATEST - timedelta(seconds=1)):
        assert arrival is not None
        intent = intent_of(command, arrived_at=arrival)
        assert EARLIEST <= intent.requested_at <= arrival
        removal = expiry_removal(command.target, command.member.id, of=intent)  # an intent's microsecond later
        assert parse_grant(encode(removal), own=True) == removal
        assert history_key(intent.requested_at, "request.x").endswith(".request.x")
    assert content_hash(command)


@settings(max_examples=EXAMPLES)
@given(field=st.sampled_from(["requestedAt", "expiresAt"]), text=times)
def test_a_bulk_rows_time_is_refused_naming_its_field_before_the_job_is_sent(
    field: str, text: str, tmp_path_factory: Any
) -> None:
    """`grants submit` reads every row with the trigger's parser: an expiresAt outside the domain is an invalid row
    naming it (CSV), a requestedAt too (JSON lines); a row inside it is sent."""
    folder = tmp_path_factory.mktemp("job")
    if field == "expiresAt":
        path = folder / "job.csv"
        path.write_text(
            f"action,targetType,targetId,memberId,memberType,expiresAt\nadd,administrativeUnit,{AU},{AU},user,{text}\n"
        )
    else:
        path = folder / "job.jsonl"
        path.write_bytes(body(**{field: text}) + b"\n")
    job = read_job(path)
    if inside(text):
        assert (len(job.messages), job.invalid) == (1, [])
    else:
        assert [(row.reason, row.description.split(" ")[0]) for row in job.invalid] == [("SchemaViolation", field)]


RULES_PARSED = HrRules.parse(RULES, where="test rules")
IMMEDIATE = HrRules.parse({**RULES, "leavers": "immediately"}, where="test rules")


@settings(max_examples=EXAMPLES)
@given(
    kind=st.sampled_from(["hire", "move", "leave"]),
    occurred=st.one_of(st.none(), times),
    effective=st.one_of(st.none(), dates),
    received=arrivals,
    zone=st.sampled_from(ZONES),
)
def test_an_hr_events_times_are_refused_naming_the_field_or_give_grants_due_at_a_computable_time(
    kind: str, occurred: str | None, effective: str | None, received: str, zone: str
) -> None:
    raw = hr_event(
        kind,
        "evt-time",
        occurredAt=occurred if occurred is not None else ...,
        effectiveDate=effective if effective is not None else ...,
        previous={"location": "APAC"} if kind == "move" else ...,
    )
    try:
        event = parse_event(raw, message_id="e-1")
    except ContractError as error:
        assert error.reason is Reason.INVALID_HR_EVENT
        assert (effective is not None and not date_inside(effective)) or (occurred is not None and not inside(occurred))
        named = {name for name in ("occurredAt", "effectiveDate") if error.description.startswith(name)}
        assert named, error.description
        return
    assert occurred is None or inside(occurred)
    assert effective is None or date_inside(effective)
    now = utc_of(received)
    assert now is not None
    for rules in (RULES_PARSED, IMMEDIATE):
        due = effective_at(event, zone=zone, leavers=rules.leavers, now=now)
        assert due >= now
        for request_id, grant in derive_messages(event, rules, received_at=now):
            command = parse_grant(grant, own=True)
            assert command.request_id == request_id
            assert command.requested_at is not None
            assert EARLIEST <= command.requested_at < LATEST
            intent = intent_of(command, arrived_at=max(due, now))
            if command.action is Action.REMOVE:
                expiry_removal(command.target, command.member.id, of=intent)


@settings(max_examples=EXAMPLES)
@given(text=st.one_of(times, dates))
async def test_history_since_is_400_naming_since_or_a_time_the_history_can_key(text: str) -> None:
    asked: list[datetime | None] = []

    async def history(*, since: datetime | None = None, **_: Any) -> list[dict[str, Any]]:
        asked.append(since)
        history_key(since, "")  # the ledger's bound
        return []

    answer = await history_answer({"member": AU, "since": text}, producer=None, history=history)
    accepted = date_inside(text) if len(text) == 10 else inside(text)
    if not accepted:
        assert answer.status == 400, text
        assert json.loads(answer.body)["detail"].startswith("since")
    else:
        assert answer.status == 200, (text, answer.body)
        (since,) = asked
        assert since is not None
        assert EARLIEST <= since < LATEST


# --- end to end: every producer, every field, through the functions ------------------------------------------------

_apps: dict[int, App] = {}
PRODUCERS = [
    ("webhook", "requestedAt"),
    ("webhook", "expiresAt"),
    ("queue", "requestedAt"),
    ("queue", "expiresAt"),
    ("bulk", "requestedAt"),
    ("bulk", "expiresAt"),
    ("hr", "occurredAt"),
    ("hr", "effectiveDate"),
    ("history", "since"),
]
#: A time near the app's now (seconds from it, at an offset), or one drawn anywhere.
when = st.one_of(
    st.tuples(st.just("near"), st.integers(-7200, 7200), offsets),
    st.tuples(st.just("text"), times, st.just(None)),
)


def written(spec: tuple[str, Any, Any], now: datetime, field: str) -> str:
    kind, value, zone = spec
    text = rfc3339((now + timedelta(seconds=value)).astimezone(zone)) if kind == "near" else value
    return text[:10] if field == "effectiveDate" else text


@settings(
    max_examples=END_TO_END_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(producer=st.sampled_from(PRODUCERS), spec=when)
async def test_every_producers_times_end_in_a_refusal_or_an_outcome_and_leave_no_pair_stuck(
    make_app: Callable[..., Any], producer: tuple[str, str], spec: tuple[str, Any, Any]
) -> None:
    app = _apps.get(id(make_app)) or _apps.setdefault(id(make_app), await make_app())
    source, field = producer
    text = written(spec, app.now(), field)
    member, unit, tag = str(uuid.uuid4()), str(uuid.uuid4()), uuid.uuid4().hex[:8]
    app.graph.add_user(member)
    app.graph.add_administrative_unit(unit)
    target = {"type": "administrativeUnit", "id": unit}
    fields = {"requestId": f"T-{tag}", "member": {"id": member, "type": "user"}, "target": target, field: text}
    accepted = date_inside(text) if field == "effectiveDate" else inside(text)
    if source == "history":
        code, answer = await app.history(member=member, since=text)
        assert code == (200 if accepted else 400), (text, answer)
        return
    if source == "hr":
        unit = AU  # what the rules give an EMEA joiner
        record = await app.publish(hr_event("hire", f"evt-{tag}", userObjectId=member, **{field: text}), message_id=tag)
        if accepted:
            assert record["outcome"] == "completed", record
        else:
            assert (record["outcome"], record["reason"]) == ("dead_lettered", "InvalidHrEvent"), record
            assert record["description"].startswith(field)
        await app.due()
    elif source == "webhook":
        code, answer = await app.post(message(**fields, source={"system": "ticketing", "reference": tag}))
        assert code == (202 if accepted else 400), (text, answer)
        assert accepted or field in json.dumps(answer)
        await app.due()
    else:
        function = BULK if source == "bulk" else GRANT
        outcome = await app.send(body(**fields), message_id=tag, function=function)
        assert outcome["terminal"], outcome
        if accepted:
            assert (outcome["outcome"], outcome["reason"]) in {("granted", None), ("dead_lettered", "Expired")}, outcome
        else:
            assert (outcome["outcome"], outcome["reason"]) == ("dead_lettered", "SchemaViolation"), outcome
            assert outcome["description"].startswith(field)
    assert app.failed_invocations == app.hr_failed_invocations == 0
    assert not [r for r in app.run.app.recorder.records if r["outcome"] in ("abandoned", "unsettled")]
    app.clock.advance(7201)  # every near time has passed: a time-bound grant's removal is due
    await services().expiry_sweep()  # never stops
    await app.due()
    revoke = {"action": "remove", "revokeAll": True, "source": {"system": "hr"}}  # whoever's grant it was
    remove = body(requestId=f"R-{tag}", member={"id": member, "type": "user"}, target=target, **revoke)
    if source == "hr":
        remove = body(requestId=f"R-{tag}", member={"id": member, "type": "user"}, **revoke)
    removed = await app.send(remove, message_id=f"R-{tag}")
    assert removed["outcome"] in ("revoked", "not_member"), removed
    assert member not in app.members(unit)
