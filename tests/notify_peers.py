"""Real servers for the notify tests that the shared ``smtp_peer`` cannot play.

- :func:`smtp_server`: an aiosmtpd server on a port chosen up front, so a test can point the appliance
  at it *before* it runs (SMTP down, then up), with optional AUTH, STARTTLS or implicit TLS, and an
  optional list of recipients it refuses with 550.
- :class:`PushService`: a loopback HTTP server playing a browser push service. It checks the VAPID
  ``Authorization`` header and the aes128gcm body, and decrypts it with the subscription's private
  key and auth secret (http_ece), as the browser would; endpoints ending in ``/gone`` answer 410.
"""

from __future__ import annotations

import base64
import datetime
import os
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import http_ece
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.peers import HOST, free_port

__all__ = [
    "BrowserKeys",
    "Inbox",
    "PushService",
    "Received",
    "SmtpServer",
    "browser_keys",
    "parse_mail",
    "push_service",
    "self_signed",
    "smtp_server",
]


def parse_mail(raw: bytes) -> EmailMessage:
    message = message_from_bytes(raw, policy=default_policy)
    assert isinstance(message, EmailMessage)
    return message


class Inbox:
    """An aiosmtpd handler that keeps what it accepts and refuses some recipients for good."""

    def __init__(self, refuse: tuple[str, ...] = ()) -> None:
        self.messages: list[tuple[list[str], bytes]] = []
        self.refuse = refuse
        self.arrived = threading.Condition()
        self.connections = 0

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        with self.arrived:
            self.connections += 1
        session.host_name = hostname
        return responses

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address in self.refuse:
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.arrived:
            self.messages.append((list(envelope.rcpt_tos), bytes(envelope.original_content or b"")))
            self.arrived.notify_all()
        return "250 Message accepted for delivery"

    def wait_for(self, count: int, timeout: float = 10.0) -> list[tuple[list[str], bytes]]:
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.messages) >= count, timeout):
                raise AssertionError(f"expected {count} mail(s) within {timeout}s, got {len(self.messages)}")
            return list(self.messages)


def self_signed(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A server TLS context with a fresh self-signed certificate for 127.0.0.1; and the cert file."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context, cert_path


def _authenticator(login: str, password: str) -> Any:
    def check(server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            login.encode(),
            password.encode(),
        )
        return AuthResult(success=ok, handled=False)

    return check


@dataclass
class SmtpServer:
    """One aiosmtpd server on a fixed port; each :meth:`start` runs a fresh controller (and event loop)."""

    port: int
    inbox: Inbox
    options: dict[str, Any]
    implicit_tls: ssl.SSLContext | None = None
    controller: Controller | None = None

    def start(self) -> None:
        self.controller = Controller(
            self.inbox, hostname=HOST, port=self.port, ssl_context=self.implicit_tls, **self.options
        )
        self.controller.start()

    def stop(self) -> None:
        """Stop listening and drop every open session (clients see the connection go)."""
        if self.controller is not None:
            self.controller.stop()
            if not self.controller.loop.is_closed():
                self.controller.loop.close()
            self.controller = None


@contextmanager
def smtp_server(
    *,
    start: bool = True,
    refuse: tuple[str, ...] = (),
    credentials: tuple[str, str] | None = None,
    starttls: ssl.SSLContext | None = None,
    implicit_tls: ssl.SSLContext | None = None,
) -> Iterator[SmtpServer]:
    """An aiosmtpd server on a free port, started now or later (``start=False``), always stopped."""
    options: dict[str, Any] = {}
    if credentials is not None:
        # AUTH is required only behind TLS (aiosmtpd warns otherwise); in the clear it is offered and checked.
        options.update(authenticator=_authenticator(*credentials), auth_require_tls=starttls is not None)
        options["auth_required"] = starttls is not None
    if starttls is not None:
        options.update(tls_context=starttls, require_starttls=True)
    server = SmtpServer(free_port(), Inbox(refuse), options, implicit_tls)
    try:
        if start:
            server.start()
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------ Web Push ---


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class BrowserKeys:
    """A browser's side of one subscription: its ECDH key pair and auth secret."""

    private_key: ec.EllipticCurvePrivateKey
    auth: bytes

    @property
    def p256dh(self) -> str:
        raw = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return _b64(raw)

    def subscription(self, endpoint: str) -> dict[str, Any]:
        return {"endpoint": endpoint, "keys": {"p256dh": self.p256dh, "auth": _b64(self.auth)}}


def browser_keys() -> BrowserKeys:
    return BrowserKeys(ec.generate_private_key(ec.SECP256R1()), os.urandom(16))


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class PushService:
    """A loopback push service. ``keys[path]`` decrypts what arrives at ``path``; ``/gone`` paths get 410."""

    port: int
    received: list[Received] = field(default_factory=list)
    keys: dict[str, BrowserKeys] = field(default_factory=dict)
    arrived: threading.Condition = field(default_factory=threading.Condition)
    status_for: dict[str, int] = field(default_factory=dict)

    def endpoint(self, name: str) -> str:
        return f"http://{HOST}:{self.port}/push/{name}"

    def subscribe(self, name: str) -> dict[str, Any]:
        keys = browser_keys()
        self.keys[f"/push/{name}"] = keys
        return keys.subscription(self.endpoint(name))

    def decrypt(self, received: Received) -> bytes:
        keys = self.keys[received.path]
        plain: bytes = http_ece.decrypt(
            received.body, private_key=keys.private_key, auth_secret=keys.auth, version="aes128gcm"
        )
        return plain

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.received) >= count, timeout):
                raise AssertionError(f"expected {count} push(es) within {timeout}s, got {len(self.received)}")
            return list(self.received)


@contextmanager
def push_service() -> Iterator[PushService]:
    """Serve a :class:`PushService` on a loopback port in a thread; stopped on exit."""
    port = free_port()
    service = PushService(port)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with service.arrived:
                service.received.append(
                    Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                service.arrived.notify_all()
            status = 410 if self.path.endswith("/gone") else service.status_for.get(self.path, 201)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer((HOST, port), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield service
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
