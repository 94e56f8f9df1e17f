"""Object storage: API.md "Storage".

The port is :class:`BlobStore`: it keeps opaque blobs under a tenant, nothing else. Object metadata
(bucket, key, size, ETag, content type, user metadata, timestamps) lives in SQLite and is managed by
:class:`~appliance.storage.service.StorageService`, which names every blob afresh on each upload
(``<bucket>/<shard>/<blob id>``) and commits the metadata that points at it in one transaction, so
an object is either the whole new upload or the old one, never a mix.

Adapters: ``local`` (files under ``<data_dir>/blobs``, the default) and ``s3`` (MinIO or AWS S3,
chosen when ``APPLIANCE_S3_ENDPOINT`` is set). A plugin may contribute another through
``APPLIANCE_BACKENDS=storage=<name>``. Callers get one from :func:`open_blob_store`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import msgspec

from appliance.core.errors import ServiceUnavailable
from appliance.core.tenants import valid_tenant_id

if TYPE_CHECKING:
    from litestar.types import ControllerRouterHandler

    from appliance.config import Settings
    from appliance.core.context import BackendStatus, Context

__all__ = [
    "BlobInfo",
    "BlobNotFound",
    "BlobPage",
    "BlobStat",
    "BlobStore",
    "StorageUnavailable",
    "check_blob_name",
    "install",
    "open_blob_store",
]

# Blob names are the store's own (the service generates them), so they can be kept simple and safe
# on every filesystem and S3: slash-separated segments of letters, digits, dots, dashes, underscores.
_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}(/[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}){0,7}$")


class BlobInfo(msgspec.Struct, frozen=True):
    """What :meth:`BlobStore.put` wrote: its size in bytes and its ETag.

    The ETag is the hex SHA-256 of the content (API.md allows hex MD5 or SHA-256; the built-in
    adapters use SHA-256, which hashes twice as fast as MD5 on CPUs with SHA extensions).
    """

    size: int
    etag: str


class BlobStat(msgspec.Struct, frozen=True):
    """What :meth:`BlobStore.head` knows without reading the content."""

    size: int


class BlobPage(msgspec.Struct, frozen=True):
    """One page of :meth:`BlobStore.list`: names in ascending order, and where to go on from."""

    names: list[str]
    next_cursor: str | None = None


class BlobNotFound(LookupError):
    """The blob does not exist (in this tenant)."""


class StorageUnavailable(ServiceUnavailable):
    """The storage backend cannot be reached or refused the operation; the detail names it."""


def check_blob_name(tenant: str, name: str) -> None:
    """Raise ``ValueError`` unless ``tenant`` is a tenant id and ``name`` a safe blob name.

    Adapters call this first, so no caller can build a path or key outside the tenant's space.
    """
    if not valid_tenant_id(tenant):
        raise ValueError(f"invalid tenant id {tenant!r}")
    if not _NAME.match(name):
        raise ValueError(f"invalid blob name {name!r}")


@runtime_checkable
class BlobStore(Protocol):
    """Where object bytes live. Every method is scoped to one tenant; tenants never see each other.

    Names are slash-separated (see :func:`check_blob_name`); a bad tenant or name raises ``ValueError``.
    A backend failure raises :class:`StorageUnavailable` (a 503 naming the backend).
    """

    backend: str  # "local", "s3", or a plugin's name
    mode: str  # "embedded" or "server"

    async def start(self) -> None:
        """Prepare the backend (directories, the physical bucket) and clean up after a crash."""

    async def close(self) -> None:
        """Release connections."""

    async def put(self, tenant: str, name: str, chunks: AsyncIterable[bytes]) -> BlobInfo:
        """Store the bytes of ``chunks`` (of unknown total length) as ``name``, replacing any blob there.

        Atomic: readers see the old blob or the complete new one. If ``chunks`` raises (the client went
        away, the size limit was hit...), nothing is left behind and the exception propagates.
        Memory stays bounded (a few MiB) whatever the size.
        """

    async def get(
        self, tenant: str, name: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """Open ``name`` and return an iterator over ``length`` bytes from ``offset`` (all, when ``None``).

        Raises :class:`BlobNotFound` here, before the first chunk, when there is no such blob. The
        caller must exhaust or ``aclose()`` the iterator.
        """

    async def head(self, tenant: str, name: str) -> BlobStat:
        """The blob's size; :class:`BlobNotFound` when it does not exist."""

    async def delete(self, tenant: str, name: str) -> bool:
        """Delete ``name``; idempotent. Returns whether it existed (``True`` when the backend cannot tell)."""

    async def list(
        self, tenant: str, prefix: str = "", cursor: str | None = None, limit: int = 1000
    ) -> BlobPage:
        """Names starting with ``prefix``, ascending, after ``cursor`` (a ``next_cursor``), at most ``limit``."""

    async def delete_tenant(self, tenant: str) -> int:
        """Delete every blob of ``tenant``; returns how many. Used when a tenant is deleted."""

    async def health(self) -> BackendStatus:
        """Whether the backend answers, for ``/readyz``."""


def open_blob_store(settings: Settings, plugin_backend: object | None = None) -> BlobStore:
    """The blob store the settings pick: a plugin's, else ``s3`` when an endpoint is set, else ``local``."""
    if plugin_backend is not None:
        if not isinstance(plugin_backend, BlobStore):
            raise TypeError(f"the storage plugin backend {plugin_backend!r} does not implement BlobStore")
        return plugin_backend
    if settings.s3_endpoint:
        from appliance.storage.s3 import S3BlobStore

        return S3BlobStore.from_settings(settings)
    from appliance.storage.local import LocalBlobStore

    return LocalBlobStore(settings.data_path / "blobs")


def install(ctx: Context) -> list[ControllerRouterHandler]:
    """Storage's migration, blob store, service, health check, tenant purger and routes."""
    from appliance.core.metrics import gauges_from_query
    from appliance.storage.api import ROUTES
    from appliance.storage.service import MIGRATIONS, StorageService

    store = open_blob_store(ctx.settings, ctx.plugin_backend("storage"))
    service = StorageService(ctx, store)
    ctx.migrations.extend(MIGRATIONS)
    ctx.on_startup(service.start)
    ctx.on_shutdown(service.stop)
    ctx.health.append(store.health)
    ctx.tenants.purgers.append(service.purge_tenant)
    ctx.provide("storage", service)
    for column, name, help_ in (
        ("sum(size)", "appliance_storage_bytes", "Bytes stored in objects, all tenants."),
        ("count(*)", "appliance_storage_objects", "Objects stored, all tenants."),
    ):
        ctx.metrics.append(gauges_from_query(ctx.db, f"SELECT {column} FROM storage_objects", name, help_))
    return list(ROUTES)
