"""The callback client at the socket: it resolves a name once, refuses non-public addresses before connecting,
connects to the address it checked with the name as Host and TLS server name (the certificate is verified against
the name), follows no redirect, reads a bounded answer and bounds time. Real TLS on loopback: a test CA and a
certificate for itsm.example.com, which a test resolver maps to 127.0.0.1 (and a test address rule permits)."""

from __future__ import annotations

import datetime as dt
import ssl
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from grants_local._http import LoopbackServer, Request, Response
from shared.adapters.callbacks import CallbackClient
from shared.core.callbacks import CallbackPolicy, CallbackTarget
from shared.core.errors import PermanentError, TransientError

NAME = "itsm.example.com"
POLICY = CallbackPolicy.from_setting(f'{{"ticketing": ["{NAME}"]}}')


def _certificate(subject: str, issuer: x509.Name, issuer_key: Any, key: Any, *, ca: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context with a certificate for NAME, client context trusting only the test CA)."""
    directory: Path = tmp_path_factory.mktemp("tls")
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "entra-grants test CA")])
    ca = _certificate("entra-grants test CA", ca_name, ca_key, ca_key, ca=True)
    leaf = _certificate(NAME, ca_name, ca_key, key, ca=False)
    (directory / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(directory / "leaf.pem", directory / "key.pem")
    client = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return server, client


class TlsServer(LoopbackServer):
    """The loopback server, speaking TLS (the handshake on each accepted connection)."""

    def __init__(self, app: Any, context: ssl.SSLContext) -> None:
        self.context = context
        super().__init__(app)

    def get_request(self) -> tuple[Any, Any]:
        connection, address = super().get_request()
        try:
            return self.context.wrap_socket(connection, server_side=True), address
        except (ssl.SSLError, OSError):
            connection.close()
            raise OSError("handshake failed") from None


class Recorder:
    def __init__(self, answer: Response | None = None, delay: float = 0.0) -> None:
        self.requests: list[Request] = []
        self.answer = answer or Response(204)
        self.delay = delay

    def __call__(self, request: Request) -> Response:
        self.requests.append(request)
        if self.delay:
            time.sleep(self.delay)
        return self.answer


class Resolver:
    def __init__(self, *answers: Sequence[str]) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append((host, port))
        return self.answers.pop(0)


@pytest.fixture
def server(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> Iterator[tuple[TlsServer, Recorder]]:
    recorder = Recorder()
    tls_server = TlsServer(recorder, tls[0])
    yield tls_server, recorder
    tls_server.close()


def target(port: int, path: str = "/api/callback?ticket=RITM1") -> CallbackTarget:
    return CallbackTarget("https", NAME, port, path)


async def test_given_a_name_resolved_once_then_the_checked_address_is_connected_to_with_the_name_as_host_and_sni(
    server: tuple[TlsServer, Recorder], tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    tls_server, recorder = server
    resolver = Resolver(["127.0.0.1"], ["10.0.0.1"])  # a second, rebinding answer is never asked for
    client = CallbackClient(resolve=resolver, verify=tls[1], permit_address=lambda a: a == "127.0.0.1")
    answer = await client.post(target(tls_server.port), body=b'{"a":1}', headers={"X-Test": "1"})
    await client.close()
    assert (answer.status, answer.address) == (204, "127.0.0.1")
    assert resolver.calls == [(NAME, tls_server.port)]
    [request] = recorder.requests
    assert request.headers["Host"] == f"{NAME}:{tls_server.port}"
    assert (request.path, request.query, request.body) == ("/api/callback", {"ticket": "RITM1"}, b'{"a":1}')
    assert request.headers["User-Agent"] == "entra-grants-callback/1"
    assert request.headers["Accept-Encoding"] == "identity"


async def test_given_a_certificate_for_another_name_then_nothing_is_sent(
    server: tuple[TlsServer, Recorder], tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    tls_server, recorder = server
    client = CallbackClient(resolve=Resolver(["127.0.0.1"]), verify=tls[1], permit_address=lambda a: True)
    with pytest.raises(TransientError, match="could not connect or send"):
        await client.post(CallbackTarget("https", "other.example.com", tls_server.port, "/"), body=b"{}", headers={})
    await client.close()
    assert recorder.requests == []


@pytest.mark.parametrize(
    "addresses",
    [["127.0.0.1"], ["10.0.0.5"], ["169.254.169.254"], ["20.190.160.1", "192.168.0.1"], ["::ffff:127.0.0.1"], ["::1"]],
)
async def test_given_a_name_that_resolves_to_a_non_public_address_then_it_is_refused_before_connecting(
    server: tuple[TlsServer, Recorder], addresses: list[str]
) -> None:
    tls_server, recorder = server
    client = CallbackClient(resolve=Resolver(addresses))
    with pytest.raises(PermanentError, match="resolves to an address that is not public"):
        await client.post(target(tls_server.port), body=b"{}", headers={})
    await client.close()
    assert recorder.requests == []


async def test_given_a_name_that_does_not_resolve_then_retrying_may_help() -> None:
    async def failing(host: str, port: int) -> Sequence[str]:
        raise OSError("Name or service not known")

    client = CallbackClient(resolve=failing)
    with pytest.raises(TransientError, match="did not resolve"):
        await client.post(target(443), body=b"{}", headers={})


@pytest.mark.parametrize(
    ("answer", "error", "says"),
    [
        (Response(302, None, {"Location": "https://169.254.169.254/"}), PermanentError, "a redirect"),
        (Response(401, {"error": "bad signature"}), PermanentError, "answered 401"),
        (Response(429, None, {"Retry-After": "7"}), TransientError, "answered 429"),
        (Response(503, {"error": "down"}), TransientError, "answered 503"),
    ],
)
async def test_given_a_non_2xx_answer_then_it_fails_and_only_some_are_worth_retrying(
    answer: Response, error: type[Exception], says: str
) -> None:
    recorder = Recorder(answer)
    loopback = LoopbackServer(recorder)
    client = CallbackClient()
    try:
        with pytest.raises(error, match=says) as caught:
            await client.post(CallbackTarget("http", "127.0.0.1", loopback.port, "/cb", True), body=b"{}", headers={})
    finally:
        await client.close()
        loopback.close()
    assert len(recorder.requests) == 1  # the redirect was not followed
    if answer.status == 429:
        assert isinstance(caught.value, TransientError)
        assert caught.value.retry_after == 7


async def test_given_a_huge_answer_then_only_the_first_bytes_are_read() -> None:
    recorder = Recorder(Response(200, "x" * 1_000_000))
    loopback = LoopbackServer(recorder)
    client = CallbackClient(max_response_bytes=4096)
    try:
        answer = await client.post(CallbackTarget("http", "127.0.0.1", loopback.port, "/", True), body=b"", headers={})
    finally:
        await client.close()
        loopback.close()
    assert (answer.status, len(answer.body)) == (200, 4096)


async def test_given_a_receiver_that_does_not_answer_then_the_deadline_ends_the_attempt() -> None:
    recorder = Recorder(delay=1.0)
    loopback = LoopbackServer(recorder)
    client = CallbackClient(total_timeout=0.3)
    started = time.monotonic()
    try:
        with pytest.raises(TransientError, match=r"timed out|no answer within"):
            await client.post(CallbackTarget("http", "127.0.0.1", loopback.port, "/", True), body=b"", headers={})
    finally:
        await client.close()
        loopback.close()
    assert time.monotonic() - started < 0.9


def test_the_policy_and_the_client_agree_on_the_target() -> None:
    parsed = POLICY.check(f"https://{NAME}/api/callback?ticket=RITM1", producer="ticketing")
    assert parsed == target(443)
