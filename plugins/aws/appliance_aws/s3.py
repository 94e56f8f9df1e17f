"""``aws-s3``: the storage port on Amazon S3, through aiobotocore.

All tenants share one bucket (``APPLIANCE_AWS_S3_BUCKET``, else ``APPLIANCE_S3_BUCKET_PREFIX``), created in
the region at start if missing; every key is ``<tenant>/<name>``, built in one place (:meth:`_key`) from a
validated tenant id and blob name. What AWS needs that MinIO does not: the region (from the AWS chain),
virtual-host addressing, and server-side encryption (``APPLIANCE_AWS_S3_SSE=AES256`` or ``aws:kms`` with
``APPLIANCE_AWS_S3_KMS_KEY_ID``) applied to every object written.

Uploads of unknown length go up in 8 MiB multipart parts, two in flight while the next is read; a failed
upload is aborted and leaves no object (add an ``AbortIncompleteMultipartUpload`` lifecycle rule for
uploads a killed process leaves behind).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from typing import Any

from appliance.core.context import BackendStatus
from appliance.storage import BlobInfo, BlobNotFound, BlobPage, BlobStat, StorageUnavailable, check_blob_name
from appliance_aws._aws import AWS_ERRORS, AwsClients, error_code, reason
from appliance_aws.health import aws_status

__all__ = ["PART_SIZE", "S3BlobStore"]

PART_SIZE = 8 * 1024 * 1024  # S3 wants >= 5 MiB for every part but the last
_READ_CHUNK = 1024 * 1024
_IN_FLIGHT = 2
_MISSING = {"NoSuchKey", "404", "NotFound"}
SSE_MODES = ("", "AES256", "aws:kms")


class S3BlobStore:
    """Blobs as objects of one S3 bucket; see the module docstring."""

    backend = "aws-s3"
    mode = "server"

    def __init__(self, clients: AwsClients, bucket: str, sse: str = "", kms_key_id: str = "") -> None:
        if sse not in SSE_MODES:
            raise ValueError(f"APPLIANCE_AWS_S3_SSE={sse!r} is not one of AES256, aws:kms (or empty)")
        self.clients = clients
        self.bucket = bucket
        self._sse: dict[str, str] = {}
        if sse:
            self._sse["ServerSideEncryption"] = sse
        if sse == "aws:kms" and kms_key_id:
            self._sse["SSEKMSKeyId"] = kms_key_id
        self._bucket_ready = False

    def _key(self, tenant: str, name: str) -> str:
        check_blob_name(tenant, name)
        return f"{tenant}/{name}"

    def _unavailable(self, exc: BaseException) -> StorageUnavailable:
        return StorageUnavailable(
            f"object storage (aws-s3, bucket {self.bucket!r} in {self.clients.region}) is unavailable: {reason(exc)}"
        )

    async def _s3(self) -> Any:
        return await self.clients.client("s3")

    async def start(self) -> None:
        with contextlib.suppress(StorageUnavailable):
            await self._ensure_bucket()

    async def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        try:
            s3 = await self._s3()
            try:
                await s3.head_bucket(Bucket=self.bucket)
            except AWS_ERRORS as exc:
                if error_code(exc) not in _MISSING and error_code(exc) != "NoSuchBucket":
                    raise
                create: dict[str, Any] = {"Bucket": self.bucket}
                if self.clients.region != "us-east-1":
                    create["CreateBucketConfiguration"] = {"LocationConstraint": self.clients.region}
                try:
                    await s3.create_bucket(**create)
                except AWS_ERRORS as exc2:  # another node created it first
                    if error_code(exc2) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise
        except AWS_ERRORS as exc:
            raise self._unavailable(exc) from exc
        self._bucket_ready = True

    async def close(self) -> None:
        await self.clients.close()

    async def put(self, tenant: str, name: str, chunks: AsyncIterable[bytes]) -> BlobInfo:
        key = self._key(tenant, name)
        digest = hashlib.sha256()
        parts = _parts(chunks, digest)
        try:
            first = await anext(parts, b"")
            second = await anext(parts, None)
            await self._ensure_bucket()
            s3 = await self._s3()
            if second is None:
                size = len(first)
                await s3.put_object(Bucket=self.bucket, Key=key, Body=first, **self._sse)
            else:
                size = await self._multipart(s3, key, first, second, parts)
        except AWS_ERRORS as exc:
            raise self._unavailable(exc) from exc
        finally:
            await parts.aclose()
        return BlobInfo(size=size, etag=digest.hexdigest())

    async def _multipart(
        self, s3: Any, key: str, first: bytes, second: bytes, rest: AsyncIterator[bytes]
    ) -> int:
        created = await s3.create_multipart_upload(
            Bucket=self.bucket, Key=key, ContentType="application/octet-stream", **self._sse
        )
        upload_id = created["UploadId"]
        size = 0
        in_flight: list[asyncio.Task[dict[str, Any]]] = []
        done: list[dict[str, Any]] = []
        try:
            number = 0
            part: bytes | None = first
            upcoming: bytes | None = second
            while part is not None:
                number += 1
                if len(in_flight) >= _IN_FLIGHT:
                    done.append(await in_flight.pop(0))
                in_flight.append(asyncio.ensure_future(self._upload_part(s3, key, upload_id, number, part)))
                size += len(part)
                part, upcoming = upcoming, (await anext(rest, None) if upcoming is not None else None)
            done += [await task for task in in_flight]
            await s3.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": done}
            )
        except BaseException:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
                )
            raise
        return size

    async def _upload_part(
        self, s3: Any, key: str, upload_id: str, number: int, data: bytes
    ) -> dict[str, Any]:
        answer = await s3.upload_part(
            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
        )
        return {"PartNumber": number, "ETag": answer["ETag"]}

    async def get(
        self, tenant: str, name: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        key = self._key(tenant, name)
        if length == 0:
            await self.head(tenant, name)
            return _empty()
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            request["Range"] = f"bytes={offset}-{end}"
        try:
            s3 = await self._s3()
            answer = await s3.get_object(**request)
        except AWS_ERRORS as exc:
            if error_code(exc) in _MISSING:
                raise BlobNotFound(name) from None
            raise self._unavailable(exc) from exc
        return _body(answer["Body"])

    async def head(self, tenant: str, name: str) -> BlobStat:
        key = self._key(tenant, name)
        try:
            s3 = await self._s3()
            answer = await s3.head_object(Bucket=self.bucket, Key=key)
        except AWS_ERRORS as exc:
            if error_code(exc) in _MISSING:
                raise BlobNotFound(name) from None
            raise self._unavailable(exc) from exc
        return BlobStat(size=int(answer.get("ContentLength", 0)))

    async def delete(self, tenant: str, name: str) -> bool:
        key = self._key(tenant, name)
        try:
            s3 = await self._s3()
            await s3.delete_object(Bucket=self.bucket, Key=key)
        except AWS_ERRORS as exc:
            raise self._unavailable(exc) from exc
        return True

    async def list(
        self, tenant: str, prefix: str = "", cursor: str | None = None, limit: int = 1000
    ) -> BlobPage:
        check_blob_name(tenant, "x")
        base = f"{tenant}/"
        names: list[str] = []
        request: dict[str, Any] = {"Bucket": self.bucket, "Prefix": base + prefix}
        if cursor:
            request["StartAfter"] = base + cursor
        try:
            await self._ensure_bucket()
            s3 = await self._s3()
            while len(names) <= limit:
                request["MaxKeys"] = min(1000, limit + 1 - len(names))
                answer = await s3.list_objects_v2(**request)
                names += [str(item["Key"])[len(base) :] for item in answer.get("Contents", [])]
                if not answer.get("IsTruncated"):
                    break
                request["ContinuationToken"] = answer["NextContinuationToken"]
        except AWS_ERRORS as exc:
            raise self._unavailable(exc) from exc
        page = names[:limit]
        return BlobPage(names=page, next_cursor=page[-1] if len(names) > limit else None)

    async def delete_tenant(self, tenant: str) -> int:
        count = 0
        while True:
            # Each page is deleted before the next is listed, so listing from the start again is enough.
            page = await self.list(tenant, limit=1000)
            if not page.names:
                return count
            objects = [{"Key": self._key(tenant, n)} for n in page.names]
            try:
                s3 = await self._s3()
                answer = await s3.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}
                )
            except AWS_ERRORS as exc:
                raise self._unavailable(exc) from exc
            errors = answer.get("Errors") or []
            if errors:
                raise StorageUnavailable(f"object storage (aws-s3) refused to delete: {errors[0]}")
            count += len(page.names)

    async def health(self) -> BackendStatus:
        async def probe() -> str:
            s3 = await self._s3()
            await s3.head_bucket(Bucket=self.bucket)
            encryption = self._sse.get("ServerSideEncryption", "none")
            return f"bucket {self.bucket!r} at {s3.meta.endpoint_url} ({self.clients.s3_addressing} addressing, SSE {encryption})"

        return await aws_status(
            "storage", self.backend, self.clients, probe, "check the AWS credentials, region and bucket"
        )


async def _parts(chunks: AsyncIterable[bytes], digest: Any) -> AsyncGenerator[bytes, None]:
    """Regroup ``chunks`` into parts of at least ``PART_SIZE`` (the last may be shorter), hashing them."""
    pending: list[bytes] = []
    held = 0
    async for chunk in chunks:
        digest.update(chunk)
        pending.append(chunk)
        held += len(chunk)
        if held >= PART_SIZE:
            yield b"".join(pending)
            pending, held = [], 0
    if pending:
        yield b"".join(pending)


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


async def _body(body: Any) -> AsyncIterator[bytes]:
    try:
        async for chunk in body.iter_chunks(_READ_CHUNK):
            yield chunk
    except AWS_ERRORS as exc:
        raise StorageUnavailable(f"object storage (aws-s3) connection broke mid-download: {exc}") from exc
    finally:
        body.close()
