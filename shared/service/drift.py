"""Drift: the directory checked against the ledger, target by target, and repaired through the grant pipeline.

A **check** of one target (`DriftService.check`) lists its members in Graph (`DirectoryReader.member_set`, paced,
Low priority), *then* reads the state of each of its pairs from the ledger (`Ledger.target_pairs`: each producer's
grant; read after the listing, a member the app has just added was recorded as an intent before its write, so it
cannot look unmanaged), classifies (`shared.core.drift.classify`) and plans by the target's mode in the drift policy
(`shared.core.drift_policy`). A directory role is one target however the ledger names it: its pairs by template
and by object id (recorded by id before requests by id were kept on the template's pair) are read and merged
(`newest_states`); a repair is sent naming the role as the pair whose grant it restores does.

A **sweep** (`DriftService.sweep`, the timer) checks every target the ledger knows (`Ledger.pair_targets`) and
every target the policy names, a few at a time, and for each:

- sends each planned repair through `send_repair`: a grant message built by `repair_command` (source ``other``,
  naming the request it restores; producer ``app``), MessageId `repair_message_id`, on the **bulk** queue, due now,
  so the grant function carries it out at Graph's Low priority, through the intent gate as the app's own request
  (it changes no grant and writes only what the grants say then; the removal of an expired grant is that grant's
  expiry removal, its producer's, and carries ``expiryOf``, as the expiry sweep's);
- sends no repair the directory is known to refuse (`shared.core.drift`, *Not repairable*): a unit with dynamic
  membership (read from Graph when the target has repairs to plan), or a pair whose repair (its own request id,
  `repair_of`) was dead-lettered for a reason a repair would meet again (its status read from the ledger; a unit
  refusal no longer holds once the unit changed); such findings are reported ``not_repairable`` with the refusal;
- records the removals the blast-radius guard holds (`Ledger.hold_drift`) and says so (a warning line, a
  ``drift_held`` outcome event); a set a confirm released goes on being sent while it is the same set (its
  requests are the same: the ledger absorbs what was done);
- publishes one ``drift_detected`` outcome event per finding (with an outcomes topic) and logs one line per target,
  ``drift <state> {json}`` (`shared.core.drift_records.target_record`, without the findings).

A target that cannot be read (gone, forbidden, throttled past the reader's retries) is reported ``failed`` and the
sweep goes on; anything else that fails in a target's part is logged with its stack and, once every target has
had its turn, raised (`DriftSweepFailed`), so the invocation shows as failed.

`DriftService.report` checks without acting (``GET /api/drift``); `DriftService.confirm` releases one held set
once (``POST /api/drift/{target}/confirm``): it checks the target again with the confirm's digest, marks the hold
released in the ledger (a second confirm finds it released) and sends the held removals (the other repairs are the
sweep's, which goes on sending a released set's removals while it is the same set).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final, Literal

from shared.adapters.directory import DirectoryReader
from shared.adapters.graph import GraphClient
from shared.adapters.ledger import DriftHold, Ledger
from shared.core.contract import (
    AdministrativeUnit,
    DirectoryRole,
    Guid,
    RoleAssignment,
    RoleEligibility,
    ScopedRole,
    Target,
    encode,
)
from shared.core.drift import (
    Lingering,
    Mode,
    Plan,
    Refusal,
    Repair,
    Report,
    Unmanaged,
    classify,
    newest_states,
    plan,
    refusal_of,
    repair_command,
    repair_of,
)
from shared.core.drift import repair_message_id as drift_message_id
from shared.core.drift_policy import DriftPolicy
from shared.core.drift_records import (
    DRIFT_DETECTED,
    DRIFT_HELD,
    TargetState,
    confirm_command,
    drift_event,
    finding_record,
    handlings,
    target_record,
)
from shared.core.errors import GrantError, Reason
from shared.core.intents import pair_of
from shared.core.messaging import EXPIRY_OF, PRODUCER, Lane, MessageSender, OutcomePublisher
from shared.core.pairs import PairState
from shared.core.producers import APP_PRODUCER
from shared.core.units import refusal_description, still_refuses
from shared.service.roles import RoleTemplates
from shared.service.settle import outcome_log

__all__ = ["Checked", "Confirmation", "DriftService", "DriftSweepFailed", "SweepSummary", "Swept"]

_log = logging.getLogger(__name__)

#: Targets checked at once by a sweep (the reader's pacer spaces their Graph reads whatever this is).
SWEEP_CONCURRENCY: Final = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class Swept:
    """One target as a sweep checks it (a directory role by its template when known) and how the ledger names its
    pairs (a role: by template and by object id)."""

    target: Target
    namings: tuple[Target, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Checked:
    """One target's check: its mode, the report and plan (None when it could not be read: `error`), which naming
    holds each member's pair state (`owners`), the guard's recorded hold, and the refusals the plan honoured
    (`refusals` per member, `refused_target`)."""

    target: Target
    mode: str
    checked_at: datetime
    report: Report | None = None
    plan: Plan | None = None
    owners: dict[Guid, Target] = field(default_factory=dict)
    hold: DriftHold | None = None
    error: GrantError | None = None
    refusals: dict[Guid, Refusal] = field(default_factory=dict)
    refused_target: Refusal | None = None

    @property
    def state(self) -> TargetState:
        if self.report is None or self.plan is None:
            return TargetState.FAILED
        if self.plan.held is not None:
            return TargetState.HELD
        return TargetState.DRIFTED if self.report.findings else TargetState.IN_STEP

    def naming_of(self, repair: Repair) -> Target:
        """The target as named by the pair `repair` restores (the checked target for an unmanaged member)."""
        return self.owners.get(repair.member_id, self.target)

    def findings(self) -> list[dict[str, Any]]:
        """Each finding's record (`finding_record`), with the target named as its pair names it."""
        if self.report is None or self.plan is None:
            return []
        handled = handlings(self.plan)
        return [finding_record(f, *handled[f.member_id]) for f in self.report.findings]

    def record(self, *, with_findings: bool, repairs_sent: bool = False) -> dict[str, Any]:
        """The target's record (`target_record`)."""
        held: dict[str, Any] | None = None
        if self.plan is not None and self.plan.held is not None:
            held = _held(self.target, self.plan.held.digest, len(self.plan.held.repairs), self.plan.held.limit)
            held |= {"members": self.plan.held.members}
        if self.hold is not None and (held is None or held["digest"] == self.hold.digest):
            held = (held or _held(self.target, self.hold.digest, self.hold.removals, self.hold.limit)) | {
                "members": self.hold.members,
                "heldAt": self.hold.held_at.isoformat(),
                "releasedAt": self.hold.released_at.isoformat() if self.hold.released_at else None,
                "releasedBy": self.hold.released_by,
            }
        return target_record(
            self.target,
            state=self.state,
            mode=self.mode,
            checked_at=self.checked_at,
            members=self.report.members if self.report is not None else None,
            in_flight=len(self.report.in_flight) if self.report is not None else 0,
            findings=self.findings(),
            repairs=len(self.plan.repairs) if self.plan is not None else 0,
            not_repairable=len(self.plan.not_repairable) if self.plan is not None else 0,
            repairs_sent=repairs_sent,
            held=held,
            tier0=self.plan.tier0 if self.plan is not None else False,
            reason=self.error.reason.value if self.error is not None else None,
            description=self.error.description if self.error is not None else None,
            with_findings=with_findings,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepSummary:
    """What one sweep did: targets by state, findings, repairs sent, removals held, events published."""

    targets: int
    states: dict[str, int]
    findings: int
    repairs_sent: int
    held_removals: int
    events: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Confirmation:
    """How a confirm ended: ``released`` (the held set's removals sent, with `checked`), ``unknown`` (no target
    has that id), ``not_held`` (nothing is held under that digest now: `live` has the targets' checks, whose held
    sets carry their digests), ``ambiguous`` (no digest given, and several targets have held sets: `live`),
    ``already_released`` (a confirm released it before: `hold`)."""

    status: Literal["released", "unknown", "not_held", "ambiguous", "already_released"]
    checked: Checked | None = None
    hold: DriftHold | None = None
    live: tuple[Checked, ...] = ()
    sent: int = 0


class DriftSweepFailed(Exception):
    """Some targets' part of a sweep failed unexpectedly (each logged with its stack); the others were done."""


class DriftService:
    """Checks targets and sends their repairs; one per process (built by the composition root)."""

    def __init__(
        self,
        *,
        reader: DirectoryReader,
        ledger: Ledger,
        graph: GraphClient,
        policy: DriftPolicy,
        sender: MessageSender,
        publisher: OutcomePublisher | None,
        now: Callable[[], datetime],
        concurrency: int = SWEEP_CONCURRENCY,
    ) -> None:
        self._reader = reader
        self._ledger = ledger
        self._graph = graph.in_lane(Lane.BULK)
        self._policy = policy
        self._sender = sender
        self._publisher = publisher
        self._now = now
        self._concurrency = concurrency
        self._roles = RoleTemplates()

    # --- what is checked ---------------------------------------------------------------------------------------

    async def targets(self, *, naming: Guid | None = None) -> list[Swept]:
        """The targets to check: every target the ledger has a pair for and every target the policy names (with
        `naming`, those whose unit, role or template id it is). A role is one target, by its template."""
        if naming is None:
            known = await self._ledger.pair_targets()
        else:
            known = await self._known_naming(naming)
        named = [t for t in self._policy.targets if naming is None or _names(t, naming)]
        grouped: dict[Target, None] = {}
        for target in [*named, *known]:
            grouped[await self._checked_as(target)] = None
        if naming is not None and not grouped:
            return []
        return [Swept(target=t, namings=await self._namings(t)) for t in grouped]

    async def _known_naming(self, naming: Guid) -> list[Target]:
        """The targets with pairs whose unit, role or template id is `naming`: for a role, whether the ledger names
        it by template or by object id (one is looked up from the other in Graph, unless `naming` is a unit's)."""
        ids = {naming}
        if not await self._ledger.pair_targets(prefix=f"au.{naming}."):
            with contextlib.suppress(GrantError):  # a template's role id
                ids.add(Guid(await self._reader.role_id_of(naming) or naming))
            with contextlib.suppress(GrantError):  # a role id's template
                ids.add(await self._roles.template_of(DirectoryRole(id=naming), self._graph))
        prefixes = [
            f"au.{naming}.",
            "scoped.",
            "elig.",
            "asgn.",
            *(f"{kind}.{i}." for i in sorted(ids) for kind in ("role", "template")),
        ]
        found = await asyncio.gather(*(self._ledger.pair_targets(prefix=p) for p in prefixes))
        return [t for targets in found for t in targets if any(_names(t, i) for i in ids)]

    async def _checked_as(self, target: Target) -> Target:
        """A role named by object id is checked by its template (looked up once); one that cannot be looked up
        stays named by id (its check reports why)."""
        if isinstance(target, DirectoryRole) and target.id is not None:
            try:
                return DirectoryRole(role_template_id=await self._roles.template_of(target, self._graph))
            except GrantError:
                return target
        return target

    async def _namings(self, target: Target) -> tuple[Target, ...]:
        """How the ledger may name `target`'s pairs: a role by template, and by the id of its activated role."""
        if isinstance(target, DirectoryRole) and target.role_template_id is not None:
            try:
                role_id = await self._reader.role_id_of(target.role_template_id)
            except GrantError:
                role_id = None  # the listing reports why
            if role_id:
                return (target, DirectoryRole(id=Guid(role_id)))
        return (target,)

    async def check(self, swept: Swept, *, confirm: str | None = None) -> Checked:
        """List `swept`'s members, then read its pairs, classify and plan (`confirm`: a held set's digest to
        release). A set held again after a confirm released it is planned as released."""
        now = self._now()
        mode = self._policy.mode_of(swept.target)
        try:
            members = await self._reader.member_set(target=swept.target)
            pairs: list[tuple[Guid, PairState, Target]] = []
            for naming in swept.namings:
                pairs += [(member, state, naming) for member, state in await self._ledger.target_pairs(naming)]
        except GrantError as error:
            return Checked(target=swept.target, mode=mode.value, checked_at=now, error=error)
        states = newest_states((member, state) for member, state, _ in pairs)
        owners = {member: naming for member, state, naming in pairs if states[member] is state}
        report = classify(states=states, members=members, now=now)
        try:
            refusals, refused_target = await self._refusals(swept.target, report, mode)
        except GrantError as error:
            return Checked(target=swept.target, mode=mode.value, checked_at=now, error=error)
        checked = Checked(
            target=swept.target,
            mode=mode.value,
            checked_at=now,
            report=report,
            owners=owners,
            refusals=refusals,
            refused_target=refused_target,
        )
        planned = self._plan(checked, confirm)
        hold = None
        if planned.held is not None:
            hold = await self._ledger.drift_hold(swept.target)
            if confirm is None and hold is not None and hold.released_at is not None:
                planned = self._plan(checked, hold.digest)
        elif confirm is not None:
            hold = await self._ledger.drift_hold(swept.target)
        return replace(checked, plan=planned, hold=hold)

    def _plan(self, checked: Checked, confirm: str | None) -> Plan:
        assert checked.report is not None
        target = checked.target
        return plan(
            checked.report,
            target=target,
            mode=self._policy.mode_of(target),
            guard=self._policy.guard,
            confirm=confirm,
            refusals=checked.refusals,
            refused_target=checked.refused_target,
        )

    async def _refusals(self, target: Target, report: Report, mode: Mode) -> tuple[dict[Guid, Refusal], Refusal | None]:
        """What the directory is known to refuse of `report`'s repairs: for a unit with repairs to plan, whether it
        refuses every write (dynamic membership: read from Graph now); for each finding, the refusal its repair's own
        request's status records (`refusal_of`), unless it was the unit's and the unit no longer refuses
        (`still_refuses`). Nothing in report mode."""
        repairable = [f for f in report.findings if not isinstance(f, Unmanaged) or mode is Mode.AUTHORITATIVE]
        if mode is Mode.REPORT or not repairable:
            return {}, None
        kind = await self._reader.unit_kind(target.id) if isinstance(target, AdministrativeUnit) else None
        if kind is not None and kind.dynamic:
            reason = Reason.DYNAMIC_MEMBERSHIP_TARGET
            description = refusal_description(reason, unit=_label(target))
            return {}, Refusal(reason=reason.value, description=description)
        refusals: dict[Guid, Refusal] = {}
        for finding in repairable:
            repair = repair_of(target, finding)
            expiry = finding.intent.producer if isinstance(finding, Lingering) and finding.expired else None
            producer = expiry or APP_PRODUCER  # a repair's request is the app's; an expiry, its grant's owner's
            refusal = refusal_of(await self._ledger.status(repair.request_id, producer=producer))
            if refusal is not None and (kind is None or still_refuses(kind, refusal.reason)):
                refusals[finding.member_id] = refusal
        return refusals, None

    # --- reports, sweeps, confirms -----------------------------------------------------------------------------

    async def report(self, *, naming: Guid | None = None) -> list[Checked]:
        """Check every target (with `naming`, those it names) without acting: reads only."""
        return await self._each(await self.targets(naming=naming), self.check)

    async def sweep(self) -> SweepSummary:
        """Check every target and act on it (see the module docstring); raise `DriftSweepFailed` at the end when
        some target's part failed unexpectedly."""
        counts = {"findings": 0, "repairs": 0, "held": 0, "events": 0}
        states: dict[str, int] = {}
        failed: list[Target] = []

        async def one(swept: Swept) -> None:
            try:
                checked = await self.check(swept)
                done = await self._act(checked)
            except Exception:
                _log.exception("drift sweep: checking %s failed", _label(swept.target))
                failed.append(swept.target)
                return
            states[checked.state.value] = states.get(checked.state.value, 0) + 1
            for name, value in done.items():
                counts[name] += value

        targets = await self.targets()
        await self._each(targets, one)
        summary = SweepSummary(
            targets=len(targets),
            states=dict(sorted(states.items())),
            findings=counts["findings"],
            repairs_sent=counts["repairs"],
            held_removals=counts["held"],
            events=counts["events"],
        )
        if failed:
            raise DriftSweepFailed(f"the drift sweep failed for {len(failed)} of {len(targets)} target(s): {summary}")
        return summary

    async def _act(self, checked: Checked) -> dict[str, int]:
        """Send `checked`'s repairs, record and announce what the guard holds, publish one event per finding, log
        the target's line; what was done, counted."""
        now = checked.checked_at
        planned = checked.plan
        sent = 0
        if planned is not None:
            for repair in planned.repairs:
                await self.send_repair(checked.naming_of(repair), repair, now=now)
                sent += 1
        events = 0
        if planned is not None and planned.held is not None:
            held = planned.held
            hold = await self._ledger.hold_drift(
                checked.target,
                digest=held.digest,
                removals=len(held.repairs),
                limit=held.limit,
                members=held.members,
                now=now,
            )
            checked = replace(checked, hold=hold)
            _log.warning(
                "drift: %d removal(s) of %s held by the blast-radius guard (limit %d of %d members, held since %s); "
                "review with grants drift --target, then release them once with: %s",
                len(held.repairs),
                _label(checked.target),
                held.limit,
                held.members,
                hold.held_at.isoformat(),
                confirm_command(checked.target, held.digest),
            )
            events += await self._publish(checked.record(with_findings=False), DRIFT_HELD, checked.target, held.digest)
        shared = {name: value for name, value in checked.record(with_findings=False).items() if name != "held"}
        for finding in checked.findings():
            member = Guid(str(finding["memberId"]))
            key = f"{finding['finding']}|{finding['requestId']}"
            owner = checked.owners.get(member, checked.target)
            events += await self._publish(shared | finding, DRIFT_DETECTED, owner, key, member=member)
        self._log_line(checked, repairs_sent=sent > 0)
        findings = len(checked.report.findings) if checked.report is not None else 0
        held_removals = len(planned.held.repairs) if planned is not None and planned.held is not None else 0
        return {"findings": findings, "repairs": sent, "held": held_removals, "events": events}

    async def confirm(self, naming: Guid, *, digest: str | None, by: str) -> Confirmation:
        """Release the held set `digest` of a target `naming` names (None: the set the last sweep recorded as held
        for the one target that has one), once, for operator `by` (recorded with the release): check again with it,
        mark it released in the ledger, send its removals."""
        targets = await self.targets(naming=naming)
        if not targets:
            return Confirmation(status="unknown")
        recorded: list[tuple[Swept, DriftHold | None]] = [
            (swept, await self._ledger.drift_hold(swept.target)) for swept in targets
        ]
        if digest is None:
            waiting: list[tuple[Swept, DriftHold | None]] = [
                (s, r) for s, r in recorded if r is not None and r.released_at is None
            ]
            if len(waiting) != 1:
                checks = tuple(await self._each(targets, self.check))
                return Confirmation(status="ambiguous" if waiting else "not_held", live=checks)
            recorded = waiting
        live: list[Checked] = []
        for swept, hold in recorded:
            wanted = digest or (hold.digest if hold is not None else None)
            if wanted is None:
                continue
            if hold is not None and hold.digest == wanted and hold.released_at is not None:
                return Confirmation(status="already_released", hold=hold)
            checked = await self.check(swept, confirm=wanted)
            if checked.report is None or checked.plan is None or not checked.plan.released:
                live.append(checked)
                continue
            return await self._release(checked, wanted, by)
        return Confirmation(status="not_held", live=tuple(live))

    async def _release(self, checked: Checked, digest: str, by: str) -> Confirmation:
        """Mark the held set `digest` of `checked` released (recording it first if no sweep did), then send its
        removals (the other repairs are the sweep's); ``already_released`` when a confirm got there first."""
        assert checked.report is not None
        held = self._plan(checked, None).held
        assert held is not None
        await self._ledger.hold_drift(
            checked.target,
            digest=digest,
            removals=len(held.repairs),
            limit=held.limit,
            members=held.members,
            now=checked.checked_at,
        )
        released = await self._ledger.release_drift(checked.target, digest=digest, now=checked.checked_at, by=by)
        if released is None:
            return Confirmation(status="already_released", hold=await self._ledger.drift_hold(checked.target))
        checked = replace(checked, hold=released)
        for repair in held.repairs:
            await self.send_repair(checked.naming_of(repair), repair, now=checked.checked_at)
        _log.warning(
            "drift: a confirm by %s released the %d held removal(s) of %s (digest %s): sent",
            json.dumps(by),
            len(held.repairs),
            _label(checked.target),
            digest,
        )
        self._log_line(checked, repairs_sent=True)
        return Confirmation(status="released", checked=checked, hold=released, sent=len(held.repairs))

    async def send_repair(self, target: Target, repair: Repair, *, now: datetime) -> str:
        """Send `repair` of `target` (as its pair names it) into the pipeline: its grant message (`repair_command`)
        on the bulk queue, due `now`, MessageId `repair_message_id`; the removal of an expired grant carries
        ``expiryOf`` (the grant it ends). Every repair goes out here. Return the MessageId; raise when not sent."""
        command = repair_command(target, repair)
        finding = repair.finding
        properties: dict[str, str | int] = {PRODUCER: APP_PRODUCER}  # the drift policy's repair: the app's own
        if isinstance(finding, Lingering) and finding.expired:  # the expiry removal of the grant: its producer's
            properties |= {EXPIRY_OF: finding.intent.request_id, PRODUCER: finding.intent.producer or APP_PRODUCER}
        message_id = drift_message_id(command)
        await self._sender.schedule(
            body=encode(command),
            message_id=message_id,
            application_properties=properties,
            scheduled_enqueue_time=now,
        )
        return message_id

    # --- parts -------------------------------------------------------------------------------------------------

    async def _publish(
        self, record: dict[str, Any], outcome: str, target: Target, key: str, *, member: Guid | None = None
    ) -> int:
        """Publish one drift event (none without an outcomes topic); 1 when published."""
        if self._publisher is None:
            return 0
        at = self._now()
        pair = pair_of(target, member or "*")
        await self._publisher.publish(**drift_event(record, outcome=outcome, pair=pair, key=key, at=at))
        return 1

    def _log_line(self, checked: Checked, *, repairs_sent: bool) -> None:
        """The target's line on the outcome log: ``drift <state> {json}`` (a warning unless in step)."""
        record = checked.record(with_findings=False, repairs_sent=repairs_sent)
        level = logging.INFO if checked.state is TargetState.IN_STEP else logging.WARNING
        outcome_log.log(level, "drift %s %s", checked.state.value, json.dumps(record), extra={"drift": record})

    async def _each(self, targets: Sequence[Swept], work: Callable[[Swept], Awaitable[Any]]) -> list[Any]:
        """`work` on every target, `self._concurrency` at a time; the results in order."""
        gate = asyncio.Semaphore(self._concurrency)

        async def bounded(swept: Swept) -> Any:
            async with gate:
                return await work(swept)

        return list(await asyncio.gather(*(bounded(swept) for swept in targets)))


def _names(target: Target, guid: Guid) -> bool:
    """True when `guid` is the target's unit, role, role template or (a PIM target's) role definition or scope's unit
    id."""
    ids: Iterable[object] = (
        getattr(target, "id", None),
        getattr(target, "role_template_id", None),
        getattr(target, "administrative_unit_id", None),
        getattr(target, "role_definition_id", None),
        getattr(target, "unit", None),
    )
    return guid in ids


def _held(target: Target, digest: str, removals: int, limit: int) -> dict[str, Any]:
    return {"digest": digest, "removals": removals, "limit": limit, "confirm": confirm_command(target, digest)}


def _label(target: Target) -> str:
    if isinstance(target, RoleEligibility | RoleAssignment):
        kind = "eligibility" if isinstance(target, RoleEligibility) else "active assignment"
        return f"{kind} of role definition {target.role_definition_id} at scope {target.directory_scope_id}"
    if isinstance(target, AdministrativeUnit):
        return f"administrative unit {target.id}"
    if isinstance(target, ScopedRole):
        return f"role {target.role_template_id} scoped to administrative unit {target.administrative_unit_id}"
    return f"directory role {target.role_template_id or target.id}"
