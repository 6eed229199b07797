"""``make bench``: CPU per grant against msgraph-sdk, throughput at Graph's write quota, the ledger's cost, cold
start, size, the fleet, the drift sweep.

``make bench`` (``ARGS=--quick``: shorter, about 10 minutes on 2 cores; the full run about 30) prints the lines
below; ``ARGS=--smoke`` runs every part, the drift sweep included, at a tiny scale (about two minutes) and exits
non-zero unless each part ran and printed its line: `make test` runs it (``make bench-smoke``), so a benchmark that
no longer runs fails CI. It asserts no timing, and labels what it prints as smoke: a first line saying so, each
figure's line starting ``smoke `` (``smoke summary: quota_fraction=0.303``: 20 grants in a few seconds, not a
measurement, not held to a target). Sizes (full / ``--quick``) are in `FULL` and `QUICK`.

Every line ends with the run's own speed and the machine's load while its part ran (`benchmarks.stamp`:
``| engine_cpu_ms=3.90 load=0.90..1.40 busy=63% cpus=2``): the engine comparison runs first, and every CPU figure
after it is also given as a multiple of the engine's CPU per grant in the same run (``..._vs_engine``), which a
slower or busier machine moves far less than the milliseconds. Figures, one line each, in this order (the Graph
double and the token endpoint run in a process of their own, `benchmarks.doubles`, so each figure measures only the
client):

1. ``engine`` / ``msgraph_sdk`` / ``cpu_vs_msgraph``: 2,000 / 500 grants, 16 at a time, against a fresh double with
   no budget and no latency, at the same level on both sides: our `GrantService.execute` (policy, handler, Graph POST,
   classified result; `benchmarks.engine`) vs msgraph-sdk's
   ``directory.administrative_units.by_administrative_unit_id(AU).members.ref.post(ReferenceCreate(...))``
   (`benchmarks.msgraph_client`, in ``.venv-msgraph``), and, as the floor, a bare httpx POST loop
   (`benchmarks.httpx_floor`). Each client runs in its own process and measures its own CPU with
   ``time.process_time``. The engine's median is the run's speed (``engine_cpu_ms`` on every line).
2. ``throughput``: N grants (3,000 / 600) through the local host and the registered function object, 16 at a
   time, against the Graph double with a write budget of 200 per 10 s (Graph's 20/s) and 30 ms latency;
   ``GRAPH_WRITE_RATE=20``, ``GRAPH_WRITE_PACING=static`` (one process pacing at the whole quota: the pipeline's
   own throughput; the fleet runs below measure adaptive pacing). Sustained writes/s and its fraction of the
   budget, 429s, dead letters, p50/p99 time per invocation (the outcome records' ``startedAt``..``finishedAt``,
   every delivery), CPU ms per grant (this process), token requests, TCP connections.
3. ``ledger``: the grant ledger's cost per grant (`benchmarks.ledger`): 1,000 / 300 uncontended adds admitted
   and finished through the app's `Ledger` against a local Azurite: storage requests and this process's CPU ms
   and wall ms per grant; then the terminal status of each as a bulk row (status, member and target history, job
   row: four writes at once): ``status_*``. The ``throughput`` figure already includes the ledger (the local host
   runs every grant through it), so its quota fraction is measured with the ledger's cost.
4. ``cost``: what a grant costs in the quantities Azure bills (`benchmarks.cost`, in a process of its own against a
   fresh double answering in 30 ms, 500 / 100 units per scenario): per 1,000 interactive grants, bulk rows,
   time-bound grants with their removal, webhook requests and HR joiner events, the Table Storage transactions,
   Service Bus operations, function executions, execution and busy seconds and log bytes; what one expiry sweep and
   one drift sweep cost; the peak RSS.
5. ``pipeline_cpu``: 2,000 / 500 grants, no budget, no latency (``GRAPH_WRITE_RATE=0``): CPU ms per grant of the
   whole pipeline (function object, binding decode, ledger, Graph call, settlement over gRPC), and by thread
   (`benchmarks.threads`): ``event_loop`` (the app's coroutines, with the local host and queue),
   ``settlement_calls`` (the app's blocking settlement calls), ``settlement_server`` (the local settlement
   server's handlers: the Functions host's part in Azure), ``grpc_core`` (gRPC's own threads, both sides);
   ``cpu_vs_engine``, and ``app_threads_vs_engine`` (`APP_THREADS`: the threads that are the app's in Azure).
6. ``cold_start``: median wall time and peak RSS of fresh ``python -c "import function_app"`` (9 / 5) vs as many
   fresh ``.venv-msgraph`` interpreters importing what a msgraph-sdk-based function app would (`MSGRAPH_IMPORTS`),
   taking turns, after one uncounted run each that leaves our modules' bytecode in ``__pycache__``; and, as
   information, ours plus what the first message imports when it builds the services (`FIRST_MESSAGE_IMPORTS`:
   ``shared.bootstrap`` with the Graph and ledger clients, and ``azure.identity.aio``).
7. ``telemetry``: what the worker's OpenTelemetry export (``PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true``,
   the deployment choice ``GRANTS_OPENTELEMETRY``) costs. CPU ms per grant of the whole pipeline
   (`benchmarks.pipeline`: 1,000 / 500 grants, no budget, no latency, each side in a process of its own, 3 / 1
   runs each, taking turns; medians) without and with the Azure Monitor distro configured as the worker configures
   it, exporting to a loopback ingestion stub (`grants_local.ingestion`) and flushed inside the measured window;
   and the cold start (as in 6) of ``import function_app`` with the distro configured first. The outcome traces
   the stub received with their fields as dimensions are counted.
8. ``installed_size``: the files in the RECORDs of requirements.txt's distributions and their dependencies
   vs the same for the msgraph-sdk equivalent (requirements.txt with httpx replaced by msgraph-sdk); and the
   Graph client alone: httpx + azure-identity vs msgraph-sdk (each with its dependencies).
9. ``fleet`` / ``onboarding`` / ``light_load``: K instances sharing the write quota (K = 1, 4, 16, 1 → 16 → 4,
   today's static split as the baseline, and K = 16 with a CPU hog beside the workers), interactive grants during
   a 10,000-row bulk backlog, one grant at a time at 30 ms per Graph answer; see `benchmarks.fleet` (``--quick``: a
   shorter window and runs).
10. ``drift``: the drift sweep of 101,000 memberships in step and with 1 % drift (`benchmarks.drift`, in a process of
    its own; ``--quick`` and ``--smoke``: 2 units of 500 and 4 roles of 20).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks import fleet
from benchmarks.cost import cost_line
from benchmarks.directory import grants
from benchmarks.ledger import ledger_cost
from benchmarks.stamp import StampedLines, client_run, doubles
from benchmarks.threads import ThreadCpu
from grants_local.ingestion import UNSET, IngestionStub, local_environment
from grants_local.run import run_local
from shared.service.settle import outcome_log

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = Path(sys.executable)
MSGRAPH_PYTHON = ROOT / ".venv-msgraph" / "bin" / "python"


@dataclass(frozen=True)
class Plan:
    """How big each part is: `grants` through the throughput run, `ledger` intents, `compare` grants in the pipeline
    and CPU comparison runs (no latency, 16 at a time), `rounds` runs of each comparison client (the figures are
    medians), `telemetry` grants in each of `telemetry_rounds` runs per side of the telemetry part, `cold_runs`
    interpreters per side, `cost` units per scenario of the cost part, and the fleet's `fleet.Scale`."""

    grants: int
    ledger: int
    cost: int
    compare: int
    rounds: int
    telemetry: int
    telemetry_rounds: int
    cold_runs: int
    fleet: fleet.Scale
    drift_smoke: bool


#: About 30 minutes on 2 cores (39 at load 3 to 17).
FULL = Plan(
    grants=3_000,
    ledger=1_000,
    cost=500,
    compare=2_000,
    rounds=3,
    telemetry=1_000,
    telemetry_rounds=3,
    cold_runs=9,
    fleet=fleet.FULL,
    drift_smoke=False,
)
#: About 10 minutes on 2 cores.
QUICK = Plan(
    grants=600,
    ledger=300,
    cost=200,
    compare=500,
    rounds=3,
    telemetry=500,
    telemetry_rounds=1,
    cold_runs=5,
    fleet=fleet.QUICK,
    drift_smoke=True,
)
SMOKE = Plan(
    grants=20,
    ledger=20,
    cost=3,
    compare=50,
    rounds=1,
    telemetry=50,
    telemetry_rounds=1,
    cold_runs=1,
    fleet=fleet.SMOKE,
    drift_smoke=True,
)
#: The lines a run prints, one per part, in this order (``--smoke`` checks that each was printed).
PARTS = (
    "engine",
    "msgraph_sdk",
    "httpx_floor",
    "cpu_vs_msgraph",
    "throughput",
    "ledger",
    "cost",
    "pipeline_cpu",
    "cold_start",
    "telemetry",
    "installed_size",
    "fleet",
    "onboarding",
    "onboarding_ratio",
    "light_load",
    "drift",
    "summary",
)
#: The threads of `pipeline_cpu` whose CPU is the app's in Azure (`benchmarks.threads`): its coroutines (with the local
#: host's and queue's share, about 3 % of the loop) and its blocking settlement calls.
APP_THREADS = ("event_loop", "settlement_calls")


class InvocationTimes(logging.Handler):
    """Each outcome record's ``finishedAt - startedAt`` (one per delivery), in seconds."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seconds: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        grant = getattr(record, "grant", None)
        if isinstance(grant, dict) and grant.get("startedAt") and grant.get("finishedAt"):
            started = datetime.fromisoformat(grant["startedAt"])
            self.seconds.append((datetime.fromisoformat(grant["finishedAt"]) - started).total_seconds())


async def pipeline(count: int, *, budget: str, latency: float, write_rate: str) -> dict[str, Any]:
    times = InvocationTimes()
    outcome_log.addHandler(times)
    try:
        with doubles(users=count, budget=budget, latency=latency) as served:
            env = {
                **served.env,
                "GRAPH_WRITE_RATE": write_rate,
                "GRAPH_WRITE_PACING": "static",  # one process at the full rate: the pipeline's own throughput
                "GRANTS_RETRY_BASE_SECONDS": "1",
            }
            threads = ThreadCpu()
            threads.sample()
            sampler = asyncio.create_task(threads.run())
            cpu, wall = time.process_time(), time.perf_counter()
            run = await run_local(  # real time
                grants(count, served.unit), env=env, clock=time.time, concurrency=16, producer="bulk"
            )
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            sampler.cancel()
            threads.sample()
            counters = served.counters()
    finally:
        outcome_log.removeHandler(times)
    outcomes = [o.outcome for o in run.outcomes]
    return {
        "cpu": cpu,
        "wall": wall,
        "counters": counters,
        "outcomes": outcomes,
        "invocation_s": times.seconds,
        "threads": threads.groups(),
    }


OUR_IMPORTS = "import function_app"
#: Imported by our app when it builds its services for the first message (the msgraph side imports the credential
#: up front): the composition root and the adapters it wires (httpx, the Graph and ledger clients, azure-data-tables)
#: and the managed-identity credential.
FIRST_MESSAGE_IMPORTS = "import shared.bootstrap; import azure.identity.aio"
#: What a msgraph-sdk-based function app imports: the Functions library and Service Bus extension, the
#: async managed-identity credential, the client, the model and the request builders of the one call it makes.
MSGRAPH_IMPORTS = "; ".join(
    (
        "import azure.functions",
        "import azurefunctions.extensions.bindings.servicebus",
        "from azure.identity.aio import ManagedIdentityCredential",
        "from msgraph import GraphServiceClient",
        "from msgraph.generated.models.reference_create import ReferenceCreate",
        "from msgraph.generated.directory.directory_request_builder import DirectoryRequestBuilder",
        "from msgraph.generated.directory.administrative_units.administrative_units_request_builder import "
        "AdministrativeUnitsRequestBuilder",
        "from msgraph.generated.directory.administrative_units.item.administrative_unit_item_request_builder import "
        "AdministrativeUnitItemRequestBuilder",
        "from msgraph.generated.directory.administrative_units.item.members.members_request_builder import "
        "MembersRequestBuilder",
        "from msgraph.generated.directory.administrative_units.item.members.ref.ref_request_builder import "
        "RefRequestBuilder",
    )
)


def cold_starts(
    sides: dict[str, tuple[Path, str]], runs: int = 9, envs: dict[str, dict[str, str]] | None = None
) -> dict[str, tuple[float, float]]:
    """Median wall time (s) and peak RSS (MB, ``VmHWM``) of fresh interpreters running each side's imports
    (with `envs`' settings added to the environment for the sides it names).

    Each side runs once first (not counted) with bytecode writing on, so our modules are imported from
    ``__pycache__`` as the installed packages are; then the sides take turns, so that load from other work
    on the machine falls on both alike.
    """
    env = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
    peak = "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))"
    walls: dict[str, list[float]] = {name: [] for name in sides}
    peaks: dict[str, list[float]] = {name: [] for name in sides}
    for round_ in range(runs + 1):
        for name, (python, imports) in sides.items():
            start = time.perf_counter()
            out = subprocess.run(  # noqa: S603 (a venv's interpreter, fixed code)
                [str(python), "-c", f"{imports}; {peak}"],
                cwd=ROOT,
                env={**env, **(envs or {}).get(name, {})},
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            if round_:
                walls[name].append(time.perf_counter() - start)
                peaks[name].append(int(out.split()[-1]) / 1024)
    return {name: (statistics.median(walls[name]), statistics.median(peaks[name])) for name in sides}


#: The worker's start-up with telemetry on, then our app (`grants_local.worker_telemetry`).
TELEMETRY_IMPORTS = f"from grants_local.worker_telemetry import configure; configure(); {OUR_IMPORTS}"


def telemetry_environment(stub: IngestionStub) -> dict[str, str]:
    """Telemetry on, exporting to `stub` only (`grants_local.ingestion.local_environment`)."""
    return {**local_environment(stub.connection_string), "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": "true"}


def pipeline_run(count: int, *, telemetry: IngestionStub | None) -> dict[str, Any]:
    """`benchmarks.pipeline` in its own process against a fresh double, exporting to `telemetry` if given."""
    with doubles(users=count, budget="none", latency=0.0) as served:
        env = {name: value for name, value in served.env.items() if name not in UNSET}
        args = [sys.executable, "-m", "benchmarks.pipeline", "--unit", served.unit, "--count", str(count)]
        if telemetry is not None:
            env.update(telemetry_environment(telemetry))
            args.append("--telemetry")
        out = subprocess.run(  # noqa: S603 (this interpreter, our module)
            args, cwd=ROOT, env=env, capture_output=True, text=True, check=True
        ).stdout
        figures: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        served.counters()
    return figures


def cost_run(count: int) -> dict[str, Any]:
    """`benchmarks.cost` in its own process (its peak RSS is the app's and the local host's; it starts its doubles in
    another); its figures."""
    out = subprocess.run(  # noqa: S603 (this interpreter, our module)
        [sys.executable, "-m", "benchmarks.cost", "--count", str(count)],
        cwd=ROOT,
        env={name: value for name, value in os.environ.items() if name != "GRAPH_BASE_URL"},
        stdout=subprocess.PIPE,  # its errors go to the benchmark's standard error
        text=True,
        check=True,
    ).stdout
    figures: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return figures


def installed_mb(python: Path | str, names: list[str]) -> float:
    """Installed size (MB, RECORD files) of `names` and their dependencies in `python`'s environment."""
    out = subprocess.run(  # noqa: S603 (a venv's interpreter, our script)
        [str(python), str(ROOT / "benchmarks" / "sizes.py"), *names], capture_output=True, text=True, check=True
    ).stdout
    return float(json.loads(out)["bytes"]) / 1e6


def runtime_requirements() -> list[str]:
    """The distribution names requirements.txt pins."""
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [line.split("==")[0].strip() for line in lines if line.strip() and not line.startswith("#")]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer grants, shorter fleet runs (about 10 minutes)")
    parser.add_argument("--smoke", action="store_true", help="every part at a tiny scale; fails unless each ran")
    parser.add_argument("--grants", type=int, default=None)
    args = parser.parse_args()
    plan = SMOKE if args.smoke else QUICK if args.quick else FULL
    count = args.grants or plan.grants
    if args.smoke:
        print(
            f"bench --smoke: every part once at a tiny scale ({count} grants, fleet runs of seconds, a drift sweep of "
            "2 units of 500) to show that it still runs; its figures (lines starting 'smoke') are not measurements "
            "and are held to no target: make bench measures them (docs/performance.md)",
            flush=True,
        )
    printed = StampedLines(sys.stdout, prefix="smoke " if args.smoke else "")
    sys.stdout = printed
    try:
        run(plan, count, printed)
    finally:
        sys.stdout = printed.out
    if args.smoke:
        missing = [part for part in PARTS if part not in printed.parts]
        if missing:
            raise SystemExit(f"bench --smoke: no line from {', '.join(missing)}")
        print(f"bench --smoke: every part ran and printed its line ({len(PARTS)} parts)")


def drift_line(*, smoke: bool) -> str:
    """`benchmarks.drift` in its own process (it runs the app with a Graph double of its own); the line it printed."""
    out = subprocess.run(  # noqa: S603 (this interpreter, our module)
        [sys.executable, "-m", "benchmarks.drift", *(["--smoke"] if smoke else [])],
        cwd=ROOT,
        env={name: value for name, value in os.environ.items() if name != "GRAPH_BASE_URL"},
        stdout=subprocess.PIPE,  # its errors go to the benchmark's standard error
        text=True,
        check=True,
    ).stdout
    return out.strip().splitlines()[-1]


def run(plan: Plan, count: int, printed: StampedLines) -> None:
    """Every part of the benchmark at `plan`'s scale (`count` grants in the throughput run), a line each; the engine
    comparison first, so that every line can state the run's own speed (`printed.engine_ms`)."""
    quiet = logging.StreamHandler()
    quiet.setLevel(logging.CRITICAL)  # the outcome lines are recorded, not printed
    logging.basicConfig(level=logging.INFO, handlers=[quiet])

    clients = {
        "engine": (VENV_PYTHON, "benchmarks.engine"),
        "msgraph_sdk": (MSGRAPH_PYTHON, "benchmarks.msgraph_client"),
        "httpx_floor": (VENV_PYTHON, "benchmarks.httpx_floor"),
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in clients}
    for _ in range(plan.rounds):  # the clients take turns, so that other load falls on each alike
        for name, (python, module) in clients.items():
            runs[name].append(client_run(python, module, plan.compare))
    cpu = {name: statistics.median(r["cpu_s"] for r in rs) for name, rs in runs.items()}
    wall = {name: statistics.median(r["wall_s"] for r in rs) for name, rs in runs.items()}
    engine = printed.engine_ms = 1000 * cpu["engine"] / plan.compare  # the run's own speed, on every line from here
    for name, rs in runs.items():
        print(
            f"{name}: grants={plan.compare} concurrency=16 runs={len(rs)} median_wall_s={wall[name]:.2f} "
            f"median_cpu_ms_per_grant={1000 * cpu[name] / plan.compare:.2f} "
            f"cpu_ms_per_grant_runs={'/'.join(format(1000 * r['cpu_s'] / plan.compare, '.2f') for r in rs)} "
            f"outcomes={json.dumps(rs[0]['outcomes'], separators=(',', ':'))} "
            f"token_requests={'/'.join(str(r['counters']['token_requests']) for r in rs)} "
            f"tcp_connections={'/'.join(str(r['counters']['connections']) for r in rs)}",
            flush=True,
        )
    cpu_ratio = cpu["engine"] / cpu["msgraph_sdk"]
    print(
        f"cpu_vs_msgraph: cpu_ratio={cpu_ratio:.2f} wall_ratio={wall['engine'] / wall['msgraph_sdk']:.2f} "
        f"httpx_floor_ratio={cpu['httpx_floor'] / cpu['msgraph_sdk']:.2f} "
        f"engine_vs_floor={cpu['engine'] / cpu['httpx_floor']:.2f}",
        flush=True,
    )

    first = asyncio.run(pipeline(count, budget="200/10", latency=0.03, write_rate="20"))
    c = first["counters"]
    rate = c["writes_ok"] / first["wall"]
    dead = first["outcomes"].count("dead_lettered")
    times = first["invocation_s"]
    print(
        f"throughput: grants={count} wall_s={first['wall']:.1f} writes_per_s={rate:.2f} "
        f"quota_fraction={rate / 20:.3f} throttled={c['throttled']} "
        f"({100 * c['throttled'] / max(c['requests'], 1):.2f}%) dead_lettered={dead} "
        f"invocations={len(times)} p50_ms={1000 * percentile(times, 0.5):.0f} "
        f"p99_ms={1000 * percentile(times, 0.99):.0f} cpu_ms_per_grant={1000 * first['cpu'] / count:.2f} "
        f"cpu_vs_engine={1000 * first['cpu'] / count / engine:.2f} "
        f"token_requests={c['token_requests']} tcp_connections={c['connections']} members={c['members']}",
        flush=True,
    )
    ledger = asyncio.run(ledger_cost(plan.ledger))
    ledger_calls = ledger["storage_calls_per_grant"] + ledger["status_storage_calls_per_grant"]
    ledger_cpu = ledger["cpu_ms_per_grant"] + ledger["status_cpu_ms_per_grant"]
    print(
        f"ledger: grants={ledger['grants']} storage_calls_per_grant={ledger['storage_calls_per_grant']:.2f} "
        f"round_trips_per_grant=3 cpu_ms_per_grant={ledger['cpu_ms_per_grant']:.2f} "
        f"wall_ms_per_grant={ledger['wall_ms_per_grant']:.2f} "
        f"status_storage_calls_per_grant={ledger['status_storage_calls_per_grant']:.2f} "
        f"status_cpu_ms_per_grant={ledger['status_cpu_ms_per_grant']:.2f} "
        f"status_wall_ms_per_grant={ledger['status_wall_ms_per_grant']:.2f} "
        f"total_storage_calls_per_grant={ledger_calls:.2f} total_cpu_ms_per_grant={ledger_cpu:.2f} "
        f"total_cpu_vs_engine={ledger_cpu / engine:.2f}",
        flush=True,
    )
    print(cost_line(cost_run(plan.cost)), flush=True)
    second = asyncio.run(pipeline(plan.compare, budget="none", latency=0.0, write_rate="0"))
    by_thread = " ".join(f"{group}_ms={1000 * s / plan.compare:.2f}" for group, s in second["threads"].items())
    pipeline_ms = 1000 * second["cpu"] / plan.compare
    app_ms = 1000 * sum(second["threads"].get(group, 0.0) for group in APP_THREADS) / plan.compare
    print(
        f"pipeline_cpu: grants={plan.compare} wall_s={second['wall']:.1f} "
        f"cpu_ms_per_grant={pipeline_ms:.2f} ({by_thread}) cpu_vs_engine={pipeline_ms / engine:.2f} "
        f"app_threads_vs_engine={app_ms / engine:.2f} "
        f"token_requests={second['counters']['token_requests']} tcp_connections={second['counters']['connections']}",
        flush=True,
    )

    stub = IngestionStub()
    telemetry_runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for _ in range(plan.telemetry_rounds):  # the two sides take turns, as the clients do
        telemetry_runs["off"].append(pipeline_run(plan.telemetry, telemetry=None))
        telemetry_runs["on"].append(pipeline_run(plan.telemetry, telemetry=stub))
    starts = cold_starts(
        {
            "ours": (VENV_PYTHON, OUR_IMPORTS),
            "msgraph": (MSGRAPH_PYTHON, MSGRAPH_IMPORTS),
            "ours_with_services": (VENV_PYTHON, f"{OUR_IMPORTS}; {FIRST_MESSAGE_IMPORTS}"),
            "ours_with_telemetry": (VENV_PYTHON, TELEMETRY_IMPORTS),
        },
        runs=plan.cold_runs,
        envs={"ours_with_telemetry": telemetry_environment(stub)},
    )
    exported = [base for base in stub.messages("grant ") if base.get("properties", {}).get("outcome")]
    stub.close()
    (our_wall, our_peak), (their_wall, their_peak) = starts["ours"], starts["msgraph"]
    with_services = starts["ours_with_services"][0]
    import_ratio = our_wall / their_wall
    print(
        f"cold_start: import_function_app_s={our_wall:.3f} peak_rss_mb={our_peak:.0f} "
        f"msgraph_imports_s={their_wall:.3f} msgraph_peak_rss_mb={their_peak:.0f} import_ratio={import_ratio:.2f} "
        f"rss_ratio={our_peak / their_peak:.2f} with_first_message_imports_s={with_services:.3f} "
        f"with_first_message_imports_ratio={with_services / their_wall:.2f}",
        flush=True,
    )
    tel_cpu = {side: statistics.median(r["cpu_s"] for r in rs) / plan.telemetry for side, rs in telemetry_runs.items()}
    tel_wall, tel_peak = starts["ours_with_telemetry"]
    telemetry_cpu_ratio = tel_cpu["on"] / tel_cpu["off"]
    telemetry_import_ratio = tel_wall / our_wall
    print(
        f"telemetry: grants={plan.telemetry} runs={plan.telemetry_rounds} "
        f"cpu_ms_per_grant_off={1000 * tel_cpu['off']:.2f} "
        f"cpu_ms_per_grant_on={1000 * tel_cpu['on']:.2f} cpu_ratio={telemetry_cpu_ratio:.2f} "
        f"import_s_off={our_wall:.3f} import_s_on={tel_wall:.3f} import_ratio={telemetry_import_ratio:.2f} "
        f"peak_rss_mb_off={our_peak:.0f} peak_rss_mb_on={tel_peak:.0f} rss_ratio={tel_peak / our_peak:.2f} "
        f"outcome_traces_with_dimensions={len(exported)}",
        flush=True,
    )
    runtime = runtime_requirements()
    our_mb = installed_mb(VENV_PYTHON, runtime)
    their_mb = installed_mb(MSGRAPH_PYTHON, [name for name in runtime if name != "httpx"] + ["msgraph-sdk"])
    our_client_mb = installed_mb(VENV_PYTHON, ["httpx", "azure-identity"])
    sdk_mb = installed_mb(MSGRAPH_PYTHON, ["msgraph-sdk"])
    size_ratio = our_mb / their_mb
    print(
        f"installed_size: runtime_mb={our_mb:.1f} msgraph_equivalent_mb={their_mb:.1f} size_ratio={size_ratio:.2f} "
        f"graph_client_mb={our_client_mb:.1f} (httpx+azure-identity) msgraph_sdk_mb={sdk_mb:.1f}",
        flush=True,
    )
    fleet_figures = fleet.run_all(plan.fleet, engine_ms=engine)
    print(drift_line(smoke=plan.drift_smoke), flush=True)
    print(
        f"summary: quota_fraction={rate / 20:.3f} throttled={c['throttled']} token_requests={c['token_requests']} "
        f"cpu_ratio_vs_msgraph={cpu_ratio:.2f} import_ratio_vs_msgraph={import_ratio:.2f} "
        f"size_ratio_vs_msgraph={size_ratio:.2f} telemetry_cpu_ratio={telemetry_cpu_ratio:.2f} "
        f"telemetry_import_ratio={telemetry_import_ratio:.2f} ledger_cpu_ms_per_grant={ledger_cpu:.2f} "
        f"ledger_storage_calls_per_grant={ledger_calls:.2f} ledger_cpu_vs_engine={ledger_cpu / engine:.2f} "
        f"pipeline_cpu_vs_engine={pipeline_ms / engine:.2f}"
    )
    print(
        f"summary: fleet_quota_fraction_min={fleet_figures['fleet_quota_fraction_min']:.3f} "
        f"fleet_throttled_pct_max={fleet_figures['fleet_throttled_pct_max']:.2f} "
        f"hog_throttled_pct={fleet_figures['hog_throttled_pct']:.2f} "
        f"onboarding_p99_ratio={fleet_figures['onboarding_p99_ratio']:.2f} "
        f"static_quota_fraction_k4={fleet_figures['static_quota_fraction_k4']:.3f} "
        f"fleet_dead_throttled={fleet_figures['fleet_dead_throttled']:.0f} "
        f"light_load_overhead_p99_ms={fleet_figures['light_overhead_p99_ms']:.1f} "
        f"light_load_overhead_p99_vs_engine={fleet_figures['light_overhead_p99_ms'] / engine:.1f} "
        f"token_requests_per_process_max={fleet_figures['tokens_per_process_max']:.0f}"
    )


if __name__ == "__main__":
    main()
