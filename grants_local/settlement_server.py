"""An in-process gRPC server for the extension's ``Settlement`` service, applying each call to a `LocalQueue`.

The real `ServiceBusMessageActions` settles by calling this service on the Functions host. Its methods are
**synchronous** (blocking unary gRPC calls without a deadline) even inside an ``async def`` function, and they
wrap every failure, including a non-OK gRPC status, in ``SettlementError`` (``.method``, ``.details``,
``.original`` = the ``grpc.RpcError``); a message without a lock token fails the same way.

Like the host, this server answers an unknown lock token with FAILED_PRECONDITION ("LockToken … not found.")
and any other settlement failure with UNKNOWN. Complete, Abandon, Deadletter and RenewMessageLock are served
(``propertiesToModify`` is ignored: the client always sends it empty); Defer and the session methods answer
UNIMPLEMENTED. Every call is recorded, in arrival order, in `LocalSettlementServer.calls`.

A host that stalls is `LocalSettlementServer.hold`: the next call of a method waits, before it is applied,
until released, for a given time, or until the server stops (then it is not applied and answers UNAVAILABLE).
A lock lost mid-work is `LocalSettlementServer.lose_lock`: the next call of a method finds the message's lock gone
(the message deliverable again, as after a lock expiry) and fails as the host's does, FAILED_PRECONDITION
"LockToken … not found." (the client raises ``SettlementError``).

The client is a process-wide singleton built from ``--host/--port/--functions-grpc-max-message-length`` in
``sys.argv``; `point_message_actions_at` builds a fresh one for a given address with the real constructor
(``sys.argv`` swapped for the duration of the call) and installs it as the singleton, replacing any earlier
one, so several servers may be used one after another in one process.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, NoReturn, Self

import grpc
from azurefunctions.extensions.bindings.protos.settlement_pb2_grpc import add_SettlementServicer_to_server
from azurefunctions.extensions.bindings.servicebus import ServiceBusMessageActions
from google.protobuf.empty_pb2 import Empty  # type: ignore[import-untyped]

from grants_local.queue import LocalQueue, LockLostError

__all__ = [
    "DEFAULT_MAX_MESSAGE_LENGTH",
    "Hold",
    "LocalSettlementServer",
    "SettlementCall",
    "point_message_actions_at",
]

#: What the Functions host passes as ``--functions-grpc-max-message-length``.
DEFAULT_MAX_MESSAGE_LENGTH: Final = 2_147_483_647
_ARGV_LOCK: Final = threading.Lock()


@dataclass(frozen=True, slots=True, kw_only=True)
class SettlementCall:
    """One call received by the server and how it was answered (``code`` is a ``grpc.StatusCode`` name)."""

    method: str
    lock_token: str | None
    reason: str | None = None
    description: str | None = None
    code: str = "OK"
    details: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Hold:
    """A stalled settlement call: `arrived` is set when the held call has come in; set `release` to let it go on.

    Without a release it waits `seconds` (None: until the server stops).
    """

    method: str
    seconds: float | None
    arrived: threading.Event
    release: threading.Event


class _Holds:
    """The holds not yet taken by a call, the lost locks still to come, and the stop signal that ends every wait."""

    def __init__(self) -> None:
        self._pending: list[Hold] = []
        self._lost: list[str] = []
        self._lock = threading.Lock()
        self.stopping = threading.Event()

    def lose(self, method: str) -> None:
        with self._lock:
            self._lost.append(method)

    def lost(self, method: str) -> bool:
        """True (once per `lose`) when the lock of this call of `method` is to be lost first."""
        with self._lock:
            if method in self._lost:
                self._lost.remove(method)
                return True
            return False

    def add(self, hold: Hold) -> None:
        with self._lock:
            self._pending.append(hold)

    def wait(self, method: str) -> bool:
        """Wait if a hold is pending for `method`; False when the server stopped meanwhile (do not apply)."""
        with self._lock:
            hold = next((h for h in self._pending if h.method == method), None)
            if hold is not None:
                self._pending.remove(hold)
        if hold is None:
            return True
        hold.arrived.set()
        deadline = None if hold.seconds is None else time.monotonic() + hold.seconds
        while not hold.release.is_set() and not self.stopping.is_set():
            left = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
            if left <= 0:
                break
            hold.release.wait(left)
        return not self.stopping.is_set()


class _Servicer:
    """The ``Settlement`` service (duck-typed: the generated registration only looks up the methods)."""

    def __init__(self, queue: LocalQueue, record: Callable[[SettlementCall], None], holds: _Holds) -> None:
        self._queue = queue
        self._record = record
        self._holds = holds

    def Complete(self, request: Any, context: Any) -> Any:
        token: str = request.locktoken
        return self._apply("Complete", token, context, lambda: self._queue.complete(token))

    def Abandon(self, request: Any, context: Any) -> Any:
        token: str = request.locktoken
        return self._apply("Abandon", token, context, lambda: self._queue.abandon(token))

    def Deadletter(self, request: Any, context: Any) -> Any:
        token: str = request.locktoken
        reason: str | None = request.deadletterReason.value if request.HasField("deadletterReason") else None
        description: str | None = (
            request.deadletterErrorDescription.value if request.HasField("deadletterErrorDescription") else None
        )
        return self._apply(
            "Deadletter",
            token,
            context,
            lambda: self._queue.deadletter(token, reason=reason, description=description),
            reason=reason,
            description=description,
        )

    def RenewMessageLock(self, request: Any, context: Any) -> Any:
        token: str = request.locktoken
        return self._apply("RenewMessageLock", token, context, lambda: self._queue.renew_lock(token))

    def Defer(self, request: Any, context: Any) -> Any:
        self._unimplemented("Defer", request.locktoken, context)

    def GetSessionState(self, request: Any, context: Any) -> Any:
        self._unimplemented("GetSessionState", None, context)

    def SetSessionState(self, request: Any, context: Any) -> Any:
        self._unimplemented("SetSessionState", None, context)

    def ReleaseSession(self, request: Any, context: Any) -> Any:
        self._unimplemented("ReleaseSession", None, context)

    def RenewSessionLock(self, request: Any, context: Any) -> Any:
        self._unimplemented("RenewSessionLock", None, context)

    def _apply(
        self,
        method: str,
        token: str,
        context: Any,
        action: Callable[[], object],
        *,
        reason: str | None = None,
        description: str | None = None,
    ) -> Any:
        if not self._holds.wait(method):
            _abort(context, grpc.StatusCode.UNAVAILABLE, "the settlement server stopped")
        if self._holds.lost(method):
            self._queue.lose_lock(token)
        try:
            action()
        except LockLostError as error:
            code, details = grpc.StatusCode.FAILED_PRECONDITION, f"LockToken {token} not found. {error}"
        except Exception as error:  # the host answers any settlement failure with UNKNOWN
            code, details = grpc.StatusCode.UNKNOWN, repr(error)
        else:
            self._record(SettlementCall(method=method, lock_token=token, reason=reason, description=description))
            return Empty()
        self._record(
            SettlementCall(
                method=method,
                lock_token=token,
                reason=reason,
                description=description,
                code=code.name,
                details=details,
            )
        )
        _abort(context, code, details)

    def _unimplemented(self, method: str, token: str | None, context: Any) -> NoReturn:
        details = f"{method} is not supported by the local settlement server"
        self._record(SettlementCall(method=method, lock_token=token, code="UNIMPLEMENTED", details=details))
        _abort(context, grpc.StatusCode.UNIMPLEMENTED, details)


def _abort(context: Any, code: Any, details: str) -> NoReturn:
    context.abort(code, details)
    raise AssertionError("grpc.ServicerContext.abort always raises")


class LocalSettlementServer:
    """Serves ``Settlement`` on ``host`` at an ephemeral port while started (also a context manager)."""

    def __init__(self, queue: LocalQueue, *, host: str = "127.0.0.1", max_workers: int = 4) -> None:
        self._queue = queue
        self._host = host
        self._max_workers = max_workers
        self._server: Any = None
        self._port: int | None = None
        self._calls: list[SettlementCall] = []
        self._calls_lock = threading.Lock()
        self._holds = _Holds()

    def start(self) -> None:
        """Bind 127.0.0.1 (or ``host``) on a free port and start serving; raise RuntimeError if already started."""
        if self._server is not None:
            raise RuntimeError("settlement server already started")
        self._holds.stopping.clear()
        server = grpc.server(ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix="settlement"))
        add_SettlementServicer_to_server(_Servicer(self._queue, self._record, self._holds), server)
        port = server.add_insecure_port(f"{self._host}:0")
        if not port:
            raise RuntimeError(f"could not bind a port on {self._host}")
        server.start()
        self._server, self._port = server, int(port)

    def stop(self) -> None:
        """Stop at once (calls in progress are cancelled) and wait until stopped; idempotent."""
        if self._server is None:
            return
        self._holds.stopping.set()
        self._server.stop(grace=None).wait()
        self._server = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def address(self) -> str:
        """``host:port`` of the running server; raise RuntimeError before `start`."""
        if self._server is None or self._port is None:
            raise RuntimeError("settlement server not started")
        return f"{self._host}:{self._port}"

    def hold(self, method: str, *, seconds: float | None = None) -> Hold:
        """Make the next call of `method` (``Complete``, ``Abandon``, ``Deadletter``…) stall before it is applied:
        until `Hold.release` is set, `seconds` have passed, or the server stops (then it is not applied)."""
        hold = Hold(method=method, seconds=seconds, arrived=threading.Event(), release=threading.Event())
        self._holds.add(hold)
        return hold

    def lose_lock(self, method: str) -> None:
        """Make the next call of `method` (``Complete``, ``Deadletter``…) find its message's lock lost: the lock ends
        first, as if it had expired (the message is deliverable again), and the call fails as the host's does."""
        self._holds.lose(method)

    @property
    def calls(self) -> tuple[SettlementCall, ...]:
        """Every call received so far, in arrival order."""
        with self._calls_lock:
            return tuple(self._calls)

    def _record(self, call: SettlementCall) -> None:
        with self._calls_lock:
            self._calls.append(call)


def point_message_actions_at(
    address: str, *, max_message_length: int = DEFAULT_MAX_MESSAGE_LENGTH
) -> ServiceBusMessageActions:
    """Build the real `ServiceBusMessageActions` for ``address`` and make it the singleton; return it.

    ``get_instance()`` (what the worker's ``ServiceBusClientConverter.get_client()`` calls) returns it from then
    on. The constructor reads ``sys.argv``, so it runs with ``sys.argv`` temporarily replaced by
    ``[argv0, --host, H, --port, P, --functions-grpc-max-message-length, N]`` under a module lock.
    """
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected host:port, got {address!r}")
    with _ARGV_LOCK:
        saved = sys.argv
        sys.argv = [
            saved[0] if saved else "local-host",
            "--host",
            host,
            "--port",
            port,
            "--functions-grpc-max-message-length",
            str(max_message_length),
        ]
        try:
            actions = ServiceBusMessageActions()
        finally:
            sys.argv = saved
    with ServiceBusMessageActions._lock:
        ServiceBusMessageActions._instance = actions
    return actions
