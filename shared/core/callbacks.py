"""Callback URLs: which ones the app will call, decided before anything is sent (pure: no I/O).

`CallbackPolicy.check` accepts a URL only when all of these hold, and raises `CallbackRefused` naming the first
that does not:

- at most 2048 printable ASCII characters (an internationalized host in its ``xn--`` form, whose labels must
  decode as Punycode), without a backslash (which browsers read as ``/``: a parser differential) or a fragment;
- the scheme is ``https``;
- no userinfo (``user:password@``) in the authority;
- the host is a DNS name (labels of letters, digits and inner hyphens, at most 63 characters each, 253 in all,
  at least two labels, no trailing dot), never an IP literal in any form: bracketed IPv6, dotted quad, one
  decimal, octal or hex number (``2130706433``, ``017700000001``, ``0x7f000001``), shortened (``127.1``) or with
  hex or octal parts (``0x7f.0.0.1``); as in the WHATWG URL parser, a host whose last label is a number (digits,
  or ``0x`` and hex digits) is an IPv4 address;
- the host, case-insensitively, is on the allow-list of the requesting producer (its ``callbackHosts`` in the
  producer registry, `shared.core.producers`), and the port is the default (443, given or not) or a port listed
  with that host (``host:8443``). A producer's callback never goes to another producer's hosts.

Local mode (``GRANTS_CALLBACK_LOOPBACK=true``, refused at start-up inside Azure) also accepts ``http`` or
``https`` to ``127.0.0.1``, ``[::1]`` or ``localhost`` on any port: the local receiver. Nothing else changes.

What a host name resolves to is checked when the callback is sent (`is_public_address`): the sender resolves it
once, refuses the whole callback if any address is not a public unicast one, and connects to the address it
checked (so a second, rebinding answer is never asked for).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from shared.core.errors import ConfigError

__all__ = [
    "DEFAULT_PORT",
    "LOOPBACK_HOSTS",
    "CallbackPolicy",
    "CallbackRefused",
    "CallbackTarget",
    "callback_hosts_setting",
    "is_public_address",
]

DEFAULT_PORT: Final = 443
MAX_URL_CHARS: Final = 2048
#: What local mode accepts besides the allow-list (as written in a URL's authority).
LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "[::1]", "localhost"})

_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)([^#]*)", re.ASCII)
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+", re.ASCII)
_PORT = re.compile(r"[1-9][0-9]{0,4}", re.ASCII)


class CallbackRefused(ValueError):
    """The callback URL is not one the app will call; the message says why (without echoing the URL)."""


@dataclass(frozen=True, slots=True)
class CallbackTarget:
    """An accepted callback URL, taken apart: what the sender connects to and what it asks for."""

    scheme: str
    host: str  # lower case; a DNS name, or in local mode one of LOOPBACK_HOSTS
    port: int
    target: str  # path and query, "/" when the URL has no path
    loopback: bool = False

    @property
    def host_header(self) -> str:
        """The ``Host`` header: the host, and the port when it is not the scheme's default."""
        default = DEFAULT_PORT if self.scheme == "https" else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class CallbackPolicy:
    """Which callback URLs each producer may name (by producer name): allowed (host, port) pairs, and local mode."""

    hosts: Mapping[str, frozenset[tuple[str, int]]] = field(default_factory=dict)
    loopback: bool = False

    @property
    def enabled(self) -> bool:
        """True when some URL could be accepted."""
        return self.loopback or any(self.hosts.values())

    @classmethod
    def from_setting(cls, raw: str, *, loopback: bool = False, name: str = "GRANTS_CALLBACK_HOSTS") -> CallbackPolicy:
        """A policy from an allow-list setting alone (`callback_hosts_setting`); the app builds its own with
        `from_hosts` from the producer registry, which also checks that each producer named signs its callbacks."""
        return cls.from_hosts(callback_hosts_setting(raw, name=name), loopback=loopback, name=name)

    @classmethod
    def from_hosts(
        cls, hosts: Mapping[str, Sequence[str]], *, loopback: bool = False, name: str = "GRANTS_PRODUCERS"
    ) -> CallbackPolicy:
        """A policy from each producer's host names (each optionally with a port, e.g. ``jira.contoso.com:8443``);
        raise `ConfigError` naming the producer and the entry at fault."""
        allowed: dict[str, frozenset[tuple[str, int]]] = {}
        for producer, entries in hosts.items():
            pairs = set()
            for index, entry in enumerate(entries):
                try:
                    host, port = _host_and_port(entry.strip().lower(), loopback=False)
                except CallbackRefused as error:
                    raise ConfigError(
                        f"{name}: {producer} callbackHosts[{index}] {json.dumps(entry)}: {error}"
                    ) from None
                pairs.add((host, port or DEFAULT_PORT))
            if pairs:
                allowed[producer] = frozenset(pairs)
        return cls(hosts=allowed, loopback=loopback)

    def check(self, url: object, *, producer: str | None) -> CallbackTarget:
        """The target of `url` when a request of `producer` may name it; raise `CallbackRefused` otherwise."""
        if not isinstance(url, str):
            raise CallbackRefused("must be a string")
        if len(url) > MAX_URL_CHARS or not url.isascii() or not url.isprintable() or " " in url:
            raise CallbackRefused(
                f"must be at most {MAX_URL_CHARS} printable ASCII characters without spaces "
                "(an internationalized host in its xn-- form)"
            )
        if "\\" in url:
            raise CallbackRefused("must not contain a backslash")
        if "#" in url:
            raise CallbackRefused("must not have a fragment (#)")
        parts = _URL.fullmatch(url)
        if parts is None:
            raise CallbackRefused("must be an absolute https URL")
        scheme, authority, target = parts.group(1).lower(), parts.group(2), parts.group(3)
        if scheme not in ("https", "http"):
            raise CallbackRefused("must use https")
        if "@" in authority:
            raise CallbackRefused("must not carry a user name or password (userinfo)")
        if target and not target.startswith(("/", "?")):
            raise CallbackRefused("must be an absolute https URL")
        target = target if target.startswith("/") else "/" + target
        host, given_port = _host_and_port(authority.lower(), loopback=self.loopback)
        if host in LOOPBACK_HOSTS:  # only in local mode: _host_and_port refuses them otherwise
            return CallbackTarget(scheme, host, given_port or (80 if scheme == "http" else DEFAULT_PORT), target, True)
        if scheme != "https":
            raise CallbackRefused("must use https")
        port = given_port or DEFAULT_PORT
        allowed = self.hosts.get(producer or "", frozenset())
        if (host, port) not in allowed:
            if any(allowed_host == host for allowed_host, _ in allowed):
                raise CallbackRefused(f"port {port} is not allowed for this host")
            raise CallbackRefused(f"the host is not on the callback allow-list of producer {producer or '(unknown)'}")
        return CallbackTarget(scheme, host, port, target)

    def describe(self) -> str:
        """One line for the start-up log: who may be called back, and where."""
        if not self.enabled:
            return "callbacks: none allowed (GRANTS_CALLBACK_HOSTS is empty)"
        listed = "; ".join(
            f"{producer}: "
            + ", ".join(f"{host}:{port}" if port != DEFAULT_PORT else host for host, port in sorted(hosts))
            for producer, hosts in sorted(self.hosts.items())
        )
        return (
            "callbacks: " + (listed or "no host listed") + ("; LOCAL MODE: loopback allowed" if self.loopback else "")
        )


_EXAMPLE: Final = '{"ticketing": ["contoso.service-now.com"]}'


def callback_hosts_setting(raw: str, *, name: str = "GRANTS_CALLBACK_HOSTS") -> dict[str, list[str]]:
    """The allow-list setting: a JSON object from producer name to host names, e.g.
    ``{"ticketing": ["contoso.service-now.com"]}``; empty: none.
    Only its shape is checked here (`CallbackPolicy.from_hosts` checks each host; the producer registry, each name).
    Raises `ConfigError`."""
    if not raw.strip():
        return {}
    try:
        document = json.loads(raw)
    except ValueError as error:
        raise ConfigError(f"{name} must be a JSON object, e.g. {_EXAMPLE}: {error}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{name} must be a JSON object from producer name to host names, e.g. {_EXAMPLE}")
    for producer, entries in document.items():
        if not isinstance(entries, list) or not all(isinstance(entry, str) for entry in entries):
            raise ConfigError(f"{name}: {producer} must be a list of host names")
    return document


def _host_and_port(authority: str, *, loopback: bool) -> tuple[str, int | None]:
    """(host, port or None when not given) of a lower-case authority without userinfo."""
    if authority.startswith("["):  # an IPv6 literal, possibly with a port
        host, _, rest = authority.partition("]")
        host += "]"
        if loopback and host == "[::1]" and (not rest or rest.startswith(":")):
            return host, _port(rest[1:]) if rest else None
        raise CallbackRefused("the host must be a DNS name, not an IP address")
    host, colon, port_text = authority.partition(":")
    port = _port(port_text) if colon else None
    if loopback and host in LOOPBACK_HOSTS:
        return host, port
    _dns_name(host)
    return host, port


def _port(text: str) -> int:
    if not _PORT.fullmatch(text) or int(text) > 65535:
        raise CallbackRefused("the port must be a number from 1 to 65535, without leading zeros")
    return int(text)


def _dns_name(host: str) -> None:
    """Refuse anything but a lower-case DNS name of two or more labels that is not an IP address in any form."""
    if not host:
        raise CallbackRefused("has no host")
    labels = host.split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]) or _is_ip(host):
        raise CallbackRefused("the host must be a DNS name, not an IP address")
    if len(host) > 253 or len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        raise CallbackRefused(
            "the host must be a DNS name: two or more labels of letters, digits and inner hyphens, without a "
            "trailing dot (an internationalized host in its xn-- form)"
        )
    for label in labels:
        if label.startswith("xn--"):
            try:
                label[4:].encode("ascii").decode("punycode")
            except UnicodeError:
                raise CallbackRefused("the host has an xn-- label that is not valid Punycode") from None
        elif label[2:4] == "--":
            raise CallbackRefused("the host has a label with -- in third and fourth place that is not xn--")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_public_address(address: str) -> bool:
    """True for a public unicast IP address: what a callback may connect to (outside local mode).

    Refused: private, loopback, link-local, shared (100.64/10), reserved, unspecified, multicast and documentation
    ranges (Python's `is_global`, less multicast), and IPv6 addresses that embed an IPv4 one (mapped, 6to4,
    Teredo, NAT64), whose IPv4 part could be any of those.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if ip.is_multicast or not ip.is_global:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or ip.teredo
        if embedded is not None or ip in _NAT64:
            return False
    return True


_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")
