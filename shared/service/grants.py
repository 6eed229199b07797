"""The grant service: guardrails, then the handler, then the expiry of a time-bound grant.

`GrantService.execute` checks the policy (a role given by id is checked by its template) before any Graph
write, refuses an add whose ``expiresAt`` has passed (`Expired`, after queueing its removal at once: an
earlier attempt may have written the membership and failed to schedule the removal), runs the handler (a
dry run when ``GRANTS_DRY_RUN`` or the message's ``dryRun`` says so), and after a successful add with ``expiresAt``
schedules the matching ``remove`` at that time, with a request id derived from the grant's so that
scheduling it again (a redelivery) is absorbed by duplicate detection and is harmless anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from shared.adapters.graph import GraphClient
from shared.core.contract import Action, DirectoryRole, GrantCommand, Guid, derived_request_id, encode
from shared.core.errors import GrantError, PermanentError, Reason, TransientError
from shared.core.messaging import EXPIRY_OF, MessageSender
from shared.core.policy import GrantPolicy
from shared.service.membership import Outcome, Result, change_membership
from shared.service.roles import RoleTemplates

__all__ = ["GrantService", "expiry_command"]


class GrantService:
    """Carries out grant commands for one process; built by the composition root."""

    def __init__(
        self,
        *,
        graph: GraphClient,
        policy: GrantPolicy,
        sender: MessageSender,
        now: Callable[[], datetime],
        activate_roles: bool,
        dry_run: bool,
    ) -> None:
        self._graph = graph
        self._policy = policy
        self._sender = sender
        self._now = now
        self._activate_roles = activate_roles
        self._dry_run = dry_run
        self._roles = RoleTemplates()

    async def execute(self, command: GrantCommand) -> Result:
        """Check, carry out and (for time-bound grants) schedule the expiry of one command."""
        template: Guid | None = getattr(command.target, "role_template_id", None)
        try:
            if isinstance(command.target, DirectoryRole):
                template = await self._roles.template_of(command.target, self._graph)
            return await self._execute(command, template)
        except GrantError as error:
            raise error.for_role_template(template) from error

    async def _execute(self, command: GrantCommand, template: Guid | None) -> Result:
        self._policy.check(command, role_template_id=template)
        expires_at = command.expires_at if command.action is Action.ADD else None
        dry_run = self._dry_run or command.dry_run
        if expires_at is not None and expires_at <= (now := self._now()):
            if not dry_run:
                await self._schedule_expiry(command, now)
            raise PermanentError(
                Reason.EXPIRED,
                f"the grant expired at {expires_at.isoformat()} before it could be applied; nothing was granted"
                + ("" if dry_run else ", and its removal was queued in case an earlier attempt had granted it"),
            )
        result = await change_membership(
            command, graph=self._graph, activate_roles=self._activate_roles, dry_run=dry_run
        )
        result = replace(result, role_template_id=template)
        if expires_at is not None and not dry_run and result.outcome in (Outcome.GRANTED, Outcome.ALREADY_MEMBER):
            await self._schedule_expiry(command, expires_at)
            result = replace(
                result, description=f"{result.description}; removal scheduled for {expires_at.isoformat()}"
            )
        return result

    async def _schedule_expiry(self, command: GrantCommand, expires_at: datetime) -> None:
        """Schedule the removal at `expires_at` (MessageId ``<requestId>:expire``: sent twice, it is absorbed)."""
        removal = expiry_command(command)
        try:
            await self._sender.schedule(
                body=encode(removal),
                message_id=removal.request_id,
                application_properties={EXPIRY_OF: command.request_id},
                scheduled_enqueue_time=expires_at,
            )
        except Exception as error:
            raise TransientError(
                Reason.EXPIRY_NOT_SCHEDULED,
                f"the removal of this time-bound membership at {expires_at.isoformat()} could not be scheduled "
                f"({type(error).__name__}); retrying so that the grant does not outlive its expiry",
            ) from error


def expiry_command(command: GrantCommand) -> GrantCommand:
    """The ``remove`` that ends a time-bound grant: same target, member and source; a derived request id."""
    reason = f"Expiry of {command.request_id}" + (f": {command.reason}" if command.reason else "")
    return replace(
        command,
        request_id=derived_request_id(command.request_id, "expire"),
        action=Action.REMOVE,
        expires_at=None,
        dry_run=False,
        reason=reason[:1024],
    )
