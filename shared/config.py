"""Process configuration, read once from the environment (Azure app settings or a local shell)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from shared.core.callbacks import CallbackPolicy, callback_hosts_setting
from shared.core.errors import ConfigError
from shared.core.producers import Producers
from shared.core.retry import delivery_count_problem

__all__ = ["APP_SETTINGS", "LEDGER_CONNECTION_STRING", "LedgerConnection", "Settings"]

DEFAULT_GRAPH_BASE_URL: Final = "https://graph.microsoft.com/v1.0"

#: Every app setting the code reads, with its default ("" where it has none). infra/ must agree.
APP_SETTINGS: Final[Mapping[str, str]] = {
    "GRAPH_BASE_URL": DEFAULT_GRAPH_BASE_URL,
    "AZURE_CLIENT_ID": "",
    "GRANTS_QUEUE": "grant-membership",
    "GRANTS_BULK_QUEUE": "grant-membership-bulk",
    "GRANTS_ACTIVATE_ROLES": "false",
    "GRANTS_MAX_ATTEMPTS": "8",
    # the queues' maxDeliveryCount: the delivery a lock expiry cannot bring back is dead-lettered by the app itself
    "GRANTS_MAX_DELIVERY_COUNT": "10",
    "GRANTS_RETRY_BASE_SECONDS": "10",
    "GRANTS_RETRY_MAX_SECONDS": "900",
    "GRANTS_MEMBER_NOT_FOUND_WINDOW_SECONDS": "600",
    # per source system, e.g. "bulk=120,hr=3600": how long a member not found yet is waited for (else the above)
    "GRANTS_MEMBER_NOT_FOUND_WINDOWS": "",
    "GRANTS_MEMBER_NOT_FOUND_MIN_ATTEMPTS": "5",  # and at least this many attempts before giving up on one
    "GRAPH_WRITE_RATE": "20",
    "GRANTS_SETTLEMENT_TIMEOUT_SECONDS": "5",
    "GRAPH_WRITE_PACING": "adaptive",
    "GRAPH_WRITE_WINDOW_SECONDS": "150",
    "GRANTS_POLICY": "",
    "GRANTS_DRY_RUN": "false",
    "HR_EVENTS_QUEUE": "hr-events",
    "HR_TIME_ZONE": "UTC",  # an IANA zone: HR effective dates start (and leavers' end) at midnight there
    "GRANTS_HR_RULES": "",
    "GRANTS_WEBHOOK_SECRET": "",  # a Key Vault reference in Azure, never a literal
    # the producer registry (shared/core/producers.py): JSON, or a file in the package; empty: the built-in four
    "GRANTS_PRODUCERS": "",
    "GRANTS_OUTCOMES_TOPIC": "",  # empty: no outcome events, no callbacks
    "GRANTS_CALLBACK_QUEUE": "grant-callbacks",
    "GRANTS_CALLBACK_HOSTS": "",  # JSON by producer: {"ticketing": ["contoso.service-now.com"]}
    "GRANTS_CALLBACK_LOOPBACK": "false",  # local only: refused inside Azure (WEBSITE_INSTANCE_ID)
    "ServiceBusConnection__fullyQualifiedNamespace": "",
    "ServiceBusConnection__credential": "managedidentity",
    "ServiceBusConnection__clientId": "",
    "GrantsLedger__tableServiceUri": "",  # e.g. https://<account>.table.core.windows.net (identity-based)
    "GrantsLedger__tableName": "grantledger",
    "GRANTS_SWEEP_SCHEDULE": "0 */5 * * * *",  # the expiry sweep's timer (NCRONTAB, read by the Functions host)
    "GRANTS_DRIFT_SCHEDULE": "0 30 * * * *",  # the drift sweep's timer: hourly (NCRONTAB, read by the Functions host)
    "GRAPH_READ_RATE": "25",  # Graph reads per second of the drift check (its own budget, beside the writes')
    # The Python worker reads it too: true = it exports logs with OpenTelemetry (shared/adapters/telemetry.py).
    "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": "false",
}


#: The ledger's connection-string setting, for local runs only (Core Tools with Azurite): when set, it wins over the
#: ``GrantsLedger__*`` settings, as the Functions host resolves its own bindings' connections (an exact match wins
#: over a prefix). Not in `APP_SETTINGS`: infra deploys the identity form only, and Azure refuses this one.
LEDGER_CONNECTION_STRING: Final = "GrantsLedger"
#: Azurite's well-known development account and key (published with it; accepted by Azurite only), and its default
#: table endpoint: what ``UseDevelopmentStorage=true`` means.
AZURITE_ACCOUNT: Final = "devstoreaccount1"
AZURITE_KEY: Final = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURITE_TABLE_ENDPOINT: Final = f"http://127.0.0.1:10002/{AZURITE_ACCOUNT}"


@dataclass(frozen=True, kw_only=True)
class LedgerConnection:
    """Where the grant ledger's table service is and how to sign in to it: with the app's identity (no key: the
    ``GrantsLedger__tableServiceUri`` form, the only one deployed), or with a storage account key (the
    ``GrantsLedger`` connection string: Azurite or a test account under Core Tools)."""

    endpoint: str
    account_name: str | None = None
    account_key: str | None = field(default=None, repr=False)  # never printed

    @property
    def uses_identity(self) -> bool:
        return self.account_key is None

    @classmethod
    def from_connection_string(cls, value: str) -> LedgerConnection:
        """Read an Azure Storage connection string: ``UseDevelopmentStorage=true`` (Azurite's default endpoint and
        development key), or ``AccountName`` and ``AccountKey`` with ``TableEndpoint`` (else
        ``DefaultEndpointsProtocol`` and ``EndpointSuffix``: ``https://<account>.table.<suffix>``). Keys are
        case-insensitive; a SAS is not supported. Raise `ConfigError` naming what is wrong (never the key)."""
        parts: dict[str, str] = {}
        for item in filter(None, (piece.strip() for piece in value.split(";"))):
            name, equals, text = item.partition("=")
            if not equals or not name.strip():
                raise ConfigError(f"{LEDGER_CONNECTION_STRING} is not a connection string (Name=value;…)")
            parts[name.strip().lower()] = text.strip()
        if parts.get("usedevelopmentstorage", "").lower() == "true":
            if "developmentstorageproxyuri" in parts:
                raise ConfigError(f"{LEDGER_CONNECTION_STRING}: DevelopmentStorageProxyUri is not supported")
            return cls(endpoint=AZURITE_TABLE_ENDPOINT, account_name=AZURITE_ACCOUNT, account_key=AZURITE_KEY)
        if "sharedaccesssignature" in parts:
            raise ConfigError(f"{LEDGER_CONNECTION_STRING}: a SharedAccessSignature is not supported; give AccountKey")
        account, key = parts.get("accountname", ""), parts.get("accountkey", "")
        if not account or not key:
            raise ConfigError(
                f"{LEDGER_CONNECTION_STRING} needs AccountName and AccountKey (or UseDevelopmentStorage=true)"
            )
        endpoint = parts.get("tableendpoint") or (
            f"{parts.get('defaultendpointsprotocol', 'https')}://{account}.table."
            f"{parts.get('endpointsuffix', 'core.windows.net')}"
        )
        return cls(
            endpoint=_ledger_uri(endpoint, setting=LEDGER_CONNECTION_STRING), account_name=account, account_key=key
        )


_Getter = Callable[[str], str]


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Typed view of the app settings. Build it with `Settings.from_env(os.environ)`."""

    graph_base_url: str = DEFAULT_GRAPH_BASE_URL
    client_id: str | None = None
    grants_queue: str = "grant-membership"
    bulk_queue: str = "grant-membership-bulk"
    activate_roles: bool = False
    max_attempts: int = 8
    max_delivery_count: int = 10
    retry_base_seconds: float = 10.0
    retry_max_seconds: float = 900.0
    member_not_found_window_seconds: float = 600.0
    member_not_found_windows: Mapping[str, float] = field(default_factory=dict)
    member_not_found_min_attempts: int = 5
    graph_write_rate: float = 20.0
    graph_read_rate: float = 25.0
    settlement_timeout_seconds: float = 5.0
    graph_write_adaptive: bool = True
    graph_write_window_seconds: float = 150.0
    policy_path: str | None = None
    dry_run: bool = False
    hr_events_queue: str = "hr-events"
    hr_time_zone: str = "UTC"
    hr_rules_path: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)  # never printed
    servicebus_namespace: str | None = None
    servicebus_client_id: str | None = None
    ledger: LedgerConnection | None = None
    ledger_table: str = "grantledger"
    outcomes_topic: str | None = None
    callback_queue: str = "grant-callbacks"
    callbacks: CallbackPolicy = field(default_factory=CallbackPolicy)
    producers: Producers = field(
        default_factory=lambda: Producers.default(
            grants_queue="grant-membership",
            bulk_queue="grant-membership-bulk",
            hr_events_queue="hr-events",
            webhook_secret=None,
        )
    )
    #: App Service authentication is on (``WEBSITE_AUTH_ENABLED``, set by the platform): only then are the caller
    #: headers it injects (``X-MS-CLIENT-PRINCIPAL``) believed; without it every API read is refused.
    api_auth: bool = False
    worker_telemetry: bool = False

    def signing_secret(self, producer: str | None) -> str | None:
        """The secret that signs `producer`'s webhook requests and its callbacks, or None when it has none."""
        found = self.producers.get(producer)
        return found.secret if found is not None else None

    @property
    def ledger_table_uri(self) -> str | None:
        """The ledger's table service endpoint, however it is reached (None: no ledger configured)."""
        return self.ledger.endpoint if self.ledger else None

    @property
    def graph_root(self) -> str:
        """Scheme and host of the Graph base URL, e.g. ``https://graph.microsoft.com``."""
        parts = urlsplit(self.graph_base_url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def graph_scope(self) -> str:
        """The app-token scope for Graph: ``<graph root>/.default``."""
        return f"{self.graph_root}/.default"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Read the settings; raise `ConfigError` naming the first bad one."""

        def get(name: str) -> str:
            return env.get(name, APP_SETTINGS[name]).strip()

        base_url = get("GRAPH_BASE_URL").rstrip("/") or DEFAULT_GRAPH_BASE_URL
        parts = urlsplit(base_url)
        if parts.scheme not in ("https", "http") or not parts.netloc or parts.query or parts.fragment:
            raise ConfigError(f"GRAPH_BASE_URL must be an absolute http(s) URL, got {base_url!r}")
        if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ConfigError("GRAPH_BASE_URL may use plain http only on loopback (the local Graph double)")
        max_attempts = _number(get, "GRANTS_MAX_ATTEMPTS", minimum=1, integer=True)
        max_deliveries = _number(get, "GRANTS_MAX_DELIVERY_COUNT", minimum=1, integer=True)
        if problem := delivery_count_problem(max_deliveries=int(max_deliveries), max_attempts=int(max_attempts)):
            raise ConfigError(f"GRANTS_MAX_DELIVERY_COUNT (the queues' maxDeliveryCount) {problem}")
        base = _number(get, "GRANTS_RETRY_BASE_SECONDS", minimum=0)
        cap = _number(get, "GRANTS_RETRY_MAX_SECONDS", minimum=0)
        window = _number(get, "GRANTS_MEMBER_NOT_FOUND_WINDOW_SECONDS", minimum=0)
        windows = _windows(get("GRANTS_MEMBER_NOT_FOUND_WINDOWS"))
        min_attempts = _number(get, "GRANTS_MEMBER_NOT_FOUND_MIN_ATTEMPTS", minimum=1, integer=True)
        if base == 0 and (window > 0 or any(seconds > 0 for seconds in windows.values())):
            raise ConfigError(
                "GRANTS_RETRY_BASE_SECONDS 0 (retries at once) with a member-not-found window: a member that never "
                "appears would be looked up in a tight loop for the whole window; set a base delay, or the window to 0"
            )
        write_rate = _number(get, "GRAPH_WRITE_RATE", minimum=0)
        read_rate = _number(get, "GRAPH_READ_RATE", minimum=0.1)
        ledger_table = get("GrantsLedger__tableName") or "grantledger"
        if not _TABLE_NAME.fullmatch(ledger_table):
            raise ConfigError(
                "GrantsLedger__tableName must be 3 to 63 letters and digits, starting with a letter, "
                f"got {ledger_table!r}"
            )
        outcomes_topic = get("GRANTS_OUTCOMES_TOPIC") or None
        grants_queue = get("GRANTS_QUEUE") or "grant-membership"
        bulk_queue = get("GRANTS_BULK_QUEUE") or "grant-membership-bulk"
        hr_events_queue = get("HR_EVENTS_QUEUE") or "hr-events"
        webhook_secret = _webhook_secret(env.get("GRANTS_WEBHOOK_SECRET", ""))
        hosts = callback_hosts_setting(get("GRANTS_CALLBACK_HOSTS"))
        registry = get("GRANTS_PRODUCERS")
        if registry:
            producers = Producers.parse(
                _registry_document(registry), env=env, origin=_registry_origin(registry), callback_hosts=hosts
            )
        else:
            producers = Producers.default(
                grants_queue=grants_queue,
                bulk_queue=bulk_queue,
                hr_events_queue=hr_events_queue,
                webhook_secret=webhook_secret,
                callback_hosts=hosts,
            )
        app_only = tuple(name for name in (get("GRANTS_CALLBACK_QUEUE") or "grant-callbacks", outcomes_topic) if name)
        producers.check_queues(
            grants_queue=grants_queue, bulk_queue=bulk_queue, hr_events_queue=hr_events_queue, app_only=app_only
        )
        callbacks = _callback_policy(get, env, outcomes_topic, producers)
        settlement_timeout = _number(get, "GRANTS_SETTLEMENT_TIMEOUT_SECONDS", minimum=0.1)
        pacing = get("GRAPH_WRITE_PACING").lower() or "adaptive"
        if pacing not in ("adaptive", "static"):
            raise ConfigError(f"GRAPH_WRITE_PACING must be adaptive or static, got {pacing!r}")
        write_window = _number(get, "GRAPH_WRITE_WINDOW_SECONDS", minimum=1)
        return cls(
            graph_base_url=base_url,
            client_id=get("AZURE_CLIENT_ID") or None,
            grants_queue=grants_queue,
            bulk_queue=bulk_queue,
            activate_roles=_flag(get, "GRANTS_ACTIVATE_ROLES"),
            max_attempts=int(max_attempts),
            max_delivery_count=int(max_deliveries),
            retry_base_seconds=base,
            retry_max_seconds=cap,
            member_not_found_window_seconds=window,
            member_not_found_windows=windows,
            member_not_found_min_attempts=int(min_attempts),
            graph_write_rate=write_rate,
            graph_read_rate=read_rate,
            settlement_timeout_seconds=settlement_timeout,
            graph_write_adaptive=pacing == "adaptive",
            graph_write_window_seconds=write_window,
            policy_path=_app_file(get("GRANTS_POLICY")),
            dry_run=_flag(get, "GRANTS_DRY_RUN"),
            hr_events_queue=hr_events_queue,
            hr_time_zone=_time_zone(get("HR_TIME_ZONE") or "UTC"),
            hr_rules_path=_app_file(get("GRANTS_HR_RULES")),
            webhook_secret=webhook_secret,
            servicebus_namespace=get("ServiceBusConnection__fullyQualifiedNamespace") or None,
            servicebus_client_id=get("ServiceBusConnection__clientId") or get("AZURE_CLIENT_ID") or None,
            ledger=_ledger_connection(get, env),
            ledger_table=ledger_table,
            outcomes_topic=outcomes_topic,
            callback_queue=get("GRANTS_CALLBACK_QUEUE") or "grant-callbacks",
            callbacks=callbacks,
            producers=producers,
            api_auth=_flag(lambda name: env.get(name, "").strip(), "WEBSITE_AUTH_ENABLED"),
            worker_telemetry=_flag(get, "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"),
        )


#: Set by the App Service platform on every instance (Flex Consumption included), never by a local shell.
AZURE_PLATFORM_MARKERS: Final = ("WEBSITE_INSTANCE_ID", "WEBSITE_SITE_NAME")


def _windows(value: str) -> dict[str, float]:
    """``GRANTS_MEMBER_NOT_FOUND_WINDOWS``: ``source=seconds`` pairs, comma-separated (sources: hr, ticketing, bulk,
    other)."""
    windows: dict[str, float] = {}
    for part in filter(None, (item.strip() for item in value.split(","))):
        source, _, seconds = part.partition("=")
        source = source.strip()
        if source not in _SOURCES:
            raise ConfigError(
                f"GRANTS_MEMBER_NOT_FOUND_WINDOWS: {source!r} is not a source system ({', '.join(_SOURCES)})"
            )
        try:
            windows[source] = float(seconds)
        except ValueError:
            raise ConfigError(
                f"GRANTS_MEMBER_NOT_FOUND_WINDOWS: the window of {source} must be a number of seconds"
            ) from None
        if not 0 <= windows[source] < 10**9:
            raise ConfigError(f"GRANTS_MEMBER_NOT_FOUND_WINDOWS: the window of {source} must be 0 or more seconds")
    return windows


_SOURCES: Final = ("hr", "ticketing", "bulk", "other")


def _registry_document(value: str) -> object:
    """``GRANTS_PRODUCERS``: JSON text (starting with ``{``), else a file in the package (`_app_file`)."""
    import json

    if value.lstrip().startswith("{"):
        text = value
    else:
        path = Path(_app_file(value) or "")
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError(f"GRANTS_PRODUCERS: cannot read {path}: {error.strerror}") from None
    try:
        return json.loads(text)
    except ValueError as error:
        raise ConfigError(f"GRANTS_PRODUCERS ({_registry_origin(value)}) is not valid JSON: {error}") from None


def _registry_origin(value: str) -> str:
    return "the setting's JSON" if value.lstrip().startswith("{") else str(_app_file(value))


def _callback_policy(
    get: _Getter, env: Mapping[str, str], outcomes_topic: str | None, producers: Producers
) -> CallbackPolicy:
    """The callback allow-list, by producer; local mode (loopback and plain http) only outside Azure; callbacks need
    the topic."""
    loopback = _flag(get, "GRANTS_CALLBACK_LOOPBACK")
    if loopback and any(env.get(marker) for marker in AZURE_PLATFORM_MARKERS):
        raise ConfigError(
            "GRANTS_CALLBACK_LOOPBACK=true is for a local run only (callbacks to loopback, over plain http); "
            "this process runs in Azure App Service, where it is refused"
        )
    policy = CallbackPolicy.from_hosts({p.name: p.callback_hosts for p in producers}, loopback=loopback)
    if policy.enabled and outcomes_topic is None:
        raise ConfigError(
            "GRANTS_CALLBACK_HOSTS (or GRANTS_CALLBACK_LOOPBACK) is set but GRANTS_OUTCOMES_TOPIC is empty: "
            "callbacks are delivered from the outcome events on that topic"
        )
    return policy


#: The app's root: where function_app.py is, and what a relative GRANTS_POLICY / GRANTS_HR_RULES path is relative
#: to (in Azure, the deployed package; locally, the checkout), whatever the worker's current directory.
APP_ROOT: Final = Path(__file__).resolve().parent.parent


def _app_file(value: str) -> str | None:
    """A configured file's path: absolute as given, relative to `APP_ROOT` otherwise; None when unset."""
    return str(APP_ROOT / value) if value else None


#: The shortest webhook secret accepted (characters): 32 random characters resist guessing.
MIN_WEBHOOK_SECRET_CHARS: Final = 32


def _webhook_secret(value: str) -> str | None:
    """The webhook's HMAC secret, or None (the webhook then refuses every request with 503).

    A Key Vault reference the platform could not resolve stays in the setting as its literal text: that is
    not a secret (anyone may know it), so it counts as unset.
    """
    if not value or value.startswith("@Microsoft.KeyVault("):
        return None
    if len(value) < MIN_WEBHOOK_SECRET_CHARS:
        raise ConfigError(
            f"GRANTS_WEBHOOK_SECRET must be at least {MIN_WEBHOOK_SECRET_CHARS} characters (its length is not shown)"
        )
    return value


_TABLE_NAME: Final = re.compile(r"[A-Za-z][A-Za-z0-9]{2,62}")


def _time_zone(value: str) -> str:
    """An IANA time zone name the platform knows (e.g. ``Europe/Berlin``), else `ConfigError`."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"HR_TIME_ZONE must be an IANA time zone such as Europe/Berlin, got {value!r}") from None
    return value


def _ledger_connection(get: _Getter, env: Mapping[str, str]) -> LedgerConnection | None:
    """``GrantsLedger`` (a connection string, local only) when set, else ``GrantsLedger__tableServiceUri`` (the
    app's identity), else None."""
    connection_string = env.get(LEDGER_CONNECTION_STRING, "").strip()
    if connection_string:
        if any(env.get(marker) for marker in AZURE_PLATFORM_MARKERS):
            raise ConfigError(
                f"{LEDGER_CONNECTION_STRING} (a connection string with a key) is for local runs only; in Azure the "
                "app reaches its ledger with its identity: set GrantsLedger__tableServiceUri instead"
            )
        return LedgerConnection.from_connection_string(connection_string)
    uri = get("GrantsLedger__tableServiceUri")
    return LedgerConnection(endpoint=_ledger_uri(uri, setting="GrantsLedger__tableServiceUri")) if uri else None


def _ledger_uri(value: str, *, setting: str) -> str:
    """The ledger's table service endpoint: https (the app's identity), or http on loopback only (Azurite)."""
    parts = urlsplit(value.rstrip("/"))
    local = parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")
    if not (parts.scheme == "https" or local) or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(
            f"{setting} must be an https URL (e.g. https://<account>.table.core.windows.net), "
            f"or http on loopback for Azurite; got {value!r}"
        )
    return value.rstrip("/")


def _flag(get: _Getter, name: str) -> bool:
    value = get(name).lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no", ""):
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def _number(get: _Getter, name: str, *, minimum: float, integer: bool = False) -> float:
    raw = get(name)
    try:
        value = float(int(raw)) if integer else float(raw)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise ConfigError(f"{name} must be {kind}, got {raw!r}") from None
    if not math.isfinite(value) or value < minimum:
        raise ConfigError(f"{name} must be at least {minimum:g}, got {raw!r}")
    return value
