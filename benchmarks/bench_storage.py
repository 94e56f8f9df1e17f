"""Storage throughput: uploads and downloads through the appliance vs. the same bytes moved directly.

    .venv/bin/python benchmarks/bench_storage.py [--size-mib 256] [--backend local|s3|both]

For each backend, in the same run, on loopback:
  local: the appliance (``appliance run``, local blob store) vs. a plain file write (+fsync) and read;
  s3:    the appliance (``APPLIANCE_S3_ENDPOINT`` at a MinIO it starts) vs. the ``minio`` client
         talking straight to that MinIO.
Prints MB/s for each, the ratio (appliance / direct), and the appliance's peak RSS growth.
The issue's target: ratio >= 0.8 and RSS growth under 100 MB.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import ROOT, ROOT_KEY
from tests.peers import find_tool, free_ports, http_ok, running
from tests.process import run_appliance

MIB = 1024 * 1024
CHUNK = bytes(range(256)) * 4096  # 1 MiB
ENV = {"APPLIANCE_ROOT_KEY": ROOT_KEY, "APPLIANCE_RATE_LIMIT_PER_KEY": "", "APPLIANCE_RATE_LIMIT_PER_IP": ""}
OBJECT = "/v1/buckets/bench/objects/blob.bin"


def chunks(size: int) -> Iterator[bytes]:
    for index in range(size // MIB):
        yield index.to_bytes(8, "big") + CHUNK[8:]


def timed(action: Callable[[], int]) -> tuple[float, int]:
    start = time.perf_counter()
    moved = action()
    return time.perf_counter() - start, moved


def mbps(size: int, seconds: float) -> float:
    return size / MIB / seconds


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


# ------------------------------------------------------------------ direct ---


def direct_file(workdir: Path, size: int) -> tuple[float, float]:
    path = workdir / "direct.bin"

    def write() -> int:
        with path.open("wb") as handle:
            for part in chunks(size):
                handle.write(part)
            handle.flush()
            os.fsync(handle.fileno())
        return size

    def read() -> int:
        total = 0
        with path.open("rb") as handle:
            while part := handle.read(MIB):
                total += len(part)
        return total

    up, _ = timed(write)
    down, moved = timed(read)
    assert moved == size
    path.unlink()
    return up, down


class _Reader:
    """A file-like view of :func:`chunks` for the minio client's unknown-length upload."""

    def __init__(self, size: int) -> None:
        self._parts = chunks(size)
        self._buffer = b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buffer) < n:
            part = next(self._parts, None)
            if part is None:
                break
            self._buffer += part
        out, self._buffer = (self._buffer, b"") if n < 0 else (self._buffer[:n], self._buffer[n:])
        return out


def direct_minio(endpoint: str, access: str, secret: str, size: int) -> tuple[float, float]:
    from minio import Minio

    client = Minio(endpoint, access_key=access, secret_key=secret, secure=False)
    if not client.bucket_exists("direct"):
        client.make_bucket("direct")

    def write() -> int:
        client.put_object("direct", "blob.bin", _Reader(size), length=-1, part_size=8 * MIB)
        return size

    def read() -> int:
        response = client.get_object("direct", "blob.bin")
        try:
            return sum(len(part) for part in response.stream(MIB))
        finally:
            response.close()
            response.release_conn()

    up, _ = timed(write)
    down, moved = timed(read)
    assert moved == size
    return up, down


# --------------------------------------------------------------- appliance ---


def through_appliance(data_dir: Path, env: dict[str, str], size: int) -> tuple[float, float, int]:
    with (
        run_appliance(data_dir, {**ENV, **env}) as proc,
        httpx.Client(base_url=proc.url, timeout=120) as client,
    ):
        client.put(OBJECT, content=chunks(4 * MIB), headers=ROOT).raise_for_status()  # warm up
        client.get(OBJECT, headers=ROOT).raise_for_status()
        before = peak_rss(proc.process.pid)

        def write() -> int:
            response = client.put(OBJECT, content=chunks(size), headers=ROOT)
            response.raise_for_status()
            return int(response.json()["size"])

        def read() -> int:
            total = 0
            with client.stream("GET", OBJECT, headers=ROOT) as response:
                response.raise_for_status()
                for part in response.iter_bytes(MIB):
                    total += len(part)
            return total

        up, stored = timed(write)
        down, moved = timed(read)
        assert stored == moved == size
        growth = peak_rss(proc.process.pid) - before
    return up, down, growth


def minio_server(workdir: Path) -> tuple[AbstractContextManager[object], str, str, str]:
    port, console = free_ports(2)
    access, secret = "bench-access", "bench-secret-key"
    env = {"MINIO_ROOT_USER": access, "MINIO_ROOT_PASSWORD": secret, "MINIO_UPDATE": "off"}
    argv = [find_tool("minio"), "server", str(workdir / "minio"), "--address", f"127.0.0.1:{port}"]
    argv += ["--console-address", f"127.0.0.1:{console}", "--certs-dir", str(workdir / "certs")]
    ready = f"http://127.0.0.1:{port}/minio/health/live"
    return running("minio", argv, workdir, lambda: http_ok(ready), env), f"127.0.0.1:{port}", access, secret


def report(name: str, size: int, direct: tuple[float, float], appliance: tuple[float, float, int]) -> None:
    for label, base, ours in (("upload", direct[0], appliance[0]), ("download", direct[1], appliance[1])):
        print(
            f"{name:5} {label:8}  direct {mbps(size, base):8.1f} MB/s   appliance {mbps(size, ours):8.1f} MB/s"
            f"   ratio {base / ours:5.2f}"
        )
    print(f"{name:5} appliance peak RSS growth: {appliance[2] / MIB:.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size-mib", type=int, default=256, help="object size (default 256; the issue uses 1024)"
    )
    parser.add_argument("--backend", choices=["local", "s3", "both"], default="both")
    args = parser.parse_args()
    size = args.size_mib * MIB
    print(f"object size: {args.size_mib} MiB over loopback (the appliance also computes the MD5 ETag)")
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
        workdir = Path(tmp)
        if args.backend in ("local", "both"):
            direct = direct_file(workdir, size)
            ours = through_appliance(workdir / "local-data", {}, size)
            report("local", size, direct, ours)
        if args.backend in ("s3", "both"):
            server, endpoint, access, secret = minio_server(workdir)
            with server:
                direct = direct_minio(endpoint, access, secret, size)
                env = {
                    "APPLIANCE_S3_ENDPOINT": endpoint,
                    "APPLIANCE_S3_ACCESS_KEY": access,
                    "APPLIANCE_S3_SECRET_KEY": secret,
                }
                ours = through_appliance(workdir / "s3-data", env, size)
                report("s3", size, direct, ours)


if __name__ == "__main__":
    main()
