"""Tenant shards: each tenant's rows live in one of several databases; a directory says which.

With ``APPLIANCE_DATABASE_SHARDS`` set, :class:`ShardedDatabase` is the ``ctx.db`` every capability
uses. The main database (``APPLIANCE_DATABASE_URL``, or SQLite in the data dir) stays the
*directory*: tenants, API keys, admin sessions, signing secrets and the ``tenant_placements`` table
(tenant -> shard). Every shard gets the same migrations, so every tenant-scoped table exists on each,
and holds a copy of the ``tenants`` row of each tenant placed there (the tables' foreign keys need it).

Routing is by context, not by SQL: the tenant the current request (or job attempt) acts for is a
context variable (:func:`acting_for`, set by authentication), and a background loop that scans one
shard binds that shard (:func:`on_shard`). A call with neither goes to the directory. Services that
own directory tables use ``ctx.db.directory`` explicitly.

Moves (``appliance tenants move``) fence the tenant on its source shard: every routed write
transaction first reads the tenant's ``tenant_fence`` row (on PostgreSQL after taking a shared
advisory lock, which the fence's writer takes exclusively, so in-flight writes finish first; on
SQLite the write lock serialises them). A fenced write waits for the placement to change and goes to
the new shard, or gets 503 with ``Retry-After`` after ``APPLIANCE_SHARD_WRITE_WAIT_S``: it never lands on
the old shard. Without shards none of this runs: ``ctx.db`` is the plain database.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from appliance.config import ConfigError
from appliance.core.db import Database, Migration, Params, Row, Tx, is_postgres_url, open_database
from appliance.core.errors import ServiceUnavailable

__all__ = [
    "DIRECTORY",
    "MIGRATIONS",
    "ShardedDatabase",
    "TenantMoving",
    "acting_for",
    "bind_tenant",
    "current_shard",
    "current_tenant",
    "describe",
    "fence_key",
    "on_shard",
    "open_sharded",
    "parse_shards",
    "place",
]

DIRECTORY = "main"
"""The name of the directory database when it is listed as a shard."""

PLACEMENT_TTL_S = 2.0
"""How long a node trusts a cached placement for reads (writes are fenced, so never go stale)."""

_tenant: contextvars.ContextVar[str | None] = contextvars.ContextVar("appliance_tenant", default=None)
_shard: contextvars.ContextVar[str | None] = contextvars.ContextVar("appliance_shard", default=None)

MIGRATIONS = [
    Migration(
        "core",
        3,
        "tenant shards: placements (in the directory), move fences (on each shard)",
        """
        CREATE TABLE tenant_placements (
            tenant_id TEXT PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
            shard TEXT NOT NULL,
            epoch INTEGER NOT NULL,
            moving_to TEXT,
            moved_from TEXT,
            updated_at REAL NOT NULL
        );
        CREATE TABLE tenant_fence (
            tenant_id TEXT PRIMARY KEY,
            state TEXT NOT NULL,
            target TEXT NOT NULL,
            updated_at REAL NOT NULL
        );
        """,
    )
]


class TenantMoving(ServiceUnavailable):
    """A write to a tenant that is being moved between shards waited too long for the move to finish."""

    slug = "tenant-moving"


def current_tenant() -> str | None:
    """The tenant the current task acts for (``None`` outside a request or job attempt)."""
    return _tenant.get()


def current_shard() -> str:
    """The shard a background loop is bound to (``""`` when none)."""
    return _shard.get() or ""


def bind_tenant(tenant: str) -> None:
    """Route this task's database calls to ``tenant``'s shard from now on (authentication calls it)."""
    _tenant.set(tenant)


@contextmanager
def acting_for(tenant: str | None) -> Iterator[None]:
    """Route the database calls inside the block to ``tenant``'s shard."""
    token = _tenant.set(tenant)
    try:
        yield
    finally:
        _tenant.reset(token)


@contextmanager
def on_shard(name: str) -> Iterator[None]:
    """Bind the block (and tasks created in it) to one shard: for loops that scan every tenant there."""
    token = _shard.set(name or None)
    try:
        yield
    finally:
        _shard.reset(token)


def place(tenant: str, shards: Sequence[str]) -> str:
    """The shard a new tenant goes to: rendezvous hashing, stable whatever the order of ``shards``."""
    return max(shards, key=lambda name: hashlib.sha256(f"{name}\0{tenant}".encode()).digest())


def fence_key(tenant: str) -> int:
    """The PostgreSQL advisory lock key that orders a tenant's writes against its fence."""
    digest = hashlib.sha256(b"appliance.tenant:" + tenant.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def parse_shards(value: str, data_dir: Path) -> dict[str, str]:
    """``name=url`` pairs to {name: url}; ``main`` (the directory) maps to ``""``.

    A url is ``postgresql://...`` or a SQLite file path (``sqlite:`` prefix optional; relative paths
    are under the data dir).
    """
    shards: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, sep, url = (s.strip() for s in item.partition("="))
        if not name.replace("-", "").replace("_", "").isalnum() or len(name) > 40:
            raise ConfigError(
                f"APPLIANCE_DATABASE_SHARDS: shard name {name!r} must be letters, digits, '-' or '_'"
            )
        if name in shards:
            raise ConfigError(f"APPLIANCE_DATABASE_SHARDS names shard {name!r} twice")
        if name == DIRECTORY:
            if url:
                raise ConfigError(
                    "APPLIANCE_DATABASE_SHARDS: 'main' is the directory database itself; list it without '='"
                )
            shards[name] = ""
            continue
        if not sep or not url:
            raise ConfigError(
                f"APPLIANCE_DATABASE_SHARDS: shard {name!r} needs a url: {name}=postgresql://..."
            )
        if not is_postgres_url(url):
            path = Path(url.removeprefix("sqlite:").removeprefix("//"))
            url = str(path if path.is_absolute() else data_dir / path)
        shards[name] = url
    if not shards:
        raise ConfigError("APPLIANCE_DATABASE_SHARDS lists no shard")
    return shards


class ShardedDatabase(Database):
    """The :class:`Database` interface, routed per call to the current tenant's shard.

    ``placed`` are the shards new tenants are hashed over; ``shards`` are every database with tenant
    data, including the directory as ``main`` (tenants created before shards were configured live there).
    """

    def __init__(
        self, directory: Database, shards: dict[str, Database], placed: Sequence[str], wait_s: float
    ):
        super().__init__(":memory:", readers=0)
        self._directory = directory
        self.dialect = directory.dialect
        self.shards = {DIRECTORY: directory, **shards}
        self.placed = list(placed)
        self.wait_s = wait_s
        self._placements: dict[str, tuple[str, float]] = {}

    @property
    def directory(self) -> Database:
        return self._directory

    @property
    def location(self) -> str:
        return self._directory.location

    def shard_names(self) -> list[str]:
        return list(self.shards)

    # ----------------------------------------------------------- placement ---

    def forget(self, tenant: str) -> None:
        """Drop the cached placement of ``tenant`` (it moved, or is moving)."""
        self._placements.pop(tenant, None)

    async def shard_of(self, tenant: str, *, fresh: bool = False) -> str:
        """The name of the shard that holds ``tenant`` (``main`` when it has no placement row)."""
        cached = self._placements.get(tenant)
        now = time.monotonic()
        if cached is not None and not fresh and cached[1] > now:
            return cached[0]
        row = await self._directory.point_read(
            "SELECT shard FROM tenant_placements WHERE tenant_id = ?", (tenant,)
        )
        name = str(row["shard"]) if row is not None else DIRECTORY
        if name not in self.shards:
            raise ServiceUnavailable(
                f"tenant {tenant!r} is placed on shard {name!r}, which APPLIANCE_DATABASE_SHARDS does not list"
            )
        self._placements[tenant] = (name, now + PLACEMENT_TTL_S)
        return name

    async def _target(self) -> Database:
        tenant = _tenant.get()
        if tenant is not None:
            return self.shards[await self.shard_of(tenant)]
        shard = _shard.get()
        return self.shards[shard] if shard else self._directory

    # -------------------------------------------------------------- routing ---

    async def open(self) -> None:
        opened: list[Database] = []
        try:
            for db in self.shards.values():
                await db.open()
                opened.append(db)
        except BaseException:
            for db in opened:
                await db.close()
            raise

    async def close(self) -> None:
        for db in self.shards.values():
            await db.close()

    async def migrate(self, migrations: Iterable[Migration]) -> list[Migration]:
        listed = list(migrations)
        applied = await self._directory.migrate(listed)
        for name, db in self.shards.items():
            if name != DIRECTORY:
                await db.migrate(listed)
        return applied

    async def fetchone(self, sql: str, params: Params = (), *, lag_ok: bool = False) -> Row | None:
        return await (await self._target()).fetchone(sql, params, lag_ok=lag_ok)

    async def fetchall(self, sql: str, params: Params = (), *, lag_ok: bool = False) -> list[Row]:
        return await (await self._target()).fetchall(sql, params, lag_ok=lag_ok)

    async def point_read(self, sql: str, params: Params = ()) -> Row | None:
        return await (await self._target()).point_read(sql, params)

    async def execute(self, sql: str, params: Params = ()) -> int:
        async with self.transaction() as tx:
            return await tx.execute(sql, params)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        tenant = _tenant.get()
        if tenant is None:
            async with (await self._target()).transaction() as tx:
                yield tx
            return
        deadline = time.monotonic() + self.wait_s
        while True:
            name = await self.shard_of(tenant)
            async with self.shards[name].transaction() as tx:
                if not await _fenced(tx, tenant):
                    yield tx
                    return
            await self._wait_for_move(tenant, name, deadline)

    async def _wait_for_move(self, tenant: str, fenced_on: str, deadline: float) -> None:
        # The tenant is frozen on ``fenced_on``: wait until the directory places it elsewhere.
        while True:
            self.forget(tenant)
            if await self.shard_of(tenant, fresh=True) != fenced_on:
                return
            if time.monotonic() >= deadline:
                raise TenantMoving(
                    f"tenant {tenant!r} is being moved between shards; retry in a few seconds",
                    headers={"Retry-After": "2"},
                )
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------- tenants ---

    def place_new(self, tenant: str) -> str:
        """The shard a tenant created now goes to."""
        return place(tenant, self.placed)

    async def add_tenant(self, shard: str, tenant: str, name: str, created_at: float) -> None:
        """Copy a new tenant's row to its shard (before the directory records it)."""
        if shard == DIRECTORY:
            return
        await self.shards[shard].execute(
            "INSERT INTO tenants (id, name, created_at) VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING",
            (tenant, name, created_at),
        )

    async def drop_tenant(self, tenant: str) -> None:
        """Delete the tenant's rows on its shard (they cascade from its ``tenants`` row)."""
        shard = await self.shard_of(tenant, fresh=True)
        if shard != DIRECTORY:
            await self.shards[shard].execute("DELETE FROM tenants WHERE id = ?", (tenant,))
        for db in self.shards.values():  # fences left on shards it moved away from
            await db.execute("DELETE FROM tenant_fence WHERE tenant_id = ?", (tenant,))
        self.forget(tenant)


async def _fenced(tx: Tx, tenant: str) -> bool:
    if tx.dialect == "postgres":
        # Shared: writes do not wait for each other, only for a fence being set (exclusive).
        await tx.fetchone("SELECT pg_advisory_xact_lock_shared(?)", (fence_key(tenant),))
    return await tx.fetchone("SELECT 1 FROM tenant_fence WHERE tenant_id = ?", (tenant,)) is not None


def open_sharded(
    directory: Database, value: str, data_dir: Path, pool_size: int, wait_s: float
) -> ShardedDatabase:
    """The router for ``APPLIANCE_DATABASE_SHARDS`` over ``directory``."""
    urls = parse_shards(value, data_dir)
    shards: dict[str, Database] = {}
    for name, url in urls.items():
        if name == DIRECTORY:
            continue
        postgres = is_postgres_url(url)
        if postgres != (directory.dialect == "postgres"):
            raise ConfigError(
                f"APPLIANCE_DATABASE_SHARDS: shard {name!r} is {'PostgreSQL' if postgres else 'SQLite'}"
                f" but the directory (APPLIANCE_DATABASE_URL) is {directory.dialect}: use one engine for all"
            )
        shards[name] = open_database(url if postgres else "", url, pool_size)
    return ShardedDatabase(directory, shards, list(urls), wait_s)


def describe(db: Any) -> list[tuple[str, str]]:
    """(shard name, location) of every database holding tenant data, for doctor and listings."""
    if isinstance(db, ShardedDatabase):
        return [(name, shard.location) for name, shard in db.shards.items()]
    return [(DIRECTORY, db.location)]
