"""The drift triggers: the sweep timer (``drift_sweep``), the report (``GET /api/drift``) and the confirm that
releases removals the blast-radius guard holds (``POST /api/drift/{target}/confirm``). `shared.service.drift` does
the work; docs/drift.md explains it.

``GET /api/drift[?target=<id>]`` checks every target (or those whose unit, role or role template id is `<id>`),
reading only, and answers ``200`` JSON: ``checkedAt``, ``target``, ``totals`` (targets by state, findings by
kind) and ``targets``, one record per target (`shared.core.drift_records.target_record`, with its ``findings``).
A target Graph would not list is in the answer as ``failed`` with its reason; an id that is not a GUID answers
``400``, an id no target has ``404``, a ledger that fails ``503`` with ``Retry-After`` (problem details, as the
status API).

``POST /api/drift/{target}/confirm`` with an optional JSON body ``{"digest": "<16 hex digits>"}`` releases, once,
the held set of removals that digest names (without one: the set the last sweep recorded as held, when exactly
one target `{target}` names has one). ``200``: ``{"status": "released", "sent": <repairs sent>, "hold", "target"}``;
``409`` problem details when nothing is held under that digest now, several sets are held (name one), or a confirm
released it already, with ``held``: each matching target's live held set (digest, removals, the command that
confirms it); ``404`` for an id no target has.

Rights (`shared.core.access`): the report reads every producer's intents, so it needs ``Grants.Reader`` (or
``Grants.Operator``); a confirm releases removals, so it needs ``Grants.Operator``, and the release is recorded with
who confirmed it (``releasedBy``, and the log line). No caller: ``401``; without the role: ``403``.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from shared.core.access import caller_of
from shared.core.contract import parse_guid
from shared.core.errors import ContractError, TransientError
from shared.core.producers import Producers
from shared.handlers.http import PROBLEM_TYPE, Answer, forbidden, problem, unauthenticated
from shared.service.drift import Checked, DriftService, SweepSummary

__all__ = ["DriftHandler"]

_log = logging.getLogger(__name__)
_DIGEST: Final = re.compile(r"[0-9a-f]{16}")
_UNAVAILABLE: Final = "the grant ledger is unavailable now"


class DriftHandler:
    """The drift triggers of one process (built by the composition root)."""

    def __init__(self, *, service: DriftService, producers: Producers, api_auth: bool) -> None:
        self._service = service
        self._producers = producers
        self._api_auth = api_auth

    async def sweep(self) -> SweepSummary:
        """The timer: check every target and act on it; one summary line (a warning when anything drifted)."""
        summary = await self._service.sweep()
        states = ", ".join(f"{state} {count}" for state, count in summary.states.items()) or "none"
        drifted = summary.findings > 0 or summary.states.get("failed", 0) > 0
        _log.log(
            logging.WARNING if drifted else logging.INFO,
            "drift sweep: %d target(s) (%s); %d finding(s), %d repair(s) sent, %d removal(s) held, %d event(s)",
            summary.targets,
            states,
            summary.findings,
            summary.repairs_sent,
            summary.held_removals,
            summary.events,
        )
        return summary

    async def report(self, query: Mapping[str, str], headers: Mapping[str, str]) -> Answer:
        """Answer ``GET /api/drift[?target=<id>]`` (see the module docstring)."""
        caller = caller_of(headers, enabled=self._api_auth, producers=self._producers)
        if caller is None:
            return unauthenticated(enabled=self._api_auth)
        if not caller.reads_all:
            return forbidden("the drift report reads every producer's intents: it needs the app role Grants.Reader")
        text = query.get("target")
        try:
            naming = parse_guid(text, field="target") if text is not None else None
        except ContractError as error:
            return problem(400, "invalid-drift-query", "Invalid drift query", error.description)
        try:
            checks = await self._service.report(naming=naming)
        except TransientError:
            _log.warning("drift report: the ledger is unavailable", exc_info=True)
            return problem(503, "ledger-unavailable", "Drift report unavailable", _UNAVAILABLE, retry_after=5)
        if naming is not None and not checks:
            return _unknown(naming)
        records = [checked.record(with_findings=True) for checked in checks]
        states = Counter(record["state"] for record in records)
        totals = {"targets": len(records), **{s: states[s] for s in ("in_step", "drifted", "held", "failed")}}
        totals |= {kind: sum(record[kind] for record in records) for kind in ("missing", "lingering", "unmanaged")}
        document = {
            "checkedAt": _checked_at(checks),
            "target": naming,
            "totals": totals,
            "targets": records,
        }
        return _json(200, document)

    async def confirm(self, target: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        """Answer ``POST /api/drift/{target}/confirm`` (see the module docstring)."""
        caller = caller_of(headers, enabled=self._api_auth, producers=self._producers)
        if caller is None:
            return unauthenticated(enabled=self._api_auth)
        if not caller.operates:
            _log.warning("drift confirm refused to %s: not an operator", json.dumps(caller.label))
            return forbidden("a confirm releases held removals: it needs the app role Grants.Operator")
        try:
            naming = parse_guid(target, field="target")
        except ContractError as error:
            return problem(400, "invalid-drift-confirm", "Invalid confirm", error.description)
        digest = _digest(body)
        if isinstance(digest, Answer):
            return digest
        try:
            confirmation = await self._service.confirm(naming, digest=digest, by=caller.label)
        except TransientError:
            _log.warning("drift confirm: the ledger is unavailable", exc_info=True)
            return problem(503, "ledger-unavailable", "Confirm unavailable", _UNAVAILABLE, retry_after=5)
        if confirmation.status == "unknown":
            return _unknown(naming)
        if confirmation.status == "released":
            assert confirmation.checked is not None
            assert confirmation.hold is not None
            document = {
                "status": "released",
                "digest": confirmation.hold.digest,
                "removals": confirmation.hold.removals,
                "sent": confirmation.sent,
                "target": confirmation.checked.record(with_findings=True, repairs_sent=confirmation.sent > 0),
            }
            return _json(200, document)
        held = [found for checked in confirmation.live if (found := _held(checked)) is not None]
        if confirmation.status == "already_released":
            assert confirmation.hold is not None
            released = confirmation.hold.released_at.isoformat() if confirmation.hold.released_at else "?"
            detail = f"the held removals {confirmation.hold.digest} were released by a confirm at {released}"
        elif confirmation.status == "ambiguous":
            detail = "several targets have removals held: confirm one of them, naming its digest"
        elif digest is not None:
            detail = f"no removals of a target {naming} names are held under digest {digest} now"
        else:
            detail = f"no removals of a target {naming} names are held now"
        if held and confirmation.status != "already_released":
            detail += f" (held now: {', '.join(str(h['digest']) for h in held)})"
        return _json(
            409,
            {
                "type": PROBLEM_TYPE + "drift-not-held",
                "title": "Nothing to confirm",
                "status": 409,
                "detail": detail,
                "held": held,
            },
            content_type="application/problem+json",
        )


def _digest(body: bytes) -> str | Answer | None:
    """The body's ``digest`` (None for an empty body or none given), or the ``400`` answer for a bad body."""
    if not body.strip():
        return None
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        document = None
    if not isinstance(document, dict) or set(document) - {"digest"}:
        return problem(400, "invalid-drift-confirm", "Invalid confirm", 'the body is {"digest": "<16 hex digits>"}')
    digest = document.get("digest")
    if digest is None:
        return None
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        return problem(400, "invalid-drift-confirm", "Invalid confirm", "digest must be 16 lower-case hex digits")
    return digest


def _held(checked: Checked) -> dict[str, Any] | None:
    """The live held set of `checked`: its target, digest, removals, limit and the command that confirms it."""
    record = checked.record(with_findings=False)
    held = record.get("held")
    if not isinstance(held, dict) or checked.plan is None or checked.plan.held is None:
        return None
    return {"target": record["target"], **held}


def _unknown(naming: str) -> Answer:
    detail = f"no target {naming} is known: the ledger has no request for it and the drift policy does not name it"
    return problem(404, "unknown-drift-target", "Unknown target", detail)


def _checked_at(checks: list[Checked]) -> str | None:
    times: list[datetime] = [checked.checked_at for checked in checks]
    return min(times).isoformat() if times else None


def _json(status: int, document: Mapping[str, Any], *, content_type: str = "application/json") -> Answer:
    return Answer(status, json.dumps(document, ensure_ascii=False).encode(), content_type)
