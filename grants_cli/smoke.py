"""``grants smoke``: after a deployment, show that the deployed app can grant, without changing anything.

Six checks, each printed as one ``PASS`` or ``FAIL`` line, a failure followed by the command that fixes it; the
exit code is 0 only when all pass (1 otherwise, 2 for a usage error):

1. ``send``: a dry-run grant goes onto the deployed grants queue, as the signed-in operator (`Backend.send`).
   Built with the contract (`draft`, `parse_grant`, `encode`): ``dryRun: true``, remove the app's own service
   principal from the directory role ``--role-template`` (Directory Readers by default), source ``--source``
   (``other``), requestId and MessageId ``smoke-<UTC time>-<6 hex>``. A dry run only reads; removing the app's
   own identity from a role answers ``not_member`` (or ``would_revoke``) whatever the tenant holds.
2. ``graph`` (two lines): the app's identity holds the Graph application permissions the app uses,
   ``AdministrativeUnit.ReadWrite.All`` and ``RoleManagement.ReadWrite.Directory`` (`GraphReader`).
3. ``service bus`` (two lines): it holds *Azure Service Bus Data Receiver* and *Data Sender* on the namespace
   (`RoleAssignments`: Azure role assignments at, above or below the namespace).
4. ``outcome``: the dry run's outcome arrives within ``--timeout`` seconds (default 180) and is not
   ``dead_lettered``. It is read from an `OutcomeSource`: the outcome lines in Application Insights
   (`LogOutcomes`, polled every 10 s: ingestion takes a minute or two) until the app has a status API.

``--local`` runs the same checks against the local namespace's deployment (`grants_local.deployment`), its
doubles on loopback and the local host (which processes the dry run), with no Azure account.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, TextIO

from shared.core.contract import draft, encode, parse_grant

if TYPE_CHECKING:
    from grants_cli.azure_apis import GraphReader, OutcomeSource, RoleAssignments
    from grants_common.queues import BackendOpener

__all__ = [
    "DATA_RECEIVER",
    "DATA_SENDER",
    "DIRECTORY_READERS",
    "GRAPH_PERMISSIONS",
    "Check",
    "add_parser",
    "main",
    "run_smoke",
    "smoke_message",
]

#: The Graph application permissions the app cannot work without (infra/scripts/grant-graph-permissions.sh grants
#: them, and the PIM schedule permissions, which RoleManagement.ReadWrite.Directory covers too: not checked here).
GRAPH_PERMISSIONS: Final = ("AdministrativeUnit.ReadWrite.All", "RoleManagement.ReadWrite.Directory")
DATA_RECEIVER: Final = "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0"
DATA_SENDER: Final = "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39"
SERVICE_BUS_ROLES: Final = {
    DATA_RECEIVER: "Azure Service Bus Data Receiver",
    DATA_SENDER: "Azure Service Bus Data Sender",
}
#: Directory Readers: in every tenant, not tier-0, so the default policy lets any source touch it.
DIRECTORY_READERS: Final = "88d8e3e3-8f55-4a1e-953a-9b9898b8876b"
POLL_SECONDS: Final = 10.0
DEFAULT_GRAPH_URL: Final = "https://graph.microsoft.com/v1.0"


@dataclass(frozen=True, slots=True)
class Check:
    """One checked item: PASS or FAIL, what was found, and for a failure the fix."""

    area: str
    passed: bool
    detail: str
    fix: str | None = None

    def line(self) -> str:
        text = f"{'PASS' if self.passed else 'FAIL'}  {self.area:<12} {self.detail}"
        return text + (f"\n      fix: {self.fix}" if self.fix else "")


def smoke_message(*, request_id: str, principal_id: str, role_template: str, source: str) -> bytes:
    """The dry-run grant's message body, through the contract: remove `principal_id` from the role, dry run."""
    document = draft(
        requestId=request_id,
        action="remove",
        target={"type": "directoryRole", "roleTemplateId": role_template},
        member={"id": principal_id, "type": "servicePrincipal"},
        source={"system": source, "reference": "grants smoke"},
        requestedBy="grants smoke",
        reason="post-deployment smoke check (dry run: nothing is written)",
        dryRun=True,
    )
    return encode(parse_grant(json.dumps(document).encode()))


def new_request_id(now: datetime) -> str:
    """``smoke-<UTC time>-<6 hex>``: unique, and recognisable in the outcome log and the dead-letter queue."""
    return f"smoke-{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def run_smoke(
    *,
    principal_id: str,
    namespace_id: str,
    queue: str,
    open_backend: BackendOpener,
    graph: GraphReader,
    roles: RoleAssignments,
    outcomes: OutcomeSource,
    role_template: str = DIRECTORY_READERS,
    source: str = "other",
    timeout: float = 180.0,
    poll_seconds: float = POLL_SECONDS,
    out: TextIO,
    log: TextIO,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Run the checks (module docstring), printing each to `out` as it is decided (the local host's table goes to
    `log`); return 0 when all pass, else 1."""
    from grants_cli.azure_apis import ApiError
    from grants_common.queues import Outgoing

    request_id = new_request_id(datetime.now(UTC))
    out.write(
        f"grants smoke: {request_id}, a dry run: remove service principal {principal_id} from the directory role "
        f"with template {role_template} (source {source})\n"
    )
    checks: list[Check] = []

    def report(check: Check) -> None:
        checks.append(check)
        out.write(check.line() + "\n")
        out.flush()

    body = smoke_message(request_id=request_id, principal_id=principal_id, role_template=role_template, source=source)
    sent_at = clock()
    try:
        with open_backend() as backend:
            backend.send(Outgoing(body=body, message_id=request_id))
            report(Check("send", True, f"dry-run grant sent to queue {queue} (MessageId {request_id})"))
            backend.drain(log)
    except Exception as error:
        report(
            Check(
                "send",
                False,
                f"could not send to queue {queue}: {type(error).__name__}: {str(error).splitlines()[0][:200]}",
                "the signed-in identity needs Azure Service Bus Data Sender on the namespace: az role assignment "
                f'create --assignee "$(az ad signed-in-user show --query id -o tsv)" --role "Azure Service Bus Data '
                f'Sender" --scope {namespace_id}',
            )
        )

    graph_root = graph.base_url.split("/v1.0")[0].split("/beta")[0]
    try:
        granted = graph.app_permissions(principal_id)
    except ApiError as error:
        for permission in GRAPH_PERMISSIONS:
            report(
                Check(
                    "graph",
                    False,
                    f"{permission}: could not read the identity's app role assignments: {error}",
                    "sign in as someone who can read service principals (az login; e.g. Directory Readers), "
                    "or check in the Entra admin center: Enterprise applications > the identity > Permissions",
                )
            )
    else:
        for permission in GRAPH_PERMISSIONS:
            if permission in granted:
                report(Check("graph", True, f"{permission} granted to {principal_id}"))
            else:
                report(
                    Check(
                        "graph",
                        False,
                        f"{permission} not granted to {principal_id}",
                        "az login as a Privileged Role Administrator, then: "
                        f"sh infra/scripts/grant-graph-permissions.sh {principal_id} {graph_root}",
                    )
                )

    namespace = namespace_id.rstrip("/").rsplit("/", 1)[-1]
    try:
        held = roles.role_definitions(scope=namespace_id, principal_id=principal_id)
    except ApiError as error:
        for name in SERVICE_BUS_ROLES.values():
            report(
                Check(
                    "service bus",
                    False,
                    f"{name}: could not read role assignments on {namespace}: {error}",
                    f"sign in as someone who can read role assignments on {namespace_id} (Reader), or: az role "
                    f"assignment list --assignee {principal_id} --scope {namespace_id} --include-inherited",
                )
            )
    else:
        for role, name in SERVICE_BUS_ROLES.items():
            if role in held:
                report(Check("service bus", True, f"{name} on {namespace}"))
            else:
                report(
                    Check(
                        "service bus",
                        False,
                        f"{name} missing on {namespace} for {principal_id}",
                        "azd provision (infra/modules/rbac.bicep assigns it), or: az role assignment create "
                        f"--assignee-object-id {principal_id} --assignee-principal-type ServicePrincipal "
                        f'--role "{name}" --scope {namespace_id}',
                    )
                )

    if checks[0].passed:
        report(_await_outcome(request_id, outcomes, sent_at, timeout, poll_seconds, clock, sleep))
    else:
        report(Check("outcome", False, "not looked for: the dry-run grant was not sent", "fix the send (above) first"))
    failed = sum(1 for check in checks if not check.passed)
    out.write(
        f"grants smoke: all {len(checks)} checks passed\n"
        if not failed
        else f"grants smoke: {failed} of {len(checks)} checks failed\n"
    )
    return 0 if not failed else 1


def _await_outcome(
    request_id: str,
    outcomes: OutcomeSource,
    sent_at: float,
    timeout: float,
    poll_seconds: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> Check:
    """Poll `outcomes` until the request settles or `timeout` seconds after `sent_at` have passed."""
    from grants_cli.azure_apis import ApiError, SeenOutcome

    last: SeenOutcome | None = None
    while True:
        try:
            last = outcomes.latest(request_id) or last
        except ApiError as error:
            if 400 <= error.status < 500:
                return Check(
                    "outcome",
                    False,
                    f"could not read the outcome from {outcomes.name}: {error}",
                    "the signed-in identity needs read access to the Application Insights component (Monitoring "
                    "Reader or Log Analytics Reader on it)",
                )
        waited = clock() - sent_at
        if last is not None and last.settled:
            if last.outcome == "dead_lettered":
                cause = (
                    "the grant policy refuses the dry run: run grants smoke with a --source and --role-template "
                    "your GRANTS_POLICY allows"
                    if last.reason == "PolicyDenied"
                    else f'fix the cause (docs/runbook.md, "Dead letters by reason": {last.reason})'
                )
                return Check(
                    "outcome",
                    False,
                    f"dead_lettered {last.reason} after {last.attempts} attempt(s): {last.description[:300]}",
                    f"grants dlq show {request_id}; {cause}. The dead letter is a dry run: grants dlq purge "
                    f"--reason {last.reason} --yes removes it (with any others of that reason)",
                )
            return Check(
                "outcome",
                True,
                f"{last.outcome} after {waited:.0f} s ({outcomes.name}): {last.description[:200]}",
            )
        if waited >= timeout:
            seen = f"; last seen: {last.outcome} {last.reason or ''}: {last.description[:200]}" if last else ""
            return Check(
                "outcome",
                False,
                f"no settled outcome for {request_id} within {timeout:.0f} s in {outcomes.name}{seen}",
                "is the app running (az functionapp show -g $AZURE_RESOURCE_GROUP -n $AZURE_FUNCTION_APP_NAME "
                "--query state)? Its trigger needs Azure Service Bus Data Receiver (above); Application Insights "
                "can take minutes to ingest: grants smoke --timeout 600. docs/runbook.md, Stalled",
            )
        sleep(min(poll_seconds, max(timeout - waited, 0.0)))


def add_parser(commands: Any) -> None:
    """The ``smoke`` subcommand; defaults from the azd environment (``azd env get-values``, or the hook's)."""
    env = os.environ
    smoke = commands.add_parser(
        "smoke",
        help="after a deployment: a dry-run grant through the deployed queue, the identity's Graph permissions "
        "and Service Bus roles",
    )
    smoke.add_argument("--local", action="store_true", help="the local namespace's deployment and doubles")
    smoke.add_argument("--principal-id", default=env.get("MANAGED_IDENTITY_PRINCIPAL_ID"), help="the app's identity")
    smoke.add_argument(
        "--namespace",
        default=env.get("SERVICE_BUS_NAMESPACE") or env.get("ServiceBusConnection__fullyQualifiedNamespace"),
        help="fully qualified Service Bus namespace (default: SERVICE_BUS_NAMESPACE)",
    )
    smoke.add_argument("--namespace-id", default=env.get("SERVICE_BUS_NAMESPACE_ID"), help="its resource id")
    smoke.add_argument(
        "--app-insights-id", default=env.get("APPLICATIONINSIGHTS_ID"), help="Application Insights' resource id"
    )
    smoke.add_argument("--queue", default=env.get("GRANTS_QUEUE", "grant-membership"), help="the grants queue")
    smoke.add_argument("--graph-url", default=env.get("GRAPH_BASE_URL") or DEFAULT_GRAPH_URL, help="Graph's root")
    smoke.add_argument("--arm-url", default=None, help="Azure Resource Manager (default: the global cloud's)")
    smoke.add_argument("--logs-url", default=None, help="the Log Analytics query API (default: the global cloud's)")
    smoke.add_argument("--role-template", default=DIRECTORY_READERS, help="the dry run's directory role template")
    smoke.add_argument("--source", default="other", choices=["hr", "ticketing", "bulk", "other"])
    smoke.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the outcome (default 180)")


def main(args: argparse.Namespace, *, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run ``grants smoke`` as parsed by `add_parser`."""
    import httpx

    from grants_cli.azure_apis import ARM_URL, LOGS_URL, GraphReader, LogOutcomes, RoleAssignments, Tokens

    if args.local:
        return _main_local(args, out=out, err=err)
    missing = [
        option
        for option, value in (
            ("--principal-id (MANAGED_IDENTITY_PRINCIPAL_ID)", args.principal_id),
            ("--namespace (SERVICE_BUS_NAMESPACE)", args.namespace),
            ("--namespace-id (SERVICE_BUS_NAMESPACE_ID)", args.namespace_id),
            ("--app-insights-id (APPLICATIONINSIGHTS_ID)", args.app_insights_id),
        )
        if not value
    ]
    if missing:
        err.write(
            f"grants smoke: error: missing {', '.join(missing)}: run it with azd's environment "
            '(eval "$(azd env get-values)") or pass them\n'
        )
        return 2
    import functools

    from azure.identity import DefaultAzureCredential

    from grants_cli.backends import servicebus_backend

    tokens = Tokens(DefaultAzureCredential(exclude_interactive_browser_credential=True))
    with httpx.Client() as http:
        return run_smoke(
            principal_id=args.principal_id,
            namespace_id=args.namespace_id,
            queue=args.queue,
            open_backend=functools.partial(servicebus_backend, namespace=args.namespace, queue=args.queue),
            graph=GraphReader(base_url=args.graph_url, tokens=tokens, http=http),
            roles=RoleAssignments(base_url=args.arm_url or ARM_URL, tokens=tokens, http=http),
            outcomes=LogOutcomes(
                app_insights_id=args.app_insights_id, base_url=args.logs_url or LOGS_URL, tokens=tokens, http=http
            ),
            role_template=args.role_template,
            source=args.source,
            timeout=args.timeout,
            out=out,
            log=err,
        )


def _main_local(args: argparse.Namespace, *, out: TextIO, err: TextIO) -> int:
    """``--local``: the same checks against the local namespace's deployment, served on loopback."""
    import functools

    import httpx
    from azure.identity import ManagedIdentityCredential

    from grants_cli.azure_apis import GraphReader, LogOutcomes, RoleAssignments, Tokens
    from grants_local.azure_double import serve_local_deployment
    from grants_local.backend import open_local_backend
    from grants_local.deployment import LocalDeployment
    from grants_local.namespace import namespace_directory

    deployment = LocalDeployment(namespace_directory())
    with serve_local_deployment(deployment) as local, httpx.Client() as http:
        tokens = Tokens(ManagedIdentityCredential())  # the local token endpoint, as DefaultAzureCredential would
        return run_smoke(
            principal_id=local.principal_id,
            namespace_id=local.namespace_id,
            queue=args.queue,
            open_backend=functools.partial(open_local_backend, args.queue),
            graph=GraphReader(base_url=local.graph_url, tokens=tokens, http=http),
            roles=RoleAssignments(base_url=local.arm_url, tokens=tokens, http=http),
            outcomes=LogOutcomes(
                app_insights_id=local.app_insights_id, base_url=local.logs_url, tokens=tokens, http=http
            ),
            role_template=args.role_template,
            source=args.source,
            timeout=args.timeout,
            poll_seconds=min(POLL_SECONDS, max(args.timeout / 4, 0.05)),
            out=out,
            log=err,
        )
