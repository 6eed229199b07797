"""Message contract v1: bytes in, a typed command or a ContractError with a reason code out."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.core.contract import (
    LIMITS,
    MAX_CALLBACK_URL_CHARS,
    MAX_MESSAGE_BYTES,
    MEMBER_TYPES,
    Action,
    AdministrativeUnit,
    DirectoryRole,
    MemberType,
    RoleAssignment,
    RoleEligibility,
    SourceSystem,
    parse_grant,
    to_document,
)
from shared.core.contract import encode as contract_encode
from shared.core.errors import ContractError, Reason

AU = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
USER = "15c1a2d5-9101-44b2-83ab-885db8a647ca"
SCHEMA_PATH = Path(__file__).parent.parent / "schemas" / "grant-membership.v1.schema.json"


def message(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "schemaVersion": 1,
        "requestId": "hr-4711-au-emea",
        "action": "add",
        "target": {"type": "administrativeUnit", "id": AU},
        "member": {"id": USER, "type": "user"},
        "source": {"system": "hr", "reference": "EMP-4711"},
        "requestedBy": "onboarding@contoso.com",
        "reason": "New hire, EMEA helpdesk",
        "expiresAt": "2027-01-31T00:00:00Z",
    }
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not None}


def encode(document: Any) -> bytes:
    return json.dumps(document).encode()


def reject(body: bytes) -> ContractError:
    with pytest.raises(ContractError) as caught:
        parse_grant(body)
    return caught.value


def test_full_message_becomes_a_typed_command() -> None:
    command = parse_grant(encode(message()))
    assert command.request_id == "hr-4711-au-emea"
    assert command.action is Action.ADD
    assert command.target == AdministrativeUnit(id=AU)
    assert command.member.id == USER
    assert command.member.type is MemberType.USER
    assert command.source.system is SourceSystem.HR
    assert command.source.reference == "EMP-4711"
    assert command.expires_at == datetime(2027, 1, 31, tzinfo=UTC)


def test_minimal_message_defaults_to_add() -> None:
    command = parse_grant(
        encode(message(action=None, requestedBy=None, reason=None, expiresAt=None, source={"system": "bulk"}))
    )
    assert command.action is Action.ADD
    assert command.requested_by is None
    assert command.source.reference is None


def test_guids_are_normalised_to_lower_case() -> None:
    command = parse_grant(encode(message(target={"type": "administrativeUnit", "id": AU.upper()})))
    assert command.target == AdministrativeUnit(id=AU)


def test_directory_role_by_id_and_by_template() -> None:
    by_id = parse_grant(encode(message(target={"type": "directoryRole", "id": AU})))
    by_template = parse_grant(encode(message(target={"type": "directoryRole", "roleTemplateId": AU})))
    assert by_id.target == DirectoryRole(id=AU)
    assert by_template.target == DirectoryRole(role_template_id=AU)


@pytest.mark.parametrize("kind", [RoleEligibility, RoleAssignment])
@pytest.mark.parametrize(
    ("scope", "read"),
    [("/", "/"), (f"/administrativeUnits/{AU.upper()}", f"/administrativeUnits/{AU}")],
    ids=["tenant", "unit"],
)
def test_pim_targets_name_a_role_definition_at_the_tenant_or_a_unit(
    kind: type[RoleEligibility] | type[RoleAssignment], scope: str, read: str
) -> None:
    """A roleEligibility or roleAssignment target is its role definition and a directory scope, the unit's GUID in
    lower case; written back, it reads the same."""
    name = "roleEligibility" if kind is RoleEligibility else "roleAssignment"
    target = {"type": name, "roleDefinitionId": AU.upper(), "directoryScopeId": scope}
    command = parse_grant(encode(message(target=target)))
    assert command.target == kind(role_definition_id=AU, directory_scope_id=read)  # type: ignore[arg-type]
    assert command.target.unit == (None if scope == "/" else AU)
    assert parse_grant(encode(to_document(command))) == command


@pytest.mark.parametrize(
    "scope",
    [
        "",
        "//",
        "/tenant",
        "/administrativeUnits/",
        f"/administrativeunits/{AU}",
        f"/administrativeUnits/{AU}/",
        f"administrativeUnits/{AU}",
        f"/administrativeUnits/{AU}/members",
        "/administrativeUnits/../../users",
        f"/groups/{AU}",
        f"/{AU}",
        f"/administrativeUnits/{AU}\n",
    ],
)
def test_any_other_directory_scope_is_a_schema_violation_naming_directory_scope_id(scope: str) -> None:
    error = reject(
        encode(message(target={"type": "roleEligibility", "roleDefinitionId": AU, "directoryScopeId": scope}))
    )
    assert error.reason is Reason.SCHEMA_VIOLATION
    assert error.description.startswith("target.directoryScopeId ")
    assert not VALIDATOR.is_valid(
        message(target={"type": "roleEligibility", "roleDefinitionId": AU, "directoryScopeId": scope})
    )


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ({"type": "roleAssignment", "roleDefinitionId": AU}, "target.directoryScopeId is required"),
        ({"type": "roleAssignment", "directoryScopeId": "/"}, "target.roleDefinitionId is required"),
        ({"type": "roleAssignment", "roleDefinitionId": AU, "directoryScopeId": 1}, "target.directoryScopeId must be"),
        ({"type": "roleEligibility", "id": AU, "directoryScopeId": "/"}, "target.id is not used"),
        ({"type": "directoryRole", "id": AU, "directoryScopeId": "/"}, "target.directoryScopeId is only for"),
        ({"type": "administrativeUnit", "id": AU, "roleDefinitionId": AU}, "target.roleDefinitionId is only for"),
    ],
)
def test_pim_target_fields_belong_to_pim_targets_only(target: dict[str, Any], says: str) -> None:
    error = reject(encode(message(target=target)))
    assert error.reason is Reason.SCHEMA_VIOLATION
    assert error.description.startswith(says)


def test_offset_timestamp_is_converted_to_utc() -> None:
    command = parse_grant(encode(message(expiresAt="2027-01-31T02:00:00+02:00")))
    assert command.expires_at == datetime(2027, 1, 31, tzinfo=UTC)


def test_requested_at_is_optional_and_read_as_utc() -> None:
    """Given requestedAt with an offset, the command holds it in UTC; without it, None (old messages stay valid)."""
    assert parse_grant(encode(message())).requested_at is None
    command = parse_grant(encode(message(requestedAt="2026-05-01T09:30:00.25-04:00")))
    assert command.requested_at == datetime(2026, 5, 1, 13, 30, 0, 250000, tzinfo=UTC)


def test_requested_at_survives_to_document_and_back() -> None:
    command = parse_grant(encode(message(requestedAt="2026-05-01T09:30:00+02:00")))
    document = to_document(command)
    assert document["requestedAt"] == "2026-05-01T07:30:00Z"
    assert parse_grant(encode(document)) == command


@pytest.mark.parametrize(
    ("body", "reason", "says"),
    [
        (b"{", Reason.INVALID_JSON, "not JSON"),
        (b"", Reason.INVALID_JSON, "not JSON"),
        (b"[1, 2]", Reason.INVALID_JSON, "JSON object"),
        (b"\xff\xfe{}", Reason.INVALID_JSON, "is UTF-16"),
        (b"\xc3\x28{}", Reason.INVALID_JSON, "not UTF-8"),
        ('{"a": 1}'.encode("utf-32-le"), Reason.INVALID_JSON, "is UTF-32"),
        (b"\xef\xbb\xbf{}", Reason.INVALID_JSON, "byte-order mark"),
        (b'{"a": 1, "a": 2}', Reason.INVALID_JSON, "appears twice"),
        (b'{"schemaVersion": NaN}', Reason.INVALID_JSON, "NaN"),
        (b"[" * 60_000, Reason.INVALID_JSON, "nested too deeply"),
        (b"[" * 100_000, Reason.MESSAGE_TOO_LARGE, "100000 bytes"),
        (b'{"n": ' + b"9" * 5000 + b"}", Reason.INVALID_JSON, "number"),
        (b" " * (MAX_MESSAGE_BYTES + 1), Reason.MESSAGE_TOO_LARGE, "limit is 65536"),
        (encode(message(schemaVersion=2)), Reason.UNSUPPORTED_SCHEMA_VERSION, "schemaVersion 2"),
        (encode(message(schemaVersion="1")), Reason.SCHEMA_VIOLATION, "schemaVersion must be an integer"),
        (encode(message(schemaVersion=True)), Reason.SCHEMA_VIOLATION, "schemaVersion must be an integer"),
        (encode({"requestId": "x"}), Reason.SCHEMA_VIOLATION, "schemaVersion is required"),
        (encode(message(extra=1)), Reason.SCHEMA_VIOLATION, "extra is not a field"),
        (encode(message(requestId=None)), Reason.SCHEMA_VIOLATION, "requestId is required"),
        (encode(message(requestId="a" * 129)), Reason.SCHEMA_VIOLATION, "requestId must be"),
        (encode(message(requestId="bad\nid")), Reason.SCHEMA_VIOLATION, "requestId must be"),
        (encode(message(action="grant")), Reason.SCHEMA_VIOLATION, "action must be one of add, remove"),
        (encode(message(target=None)), Reason.SCHEMA_VIOLATION, "target is required"),
        (encode(message(target=[AU])), Reason.SCHEMA_VIOLATION, "target must be an object"),
        (encode(message(target={"id": AU})), Reason.SCHEMA_VIOLATION, "target.type is required"),
        (encode(message(target={"type": "group", "id": AU})), Reason.UNSUPPORTED_TARGET, '"group" is not supported'),
        (encode(message(target={"type": "administrativeUnit"})), Reason.SCHEMA_VIOLATION, "target.id is required"),
        (encode(message(target={"type": "administrativeUnit", "id": 7})), Reason.SCHEMA_VIOLATION, "must be a string"),
        (
            encode(message(target={"type": "directoryRole", "id": AU, "roleTemplateId": AU})),
            Reason.SCHEMA_VIOLATION,
            "exactly one of id and roleTemplateId",
        ),
        (
            encode(message(target={"type": "administrativeUnit", "id": AU, "roleTemplateId": AU})),
            Reason.SCHEMA_VIOLATION,
            "target.roleTemplateId is only for directoryRole",
        ),
        (
            encode(message(target={"type": "directoryRole", "id": AU}, member={"id": USER, "type": "device"})),
            Reason.UNSUPPORTED_MEMBER,
            "member.type device cannot be a member of a directory role",
        ),
        (
            encode(message(member={"id": USER, "type": "servicePrincipal"})),
            Reason.UNSUPPORTED_MEMBER,
            "member.type servicePrincipal cannot be a member of an administrative unit (it takes: device, group, user)",
        ),
        (
            encode(
                message(
                    target={"type": "scopedRole", "roleTemplateId": AU, "administrativeUnitId": AU},
                    member={"id": USER, "type": "servicePrincipal"},
                )
            ),
            Reason.UNSUPPORTED_MEMBER,
            "cannot be a member of a role scoped to an administrative unit",
        ),
        (encode(message(member={"id": USER, "type": "robot"})), Reason.SCHEMA_VIOLATION, "member.type must be one of"),
        (encode(message(member={"id": USER, "upn": "x"})), Reason.SCHEMA_VIOLATION, "member.upn is not a field"),
        (encode(message(source={"reference": "x"})), Reason.SCHEMA_VIOLATION, "source.system is required"),
        (encode(message(source={"system": "sap"})), Reason.SCHEMA_VIOLATION, "source.system must be one of"),
        (encode(message(reason="x" * 1025)), Reason.SCHEMA_VIOLATION, "reason must be at most 1024"),
        (encode(message(requestedBy="a\r\nforged")), Reason.SCHEMA_VIOLATION, "requestedBy must not contain control"),
        (encode(message(expiresAt="2027-01-31")), Reason.SCHEMA_VIOLATION, "expiresAt must be an RFC 3339"),
        (encode(message(expiresAt="2027-02-30T00:00:00Z")), Reason.SCHEMA_VIOLATION, "expiresAt must be an RFC 3339"),
        (
            encode(message(requestedAt="2026-05-01T09:30:00")),
            Reason.SCHEMA_VIOLATION,
            "requestedAt must be an RFC 3339",
        ),
        (encode(message(requestedAt=1767225600)), Reason.SCHEMA_VIOLATION, "requestedAt must be a string"),
        (encode(message(callback="https://x.example")), Reason.SCHEMA_VIOLATION, "callback must be an object"),
        (encode(message(callback={})), Reason.SCHEMA_VIOLATION, "callback.url is required"),
        (encode(message(callback={"url": 7})), Reason.SCHEMA_VIOLATION, "callback.url must be a string"),
        (encode(message(callback={"url": "ftp://x.example/"})), Reason.SCHEMA_VIOLATION, "callback.url must be an"),
        (encode(message(callback={"url": "https://b\u00fccher.example/"})), Reason.SCHEMA_VIOLATION, "xn-- form"),
        (encode(message(callback={"url": "https://x.example/a b"})), Reason.SCHEMA_VIOLATION, "callback.url must be"),
        (encode(message(callback={"url": "https://x.example/" + "a" * 2048})), Reason.SCHEMA_VIOLATION, "2048"),
        (
            encode(message(callback={"url": "https://x.example/", "secret": "x"})),
            Reason.SCHEMA_VIOLATION,
            "callback.secret is not a field",
        ),
        # valid where they are written, but before year 1 or after year 9999 once in UTC (OverflowError before)
        (encode(message(expiresAt="9999-12-31T23:59:59-01:00")), Reason.SCHEMA_VIOLATION, "expiresAt must be"),
        (encode(message(expiresAt="0001-01-01T00:00:00+01:00")), Reason.SCHEMA_VIOLATION, "expiresAt must be"),
    ],
)
def test_bad_input_is_refused_with_a_specific_reason(body: bytes, reason: Reason, says: str) -> None:
    error = reject(body)
    assert error.reason is reason
    assert says in error.description


@pytest.mark.parametrize(
    "bad_id",
    [
        "../../../users",
        "3f2504e0-4f89-11d3-9a0c-0305e82c3301/../x",
        "%2e%2e%2f",
        "3f2504e0%2F4f89-11d3-9a0c-0305e82c3301",
        "3f2504e0-4f89-11d3-9a0c-0305e82c3301?$select=id",
        "3f2504e0-4f89-11d3-9a0c-0305e82c3301#x",
        "3f2504e0-4f89-11d3-9a0c-0305e82c330 ",
        " 3f2504e0-4f89-11d3-9a0c-0305e82c3301",
        "3f2504e0-4f89-11d3-9a0c-0305e82c3301\n",
        "3f2504e0-4f89-11d3-9a0c-０305e82c3301",  # fullwidth digit zero  # noqa: RUF001
        "3f2504e0\u20104f89-11d3-9a0c-0305e82c3301",  # unicode hyphen
        "3f2504e0-4f89-11d3-9a0c-0305e82c33\u0661\u0662",  # arabic-indic digits
        "{3f2504e0-4f89-11d3-9a0c-0305e82c3301}",
        "3f2504e04f8911d39a0c0305e82c3301",
        "",
    ],
)
def test_ids_that_try_to_escape_the_path_are_invalid_ids(bad_id: str) -> None:
    error = reject(encode(message(member={"id": bad_id})))
    assert error.reason is Reason.INVALID_ID
    assert error.description.startswith("member.id must be a GUID")
    assert "\n" not in error.description


def test_errors_carry_the_request_id_when_it_is_readable() -> None:
    assert reject(encode(message(action="grant"))).request_id == "hr-4711-au-emea"
    assert reject(encode(message(requestId="bad id", action="grant"))).request_id is None


def test_limits_are_inclusive() -> None:
    parse_grant(encode(message(reason="x" * LIMITS["reason"], requestId="r" * 128)))
    url = "https://x.example/" + "a" * (MAX_CALLBACK_URL_CHARS - len("https://x.example/"))
    assert parse_grant(encode(message(callback={"url": url}))).callback_url == url


def test_a_callback_url_travels_with_the_command_and_back_into_the_message() -> None:
    """Given a v1 message with callback.url, the command carries it and `encode` writes it back (v1 unchanged
    otherwise: a message without it is read exactly as before)."""
    command = parse_grant(encode(message(callback={"url": "https://itsm.example.com/api/grants?x=1"})))
    assert command.callback_url == "https://itsm.example.com/api/grants?x=1"
    assert parse_grant(contract_encode(command)) == command
    assert json.loads(contract_encode(command))["callback"] == {"url": "https://itsm.example.com/api/grants?x=1"}
    assert parse_grant(encode(message())).callback_url is None
    assert "callback" not in json.loads(contract_encode(parse_grant(encode(message()))))


# --- properties -----------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)


#: The reasons a message's own bytes can earn (a policy or Graph reason here would be a parser bug).
CONTRACT_REASONS = {
    Reason.INVALID_JSON,
    Reason.MESSAGE_TOO_LARGE,
    Reason.UNSUPPORTED_SCHEMA_VERSION,
    Reason.SCHEMA_VIOLATION,
    Reason.INVALID_ID,
    Reason.UNSUPPORTED_TARGET,
    Reason.UNSUPPORTED_MEMBER,
}


def assert_names_the_problem(error: ContractError) -> None:
    """A contract reason and a one-line, printable ASCII description that a person can act on."""
    assert error.reason in CONTRACT_REASONS
    assert error.description
    assert error.description.isascii()
    assert error.description.isprintable()


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_arbitrary_bytes_give_a_command_or_a_contract_error(body: bytes) -> None:
    try:
        parse_grant(body)
    except ContractError as error:
        assert_names_the_problem(error)


@given(json_values)
@settings(max_examples=300)
def test_arbitrary_json_gives_a_command_or_a_contract_error(document: Any) -> None:
    try:
        parse_grant(encode(document))
    except ContractError as error:
        assert_names_the_problem(error)


#: RFC 3339 timestamps as producers write them, the extreme years and offsets included (an offset can take a
#: valid local time past year 9999, or before year 1, in UTC).
timestamps = st.builds(
    lambda moment, sign, hours, minutes, fraction: (
        moment.isoformat(timespec="seconds") + fraction + ("Z" if sign == "Z" else f"{sign}{hours:02d}:{minutes:02d}")
    ),
    st.one_of(
        st.datetimes(),
        st.sampled_from([datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59), datetime(9999, 12, 31, 12)]),
    ),
    st.sampled_from(["Z", "+", "-"]),
    st.integers(0, 23),
    st.integers(0, 59),
    st.sampled_from(["", ".5", ".123456"]),
)


@given(timestamps)
@settings(max_examples=300)
def test_any_rfc3339_timestamp_gives_a_command_or_a_schema_violation_naming_expires_at(timestamp: str) -> None:
    try:
        command = parse_grant(encode(message(expiresAt=timestamp)))
    except ContractError as error:
        assert_names_the_problem(error)
        assert error.reason is Reason.SCHEMA_VIOLATION
        assert error.description.startswith("expiresAt ")
    else:
        assert command.expires_at is not None
        assert command.expires_at.tzinfo is UTC


@given(st.deferred(lambda: mutated_messages()), timestamps)
@settings(max_examples=200)
def test_mutated_messages_with_any_timestamp_give_a_command_or_a_contract_error(
    document: dict[str, Any], timestamp: str
) -> None:
    try:
        parse_grant(encode({**document, "expiresAt": timestamp}))
    except ContractError as error:
        assert_names_the_problem(error)


# --- the JSON Schema says the same as the parser ------------------------------------------------------------------


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    """ECMA-262 ``$`` never matches before a trailing newline; Python's does. Validate as ECMA would."""
    if isinstance(instance, str) and not re.search(pattern.replace("$", r"\Z"), instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


SCHEMA = json.loads(SCHEMA_PATH.read_text())
Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _ecma_pattern})
VALIDATOR = Validator(SCHEMA)


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_schema_names_the_same_fields_enums_and_limits_as_the_model() -> None:
    properties = SCHEMA["properties"]
    assert set(properties) == {
        "schemaVersion",
        "requestId",
        "action",
        "target",
        "member",
        "source",
        "requestedBy",
        "reason",
        "expiresAt",
        "requestedAt",
        "dryRun",
        "callback",
        "revokeAll",
    }
    assert properties["callback"]["properties"]["url"]["maxLength"] == MAX_CALLBACK_URL_CHARS
    assert properties["action"]["enum"] == [a.value for a in Action]
    assert properties["member"]["properties"]["type"]["enum"] == [m.value for m in MemberType]
    assert properties["source"]["properties"]["system"]["enum"] == [s.value for s in SourceSystem]
    assert SCHEMA["$defs"]["text256"]["maxLength"] == LIMITS["requestedBy"] == LIMITS["source.reference"]
    assert SCHEMA["$defs"]["text1024"]["maxLength"] == LIMITS["reason"]


def test_schema_refuses_the_member_types_each_target_cannot_hold_as_the_contract_does() -> None:
    """The schema's target-to-member-type rules (UnsupportedMember) are the complement of `MEMBER_TYPES`."""
    refused: dict[str, set[str]] = {}
    for rule in SCHEMA["allOf"]:
        if "target" not in rule["if"]["properties"]:
            continue  # revokeAll's rule: a remove only
        kind = rule["if"]["properties"]["target"]["properties"]["type"]["const"]
        excluded = rule["then"]["properties"]["member"]["properties"]["type"]["not"]
        refused[kind] = set(excluded.get("enum", [excluded.get("const")]))
    assert refused == {
        kind: {t.value for t in MemberType} - {t.value for t in taken} for kind, taken in MEMBER_TYPES.items()
    }
    for kind, taken in MEMBER_TYPES.items():
        target = {
            "administrativeUnit": {"type": kind, "id": AU},
            "directoryRole": {"type": kind, "id": AU},
            "scopedRole": {"type": kind, "roleTemplateId": AU, "administrativeUnitId": AU},
        }.get(kind, {"type": kind, "roleDefinitionId": AU, "directoryScopeId": f"/administrativeUnits/{AU}"})
        for member_type in MemberType:
            document = message(target=target, member={"id": USER, "type": member_type.value})
            assert VALIDATOR.is_valid(document) == (member_type in taken), (kind, member_type)
            if member_type not in taken:
                with pytest.raises(ContractError) as refusal:
                    parse_grant(encode(document))
                assert refusal.value.reason is Reason.UNSUPPORTED_MEMBER


field_values = st.one_of(
    st.none(),
    st.sampled_from(
        [
            AU,
            AU.upper(),
            AU + "\n",
            "../x",
            "",
            "administrativeUnit",
            "directoryRole",
            "scopedRole",
            "roleEligibility",
            "roleAssignment",
            "/",
            f"/administrativeUnits/{AU}",
            f"/administrativeUnits/{AU.upper()}",
            f"/administrativeUnits/{AU}/",
            "device",
            "servicePrincipal",
            "user",
            "hr",
            "add",
            "remove",
            "2027-01-31T00:00:00Z",
            "2026-05-01T09:30:00.5+02:00",
            "2026-05-01T09:30:00",
            "2027-01-31",
            "a\nb",
            "x" * 300,
            "https://itsm.example.com/api/x?y=1",
            "http://127.0.0.1:8080/cb",
            "https://",
            "https://x.example/a b",
            "HTTPS://X.EXAMPLE/",
            "https://b\u00fccher.example/",
            "https://x.example/\n",
            "https://x.example/" + "a" * 2031,
            "https://x.example/" + "a" * 2030,
            {"url": "https://itsm.example.com/cb"},
            {"url": "ftp://x.example/"},
            {"url": "https://x.example", "extra": 1},
            1,
            2,
            True,
            False,
            [],
            {},
        ]
    ),
    st.text(max_size=20),
)


@st.composite
def mutated_messages(draw: st.DrawFn) -> dict[str, Any]:
    document = message()
    document["target"] = dict(
        draw(
            st.sampled_from(
                [
                    {"type": "administrativeUnit", "id": AU},
                    {"type": "directoryRole", "id": AU},
                    {"type": "directoryRole", "roleTemplateId": AU},
                    {"type": "roleEligibility", "roleDefinitionId": AU, "directoryScopeId": "/"},
                    {
                        "type": "roleAssignment",
                        "roleDefinitionId": AU,
                        "directoryScopeId": f"/administrativeUnits/{AU}",
                    },
                ]
            )
        )
    )
    if draw(st.booleans()):
        document["callback"] = {"url": "https://itsm.example.com/api/grants/callback"}
    for _ in range(draw(st.integers(0, 3))):
        parts = [document, *(document.get(name) for name in ("target", "member", "source", "callback"))]
        where = draw(st.sampled_from([part for part in parts if isinstance(part, dict)]))
        keys = [
            "id",
            "type",
            "roleTemplateId",
            "administrativeUnitId",
            "roleDefinitionId",
            "directoryScopeId",
            "dryRun",
            "requestedAt",
            "extra",
            "callback",
        ]
        key = draw(st.sampled_from([*where.keys(), *keys, "url"]))
        value = copy.deepcopy(draw(field_values))  # [] and {} are shared objects: never mutate them
        if value is None:
            where.pop(key, None)
        else:
            where[key] = value
    return document


@given(mutated_messages())
@settings(max_examples=500)
def test_schema_and_parser_agree_on_every_message(document: dict[str, Any]) -> None:
    schema_says_valid = VALIDATOR.is_valid(document)
    try:
        parse_grant(encode(document))
        parser_says_valid = True
    except ContractError:
        parser_says_valid = False
    assert schema_says_valid == parser_says_valid, document
