"""Objects on top of the blob store: names, metadata, limits, events and signed URLs.

Every upload is written to a fresh blob (``<bucket>/<shard>/<blob id>``); once the bytes are safely
stored, one SQLite transaction points the object's row at the new blob and emits
``storage.object.created``; only after it commits is the replaced blob removed. A failed upload
removes its blob, so neither a partial object nor orphan metadata survives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import math
import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

import msgspec

from appliance.core.context import Context
from appliance.core.db import Migration, Row
from appliance.core.errors import BadRequest, Forbidden, NotFound, PayloadTooLarge
from appliance.core.ids import new_id, new_secret
from appliance.core.outbox import emit
from appliance.core.pagination import Page, decode_cursor, encode_cursor
from appliance.core.shards import acting_for
from appliance.storage import BlobNotFound, BlobStore

__all__ = ["MIGRATIONS", "ObjectInfo", "SignedUrl", "StorageService", "check_bucket", "check_key"]

log = logging.getLogger("appliance.storage")

MIGRATIONS = [
    Migration(
        "storage",
        1,
        "object metadata",
        """
        CREATE TABLE storage_objects (
            tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            bucket TEXT NOT NULL,
            key TEXT NOT NULL,
            blob TEXT NOT NULL,
            size INTEGER NOT NULL,
            etag TEXT NOT NULL,
            content_type TEXT NOT NULL,
            cache_control TEXT NOT NULL,
            metadata TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (tenant_id, bucket, key)
        );
        CREATE INDEX storage_objects_by_blob ON storage_objects (tenant_id, blob);
        """,
    )
]

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_RESERVED_PREFIXES = ("xn--", "sthree-")  # reserved by AWS S3
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3")
_IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_META_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MAX_KEY_BYTES = 1024
MAX_META_BYTES = 2048
DEFAULT_CACHE_CONTROL = "private, no-cache"
MAX_EXPIRES_IN = 7 * 24 * 3600
_SIGNING_ROW = "storage_url_signing_secret"
SIGNED_PREFIX = "/v1/signed"
GC_MIN_AGE = 600.0
_ID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # appliance.core.ids: Crockford base32, lower case


class ObjectInfo(msgspec.Struct):
    """An object as the API shows it."""

    bucket: str
    key: str
    size: int
    etag: str
    content_type: str
    cache_control: str
    metadata: dict[str, str]
    created_at: float
    updated_at: float
    url: str = ""


class SignedUrl(msgspec.Struct):
    url: str
    expires_at: int


def check_bucket(bucket: str) -> None:
    """S3 bucket naming rules: 3-63 of a-z 0-9 . -, alphanumeric at both ends, no ``..``, not an IP,
    none of the prefixes and suffixes AWS reserves."""
    if (
        not _BUCKET.match(bucket)
        or _IPV4.match(bucket)
        or any(part in bucket for part in ("..", ".-", "-."))
        or bucket.startswith(_RESERVED_PREFIXES)
        or bucket.endswith(_RESERVED_SUFFIXES)
    ):
        raise BadRequest(
            f"invalid bucket name {bucket!r}: use 3-63 lowercase letters, digits, dots and dashes,"
            " starting and ending with a letter or digit (S3 naming rules)"
        )


def check_key(key: str) -> None:
    """Keys: 1-1024 UTF-8 bytes, no leading ``/``, no ``.``/``..`` segments, no control characters."""
    if not key:
        raise BadRequest("the object key is empty")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise BadRequest(f"the object key is longer than {MAX_KEY_BYTES} bytes")
    if key.startswith("/"):
        raise BadRequest("the object key must not start with '/'")
    if _CONTROL.search(key):
        raise BadRequest("the object key must not contain control characters")
    if any(segment in (".", "..") for segment in key.split("/")):
        raise BadRequest("the object key must not contain '.' or '..' segments")


def user_metadata(headers: Mapping[str, str]) -> dict[str, str]:
    """The ``x-meta-*`` request headers as user metadata (names lower-cased, at most 2 KiB in all)."""
    found: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if not lower.startswith("x-meta-"):
            continue
        short = lower[len("x-meta-") :]
        if not _META_NAME.match(short) or _CONTROL.search(value):
            raise BadRequest(f"invalid metadata header {name!r}: use x-meta-<letters, digits, - or _>")
        found[short] = value
    if sum(len(k) + len(v) for k, v in found.items()) > MAX_META_BYTES:
        raise BadRequest(f"user metadata (x-meta-* headers) exceeds {MAX_META_BYTES} bytes")
    return found


class StorageService:
    """The storage capability's logic; every method takes the caller's tenant first."""

    def __init__(self, ctx: Context, store: BlobStore) -> None:
        self.ctx = ctx
        self.store = store
        self.max_bytes = ctx.settings.storage_max_object_bytes
        self.base_url = (ctx.settings.public_url or f"http://{ctx.settings.host}:{ctx.settings.port}").rstrip(
            "/"
        )
        self._secret = b""
        self._gc_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.store.start()
        self._secret = await self._signing_secret()
        if self.ctx.runs_workers:
            self._gc_task = asyncio.create_task(self._collect_in_background())

    async def stop(self) -> None:
        if self._gc_task is not None:
            self._gc_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._gc_task
        await self.store.close()

    async def _collect_in_background(self) -> None:
        try:
            removed = await self.collect_garbage()
        except Exception:
            log.warning(
                "storage garbage collection failed; it will run again at the next start", exc_info=True
            )
            return
        if removed:
            log.info("removed %d unreferenced blobs", removed)

    async def collect_garbage(self, min_age: float = GC_MIN_AGE) -> int:
        """Delete blobs that no object points at and that are older than ``min_age`` seconds; return how many.

        Such blobs exist only if a process died in the instant between a blob landing and its metadata
        committing (or a replaced blob's deletion failing). Blob names carry their creation time, so
        uploads still in progress elsewhere (younger than ``min_age``) are never touched.
        """
        cutoff_ms = (time.time() - min_age) * 1000
        removed = 0
        for row in await self.ctx.db.directory.fetchall("SELECT id FROM tenants ORDER BY id"):
            tenant, cursor = str(row["id"]), None
            with acting_for(tenant):
                while True:
                    page = await self.store.list(tenant, cursor=cursor, limit=500)
                    old = [name for name in page.names if _created_ms(name) < cutoff_ms]
                    removed += await self._delete_unreferenced(tenant, old)
                    if page.next_cursor is None:
                        break
                    cursor = page.next_cursor
        return removed

    async def _delete_unreferenced(self, tenant: str, names: list[str]) -> int:
        if not names:
            return 0
        marks = ",".join("?" * len(names))
        rows = await self.ctx.db.fetchall(
            f"SELECT blob FROM storage_objects WHERE tenant_id = ? AND blob IN ({marks})", (tenant, *names)
        )
        live = {r["blob"] for r in rows}
        orphans = [name for name in names if name not in live]
        for name in orphans:
            await self.store.delete(tenant, name)
        return len(orphans)

    async def _signing_secret(self) -> bytes:
        # Generated once per install and kept in the metadata DB, so backups carry it and every
        # process of the install signs alike.
        async with self.ctx.db.directory.transaction() as tx:
            await tx.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                (_SIGNING_ROW, new_secret(32)),
            )
            row = await tx.fetchone("SELECT value FROM meta WHERE key = ?", (_SIGNING_ROW,))
        assert row is not None
        return str(row["value"]).encode()

    def object_url(self, bucket: str, key: str) -> str:
        return f"{self.base_url}/v1/buckets/{bucket}/objects/{quote(key)}"

    # ----------------------------------------------------------------- writes ---

    async def put(
        self,
        tenant: str,
        bucket: str,
        key: str,
        chunks: AsyncIterable[bytes],
        *,
        content_type: str,
        cache_control: str = "",
        metadata: dict[str, str] | None = None,
        declared_length: int | None = None,
    ) -> ObjectInfo:
        """Store an object from a stream; 413 (and nothing stored) past the size limit."""
        check_bucket(bucket)
        check_key(key)
        if declared_length is not None and declared_length > self.max_bytes:
            raise self._too_large()
        blob = f"{bucket}/{_shard(new_id())}"
        stored = await self.store.put(tenant, blob, self._limited(chunks))
        now = time.time()
        info = ObjectInfo(
            bucket=bucket,
            key=key,
            size=stored.size,
            etag=stored.etag,
            content_type=content_type or "application/octet-stream",
            cache_control=cache_control or DEFAULT_CACHE_CONTROL,
            metadata=metadata or {},
            created_at=now,
            updated_at=now,
            url=self.object_url(bucket, key),
        )
        try:
            replaced = await self._commit(tenant, blob, info)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.store.delete(tenant, blob)
            raise
        if replaced:
            await self._discard(tenant, replaced)
        return info

    async def _commit(self, tenant: str, blob: str, info: ObjectInfo) -> str | None:
        async with self.ctx.db.transaction() as tx:
            old = await tx.fetchone(
                "SELECT blob, created_at FROM storage_objects WHERE tenant_id = ? AND bucket = ? AND key = ?",
                (tenant, info.bucket, info.key),
            )
            if old is not None:
                info.created_at = old["created_at"]
            await tx.execute(
                "INSERT INTO storage_objects (tenant_id, bucket, key, blob, size, etag, content_type,"
                " cache_control, metadata, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (tenant_id, bucket, key) DO UPDATE SET blob = excluded.blob, size = excluded.size,"
                " etag = excluded.etag, content_type = excluded.content_type,"
                " cache_control = excluded.cache_control, metadata = excluded.metadata,"
                " created_at = excluded.created_at, updated_at = excluded.updated_at",
                (
                    tenant,
                    info.bucket,
                    info.key,
                    blob,
                    info.size,
                    info.etag,
                    info.content_type,
                    info.cache_control,
                    msgspec.json.encode(info.metadata).decode(),
                    info.created_at,
                    info.updated_at,
                ),
            )
            payload = {
                "bucket": info.bucket,
                "key": info.key,
                "size": info.size,
                "etag": info.etag,
                "content_type": info.content_type,
                "replaced": old is not None,
            }
            await emit(tx, tenant, "storage", "storage.object.created", payload, self.ctx.outbox)
        return str(old["blob"]) if old is not None else None

    async def _limited(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        total = 0
        async for chunk in chunks:
            total += len(chunk)
            if total > self.max_bytes:
                raise self._too_large()
            yield chunk

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"the object is larger than the {self.max_bytes}-byte limit (APPLIANCE_STORAGE_MAX_OBJECT_BYTES)"
        )

    async def _discard(self, tenant: str, blob: str) -> None:
        try:
            await self.store.delete(tenant, blob)
        except Exception:
            # The metadata no longer points at it: it is unreachable garbage, not a visible object.
            log.warning("could not delete replaced blob %s of tenant %s", blob, tenant, exc_info=True)

    async def delete(self, tenant: str, bucket: str, key: str) -> None:
        check_bucket(bucket)
        check_key(key)
        async with self.ctx.db.transaction() as tx:
            row = await tx.fetchone(
                "SELECT blob FROM storage_objects WHERE tenant_id = ? AND bucket = ? AND key = ?",
                (tenant, bucket, key),
            )
            if row is None:
                raise NotFound(f"no object {key!r} in bucket {bucket!r}")
            await tx.execute(
                "DELETE FROM storage_objects WHERE tenant_id = ? AND bucket = ? AND key = ?",
                (tenant, bucket, key),
            )
            payload = {"bucket": bucket, "key": key}
            await emit(tx, tenant, "storage", "storage.object.deleted", payload, self.ctx.outbox)
        await self._discard(tenant, str(row["blob"]))

    async def purge_tenant(self, tenant: str) -> None:
        """Delete all of a tenant's blobs (its rows go with the tenant's, by cascade)."""
        await self.store.delete_tenant(tenant)

    # ------------------------------------------------------------------ reads ---

    async def head(self, tenant: str, bucket: str, key: str) -> tuple[ObjectInfo, str]:
        """The object's metadata and its blob name; 404 when there is none."""
        check_bucket(bucket)
        check_key(key)
        row = await self.ctx.db.fetchone(
            "SELECT * FROM storage_objects WHERE tenant_id = ? AND bucket = ? AND key = ?",
            (tenant, bucket, key),
        )
        if row is None:
            raise NotFound(f"no object {key!r} in bucket {bucket!r}")
        return self._info(row), str(row["blob"])

    async def open(self, tenant: str, blob: str, offset: int, length: int | None) -> AsyncIterator[bytes]:
        try:
            return await self.store.get(tenant, blob, offset, length)
        except BlobNotFound:
            raise NotFound("the object was deleted while it was being read") from None

    async def list(
        self, tenant: str, bucket: str, prefix: str, limit: int, cursor: str | None
    ) -> Page[ObjectInfo]:
        check_bucket(bucket)
        after = decode_cursor(cursor, str) if cursor else ""
        sql = "SELECT * FROM storage_objects WHERE tenant_id = ? AND bucket = ? AND key > ? AND key >= ?"
        params: list[Any] = [tenant, bucket, after, prefix]
        if prefix:
            # Keys with the prefix sort in [prefix, prefix with its last character bumped): an index range.
            sql += " AND key < ?"
            params.append(prefix[:-1] + chr(ord(prefix[-1]) + 1))
        rows = await self.ctx.db.fetchall(sql + " ORDER BY key LIMIT ?", (*params, limit + 1))
        items = [self._info(r) for r in rows[:limit]]
        return Page(items=items, next_cursor=encode_cursor(items[-1].key) if len(rows) > limit else None)

    def _info(self, row: Row) -> ObjectInfo:
        return ObjectInfo(
            bucket=row["bucket"],
            key=row["key"],
            size=row["size"],
            etag=row["etag"],
            content_type=row["content_type"],
            cache_control=row["cache_control"],
            metadata=msgspec.json.decode(row["metadata"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            url=self.object_url(row["bucket"], row["key"]),
        )

    # ------------------------------------------------------------ signed URLs ---

    async def sign(self, tenant: str, bucket: str, key: str, expires_in: int) -> SignedUrl:
        """A URL that downloads the object without a key until ``expires_in`` seconds from now."""
        await self.head(tenant, bucket, key)
        expires = int(time.time()) + expires_in
        path = f"{SIGNED_PREFIX}/{tenant}/{bucket}/{quote(key)}"
        url = f"{self.base_url}{path}?expires={expires}&signature={self._signature(tenant, bucket, key, expires)}"
        return SignedUrl(url=url, expires_at=expires)

    def verify(self, tenant: str, bucket: str, key: str, expires: str, signature: str) -> None:
        """403 unless ``signature`` is ours for this tenant, bucket, key and expiry, and it has not passed."""
        if not expires.isdigit() or len(expires) > 12:
            raise Forbidden("this signed URL is malformed: ask for a new one")
        expected = self._signature(tenant, bucket, key, int(expires))
        if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
            raise Forbidden("this signed URL's signature does not match: it was altered or is not ours")
        if int(expires) < time.time():
            raise Forbidden("this signed URL has expired: ask for a new one")

    def _signature(self, tenant: str, bucket: str, key: str, expires: int) -> str:
        # Newlines cannot occur in a tenant, bucket or key, so the fields cannot be shifted into each other.
        message = "\n".join(("GET", tenant, bucket, key, str(expires))).encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()


def _created_ms(blob: str) -> float:
    """When a blob was named, from the time-ordered id that ends its name; +inf if it is not one of ours."""
    blob_id = blob.rsplit("/", 1)[-1]
    if len(blob_id) != 26 or any(c not in _ID_ALPHABET for c in blob_id):
        return math.inf
    stamp = 0
    for char in blob_id[:10]:
        stamp = stamp * 32 + _ID_ALPHABET.index(char)
    return float(stamp)


def _shard(blob_id: str) -> str:
    # Ids start with a timestamp; their random tail spreads blobs over 1024 directories.
    blob_id = blob_id.lower()
    return f"{blob_id[-2:]}/{blob_id}"
