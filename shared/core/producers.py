"""Producers, pure: who may ask the app for grants, how each one is known, and what it is told apart by.

A *producer* is one system that sends requests: a ticketing system, the HR system, a team running bulk jobs, any
other queue producer. Who asked is **established by how the request arrived, never by what it says**: Service Bus
never tells a receiver who sent a message, so each producer is known by an entry point only it may use or a
credential only it holds:

- ``queue``: a queue of grant messages that only this producer may send to (Azure RBAC: Azure Service Bus Data
  Sender on that queue alone); ``lane`` says whether its messages are interactive or bulk work;
- ``hrEventsQueue``: a queue of HR events that only this producer (an HR system) may send to;
- ``secretSetting``: the app setting holding the secret it signs webhook requests with (and its callbacks are
  signed with); in Azure a Key Vault reference;
- ``principals``: the Entra object ids that act as this producer on the HTTP API (App Service authentication).

Its ``name`` (``[a-z][a-z0-9-]``, at most 32 characters) is its identity: its request ids, bulk jobs, statuses and
callbacks are its own, apart from every other producer's. Its ``system`` (hr, ticketing, bulk, other) is what its
messages' ``source.system`` must say: a message naming another is refused (``SourceMismatch``), never granted.
``callbackHosts`` are the hosts its callbacks may go to. What it may grant is the grant policy's
(`shared.core.policy`, keyed by producer name).

`Producers.parse` reads the registry (``GRANTS_PRODUCERS``) and refuses, naming the entry at fault, one in which two
producers share an identity: a name, an entry queue, a principal or a secret. `Producers.default` is the registry
when none is configured: ``ticketing`` on the webhook, ``hr`` on the HR events queue, ``bulk`` on the bulk queue and
``other`` on the grants queue, so a deployment that configures nothing still tells its four kinds of sender apart.
"""

from __future__ import annotations

import dataclasses
import hmac
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from shared.core.contract import GrantCommand, SourceSystem, parse_guid
from shared.core.errors import ConfigError, ContractError, Reason
from shared.core.messaging import Lane

__all__ = [
    "APP",
    "APP_PRODUCER",
    "PRODUCER_NAME",
    "Producer",
    "Producers",
    "QueueEntry",
    "check_source",
    "establish",
]

#: A producer's name: 1 to 32 of lower-case letters, digits and inner hyphens, starting with a letter. The first
#: ``:`` after a name always ends it (request ids may hold colons, names never do).
PRODUCER_NAME: Final = re.compile(r"[a-z](?:[a-z0-9-]{0,30}[a-z0-9])?", re.ASCII)
#: The app's own requests (the drift sweep's removals of what no producer granted) belong to no producer: this
#: name, which no registry may give.
APP_PRODUCER: Final = "app"
_SETTING_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}", re.ASCII)
_QUEUE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,259}", re.ASCII)
_FIELDS: Final = (
    "name",
    "system",
    "queue",
    "lane",
    "hrEventsQueue",
    "secretSetting",
    "principals",
    "callbackHosts",
)
#: The shortest signing secret accepted (characters): 32 random characters resist guessing.
MIN_SECRET_CHARS: Final = 32


@dataclass(frozen=True, slots=True, kw_only=True)
class Producer:
    """One producer: its name (its identity), the source system its messages speak as, and how it is known."""

    name: str
    system: SourceSystem
    queue: str | None = None
    lane: Lane = Lane.INTERACTIVE
    hr_events_queue: str | None = None
    secret_setting: str | None = None
    secret: str | None = field(default=None, repr=False)  # never printed
    principals: frozenset[str] = frozenset()
    callback_hosts: tuple[str, ...] = ()

    @property
    def signs(self) -> bool:
        """True when it has a signing secret (webhook requests in, callbacks out)."""
        return self.secret is not None

    def describe(self) -> str:
        """One line for the start-up log: the name, the system, and every way it is known (no secret)."""
        ways = []
        if self.queue:
            ways.append(f"queue {self.queue}" + (" (bulk lane)" if self.lane is Lane.BULK else ""))
        if self.hr_events_queue:
            ways.append(f"HR events queue {self.hr_events_queue}")
        if self.secret_setting:
            state = "set" if self.secret is not None else "NOT SET"
            ways.append(f"webhook signed with {self.secret_setting} ({state})")
        if self.principals:
            ways.append(f"{len(self.principals)} API principal(s)")
        return f"{self.name} ({self.system.value}): " + (", ".join(ways) or "no entry point")


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueEntry:
    """A queue the app reads: its name, its lane, whether it carries HR events, and the producer bound to it (None:
    only the app's own sealed messages are taken from it)."""

    queue: str
    lane: Lane
    hr_events: bool
    producer: Producer | None


@dataclass(frozen=True, slots=True)
class Producers:
    """The producer registry: every producer by name; `origin` says where it came from."""

    by_name: Mapping[str, Producer]
    origin: str

    def __iter__(self) -> Iterator[Producer]:
        return iter(self.by_name.values())

    def get(self, name: str | None) -> Producer | None:
        """The producer named `name`, if registered."""
        return self.by_name.get(name) if name is not None else None

    def on_queue(self, queue: str) -> Producer | None:
        """The producer that alone may send to `queue` (grant messages or HR events), if one is bound to it."""
        return next((p for p in self if queue in (p.queue, p.hr_events_queue)), None)

    def with_principal(self, object_id: str) -> Producer | None:
        """The producer that the Entra principal `object_id` acts as on the HTTP API, if any."""
        key = object_id.lower()
        return next((p for p in self if key in p.principals), None)

    def signing(self) -> list[Producer]:
        """The producers that sign webhook requests (those with a secret), by name."""
        return [p for p in self if p.signs]

    def hr_senders(self, *, hr_events_queue: str) -> list[Producer]:
        """The producers that send HR events: the one bound to the app's HR events queue, and each with an HR events
        queue of its own."""
        bound = self.on_queue(hr_events_queue)
        return [p for p in self if p.hr_events_queue or p is bound]

    def for_system(self, system: str) -> Producer | None:
        """The producer a legacy record of `system` belongs to: the one named as that system, else the only
        producer of that system; None when that is not one producer."""
        named = self.by_name.get(system)
        if named is not None:
            return named
        speaking = [p for p in self if p.system.value == system]
        return speaking[0] if len(speaking) == 1 else None

    def entries(self, *, grants_queue: str, bulk_queue: str, hr_events_queue: str) -> list[QueueEntry]:
        """Every queue the app reads: its own three (the grants, bulk and HR events queues, bound to a producer
        only where the registry says so), then each producer's own queue, in registry order."""
        own = [
            QueueEntry(
                queue=grants_queue, lane=Lane.INTERACTIVE, hr_events=False, producer=self.on_queue(grants_queue)
            ),
            QueueEntry(queue=bulk_queue, lane=Lane.BULK, hr_events=False, producer=self.on_queue(bulk_queue)),
            QueueEntry(
                queue=hr_events_queue, lane=Lane.INTERACTIVE, hr_events=True, producer=self.on_queue(hr_events_queue)
            ),
        ]
        seen = {grants_queue, bulk_queue, hr_events_queue}
        for producer in self:
            if producer.queue and producer.queue not in seen:
                own.append(QueueEntry(queue=producer.queue, lane=producer.lane, hr_events=False, producer=producer))
            if producer.hr_events_queue and producer.hr_events_queue not in seen:
                own.append(
                    QueueEntry(queue=producer.hr_events_queue, lane=Lane.INTERACTIVE, hr_events=True, producer=producer)
                )
        return own

    def with_queue(self, name: str, queue: str) -> Producers:
        """This registry with `queue` as producer `name`'s own (and no one else's): what a local run does when it
        plays that producer on one queue. Raise `ConfigError` when `name` is not a producer."""
        if name not in self.by_name:
            known = ", ".join(self.by_name)
            raise ConfigError(f"{name!r} is not a producer (the registry has {known})")
        moved = {
            key: dataclasses.replace(
                producer,
                queue=queue if key == name else (None if producer.queue == queue else producer.queue),
                lane=Lane.INTERACTIVE if key == name else producer.lane,
            )
            for key, producer in self.by_name.items()
        }
        return Producers(by_name=moved, origin=f"{self.origin}, {name} on {queue} (local)")

    def check_queues(
        self, *, grants_queue: str, bulk_queue: str, hr_events_queue: str, app_only: tuple[str, ...]
    ) -> None:
        """Raise `ConfigError` when a producer's queue is one the app reads for something else: a grant queue that
        is the HR events queue (its messages would be read as HR events), an HR events queue that is a grant queue,
        or any of `app_only` (the callback retry queue, the outcomes topic: the app's alone)."""
        for producer in self:
            where = f"GRANTS_PRODUCERS ({self.origin}): producer {producer.name!r}"
            if producer.queue is not None and producer.queue in (hr_events_queue, *app_only):
                raise ConfigError(
                    f"{where}: queue {producer.queue} is the app's "
                    + (
                        "HR events queue (hrEventsQueue, for an HR system)"
                        if producer.queue == hr_events_queue
                        else "own (callbacks, outcomes): no producer may send there"
                    )
                )
            if producer.hr_events_queue is not None and producer.hr_events_queue in (
                grants_queue,
                bulk_queue,
                *app_only,
            ):
                raise ConfigError(f"{where}: hrEventsQueue {producer.hr_events_queue} is a queue of grant messages")

    def describe(self) -> str:
        """The start-up log's lines: where the registry came from, then one line per producer."""
        return "\n".join([f"producers ({self.origin}):", *(f"  {p.describe()}" for p in self)])

    @classmethod
    def default(
        cls,
        *,
        grants_queue: str,
        bulk_queue: str,
        hr_events_queue: str,
        webhook_secret: str | None,
        callback_hosts: Mapping[str, Sequence[str]] | None = None,
    ) -> Producers:
        """The registry when ``GRANTS_PRODUCERS`` is not set: ``ticketing`` signs webhook requests with
        ``GRANTS_WEBHOOK_SECRET``, ``hr`` sends HR events, ``bulk`` sends to the bulk queue and ``other`` to the
        grants queue; each speaks as the source system of its name."""
        hosts = callback_hosts or {}
        producers = [
            Producer(
                name="ticketing",
                system=SourceSystem.TICKETING,
                secret_setting="GRANTS_WEBHOOK_SECRET",  # noqa: S106 (the setting's name, not a secret)
                secret=webhook_secret,
            ),
            Producer(name="hr", system=SourceSystem.HR, hr_events_queue=hr_events_queue),
            Producer(name="bulk", system=SourceSystem.BULK, queue=bulk_queue, lane=Lane.BULK),
            Producer(name="other", system=SourceSystem.OTHER, queue=grants_queue),
        ]
        by_name = {p.name: _replace_hosts(p, hosts.get(p.name, ())) for p in producers}
        registry = cls(by_name=by_name, origin="built-in default")
        _check_callback_hosts(registry, hosts, where="GRANTS_CALLBACK_HOSTS")
        return registry

    @classmethod
    def parse(
        cls,
        document: Any,
        *,
        env: Mapping[str, str],
        origin: str,
        callback_hosts: Mapping[str, Sequence[str]] | None = None,
    ) -> Producers:
        """Read a registry document (``{"producers": [...]}``), secrets from `env` by each producer's
        ``secretSetting``; raise `ConfigError` naming the entry and field at fault. `callback_hosts` (the
        ``GRANTS_CALLBACK_HOSTS`` setting, by producer name) adds to each producer's own ``callbackHosts``."""
        where = f"GRANTS_PRODUCERS ({origin})"
        if (
            not isinstance(document, dict)
            or set(document) != {"producers"}
            or not isinstance(document["producers"], list)
        ):
            raise ConfigError(f'{where} must be an object with one key, "producers", holding a list of producers')
        if not document["producers"]:
            raise ConfigError(f"{where}: the list of producers is empty: no request could ever be accepted")
        producers: dict[str, Producer] = {}
        for index, entry in enumerate(document["producers"]):
            producer = _producer(entry, env=env, where=f"{where}: producers[{index}]")
            if producer.name in producers:
                raise ConfigError(f"{where}: producers[{index}]: the name {producer.name!r} is given twice")
            producers[producer.name] = producer
        extra = callback_hosts or {}
        for name, hosts in extra.items():
            if name in producers:
                known = producers[name]
                producers[name] = _replace_hosts(known, (*known.callback_hosts, *hosts))
        registry = cls(by_name=producers, origin=origin)
        _check_shared_identities(registry, where)
        _check_callback_hosts(registry, extra, where=f"{where} (callbackHosts, or GRANTS_CALLBACK_HOSTS)")
        return registry


def _replace_hosts(producer: Producer, hosts: Sequence[str]) -> Producer:
    return dataclasses.replace(producer, callback_hosts=tuple(dict.fromkeys(hosts)))


def _producer(entry: Any, *, env: Mapping[str, str], where: str) -> Producer:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be an object")
    unknown = [key for key in entry if key not in _FIELDS]
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(_FIELDS)})")
    name = entry.get("name")
    if not isinstance(name, str) or not PRODUCER_NAME.fullmatch(name):
        raise ConfigError(
            f"{where}.name must be 1 to 32 lower-case letters, digits and inner hyphens, starting with a letter"
        )
    if name == APP_PRODUCER:
        raise ConfigError(f"{where}.name: {APP_PRODUCER!r} is the app's own name; choose another")
    where = f"{where} ({name})"
    try:
        system = SourceSystem(str(entry.get("system")))
    except ValueError:
        known = ", ".join(s.value for s in SourceSystem)
        raise ConfigError(f"{where}.system must be one of {known}") from None
    queue = _optional_name(entry, "queue", _QUEUE_NAME, where)
    lane_text = entry.get("lane", Lane.INTERACTIVE.value)
    if lane_text not in {lane.value for lane in Lane}:
        raise ConfigError(f"{where}.lane must be interactive or bulk")
    lane = Lane(lane_text)
    if lane is Lane.BULK and queue is None:
        raise ConfigError(f"{where}.lane: a lane is the lane of the producer's queue; give queue too")
    hr_queue = _optional_name(entry, "hrEventsQueue", _QUEUE_NAME, where)
    if hr_queue is not None and system is not SourceSystem.HR:
        raise ConfigError(f"{where}.hrEventsQueue: only a producer of system hr sends HR events")
    if hr_queue is not None and hr_queue == queue:
        raise ConfigError(f"{where}: queue and hrEventsQueue must be two queues")
    setting = _optional_name(entry, "secretSetting", _SETTING_NAME, where)
    secret = _secret(env.get(setting, "") if setting else "", setting, where)
    principals = entry.get("principals", [])
    if not isinstance(principals, list) or not all(isinstance(p, str) for p in principals):
        raise ConfigError(f"{where}.principals must be a list of Entra object ids (GUIDs)")
    try:
        ids = frozenset(parse_guid(p, field=f"{where}.principals") for p in principals)
    except ContractError as error:
        raise ConfigError(error.description) from None
    hosts = entry.get("callbackHosts", [])
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        raise ConfigError(f"{where}.callbackHosts must be a list of host names")
    if not (queue or hr_queue or setting or ids):
        raise ConfigError(
            f"{where}: give at least one way it is known: queue, hrEventsQueue, secretSetting or principals"
        )
    return Producer(
        name=name,
        system=system,
        queue=queue,
        lane=lane,
        hr_events_queue=hr_queue,
        secret_setting=setting,
        secret=secret,
        principals=ids,
        callback_hosts=tuple(dict.fromkeys(hosts)),
    )


def _optional_name(entry: Mapping[str, Any], key: str, pattern: re.Pattern[str], where: str) -> str | None:
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ConfigError(f"{where}.{key} is not a valid name")
    return value


def _secret(value: str, setting: str | None, where: str) -> str | None:
    """The producer's signing secret from its setting, or None while unset (or an unresolved Key Vault reference,
    which is no secret: anyone may know its text)."""
    value = value.strip()
    if not value or value.startswith("@Microsoft.KeyVault("):
        return None
    if len(value) < MIN_SECRET_CHARS:
        raise ConfigError(
            f"{where}.secretSetting: {setting} must be at least {MIN_SECRET_CHARS} characters (its length is not shown)"
        )
    return value


def _check_shared_identities(registry: Producers, where: str) -> None:
    """Refuse two producers known the same way: one queue, one principal, one secret."""
    seen: dict[str, str] = {}
    for producer in registry:
        for kind, values in (
            ("queue", {producer.queue, producer.hr_events_queue} - {None}),
            ("principal", set(producer.principals)),
            ("secret setting", {producer.secret_setting} - {None}),
        ):
            for value in values:
                key = f"{kind}:{value}"
                if key in seen and seen[key] != producer.name:
                    raise ConfigError(
                        f"{where}: producers {seen[key]!r} and {producer.name!r} share the {kind} {value}: two "
                        "producers cannot share an identity"
                    )
                seen[key] = producer.name
    signing = registry.signing()
    for index, one in enumerate(signing):
        for other in signing[index + 1 :]:
            if one.secret and other.secret and hmac.compare_digest(one.secret, other.secret):
                raise ConfigError(
                    f"{where}: producers {one.name!r} and {other.name!r} sign with the same secret (from "
                    f"{one.secret_setting} and {other.secret_setting}): two producers cannot share an identity"
                )


def _check_callback_hosts(registry: Producers, extra: Mapping[str, Sequence[str]], *, where: str) -> None:
    """Callbacks are signed with the producer's own secret: only a producer that signs may have callback hosts."""
    for name in extra:
        if registry.get(name) is None:
            known = ", ".join(p.name for p in registry)
            raise ConfigError(f"{where}: {name!r} is not a producer (the registry has {known})")
    for producer in registry:
        if producer.callback_hosts and producer.secret_setting is None:
            raise ConfigError(
                f"{where}: producer {producer.name!r} has callback hosts but no secretSetting: callbacks are signed "
                "with the producer's own secret"
            )


#: The app itself, as the owner of its own requests (the drift sweep's removals of what no producer granted).
APP: Final = Producer(name=APP_PRODUCER, system=SourceSystem.OTHER)


def establish(
    registry: Producers,
    *,
    own: bool,
    stated: str | None,
    bound: Producer | None,
    system: str | None,
    app_removal: bool = False,
) -> Producer:
    """Who asked for a grant message: on a message the app sealed (`own`), the producer it names (`stated`: its
    sealed ``producer`` property; on one sealed before producers had names, the producer of its body's source
    `system`, which the app had believed then); on any other message, the producer its entry point is `bound` to.
    The app's own removals (`app_removal`: an expiry's, a drift repair's) whose producer is not registered (sealed
    before producers had names, or for a producer since removed) are the app's (`APP`): a grant never outlives its
    expiry because its producer left the registry. Raise `ContractError(UnknownProducer)` when that is no producer:
    a message sent where no producer may send, or sealed for a producer the registry no longer has."""
    if own:
        if stated == APP_PRODUCER:
            return APP
        if app_removal and (stated is None or registry.get(stated) is None):
            return APP
        found = registry.get(stated) if stated else (registry.for_system(system) if system else None)
        if found is None:
            raise ContractError(
                Reason.UNKNOWN_PRODUCER,
                f"the app queued this request for producer {stated or system or '(unknown)'}, which the producer "
                f"registry ({registry.origin}) no longer has: register it again, or let the request go",
            )
        return found
    if bound is None:
        raise ContractError(
            Reason.UNKNOWN_PRODUCER,
            "this queue belongs to no producer: only the app's own messages are taken from it; a producer sends to "
            "its own queue (the producer registry, GRANTS_PRODUCERS)",
        )
    return bound


def check_source(producer: Producer, command: GrantCommand) -> None:
    """Raise `ContractError(SourceMismatch)` when `command` names a source system other than `producer`'s: a
    producer speaks only as itself."""
    if command.source.system is not producer.system:
        raise ContractError(
            Reason.SOURCE_MISMATCH,
            f"source.system is {command.source.system.value!r}, but this request came from producer "
            f"{producer.name!r}, which speaks as {producer.system.value!r}: nothing was granted",
            request_id=command.request_id,
        )
