"""The grant ledger's `TableClient`, signed in as its `LedgerConnection` says: with the app's identity (the
``GrantsLedger__tableServiceUri`` form, the only one deployed) or with the account key of a ``GrantsLedger``
connection string (Azurite or a test account, locally)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from shared.adapters.ledger import table_client
from shared.core.errors import ConfigError

if TYPE_CHECKING:
    import httpx
    from azure.core.credentials import AzureNamedKeyCredential
    from azure.core.credentials_async import AsyncTokenCredential
    from azure.data.tables.aio import TableClient

__all__ = ["LedgerEndpoint", "ledger_table_client"]


class LedgerEndpoint(Protocol):
    """Where the ledger is and, for a connection string, the account key (`shared.config.LedgerConnection`)."""

    @property
    def endpoint(self) -> str: ...

    @property
    def account_name(self) -> str | None: ...

    @property
    def account_key(self) -> str | None: ...


def ledger_table_client(
    connection: LedgerEndpoint | None,
    *,
    table: str,
    identity: AsyncTokenCredential | AzureNamedKeyCredential | None,
    http: httpx.AsyncClient,
) -> TableClient:
    """The ledger's table client over `http`: with the connection's account key when it has one, else with
    `identity` (the managed identity, or a caller's stand-in). Raise `ConfigError` when no ledger is configured."""
    if connection is None:
        raise ConfigError(
            "the app needs its grant ledger (Table Storage): set GrantsLedger__tableServiceUri (the app's identity), "
            "or locally GrantsLedger=UseDevelopmentStorage=true (Azurite)"
        )
    credential: AsyncTokenCredential | AzureNamedKeyCredential | None = identity
    if connection.account_key is not None:
        from azure.core.credentials import AzureNamedKeyCredential

        credential = AzureNamedKeyCredential(connection.account_name or "", connection.account_key)
    if credential is None:
        raise ConfigError(f"no credential for the grant ledger at {connection.endpoint}")
    return table_client(endpoint=connection.endpoint, table=table, credential=credential, http=http)
