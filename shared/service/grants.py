"""The grant service: guardrails, then the handler, then the expiry of a time-bound grant.

`GrantService.execute` checks the policy (a role given by id is checked by its template; a PIM target by its role
definition) before any Graph write, refuses an add whose ``expiresAt`` has passed (`Expired`: if an earlier attempt
wrote the membership, its grant's pending removal in the ledger is the expiry sweep's), runs the handler
(`change_membership`, or for a PIM target `change_schedule`; a dry run when ``GRANTS_DRY_RUN`` or the message's
``dryRun`` says so), and after a successful add with ``expiresAt`` schedules the app's own removal at that time
(`expiry_removal`: the same request however often it is scheduled; for a PIM target Entra ends it at that time too,
and the app's removal then finds nothing: ``not_member``).
An expiry removal is not subject to the source's policy (`guard(own_removal=True)`, decided by the intent gate).
Each command runs in its lane: its Graph requests carry the lane's priority and wait in its lane of the write
governor, and its expiry removal goes to the lane's queue.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from shared.adapters.directory import RoleIds, UnitKinds
from shared.adapters.graph import GraphClient
from shared.adapters.lanes import LaneSender
from shared.core.callbacks import CallbackPolicy, CallbackRefused
from shared.core.contract import (
    DERIVED_PREFIX,
    Action,
    DirectoryRole,
    GrantCommand,
    Guid,
    RoleAssignment,
    RoleEligibility,
    encode,
)
from shared.core.errors import GrantError, PermanentError, Reason, TransientError
from shared.core.intents import content_hash, expiry_removal, intent_of
from shared.core.messaging import EXPIRY_OF, PRODUCER, Lane, derived_message_id
from shared.core.policy import GrantPolicy
from shared.core.producers import APP, Producer
from shared.core.statuses import HOLDS
from shared.service.membership import Result, change_membership
from shared.service.roles import RoleTemplates
from shared.service.schedules import change_schedule

__all__ = ["GrantService"]


class GrantService:
    """Carries out grant commands for one process; built by the composition root."""

    def __init__(
        self,
        *,
        graph: GraphClient,
        policy: GrantPolicy,
        callbacks: CallbackPolicy,
        senders: LaneSender,
        now: Callable[[], datetime],
        activate_roles: bool,
        dry_run: bool,
        role_ids: RoleIds | None = None,
        units: UnitKinds | None = None,
    ) -> None:
        self._graph = graph
        self._role_ids = role_ids or RoleIds()
        self._units = units or UnitKinds()
        self._policy = policy
        self._callbacks = callbacks
        self._senders = senders
        self._now = now
        self._activate_roles = activate_roles
        self._dry_run = dry_run
        self._roles = RoleTemplates()

    async def execute(self, command: GrantCommand, *, producer: Producer, lane: Lane = Lane.INTERACTIVE) -> Result:
        """Check, carry out and (for time-bound grants) schedule the expiry of `producer`'s command, without the
        ledger."""
        template = await self.guard(command, producer=producer, lane=lane)
        result = await self.carry_out(command, template, producer=producer, lane=lane)
        return await self.schedule_expiry(command, result, producer=producer, lane=lane)

    async def role_id(self, template: Guid, *, lane: Lane = Lane.INTERACTIVE) -> Guid | None:
        """The id of the directory role activated from `template` (looked up once per process), None while it is not
        activated or cannot be read now (what needs it then does without)."""
        graph = self._graph.in_lane(lane)
        try:
            return await self._role_ids.role_id(template, read=lambda path: graph.send("GET", path))
        except GrantError:
            return None

    def writes(self, command: GrantCommand) -> bool:
        """False for a dry run (the message's ``dryRun`` or ``GRANTS_DRY_RUN``): nothing is written anywhere."""
        return not (self._dry_run or command.dry_run)

    async def guard(
        self, command: GrantCommand, *, producer: Producer, own_removal: bool = False, lane: Lane = Lane.INTERACTIVE
    ) -> Guid | None:
        """The role template of the command's target (None for a unit), after the policy check of `producer` (raises
        `PermanentError(PolicyDenied)`) and, for a producer's own request naming a callback URL, the check that the
        URL is one of that producer's callback hosts (`PermanentError(CallbackNotAllowed)`: nothing is granted for a
        request whose outcome could not go where it asks). `own_removal`: the app's own removal at a grant's expiry,
        not subject to the producer's policy; nor is the app's own request (`APP`: a drift repair the drift policy
        decided)."""
        template: Guid | None = getattr(command.target, "role_template_id", None)
        try:
            if command.callback_url is not None and not command.request_id.startswith(DERIVED_PREFIX):
                self._check_callback(command.callback_url, producer)
            if isinstance(command.target, DirectoryRole):
                template = await self._roles.template_of(command.target, self._graph.in_lane(lane))
            if not own_removal and producer is not APP:
                self._policy.check(command, producer=producer, role_template_id=template)
        except GrantError as error:
            raise error.for_role_template(template) from error
        return template

    def _check_callback(self, url: str, producer: Producer) -> None:
        try:
            if not producer.signs:
                raise CallbackRefused("it has no secret to sign callbacks with")
            self._callbacks.check(url, producer=producer.name)
        except CallbackRefused as error:
            raise PermanentError(
                Reason.CALLBACK_NOT_ALLOWED,
                f"callback.url is not one producer {producer.name!r} may be called back on ({error}); nothing was "
                "granted",
            ) from None

    async def carry_out(
        self, command: GrantCommand, template: Guid | None, *, producer: Producer, lane: Lane
    ) -> Result:
        """Carry out `producer`'s guarded command in `lane` in Graph (a time-bound grant's expiry is
        `schedule_expiry`'s, once the write is recorded)."""
        try:
            return await self._carry_out(command, template, producer, lane)
        except GrantError as error:
            raise error.for_role_template(template) from error

    async def _carry_out(self, command: GrantCommand, template: Guid | None, producer: Producer, lane: Lane) -> Result:
        expires_at = command.expires_at if command.action is Action.ADD else None
        dry_run = self._dry_run or command.dry_run
        if expires_at is not None and expires_at <= self._now():  # a retry's, once its grant has expired: the
            # ledger keeps the grant's pending removal for the expiry sweep if an earlier attempt had granted it
            raise PermanentError(
                Reason.EXPIRED,
                f"the grant expired at {expires_at.isoformat()} before this attempt could apply it: nothing more is "
                "granted, and a membership an earlier attempt of it made is removed by its expiry removal",
            )
        target = command.target
        if isinstance(target, RoleEligibility | RoleAssignment):
            graph = self._graph.in_lane(lane)
            result = await change_schedule(command, target, graph=graph, now=self._now(), dry_run=dry_run)
        else:
            result = await change_membership(
                command,
                graph=self._graph.in_lane(lane),
                roles=self._role_ids,
                units=self._units,
                activate_roles=self._activate_roles,
                dry_run=dry_run,
            )
        return replace(result, role_template_id=template)

    async def schedule_expiry(self, command: GrantCommand, result: Result, *, producer: Producer, lane: Lane) -> Result:
        """For a time-bound add that holds (granted, already_member; not a dry run), schedule the app's own removal
        at its ``expiresAt`` (`expiry_removal`, `producer`'s as the grant it ends; MessageId ``~expire:<digest>`` of
        the producer, its request id and content: scheduled twice, duplicate detection or the ledger absorbs the
        second) and say so in `result`'s description; `result` unchanged otherwise. Called once the ledger has
        recorded the write (a failure here is retried: the grant's pending removal stays in the ledger meanwhile).

        Raises `TransientError(ExpiryNotScheduled)` when the send fails."""
        expires_at = command.expires_at if command.action is Action.ADD else None
        if expires_at is None or self._dry_run or command.dry_run or result.outcome not in HOLDS:
            return result
        removal = expiry_removal(command.target, command.member.id, of=intent_of(command, arrived_at=self._now()))
        try:
            await self._senders.lane(lane).schedule(
                body=encode(removal),
                message_id=derived_message_id("expire", producer.name, removal.request_id, content_hash(removal)),
                application_properties={EXPIRY_OF: command.request_id, PRODUCER: producer.name},
                scheduled_enqueue_time=expires_at,
            )
        except Exception as error:
            raise TransientError(
                Reason.EXPIRY_NOT_SCHEDULED,
                f"the removal of this time-bound membership at {expires_at.isoformat()} could not be scheduled "
                f"({type(error).__name__}); retrying (the ledger keeps it as a pending removal for the expiry sweep)",
            ) from error
        return replace(result, description=f"{result.description}; removal scheduled for {expires_at.isoformat()}")
