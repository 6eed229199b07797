"""The callback URL policy (pure): which URLs a request may name, the allow-list setting, local mode, and which
resolved addresses a callback may connect to. Properties over IP literal forms, userinfo, schemes, ports, IDNA."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from shared.config import Settings
from shared.core.callbacks import CallbackPolicy, CallbackRefused, is_public_address
from shared.core.errors import ConfigError
from shared.core.messaging import OUTCOME_EVENT_PREFIX, callback_copy_id, outcome_event_id

ALLOWED = "itsm.example.com"
POLICY = CallbackPolicy.from_setting(f'{{"ticketing": ["{ALLOWED}", "jira.example.com:8443"]}}')
LOCAL = CallbackPolicy.from_setting(f'{{"ticketing": ["{ALLOWED}"]}}', loopback=True)


def refused(url: str, policy: CallbackPolicy = POLICY, producer: str | None = "ticketing") -> str:
    with pytest.raises(CallbackRefused) as caught:
        policy.check(url, producer=producer)
    return str(caught.value)


def test_given_an_allow_listed_https_url_then_it_is_taken_apart() -> None:
    target = POLICY.check("https://ITSM.example.com/api/x_grants/callback?ticket=RITM1", producer="ticketing")
    assert (target.scheme, target.host, target.port, target.target) == (
        "https",
        ALLOWED,
        443,
        "/api/x_grants/callback?ticket=RITM1",
    )
    assert target.host_header == ALLOWED
    assert POLICY.check("https://itsm.example.com:443", producer="ticketing").target == "/"
    listed = POLICY.check("https://jira.example.com:8443/cb", producer="ticketing")
    assert (listed.port, listed.host_header) == (8443, "jira.example.com:8443")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://itsm.example.com/cb", "must use https"),
        ("ftp://itsm.example.com/cb", "must use https"),
        ("https://user:pw@itsm.example.com/cb", "userinfo"),
        ("https://itsm.example.com@evil.example/cb", "userinfo"),
        ("https://itsm.example.com\\@evil.example/", "backslash"),
        ("https://evil.example/#@itsm.example.com", "fragment"),
        ("https://itsm.example.com:8443/cb", "port 8443 is not allowed"),
        ("https://itsm.example.com:0443/cb", "leading zeros"),
        ("https://itsm.example.com:99999/cb", "1 to 65535"),
        ("https://itsm.example.com:/cb", "1 to 65535"),
        ("https://itsm.example.com./cb", "trailing dot"),
        ("https://evil.example/cb", "not on the callback allow-list of producer ticketing"),
        ("https://itsm.example.com.evil.example/cb", "not on the callback allow-list"),
        ("https://127.0.0.1/cb", "not an IP address"),
        ("https://2130706433/cb", "not an IP address"),
        ("https://0x7f000001/cb", "not an IP address"),
        ("https://017700000001/cb", "not an IP address"),
        ("https://0x7f.0.0.1/cb", "not an IP address"),
        ("https://127.1/cb", "not an IP address"),
        ("https://[::1]/cb", "not an IP address"),
        ("https://[::ffff:127.0.0.1]/cb", "not an IP address"),
        ("https://[fe80::1%25eth0]/cb", "not an IP address"),
        ("https://169.254.169.254/metadata", "not an IP address"),
        ("https://localhost/cb", "DNS name"),
        ("https://b\u00fccher.example/cb", "printable ASCII"),
        ("https://xn--zz.example/cb", "not valid Punycode"),
        ("https://ab--cd.example/cb", "not xn--"),
        ("https://itsm.example.com/a b", "without spaces"),
        ("https://itsm.example.com/\r\nX: y", "printable ASCII"),
        ("//itsm.example.com/cb", "absolute https URL"),
        ("https:itsm.example.com", "absolute https URL"),
        ("https://itsm.example.com" + "/a" * 1100, "at most 2048"),
    ],
)
def test_given_a_url_outside_the_rules_then_it_is_refused_naming_the_rule(url: str, says: str) -> None:
    assert says in refused(url)


def test_given_a_producer_without_an_allow_list_then_nothing_is_allowed_for_it() -> None:
    assert "allow-list of producer bulk" in refused(f"https://{ALLOWED}/cb", producer="bulk")
    assert "allow-list of producer (unknown)" in refused(f"https://{ALLOWED}/cb", producer=None)
    assert not CallbackPolicy().enabled


def test_given_local_mode_then_loopback_over_http_is_allowed_and_nothing_else_changes() -> None:
    for url, port in [("http://127.0.0.1:8081/cb", 8081), ("http://[::1]:9/cb", 9), ("http://localhost/cb", 80)]:
        target = LOCAL.check(url, producer="ticketing")
        assert (target.loopback, target.port) == (True, port)
    assert LOCAL.check("https://127.0.0.1/cb", producer="ticketing").port == 443
    assert "not an IP address" in refused("http://127.0.0.2/cb", LOCAL)
    assert "not an IP address" in refused("http://10.0.0.1/cb", LOCAL)
    assert "must use https" in refused(f"http://{ALLOWED}/cb", LOCAL)
    assert "userinfo" in refused("http://u@127.0.0.1/cb", LOCAL)


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ("not json", "must be a JSON object"),
        ('["itsm.example.com"]', "must be a JSON object"),
        ('{"crm": ["itsm.example.com"]}', "'crm' is not a producer"),
        ('{"hr": ["itsm.example.com"]}', "producer 'hr' has callback hosts but no secretSetting"),
        ('{"ticketing": "itsm.example.com"}', "must be a list of host names"),
        (
            '{"ticketing": ["10.0.0.1"]}',
            'ticketing callbackHosts[0] "10.0.0.1": the host must be a DNS name, not an IP address',
        ),
        ('{"ticketing": ["itsm.example.com:0"]}', "the port must be a number"),
        ('{"ticketing": ["https://itsm.example.com"]}', "ticketing callbackHosts[0]"),
        ('{"ticketing": ["b\u00fccher.example"]}', "xn-- form"),
    ],
)
def test_given_a_bad_allow_list_then_start_up_fails_naming_the_entry(setting: str, says: str) -> None:
    with pytest.raises(ConfigError, match=r"GRANTS_CALLBACK_HOSTS|GRANTS_PRODUCERS") as caught:
        Settings.from_env({"GRANTS_OUTCOMES_TOPIC": "grant-outcomes", "GRANTS_CALLBACK_HOSTS": setting})
    assert says in str(caught.value)


def test_given_callbacks_without_the_topic_or_local_mode_in_azure_then_start_up_fails() -> None:
    with pytest.raises(ConfigError, match="GRANTS_OUTCOMES_TOPIC is empty"):
        Settings.from_env({"GRANTS_CALLBACK_HOSTS": '{"ticketing": ["itsm.example.com"]}'})
    with pytest.raises(ConfigError, match="local run only"):
        Settings.from_env(
            {"GRANTS_OUTCOMES_TOPIC": "t", "GRANTS_CALLBACK_LOOPBACK": "true", "WEBSITE_SITE_NAME": "func-grants"}
        )
    assert Settings.from_env({}).callbacks == CallbackPolicy()


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",  # noqa: S104 (an address under test)
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fe80::1%eth0",
        "fd00::1",
        "::ffff:127.0.0.1",
        "::ffff:8.8.8.8",
        "2002:7f00:1::1",
        "64:ff9b::7f00:1",
        "ff0e::1",
        "not an address",
    ],
)
def test_given_a_resolved_address_that_is_not_public_unicast_then_it_may_not_be_connected_to(address: str) -> None:
    assert not is_public_address(address)


def test_given_a_public_unicast_address_then_it_may_be_connected_to() -> None:
    assert is_public_address("20.190.160.1")
    assert is_public_address("2603:1030::1")


# --- properties ---------------------------------------------------------------------------------------------------


def ipv4_forms(value: int) -> list[str]:
    """Ways a URL host can spell one IPv4 address that some parser (WHATWG, inet_aton) reads as that address."""
    octets = list(ipaddress.IPv4Address(value).packed)
    return [
        ".".join(map(str, octets)),
        str(value),
        hex(value),
        "0" + oct(value)[2:],
        ".".join(hex(o) for o in octets),
        ".".join("0" + oct(o)[2:] for o in octets),
        f"{octets[0]}.{value & 0xFFFFFF}",
        f"{octets[0]}.{octets[1]}.{value & 0xFFFF}",
        hex(value).upper().replace("0X", "0x"),
    ]


@given(st.integers(0, 2**32 - 1), st.integers(0, 8))
@settings(max_examples=300)
def test_property_no_spelling_of_an_ipv4_address_is_accepted_even_in_local_mode(value: int, form: int) -> None:
    host = ipv4_forms(value)[form]
    assume(host != "127.0.0.1")
    for policy in (POLICY, LOCAL):
        with pytest.raises(CallbackRefused):
            policy.check(f"https://{host}/cb", producer="ticketing")


@given(st.ip_addresses(v=6))
@settings(max_examples=200)
def test_property_no_ipv6_literal_is_accepted(address: ipaddress.IPv6Address) -> None:
    assume(str(address) != "::1")
    for policy in (POLICY, LOCAL):
        with pytest.raises(CallbackRefused):
            policy.check(f"https://[{address}]/cb", producer="ticketing")


_userinfo = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789:%._~-", min_size=0, max_size=12)


@given(_userinfo)
def test_property_any_userinfo_is_refused(userinfo: str) -> None:
    assert "userinfo" in refused(f"https://{userinfo}@{ALLOWED}/cb")


@given(st.from_regex(r"[a-z][a-z0-9+.-]{0,8}", fullmatch=True))
def test_property_only_https_reaches_the_allow_list(scheme: str) -> None:
    url = f"{scheme}://{ALLOWED}/cb"
    if scheme == "https":
        assert POLICY.check(url, producer="ticketing").host == ALLOWED
    else:
        refused(url)


@given(st.integers(-5, 70_000))
def test_property_only_the_default_or_a_listed_port_is_accepted(port: int) -> None:
    for host, allowed in ((ALLOWED, {443}), ("jira.example.com", {8443})):
        url = f"https://{host}:{port}/cb"
        if port in allowed:
            assert POLICY.check(url, producer="ticketing").port == port
        else:
            refused(url)


_unicode_label = st.text(
    alphabet=st.characters(min_codepoint=0xA1, max_codepoint=0x2FFF, categories=["Ll", "Lo"]), min_size=1, max_size=8
)


@given(_unicode_label)
def test_property_an_internationalized_host_is_taken_only_in_its_xn_form(label: str) -> None:
    try:
        ascii_label = label.encode("idna").decode("ascii")
    except UnicodeError:
        assume(False)
    assume(ascii_label.startswith("xn--"))
    policy = CallbackPolicy.from_setting(f'{{"ticketing": ["{ascii_label}.example"]}}')
    assert "printable ASCII" in refused(f"https://{label}.example/cb", policy)
    assert policy.check(f"https://{ascii_label.upper()}.example/cb", producer="ticketing").host == (
        f"{ascii_label}.example"
    )


@given(st.text(max_size=60))
@settings(max_examples=300)
def test_property_anything_is_a_target_or_a_refusal_with_a_printable_reason(url: str) -> None:
    for policy in (POLICY, LOCAL):
        try:
            target = policy.check(url, producer="ticketing")
        except CallbackRefused as error:
            assert str(error).isascii()
            assert str(error).isprintable()
            assert len(url) < 12 or url not in str(error)  # the URL is never echoed back
        else:
            assert target.host in (ALLOWED, "jira.example.com") or target.loopback


# --- derived ids ----------------------------------------------------------------------------------------------


@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}", fullmatch=True))
def test_property_no_producer_id_or_id_derived_from_one_is_in_the_outcome_namespace(request_id: str) -> None:
    """Outcome events and their callback copies are named outcome/<hex>[/callback/<n>]: "/" is in no request id
    (the contract's alphabet) and in no id the app derives from one (":"-joined, hex)."""
    for producer_or_derived in (request_id, f"{request_id}:2", f"{request_id}:expire", f"hr:{request_id}:0a1b"):
        assert "/" not in producer_or_derived
        assert not producer_or_derived.startswith(OUTCOME_EVENT_PREFIX)


def test_outcome_event_ids_are_the_same_for_the_same_effect_and_differ_otherwise() -> None:
    def event(outcome: str, reason: str | None = None, resubmission: str | None = None, message: str = "m-1") -> str:
        return outcome_event_id(
            producer="ticketing", original_message_id=message, resubmission=resubmission, outcome=outcome, reason=reason
        )

    assert re.fullmatch(r"outcome/[0-9a-f]{64}", event("granted"))
    assert event("granted") == event("already_member")  # a redelivery after a crash finds it in place
    assert event("revoked") == event("not_member")
    assert len({event("granted"), event("revoked"), event("would_grant"), event("dead_lettered", "Forbidden")}) == 4
    assert event("dead_lettered", "Forbidden") != event("dead_lettered", "PolicyDenied")
    assert event("dead_lettered", "Forbidden") != event("dead_lettered", "Forbidden", resubmission="r1")
    assert event("granted") != event("granted", message="m-2")
    assert event("granted", message="a:b") != outcome_event_id(
        producer="ticketing", original_message_id="a", resubmission="b", outcome="granted", reason=None
    )
    assert event("granted") != outcome_event_id(  # two producers' messages may share a MessageId
        producer="other", original_message_id="m-1", resubmission=None, outcome="granted", reason=None
    )
    copy = callback_copy_id(event("granted"), 3)
    assert copy == event("granted") + "/callback/3"
    assert len(copy) <= 128
