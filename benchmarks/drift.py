"""``python -m benchmarks.drift [--smoke]``: a drift sweep on the Graph double, in step and with 1 % drift.

The directory: 10 administrative units of 10,000 members and 20 activated directory roles of 50 members (one of
them Global Administrator, tier-0), served by the Graph double in this process over real HTTP, with Graph's write
quota (3,000 per 150 s) and a large tenant's read quota (8,000 resource units per 10 s); tokens come from the
real managed-identity credential and the local token endpoint. The intents: every member's newest intent is an
add (a tenth of them time-bound, expiring tomorrow), and each target also has removed members (newest intent a
remove, 10 % of its size). In round one they come from a plain in-process mapping (the ledger query that will
answer "newest intent per pair for one target" comes with the pipeline integration); the line says so.

1. **In step**: every target is listed with `DirectoryReader` (paced at its default rate, Low priority) and
   classified (`shared.core.drift`): Graph read requests, resource units, wall time, findings (0) and Graph
   writes (0); then the same sweep with the pacer out of the way (``in_step_unpaced_wall_s``: what the reads
   and the classification cost, without the pause the pacer leaves for the app's other reads).
2. **1 % drift** behind the app's back (`GraphDouble.add_member` / `remove_member`, as the portal would): per
   unit a third of its drifted pairs removed (*missing*), a third of its removed members added back
   (*lingering*), a third new members with no intent (*unmanaged*); one pair in each of 10 roles, the tier-0 one
   included. All targets ``authoritative``; the blast-radius guard holds each unit's removals (66 > 50); a
   confirm naming each held set releases it. Checked: the findings are exactly the drifted pairs, and the
   repairs planned after the confirms are exactly the drifted pairs outside the tier-0 role (which is never
   touched). Meanwhile a writer adds members to another unit through a `GraphClient` with the app's
   `WriteGovernor` (20 writes/s): its ``429``s are counted (reads have their own budget: 0 expected).

``--smoke``: 2 units of 500, 4 roles of 20, in a few seconds. The numbers are the double's on this machine
(shared with other work: noisy), not Graph's; the read count and units are what Graph would be asked.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from grants_local.graph_double import GraphDouble
from grants_local.token_endpoint import TokenEndpoint
from shared.adapters.directory import DirectoryReader, ReadPacer
from shared.adapters.governor import WriteGovernor
from shared.adapters.graph import GraphClient, new_http_client, path
from shared.adapters.identity import ManagedIdentityTokens, managed_identity_credential
from shared.core.contract import Action, AdministrativeUnit, DirectoryRole, Guid, Target
from shared.core.drift import Mode, Plan, Report, classify, is_tier0, plan
from shared.core.intents import Intent, PairState

GLOBAL_ADMIN = "62e90394-69f5-4237-9190-012177145e10"
BESIDE_UNIT = "be5de000-0000-4000-8000-000000000000"
_IDENTITY_VARIABLES = ("IDENTITY_SERVER_THUMBPRINT", "MSI_ENDPOINT", "MSI_SECRET", "AZURE_CLIENT_ID", "IMDS_ENDPOINT")


@dataclass(frozen=True, slots=True)
class Size:
    units: int
    unit_members: int
    roles: int
    role_members: int
    writes_beside: int


FULL = Size(units=10, unit_members=10_000, roles=20, role_members=50, writes_beside=100)
SMOKE = Size(units=2, unit_members=500, roles=4, role_members=20, writes_beside=10)


def guid(kind: int, target: int, n: int) -> Guid:
    """A predictable id: kind (1 unit member, 2 role member, 3 unit, 4 template, 5 role, 6 writer's), target, n."""
    return Guid(f"{n:08x}-{target:04x}-4{kind:03x}-8000-00000000d51f")


@dataclass
class Directory:
    """The targets, the in-process intents per target (member -> pair state), and the drift injected."""

    targets: list[Target]
    states: dict[Target, dict[Guid, PairState]]
    drifted: set[tuple[Target, Guid]]


def seed(graph: GraphDouble, size: Size, now: datetime) -> Directory:
    """Units and roles with their members in the double, and the newest intent of every pair."""
    targets: list[Target] = []
    states: dict[Target, dict[Guid, PairState]] = {}
    specs = [(1, u, size.unit_members) for u in range(size.units)] + [
        (2, r, size.role_members) for r in range(size.roles)
    ]
    for kind, index, count in specs:
        removed = count // 10
        members = [guid(kind, index, n) for n in range(count)]
        gone = [guid(kind, index, count + n) for n in range(removed)]
        for member in [*members, *gone, *(guid(kind, index, 2 * count + n) for n in range(count // 50 + 1))]:
            graph.add_user(member)  # members, removed members, and principals no request names (for unmanaged)
        target: Target
        if kind == 1:
            unit = guid(3, index, 0)
            graph.add_administrative_unit(unit, members=members)
            target = AdministrativeUnit(id=unit)
        else:
            template = GLOBAL_ADMIN if index == 0 else guid(4, index, 0)
            graph.add_role_template(template, activated=True, role_id=guid(5, index, 0), members=members)
            target = DirectoryRole(role_template_id=Guid(template))
        targets.append(target)
        states[target] = {
            m: pair(f"RITM{kind}{index:03d}{n:05d}", Action.ADD, now, expiring=n % 10 == 0)
            for n, m in enumerate(members)
        } | {m: pair(f"RITM{kind}{index:03d}r{n:05d}", Action.REMOVE, now) for n, m in enumerate(gone)}
    return Directory(targets=targets, states=states, drifted=set())


def pair(request_id: str, action: Action, now: datetime, *, expiring: bool = False) -> PairState:
    intent = Intent(
        request_id=request_id,
        content_hash="c",
        action=action,
        requested_at=now - timedelta(days=30),
        expires_at=now + timedelta(days=1) if expiring else None,
    )
    return PairState(newest=intent)


def inject_drift(graph: GraphDouble, directory: Directory, size: Size) -> None:
    """1 % of each unit's pairs drift (a third missing, a third lingering, a third unmanaged); one pair in each of
    up to 10 roles (the kinds taking turns)."""
    for index, target in enumerate(directory.targets):
        unit = isinstance(target, AdministrativeUnit)
        kind, count = (1, size.unit_members) if unit else (2, size.role_members)
        role_index = index - size.units
        if not unit and role_index >= 10:
            continue
        per_kind = [count // 100 // 3 + (1 if count // 100 % 3 > k else 0) for k in range(3)] if unit else [0, 0, 0]
        if not unit:
            per_kind[role_index % 3] = 1
        container = _container(target)
        for n in range(per_kind[0]):  # missing: removed behind the app's back
            member = guid(kind, index if unit else role_index, n)
            graph.remove_member(container, member)
            directory.drifted.add((target, member))
        for n in range(per_kind[1]):  # lingering: a removed member added back
            member = guid(kind, index if unit else role_index, count + n)
            graph.add_member(container, member)
            directory.drifted.add((target, member))
        for n in range(per_kind[2]):  # unmanaged: a member no request named
            member = guid(kind, index if unit else role_index, 2 * count + n)
            graph.add_member(container, member)
            directory.drifted.add((target, member))


@asynccontextmanager
async def app_client(graph: GraphDouble, governor: WriteGovernor | None = None) -> AsyncIterator[GraphClient]:
    """The app's parts: one httpx client, the managed-identity credential, a `GraphClient`."""
    http = new_http_client()
    credential = managed_identity_credential(http=http, client_id=None)
    tokens = ManagedIdentityTokens(credential, scope=graph.scope)
    try:
        yield GraphClient(http=http, tokens=tokens, base_url=graph.base_url, governor=governor)
    finally:
        await credential.close()
        await http.aclose()


async def sweep(
    reader: DirectoryReader, directory: Directory, now: datetime, confirms: dict[Target, str] | None = None
) -> dict[Target, tuple[Report, Plan]]:
    """List every target, classify it, plan it (authoritative; `confirms` releases held sets)."""
    results: dict[Target, tuple[Report, Plan]] = {}
    for target in directory.targets:
        members = await reader.member_set(target=target)
        report = classify(states=directory.states[target], members=members, now=now)
        confirm = (confirms or {}).get(target)
        results[target] = (
            report,
            plan(report, target=target, mode=Mode.AUTHORITATIVE, tier0=is_tier0, confirm=confirm),
        )
    return results


async def write_beside(graph: GraphDouble, size: Size, stop: asyncio.Event) -> int:
    """Add members to another unit at the app's write pace until `stop` (at most `size.writes_beside`); the
    number of writes Graph answered."""
    writes = 0
    async with app_client(graph, WriteGovernor(rate=20.0)) as client:
        for n in range(size.writes_beside):  # the interactive lane (the client's default)
            if stop.is_set() and n:
                break
            body = {"@odata.id": client.directory_object_url(guid(6, 0, n))}
            await client.send(
                "POST", path("directory", "administrativeUnits", BESIDE_UNIT, "members", "$ref"), json_body=body
            )
            writes += 1
    return writes


async def run(size: Size) -> dict[str, Any]:
    for name in _IDENTITY_VARIABLES:
        os.environ.pop(name, None)
    with TokenEndpoint() as tokens:
        os.environ.update(tokens.env())
        with GraphDouble(tokens, write_budget=(3000, 150.0), read_budget=(8000, 10.0)) as graph:
            now = datetime.now(UTC)
            started = time.perf_counter()
            directory = seed(graph, size, now)
            graph.add_administrative_unit(BESIDE_UNIT)
            for n in range(size.writes_beside):
                graph.add_user(guid(6, 0, n))
            seeded = time.perf_counter() - started
            memberships = sum(len(graph.members_of(_container(t))) for t in directory.targets)
            async with app_client(graph) as client:
                reader = DirectoryReader(graph=client)
                reads, units = graph.read_count, graph.read_units
                started = time.perf_counter()
                in_step = await sweep(reader, directory, now)
                in_step_wall = time.perf_counter() - started
                in_step_reads, in_step_units = graph.read_count - reads, graph.read_units - units
                in_step_findings = sum(len(report.findings) for report, _ in in_step.values())
                writes_in_step = graph.write_count
                started = time.perf_counter()
                await sweep(DirectoryReader(graph=client, pacer=ReadPacer(rate=10_000.0)), directory, now)
                unpaced_wall = time.perf_counter() - started

                inject_drift(graph, directory, size)
                stop = asyncio.Event()
                writer = asyncio.create_task(write_beside(graph, size, stop))
                started = time.perf_counter()
                drifted = await sweep(reader, directory, now)
                drift_wall = time.perf_counter() - started
                confirms = {t: p.held.digest for t, (_, p) in drifted.items() if p.held is not None}
                confirmed = await sweep(reader, directory, now, confirms)
                stop.set()
                writes_beside = await writer
    found = {(t, f.member_id) for t, (report, _) in drifted.items() for f in report.findings}
    tier0_drift = {(t, m) for t, m in directory.drifted if is_tier0(t)}
    planned = {(t, r.member_id) for t, (_, p) in confirmed.items() for r in p.repairs}
    beside_429 = sum(1 for r in graph.requests if r.method == "POST" and r.status == 429)
    return {
        "units": size.units,
        "unit_members": size.unit_members,
        "roles": size.roles,
        "memberships": memberships,
        "seed_s": seeded,
        "in_step_reads": in_step_reads,
        "in_step_read_units": in_step_units,
        "in_step_wall_s": in_step_wall,
        "in_step_unpaced_wall_s": unpaced_wall,
        "in_step_findings": in_step_findings,
        "in_step_writes": writes_in_step,
        "drifted": len(directory.drifted),
        "findings": len(found),
        "findings_exact": found == directory.drifted,
        "held_targets": len(confirms),
        "held_removals": sum(len(p.held.repairs) for _, p in drifted.values() if p.held is not None),
        "repairs_after_confirm": len(planned),
        "repairs_exact": planned == directory.drifted - tier0_drift,
        "tier0_untouched": len(tier0_drift),
        "drift_sweep_wall_s": drift_wall,
        "writes_beside": writes_beside,
        "writes_beside_429": beside_429,
        "reads_429": graph.reads_throttled,
    }


def _container(target: Target) -> str:
    if isinstance(target, AdministrativeUnit):
        return target.id
    assert isinstance(target, DirectoryRole)
    assert target.role_template_id is not None
    return target.role_template_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="2 units of 500 and 4 roles of 20: a few seconds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    r = asyncio.run(run(SMOKE if args.smoke else FULL))
    print(
        f"drift: units={r['units']}x{r['unit_members']} roles={r['roles']} memberships={r['memberships']} "
        f"in_step_reads={r['in_step_reads']} in_step_read_units={r['in_step_read_units']} "
        f"in_step_wall_s={r['in_step_wall_s']:.2f} in_step_unpaced_wall_s={r['in_step_unpaced_wall_s']:.2f} "
        f"in_step_findings={r['in_step_findings']} "
        f"in_step_writes={r['in_step_writes']} drifted={r['drifted']} findings={r['findings']} "
        f"findings_exact={r['findings_exact']} held_targets={r['held_targets']} held_removals={r['held_removals']} "
        f"repairs_after_confirm={r['repairs_after_confirm']} repairs_exact={r['repairs_exact']} "
        f"tier0_untouched={r['tier0_untouched']} drift_sweep_wall_s={r['drift_sweep_wall_s']:.2f} "
        f"writes_beside={r['writes_beside']} writes_beside_429={r['writes_beside_429']} reads_429={r['reads_429']} "
        f"seed_s={r['seed_s']:.1f} intents=in-process-mapping (the ledger query comes with the pipeline integration)",
        flush=True,
    )


if __name__ == "__main__":
    main()
