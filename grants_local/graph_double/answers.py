"""The Graph double's answers: Graph's error bodies and words, and how ids in paths and bodies are read."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

__all__ = [
    "ALREADY_EXIST",
    "BAD_JSON",
    "CONFLICT",
    "DYNAMIC_MEMBERSHIP",
    "INSUFFICIENT",
    "NOT_ASSIGNABLE",
    "TOKEN_EMPTY",
    "TOKEN_EXPIRED",
    "UNSUPPORTED_MEMBER",
    "GraphError",
    "Reply",
    "canonical",
    "error_body",
    "guid",
    "invalid_property",
    "not_found",
    "referenced_id",
    "unknown_segment",
]

ALREADY_EXIST: Final = (
    "One or more added object references already exist for the following modified properties: 'members'."
)
CONFLICT: Final = "A conflicting object with one or more of the specified property values is present in the directory."
BAD_JSON: Final = (
    "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format."
)
NOT_ASSIGNABLE: Final = "Groups without IsAssignableToRole property set cannot be assigned to roles."
UNSUPPORTED_MEMBER: Final = "Unsupported referenced-object resource identifier for link property 'members'."
#: The double's own words for a manual write to a dynamic unit (no Graph text for it was found to copy).
DYNAMIC_MEMBERSHIP: Final = (
    "Members of an administrative unit with dynamic membership are managed by its membership rule and cannot be "
    "added or removed."
)
TOKEN_EXPIRED: Final = "Access token has expired or is not yet valid."  # noqa: S105 (a message)
TOKEN_EMPTY: Final = "Access token is empty."  # noqa: S105 (a message)
INSUFFICIENT: Final = "Insufficient privileges to complete the operation."

_GUID: Final = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_REF_ID: Final = re.compile(r"/(?:directoryObjects|users|groups|servicePrincipals|devices)/([^/?#]+)$", re.IGNORECASE)

Reply = tuple[int, Any]  # status and JSON body (None: no content)


class GraphError(Exception):
    """An answer with Graph's error body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after
        self.headers = dict(headers or {})


def canonical(object_id: str) -> str:
    """A seed id, lower-cased; ValueError unless it is a GUID."""
    key = object_id.lower()
    if not _GUID.match(key):
        raise ValueError(f"not a GUID: {object_id!r}")
    return key


def guid(object_id: str) -> str:
    """A path or body id, lower-cased; ``400 Request_BadRequest`` unless it is a GUID."""
    key = object_id.lower()
    if not _GUID.match(key):
        raise GraphError(400, "Request_BadRequest", f"Invalid object identifier '{object_id}'.")
    return key


def referenced_id(body: Any) -> str:
    """The object id at the end of a ``$ref`` body's ``@odata.id`` URL."""
    if not isinstance(body, dict):
        raise GraphError(400, "BadRequest", BAD_JSON)
    reference = body.get("@odata.id")
    match = _REF_ID.search(reference) if isinstance(reference, str) else None
    if match is None:
        raise GraphError(400, "Request_BadRequest", "Invalid URL format specified in @odata.id.")
    return match.group(1)


def not_found(object_id: str) -> GraphError:
    return GraphError(
        404,
        "Request_ResourceNotFound",
        f"Resource '{object_id}' does not exist or one of its queried reference-property objects are not present.",
    )


def unknown_segment(segment: str) -> GraphError:
    return GraphError(400, "BadRequest", f"Resource not found for the segment '{segment}'.")


def invalid_property(name: str, resource: str, body: Any) -> GraphError:
    if not isinstance(body, dict):
        return GraphError(400, "BadRequest", BAD_JSON)
    return GraphError(
        400, "Request_BadRequest", f"Invalid value specified for property '{name}' of resource '{resource}'."
    )


def error_body(error: GraphError, request_id: str, client_request_id: str) -> dict[str, Any]:
    return {
        "error": {
            "code": error.code,
            "message": error.message,
            "innerError": {
                "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "request-id": request_id,
                "client-request-id": client_request_id,
            },
        }
    }
