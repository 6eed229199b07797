"""The HTTP API's OpenAPI document (schemas/openapi.json) against the app: every registered route and method in it,
nothing more; every operation's authentication and refusals documented; its status record the one the app writes;
and answers the registered functions really give validate against the schemas it promises."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import azure.functions as func
import jsonschema
import pytest
from referencing import Registry, Resource

import function_app
from grants_local.host import indexed_functions, registered_function
from shared.core.statuses import StatusRecord
from shared.handlers.status import record_json
from tests.conftest import AU, USER, Run, as_operator, as_producer, body, message

ROOT = Path(__file__).resolve().parent.parent
DOCUMENT: dict[str, Any] = json.loads((ROOT / "schemas" / "openapi.json").read_text(encoding="utf-8"))
GRANT_SCHEMA: dict[str, Any] = json.loads((ROOT / "schemas" / "grant-membership.v1.schema.json").read_text())


def registered_routes() -> dict[tuple[str, str], str]:
    """(path, method) -> function name, for every HTTP function the app registers."""
    routes = {}
    for function in indexed_functions(function_app.app):
        for binding in function.get_bindings():
            if binding.type == "httpTrigger":
                for method in binding.methods:
                    routes[(f"/api/{binding.route}", str(method.value).lower())] = function.get_function_name()
    return routes


def documented_routes() -> dict[tuple[str, str], str]:
    return {
        (path, method): operation["operationId"]
        for path, item in DOCUMENT["paths"].items()
        for method, operation in item.items()
    }


def test_the_document_names_exactly_the_registered_routes_with_their_function_names() -> None:
    assert documented_routes() == registered_routes()


def test_every_operation_says_how_its_caller_is_authenticated_and_documents_the_refusals() -> None:
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            assert operation["security"], (path, method)
            assert "401" in operation["responses"], (path, method)
            for code, answer in operation["responses"].items():
                if code.startswith(("4", "5")):
                    assert answer["content"]["application/problem+json"]["schema"] == {
                        "$ref": "#/components/schemas/Problem"
                    }, (path, method, code)
            if method == "get":
                assert "403" in operation["responses"] or path == "/api/grants", (path, method)


def test_the_status_record_schema_has_every_field_the_app_answers() -> None:
    """Every field of the record, and whether its status is terminal and succeeded (`record_json`)."""
    answered = set(
        record_json(StatusRecord(request_id="r", status=StatusRecord.from_json({"status": "granted"}).status))
    )
    assert set(DOCUMENT["components"]["schemas"]["StatusRecord"]["properties"]) == answered
    assert {field.name for field in dataclasses.fields(StatusRecord)}  # the record is a dataclass, read by name


def validator(name: str) -> jsonschema.Draft202012Validator:
    """A validator of the document's schema `name`, its references (the document's own and the grant message's)
    resolved."""
    registry: Registry[Any] = Registry().with_resources(
        [
            (
                "urn:openapi",
                Resource.from_contents({**DOCUMENT, "$schema": "https://json-schema.org/draft/2020-12/schema"}),
            ),
            ("grant-membership.v1.schema.json", Resource.from_contents(GRANT_SCHEMA)),
        ]
    )
    return jsonschema.Draft202012Validator({"$ref": f"urn:openapi#/components/schemas/{name}"}, registry=registry)


@pytest.fixture
async def run(make_run: Any) -> Run:
    run: Run = await make_run()
    return run


async def call(name: str, *, headers: dict[str, str], **parts: Any) -> tuple[int, str, Any]:
    method = "POST" if name in ("grant_webhook", "drift_confirm") else "GET"
    request = func.HttpRequest(method, "http://localhost/api/x", headers=headers, body=parts.pop("body", b""), **parts)
    response = await registered_function(function_app.app, name)(request)
    return response.status_code, response.mimetype, json.loads(response.get_body())


async def test_the_answers_the_app_gives_validate_against_the_document(run: Run) -> None:
    """A granted request's status, a job, a history, the drift report, an ambiguous id, a refusal and a missing
    caller: each answer is what the document promises for its code."""
    await run.deliver(body(requestId="J-1", member={"id": USER, "type": "user"}), producer="bulk")
    await run.deliver(
        json.dumps(message(requestId="J-1", source={"system": "other"})).encode(),  # the same id, another producer
        producer="other",
    )
    answers = {
        "status_by_producer": await call(
            "grant_status", headers=as_producer("bulk"), route_params={"requestId": "J-1"}
        ),
        "ambiguous": await call("grant_status", headers=as_operator(), route_params={"requestId": "J-1"}),
        "history": await call("grant_history", headers=as_operator(), params={"member": USER}),
        "drift": await call("drift_report", headers=as_operator(), params={"target": AU}),
        "unauthenticated": await call("grant_status", headers={}, route_params={"requestId": "J-1"}),
        "forbidden": await call(
            "grant_status", headers=as_producer("bulk"), route_params={"requestId": "J-1"}, params={"producer": "other"}
        ),
    }
    expected = {
        "status_by_producer": (200, "StatusRecord"),
        "ambiguous": (409, "Problem"),
        "history": (200, "History"),
        "drift": (200, "DriftReport"),
        "unauthenticated": (401, "Problem"),
        "forbidden": (403, "Problem"),
    }
    for key, (status, schema) in expected.items():
        code, media, document = answers[key]
        assert code == status, (key, document)
        assert media == ("application/problem+json" if schema == "Problem" else "application/json"), key
        validator(schema).validate(document)
    assert sorted(answers["ambiguous"][2]["producers"]) == ["bulk", "other"]
