"""What the HTTP triggers answer: an `Answer`, and RFC 9457 problem details (`problem`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["PROBLEM_TYPE", "Answer", "forbidden", "problem", "unauthenticated"]

PROBLEM_TYPE: Final = "urn:entra-grants:problem:"


@dataclass(frozen=True, slots=True)
class Answer:
    """The HTTP answer: status, body, media type and extra headers."""

    status: int
    body: bytes
    content_type: str
    headers: Mapping[str, str] = field(default_factory=dict)


def problem(
    status: int,
    kind: str,
    title: str,
    detail: str,
    errors: list[dict[str, str]] | None = None,
    *,
    retry_after: int | None = None,
) -> Answer:
    """Problem details (``application/problem+json``) of type ``urn:entra-grants:problem:<kind>``, with the invalid
    fields' `errors` when given, and ``Retry-After`` when `retry_after` is."""
    document: dict[str, Any] = {"type": PROBLEM_TYPE + kind, "title": title, "status": status, "detail": detail}
    if errors is not None:
        document["errors"] = errors
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return Answer(status, json.dumps(document).encode(), "application/problem+json", headers)


def unauthenticated(*, enabled: bool) -> Answer:
    """``401``: the API answers authenticated callers only (App Service authentication, Entra ID); with
    authentication off (`enabled` False) nobody can be told apart, and nothing is answered."""
    detail = (
        "sign in with Entra ID: send a bearer token for the function app (App Service authentication)"
        if enabled
        else "App Service authentication is off on this function app, so no caller can be told apart: turn it on"
    )
    return problem(401, "unauthenticated", "Not authenticated", detail)


def forbidden(detail: str) -> Answer:
    """``403``: the caller is known but lacks the right (`shared.core.access`)."""
    return problem(403, "forbidden", "Not allowed", detail)
