"""Retry policy (pure) and app settings."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.config import APP_ROOT, APP_SETTINGS, AZURITE_KEY, LedgerConnection, Settings
from shared.core.errors import ConfigError, Reason, TransientError
from shared.core.retry import GiveUp, Retry, RetryPolicy, Waiting, delivery_count_problem
from shared.runtime import check_configuration

UNAVAILABLE = TransientError(Reason.GRAPH_UNAVAILABLE, "503")
MISSING_MEMBER = TransientError(Reason.MEMBER_NOT_FOUND, "404")
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def policy(**overrides: Any) -> RetryPolicy:
    defaults = {"max_attempts": 8, "base_delay": 10.0, "max_delay": 900.0, "member_not_found_window": 600.0}
    defaults.update(overrides)
    return RetryPolicy(jitter=lambda: 1.0, **defaults)  # type: ignore[arg-type]


@pytest.mark.parametrize(("attempt", "ceiling"), [(1, 10), (2, 20), (3, 40), (5, 160), (7, 640)])
def test_backoff_doubles_from_the_base(attempt: int, ceiling: float) -> None:
    assert policy().decide(attempt=attempt, error=UNAVAILABLE, now=T0) == Retry(ceiling)


def test_backoff_is_capped() -> None:
    assert policy(max_attempts=100).decide(attempt=40, error=UNAVAILABLE, now=T0) == Retry(900)


def test_full_jitter_scales_the_ceiling() -> None:
    half = RetryPolicy(jitter=lambda: 0.5)
    assert half.decide(attempt=3, error=UNAVAILABLE, now=T0) == Retry(20)


def test_retry_after_wins_but_is_capped() -> None:
    throttled = TransientError(Reason.THROTTLED, "429", retry_after=37)
    assert policy().decide(attempt=1, error=throttled, now=T0) == Retry(37)
    slow = TransientError(Reason.THROTTLED, "429", retry_after=10_000)
    assert policy().decide(attempt=1, error=slow, now=T0) == Retry(900)


def test_gives_up_at_max_attempts() -> None:
    decision = policy(max_attempts=3).decide(attempt=3, error=UNAVAILABLE, now=T0)
    assert isinstance(decision, GiveUp)
    assert "3 attempts" in decision.why


def not_found(answers: int, *, since: float = 0) -> Waiting:
    """`answers` member-not-found answers before this attempt, the first `since` seconds after `T0`."""
    return Waiting(answers=answers, since=T0 + timedelta(seconds=since)) if answers else Waiting()


def test_member_not_found_gives_up_only_after_its_window_and_its_minimum_answers() -> None:
    """Waiting is not failing: a window passed at the 2nd member-not-found answer, or the 5th answer within the
    window, is retried; the window and 5 such answers both passed give up."""
    at = functools.partial(policy().decide, error=MISSING_MEMBER)
    assert isinstance(at(attempt=2, waiting=not_found(1), now=T0 + timedelta(seconds=599)), Retry)
    assert isinstance(at(attempt=2, waiting=not_found(1), now=T0 + timedelta(days=1)), Retry)
    assert isinstance(at(attempt=5, waiting=not_found(4), now=T0 + timedelta(seconds=599)), Retry)
    decision = at(attempt=5, waiting=not_found(4), now=T0 + timedelta(seconds=600))
    assert isinstance(decision, GiveUp)
    assert "still not found" in decision.why


def test_member_not_found_window_is_per_source_system() -> None:
    """A bulk job's mistyped member gives up after a short window; an HR joiner is waited for longer."""
    windows = policy(member_not_found_windows={"bulk": 60.0, "hr": 3600.0})
    at = functools.partial(windows.decide, attempt=5, error=MISSING_MEMBER, waiting=not_found(4))
    assert isinstance(at(now=T0 + timedelta(seconds=60), source="bulk"), GiveUp)
    assert isinstance(at(now=T0 + timedelta(seconds=600), source="hr"), Retry)
    assert isinstance(at(now=T0 + timedelta(seconds=600), source="ticketing"), GiveUp)
    settings = Settings.from_env({"GRANTS_MEMBER_NOT_FOUND_WINDOWS": "bulk=60, hr=3600"})
    assert settings.member_not_found_windows == {"bulk": 60.0, "hr": 3600.0}
    with pytest.raises(ConfigError, match="GRANTS_MEMBER_NOT_FOUND_WINDOWS"):
        Settings.from_env({"GRANTS_MEMBER_NOT_FOUND_WINDOWS": "payroll=60"})


@pytest.mark.parametrize("reason", [Reason.LEDGER_UNAVAILABLE, Reason.PAIR_BUSY])
def test_the_ledger_being_down_or_busy_never_dead_letters(reason: Reason) -> None:
    """Issue 13: ledger unreachable / throttled (or the pair's lease held) is retried past GRANTS_MAX_ATTEMPTS."""
    error = TransientError(reason, "storage answered 503", retry_after=30)
    assert policy().decide(attempt=50, error=error, now=T0 + timedelta(days=1)) == Retry(30)


#: Answers an attempt can meet: a member not found yet, and the others (a 503, a 429 with Retry-After, the ledger).
ANSWERS = {
    "not_found": MISSING_MEMBER,
    "unavailable": UNAVAILABLE,
    "throttled": TransientError(Reason.THROTTLED, "429", retry_after=30),
    "ledger": TransientError(Reason.LEDGER_UNAVAILABLE, "storage answered 503"),
}


@given(
    steps=st.lists(
        st.tuples(st.sampled_from(sorted(ANSWERS)), st.floats(min_value=0, max_value=20_000)), min_size=1, max_size=40
    ),
    window=st.sampled_from([0.0, 60.0, 600.0, 3600.0]),
    min_answers=st.integers(min_value=1, max_value=6),
    max_attempts=st.integers(min_value=1, max_value=10),
)
@settings(max_examples=300)
def test_property_only_member_not_found_answers_and_the_time_between_them_count_toward_giving_up_on_one(
    steps: list[tuple[str, float]], window: float, min_answers: int, max_attempts: int
) -> None:
    """Over any sequence of answers, each attempt queued any time after the previous one's delay (a backlog), the
    policy gives up exactly when a model that sees only what counts says so: on a member not found, once it is at
    least the minimum-th such answer and the window has passed since the first of them (earlier 503s, 429s and time
    queued before do not count, nor does GRANTS_MAX_ATTEMPTS); on any other answer (but the ledger's), once the
    attempts that met one reach GRANTS_MAX_ATTEMPTS. What counts survives the copies' properties."""
    chosen = policy(
        member_not_found_window=window, member_not_found_min_attempts=min_answers, max_attempts=max_attempts
    )
    waiting, elapsed, not_found_at, failed = Waiting(), 0.0, list[float](), 0
    for attempt, (answer, queued) in enumerate(steps, start=1):
        elapsed += queued
        error = ANSWERS[answer]
        decision = chosen.decide(
            attempt=attempt, error=error, now=T0 + timedelta(seconds=elapsed), waiting=waiting, source="bulk"
        )
        if answer == "not_found":
            not_found_at.append(elapsed)
            expected = len(not_found_at) >= min_answers and elapsed - not_found_at[0] >= window
        else:
            failed += 1
            expected = answer != "ledger" and failed >= max_attempts
        assert isinstance(decision, GiveUp) is expected, (attempt, answer, not_found_at, failed)
        if isinstance(decision, GiveUp):
            return
        waiting = Waiting.read(waiting.after(error, at=T0 + timedelta(seconds=elapsed)).properties())
        assert waiting.answers == len(not_found_at)
        elapsed += decision.delay


def test_base_zero_gives_zero_delays() -> None:
    assert policy(base_delay=0).decide(attempt=5, error=UNAVAILABLE, now=T0) == Retry(0)


def test_settings_defaults_match_the_documented_interface() -> None:
    settings = Settings.from_env({})
    assert settings.graph_base_url == "https://graph.microsoft.com/v1.0"
    assert settings.graph_scope == "https://graph.microsoft.com/.default"
    assert (settings.max_attempts, settings.retry_base_seconds, settings.retry_max_seconds) == (8, 10, 900)
    assert settings.member_not_found_window_seconds == 600
    assert settings.activate_roles is False
    assert set(APP_SETTINGS) >= {
        "GRANTS_MAX_ATTEMPTS",
        "GRANTS_RETRY_BASE_SECONDS",
        "GRANTS_RETRY_MAX_SECONDS",
        "GRANTS_MEMBER_NOT_FOUND_WINDOW_SECONDS",
        "GRANTS_ACTIVATE_ROLES",
        "GRAPH_BASE_URL",
    }


@pytest.mark.parametrize(
    ("url", "scope"),
    [
        ("https://graph.microsoft.us/v1.0", "https://graph.microsoft.us/.default"),
        ("https://dod-graph.microsoft.us/v1.0/", "https://dod-graph.microsoft.us/.default"),
        ("https://microsoftgraph.chinacloudapi.cn/v1.0", "https://microsoftgraph.chinacloudapi.cn/.default"),
        ("http://127.0.0.1:8080/v1.0", "http://127.0.0.1:8080/.default"),
    ],
)
def test_scope_follows_the_national_cloud(url: str, scope: str) -> None:
    assert Settings.from_env({"GRAPH_BASE_URL": url}).graph_scope == scope


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("GRAPH_BASE_URL", "http://graph.microsoft.com/v1.0", "plain http only on loopback"),
        ("GRAPH_BASE_URL", "graph.microsoft.com", "absolute http(s) URL"),
        ("GRANTS_MAX_ATTEMPTS", "0", "at least 1"),
        ("GRANTS_MAX_ATTEMPTS", "2.5", "whole number"),
        ("GRANTS_MAX_DELIVERY_COUNT", "1", "at least 2 are needed"),
        ("GRANTS_MAX_DELIVERY_COUNT", "7", "fewer than GRANTS_MAX_ATTEMPTS (8)"),
        ("GRANTS_RETRY_BASE_SECONDS", "-1", "at least 0"),
        ("GRANTS_RETRY_BASE_SECONDS", "0", "tight loop for the whole window"),  # beside the default 600 s window
        ("GRANTS_RETRY_MAX_SECONDS", "nan", "at least 0"),
        ("GRANTS_ACTIVATE_ROLES", "maybe", "true or false"),
        ("GrantsLedger__tableServiceUri", "http://ledger.table.core.windows.net", "http on loopback for Azurite"),
        ("GrantsLedger__tableServiceUri", "ledger.table.core.windows.net", "must be an https URL"),
        ("GrantsLedger__tableName", "grant-ledger", "letters and digits"),
        ("GrantsLedger__tableName", "1ledger", "starting with a letter"),
    ],
)
def test_bad_settings_are_named(name: str, value: str, says: str) -> None:
    with pytest.raises(ConfigError, match=name) as caught:
        Settings.from_env({name: value})
    assert says in str(caught.value)


def test_relative_policy_and_rules_paths_are_relative_to_the_app_root_whatever_the_working_directory() -> None:
    """In Azure the worker's directory is not the package's: a relative path names a file of the package."""
    settings = Settings.from_env({"GRANTS_POLICY": "examples/policy.json", "GRANTS_HR_RULES": "/etc/hr-rules.json"})
    assert settings.policy_path == str(APP_ROOT / "examples" / "policy.json")
    assert (APP_ROOT / "function_app.py").is_file()
    assert settings.hr_rules_path == "/etc/hr-rules.json"
    assert Settings.from_env({}).policy_path is None


def test_the_ledger_is_https_in_azure_or_azurite_on_loopback() -> None:
    assert Settings.from_env({}).ledger_table_uri is None
    assert Settings.from_env({}).ledger_table == "grantledger"
    azure = Settings.from_env({"GrantsLedger__tableServiceUri": "https://stledger.table.core.windows.net/"})
    assert azure.ledger_table_uri == "https://stledger.table.core.windows.net"
    local = Settings.from_env({"GrantsLedger__tableServiceUri": "http://127.0.0.1:10002/devstoreaccount1"})
    assert local.ledger_table_uri == "http://127.0.0.1:10002/devstoreaccount1"


def test_the_ledger_connection_string_wins_over_the_identity_form_as_the_host_resolves_connections() -> None:
    """``GrantsLedger`` (exact name) beside ``GrantsLedger__tableServiceUri`` (prefix): the exact match is used."""
    settings = Settings.from_env(
        {
            "GrantsLedger": "UseDevelopmentStorage=true",
            "GrantsLedger__tableServiceUri": "https://x.table.core.windows.net",
        }
    )
    assert settings.ledger == LedgerConnection(
        endpoint="http://127.0.0.1:10002/devstoreaccount1", account_name="devstoreaccount1", account_key=AZURITE_KEY
    )
    assert settings.ledger_table_uri == "http://127.0.0.1:10002/devstoreaccount1"
    assert AZURITE_KEY not in repr(settings)
    identity = Settings.from_env({"GrantsLedger__tableServiceUri": "https://x.table.core.windows.net"}).ledger
    assert identity == LedgerConnection(endpoint="https://x.table.core.windows.net")
    assert identity.uses_identity


def test_an_account_key_connection_string_names_its_table_endpoint_or_derives_it() -> None:
    azurite = LedgerConnection.from_connection_string(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        "TableEndpoint=http://127.0.0.1:41234/devstoreaccount1;"
    )
    assert (azurite.endpoint, azurite.account_name, azurite.account_key) == (
        "http://127.0.0.1:41234/devstoreaccount1",
        "devstoreaccount1",
        "a2V5",
    )
    cloud = LedgerConnection.from_connection_string(
        "accountname=sttest;accountkey=a2V5;endpointsuffix=core.usgovcloudapi.net"
    )
    assert cloud.endpoint == "https://sttest.table.core.usgovcloudapi.net"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("AccountName=sttest", "needs AccountName and AccountKey"),
        ("AccountName=sttest;SharedAccessSignature=sv=2024&sig=c2VjcmV0", "SharedAccessSignature is not supported"),
        ("DefaultEndpointsProtocol=http;AccountName=sttest;AccountKey=c2VjcmV0", "https URL"),
        ("just text", "is not a connection string"),
    ],
)
def test_a_bad_ledger_connection_string_is_refused_without_showing_its_key(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        Settings.from_env({"GrantsLedger": value})
    assert "c2VjcmV0" not in str(caught.value)


def test_the_ledger_connection_string_is_refused_inside_azure() -> None:
    with pytest.raises(ConfigError, match="local runs only"):
        Settings.from_env({"GrantsLedger": "UseDevelopmentStorage=true", "WEBSITE_INSTANCE_ID": "abc"})


@pytest.mark.parametrize(
    ("deliveries", "attempts", "consistent"),
    [(10, 8, True), (8, 8, True), (2, 1, True), (1, 1, False), (7, 8, False), (10, 11, False)],
)
def test_a_delivery_count_is_consistent_when_it_allows_a_next_delivery_and_every_attempt(
    deliveries: int, attempts: int, consistent: bool
) -> None:
    """Waiting for a lock expiry needs a next delivery; a message retried by its redelivery needs as many deliveries
    as GRANTS_MAX_ATTEMPTS allows attempts."""
    assert (delivery_count_problem(max_deliveries=deliveries, max_attempts=attempts) is None) is consistent


def test_the_app_refuses_to_start_with_fewer_deliveries_than_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRANTS_MAX_ATTEMPTS", "9")
    monkeypatch.setenv("GRANTS_MAX_DELIVERY_COUNT", "8")
    with pytest.raises(ConfigError, match="GRANTS_MAX_DELIVERY_COUNT") as caught:
        check_configuration()
    assert "fewer than GRANTS_MAX_ATTEMPTS (9)" in str(caught.value)
    monkeypatch.setenv("GRANTS_MAX_DELIVERY_COUNT", "9")
    check_configuration()
