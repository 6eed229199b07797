"""entra-grants' producer client: build a valid grant request, send it (the producer's own queue, or the signed
webhook), and follow its status until it ends.

    request = GrantRequest(request_id="RITM0010042", source_system="ticketing", target=..., member=...)
    with Webhook.serve_local() as webhook, StatusApi.serve_local(producer="ticketing") as api:
        webhook.send(request)
        status = api.wait(request.request_id, timeout=60)

Every error it raises is a `GrantsError`, whose text is one line saying what to do.
"""

from grants_client._errors import (
    ConfigError,
    GrantsError,
    InvalidRequest,
    NotAuthorized,
    NotFound,
    Problem,
    RequestIdConflict,
    TimedOut,
    Unavailable,
)
from grants_client._local import LOCAL_PORT, LOCAL_WEBHOOK_SECRET
from grants_client._message import (
    Action,
    AdministrativeUnit,
    DirectoryRole,
    GrantRequest,
    Member,
    MemberType,
    ScopedRole,
    SourceSystem,
    Target,
)
from grants_client._queue import QueueSender, Sent
from grants_client._status import GroupStatus, RequestStatus, StatusApi
from grants_client._tokens import EntraToken, TokenSource, local_token
from grants_client._webhook import Accepted, Webhook, WebhookAnswer, sign

__all__ = [
    "LOCAL_PORT",
    "LOCAL_WEBHOOK_SECRET",
    "Accepted",
    "Action",
    "AdministrativeUnit",
    "ConfigError",
    "DirectoryRole",
    "EntraToken",
    "GrantRequest",
    "GrantsError",
    "GroupStatus",
    "InvalidRequest",
    "Member",
    "MemberType",
    "NotAuthorized",
    "NotFound",
    "Problem",
    "QueueSender",
    "RequestIdConflict",
    "RequestStatus",
    "ScopedRole",
    "Sent",
    "SourceSystem",
    "StatusApi",
    "Target",
    "TimedOut",
    "TokenSource",
    "Unavailable",
    "Webhook",
    "WebhookAnswer",
    "local_token",
    "sign",
]
