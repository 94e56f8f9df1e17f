"""Real peer servers for the test suite (pytest plugin: ``pytest_plugins = ["tests.peers"]``).

Every fixture here is session-scoped and starts a *real* server on a free loopback port in
its own temp dir, waits until it actually answers (polling with a deadline, never a blind
sleep) and stops it at the end of the session, even when tests fail. A missing binary is a
skip locally and a failure under ``CI=true``: CI must never go green by skipping peers.

This module must not import ``appliance``: it has to work while the package is broken.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, NamedTuple, NoReturn

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from playwright.sync_api import Browser, sync_playwright
from playwright.sync_api import Error as PlaywrightError

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOLS_BIN = REPO_ROOT / ".tools" / "bin"
HOST = "127.0.0.1"
# Generous but well under pytest-timeout's 60 s, which also covers session fixture setup.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
CHROMIUM_ARGS = [
    "--no-sandbox",  # we usually run as root in containers, where the sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # No phoning home: the machines have no internet and stray requests slow startup.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Loopback peers must never be reached through an HTTP(S)_PROXY from the environment.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ------------------------------------------------------------------ helpers ---


def missing_peer(message: str) -> NoReturn:
    """Skip locally, fail under CI: a CI run that silently skips peers proves nothing."""
    advice = f"{message}; run ./install.sh --dev to install the test peers"
    if os.environ.get("CI") == "true":
        pytest.fail(advice, pytrace=False)
    pytest.skip(advice)


def find_tool(name: str) -> str:
    """Path of a peer binary: ./.tools/bin (go install target), then PATH, then sbin/bin."""
    candidates = [TOOLS_BIN / name]
    on_path = shutil.which(name)
    if on_path:
        candidates.append(Path(on_path))
    # Debian puts some daemons in sbin, which is not on a normal user's PATH.
    candidates += [Path("/usr/sbin") / name, Path("/usr/bin") / name]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    missing_peer(f"{name} not found in {TOOLS_BIN}, PATH, /usr/sbin or /usr/bin")


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports: all sockets stay open until every port is picked."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]


def poll_until(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Call ``check`` until it is true; raise TimeoutError at the deadline, or RuntimeError
    at once if ``proc`` died (no point waiting for a server that is gone)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before {what}")
        if check():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached within {timeout:.0f}s")
        time.sleep(0.05)


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float = START_TIMEOUT) -> None:
    poll_until(lambda: port_open(host, port), timeout, f"{host}:{port} accepting connections")


def http_ok(url: str) -> bool:
    try:
        with _NO_PROXY_OPENER.open(url, timeout=1.0) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def redis_pong(port: int) -> bool:
    # Redis accepts connections while still loading; only PONG means it serves commands.
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


# --------------------------------------------------------- process lifetime ---


@dataclass
class PeerProcess:
    """A server subprocess whose stdout+stderr go to ``log_path``."""

    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"

    def stop(self) -> None:
        """terminate, then kill if it ignores SIGTERM; always reap it and close the log."""
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=STOP_TIMEOUT)
        finally:
            self.log.close()

    def startup_failure(self, reason: BaseException) -> NoReturn:
        pytest.fail(
            f"{self.name} failed to start: {reason}\n"
            f"command: {shlex.join(self.argv)}\n"
            f"--- last lines of {self.log_path} ---\n{self.log_tail()}",
            pytrace=False,
        )


@contextmanager
def running(
    name: str,
    argv: list[str],
    workdir: Path,
    ready: Callable[[], bool],
    env: dict[str, str] | None = None,
) -> Iterator[PeerProcess]:
    """Start ``argv``, wait until ``ready()``, yield, and always stop the process."""
    log_path = workdir / f"{name}.log"
    log = log_path.open("wb")
    try:
        proc = subprocess.Popen(
            argv,
            cwd=workdir,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    except OSError as exc:
        log.close()
        pytest.fail(f"{name} could not be executed: {exc} (command: {shlex.join(argv)})", pytrace=False)
    peer = PeerProcess(name, argv, proc, log_path, log)
    try:
        try:
            poll_until(ready, START_TIMEOUT, f"{name} ready", proc)
        except (TimeoutError, RuntimeError) as exc:
            peer.startup_failure(exc)
        yield peer
    finally:
        peer.stop()


# -------------------------------------------------------------------- redis ---


@dataclass(frozen=True)
class RedisPeer:
    host: str
    port: int
    process: PeerProcess = field(repr=False)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"


@pytest.fixture(scope="session")
def redis_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisPeer]:
    exe = find_tool("redis-server")
    workdir = tmp_path_factory.mktemp("redis")
    port = free_port()
    # No RDB/AOF: tests want a throwaway server, and persistence only costs disk writes.
    argv = [exe, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(workdir)]
    with running("redis-server", argv, workdir, lambda: redis_pong(port)) as proc:
        yield RedisPeer(HOST, port, proc)


# -------------------------------------------------------------------- minio ---


@dataclass(frozen=True)
class MinioPeer:
    endpoint: str  # "127.0.0.1:N", the form the minio clients take
    access_key: str
    secret_key: str
    console_url: str
    process: PeerProcess = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"


@pytest.fixture(scope="session")
def minio_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinioPeer]:
    exe = find_tool("minio")
    workdir = tmp_path_factory.mktemp("minio")
    port, console_port = free_ports(2)
    access_key, secret_key = "appliance-test", "appliance-test-secret"  # secret needs >= 8 chars
    env = {
        "MINIO_ROOT_USER": access_key,
        "MINIO_ROOT_PASSWORD": secret_key,
        # Offline machines: skip the update check and call-home, which only add startup delay.
        "MINIO_UPDATE": "off",
        "MINIO_CALLHOME_ENABLE": "off",
    }
    argv = [exe, "server", str(workdir / "data"), "--address", f"{HOST}:{port}"]
    # Own certs dir so MinIO does not create ~/.minio on the developer's machine.
    argv += ["--console-address", f"{HOST}:{console_port}", "--certs-dir", str(workdir / "certs")]
    health = f"http://{HOST}:{port}/minio/health/live"
    with running("minio", argv, workdir, lambda: http_ok(health), env) as proc:
        yield MinioPeer(f"{HOST}:{port}", access_key, secret_key, f"http://{HOST}:{console_port}", proc)


# -------------------------------------------------------------- stripe-mock ---


@dataclass(frozen=True)
class StripePeer:
    host: str
    port: int
    process: PeerProcess = field(repr=False)
    # stripe-mock accepts any key of the right shape; it never checks it against an account.
    api_key: str = "sk_test_123"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@pytest.fixture(scope="session")
def stripe_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StripePeer]:
    exe = find_tool("stripe-mock")
    workdir = tmp_path_factory.mktemp("stripe")
    port, tls_port = free_ports(2)
    # With -http-addr alone stripe-mock still listens for HTTPS on the fixed port 12112, and a
    # second instance (a parallel run) then fails to serve at all: give HTTPS a free port too.
    argv = [exe, "-http-addr", f"{HOST}:{port}", "-https-addr", f"{HOST}:{tls_port}"]
    with running("stripe-mock", argv, workdir, lambda: port_open(HOST, port)) as proc:
        yield StripePeer(HOST, port, proc)


# --------------------------------------------------------------------- smtp ---


class ReceivedMail(NamedTuple):
    mail_from: str
    rcpt_tos: list[str]
    data: bytes  # the raw message as received, headers included


class _RecordingHandler:
    """aiosmtpd handler that keeps every message; runs on the controller's own thread."""

    def __init__(self) -> None:
        self.messages: list[ReceivedMail] = []
        self.arrived = threading.Condition()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content or b""
        mail = ReceivedMail(str(envelope.mail_from), list(envelope.rcpt_tos), bytes(raw))
        with self.arrived:
            self.messages.append(mail)
            self.arrived.notify_all()
        return "250 Message accepted for delivery"


@dataclass(frozen=True)
class SmtpPeer:
    host: str
    port: int
    handler: _RecordingHandler = field(repr=False)

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    @property
    def messages(self) -> list[ReceivedMail]:
        return self.handler.messages

    def clear(self) -> None:
        """The peer is shared by the whole session: tests that count mail clear it first."""
        with self.handler.arrived:
            self.messages.clear()

    def wait_for(self, n: int = 1, timeout: float = 10.0) -> list[ReceivedMail]:
        """Block until at least ``n`` messages arrived; AssertionError at the deadline."""
        with self.handler.arrived:
            if not self.handler.arrived.wait_for(lambda: len(self.messages) >= n, timeout):
                raise AssertionError(f"expected {n} mail(s) within {timeout}s, got {len(self.messages)}")
            return list(self.messages)


@pytest.fixture(scope="session")
def smtp_peer() -> Iterator[SmtpPeer]:
    handler = _RecordingHandler()
    port = free_port()
    controller = Controller(handler, hostname=HOST, port=port, ready_timeout=START_TIMEOUT)
    try:
        controller.start()
    except Exception as exc:  # aiosmtpd raises its own timeout/bind errors
        pytest.fail(f"aiosmtpd failed to start on {HOST}:{port}: {exc!r}", pytrace=False)
    try:
        yield SmtpPeer(HOST, port, handler)
    finally:
        controller.stop()


# ------------------------------------------------------------------ browser ---


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Headless Debian Chromium driven by Playwright (sync API: use it from sync tests).

    ``executable_path`` because ``playwright install`` cannot download browsers here.
    """
    exe = find_tool("chromium")
    with sync_playwright() as pw:
        try:
            chromium = pw.chromium.launch(
                executable_path=exe, headless=True, args=CHROMIUM_ARGS, timeout=START_TIMEOUT * 1000
            )
        except PlaywrightError as exc:
            pytest.fail(f"chromium ({exe}) failed to start: {exc}", pytrace=False)
        try:
            yield chromium
        finally:
            with suppress(PlaywrightError):  # already gone if it crashed; nothing left to close
                chromium.close()
