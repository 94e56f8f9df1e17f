"""Storage against a real ``appliance run`` process: flat memory, chunked 413, a writer killed mid-upload."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, ROOT_KEY
from tests.peers import MinioPeer
from tests.process import run_appliance

MIB = 1024 * 1024
ENV = {"APPLIANCE_ROOT_KEY": ROOT_KEY, "APPLIANCE_RATE_LIMIT_PER_KEY": "", "APPLIANCE_RATE_LIMIT_PER_IP": ""}
OBJECT = "/v1/buckets/media/objects/video.bin"


def peak_rss(pid: int) -> int:
    """The process's peak resident set size (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc")


def pattern(total: int, chunk: bytes) -> Iterator[bytes]:
    for index in range(total // len(chunk)):
        yield index.to_bytes(8, "big") + chunk[8:]


def leftovers(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "blobs").rglob("*") if p.is_file()]


@pytest.mark.parametrize(("backend", "limit_mib"), [("local", 40), ("s3", 100)])
def test_streaming_keeps_memory_flat(
    tmp_path: Path, request: pytest.FixtureRequest, backend: str, limit_mib: int
) -> None:
    size, chunk = 128 * MIB, bytes(range(256)) * 4096  # 1 MiB chunks
    env = dict(ENV)
    if backend == "s3":
        peer: MinioPeer = request.getfixturevalue("minio_peer")
        env |= {
            "APPLIANCE_S3_ENDPOINT": peer.endpoint,
            "APPLIANCE_S3_ACCESS_KEY": peer.access_key,
            "APPLIANCE_S3_SECRET_KEY": peer.secret_key,
            "APPLIANCE_S3_BUCKET_PREFIX": "memory-test",
        }
    with run_appliance(tmp_path / "data", env) as proc, httpx.Client(base_url=proc.url, timeout=60) as client:
        warm = client.put(OBJECT, content=pattern(4 * MIB, chunk), headers=ROOT)
        assert warm.status_code == 201, warm.text
        assert len(client.get(OBJECT, headers=ROOT).content) == 4 * MIB
        before = peak_rss(proc.process.pid)

        expected, expected_md5 = hashlib.sha256(), hashlib.md5()
        for part in pattern(size, chunk):
            expected.update(part)
            expected_md5.update(part)
        created = client.put(OBJECT, content=pattern(size, chunk), headers=ROOT)
        assert created.status_code == 201, created.text
        assert created.json()["size"] == size
        assert created.json()["etag"] in (expected.hexdigest(), expected_md5.hexdigest())  # as API.md allows

        received = hashlib.sha256()
        with client.stream("GET", OBJECT, headers=ROOT) as response:
            assert response.headers["content-length"] == str(size)
            for part in response.iter_bytes():
                received.update(part)
        assert received.hexdigest() == expected.hexdigest()
        growth = peak_rss(proc.process.pid) - before
    # 128 MiB went each way; buffering even a fraction of it would show here. The s3 adapter holds a
    # few 8 MiB multipart parts at a time.
    assert growth < limit_mib * MIB, f"peak RSS grew by {growth / MIB:.1f} MiB"


def test_chunked_upload_past_the_limit_is_413_and_leaves_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {**ENV, "APPLIANCE_STORAGE_MAX_OBJECT_BYTES": str(MIB)}
    chunk = b"z" * 65536
    with run_appliance(data_dir, env) as proc, httpx.Client(base_url=proc.url, timeout=30) as client:
        # A generator body goes out chunked, with no Content-Length: the limit must hold mid-stream.
        response = client.put(OBJECT, content=pattern(MIB + 65536, chunk), headers=ROOT)
        assert response.status_code == 413, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert client.get(OBJECT, headers=ROOT).status_code == 404
        assert client.get("/v1/buckets/media/objects", headers=ROOT).json()["items"] == []
        assert leftovers(data_dir) == []
        fits = client.put(OBJECT, content=pattern(MIB, chunk), headers=ROOT)
        assert fits.status_code == 201, fits.text


def test_a_writer_killed_mid_upload_leaves_no_partial_object(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    release = threading.Event()
    outcome: list[object] = []

    def body() -> Iterator[bytes]:
        yield b"a" * (2 * MIB)
        release.wait(30)  # hold the upload open until the server is dead
        yield b"b" * MIB

    def upload(url: str) -> None:
        try:
            outcome.append(httpx.put(url + OBJECT, content=body(), headers=ROOT, timeout=30))
        except httpx.HTTPError as exc:
            outcome.append(exc)

    with run_appliance(data_dir, ENV) as proc:
        writer = threading.Thread(target=upload, args=(proc.url,))
        writer.start()
        deadline = time.monotonic() + 15
        while not any(p.stat().st_size >= MIB for p in leftovers(data_dir)):
            assert time.monotonic() < deadline, "the upload never reached the disk"
            time.sleep(0.01)
        proc.process.kill()  # SIGKILL: no cleanup code runs
        proc.process.wait()
        release.set()
        writer.join(30)
        assert outcome and isinstance(outcome[0], httpx.HTTPError)
        assert leftovers(data_dir), "the partial upload should still be on disk before the restart"

    with run_appliance(data_dir, ENV) as proc, httpx.Client(base_url=proc.url, timeout=30) as client:
        assert client.get(OBJECT, headers=ROOT).status_code == 404
        assert client.get("/v1/buckets/media/objects", headers=ROOT).json()["items"] == []
        assert leftovers(data_dir) == []  # the temp file of the dead writer was swept at start


def test_a_client_that_disconnects_mid_upload_leaves_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with run_appliance(data_dir, ENV) as proc, httpx.Client(base_url=proc.url, timeout=30) as client:
        host, port = proc.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as raw:
            head = (
                f"PUT {OBJECT} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {ROOT['Authorization']}\r\n"
                f"Content-Length: {10 * MIB}\r\n\r\n"
            )
            raw.sendall(head.encode() + b"x" * (2 * MIB))
        deadline = time.monotonic() + 15
        while f"PUT {OBJECT} 400" not in proc.log():
            assert time.monotonic() < deadline, proc.log()[-2000:]
            time.sleep(0.01)
        assert "Traceback" not in proc.log()
        assert client.get(OBJECT, headers=ROOT).status_code == 404
        assert leftovers(data_dir) == []
