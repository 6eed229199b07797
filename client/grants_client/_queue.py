"""A producer's own queue (``grants-<name>``): grant requests sent as messages, in Azure through azure-servicebus,
locally to a running serve-local."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import quote

import httpx

from grants_client import _http
from grants_client._errors import ConfigError, GrantsError, NotAuthorized, Unavailable, one_line
from grants_client._local import LOCAL_PORT, local_url
from grants_client._message import GrantRequest

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.servicebus import ServiceBusClient

__all__ = ["CONTENT_TYPE", "QueueSender", "Sent"]

CONTENT_TYPE: Final = "application/json"
#: azure-servicebus's own retries of a send that failed (its defaults: 3, exponential from 0.8 s up to 120 s): two
#: more tries, 0.5 s then 1 s apart, so a namespace that cannot be reached fails a send within seconds.
RETRY_OPTIONS: Final[dict[str, Any]] = {
    "retry_total": 2,
    "retry_backoff_factor": 0.5,
    "retry_backoff_max": 2.0,
    "retry_mode": "exponential",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Sent:
    """The queue took the message: the request's id, its MessageId, the queue, and whether duplicate detection
    dropped it as a copy of one sent before (None where the queue does not say: Service Bus never does)."""

    request_id: str
    message_id: str
    queue: str
    duplicate: bool | None


class _Transport(Protocol):
    def send(self, *, body: bytes, message_id: str) -> bool | None:
        """Send one message; whether it was dropped as a duplicate (None: not told). Raise a `GrantsError`."""
        ...

    def close(self) -> None: ...


class QueueSender:
    """Sends grant requests to one queue, the producer's own; build it with `azure`, `from_connection_string` or
    `serve_local`. The producer is whoever may send there (Azure RBAC): the app never believes a body's word for it.

    Each message has the request's MessageId (`GrantRequest.message_id`), so a send repeated after a failure (or a
    crash) is dropped by duplicate detection within the queue's window (10 minutes), and the app absorbs a later
    copy as the same request. Use as a context manager, or call `close`.
    """

    def __init__(self, *, queue: str, transport: _Transport) -> None:
        self._queue = queue
        self._transport = transport

    @classmethod
    def azure(cls, *, namespace: str, queue: str, credential: TokenCredential, timeout: float = 10.0) -> QueueSender:
        """The producer's queue `queue` (``grants-<name>``) in the Service Bus `namespace`
        (``<name>.servicebus.windows.net``), as `credential` (``DefaultAzureCredential()``; its identity needs
        Azure Service Bus Data Sender on that queue). A send gives up after `timeout` seconds."""
        from azure.servicebus import ServiceBusClient

        def connect() -> ServiceBusClient:
            return ServiceBusClient(namespace, credential, **RETRY_OPTIONS)

        return cls(queue=queue, transport=_ServiceBus(connect, queue=queue, where=namespace, timeout=timeout))

    @classmethod
    def from_connection_string(cls, *, connection_string: str, queue: str, timeout: float = 10.0) -> QueueSender:
        """The queue `queue` of the namespace a connection string names (a shared access key, or the Service Bus
        emulator's ``…;UseDevelopmentEmulator=true``). In Azure, prefer `azure`: the app's namespace has local
        authentication off."""
        from azure.servicebus import ServiceBusClient

        where = _endpoint(connection_string)

        def connect() -> ServiceBusClient:
            return ServiceBusClient.from_connection_string(connection_string, **RETRY_OPTIONS)

        return cls(queue=queue, transport=_ServiceBus(connect, queue=queue, where=where, timeout=timeout))

    @classmethod
    def serve_local(cls, *, queue: str, port: int = LOCAL_PORT) -> QueueSender:
        """The queue `queue` of a serve-local on 127.0.0.1:`port` (``POST /local/queues/{queue}/messages``, its
        stand-in for a Service Bus send), with the same MessageId and duplicate detection."""
        return cls(queue=queue, transport=_ServeLocal(queue=queue, base_url=local_url(port)))

    def send(self, request: GrantRequest) -> Sent:
        """Send `request` (already validated: `GrantRequest`) as one message; return `Sent` once the queue has it.

        Raises `NotAuthorized` (no token, or no Data Sender on the queue), `ConfigError` (no such queue), or
        `Unavailable` (the namespace could not be reached in time: send it again, the MessageId is the same)."""
        duplicate = self._transport.send(body=request.body, message_id=request.message_id)
        return Sent(
            request_id=request.request_id, message_id=request.message_id, queue=self._queue, duplicate=duplicate
        )

    def close(self) -> None:
        """Close the connection (or HTTP client)."""
        self._transport.close()

    def __enter__(self) -> QueueSender:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _endpoint(connection_string: str) -> str:
    """The namespace host a connection string names (``Endpoint=sb://<host>/``), for messages."""
    for part in connection_string.split(";"):
        key, _, value = part.partition("=")
        if key.strip().lower() == "endpoint":
            return value.strip().removeprefix("sb://").rstrip("/")
    raise ConfigError("the Service Bus connection string has no Endpoint=sb://<namespace>/")


class _ServiceBus:
    """azure-servicebus's sender on one queue: the client built at once, connected on the first send and then kept;
    closed, and made again on the next send, after a send that failed."""

    def __init__(self, connect: Callable[[], ServiceBusClient], *, queue: str, where: str, timeout: float) -> None:
        self._connect = connect
        self._queue = queue
        self._where = where
        self._timeout = timeout
        self._sender: Any = None
        try:  # builds the client (it connects on the first send): a connection string it cannot read fails here
            self._client: ServiceBusClient | None = connect()
        except ValueError as error:
            raise ConfigError(f"these settings cannot reach Service Bus namespace {where}: {_said(error)}") from error

    def send(self, *, body: bytes, message_id: str) -> bool | None:
        from azure.core.exceptions import ClientAuthenticationError
        from azure.servicebus import ServiceBusMessage
        from azure.servicebus.exceptions import (
            MessageSizeExceededError,
            MessagingEntityNotFoundError,
            ServiceBusAuthenticationError,
            ServiceBusAuthorizationError,
            ServiceBusError,
        )

        where = f"queue {self._queue} in {self._where}"
        message = ServiceBusMessage(body, message_id=message_id, content_type=CONTENT_TYPE)
        try:
            if self._sender is None:
                self._client = self._client or self._connect()
                self._sender = self._client.get_queue_sender(self._queue)
            self._sender.send_messages(message, timeout=self._timeout)
        except (ServiceBusAuthenticationError, ClientAuthenticationError) as error:
            self.close()
            raise NotAuthorized(f"Service Bus did not accept the credential for {where}: {_said(error)}") from error
        except ServiceBusAuthorizationError as error:
            self.close()
            raise NotAuthorized(
                f"this identity may not send to {where}: it needs Azure Service Bus Data Sender on that queue "
                f"({_said(error)})"
            ) from error
        except MessagingEntityNotFoundError as error:
            self.close()
            raise ConfigError(f"there is no {where}: a producer's queue is grants-<its name>") from error
        except MessageSizeExceededError as error:
            raise GrantsError(f"{where} refused the message as too large: {_said(error)}") from error
        except ServiceBusError as error:
            self.close()
            raise Unavailable(f"{where} could not be reached: {type(error).__name__}: {_said(error)}") from error
        return None

    def close(self) -> None:
        sender, client, self._sender, self._client = self._sender, self._client, None, None
        if sender is not None:
            sender.close()
        if client is not None:
            client.close()


def _said(error: Exception) -> str:
    return one_line(getattr(error, "message", None) or str(error) or type(error).__name__, limit=300)


class _ServeLocal:
    """A running serve-local's queue: one message per ``POST /local/queues/{queue}/messages``."""

    def __init__(self, *, queue: str, base_url: str) -> None:
        self._queue = queue
        self._base_url = base_url
        self._path = f"/local/queues/{quote(queue, safe='')}/messages"
        self._http = _http.client(base_url=base_url, timeout=30.0)

    def send(self, *, body: bytes, message_id: str) -> bool | None:
        batch = [{"body": body.decode(), "messageId": message_id, "applicationProperties": {}}]
        try:
            response = self._http.post(
                self._path, content=json.dumps(batch), headers={"Content-Type": "application/json"}
            )
        except httpx.HTTPError as error:
            raise _http.unreachable(self._base_url, error) from error
        if response.status_code == 404:
            raise ConfigError(
                f"serve-local has no queue {self._queue}: send to a producer's own queue (grants-<name> in "
                "GRANTS_PRODUCERS), or to grant-membership or grant-membership-bulk"
            )
        if response.status_code != 202:
            raise _http.refusal(response, what="serve-local")
        answer = _http.json_of(response)
        return isinstance(answer, dict) and answer.get("duplicates", 0) != 0

    def close(self) -> None:
        self._http.close()
