"""``grants drift [--target ID] [--json] [--repair --confirm [DIGEST]]``: the directory against the ledger, from the
app's drift API (docs/drift.md).

Without ``--repair`` it reads ``GET /api/drift[?target=ID]`` (a check made now: Graph listings, ledger reads, nothing
written) and prints, per target, its mode and state, the counts of *missing*, *lingering* and *unmanaged* members
and, when the blast-radius guard holds removals, the held set's digest and the command that releases it; then each
finding (at most 20 per target unless ``--target``; ``--json`` prints the API's answer as it is).

``--target ID --repair --confirm [DIGEST]`` posts ``POST /api/drift/ID/confirm``: it releases, once, the removals
the guard holds for that target (the set named by DIGEST; without one, the set the last sweep recorded and
alerted on). Everything else the policy's mode repairs, the timer repairs on its own.

Where: as the status commands, ``--url`` (or ``GRANTS_APP_URL``) with ``--token`` or ``--scope`` (an Entra ID token
for the function app: the report needs the app role Grants.Reader, a confirm Grants.Operator), or ``--serve-local``
for a running ``serve-local`` (``--port``; as its operator). Everything printed that came from the API is escaped.

Exit codes: 0 every target in step (or a confirm released the set); 1 drift found, a target could not be checked,
or the confirm was refused (nothing held under that digest, released before); 2 a bad option or id, or the API
could not be reached or refused the call; 130 stopped with Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any, Final, TextIO
from urllib.parse import quote

import httpx

from grants_cli.status import api_arguments, api_location, unreachable
from grants_common.printable import printable
from shared.core.contract import parse_guid
from shared.core.errors import ContractError

__all__ = ["add_parser", "main"]

_INTERRUPTED_EXIT: Final = 130
#: Findings printed per target without --target (--json prints them all).
_SHOWN: Final = 20


def add_parser(commands: Any) -> None:
    drift = commands.add_parser(
        "drift",
        parents=[api_arguments()],
        help="the directory checked against the ledger: drift, repairs, held removals",
    )
    drift.add_argument("--target", metavar="ID", help="a unit's, role's or role template's id (GUID): that target")
    drift.add_argument("--repair", action="store_true", help="with --confirm: release removals the guard holds")
    drift.add_argument(
        "--confirm",
        nargs="?",
        const="",
        metavar="DIGEST",
        help="the held set to release (default: the one the last sweep alerted on)",
    )


def main(args: argparse.Namespace, *, out: TextIO, err: TextIO, transport: httpx.BaseTransport | None = None) -> int:
    """Run ``drift`` as parsed into `args`; return the exit code (see the module docstring)."""
    try:
        return _run(args, out=out, err=err, transport=transport)
    except KeyboardInterrupt:
        err.write("interrupted: a report changes nothing; a confirm sent may have released the held removals\n")
        return _INTERRUPTED_EXIT


def _run(args: argparse.Namespace, *, out: TextIO, err: TextIO, transport: httpx.BaseTransport | None) -> int:
    if args.repair != (args.confirm is not None):
        err.write(
            "error: --repair and --confirm go together: they release the removals the guard holds for --target "
            "(the timer makes every other repair the policy asks for)\n"
        )
        return 2
    if args.repair and args.target is None:
        err.write("error: --repair --confirm needs --target ID\n")
        return 2
    try:
        target = parse_guid(args.target, field="--target") if args.target is not None else None
    except ContractError as error:
        err.write(f"error: {printable(error.description)}\n")
        return 2
    where = api_location(args, err)
    if where is None:
        return 2
    base, headers = where
    with httpx.Client(
        base_url=base.rstrip("/"),
        headers=headers,
        timeout=300,
        transport=transport,
        follow_redirects=False,
        trust_env=not args.serve_local,
    ) as client:
        try:
            if args.repair:
                assert target is not None
                body = {"digest": args.confirm} if args.confirm else {}
                response = client.post(f"/api/drift/{quote(target)}/confirm", json=body)
            else:
                response = client.get("/api/drift", params={"target": target} if target else None)
        except httpx.HTTPError as error:
            err.write(unreachable(base, error, serve_local=args.serve_local))
            return 2
    try:
        document = response.json()
    except ValueError:
        document = None
    if not isinstance(document, dict):
        err.write(f"error: the drift API answered {response.status_code} {printable(response.reason_phrase)}\n")
        return 2
    if args.json:
        out.write(json.dumps(document, ensure_ascii=True, indent=2) + "\n")
    if args.repair:
        return _confirmed(response.status_code, document, out=out, err=err, quiet=args.json)
    if response.status_code == 404:
        err.write(f"{printable(document.get('detail'))}\n")
        return 1
    if response.status_code != 200:
        err.write(f"error: the drift API answered {response.status_code}: {printable(document.get('detail'))}\n")
        return 2
    if not args.json:
        _print_report(document, out, all_findings=target is not None)
    totals = document.get("totals") or {}
    return 0 if totals.get("targets", 0) == totals.get("in_step", -1) else 1


def _confirmed(status: int, document: Mapping[str, Any], *, out: TextIO, err: TextIO, quiet: bool) -> int:
    if status == 200:
        if not quiet:
            out.write(
                f"released the {printable(document.get('removals'))} held removal(s) "
                f"{printable(document.get('digest'))}: {printable(document.get('sent'))} repair(s) sent to the bulk "
                "queue\n"
            )
        return 0
    if status in (404, 409):
        err.write(f"not confirmed: {printable(document.get('detail'))}\n")
        for held in document.get("held") or []:
            if isinstance(held, dict):
                err.write(
                    f"  held now: {printable(held.get('removals'))} removal(s): {printable(held.get('confirm'))}\n"
                )
        return 1
    err.write(f"error: the drift API answered {status}: {printable(document.get('detail'))}\n")
    return 2


def _print_report(document: Mapping[str, Any], out: TextIO, *, all_findings: bool) -> None:
    totals = document.get("totals") or {}
    out.write(
        f"drift checked {printable(document.get('checkedAt'))}: {printable(totals.get('targets'))} target(s): "
        + ", ".join(f"{name.replace('_', ' ')} {printable(totals.get(name))}" for name in _STATES)
        + "; "
        + ", ".join(f"{kind} {printable(totals.get(kind))}" for kind in _KINDS)
        + "\n"
    )
    for target in document.get("targets") or []:
        if isinstance(target, dict):
            _print_target(target, out, all_findings=all_findings)


def _print_target(target: Mapping[str, Any], out: TextIO, *, all_findings: bool) -> None:
    name = target.get("roleTemplateId") or target.get("roleDefinitionId") or target.get("targetId")
    where = f" in unit {printable(target.get('targetId'))}" if target.get("targetType") == "scopedRole" else ""
    if target.get("roleDefinitionId"):
        where = f" at {printable(target.get('directoryScopeId'))}"
    tier0 = " (tier-0: never touched)" if target.get("tier0") else ""
    out.write(
        f"{printable(target.get('targetType'))} {printable(name)}{where}: {printable(target.get('state'))}, mode "
        f"{printable(target.get('mode'))}{tier0}, {printable(target.get('members'))} member(s), "
        + ", ".join(f"{kind} {printable(target.get(kind))}" for kind in _KINDS)
        + "\n"
    )
    if target.get("state") == "failed":
        out.write(f"  could not check: {printable(target.get('reason'))}: {printable(target.get('description'))}\n")
    held = target.get("held")
    if isinstance(held, dict) and not held.get("releasedAt"):
        out.write(
            f"  held: {printable(held.get('removals'))} removal(s) over the guard's limit of "
            f"{printable(held.get('limit'))}; review, then release them once: {printable(held.get('confirm'))}\n"
        )
    findings = [f for f in target.get("findings") or [] if isinstance(f, dict)]
    refusals: dict[object, object] = {}  # one line per reason: the first refusal's description
    for finding in findings:
        if isinstance(refusal := finding.get("refusal"), dict):
            refusals.setdefault(refusal.get("reason"), refusal.get("description"))
    for reason, description in refusals.items():
        out.write(f"  not repairable: {printable(reason)}: {printable(description)}\n")
    shown = findings if all_findings else findings[:_SHOWN]
    for finding in shown:
        repair = finding.get("repair") or {}
        refusal = finding.get("refusal") or {}
        what = printable(repair.get("description")) if repair else "reported only"
        if refusal:
            refused = f", {printable(refusal.get('requestId'))} refused" if refusal.get("requestId") else ""
            what = f"{what}; not sent ({printable(refusal.get('reason'))}{refused})"
        out.write(
            f"  {printable(finding.get('finding')):<10} {printable(finding.get('memberId'))}  "
            f"{printable(finding.get('requestId') or '-')}  {printable(finding.get('handling'))}: {what}\n"
        )
    if len(shown) < len(findings):
        out.write(f"  … and {len(findings) - len(shown)} more (--target {printable(name)} or --json for all)\n")


_STATES: Final = ("in_step", "drifted", "held", "failed")
_KINDS: Final = ("missing", "lingering", "unmanaged")
