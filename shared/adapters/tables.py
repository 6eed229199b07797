"""The grant ledger's table: its client (`table_client`), its keys (`table_key`, `producer_row`), the base every
part of the ledger reads it with (`TableRows`), and how the ledger's columns are written and read (JSON, times,
long text in chunks), and how a storage failure is said (`_unavailable`). The entities are in docs/ledger.md.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError

from shared.adapters.identity import HttpxTransport
from shared.core.errors import Reason, TransientError

if TYPE_CHECKING:
    import httpx
    from azure.core.credentials import AzureNamedKeyCredential
    from azure.core.credentials_async import AsyncTokenCredential
    from azure.data.tables import TableEntity
    from azure.data.tables.aio import TableClient

_log = logging.getLogger(__name__)

__all__ = ["MAX_RACES", "TableRows", "producer_row", "table_client", "table_key"]

#: Lost ETag races in a row before `begin` gives up for now (`PairBusy`, retried shortly).
MAX_RACES: Final = 5
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]")
#: Rows written before producers had names: a request's claim and status, an HR event's record, and a job's or HR
#: event's rows (``row.<7 digits>``); each belongs to the producer named as the source system its record names.
_LEGACY_REQUEST_ROW: Final = "request"
_LEGACY_STATUS_ROW: Final = "status"
_LEGACY_EVENT_ROW: Final = "event"
_LEGACY_ROW_PREFIX: Final = "row."
#: The app's own secrets: a partition no `table_key` can name (those have dots).
_APP_PARTITION: Final = "app"
_SEAL_ROW: Final = "seal"
_SWEEP_ROW: Final = "sweep"  # the expiry sweep's cursor (`PairStore.sweep_cursor`)
_SCHEMA: Final = 2  # the seal row's ``schema`` on a ledger whose every row has its producer (no legacy rows)


def producer_row(producer: str, row: str) -> str:
    """A producer's row in a shared partition: ``p.<producer>.<row>`` (a request id's partition holds each
    producer's claim and status of that id; a job's or HR event's, each producer's rows)."""
    return f"p.{producer}.{row}"


def _producer_rows(producer: str) -> tuple[str, str]:
    """The row-key range ``[low, high)`` of every row of `producer` in a shared partition."""
    return f"p.{producer}.", f"p.{producer}/"


def table_key(kind: str, value: str) -> str:
    """``<kind>.<readable>.<digest>``: `value`'s first 40 characters made safe, and 26 base32 digits of its SHA-256."""
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()
    readable = _UNSAFE.sub("_", value[:40])
    return f"{kind}.{readable}.{base64.b32encode(digest).decode().lower()[:26]}"


def table_client(
    *,
    endpoint: str,
    table: str,
    credential: AsyncTokenCredential | AzureNamedKeyCredential,
    http: httpx.AsyncClient,
) -> TableClient:
    """A client for `table` at `endpoint` over `http` (the caller closes it), without the SDK pipeline's policies the
    ledger does not need, each of which costs CPU on every request: retries (off: the message's retry policy
    decides) and the secondary host they would use, redirects, proxies, the custom hook, network trace and HTTP
    logging, azure-core's tracing spans, a client request id per request. It keeps the date, version and user agent
    headers, the credential's signature or token, and the JSON decoding.

    In Azure the credential is the app's managed identity (HTTPS only); against Azurite, its development key.
    """
    from azure.core.pipeline import policies as core
    from azure.data.tables._policies import StorageHosts
    from azure.data.tables.aio import TableClient

    class _PrimaryLocation(core.SansIOHTTPPolicy[Any, Any]):
        """Says every request went to the primary location, as the retry policy it replaces did (a query's result
        reads it from the request's context)."""

        def on_request(self, request: Any) -> None:
            request.context["location_mode"] = "primary"

    dropped = (
        core.RequestIdPolicy,  # a client request id per request (uuid1): the service's own request id is enough
        core.AsyncRetryPolicy,  # the message's retry policy decides: every storage failure is transient
        StorageHosts,  # the secondary host, for retries only
        core.AsyncRedirectPolicy,  # table storage does not redirect
        core.ProxyPolicy,
        core.CustomHookPolicy,
        core.NetworkTraceLoggingPolicy,
        core.DistributedTracingPolicy,  # the httpx instrumentation records each request as a dependency already
        core.HttpLoggingPolicy,  # its logger is at WARNING (`shared.bootstrap.quiet_library_loggers`)
    )

    class LeanTableClient(TableClient):
        """The SDK's client without the pipeline policies the ledger does not need (`table_client`)."""

        def _configure_policies(self, *, audience: str | None = None, **kwargs: Any) -> list[Any]:
            policies: list[Any] = super()._configure_policies(audience=audience, **kwargs)
            return [_PrimaryLocation(), *(policy for policy in policies if not isinstance(policy, dropped))]

    return LeanTableClient(endpoint=endpoint, table_name=table, credential=credential, transport=HttpxTransport(http))


class TableRows:
    """The ledger's table and what every part of the ledger reads it with: one entity, one query, and whose a row
    from before producers had names is. The parts (`shared.adapters.ledger`) are mixins of this one base over one
    table: one client, one set of legacy rules."""

    _table: TableClient
    _systems: dict[str, str]
    _legacy: bool | None

    async def _get(self, partition: str, row: str, *, doing: str) -> TableEntity | None:
        """The entity at (`partition`, `row`), None when it is absent; `TransientError(LedgerUnavailable)` saying what
        the ledger was `doing` when the storage fails (or the whole table is missing)."""
        try:
            entity = await self._table.get_entity(partition, row)
        except ResourceNotFoundError as error:
            if _absent(error):
                return None
            raise _unavailable(doing, error) from error
        except AzureError as error:
            raise _unavailable(doing, error) from error
        return entity

    async def _query(
        self, query: str, parameters: dict[str, Any], *, select: tuple[str, ...] | None = None
    ) -> list[Any]:
        return [
            entity
            async for entity in self._table.query_entities(
                query, parameters=parameters, select=list(select) if select else None
            )
        ]

    async def _legacy_rows(self) -> bool:
        """True when this ledger may hold rows from before producers had names: its seal row (`seal_keys`) is older
        than the schema that named them (no ``schema`` column). Read once per process."""
        if self._legacy is None:
            entity = await self._get(_APP_PARTITION, _SEAL_ROW, doing="read the app's seal key")
            self._legacy = entity is not None and not entity.get("schema")
        return self._legacy

    def _legacy_owner_of(self, entity: Mapping[str, Any]) -> str | None:
        """The producer a row from before producers had names belongs to: the one of the source system it recorded."""
        system = _legacy_owner(entity)
        return self._systems.get(system, system) if system is not None else None

    async def aclose(self) -> None:
        await self._table.close()


def _legacy_owner(entity: Mapping[str, Any]) -> str | None:
    """The producer a row from before producers had names belongs to: the one named as its record's source system."""
    system = _loads(entity.get("record")).get("sourceSystem")
    return system if isinstance(system, str) and system else None


def _later(one: datetime | None, other: datetime | None) -> bool:
    return one is not None and (other is None or one > other)


def _dumps(record: Mapping[str, Any]) -> str:
    return json.dumps(dict(record), separators=(",", ":"), ensure_ascii=False)


def _loads(text: object) -> dict[str, Any]:
    """A stored JSON object; an empty one when `text` is not one."""
    try:
        value = json.loads(text) if isinstance(text, str) else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _chunked_text(name: str, entity: Mapping[str, Any]) -> str | None:
    """The text `_chunked` wrote under `name`, or None when the entity has no such column."""
    return _unchunked(name, entity) if isinstance(entity.get(name), str) else None


def _dumps_list(items: list[dict[str, Any]]) -> str:
    return json.dumps(items, separators=(",", ":"), ensure_ascii=False)


def _dumps_times(moments: tuple[datetime, ...]) -> str:
    """An intent's `Intent.tiebreak` as a claim's column: a JSON list of ISO 8601 times."""
    return json.dumps([moment.isoformat() for moment in moments])


def _loads_times(text: object) -> tuple[datetime, ...]:
    """What `_dumps_times` wrote; none for a claim recorded without one (or a column that is not one: reported)."""
    if not isinstance(text, str):
        return ()
    try:
        document = json.loads(text)
        return tuple(_aware(moment) for moment in document) if isinstance(document, list) else ()
    except ValueError as error:
        _log.error("the ledger holds a request's tiebreak it cannot read, ignored: %r (%s)", text, error)
        return ()


def _aware(text: object) -> datetime:
    """A time the app wrote into a pair's JSON: ISO 8601 with an offset; ValueError for anything else (a hand-edited
    row is skipped and reported, never taken as local time)."""
    if not isinstance(text, str):
        raise ValueError(f"not a time: {text!r}")
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"a time without its offset: {text!r}")
    return moment


#: Characters per string column of a long JSON text: Table Storage takes at most 64 KiB of UTF-16 (32 Ki characters) in
#: one property, so a long text goes on in ``<name>1``, ``<name>2``, … (a pair of every producer of a large registry;
#: the hundreds of events of a person an HR event is derived against; an HR event's record of hundreds of rows unsent).
_COLUMN_CHARS: Final = 30_000


def _chunked(name: str, text: str) -> dict[str, str]:
    """`text` as the column `name` and, past `_COLUMN_CHARS`, its continuation columns."""
    pieces = [text[start : start + _COLUMN_CHARS] for start in range(0, max(len(text), 1), _COLUMN_CHARS)]
    return {(name if number == 0 else f"{name}{number}"): piece for number, piece in enumerate(pieces)}


def _unchunked(name: str, entity: Mapping[str, Any]) -> str:
    """The text `_chunked` wrote under `name`."""
    pieces = [str(entity[name])]
    number = 1
    while f"{name}{number}" in entity:
        pieces.append(str(entity[f"{name}{number}"]))
        number += 1
    return "".join(pieces)


def _time(value: datetime) -> datetime:
    """A plain UTC datetime (the SDK returns its own subclass)."""
    return datetime(*value.utctimetuple()[:6], value.microsecond, tzinfo=UTC)


def _unavailable(doing: str, error: AzureError | None) -> TransientError:
    """`TransientError(LedgerUnavailable)` naming what failed, with the storage's status and error code if any."""
    detail = type(error).__name__ if error is not None else "the record vanished"
    retry_after = None
    if isinstance(error, HttpResponseError):
        detail = f"HTTP {error.status_code} {_error_code(error) or error.reason or ''}".strip()
        header = getattr(error.response, "headers", {}).get("Retry-After")
        retry_after = float(header) if header and header.isdigit() else None
    return TransientError(
        Reason.LEDGER_UNAVAILABLE, f"the grant ledger could not {doing}: {detail}", retry_after=retry_after
    )


def _error_code(error: HttpResponseError) -> str | None:
    """The storage error code, e.g. ``TableNotFound``: the SDK's decoding of it, else the ``x-ms-error-code`` header."""
    code = getattr(error, "error_code", None) or getattr(error.response, "headers", {}).get("x-ms-error-code")
    value = getattr(code, "value", code)  # the SDK's TableErrorCode enum, or the header's text
    return str(value) if value else None


def _absent(error: ResourceNotFoundError) -> bool:
    """True when the entity is absent; False when the whole table is (a deployment fault, not a state)."""
    return _error_code(error) != "TableNotFound"
