"""The embedded blob store: files under ``<data_dir>/blobs/<tenant>/<name>``.

An upload goes to ``blobs/.tmp/<tenant>.<pid>.<random>``, is fsynced, then renamed into place, so a
crash never leaves a partial blob under a real name. Temp files of processes that no longer exist
are removed at start. File I/O and hashing run in threads, a few MiB at a time, overlapping with
the network side (see :class:`_Sink` and :func:`_read`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import shutil
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from appliance.core.context import BackendStatus
from appliance.storage import BlobInfo, BlobNotFound, BlobPage, BlobStat, StorageUnavailable, check_blob_name

__all__ = ["LocalBlobStore"]

_BATCH = 1024 * 1024  # bytes handed to the writer and hasher threads at a time
_AHEAD = 8  # batches queued for them while the next one is received
_MAX_IOV = 256  # chunks per batch at most (one writev each), however small they are
_READ = 4 * 1024 * 1024  # bytes per read when serving
_TMP = ".tmp"


class LocalBlobStore:
    """Blobs as files; see the module docstring."""

    backend = "local"
    mode = "embedded"

    def __init__(self, root: Path) -> None:
        self.root = root
        self._tmp = root / _TMP

    def _path(self, tenant: str, name: str) -> Path:
        check_blob_name(tenant, name)
        return self.root / tenant / name

    async def start(self) -> None:
        await asyncio.to_thread(self._prepare)

    def _prepare(self) -> None:
        self._tmp.mkdir(parents=True, exist_ok=True)
        for leftover in self._tmp.iterdir():
            if not _owner_alive(leftover.name):
                leftover.unlink(missing_ok=True)

    async def close(self) -> None:
        return None

    async def put(self, tenant: str, name: str, chunks: AsyncIterable[bytes]) -> BlobInfo:
        final = self._path(tenant, name)
        temp = self._tmp / f"{tenant}.{os.getpid()}.{secrets.token_hex(8)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        fd = await asyncio.to_thread(os.open, temp, flags, 0o644)
        sink = _Sink(fd)
        stored = False
        try:
            size = await sink.consume(chunks)
            stored = True
        finally:
            # Always waits for the sink's threads before the descriptor closes (even when cancelled).
            await asyncio.shield(asyncio.to_thread(sink.close, None if stored else temp))
        try:
            await asyncio.to_thread(_publish, temp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
            raise
        return BlobInfo(size=size, etag=sink.digest.hexdigest())

    async def get(
        self, tenant: str, name: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        path = self._path(tenant, name)
        try:
            fd = await asyncio.to_thread(_open_for_reading, path)
        except FileNotFoundError:
            raise BlobNotFound(name) from None
        except OSError as exc:
            raise _unavailable(exc) from exc
        return _read(fd, offset, length)

    async def head(self, tenant: str, name: str) -> BlobStat:
        path = self._path(tenant, name)
        try:
            return BlobStat(size=(await asyncio.to_thread(path.stat)).st_size)
        except FileNotFoundError:
            raise BlobNotFound(name) from None

    async def delete(self, tenant: str, name: str) -> bool:
        path = self._path(tenant, name)
        return await asyncio.to_thread(_unlink, path, self.root / tenant)

    async def list(
        self, tenant: str, prefix: str = "", cursor: str | None = None, limit: int = 1000
    ) -> BlobPage:
        check_blob_name(tenant, "x")
        names = await asyncio.to_thread(_walk, self.root / tenant)
        names = [n for n in names if n.startswith(prefix) and (cursor is None or n > cursor)]
        page = names[:limit]
        return BlobPage(names=page, next_cursor=page[-1] if len(names) > limit else None)

    async def delete_tenant(self, tenant: str) -> int:
        check_blob_name(tenant, "x")
        return await asyncio.to_thread(self._remove_tenant, tenant)

    def _remove_tenant(self, tenant: str) -> int:
        count = len(_walk(self.root / tenant))
        shutil.rmtree(self.root / tenant, ignore_errors=True)
        for temp in self._tmp.glob(f"{tenant}.*"):
            temp.unlink(missing_ok=True)
        return count

    async def health(self) -> BackendStatus:
        usage = await asyncio.to_thread(shutil.disk_usage, self.root)
        free_gib = usage.free / 1024**3
        ok = os.access(self.root, os.W_OK)
        detail = (
            f"{self.root} ({free_gib:.1f} GiB free)"
            if ok
            else f"{self.root} is not writable: fix its permissions"
        )
        return BackendStatus(name="storage", backend=self.backend, mode="embedded", ok=ok, detail=detail)


def _owner_alive(temp_name: str) -> bool:
    """Whether the process that named a temp file ``<tenant>.<pid>.<random>`` is still running."""
    try:
        pid = int(temp_name.split(".")[1])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return False  # a previous life of this pid: we have not written anything yet
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Sink:
    """Writes and hashes an upload off the event loop, while the loop goes on receiving it.

    The loop gathers the incoming chunks into batches of about ``_BATCH`` bytes (at most ``_MAX_IOV``
    chunks) and hands each batch to two single-thread executors, one writing it (``os.writev``: no
    copy into a joined buffer) and one hashing it (SHA-256, the ETag), so receiving, writing and
    hashing overlap. At most ``_AHEAD`` batches wait on the threads: memory stays around
    ``(_AHEAD + 1) * _BATCH`` whatever the size of the upload.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.digest = hashlib.sha256()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="blob-write")
        self._hasher = ThreadPoolExecutor(1, thread_name_prefix="blob-hash")
        self._pending: deque[tuple[Future[None], Future[None]]] = deque()

    async def consume(self, chunks: AsyncIterable[bytes]) -> int:
        """Write all of ``chunks``, then fsync; the number of bytes written."""
        size = 0
        batch: list[bytes] = []
        held = 0
        async for chunk in chunks:
            batch.append(chunk)
            held += len(chunk)
            if held >= _BATCH or len(batch) >= _MAX_IOV:
                await self._submit(batch)
                size += held
                batch, held = [], 0
        if batch:
            await self._submit(batch)
            size += held
        while self._pending:
            await self._wait_oldest()
        await asyncio.wrap_future(self._writer.submit(os.fsync, self.fd))
        return size

    async def _submit(self, batch: list[bytes]) -> None:
        while len(self._pending) >= _AHEAD:
            await self._wait_oldest()
        written = self._writer.submit(_write_all, self.fd, batch)
        hashed = self._hasher.submit(_hash_all, self.digest, batch)
        self._pending.append((written, hashed))

    async def _wait_oldest(self) -> None:
        written, hashed = self._pending.popleft()
        await asyncio.wrap_future(written)  # raises the write's error (disk full...)
        await asyncio.wrap_future(hashed)

    def close(self, remove: Path | None) -> None:
        """Wait for (or cancel) the threads' work, close the file, and delete it if ``remove`` is given."""
        for executor in (self._writer, self._hasher):
            executor.shutdown(wait=True, cancel_futures=remove is not None)
        os.close(self.fd)
        if remove is not None:
            with contextlib.suppress(OSError):
                remove.unlink(missing_ok=True)


def _write_all(fd: int, batch: list[bytes]) -> None:
    views = [memoryview(chunk) for chunk in batch if chunk]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views.pop(0))
        if written:
            views[0] = views[0][written:]


def _hash_all(digest: hashlib._Hash, batch: list[bytes]) -> None:
    for chunk in batch:
        digest.update(chunk)  # releases the GIL for all but tiny chunks


def _open_for_reading(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    with contextlib.suppress(OSError):  # a hint only: bigger kernel read-ahead for a sequential read
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    return fd


def _publish(temp: Path, final: Path) -> None:
    for attempt in range(3):
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(temp, final)
            break
        except FileNotFoundError:
            # A concurrent delete tidied the (empty) directory away between mkdir and rename.
            if attempt == 2 or not temp.exists():
                raise
    # The rename is durable only once the directory entry is on disk.
    directory = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


async def _read(fd: int, offset: int, length: int | None) -> AsyncIterator[bytes]:
    """``length`` bytes (all, when ``None``) from ``offset``, reading the next chunk while this one is sent."""
    position = offset
    remaining = length if length is not None else -1

    def next_read() -> asyncio.Future[bytes] | None:
        if remaining == 0:
            return None
        want = _READ if remaining < 0 else min(_READ, remaining)
        return asyncio.ensure_future(asyncio.to_thread(os.pread, fd, want, position))

    ahead = next_read()
    try:
        while ahead is not None:
            chunk = await asyncio.shield(ahead)  # cancelled or not, the read in its thread runs to its end
            ahead = None
            if not chunk:
                break
            position += len(chunk)
            if remaining > 0:
                remaining -= len(chunk)
            ahead = next_read()
            yield chunk
    finally:
        if ahead is None or ahead.done():
            _close_after(ahead, fd)
        else:  # a read is still running in a thread: close the file once it is done with it
            ahead.add_done_callback(lambda done: _close_after(done, fd))


def _close_after(read: asyncio.Future[bytes] | None, fd: int) -> None:
    if read is not None and not read.cancelled():
        read.exception()  # an unused read's error is of no interest; fetching it keeps asyncio quiet
    os.close(fd)  # closing a regular file does not block


def _unlink(path: Path, stop: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    # Tidy empty shard and bucket directories, never above the tenant's own.
    parent = path.parent
    while parent != stop and parent.is_relative_to(stop):
        try:
            parent.rmdir()
        except OSError:
            break
        parent = parent.parent
    return True


def _walk(base: Path) -> list[str]:
    if not base.is_dir():
        return []
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())


def _unavailable(exc: OSError) -> StorageUnavailable:
    return StorageUnavailable(f"local object storage cannot read its files: {exc.strerror or exc}")
