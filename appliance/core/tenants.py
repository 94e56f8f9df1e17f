"""Tenants and API keys: who may call, in which tenant, with which scopes.

Secrets are random, shown once, and stored only as SHA-256 digests (a 256-bit random secret needs
no slow hash: it cannot be guessed). A key's id is visible in the key itself (``apl_<id>_<secret>``),
so lookup is one indexed read and revocation holds from the very next request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Awaitable, Callable
from typing import Annotated

import msgspec

from appliance.core.db import Database, Row
from appliance.core.errors import Conflict, NotFound, Unprocessable
from appliance.core.ids import new_id, new_secret
from appliance.core.pagination import Page, decode_cursor, encode_cursor
from appliance.core.shards import ShardedDatabase, acting_for

__all__ = [
    "SCOPES",
    "ApiKey",
    "CreatedKey",
    "KeyService",
    "Principal",
    "Tenant",
    "TenantId",
    "TenantService",
    "hash_secret",
]

SCOPES = ("storage", "search", "jobs", "events", "realtime", "notify", "payments", "users", "admin")
TENANT_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
TenantId = Annotated[
    str,
    msgspec.Meta(
        pattern=TENANT_PATTERN,
        min_length=1,
        max_length=63,
        description="lowercase letters, digits and dashes; 1 to 63 characters",
    ),
]
_TENANT_RE = re.compile(TENANT_PATTERN)
_KEY_PREFIX = "apl"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def valid_tenant_id(value: str) -> bool:
    return bool(_TENANT_RE.match(value))


class Tenant(msgspec.Struct):
    id: str
    name: str
    created_at: float


class ApiKey(msgspec.Struct):
    """A key as listed: never its secret."""

    id: str
    tenant: str
    name: str
    scopes: list[str]
    created_at: float
    revoked: bool = False


class CreatedKey(ApiKey):
    """A key just created; ``secret`` is the full bearer token, shown this once."""

    secret: str = ""


class Principal(msgspec.Struct, frozen=True):
    """Who is calling: the tenant every read and write is scoped to, the key, its scopes."""

    tenant: str
    key_id: str
    scopes: frozenset[str]
    is_root: bool = False

    def allows(self, scope: str) -> bool:
        return self.is_root or "admin" in self.scopes or scope in self.scopes


TenantPurger = Callable[[str], Awaitable[None]]


class TenantService:
    """Create, list and delete tenants. Deleting a tenant deletes everything it owns.

    ``db`` is the directory; with shards, ``sharded`` places each new tenant on a shard.
    """

    def __init__(self, db: Database, sharded: ShardedDatabase | None = None) -> None:
        self.db = db
        self.sharded = sharded
        self.purgers: list[TenantPurger] = []

    async def create(self, tenant_id: str, name: str) -> Tenant:
        if not valid_tenant_id(tenant_id):
            raise Unprocessable(f"tenant id {tenant_id!r} must be 1-63 lowercase letters, digits or dashes")
        tenant = Tenant(id=tenant_id, name=name, created_at=time.time())
        shard = None
        if self.sharded is not None:
            if await self.db.fetchone("SELECT 1 FROM tenants WHERE id = ?", (tenant_id,)):
                raise Conflict(f"tenant {tenant_id!r} already exists")
            # The shard's copy first: once the directory lists the tenant, its shard must accept its rows.
            shard = self.sharded.place_new(tenant_id)
            await self.sharded.add_tenant(shard, tenant_id, name, tenant.created_at)
        async with self.db.transaction() as tx:
            if await tx.fetchone("SELECT 1 FROM tenants WHERE id = ?", (tenant_id,)):
                raise Conflict(f"tenant {tenant_id!r} already exists")
            await tx.execute(
                "INSERT INTO tenants (id, name, created_at) VALUES (?, ?, ?)",
                (tenant.id, name, tenant.created_at),
            )
            if shard is not None:
                # Recorded at creation, so listing a new shard later never moves a tenant implicitly.
                await tx.execute(
                    "INSERT INTO tenant_placements (tenant_id, shard, epoch, updated_at) VALUES (?, ?, 1, ?)",
                    (tenant_id, shard, tenant.created_at),
                )
        return tenant

    async def get(self, tenant_id: str) -> Tenant:
        row = await self.db.fetchone("SELECT id, name, created_at FROM tenants WHERE id = ?", (tenant_id,))
        if row is None:
            raise NotFound(f"tenant {tenant_id!r} does not exist")
        return Tenant(id=row["id"], name=row["name"], created_at=row["created_at"])

    async def exists(self, tenant_id: str) -> bool:
        # On the auth path of every root-key request that names a tenant: a point read, inline.
        return await self.db.point_read("SELECT 1 FROM tenants WHERE id = ?", (tenant_id,)) is not None

    async def list(self, limit: int, cursor: str | None) -> Page[Tenant]:
        after = decode_cursor(cursor, str) if cursor else ""
        rows = await self.db.fetchall(
            "SELECT id, name, created_at FROM tenants WHERE id > ? ORDER BY id LIMIT ?",
            (after, limit + 1),
            lag_ok=True,
        )
        items = [Tenant(id=r["id"], name=r["name"], created_at=r["created_at"]) for r in rows[:limit]]
        return Page(items=items, next_cursor=encode_cursor(items[-1].id) if len(rows) > limit else None)

    async def delete(self, tenant_id: str) -> None:
        if tenant_id == "default":
            raise Conflict("the default tenant cannot be deleted")
        await self.get(tenant_id)
        with acting_for(tenant_id):
            for purge in self.purgers:
                await purge(tenant_id)
        if self.sharded is not None:
            await self.sharded.drop_tenant(tenant_id)
        await self.db.execute("DELETE FROM tenants WHERE id = ?", (tenant_id,))


class KeyService:
    """API keys of a tenant, and the root key."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._root_hash = ""

    async def init_root(self, configured: str) -> str | None:
        """Adopt the root key from settings, or load its digest, or generate one.

        Returns the new secret only when one was generated now (to print once), else ``None``.
        """
        if configured:
            self._root_hash = hash_secret(configured)
            return None
        row = await self.db.fetchone("SELECT value FROM meta WHERE key = 'root_key_sha256'")
        if row is not None:
            self._root_hash = row["value"]
            return None
        secret = f"{_KEY_PREFIX}_root_{new_secret()}"
        self._root_hash = hash_secret(secret)
        await self.db.execute(
            "INSERT INTO meta (key, value) VALUES ('root_key_sha256', ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (self._root_hash,),
        )
        return secret

    def is_root(self, secret: str) -> bool:
        return bool(self._root_hash) and hmac.compare_digest(hash_secret(secret), self._root_hash)

    async def create(self, tenant: str, name: str, scopes: list[str]) -> CreatedKey:
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown:
            raise Unprocessable(f"unknown scopes {unknown}; choose from {list(SCOPES)}")
        if not scopes:
            raise Unprocessable(f"a key needs at least one scope; choose from {list(SCOPES)}")
        key_id = new_id().lower()
        secret = f"{_KEY_PREFIX}_{key_id}_{new_secret()}"
        now = time.time()
        scopes = sorted(set(scopes))
        async with self.db.transaction() as tx:
            if not await tx.fetchone("SELECT 1 FROM tenants WHERE id = ?", (tenant,)):
                raise NotFound(f"tenant {tenant!r} does not exist")
            await tx.execute(
                "INSERT INTO api_keys (id, tenant_id, name, scopes, secret_hash, created_at) VALUES (?,?,?,?,?,?)",
                (key_id, tenant, name, ",".join(scopes), hash_secret(secret), now),
            )
        return CreatedKey(id=key_id, tenant=tenant, name=name, scopes=scopes, created_at=now, secret=secret)

    async def list(self, tenant: str, limit: int, cursor: str | None) -> Page[ApiKey]:
        after = decode_cursor(cursor, str) if cursor else ""
        rows = await self.db.fetchall(
            "SELECT * FROM api_keys WHERE tenant_id = ? AND id > ? AND revoked_at IS NULL ORDER BY id LIMIT ?",
            (tenant, after, limit + 1),
            lag_ok=True,
        )
        items = [_key(r) for r in rows[:limit]]
        return Page(items=items, next_cursor=encode_cursor(items[-1].id) if len(rows) > limit else None)

    async def revoke(self, tenant: str, key_id: str) -> None:
        changed = await self.db.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND tenant_id = ? AND revoked_at IS NULL",
            (time.time(), key_id, tenant),
        )
        if not changed:
            raise NotFound(f"key {key_id!r} does not exist in this tenant")

    async def authenticate(self, secret: str) -> Principal | None:
        """The principal of a bearer secret, or ``None`` if it is unknown, revoked or malformed."""
        if self.is_root(secret):
            return Principal(tenant="default", key_id="root", scopes=frozenset(SCOPES), is_root=True)
        parts = secret.split("_", 2)
        if len(parts) != 3 or parts[0] != _KEY_PREFIX or len(secret) > 200:
            return None
        row = await self.db.point_read(
            "SELECT tenant_id, scopes, secret_hash FROM api_keys WHERE id = ? AND revoked_at IS NULL",
            (parts[1],),
        )
        if row is None or not hmac.compare_digest(row["secret_hash"], hash_secret(secret)):
            return None
        return Principal(tenant=row["tenant_id"], key_id=parts[1], scopes=frozenset(row["scopes"].split(",")))


def _key(row: Row) -> ApiKey:
    return ApiKey(
        id=row["id"],
        tenant=row["tenant_id"],
        name=row["name"],
        scopes=row["scopes"].split(","),
        created_at=row["created_at"],
        revoked=row["revoked_at"] is not None,
    )
