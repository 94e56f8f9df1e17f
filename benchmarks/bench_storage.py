"""Storage throughput: uploads and downloads through the appliance vs. the same bytes moved directly.

    .venv/bin/python benchmarks/bench_storage.py [--size-mib 256] [--rounds 1] [--backend local|s3|both]

The issue's target is a 1 GiB object (``--size-mib 1024``: about a minute per round and backend on
a quiet machine); the default is 256 MiB so that a run stays well under a minute.

Every transfer through the appliance is made twice, by two clients:

a Python client doing what its baseline does
    ``urllib3`` (the HTTP library the ``minio`` client itself runs on) for uploads and S3
    downloads: 1 MiB reads and writes (``stream(1 MiB)`` into the target file; the upload body
    sent from 1 MiB reads of the source with a ``Content-Length``). Against the ``minio`` client
    this is the same client on both sides, so the ratio is the servers' own. For local downloads,
    ``http.client`` in the plain file copy's own loop (``readinto`` one reused 4 MiB buffer).
``curl``
    a subprocess reading the source file and writing the received bytes to a file. curl 7.88
    writes what it receives in 8 KiB ``write`` calls (136,000 of them per GiB), which costs
    it 1 to 3.4 CPU s/GiB; it stays as a second, independent client, and the raw-HTTP and
    presigned-URL baselines are measured with it (same client both sides).

The source file and the downloaded copies live in a tmpfs (``/dev/shm``: no disk writeback noise);
uploads are stored on disk (the appliance's data dir, and the direct copy, both fsynced). Per backend
and round:

local
  upload    appliance  PUT src -> appliance -> temp file, SHA-256, fsync, rename, SQLite row
            direct     copy src -> file, fsync (4 MiB reads/writes): the same bytes written, no appliance
  download  appliance  GET -> file
            direct     copy blob file -> file (the issue's "plain file copy", no socket at all)
            raw http   the same curl GET -> file, from a minimal server on the same loopback that only
                       sends the blob file (``read`` + ``send``, and ``sendfile``): the transfer minus
                       the appliance, so its ratio (to the appliance through curl) is the
                       appliance's own overhead
s3 (a MinIO started here)
  upload    appliance  PUT src -> appliance -> MinIO (multipart)
            direct     the ``minio`` client's ``fput_object`` straight to MinIO, and
                       curl -T src to a presigned MinIO URL (same client, no appliance)
  download  appliance  GET -> file
            direct     the ``minio`` client's ``get_object`` -> file, and curl GET of a presigned URL -> file
            bare relay the urllib3 GET through the least a second hop can do: a thread that fetches
                       the presigned URL and passes MinIO's response on without parsing it
                       (``recv_into`` + ``sendall``, and ``os.splice``): the price of the hop alone, so
                       its ratio is what the appliance adds to that

Also measured: the CPU time every process spends on each transfer (curl, the appliance, MinIO, and
this script for the direct copies and the minio client), per GiB. On a machine whose cores are all
busy, throughput follows CPU cost, so that table says why a ratio is what it is.

Ratios are appliance / direct throughput (1.0 = as fast as going direct), from the same round, so
they hold up on a loaded machine: every appliance row against the issue's baselines (file copy,
``minio`` client), and curl against the baselines measured with curl; with several rounds, also their median and the ratio of the best
round of each (the least disturbed by other load). Also printed: the appliance's peak RSS growth (VmHWM) over the
round, and ``uptime``'s load averages.
"""

from __future__ import annotations

import argparse
import fcntl
import http.client
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import ROOT_KEY
from tests.peers import PeerProcess, find_tool, free_ports, http_ok, running
from tests.process import run_appliance

MIB = 1024 * 1024
BUFFER = 4 * MIB
ENV = {"APPLIANCE_ROOT_KEY": ROOT_KEY, "APPLIANCE_RATE_LIMIT_PER_KEY": "", "APPLIANCE_RATE_LIMIT_PER_IP": ""}
OBJECT = "/v1/buckets/bench/objects/blob.bin"
AUTH = f"Authorization: Bearer {ROOT_KEY}"

Results = dict[str, float]  # "upload appliance" -> seconds; "upload appliance cpu" -> CPU seconds
WATCHED: dict[str, int] = {}  # server processes whose CPU time counts: "appliance", "minio" -> pid
WATCHED_NAMES = ("appliance", "minio")
CPU: dict[str, float] = {}  # the last timed() action's CPU seconds, by process


# ------------------------------------------------------------------ helpers ---


def make_source(path: Path, size: int) -> None:
    """A file of ``size`` distinct-looking bytes (each MiB numbered), read once so it is in the page cache."""
    block = bytes(range(256)) * (MIB // 256)
    with path.open("wb") as handle:
        for index in range(size // MIB):
            handle.write(index.to_bytes(8, "big") + block[8:])
        handle.write(block[: size % MIB])
    with path.open("rb") as handle:
        while handle.read(BUFFER):
            pass


def cpu_seconds() -> dict[str, float]:
    """CPU time (user + system) so far: of curl (finished children), of this process, of each server."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    me = resource.getrusage(resource.RUSAGE_SELF)
    spent = {"curl": children.ru_utime + children.ru_stime, "bench": me.ru_utime + me.ru_stime}
    tick = os.sysconf("SC_CLK_TCK")
    for name, pid in WATCHED.items():
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        spent[name] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return spent


def timed(action: Callable[[], object]) -> float:
    """Wall seconds of ``action``; its CPU seconds by process are left in ``CPU``."""
    before = cpu_seconds()
    start = time.perf_counter()
    action()
    elapsed = time.perf_counter() - start
    after = cpu_seconds()
    CPU.clear()
    CPU.update({name: after[name] - before[name] for name in after})
    return elapsed


def record(results: Results, name: str, action: Callable[[], object]) -> None:
    results[name] = timed(action)
    results[f"{name} cpu"] = sum(CPU.values())
    results.update({f"{name} cpu {who}": spent for who, spent in CPU.items()})


def pump(
    read_into: Callable[[bytearray], int | None], write: Callable[[memoryview], object], size: int = BUFFER
) -> None:
    """Move bytes from ``read_into`` to ``write`` through one reused buffer until the source ends."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    while count := read_into(buffer):
        write(view[:count])


def copy_file(source: Path, target: Path, fsync: bool) -> None:
    with source.open("rb", buffering=0) as reader, target.open("wb", buffering=0) as writer:
        pump(reader.readinto, writer.write)
        if fsync:
            os.fsync(writer.fileno())


def curl(*args: str) -> None:
    """Run curl; fail loudly on an HTTP error. ``-H Expect:``: no 100-continue round trip (same for all)."""
    argv = ["curl", "--silent", "--show-error", "--fail", "--noproxy", "*", "-H", "Expect:", *args]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def curl_put(url: str, source: Path, *headers: str) -> None:
    extra = [item for header in headers for item in ("-H", header)]
    curl("-T", str(source), *extra, url)


def curl_get(url: str, target: Path, *headers: str) -> None:
    extra = [item for header in headers for item in ("-H", header)]
    curl("-o", str(target), *extra, url)


POOL: list[Any] = []  # one urllib3 PoolManager, made on first use (urllib3 comes with the minio client)


def _pool() -> Any:
    if not POOL:
        import urllib3

        POOL.append(urllib3.PoolManager(timeout=urllib3.Timeout(connect=10, read=120), retries=False))
    return POOL[0]


def fields(headers: tuple[str, ...]) -> dict[str, str]:
    """``("Name: value", ...)``, the form curl takes, as the dict the Python clients take."""
    return dict(header.split(": ", 1) for header in headers)


def refused(method: str, url: str, status: int, body: bytes) -> SystemExit:
    return SystemExit(f"{method} {url} -> {status}: {body[:300]!r}")


def py_put(url: str, source: Path, *headers: str) -> None:
    """PUT ``source`` with urllib3, read and sent 1 MiB at a time, with its ``Content-Length``."""

    def body() -> Iterator[bytes]:
        with source.open("rb", buffering=0) as handle:
            while chunk := handle.read(MIB):
                yield chunk

    length = {"Content-Length": str(source.stat().st_size)}
    response = _pool().request("PUT", url, body=body(), headers=fields(headers) | length)
    if response.status >= 300:
        raise refused("PUT", url, response.status, response.data)


def py_get(url: str, target: Path, *headers: str) -> None:
    """GET ``url`` into ``target`` with urllib3, 1 MiB reads and writes (as the minio client round does)."""
    response = _pool().request("GET", url, headers=fields(headers), preload_content=False)
    try:
        if response.status >= 300:
            raise refused("GET", url, response.status, response.read())
        save(response, target)
    finally:
        response.release_conn()


def copy_get(url: str, target: Path, *headers: str) -> None:
    """GET ``url`` into ``target`` with the standard library's ``http.client``, in the plain file copy's
    loop: ``readinto`` one reused 4 MiB buffer, ``write`` it out (the copy, with a socket as its source)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=120)
    try:
        connection.request("GET", parts.path, headers=fields(headers))
        response = connection.getresponse()
        if response.status >= 300:
            raise refused("GET", url, response.status, response.read())
        with target.open("wb", buffering=0) as handle:
            pump(response.readinto, handle.write)
    finally:
        connection.close()


def save(response: Any, target: Path) -> None:
    """Write a urllib3 response's body to ``target``, 1 MiB at a time."""
    with target.open("wb") as handle:
        for part in response.stream(MIB):
            handle.write(part)


def check_same(a: Path, b: Path) -> None:
    if a.stat().st_size != b.stat().st_size:
        raise SystemExit(f"{b} has {b.stat().st_size} bytes, expected {a.stat().st_size}")


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


@contextmanager
def serving(answer: Callable[[socket.socket], None]) -> Iterator[str]:
    """A loopback server, in a thread, that reads each connection's request head and calls ``answer``."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)  # so that the thread sees ``stop`` (closing a socket does not wake accept)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    data = conn.recv(65536)
                    if not data:
                        break
                    request += data
                answer(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def raw_http_server(path: Path, zero_copy: bool) -> AbstractContextManager[str]:
    """A minimal HTTP/1.1 server that answers every GET with the bytes of ``path``, and nothing else."""

    def answer(conn: socket.socket) -> None:
        with path.open("rb", buffering=0) as handle:
            size = os.fstat(handle.fileno()).st_size
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
            conn.sendall(head.encode())
            if zero_copy:
                conn.sendfile(handle)
            else:
                pump(handle.readinto, conn.sendall)

    return serving(answer)


def relay_server(target: str, zero_copy: bool) -> AbstractContextManager[str]:
    """The cheapest second hop there is: every GET is answered by fetching ``target`` (a presigned
    MinIO URL) and passing MinIO's response on byte for byte, headers included, parsing nothing:
    ``recv_into`` one reused 1 MiB buffer and ``sendall`` it, or ``os.splice`` through a pipe (the
    bytes never enter user space). What any proxy pays for the hop itself, and no more."""
    parts = urlsplit(target)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n"

    def answer(conn: socket.socket) -> None:
        with socket.create_connection((host, port)) as upstream:
            upstream.sendall(request.encode())
            if zero_copy:
                read, write = os.pipe()
                try:
                    fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, MIB)
                    while moved := os.splice(upstream.fileno(), write, MIB):
                        while moved:
                            moved -= os.splice(read, conn.fileno(), moved)
                finally:
                    os.close(read)
                    os.close(write)
            else:
                pump(upstream.recv_into, conn.sendall, MIB)

    return serving(answer)


# ------------------------------------------------------------------- rounds ---


Step = tuple[str, Callable[[], object]]


def in_turn(
    results: Results, number: int, steps: list[Step], check: Callable[[], None] | None = None
) -> None:
    """Record ``steps`` (then ``check`` each's result), in order on even rounds and reversed on odd
    ones: whatever the machine is still doing after the step before (disk writeback after an
    upload, say) lands on each in turn."""
    for name, action in steps if number % 2 == 0 else reversed(steps):
        record(results, name, action)
        if check is not None:
            check()


def settle() -> None:
    """Between the uploads and the downloads: flush what the uploads left to the disk, and let it go quiet."""
    os.sync()
    time.sleep(1)


def local_round(number: int, workdir: Path, source: Path, appliance_url: str, blob_root: Path) -> Results:
    out = source.parent / "out.bin"
    results: Results = {}
    url = appliance_url + OBJECT
    in_turn(
        results,
        number,
        [
            ("upload direct (file write + fsync)", lambda: copy_file(source, workdir / "direct.bin", True)),
            ("upload appliance (urllib3)", lambda: py_put(url, source, AUTH)),
            ("upload appliance (curl)", lambda: curl_put(url, source, AUTH)),
        ],
    )
    (workdir / "direct.bin").unlink()
    blob = max(blob_root.rglob("*"), key=lambda p: p.stat().st_mtime if p.is_file() else 0)
    check_same(source, blob)
    settle()
    with raw_http_server(blob, False) as read_send, raw_http_server(blob, True) as sendfile:
        in_turn(
            results,
            number,
            [
                ("download appliance (http.client)", lambda: copy_get(url, out, AUTH)),
                ("download appliance (curl)", lambda: curl_get(url, out, AUTH)),
                ("download direct (plain file copy)", lambda: copy_file(blob, out, False)),
                ("download raw http (read+send, curl)", lambda: curl_get(read_send, out)),
                ("download raw http (sendfile, curl)", lambda: curl_get(sendfile, out)),
            ],
            check=lambda: check_same(source, out),
        )
    out.unlink()
    return results


def s3_round(
    number: int, workdir: Path, source: Path, appliance_url: str, endpoint: str, access: str, secret: str
) -> Results:
    from datetime import timedelta

    from minio import Minio

    client = Minio(endpoint, access_key=access, secret_key=secret, secure=False)
    if not client.bucket_exists("direct"):
        client.make_bucket("direct")
    out = source.parent / "out.bin"
    url = appliance_url + OBJECT
    put_url = client.presigned_put_object("direct", "curl.bin", expires=timedelta(hours=1))
    get_url = client.presigned_get_object("direct", "curl.bin", expires=timedelta(hours=1))
    results: Results = {}

    def minio_get() -> None:
        response = client.get_object("direct", "client.bin")
        try:
            save(response, out)
        finally:
            response.close()
            response.release_conn()

    in_turn(
        results,
        number,
        [
            (
                "upload direct (minio client)",
                lambda: client.fput_object("direct", "client.bin", str(source), part_size=16 * MIB),
            ),
            ("upload direct (curl, presigned)", lambda: curl_put(put_url, source)),
            ("upload appliance (urllib3)", lambda: py_put(url, source, AUTH)),
            ("upload appliance (curl)", lambda: curl_put(url, source, AUTH)),
        ],
    )
    settle()

    with relay_server(get_url, False) as relay, relay_server(get_url, True) as splice:
        in_turn(
            results,
            number,
            [
                ("download appliance (urllib3)", lambda: py_get(url, out, AUTH)),
                ("download appliance (curl)", lambda: curl_get(url, out, AUTH)),
                ("download direct (minio client)", minio_get),
                ("download direct (curl, presigned)", lambda: curl_get(get_url, out)),
                ("download bare relay (recv+send, urllib3)", lambda: py_get(relay, out)),
                ("download bare relay (splice, urllib3)", lambda: py_get(splice, out)),
            ],
            check=lambda: check_same(source, out),
        )
    out.unlink()
    return results


def minio_server(workdir: Path) -> tuple[AbstractContextManager[PeerProcess], str, str, str]:
    port, console = free_ports(2)
    access, secret = "bench-access", "bench-secret-key"
    env = {"MINIO_ROOT_USER": access, "MINIO_ROOT_PASSWORD": secret, "MINIO_UPDATE": "off"}
    argv = [find_tool("minio"), "server", str(workdir / "minio"), "--address", f"127.0.0.1:{port}"]
    argv += ["--console-address", f"127.0.0.1:{console}", "--certs-dir", str(workdir / "certs")]
    ready = f"http://127.0.0.1:{port}/minio/health/live"
    return running("minio", argv, workdir, lambda: http_ok(ready), env), f"127.0.0.1:{port}", access, secret


def report(backend: str, size: int, rounds: list[Results], growth: list[int]) -> None:
    def mbps(seconds: float) -> float:
        return size / MIB / seconds

    names = [name for name in rounds[0] if " cpu" not in name]
    print(f"\n{backend}: {size / MIB:.0f} MiB, {len(rounds)} round(s); MiB/s per round, then the median")
    for name in names:
        speeds = [mbps(r[name]) for r in rounds]
        cells = "  ".join(f"{s:7.0f}" for s in speeds)
        print(f"  {name:36} {cells}   median {statistics.median(speeds):7.0f}")

    def ratio(slower: str, faster: str) -> None:
        """One line: how fast ``slower`` went, as a fraction of ``faster``, same round."""
        ratios = [r[faster] / r[slower] for r in rounds]
        best = min(r[faster] for r in rounds) / min(r[slower] for r in rounds)
        cells = "  ".join(f"{x:7.2f}" for x in ratios)
        label = f"{slower} / {faster.partition(' ')[2]}"
        print(f"  {label:64} {cells}   median {statistics.median(ratios):5.2f}   best {best:5.2f}")

    print("  ratios (appliance / direct): per round, the median of those, and best round / best round")
    for direction in ("upload", "download"):
        ours = [name for name in names if name.startswith(f"{direction} appliance")]
        for name in names:
            if not name.startswith(direction) or name in ours:
                continue
            # a baseline that names its client is compared with the appliance through that client
            client = next((c for c in ("curl", "urllib3") if c in name.rpartition("(")[2]), None)
            for mine in [m for m in ours if client is None or f"({client}" in m]:
                ratio(mine, name)
    # what the hop alone costs: the bare relays against the minio client
    for hop in [name for name in names if "bare relay" in name]:
        ratio(hop, "download direct (minio client)")
    gib = size / 1024**3
    print(
        "  CPU seconds per GiB, all processes (curl, servers, this script), median; and that / the first appliance row's"
    )
    for direction in ("upload", "download"):
        reference = next(name for name in names if name.startswith(f"{direction} appliance"))
        appliance_cost = statistics.median(r[f"{reference} cpu"] for r in rounds) / gib
        for name in names:
            if name.startswith(direction):
                cost = statistics.median(r[f"{name} cpu"] for r in rounds) / gib
                parts = {
                    who: statistics.median(r[f"{name} cpu {who}"] for r in rounds) / gib
                    for who in ("curl", "bench", *WATCHED_NAMES)
                    if f"{name} cpu {who}" in rounds[0]
                }
                detail = ", ".join(f"{who} {spent:.2f}" for who, spent in parts.items() if spent >= 0.05)
                print(f"  {name:36} {cost:6.2f}   {cost / appliance_cost:5.2f}   ({detail})")
    print(f"  appliance peak RSS growth: {', '.join(f'{g / MIB:.1f}' for g in growth)} MiB (target < 100)")


def bench(
    backend: str,
    workdir: Path,
    source: Path,
    rounds: int,
    env: dict[str, str],
    direct: Callable[..., Results],
) -> None:
    data_dir = workdir / f"{backend}-data"
    results: list[Results] = []
    growth: list[int] = []
    with run_appliance(data_dir, {**ENV, **env}, timeout=60) as proc:
        WATCHED["appliance"] = proc.process.pid
        warm = workdir / "warm.bin"
        make_source(warm, 8 * MIB)
        curl_put(proc.url + OBJECT, warm, AUTH)
        curl_get(proc.url + OBJECT, source.parent / "out.bin", AUTH)
        warm.unlink()
        for number in range(rounds):
            print(f"{backend} round {number + 1}: {load()}", flush=True)
            before = peak_rss(proc.process.pid)
            if backend == "local":
                results.append(direct(number, workdir, source, proc.url, data_dir / "blobs"))
            else:
                results.append(direct(number, workdir, source, proc.url))
            growth.append(peak_rss(proc.process.pid) - before)
    del WATCHED["appliance"]
    report(backend, source.stat().st_size, results, growth)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size-mib", type=int, default=256, help="object size (default 256; the issue: 1024)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="rounds per backend (default 1)")
    parser.add_argument("--backend", choices=["local", "s3", "both"], default="both")
    parser.add_argument(
        "--memory-dir",
        default="/dev/shm",
        help="a tmpfs for the source file and the downloaded copies, so that disk writeback of the"
        " downloads does not add noise (default /dev/shm; the system temp dir when it is missing)",
    )
    args = parser.parse_args()
    if shutil.which("curl") is None:
        raise SystemExit("this benchmark drives every transfer with curl: install it (apt-get install curl)")
    size = args.size_mib * MIB
    print(f"object: {args.size_mib} MiB over loopback, client: curl {curl_version()}; {load()}")
    memory = args.memory_dir if args.memory_dir and Path(args.memory_dir).is_dir() else None
    with (
        tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp,
        tempfile.TemporaryDirectory(prefix="bench-storage-", dir=memory) as in_memory,
    ):
        workdir = Path(tmp)
        source = Path(in_memory) / "src.bin"
        print(f"source and download targets in {in_memory}, uploads stored under {tmp}")
        make_source(source, size)
        if args.backend in ("local", "both"):
            bench("local", workdir, source, args.rounds, {}, local_round)
        if args.backend in ("s3", "both"):
            server, endpoint, access, secret = minio_server(workdir)
            with server as minio:
                WATCHED["minio"] = minio.proc.pid
                env = {
                    "APPLIANCE_S3_ENDPOINT": endpoint,
                    "APPLIANCE_S3_ACCESS_KEY": access,
                    "APPLIANCE_S3_SECRET_KEY": secret,
                }

                def direct(number: int, workdir: Path, source: Path, url: str) -> Results:
                    return s3_round(number, workdir, source, url, endpoint, access, secret)

                bench("s3", workdir, source, args.rounds, env, direct)
    print(f"\nend: {load()}")


def curl_version() -> str:
    first = subprocess.run(["curl", "--version"], capture_output=True, text=True, check=True).stdout
    return first.split()[1]


if __name__ == "__main__":
    main()
