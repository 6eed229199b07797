"""Why a grant did not succeed: a small hierarchy whose class decides how the message is settled.

- `PermanentError`: retrying cannot help; the message is dead-lettered with its reason code.
- `TransientError`: retrying later may help; the retry policy chooses the delay or gives up.

Each error carries a stable, machine-readable `reason` (the dead-letter reason) and a `description`
for the person reading the dead-letter queue, plus what Graph said when Graph said something.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Self

__all__ = [
    "ConfigError",
    "ContractError",
    "GrantError",
    "GraphAnswer",
    "PermanentError",
    "Reason",
    "TransientError",
]


class Reason(StrEnum):
    """Reason codes: the dead-letter reason, the `reason` of an outcome line. Stable: a public interface."""

    # The message itself (never reaches Graph).
    INVALID_JSON = "InvalidJson"
    MESSAGE_TOO_LARGE = "MessageTooLarge"
    UNSUPPORTED_SCHEMA_VERSION = "UnsupportedSchemaVersion"
    SCHEMA_VIOLATION = "SchemaViolation"
    INVALID_ID = "InvalidId"
    UNSUPPORTED_TARGET = "UnsupportedTarget"
    # Who asked: established by the entry point or credential (the producer registry), never by the body.
    UNKNOWN_PRODUCER = "UnknownProducer"  # the message came in where no producer may send (or one no longer known)
    SOURCE_MISMATCH = "SourceMismatch"  # the body's source.system is not the one its producer speaks as
    CALLBACK_NOT_ALLOWED = "CallbackNotAllowed"  # callback.url names a host its producer may not be called back on
    INVALID_JOB_ROW = "InvalidJobRow"  # a bulk job's row outside the row count fixed by the job's first row
    UNSUPPORTED_MEMBER = "UnsupportedMember"  # a member type the target cannot hold (Graph would refuse it)
    # An HR event (the hr-events queue), before any grant message is derived from it.
    INVALID_HR_EVENT = "InvalidHrEvent"
    HR_RULES_NOT_CONFIGURED = "HrRulesNotConfigured"
    # Our guardrails (never reaches a Graph write).
    POLICY_DENIED = "PolicyDenied"
    EXPIRED = "Expired"
    EXPIRY_NOT_SCHEDULED = "ExpiryNotScheduled"
    EXPIRY_NOT_DUE = "ExpiryNotDue"  # transient: an expiry came before its grant expired (the app's clock behind)
    # The grant ledger: request ids are idempotency keys; one writer per member and target.
    REQUEST_ID_CONFLICT = "RequestIdConflict"  # the id was used before for another request
    PAIR_BUSY = "PairBusy"  # transient: another request for the same member and target holds its lease
    # Graph's answer.
    TARGET_NOT_FOUND = "TargetNotFound"
    MEMBER_NOT_FOUND = "MemberNotFound"
    ROLE_NOT_ACTIVATED = "RoleNotActivated"
    FORBIDDEN = "Forbidden"
    UNAUTHORIZED = "Unauthorized"
    THROTTLED = "Throttled"
    GRAPH_UNAVAILABLE = "GraphUnavailable"
    GRAPH_REJECTED = "GraphRejected"
    RESTRICTED_ADMINISTRATIVE_UNIT = "RestrictedAdministrativeUnit"  # the app's permissions do not apply inside it
    DYNAMIC_MEMBERSHIP_TARGET = "DynamicMembershipTarget"  # a dynamic unit: its members are its rule's
    ROLE_POLICY_VIOLATION = "RolePolicyViolation"  # PIM's settings for the role refused the request (the rule named)
    SCOPE_MISMATCH = "ScopeMismatch"  # PIM answered another directory scope (or role, or principal) than the one asked
    # Our side.
    TOKEN_UNAVAILABLE = "TokenUnavailable"  # noqa: S105 (a reason code, not a secret)
    LEDGER_UNAVAILABLE = "LedgerUnavailable"  # transient: the ledger's storage is unreachable, failing or throttling
    QUEUE_UNAVAILABLE = "QueueUnavailable"  # transient: a message the app derives could not be sent to its queue
    # A signed callback to the requester (the grant itself is unaffected).
    CALLBACK_FAILED = "CallbackFailed"


@dataclass(frozen=True, kw_only=True)
class GraphAnswer:
    """What Graph answered, kept for the dead-letter description and the outcome log line."""

    status: int
    code: str | None = None
    message: str | None = None
    request_id: str | None = None


class GrantError(Exception):
    """Base class: a grant that did not succeed, with a reason code and a description for a person."""

    def __init__(self, reason: Reason, description: str, *, graph: GraphAnswer | None = None) -> None:
        super().__init__(f"{reason}: {description}")
        self.reason = reason
        self.description = description
        self.graph = graph
        self.role_template_id: str | None = None  # the audit record's, once known (see `for_role_template`)

    def for_role_template(self, template_id: str | None) -> Self:
        """A copy of this error that names the role template its command was about (raise it instead)."""
        annotated = type(self).__new__(type(self))
        annotated.args, annotated.__dict__ = self.args, {**self.__dict__, "role_template_id": template_id}
        return annotated


class PermanentError(GrantError):
    """Retrying cannot help: dead-letter now."""


class ContractError(PermanentError):
    """The message breaks the contract; `request_id` is the message's own id when it could be read."""

    def __init__(self, reason: Reason, description: str, *, request_id: str | None = None) -> None:
        super().__init__(reason, description)
        self.request_id = request_id


class ConfigError(ValueError):
    """A setting, the grant policy, the HR rules or a command's options cannot be used; the message names it.

    Raised at start-up (the app does not start) or by an operator command (exit code 2), never per message.
    """


class TransientError(GrantError):
    """Retrying later may help; `retry_after` is the server's requested delay in seconds, if it gave one;
    `uncertain` says a write was sent whose outcome is unknown (it may have been applied, or still be)."""

    def __init__(
        self,
        reason: Reason,
        description: str,
        *,
        graph: GraphAnswer | None = None,
        retry_after: float | None = None,
        uncertain: bool = False,
    ) -> None:
        super().__init__(reason, description, graph=graph)
        self.retry_after = retry_after
        self.uncertain = uncertain
