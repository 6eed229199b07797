"""A hostile HR system, a hostile queue producer and a careless operator against HR events as HR systems mean them,
through the registered functions (``hr_events``, ``grant_membership``) on the local host, the ledger in Azurite and
the Graph double (`tests.test_hr_timelines`'s run: HR events are entered at the run's clock)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from azure.core.exceptions import ServiceResponseError

from grants_cli.dlq import Selector, resubmit
from grants_local.backend import LocalBackend
from shared.adapters.ledger.hr_events import PERSON_EVENTS, _known_fields, _person_key
from shared.adapters.tables import table_key
from shared.core.hr_events import KnownEvent, Placement, parse_event, place
from shared.core.hr_rules import HrRules
from shared.core.messaging import HR_TIEBREAK, RESUBMISSION, RESUBMITTED_FROM
from tests.conftest import AU, AU_OTHER, USER, USER_2
from tests.conftest import body as grant_body
from tests.test_hr_timelines import RULES, Hr, adds, hr_event, hr_run

__all__ = ["hr_run"]  # the fixture, shared with test_hr_timelines

EVERYTHING = {"emea", "helpdesk"}


# --- a queue producer against HR's grants -----------------------------------------------------------------------------


async def test_a_queue_producer_can_neither_end_hr_s_grant_nor_speak_as_hr(hr_run: Callable[..., Any]) -> None:
    """HR's hire puts the person in the EMEA unit. The ``other`` producer then sends, on its own queue: a remove of the
    same pair (its own grant: none, so released), a remove naming source hr (SourceMismatch), a revoke-all (a right it
    does not have) and a remove under HR's own request id (the app's namespace): the person keeps the unit."""
    hr: Hr = await hr_run()
    await hr.enter(hr_event("hire", "evt-hire", effective="2026-11-01"))
    assert hr.holds() == EVERYTHING
    hr_request = next(r for r in hr.run.app.outcomes().values() if str(r["requestId"]).startswith("~hr:evt-hire:"))
    attacks = {
        "a-own": grant_body(requestId="X-1", action="remove", source={"system": "other", "reference": "x"}),
        "a-as-hr": grant_body(requestId="X-2", action="remove", source={"system": "hr", "reference": "EMP-4711"}),
        "a-all": grant_body(
            requestId="X-3", action="remove", revokeAll=True, source={"system": "other", "reference": "x"}
        ),
        "a-id": grant_body(
            requestId=hr_request["requestId"], action="remove", source={"system": "other", "reference": "x"}
        ),
    }
    for message_id, raw in attacks.items():
        hr.run.queue_of("other").send(raw, message_id=message_id)
    await hr.run.app.drain()
    outcomes = {m: (hr.run.app.outcomes()[m]["outcome"], hr.run.app.outcomes()[m]["reason"]) for m in attacks}
    assert outcomes["a-own"] == ("released", None)
    assert outcomes["a-as-hr"] == ("dead_lettered", "SourceMismatch")
    assert outcomes["a-all"][0] == "dead_lettered"
    assert outcomes["a-id"][0] == "dead_lettered"
    assert hr.holds() == EVERYTHING


async def test_a_sealed_hr_grant_replayed_with_altered_properties_is_not_hr_s_and_a_true_copy_is_superseded(
    hr_run: Callable[..., Any],
) -> None:
    """A hire effective the 20th and a leaver effective the 25th, both entered now. On the 20th someone who can read
    the grants queue takes the hire's sealed add of the EMEA unit and sends it again after the leaver, twice: with its
    tiebreak moved to 2099 and posing as a ``dlq resubmit`` copy (its seal no longer checks out: a producer's message
    under the app's id, refused), and byte for byte as a resubmission (the app's own add, placed as the hire: older
    than the leaver, superseded). The person ends with nothing."""
    hr: Hr = await hr_run()
    await hr.enter(hr_event("hire", "evt-hire", effective="2026-11-20"))
    await hr.enter(hr_event("leave", "evt-leave", effective="2026-11-25"))
    hr.run.clock.advance_to(datetime(2026, 11, 20, tzinfo=UTC).timestamp())
    taken = None
    while (message := hr.run.queue.receive()) is not None:
        hr.run.queue.abandon(message.lock_token)
        if json.loads(message.body)["target"].get("id") == AU:
            taken = message
            break
    assert taken is not None
    assert "seal" in taken.application_properties
    await hr.until("2026-11-26")
    assert hr.holds() == set()
    properties = dict(taken.application_properties)
    forged = properties | {HR_TIEBREAK: "2099-01-01T00:00:00+00:00 2099-01-01T00:00:00+00:00"}
    as_resubmitted = {RESUBMISSION: "x1", RESUBMITTED_FROM: taken.message_id}
    hr.run.queue.send(taken.body, message_id="forged", application_properties=forged | as_resubmitted)
    hr.run.queue.send(taken.body, message_id="copy", application_properties=properties | as_resubmitted)
    await hr.finish()
    by_message = {record["messageId"]: record for record in hr.run.app.recorder.records}
    assert (by_message["forged"]["outcome"], by_message["forged"]["reason"]) == ("dead_lettered", "SchemaViolation")
    assert by_message["copy"]["outcome"] == "superseded"
    assert hr.holds() == set()


# --- a hostile HR system ----------------------------------------------------------------------------------------------


async def test_an_event_id_reused_for_another_person_ends_nothing_of_the_first_person(
    hr_run: Callable[..., Any],
) -> None:
    """evt-9 hires the person; a leaver of another person under evt-9 ends only that person's grants; the same eventId
    sent again for the first person with other content is refused InvalidHrEvent: the first person keeps the hire's."""
    hr: Hr = await hr_run()
    await hr.enter(hr_event("hire", "evt-9", effective="2026-11-01"))
    await hr.enter(hr_event("hire", "evt-other", effective="2026-11-01", member=USER_2))
    assert hr.holds(USER_2) == EVERYTHING
    leaver = await hr.enter(hr_event("leave", "evt-9", effective="2026-10-31", member=USER_2))
    assert leaver[-1]["outcome"] == "completed"
    reused = await hr.enter(hr_event("leave", "evt-9", effective="2026-10-31"))
    assert (reused[-1]["outcome"], reused[-1]["reason"]) == ("dead_lettered", "InvalidHrEvent")
    await hr.finish()
    assert hr.holds(USER_2) == set()
    assert hr.holds() == EVERYTHING


async def test_a_leaver_effective_far_ahead_lets_a_transfer_effective_now_stand_until_it_ends_everything(
    hr_run: Callable[..., Any],
) -> None:
    """A leaver effective on the last day the app knows (2099-12-31), then a transfer to APAC effective now: the
    person holds what the transfer gives until the leaver's day has ended, then nothing."""
    hr: Hr = await hr_run()
    await hr.enter(hr_event("hire", "evt-hire", effective="2026-11-01"))
    await hr.enter(hr_event("leave", "evt-leave", effective="2099-12-31"))
    await hr.until("2026-11-02")
    await hr.enter(hr_event("move", "evt-move", effective="2026-11-02", location="APAC", previous={"location": "EMEA"}))
    await hr.until("2099-12-31")
    assert hr.holds() == {"apac", "helpdesk"}
    await hr.finish()
    assert hr.holds() == set()


async def test_an_attribute_past_its_length_is_refused_naming_it_and_one_of_wide_characters_at_it_is_followed(
    hr_run: Callable[..., Any],
) -> None:
    """A department of 129 characters is dead-lettered InvalidHrEvent naming it; one of 128 four-byte characters (and a
    200 kB field the app ignores) is recorded and completed, and a leaver after it ends what it gave."""
    hr: Hr = await hr_run()
    long = await hr.enter(hr_event("hire", "evt-long", effective="2026-11-01", department="D" * 129))
    assert (long[-1]["outcome"], long[-1]["reason"]) == ("dead_lettered", "InvalidHrEvent")
    assert "department" in long[-1]["description"]
    wide = await hr.enter(
        hr_event("hire", "evt-wide", effective="2026-11-01", jobCode="\U0001f600" * 128, notes="n" * 200_000)
    )
    assert wide[-1]["outcome"] == "completed"
    assert hr.holds() == {"emea"}
    await hr.until("2026-11-02")
    await hr.enter(hr_event("leave", "evt-leave", effective="2026-11-01"))
    await hr.finish()
    assert hr.holds() == set()


async def test_a_leaver_of_a_person_with_over_a_thousand_recorded_events_still_ends_everything(
    hr_run: Callable[..., Any],
) -> None:
    """An HR system that sent a person 1,000 events (a nightly sync's, say) before the person leaves: the leaver's own
    record lies past the first 1,000 the index reads, but a leaver is read by its own key and needs no other: it ends
    everything, never retried as the ledger unavailable until dead-lettered (the person would keep their access)."""
    hr: Hr = await hr_run()
    await hr.enter(hr_event("hire", "evt-b-hire", effective="2026-11-01"))
    assert hr.holds() == EVERYTHING
    ledger = hr.run.app.services.ledger
    moment = datetime(2020, 1, 1, tzinfo=UTC)
    rows = []
    for n in range(PERSON_EVENTS):
        event = parse_event(hr_event("hire", f"evt-a{n:04d}", effective="2020-01-01"))
        known = KnownEvent(event=event, placement=Placement(moment=moment, tiebreak=(moment, moment)))
        rows.append(
            {
                "PartitionKey": _person_key("hr", USER),
                "RowKey": table_key("event", event.event_id),
                "producer": "hr",
                "eventId": event.event_id,
                "memberId": USER,
                "recordedAt": moment,
                **_known_fields(known),
            }
        )
    for start in range(0, len(rows), 50):
        await asyncio.gather(*(ledger._table.create_entity(row) for row in rows[start : start + 50]))
    await hr.until("2026-11-02")
    records = await hr.enter(hr_event("leave", "evt-z-leave", effective="2026-11-01"))
    assert records[-1]["outcome"] == "completed", records[-1]
    await hr.finish()
    assert hr.holds() == set()


# --- the ledger failing between the index and the sends ---------------------------------------------------------------


async def test_an_index_write_that_lands_but_is_not_answered_places_the_event_as_first_recorded(
    hr_run: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The storage records a transfer (no effective date: placed at its first arrival) in the person's index, then its
    answer is lost: the delivery is left to its lock expiry; the redelivery finds the record, derives from it and sends.
    A leaver entered before the redelivery, later than the first arrival, stands."""
    hr: Hr = await hr_run()
    await hr.enter(hr_event("hire", "evt-hire", effective="2026-11-01"))
    table = hr.run.app.services.ledger._table
    create = table.create_entity
    lost: list[str] = []

    async def answer_lost(entity: dict[str, Any], **options: Any) -> Any:
        result = await create(entity, **options)
        if str(entity["PartitionKey"]).startswith("hrPerson.") and not lost:
            lost.append(str(entity["RowKey"]))
            raise ServiceResponseError("the connection closed before the answer")
        return result

    monkeypatch.setattr(table, "create_entity", answer_lost)
    hr.queue.send(hr_event("move", "evt-move", location="APAC", previous={"location": "EMEA"}), message_id="e-move")
    first = hr.queue.receive()
    assert first is not None
    hr.queue.abandon(first.lock_token)  # the first arrival is now; its delivery comes below
    await hr.until(hr.run.clock() + 60)
    await hr.enter(hr_event("leave", "evt-leave"))
    records = await hr.handle("e-move")
    assert lost
    assert records[-1]["outcome"] == "completed"
    await hr.finish()
    assert hr.holds() == set()


# --- clock edges ------------------------------------------------------------------------------------------------------


def _starts(day: date, zone: str) -> datetime:
    event = parse_event(hr_event("hire", "evt", effective=day.isoformat()))
    return place(event, first_arrival=datetime(2026, 1, 1, tzinfo=UTC), zone=zone, leavers="endOfDay").moment


def _ends(day: date, zone: str) -> datetime:
    event = parse_event(hr_event("leave", "evt", effective=day.isoformat()))
    return place(event, first_arrival=datetime(2026, 1, 1, tzinfo=UTC), zone=zone, leavers="endOfDay").moment


@pytest.mark.parametrize(
    "zone", ["UTC", "Europe/London", "America/Santiago", "America/Havana", "Asia/Beirut", "Pacific/Kiritimati"]
)
def test_every_day_starts_at_its_first_local_instant_and_a_leaver_ends_when_the_next_day_starts(zone: str) -> None:
    """Every day of 2027 and 2028 (a leap day; in these zones DST starts or ends at midnight on some of them, or at
    1 am): a joiner's moment is the first instant whose local date is its day, and a leaver effective the day before
    ends at that very moment (the two meet at midnight: their tiebreak decides, never a gap or an overlap)."""
    tz, tick = ZoneInfo(zone), timedelta(microseconds=1)
    day = date(2027, 1, 1)
    while day < date(2029, 1, 1):
        start = _starts(day, zone)
        assert (start.astimezone(tz).date(), (start - tick).astimezone(tz).date()) == (day, day - timedelta(days=1))
        assert _ends(day - timedelta(days=1), zone) == start
        day += timedelta(days=1)
    assert _ends(date(2028, 2, 29), zone) == _starts(date(2028, 3, 1), zone)
    assert _ends(date(2027, 12, 31), zone) == _starts(date(2028, 1, 1), zone)


def test_a_leaver_on_the_last_day_the_app_knows_still_ends_after_a_joiner_of_that_day() -> None:
    """2099-12-31: the leaver's end (2100-01-01) lies outside the time domain and is kept just inside it, still after
    the start of that day in every zone."""
    for zone in ("UTC", "Etc/GMT+12", "Pacific/Kiritimati"):
        assert _ends(date(2099, 12, 31), zone) > _starts(date(2099, 12, 31), zone)


# --- a careless operator ----------------------------------------------------------------------------------------------


async def test_another_producer_s_time_bound_grant_of_hr_s_pair_ends_only_its_own(hr_run: Callable[..., Any]) -> None:
    """HR's hire puts the person in the EMEA unit; the ``other`` producer grants the same unit for an hour: when that
    ends (its own expiry), HR's grant still holds the membership."""
    hr: Hr = await hr_run()
    await hr.enter(hr_event("hire", "evt-hire", effective="2026-11-01"))
    expires = datetime.fromtimestamp(hr.run.clock() + 3600, tz=UTC).isoformat()
    raw = grant_body(requestId="X-TIMED", expiresAt=expires, source={"system": "other", "reference": "x"})
    hr.run.queue_of("other").send(raw, message_id="x-timed")
    await hr.until(hr.run.clock() + 7200)
    assert hr.run.app.outcomes()["x-timed"]["outcome"] == "already_member"
    assert hr.holds() == EVERYTHING


async def test_a_leaver_ends_what_hr_granted_under_a_rule_the_operator_has_since_removed(
    hr_run: Callable[..., Any], tmp_path: Any
) -> None:
    """The hire gives the EMEA unit and the helpdesk role; the operator then deploys rules without the helpdesk rule
    (the role is now granted by tickets); the person leaves: HR's grant of the role ends with everything else."""
    hr: Hr = await hr_run()
    await hr.enter(hr_event("hire", "evt-hire", effective="2026-11-01"))
    assert hr.holds() == EVERYTHING
    handler = hr.run.app.services.hr_event
    rules = tmp_path / "without-helpdesk.json"
    rules.write_text(json.dumps({"rules": [r for r in RULES["rules"] if r["name"] != "helpdesk"]}))
    handler._rules = HrRules.load(rules)  # the app restarted with the new rules file
    await hr.until("2026-11-10")
    await hr.enter(hr_event("leave", "evt-leave", effective="2026-11-09"))
    await hr.finish()
    assert hr.holds() == set()


async def test_a_transfer_carried_again_after_the_person_left_and_was_rehired_gives_nothing_of_its_own(
    hr_run: Callable[..., Any],
) -> None:
    """A transfer to APAC whose APAC add cannot be sent is dead-lettered QueueUnavailable; the person leaves, then is
    rehired (EMEA); the operator resubmits the transfer (a second run finds nothing), and the HR system sends it again:
    its add is placed as the transfer, before the leaver (superseded), and the person holds what the rehire gives."""
    hr: Hr = await hr_run()
    await hr.enter(hr_event("hire", "evt-hire", effective="2026-11-01"))
    await hr.until("2026-11-05")
    hr.sender.fail_when(lambda raw: adds(raw, AU_OTHER))
    moved = await hr.enter(
        hr_event("move", "evt-move", effective="2026-11-05", location="APAC", previous={"location": "EMEA"})
    )
    assert (moved[-1]["outcome"], moved[-1]["reason"]) == ("dead_lettered", "QueueUnavailable")
    hr.sender.fail_when(None)
    await hr.until("2026-11-08")
    await hr.enter(hr_event("leave", "evt-leave", effective="2026-11-07"))
    await hr.until("2026-11-12")
    await hr.enter(hr_event("hire", "evt-rehire", effective="2026-11-12"))
    assert hr.holds() == EVERYTHING
    [copy] = resubmit(LocalBackend(hr.queue), Selector(reason="QueueUnavailable"))
    assert (await hr.handle(copy.message_id))[-1]["outcome"] == "completed"
    await hr.finish()
    assert hr.holds() == EVERYTHING
    assert resubmit(LocalBackend(hr.queue), Selector(reason="QueueUnavailable")) == []  # run again: nothing left
    again = hr_event("move", "evt-move", effective="2026-11-05", location="APAC", previous={"location": "EMEA"})
    assert (await hr.enter(again, message_id="e-again"))[-1]["outcome"] == "completed"  # and the HR system's resend
    await hr.finish()
    assert hr.holds() == EVERYTHING
    assert hr.outcome("evt-move", AU_OTHER) == "superseded"


async def test_a_leaver_and_a_rehire_meeting_at_a_midnight_dst_skips_leave_no_gap_and_no_overlap(
    hr_run: Callable[..., Any],
) -> None:
    """HR_TIME_ZONE America/Santiago, where clocks jump from midnight to 1 am on 5 September 2027: a leaver effective
    the 4th ends, and a rehire effective the 5th starts, at that day's first instant (04:00 UTC). Before it the person
    has the hire's; from it, the rehire (entered later) stands."""
    hr: Hr = await hr_run(HR_TIME_ZONE="America/Santiago")
    await hr.enter(hr_event("hire", "evt-hire", effective="2026-11-01", location="APAC"))
    assert hr.holds() == {"apac", "helpdesk"}
    await hr.enter(hr_event("leave", "evt-leave", effective="2027-09-04"))
    await hr.until(hr.run.clock() + 60)
    await hr.enter(hr_event("hire", "evt-rehire", effective="2027-09-05"))
    await hr.until("2027-09-05T03:59:59Z")
    assert hr.holds() == {"apac", "helpdesk"}
    await hr.until("2027-09-05T04:10:00Z")  # the two at one moment: one may wait for the other's lease (PairBusy)
    assert hr.holds() == EVERYTHING
    await hr.finish()
    assert hr.holds() == EVERYTHING
    assert hr.outcome("evt-leave", AU_OTHER) == "revoked"


@pytest.mark.xfail(
    strict=True,
    reason="defect: an event's moment is its effective date in the HR_TIME_ZONE of its first record; after the "
    "operator moves HR_TIME_ZONE east, a rehire effective the day after a leaver recorded under the old zone starts "
    "before that leaver ends, and the leaver's revoke-all ends the rehire's grants",
)
async def test_a_rehire_the_day_after_a_leaver_stands_when_the_operator_has_changed_hr_time_zone_between_them(
    hr_run: Callable[..., Any],
) -> None:
    """A leaver effective the 20th is recorded under UTC (it ends at 21 November 00:00 UTC); the app is then
    redeployed with HR_TIME_ZONE Asia/Tokyo; a rehire effective the 21st follows: the person, rehired, holds what the
    rehire gives."""
    hr: Hr = await hr_run()
    await hr.enter(hr_event("hire", "evt-hire", effective="2026-11-01"))
    await hr.until("2026-11-10")
    await hr.enter(hr_event("leave", "evt-leave", effective="2026-11-20"))
    hr.run.app.services.hr_event._time_zone = "Asia/Tokyo"  # the app restarted with the new setting
    await hr.until("2026-11-12")
    await hr.enter(hr_event("hire", "evt-rehire", effective="2026-11-21"))
    await hr.finish()
    assert hr.holds() == EVERYTHING
