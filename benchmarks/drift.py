"""``python -m benchmarks.drift [--smoke]``: the drift sweep of the app on the Graph double, in step and with 1 % drift.

The directory: 10 administrative units of 10,000 members and 20 activated directory roles of 50 members (one of
them Global Administrator, tier-0), served by the Graph double in this process over real HTTP, with Graph's write
quota (3,000 per 150 s) and a large tenant's read quota (8,000 resource units per 10 s); tokens come from the
real managed-identity credential and the local token endpoint. The intents are in the **grant ledger** (a table
in a local Azurite), each pair as the intent gate leaves it once its write is applied (`record_intents`): every
member's newest intent is an add (a tenth of them time-bound, expiring tomorrow), and each target also has removed
members (newest intent a remove, 10 % of its size). The app is wired as in Azure
(`grants_local.app.local_app`: `bootstrap`, the registered functions, settlement over gRPC) with a grant policy
whose drift section makes every target ``authoritative`` (the default guard: 20 % of a target, at most 50).

1. **In step**: the registered timer function ``drift_sweep``: Graph read requests and resource units, wall time,
   findings (0) and Graph writes (0); then its two halves apart: every target listed by a `DirectoryReader` on the
   app's `GraphClient` at the default pace (``in_step_graph_s``, Graph time), and every target's pairs read from
   the ledger (``in_step_ledger_s``).
2. **1 % drift** behind the app's back (`GraphDouble.add_member` / `remove_member`, as the portal would): per
   unit a third of its drifted pairs removed (*missing*), a third of its removed members added back and a third
   new members with no intent (both *unmanaged*: the app did not make what is there; a change behind the app's
   back makes no *lingering* member, which only a write of the app's that failed leaves); one pair in each of 10
   roles, the tier-0 one included. Meanwhile a writer adds members to another unit through a `GraphClient` with
   a `WriteGovernor` of its own (20 writes/s). ``GET /api/drift`` must report exactly the drifted pairs; the timer
   sends the repairs to the bulk queue, the guard holds each unit's removals (66 > 50),
   ``POST /api/drift/{unit}/confirm`` releases each held set, and the registered ``grant_membership_bulk`` function
   carries every repair out. Checked: the Graph writes of the repairs are exactly one per drifted pair outside the
   tier-0 role, afterwards every other target holds exactly its granted members (a last sweep finds drift in the
   tier-0 role only), and neither the repairs nor the writer beside them were answered ``429``.

``--smoke``: 2 units of 500, 4 roles of 20, in seconds. The numbers are the double's and Azurite's on this machine
(shared with other work: noisy), not Graph's; the read count and units are what Graph would be asked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import azure.functions as func

from grants_local.app import LocalApp, local_app
from grants_local.azurite import AzuriteTables, new_ledger_table
from grants_local.graph_double import GraphDouble
from grants_local.host import OutcomeRecorder, registered_function
from grants_local.queue import ManualClock
from grants_local.token_endpoint import TokenEndpoint
from shared.adapters.directory import DirectoryReader
from shared.adapters.governor import WriteGovernor
from shared.adapters.graph import GraphClient, new_http_client, path
from shared.adapters.identity import ManagedIdentityTokens, managed_identity_credential
from shared.adapters.ledger import Ledger
from shared.config import Settings
from shared.core.access import CLIENT_PRINCIPAL_HEADER, Role, client_principal_header
from shared.core.contract import Action, AdministrativeUnit, DirectoryRole, Guid, Target
from shared.core.drift import is_tier0
from shared.core.intents import Intent, pair_of
from shared.core.pairs import Applied, Grant, PairState

GLOBAL_ADMIN = "62e90394-69f5-4237-9190-012177145e10"
BESIDE_UNIT = "be5de000-0000-4000-8000-000000000000"
_IDENTITY_VARIABLES = ("IDENTITY_SERVER_THUMBPRINT", "MSI_ENDPOINT", "MSI_SECRET", "AZURE_CLIENT_ID", "IMDS_ENDPOINT")
#: Intents recorded in the ledger at once while seeding (more only makes one Azurite slower).
_SEEDING = 8


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
    """The targets, their containers in the double, the members each should hold, and the drift injected."""

    targets: list[Target]
    containers: dict[Target, str]
    wanted: dict[Target, set[Guid]]
    drifted: set[tuple[Target, Guid]]


def seed_graph(graph: GraphDouble, size: Size) -> tuple[Directory, list[tuple[Target, Guid, Intent]]]:
    """Units and roles with their members in the double; the intents to record (30 days ago, the app's clock)."""
    directory = Directory(targets=[], containers={}, wanted={}, drifted=set())
    intents: list[tuple[Target, Guid, Intent]] = []
    specs = [(1, u, size.unit_members) for u in range(size.units)] + [
        (2, r, size.role_members) for r in range(size.roles)
    ]
    for kind, index, count in specs:
        members = [guid(kind, index, n) for n in range(count)]
        gone = [guid(kind, index, count + n) for n in range(count // 10)]
        for member in [*members, *gone, *(guid(kind, index, 2 * count + n) for n in range(count // 50 + 1))]:
            graph.add_user(member)  # members, removed members, and principals no request names (for unmanaged)
        target: Target
        container: str
        if kind == 1:
            unit = guid(3, index, 0)
            graph.add_administrative_unit(unit, members=members)
            target, container = AdministrativeUnit(id=unit), unit
        else:
            template = GLOBAL_ADMIN if index == 0 else guid(4, index, 0)
            graph.add_role_template(template, activated=True, role_id=guid(5, index, 0), members=members)
            target, container = DirectoryRole(role_template_id=Guid(template)), template
        directory.targets.append(target)
        directory.containers[target] = container
        directory.wanted[target] = set(members)
        intents += [
            (target, m, _intent(f"RITM{kind}{index:03d}{n:05d}", Action.ADD, n % 10 == 0))
            for n, m in enumerate(members)
        ]
        intents += [(target, m, _intent(f"RITM{kind}{index:03d}r{n:05d}", Action.REMOVE)) for n, m in enumerate(gone)]
    return directory, intents


def _intent(request_id: str, action: Action, expiring: bool = False) -> Intent:
    """An intent dated at the epoch offset the seeding fills in (`_dated`)."""
    return Intent(
        request_id=request_id,
        content_hash="c",
        action=action,
        requested_at=datetime(2000, 1, 1, tzinfo=UTC),
        expires_at=datetime(2000, 1, 2, tzinfo=UTC) if expiring else None,
    )


async def record_intents(ledger: Ledger, intents: list[tuple[Target, Guid, Intent]], now: datetime) -> None:
    """Record each pair's state as the intent gate leaves it once its write is applied (its producer's grant,
    applied, no lease; a time-bound grant's pending removal), 30 days ago (a time-bound grant expiring tomorrow),
    `_SEEDING` at a time. Through the ledger's own pair write (`Ledger._write_pair`: its keys and columns, one
    request a pair): `begin` and `finish` cost four requests a pair, some 30 minutes for 111,000 pairs on a shared
    machine."""
    queue: asyncio.Queue[tuple[Target, Guid, Intent]] = asyncio.Queue()
    for item in intents:
        queue.put_nowait(item)
    shift = now - timedelta(days=30) - datetime(2000, 1, 1, tzinfo=UTC)

    async def worker() -> None:
        while not queue.empty():
            target, member, intent = queue.get_nowait()
            expires_at = now + timedelta(days=1) if intent.expires_at else None
            dated = replace(
                intent,
                requested_at=intent.requested_at + shift,
                expires_at=expires_at,
                producer=intent.producer or "other",
            )
            grant = Grant(producer=dated.producer or "other", newest=dated, removal_due=expires_at)
            state = PairState(
                grants=(grant,),
                applied=Applied(request_id=dated.request_id, action=dated.action, at=dated.requested_at),
            )
            assert await ledger._write_pair(pair_of(target, member), state, None) is not None

    await asyncio.gather(*(worker() for _ in range(_SEEDING)))


def inject_drift(graph: GraphDouble, directory: Directory, size: Size) -> None:
    """1 % of each unit's pairs drift (a third missing, a third removed members added back, a third members no
    request named: both unmanaged); one pair in each of up to 10 roles (the kinds taking turns)."""
    for index, target in enumerate(directory.targets):
        unit = isinstance(target, AdministrativeUnit)
        kind, count = (1, size.unit_members) if unit else (2, size.role_members)
        role_index = index - size.units
        if not unit and role_index >= 10:
            continue
        per_kind = [count // 100 // 3 + (1 if count // 100 % 3 > k else 0) for k in range(3)] if unit else [0, 0, 0]
        if not unit:
            per_kind[role_index % 3] = 1
        container, at = directory.containers[target], index if unit else role_index
        for n in range(per_kind[0]):  # missing: removed behind the app's back
            graph.remove_member(container, guid(kind, at, n))
            directory.drifted.add((target, guid(kind, at, n)))
        for n in range(per_kind[1]):  # unmanaged: a member the app removed, added back
            graph.add_member(container, guid(kind, at, count + n))
            directory.drifted.add((target, guid(kind, at, count + n)))
        for n in range(per_kind[2]):  # unmanaged: a member no request named
            graph.add_member(container, guid(kind, at, 2 * count + n))
            directory.drifted.add((target, guid(kind, at, 2 * count + n)))


@asynccontextmanager
async def writer_client(graph: GraphDouble, governor: WriteGovernor) -> AsyncIterator[GraphClient]:
    """Another writer's parts: its own httpx client, managed-identity credential and `GraphClient`."""
    http = new_http_client()
    credential = managed_identity_credential(http=http, client_id=None)
    tokens = ManagedIdentityTokens(credential, scope=graph.scope)
    try:
        yield GraphClient(http=http, tokens=tokens, base_url=graph.base_url, governor=governor)
    finally:
        await credential.close()
        await http.aclose()


async def write_beside(graph: GraphDouble, size: Size, stop: asyncio.Event) -> int:
    """Add members to another unit at 20 writes/s until `stop` (at most `size.writes_beside`); how many were sent."""
    writes = 0
    async with writer_client(graph, WriteGovernor(rate=20.0)) as client:
        for n in range(size.writes_beside):
            if stop.is_set() and n:
                break
            body = {"@odata.id": client.directory_object_url(guid(6, 0, n))}
            await client.send(
                "POST", path("directory", "administrativeUnits", BESIDE_UNIT, "members", "$ref"), json_body=body
            )
            writes += 1
    return writes


def policy_file(folder: str) -> str:
    """Every source may change any unit and non-tier-0 role; every target authoritative, the default guard."""
    rules = {"administrativeUnits": ["*"], "directoryRoles": ["*"], "scopedRoles": ["*"]}
    document = {
        "sources": {s: rules for s in ("hr", "ticketing", "bulk", "other")},
        "drift": {"defaultMode": "authoritative"},
    }
    file = Path(folder) / "policy.json"
    file.write_text(json.dumps(document))
    return str(file)


async def call(name: str, method: str = "GET", *, target: str | None = None, body: bytes = b"") -> dict[str, Any]:
    """A registered HTTP function's JSON answer (``drift_report``: ``?target=``; ``drift_confirm``: the route's)."""
    import function_app

    function: Any = registered_function(function_app.app, name)
    operator = client_principal_header(
        object_id="b0000000-0000-4000-8000-000000000001", name="bench operator", roles=(Role.OPERATOR.value,)
    )
    request = func.HttpRequest(
        method,
        "http://localhost/api/drift",
        headers={CLIENT_PRINCIPAL_HEADER: operator},  # as App Service authentication passes an operator on
        body=body,
        params={"target": target} if target and method == "GET" else {},
        route_params={"target": target} if target and method == "POST" else {},
    )
    response: Any = await function(request)
    document: dict[str, Any] = json.loads(response.get_body())
    return document


async def run(size: Size) -> dict[str, Any]:
    import function_app

    sweep_function = registered_function(function_app.app, "drift_sweep")
    for name in _IDENTITY_VARIABLES:
        os.environ.pop(name, None)
    async with AsyncExitStack() as stack:
        tokens = stack.enter_context(TokenEndpoint())
        os.environ.update(tokens.env())
        graph = stack.enter_context(GraphDouble(tokens, write_budget=(3000, 150.0), read_budget=(8000, 10.0)))
        azurite = stack.enter_context(AzuriteTables())
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="drift-bench-"))
        started = time.perf_counter()
        directory, intents = seed_graph(graph, size)
        graph.add_administrative_unit(BESIDE_UNIT)
        for n in range(size.writes_beside):
            graph.add_user(guid(6, 0, n))
        seed_graph_s = time.perf_counter() - started
        settings = Settings.from_env(
            {
                "GRAPH_BASE_URL": graph.base_url,
                "GRANTS_POLICY": policy_file(folder),
                "GRANTS_OUTCOMES_TOPIC": "grant-outcomes",
                "GRANTS_RETRY_BASE_SECONDS": "0",
                "GRANTS_MEMBER_NOT_FOUND_WINDOW_SECONDS": "0",
                "WEBSITE_AUTH_ENABLED": "true",
            }
        )
        clock = ManualClock(start=time.time())
        app: LocalApp = await stack.enter_async_context(
            local_app(settings, clock=clock, ledger=await new_ledger_table(azurite))
        )
        assert app.callbacks is not None
        events = app.callbacks.topic.add_subscription("drift", sql_filter="outcome = 'drift_detected'")
        lines = stack.enter_context(OutcomeRecorder("drift").attached())
        grants = app.recorder
        started = time.perf_counter()
        await record_intents(app.services.ledger, intents, clock.utcnow())
        seed_ledger_s = time.perf_counter() - started
        memberships = sum(len(graph.members_of(directory.containers[t])) for t in directory.targets)

        # 1. in step
        reads, units, writes = graph.read_count, graph.read_units, graph.write_count
        started = time.perf_counter()
        await sweep_function(timer=None)
        in_step_wall = time.perf_counter() - started
        in_step = {
            "reads": graph.read_count - reads,
            "read_units": graph.read_units - units,
            "findings": sum(line["missing"] + line["lingering"] + line["unmanaged"] for line in lines.records),
            "writes": graph.write_count - writes,
            "targets": len(lines.records),
        }

        # the in-step sweep's two halves apart: Graph's listings (the app's reader, paced) and the ledger's reads
        started = time.perf_counter()
        reader = DirectoryReader(graph=app.services.graph)
        for target in directory.targets:
            await reader.member_set(target=target)
        graph_s = time.perf_counter() - started
        started = time.perf_counter()
        for target in await app.services.ledger.pair_targets():
            await app.services.ledger.target_pairs(target)
        ledger_s = time.perf_counter() - started

        # 2. 1 % drift: reported, repaired through the pipeline, writes beside
        inject_drift(graph, directory, size)
        report = await call("drift_report")
        found = {(_target_of(t["target"]), Guid(f["memberId"])) for t in report["targets"] for f in t["findings"]}
        stop = asyncio.Event()
        writer = asyncio.create_task(write_beside(graph, size, stop))
        requests_before = len(graph.requests)
        lines.records.clear()
        started = time.perf_counter()
        await sweep_function(timer=None)
        drift_sweep_wall = time.perf_counter() - started
        published = len(_drain(events))  # one per finding, and one per held set
        held = {line["targetId"]: line["held"] for line in lines.records if line["state"] == "held"}
        confirmed = 0
        for target_id, hold in held.items():
            answer = await call(
                "drift_confirm", "POST", target=target_id, body=json.dumps({"digest": hold["digest"]}).encode()
            )
            confirmed += answer.get("status") == "released"
        repairs_sent = sum(1 for m in app.queue.snapshot()["active"] if m["messageId"].startswith("~drift:"))
        grants.records.clear()
        started = time.perf_counter()
        await app.host(function="grant_membership_bulk").drain(until=clock() + 1)
        repair_wall = time.perf_counter() - started
        stop.set()
        writes_beside = await writer
        repair_writes = [r for r in graph.requests[requests_before:] if r.method != "GET" and BESIDE_UNIT not in r.path]
        lines.records.clear()
        await sweep_function(timer=None)
        after = {line["targetId"] or line["roleTemplateId"]: line for line in lines.records}
    tier0_drift = {(t, m) for t, m in directory.drifted if is_tier0(t)}
    converged = all(
        graph.members_of(directory.containers[t]) == directory.wanted[t] for t in directory.targets if not is_tier0(t)
    )
    still = {key for key, line in after.items() if line["state"] != "in_step"}
    outcomes = [r for r in grants.records if r.get("terminal")]
    return {
        "units": size.units,
        "unit_members": size.unit_members,
        "roles": size.roles,
        "memberships": memberships,
        "intents": len(intents),
        "seed_graph_s": seed_graph_s,
        "seed_ledger_s": seed_ledger_s,
        "in_step_targets": in_step["targets"],
        "in_step_reads": in_step["reads"],
        "in_step_read_units": in_step["read_units"],
        "in_step_wall_s": in_step_wall,
        "in_step_graph_s": graph_s,
        "in_step_ledger_s": ledger_s,
        "in_step_findings": in_step["findings"],
        "in_step_writes": in_step["writes"],
        "drifted": len(directory.drifted),
        "findings": len(found),
        "findings_exact": found == directory.drifted,
        "events": published,
        "drift_sweep_wall_s": drift_sweep_wall,
        "held_targets": len(held),
        "held_removals": sum(h["removals"] for h in held.values()),
        "confirmed": confirmed,
        "repairs_sent": repairs_sent,
        "repairs_carried_out": sum(1 for r in outcomes if r["outcome"] in ("granted", "revoked")),
        "repair_writes": len(repair_writes),
        "repair_writes_429": sum(1 for r in repair_writes if r.status == 429),
        "repair_wall_s": repair_wall,
        "repairs_exact": len(repair_writes) == len(directory.drifted - tier0_drift) and converged,
        "tier0_untouched": len(tier0_drift) if {GLOBAL_ADMIN} >= still else -1,
        "writes_beside": writes_beside,
        "writes_beside_429": sum(
            1 for r in graph.requests if r.method == "POST" and BESIDE_UNIT in r.path and r.status == 429
        ),
        "reads_429": graph.reads_throttled,
    }


def _target_of(document: Mapping[str, Any]) -> Target:
    if document["type"] == "administrativeUnit":
        return AdministrativeUnit(id=Guid(document["id"]))
    return DirectoryRole(role_template_id=Guid(document["roleTemplateId"]))


def _drain(subscription: Any) -> list[Any]:
    taken = []
    while (locked := subscription.receive()) is not None:
        taken.append(locked)
        subscription.complete(locked.lock_token)
    return taken


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="2 units of 500 and 4 roles of 20: seconds")
    args = parser.parse_args()
    quiet = logging.StreamHandler()
    quiet.setLevel(logging.ERROR)  # the outcome logger runs at INFO for the recorders: print errors only
    logging.basicConfig(level=logging.ERROR, handlers=[quiet])
    r = asyncio.run(run(SMOKE if args.smoke else FULL))
    print(
        f"drift: units={r['units']}x{r['unit_members']} roles={r['roles']} memberships={r['memberships']} "
        f"intents={r['intents']} (ledger in Azurite) in_step_reads={r['in_step_reads']} "
        f"in_step_read_units={r['in_step_read_units']} in_step_wall_s={r['in_step_wall_s']:.2f} "
        f"in_step_graph_s={r['in_step_graph_s']:.2f} in_step_ledger_s={r['in_step_ledger_s']:.2f} "
        f"in_step_findings={r['in_step_findings']} in_step_writes={r['in_step_writes']} drifted={r['drifted']} "
        f"findings={r['findings']} findings_exact={r['findings_exact']} events={r['events']} "
        f"drift_sweep_wall_s={r['drift_sweep_wall_s']:.2f} held_targets={r['held_targets']} "
        f"held_removals={r['held_removals']} confirmed={r['confirmed']} repairs_sent={r['repairs_sent']} "
        f"repairs_carried_out={r['repairs_carried_out']} repair_writes={r['repair_writes']} "
        f"repair_writes_429={r['repair_writes_429']} repair_wall_s={r['repair_wall_s']:.2f} "
        f"repairs_exact={r['repairs_exact']} tier0_untouched={r['tier0_untouched']} "
        f"writes_beside={r['writes_beside']} writes_beside_429={r['writes_beside_429']} reads_429={r['reads_429']} "
        f"seed_graph_s={r['seed_graph_s']:.1f} seed_ledger_s={r['seed_ledger_s']:.1f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
