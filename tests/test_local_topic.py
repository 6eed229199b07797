"""The local outcomes topic: duplicate detection at the topic, subscriptions chosen by SQL filters over the
application properties (the subset in grants_local/sqlfilter.py), each a peek-lock queue; and the local namespace
keeps it between commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from grants_local.namespace import LocalNamespace
from grants_local.queue import ManualClock
from grants_local.sqlfilter import FilterSyntaxError, compile_filter
from grants_local.topic import CALLBACKS_FILTER, LocalTopic, outcomes_topic

EVENT: dict[str, Any] = {"outcome": "dead_lettered", "reason": "Forbidden", "sourceSystem": "ticketing", "attempt": 3}


@pytest.mark.parametrize(
    ("sql", "matches"),
    [
        ("1=1", True),
        ("1=0", False),
        ("EXISTS(reason)", True),
        ("EXISTS(callbackUrl)", False),
        ("reason IS NOT NULL", True),
        ("callbackUrl IS NULL", True),
        ("outcome = 'dead_lettered'", True),
        ("user.outcome = 'dead_lettered' AND sourceSystem = 'hr'", False),
        ("outcome = 'granted' OR reason IN ('Forbidden', 'PolicyDenied')", True),
        ("outcome NOT IN ('granted', 'already_member')", True),
        ("NOT (outcome = 'granted')", True),
        ("attempt >= 3 AND attempt < 4", True),
        ("attempt = '3'", False),  # a number is not a string
        ("jobId = 'job-1'", False),  # missing: unknown, so not a match
        ("NOT jobId = 'job-1'", False),  # NOT unknown is unknown
        ("jobId = 'job-1' OR 1=1", True),
        ("sourceSystem <> 'hr'", True),
        ("reason = 'it''s'", False),
    ],
)
def test_sql_filters_follow_service_bus_three_valued_logic(sql: str, matches: bool) -> None:
    assert compile_filter(sql)(EVENT) is matches


@pytest.mark.parametrize(
    "sql", ["sys.Label = 'x'", "outcome LIKE 'dead%'", "outcome =", "(1=1", "a + 1 = 2", "x.y = 1"]
)
def test_sql_filters_outside_the_subset_are_refused(sql: str) -> None:
    with pytest.raises(FilterSyntaxError):
        compile_filter(sql)


def test_given_subscriptions_with_filters_when_events_are_published_then_each_takes_what_matches_once() -> None:
    clock = ManualClock()
    topic = outcomes_topic(clock)
    failures = topic.add_subscription("failures", sql_filter="outcome = 'dead_lettered'")
    everything = topic.add_subscription("audit")
    with_callback = {**EVENT, "callbackUrl": "https://itsm.example.com/cb"}
    assert topic.send(b"{}", message_id="outcome/1", application_properties=with_callback)
    assert topic.send(b"{}", message_id="outcome/2", application_properties={"outcome": "granted"})
    assert not topic.send(b"{}", message_id="outcome/1", application_properties=with_callback)  # a duplicate
    assert (topic.stats.sent, topic.stats.duplicates_dropped) == (2, 1)
    assert (topic.subscription("callbacks").stats.sent, failures.stats.sent, everything.stats.sent) == (1, 1, 2)
    locked = topic.subscription("callbacks").receive()
    assert locked is not None
    assert (locked.message_id, locked.application_properties["reason"]) == ("outcome/1", "Forbidden")
    assert topic.subscriptions["callbacks"] == CALLBACKS_FILTER


def test_given_the_duplicate_window_has_passed_then_the_same_id_is_accepted_again() -> None:
    clock = ManualClock()
    topic = LocalTopic(clock=clock, duplicate_detection_window=3600)
    topic.add_subscription("audit")
    assert topic.send(b"{}", message_id="outcome/1")
    clock.advance(3599)
    assert not topic.send(b"{}", message_id="outcome/1")
    clock.advance(1)
    assert topic.send(b"{}", message_id="outcome/1")
    assert topic.subscription("audit").stats.sent == 2


def test_given_no_subscription_matches_then_the_event_is_accepted_and_gone() -> None:
    topic = outcomes_topic(ManualClock())
    assert topic.send(b"{}", message_id="outcome/1", application_properties={"outcome": "granted"})
    assert (topic.stats.unmatched, topic.subscription("callbacks").active_count) == (1, 0)


def test_given_the_local_namespace_then_the_topic_its_subscriptions_and_history_outlive_a_command(
    tmp_path: Path,
) -> None:
    namespace = LocalNamespace(tmp_path)
    with namespace.open_topic("grant-outcomes") as (topic, _):
        topic.send(b"{}", message_id="outcome/1", application_properties={"callbackUrl": "https://x.example/"})
    with namespace.open_topic("grant-outcomes") as (topic, _):
        assert topic.subscriptions == {"callbacks": CALLBACKS_FILTER}
        assert not topic.send(b"{}", message_id="outcome/1", application_properties={"callbackUrl": "x"})
        assert topic.subscription("callbacks").active_count == 1
