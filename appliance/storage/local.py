"""The embedded blob store: files under ``<data_dir>/blobs/<tenant>/<name>``.

An upload goes to ``blobs/.tmp/<tenant>.<pid>.<random>``, is fsynced, then renamed into place, so a
crash never leaves a partial blob under a real name. Temp files of processes that no longer exist
are removed at start. File I/O runs in threads, one buffer (1 MiB) at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import shutil
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import BinaryIO

from appliance.core.context import BackendStatus
from appliance.storage import BlobInfo, BlobNotFound, BlobPage, BlobStat, StorageUnavailable, check_blob_name

__all__ = ["LocalBlobStore"]

_BUFFER = 1024 * 1024
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
        digest = hashlib.md5(usedforsecurity=False)
        size = 0
        try:
            handle = await asyncio.to_thread(_create, temp)
            try:
                pending: list[bytes] = []
                held = 0
                async for chunk in chunks:
                    pending.append(chunk)
                    held += len(chunk)
                    if held >= _BUFFER:
                        await _write(handle, digest, b"".join(pending))
                        size += held
                        pending, held = [], 0
                await _write(handle, digest, b"".join(pending))
                size += held
                await asyncio.to_thread(os.fsync, handle.fileno())
            finally:
                await asyncio.to_thread(handle.close)
            await asyncio.to_thread(_publish, temp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
            raise
        return BlobInfo(size=size, etag=digest.hexdigest())

    async def get(
        self, tenant: str, name: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        path = self._path(tenant, name)
        try:
            handle = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError:
            raise BlobNotFound(name) from None
        except OSError as exc:
            raise _unavailable(exc) from exc
        return _read(handle, offset, length)

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


def _create(path: Path) -> BinaryIO:
    return path.open("xb")


async def _write(handle: BinaryIO, digest: hashlib._Hash, data: bytes) -> None:
    # Hashing and writing both release the GIL: run them side by side.
    await asyncio.gather(asyncio.to_thread(digest.update, data), asyncio.to_thread(handle.write, data))


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


async def _read(handle: BinaryIO, offset: int, length: int | None) -> AsyncIterator[bytes]:
    try:
        await asyncio.to_thread(handle.seek, offset)
        remaining = length if length is not None else -1
        while remaining != 0:
            want = _BUFFER if remaining < 0 else min(_BUFFER, remaining)
            chunk = await asyncio.to_thread(handle.read, want)
            if not chunk:
                break
            remaining -= len(chunk) if remaining > 0 else 0
            yield chunk
    finally:
        await asyncio.to_thread(handle.close)


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
