"""The server blob store: MinIO, or AWS S3 unchanged, through ``miniopy-async``.

All tenants share one physical bucket (``APPLIANCE_S3_BUCKET_PREFIX``, created at start if missing);
every object name is ``<tenant>/<name>``, built in one place (:meth:`S3BlobStore._object`) from a
validated tenant id, so one tenant's calls cannot address another's objects.

Uploads of unknown length go up as multipart uploads in 8 MiB parts, two in flight while the next
is read (the ETag, a SHA-256 of the content, is computed in a thread of its own), so memory stays
around a few parts. Each part (and a small object's single PUT) goes with a CRC32C checksum in a
signed ``x-amz-checksum-crc32c`` header and an ``UNSIGNED-PAYLOAD`` signature: S3 and MinIO check
the bytes against the checksum and reject a part that does not match, so every byte is still
verified end to end while the appliance hashes it only once with a cryptographic hash (see
:class:`_Client`);
downloads are one streamed GET, passed on in the pieces aiohttp reads (up to 256 KiB), with up to
``_READ_BUFFER`` read ahead of a slow client (regrouping the pieces into 1 MiB ones, and a 1 MiB
read-ahead, were measured: a copy of every byte and more pauses of the MinIO connection, 5-10%
slower; concurrent ranged GETs cost more CPU per GiB, MinIO's and ours, than they save in waiting,
so they were slower too); a failed or oversized upload is aborted, leaving no
object (a killed process leaves an incomplete upload, which is invisible and which MinIO expires
after 24 hours; on AWS add an ``AbortIncompleteMultipartUpload`` lifecycle rule).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import re
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Any, BinaryIO, NamedTuple

import aiohttp
import aiohttp.abc
import aiohttp.payload
import crc32c
from aiohttp.typedefs import LooseHeaders
from miniopy_async.api import Minio
from miniopy_async.credentials.credentials import Credentials
from miniopy_async.deleteobjects import DeleteObject
from miniopy_async.error import MinioException, S3Error
from miniopy_async.helpers import DictType, md5sum_hash
from miniopy_async.xml import Element, SubElement, getbytes

from appliance.config import ConfigError, Settings
from appliance.core.context import BackendStatus
from appliance.storage import BlobInfo, BlobNotFound, BlobPage, BlobStat, StorageUnavailable, check_blob_name

__all__ = ["S3BlobStore"]

PART_SIZE = 8 * 1024 * 1024  # S3 wants >= 5 MiB for every part but the last
_READ_BUFFER = 2 * 1024 * 1024  # a download reads ahead at most twice this much (aiohttp's flow control)
_IN_FLIGHT = 2  # parts uploading while the next is read
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_MISSING = {"NoSuchKey", "NoSuchObject", "ResourceNotFound"}
_CHECKSUM = "x-amz-checksum-crc32c"


class S3BlobStore:
    """Blobs as S3 objects; see the module docstring."""

    backend = "s3"
    mode = "server"

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        region: str = "us-east-1",
        secure: bool = False,
        timeout: float = 30.0,
    ) -> None:
        self.endpoint = endpoint
        self.bucket = bucket
        self._timeout = timeout
        self._client = _Client(
            endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region
        )
        self._bucket_ready = False

    @classmethod
    def from_settings(cls, settings: Settings) -> S3BlobStore:
        if not _BUCKET.match(settings.s3_bucket_prefix):
            raise ConfigError(
                f"APPLIANCE_S3_BUCKET_PREFIX={settings.s3_bucket_prefix!r} is not a valid S3 bucket name:"
                " use 3-63 lowercase letters, digits, dots and dashes"
            )
        return cls(
            settings.s3_endpoint,
            settings.s3_access_key,
            settings.s3_secret_key,
            settings.s3_bucket_prefix,
            region=settings.s3_region,
            secure=settings.s3_secure,
        )

    def _object(self, tenant: str, name: str) -> str:
        check_blob_name(tenant, name)
        return f"{tenant}/{name}"

    def _unavailable(self, exc: BaseException) -> StorageUnavailable:
        reason = exc.message if isinstance(exc, S3Error) else (str(exc) or type(exc).__name__)
        return StorageUnavailable(
            f"object storage (s3 at {self.endpoint}, bucket {self.bucket!r}) is unavailable: {reason}"
        )

    async def start(self) -> None:
        # A session of our own: bounded connect/read timeouts, and no silent retries that would
        # turn "MinIO is down" into a minute-long hang instead of a prompt 503.
        timeout = aiohttp.ClientTimeout(connect=self._timeout, sock_read=self._timeout)
        self._client.set_session(aiohttp.ClientSession(timeout=timeout, read_bufsize=_READ_BUFFER))
        with contextlib.suppress(StorageUnavailable):
            await self._ensure_bucket()

    async def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        try:
            if not await self._client.bucket_exists(self.bucket):
                with contextlib.suppress(S3Error):  # another node created it first
                    await self._client.make_bucket(self.bucket)
        except (MinioException, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._unavailable(exc) from exc
        self._bucket_ready = True

    async def close(self) -> None:
        await self._client.close_session()  # type: ignore[no-untyped-call]

    async def put(self, tenant: str, name: str, chunks: AsyncIterable[bytes]) -> BlobInfo:
        key = self._object(tenant, name)
        await self._ensure_bucket()
        hasher = _Hasher()
        size = 0
        parts = _parts(chunks, hasher)
        try:
            first = await anext(parts, _Part([], 0))
            second = await anext(parts, None)
            if second is None:
                size = first.size
                headers: DictType = {
                    "Content-Type": "application/octet-stream",
                    _CHECKSUM: await _crc32c(first),
                }
                await self._client._put_object(self.bucket, key, first, headers)
            else:
                size = await self._multipart(key, first, second, parts)
            etag = await hasher.hexdigest()
        except (MinioException, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._unavailable(exc) from exc
        finally:
            await parts.aclose()
            hasher.close()
        return BlobInfo(size=size, etag=etag)

    async def _multipart(self, key: str, first: _Part, second: _Part, rest: AsyncIterator[_Part]) -> int:
        # The client's own multipart steps (what its put_object uses), so that parts can upload
        # concurrently and still be completed in part-number order.
        client = self._client
        headers: DictType = {"Content-Type": "application/octet-stream", "x-amz-checksum-algorithm": "CRC32C"}
        upload_id = await client._create_multipart_upload(self.bucket, key, headers)
        size = 0
        in_flight: list[asyncio.Task[_UploadedPart]] = []
        done: list[_UploadedPart] = []
        try:
            number = 0
            part: _Part | None = first
            upcoming: _Part | None = second
            while part is not None:
                number += 1
                if len(in_flight) >= _IN_FLIGHT:
                    done.append(await in_flight.pop(0))  # at most _IN_FLIGHT parts held while reading on
                in_flight.append(asyncio.ensure_future(self._upload_part(key, upload_id, number, part)))
                size += part.size
                part, upcoming = upcoming, (await anext(rest, None) if upcoming is not None else None)
            done += [await task for task in in_flight]
            await self._complete(key, upload_id, done)
        except BaseException:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.shield(client._abort_multipart_upload(self.bucket, key, upload_id))
            raise
        return size

    async def _upload_part(self, key: str, upload_id: str, number: int, part: _Part) -> _UploadedPart:
        checksum = await _crc32c(part)
        headers: DictType = {_CHECKSUM: checksum}
        etag = await self._client._upload_part(self.bucket, key, part, headers, upload_id, number)
        return _UploadedPart(number, etag, checksum)

    async def _complete(self, key: str, upload_id: str, parts: list[_UploadedPart]) -> None:
        """CompleteMultipartUpload with each part's checksum (required once the upload declared CRC32C)."""
        element = Element("CompleteMultipartUpload")
        for part in parts:
            tag = SubElement(element, "Part")
            SubElement(tag, "PartNumber", str(part.number))
            SubElement(tag, "ETag", f'"{part.etag}"')
            SubElement(tag, "ChecksumCRC32C", part.checksum)
        body = getbytes(element)
        headers: DictType = {"Content-Type": "application/xml", "Content-MD5": str(md5sum_hash(body))}
        response = await self._client._execute(
            "POST", self.bucket, key, body=body, headers=headers, query_params={"uploadId": upload_id}
        )
        answer = await response.read()
        response.release()
        if b"<Error>" in answer:  # S3 may report a failed completion in a 200 response
            raise MinioException(f"CompleteMultipartUpload failed: {answer[:500]!r}")

    async def get(
        self, tenant: str, name: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        key = self._object(tenant, name)
        if length == 0:
            await self.head(tenant, name)
            return _empty()
        try:
            response = await self._client.get_object(self.bucket, key, offset=offset, length=length or 0)
        except S3Error as exc:
            if exc.code in _MISSING:
                raise BlobNotFound(name) from None
            raise self._unavailable(exc) from exc
        except (MinioException, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._unavailable(exc) from exc
        return _body(response)

    async def head(self, tenant: str, name: str) -> BlobStat:
        key = self._object(tenant, name)
        try:
            stat = await self._client.stat_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in _MISSING:
                raise BlobNotFound(name) from None
            raise self._unavailable(exc) from exc
        except (MinioException, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._unavailable(exc) from exc
        return BlobStat(size=int(stat.size or 0))

    async def delete(self, tenant: str, name: str) -> bool:
        key = self._object(tenant, name)
        try:
            await self._client.remove_object(self.bucket, key)
        except (MinioException, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._unavailable(exc) from exc
        return True

    async def list(
        self, tenant: str, prefix: str = "", cursor: str | None = None, limit: int = 1000
    ) -> BlobPage:
        check_blob_name(tenant, "x")
        base = f"{tenant}/"
        names: list[str] = []
        try:
            await self._ensure_bucket()
            listing = self._client.list_objects(
                self.bucket,
                prefix=base + prefix,
                recursive=True,
                start_after=base + cursor if cursor else None,
            )
            async for item in listing:
                names.append(str(item.object_name)[len(base) :])
                if len(names) > limit:
                    break
        except (MinioException, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._unavailable(exc) from exc
        page = names[:limit]
        return BlobPage(names=page, next_cursor=page[-1] if len(names) > limit else None)

    async def delete_tenant(self, tenant: str) -> int:
        count = 0
        cursor: str | None = None
        while True:
            page = await self.list(tenant, cursor=cursor, limit=1000)
            if page.names:
                await self._remove_many([self._object(tenant, n) for n in page.names])
                count += len(page.names)
            if page.next_cursor is None:
                return count
            cursor = page.next_cursor

    async def _remove_many(self, keys: Sequence[str]) -> None:
        try:
            errors = [
                e async for e in self._client.remove_objects(self.bucket, [DeleteObject(k) for k in keys])
            ]
        except (MinioException, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._unavailable(exc) from exc
        if errors:
            raise StorageUnavailable(f"object storage (s3 at {self.endpoint}) refused to delete: {errors[0]}")

    async def health(self) -> BackendStatus:
        try:
            await self._client.bucket_exists(self.bucket)
        except (MinioException, aiohttp.ClientError, OSError, TimeoutError) as exc:
            detail = f"{self._unavailable(exc).detail}; check APPLIANCE_S3_ENDPOINT and that the server runs"
            return BackendStatus(name="storage", backend="s3", mode="server", ok=False, detail=detail)
        return BackendStatus(
            name="storage", backend="s3", mode="server", ok=True, detail=f"{self.endpoint}/{self.bucket}"
        )


class _Client(Minio):
    """The ``Minio`` client, except that a request carrying an ``x-amz-checksum-crc32c`` header is
    signed with ``UNSIGNED-PAYLOAD`` instead of the SHA-256 of its body.

    The header is signed like every other, and S3 and MinIO reject a body whose CRC32C does not
    match it (a 400 naming the checksum), so the upload stays verified end to end; what goes is a
    second pass of SHA-256 over every byte (the first is the ETag's), the costliest step of an
    upload after the sockets. The CRC32C runs at several GB/s in hardware.
    A CRC is no defence against someone rewriting traffic on the wire; neither is plain HTTP for
    downloads, whose bytes S3 never signs: where the link to S3 is not trusted, use TLS
    (``APPLIANCE_S3_SECURE``), as AWS's own SDKs do when they send ``UNSIGNED-PAYLOAD``.
    """

    async def _build_headers(
        self,
        host: str,
        headers: LooseHeaders | DictType | None,
        body: bytes | BinaryIO | None,
        creds: Credentials | None,
    ) -> tuple[dict[str, str], datetime]:
        if headers is None or _CHECKSUM not in headers or not isinstance(body, _Part):
            return await super()._build_headers(host, headers, body, creds)
        built, date = await super()._build_headers(host, headers, None, creds)  # no body: nothing hashed
        built["Content-Length"] = str(body.size)
        if creds:
            built["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD"
        return built, date


class _Part(io.BytesIO):
    """A part: the chunks of the body as they were received, never joined (a copy of every byte saved).

    A ``BytesIO`` only to match the client's signatures; :class:`_PartPayload` is how aiohttp
    sends it: the chunks themselves, handed to the transport one by one (which keeps references
    to what the socket has not taken yet, no copies), instead of aiohttp's 256 KiB copies of a
    ``BytesIO``.
    """

    def __init__(self, chunks: list[bytes], size: int) -> None:
        super().__init__()
        self.chunks = chunks
        self.size = size


class _PartPayload(aiohttp.payload.Payload):
    _value: _Part

    def __init__(self, value: _Part, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("content_type", "application/octet-stream")
        super().__init__(value, *args, **kwargs)
        self._size = value.size

    async def write(self, writer: aiohttp.abc.AbstractStreamWriter) -> None:
        # An empty write first sends the headers on their own: aiohttp would otherwise join them
        # with the first chunk (on Python < 3.12.9 it joins instead of using writelines).
        await writer.write(b"")
        for chunk in self._value.chunks:
            await writer.write(chunk)

    async def write_with_length(
        self, writer: aiohttp.abc.AbstractStreamWriter, content_length: int | None
    ) -> None:
        if content_length is not None and content_length != self._size:
            raise ValueError(f"a part of {self._size} bytes cannot be sent as {content_length}")
        await self.write(writer)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(self._value.chunks).decode(encoding, errors)


aiohttp.payload.register_payload(_PartPayload, _Part)


class _UploadedPart(NamedTuple):
    number: int
    etag: str
    checksum: str  # base64 of the part's big-endian CRC32C


async def _crc32c(part: _Part) -> str:
    """The base64 CRC32C S3 expects in ``x-amz-checksum-crc32c`` (computed off the loop, without the GIL)."""
    value = await asyncio.to_thread(_crc32c_of, part.chunks)
    return base64.b64encode(value.to_bytes(4, "big")).decode()


def _crc32c_of(chunks: list[bytes]) -> int:
    value = 0
    for chunk in chunks:
        value = crc32c.crc32c(chunk, value)
    return value


class _Hasher:
    """The upload's SHA-256 (its ETag), computed part by part, in order, in a thread of its own (off the event loop).

    One task per part (the thread's work is queued once per 8 MiB, not once per chunk), and
    at most ``_IN_FLIGHT`` parts waiting to be hashed, so a starved hashing thread cannot make the
    upload hold more parts in memory.
    """

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="blob-hash")
        self._queued: deque[Future[None]] = deque()

    async def add(self, part: _Part) -> None:
        while len(self._queued) >= _IN_FLIGHT:
            await asyncio.wrap_future(self._queued.popleft())
        self._queued.append(self._thread.submit(_update, self._digest, part.chunks))

    async def hexdigest(self) -> str:
        while self._queued:
            await asyncio.wrap_future(self._queued.popleft())
        return self._digest.hexdigest()

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)


def _update(digest: hashlib._Hash, chunks: list[bytes]) -> None:
    for chunk in chunks:
        digest.update(chunk)  # releases the GIL for all but tiny chunks


async def _parts(chunks: AsyncIterable[bytes], hasher: _Hasher) -> AsyncGenerator[_Part, None]:
    """Regroup ``chunks`` into parts of at least ``PART_SIZE`` (the last may be shorter), hashing them."""
    pending: list[bytes] = []
    held = 0
    async for chunk in chunks:
        pending.append(chunk)
        held += len(chunk)
        if held >= PART_SIZE:  # parts may differ in size; S3 only wants >= 5 MiB
            part = _Part(pending, held)
            await hasher.add(part)
            yield part
            pending, held = [], 0
    if pending:
        part = _Part(pending, held)
        await hasher.add(part)
        yield part


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


async def _body(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The response's bytes, in the pieces aiohttp receives them (passed on as they are: no copy)."""
    try:
        async for chunk, _ in response.content.iter_chunks():
            if chunk:
                yield chunk
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise StorageUnavailable(f"object storage connection broke mid-download: {exc}") from exc
    finally:
        response.release()
        response.close()
