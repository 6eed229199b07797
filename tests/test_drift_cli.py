"""``grants drift``: the report and the confirm, over HTTP answered by the registered drift functions (the app on the
local host, the ledger in Azurite, Graph on the double), and through a running serve-local."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import azure.functions as func
import httpx

import function_app
from grants_cli.drift import add_parser
from grants_cli.drift import main as cli
from grants_local.graph_double import Fault, GraphDouble
from grants_local.host import registered_function
from tests.conftest import AU, AU_OTHER, USER, as_operator
from tests.test_drift_app import deliver, grant, policy, repair, restore, sweep, user

REPORT = registered_function(function_app.app, "drift_report")
CONFIRM = registered_function(function_app.app, "drift_confirm")


def bridged(loop: asyncio.AbstractEventLoop, asked: list[str]) -> httpx.MockTransport:
    """The CLI's HTTP, answered by the registered drift functions on `loop` (the Functions host's part)."""

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(f"{request.method} {request.url.path} {request.headers.get('authorization')}")
        headers = as_operator() if request.headers.get("authorization") else {}  # App Service authentication's part
        if request.method == "GET":
            incoming = func.HttpRequest(
                "GET", str(request.url), headers=headers, body=b"", params=dict(request.url.params)
            )
            answer = asyncio.run_coroutine_threadsafe(REPORT(incoming), loop).result()
        else:
            target = request.url.path.split("/")[3]
            incoming = func.HttpRequest(
                "POST", str(request.url), headers=headers, body=request.content, route_params={"target": target}
            )
            answer = asyncio.run_coroutine_threadsafe(CONFIRM(incoming), loop).result()
        return httpx.Response(answer.status_code, content=answer.get_body(), headers={"content-type": answer.mimetype})

    return httpx.MockTransport(handler)


async def drift(*argv: str, asked: list[str] | None = None) -> tuple[int, str, str]:
    """Run ``grants drift ARGV --url … --token k`` in a thread, its HTTP answered on this loop."""
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["drift", *argv, "--url", "https://app.example", "--token", "k"])
    out, err = io.StringIO(), io.StringIO()
    transport = bridged(asyncio.get_running_loop(), asked if asked is not None else [])
    code = await asyncio.to_thread(cli, args, out=out, err=err, transport=transport)
    return code, out.getvalue(), err.getvalue()


async def test_the_report_prints_each_target_and_finding_and_exits_1_on_drift(
    make_run: Callable[..., Any], graph: GraphDouble
) -> None:
    run = await make_run()
    await deliver(run, grant("RITM1", USER))
    asked: list[str] = []
    code, out, _ = await drift(asked=asked)
    assert code == 0
    assert (
        out.splitlines()[1]
        == f"administrativeUnit {AU}: in_step, mode report, 1 member(s), missing 0, lingering 0, unmanaged 0"
    )
    assert asked == ["GET /api/drift Bearer k"]

    graph.remove_member(AU, USER)
    code, out, _ = await drift("--target", AU)
    assert code == 1
    lines = out.splitlines()
    assert "1 target(s): in step 0, drifted 1, held 0, failed 0; missing 1, lingering 0, unmanaged 0" in lines[0]
    assert lines[2] == f"  missing    {USER}  RITM1  report: reported only"

    code, out, _ = await drift("--target", AU, "--json")
    assert (code, json.loads(out)["totals"]["missing"]) == (1, 1)


async def test_a_confirm_releases_the_held_removals_once(
    make_run: Callable[..., Any], graph: GraphDouble, tmp_path: Path
) -> None:
    """Ten members granted, three of them removed by requests whose Graph writes were refused (lingering: the app
    made them and no grant holds them): three removals of ten is over the guard's limit (2), so the sweep holds
    them; the report prints the command that releases them; that command releases them once, a second is refused."""
    run = await make_run(GRANTS_POLICY=policy(tmp_path, restore({"type": "administrativeUnit", "id": AU})))
    for n in range(1, 11):
        graph.add_user(user(n))
    await deliver(run, *(grant(f"RITM{n}", user(n)) for n in range(1, 11)))
    graph.inject(*(Fault.status(403, method="DELETE", path=user(n)) for n in range(1, 4)))
    await deliver(run, *(grant(f"RITM{n}r", user(n), action="remove") for n in range(1, 4)))
    await sweep()

    code, out, _ = await drift("--target", AU)
    assert code == 1
    held = next(line for line in out.splitlines() if line.startswith("  held: "))
    digest = held.rsplit(" ", 1)[1]
    assert held == (
        "  held: 3 removal(s) over the guard's limit of 2; review, then release them once: "
        f"grants drift --target {AU} --repair --confirm {digest}"
    )

    code, out, _ = await drift("--target", AU, "--repair", "--confirm")
    await repair(run)
    assert (code, out) == (0, f"released the 3 held removal(s) {digest}: 3 repair(s) sent to the bulk queue\n")
    assert graph.members_of(AU) == {user(n) for n in range(4, 11)}

    code, _, err = await drift("--target", AU, "--repair", "--confirm", digest)
    assert code == 1
    assert err.startswith(f"not confirmed: the held removals {digest} were released by a confirm at ")


async def test_wrong_options_and_ids_exit_2_and_an_unknown_target_1(make_run: Callable[..., Any]) -> None:
    await make_run()
    assert (await drift("--repair"))[0] == 2
    assert (await drift("--target", AU, "--confirm"))[0] == 2
    assert (await drift("--repair", "--confirm"))[0] == 2
    code, _, err = await drift("--target", "\x1b[2J")
    assert code == 2
    assert "\x1b" not in err
    code, _, err = await drift("--target", AU_OTHER)
    assert code == 1
    assert "no target" in err


async def test_grants_drift_local_asks_a_running_serve_local() -> None:
    from grants_cli.main import main as grants_main
    from tests.test_serve_local import HELPDESK_TEMPLATE, serving

    async with serving({}) as (port, _):
        code = await asyncio.to_thread(grants_main, ["drift", "--serve-local", "--port", str(port)])
        refused = await asyncio.to_thread(
            grants_main,
            ["drift", "--serve-local", "--port", str(port), "--target", HELPDESK_TEMPLATE, "--repair", "--confirm"],
        )
    assert (code, refused) == (0, 1)
