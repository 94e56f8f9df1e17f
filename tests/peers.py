"""Real peer servers for the test suite (pytest plugin: ``pytest_plugins = ["tests.peers"]``).

Each peer fixture is session-scoped and starts a *real* server on a free loopback port in
its own temp dir, waits until it actually answers (polling with a deadline, never a blind
sleep) and stops it at the end of the session, even when tests fail. Only the Playwright
handles (``browser``, ``async_browser``) are per test, on the one shared Chromium. A missing binary is a
skip locally and a failure under ``CI=true``: CI must never go green by skipping peers.

This module must not import ``appliance``: it has to work while the package is broken.
"""

from __future__ import annotations

import inspect
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, NamedTuple, NoReturn

import pytest
import pytest_asyncio
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from playwright.async_api import Browser as AsyncBrowser
from playwright.async_api import async_playwright
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
    "--disable-breakpad",
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
            raise TimeoutError(f"{what} not reached within {timeout:g}s")
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
            error = None
        except (TimeoutError, RuntimeError) as exc:
            error = exc
        if error is not None:  # outside the except: keeps the report free of chained tracebacks
            peer.startup_failure(error)
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


# --------------------------------------------------------------- postgresql ---


def find_postgres_bin() -> Path:
    """Debian keeps the server binaries off PATH, in /usr/lib/postgresql/<major>/bin (newest wins)."""
    found = sorted(
        (p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/postgres")),
        key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1]
    on_path = shutil.which("postgres")
    if on_path:
        return Path(on_path).parent
    missing_peer("PostgreSQL not found in /usr/lib/postgresql/*/bin or PATH (Debian package `postgresql`)")


@dataclass(frozen=True)
class PostgresPeer:
    """A throwaway PostgreSQL cluster: trust auth for ``postgres`` on loopback, fsync off."""

    host: str
    port: int
    bin_dir: Path
    socket_dir: Path
    process: PeerProcess = field(repr=False)
    user: str = "postgres"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` with psql (autocommit, so CREATE/DROP DATABASE work); returns its output."""
        argv = [str(self.bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        argv += ["-h", self.host, "-p", str(self.port), "-U", self.user, "-d", database, "-c", sql]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=START_TIMEOUT, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"psql failed ({done.returncode}): {done.stderr.strip()}\nSQL: {sql}")
        return done.stdout

    def create_database(self, name: str, template: str = "template0") -> str:
        """A new database (copied from ``template``); returns its URL."""
        self.psql(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _as_postgres_user() -> dict[str, int]:
    """PostgreSQL refuses to run as root: as root, run it as the ``postgres`` system user."""
    if os.geteuid() != 0:
        return {}
    import pwd

    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        missing_peer("running as root, but there is no `postgres` user to run PostgreSQL as")
    return {"user": entry.pw_uid, "group": entry.pw_gid}


@contextmanager
def postgres_cluster(workdir: Path, name: str = "postgres") -> Iterator[PostgresPeer]:
    """initdb into ``workdir`` and run the server on a free loopback port until the block exits."""
    bin_dir = find_postgres_bin()
    ids = _as_postgres_user()
    data, sockets = workdir / "data", workdir / "sock"
    sockets.mkdir()
    if ids:
        for path in (workdir, sockets):
            os.chown(path, ids["user"], ids["group"])
    initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
    initdb += ["--locale=C.UTF-8", "--no-sync"]
    done = subprocess.run(initdb, capture_output=True, text=True, timeout=START_TIMEOUT, check=False, **ids)  # type: ignore[call-overload]
    if done.returncode != 0:
        pytest.fail(f"initdb failed: {done.stdout}{done.stderr}", pytrace=False)
    port = free_port()
    argv = [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(sockets)]
    argv += ["-c", f"listen_addresses={HOST}", "-c", "max_connections=300", "-c", "shared_buffers=64MB"]
    # A throwaway cluster: durability buys nothing here and costs every commit an fsync.
    argv += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    argv += ["-c", "wal_level=replica", "-c", "max_wal_senders=4", "-c", "hot_standby=on"]
    isready = [str(bin_dir / "pg_isready"), "-q", "-h", HOST, "-p", str(port)]

    def ready() -> bool:
        return subprocess.run(isready, check=False, timeout=5).returncode == 0

    with _running_as(name, argv, workdir, ready, ids) as proc:
        yield PostgresPeer(HOST, port, bin_dir, sockets, proc)


@contextmanager
def postgres_replica(primary: PostgresPeer, workdir: Path) -> Iterator[PostgresPeer]:
    """A streaming replica of ``primary`` (pg_basebackup -R), read-only, until the block exits."""
    ids = _as_postgres_user()
    data, sockets = workdir / "data", workdir / "sock"
    sockets.mkdir()
    if ids:
        for path in (workdir, sockets):
            os.chown(path, ids["user"], ids["group"])
    backup = [str(primary.bin_dir / "pg_basebackup"), "-h", primary.host, "-p", str(primary.port)]
    backup += ["-U", primary.user, "-D", str(data), "-R", "-X", "stream", "--no-sync", "-c", "fast"]
    done = subprocess.run(backup, capture_output=True, text=True, timeout=START_TIMEOUT, check=False, **ids)  # type: ignore[call-overload]
    if done.returncode != 0:
        pytest.fail(f"pg_basebackup failed: {done.stdout}{done.stderr}", pytrace=False)
    port = free_port()
    argv = [str(primary.bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(sockets)]
    argv += ["-c", f"listen_addresses={HOST}", "-c", "hot_standby=on", "-c", "fsync=off"]
    argv += ["-c", "max_connections=300"]  # a standby needs at least the primary's
    isready = [str(primary.bin_dir / "pg_isready"), "-q", "-h", HOST, "-p", str(port)]

    def ready() -> bool:
        return subprocess.run(isready, check=False, timeout=5).returncode == 0

    with _running_as("postgres-replica", argv, workdir, ready, ids) as proc:
        yield PostgresPeer(HOST, port, primary.bin_dir, sockets, proc)


@contextmanager
def _running_as(
    name: str, argv: list[str], workdir: Path, ready: Callable[[], bool], ids: dict[str, int]
) -> Iterator[PeerProcess]:
    """:func:`running`, as another user when ``ids`` names one (its log file stays ours)."""
    log_path = workdir / f"{name}.log"
    log = log_path.open("wb")
    try:
        proc = subprocess.Popen(
            argv, cwd=workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, **ids
        )
    except OSError as exc:
        log.close()
        pytest.fail(f"{name} could not be executed: {exc} (command: {shlex.join(argv)})", pytrace=False)
    peer = PeerProcess(name, argv, proc, log_path, log)
    try:
        try:
            poll_until(ready, START_TIMEOUT, f"{name} ready", proc)
            error = None
        except (TimeoutError, RuntimeError) as exc:
            error = exc
        if error is not None:
            peer.startup_failure(error)
        yield peer
    finally:
        peer.stop()


@contextmanager
def postgres_workdir() -> Iterator[Path]:
    """A fresh dir for a cluster: not under pytest's tmp tree, which is private to root (0700) and so
    closed to the ``postgres`` user the server runs as; removed afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix="appliance-pg-"))
    try:
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_peer() -> Iterator[PostgresPeer]:
    with postgres_workdir() as workdir, postgres_cluster(workdir) as peer:
        yield peer


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
    # Not /minio/health/live: it answers 200 before the object layer is initialized, and S3
    # calls then get 503 XMinioServerNotInitialized with a long Retry-After. /cluster is 200
    # only once the server has write quorum, i.e. really serves S3.
    health = f"http://{HOST}:{port}/minio/health/cluster"
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
    port = free_port()
    # stripe-mock always serves HTTPS too, on the fixed port 12112 unless told otherwise, so
    # two runs at once would collide there. Park HTTPS on a unix socket in our temp dir.
    argv = [exe, "-http-addr", f"{HOST}:{port}", "-https-unix", str(workdir / "https.sock")]
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
        # original_content is the undecoded message; content is only str if decode_data=True.
        raw = envelope.original_content or envelope.content or b""
        data = raw.encode() if isinstance(raw, str) else bytes(raw)
        mail = ReceivedMail(str(envelope.mail_from), list(envelope.rcpt_tos), data)
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
#
# Why Chromium runs as its own process and Playwright connects over CDP per test, instead
# of one session-scoped sync Playwright: between calls the sync API leaves its event loop
# marked as *running* in the main thread (playwright/_impl/_greenlets.py, wait_for_future),
# so every pytest-asyncio test that runs while it is alive fails with "Cannot run the event
# loop while another loop is running". A function-scoped Playwright is stopped before the
# next test starts; the costly part, Chromium itself, is still started once per session.


@dataclass(frozen=True)
class ChromiumPeer:
    executable: str
    port: int  # the DevTools (CDP) port
    process: PeerProcess = field(repr=False)

    @property
    def cdp_url(self) -> str:
        return f"http://{HOST}:{self.port}"


@pytest.fixture(scope="session")
def chromium_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromiumPeer]:
    """Headless Debian Chromium; ``playwright install`` cannot download browsers here."""
    exe = find_tool("chromium")
    workdir = tmp_path_factory.mktemp("chromium")
    port = free_port()
    argv = [exe, "--headless", *CHROMIUM_ARGS, f"--user-data-dir={workdir / 'profile'}"]
    argv += [f"--remote-debugging-address={HOST}", f"--remote-debugging-port={port}", "about:blank"]
    version_url = f"http://{HOST}:{port}/json/version"
    with running("chromium", argv, workdir, lambda: http_ok(version_url)) as proc:
        yield ChromiumPeer(exe, port, proc)


@pytest.fixture
def browser(chromium_peer: ChromiumPeer, request: pytest.FixtureRequest) -> Iterator[Browser]:
    """A sync Playwright ``Browser`` on the shared Chromium, for sync tests.

    Contexts made with ``browser.new_context()`` are dropped at teardown.
    """
    if inspect.iscoroutinefunction(getattr(request, "function", None)):
        pytest.fail("`browser` is the sync API: use `async_browser` in async tests", pytrace=False)
    with sync_playwright() as pw:
        try:
            connected = pw.chromium.connect_over_cdp(chromium_peer.cdp_url, timeout=START_TIMEOUT * 1000)
        except PlaywrightError as exc:
            chromium_peer.process.startup_failure(exc)
        try:
            yield connected
        finally:
            # Over CDP, close() drops this connection's contexts and leaves Chromium running.
            with suppress(PlaywrightError):
                connected.close()


@pytest_asyncio.fixture
async def async_browser(chromium_peer: ChromiumPeer) -> AsyncIterator[AsyncBrowser]:
    """The async twin of ``browser``, on the test's own event loop."""
    async with async_playwright() as pw:
        try:
            connected = await pw.chromium.connect_over_cdp(
                chromium_peer.cdp_url, timeout=START_TIMEOUT * 1000
            )
        except PlaywrightError as exc:
            chromium_peer.process.startup_failure(exc)
        try:
            yield connected
        finally:
            with suppress(PlaywrightError):
                await connected.close()
