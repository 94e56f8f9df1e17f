"""End users per tenant: create with a verification token, verify, read; events through the outbox."""

from __future__ import annotations

import hmac
import time

from appliance.core.context import Context
from appliance.core.db import Database, Migration, Row, Tx
from appliance.core.errors import Conflict, NotFound, Unprocessable
from appliance.core.ids import new_id, new_secret
from appliance.core.outbox import OutboxSignal, emit
from appliance.core.pagination import Page, decode_cursor, encode_cursor
from appliance.core.tenants import hash_secret
from appliance.notify.messages import check_address
from appliance.users import CreatedUser, NewUser, User

__all__ = ["SOURCE", "TOKEN_TTL_S", "UserService", "install_service"]

SOURCE = "appliance.users"
TOKEN_TTL_S = 48 * 3600

MIGRATIONS = [
    Migration(
        "users",
        1,
        "end users with email verification",
        """
        CREATE TABLE users (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            email TEXT NOT NULL,
            name TEXT NOT NULL,
            token_hash TEXT,
            token_expires_at REAL,
            created_at REAL NOT NULL,
            verified_at REAL
        );
        CREATE UNIQUE INDEX users_by_email ON users (tenant_id, email COLLATE NOCASE);
        CREATE INDEX users_by_tenant ON users (tenant_id, id);
        """,
    )
]


class UserService:
    """Users of every tenant; each method takes the tenant first."""

    def __init__(self, db: Database, outbox: OutboxSignal) -> None:
        self.db = db
        self.outbox = outbox

    async def create(self, tenant: str, data: NewUser, tx: Tx | None = None) -> CreatedUser:
        """Create a user and emit ``user.created`` (carrying the verification token) in one transaction."""
        if tx is None:
            async with self.db.transaction() as own:
                return await self.create(tenant, data, own)
        email = check_address(data.email.strip(), "email")
        if await tx.fetchone(
            "SELECT 1 FROM users WHERE tenant_id = ? AND email = ? COLLATE NOCASE", (tenant, email)
        ):
            raise Conflict(f"a user with the email {email!r} already exists")
        token, now = new_secret(24), time.time()
        user = CreatedUser(
            id=new_id("usr"),
            email=email,
            name=data.name,
            verified=False,
            created_at=now,
            verification_token=token,
            verification_expires_at=now + TOKEN_TTL_S,
        )
        await tx.execute(
            "INSERT INTO users (id, tenant_id, email, name, token_hash, token_expires_at, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (user.id, tenant, email, data.name, hash_secret(token), user.verification_expires_at, now),
        )
        payload = {
            "user_id": user.id,
            "email": email,
            "name": data.name,
            "verification_token": token,
            "verification_expires_at": user.verification_expires_at,
        }
        await emit(tx, tenant, SOURCE, "user.created", payload, self.outbox)
        return user

    async def verify(self, tenant: str, user_id: str, token: str) -> User:
        """Mark the user's email verified and emit ``user.verified``; verifying twice is a no-op."""
        async with self.db.transaction() as tx:
            row = await tx.fetchone("SELECT * FROM users WHERE tenant_id = ? AND id = ?", (tenant, user_id))
            if row is None:
                raise NotFound(f"user {user_id!r} does not exist")
            if row["verified_at"] is not None:
                return _user(row)
            if not hmac.compare_digest(hash_secret(token), row["token_hash"] or ""):
                raise Unprocessable("the verification token is not this user's")
            if row["token_expires_at"] < time.time():
                raise Unprocessable("the verification token has expired")
            now = time.time()
            await tx.execute(
                "UPDATE users SET verified_at = ?, token_hash = NULL, token_expires_at = NULL"
                " WHERE tenant_id = ? AND id = ?",
                (now, tenant, user_id),
            )
            payload = {"user_id": user_id, "email": row["email"], "name": row["name"], "verified_at": now}
            await emit(tx, tenant, SOURCE, "user.verified", payload, self.outbox)
        return User(
            id=user_id,
            email=row["email"],
            name=row["name"],
            verified=True,
            created_at=row["created_at"],
            verified_at=now,
        )

    async def get(self, tenant: str, user_id: str) -> User:
        row = await self.db.fetchone("SELECT * FROM users WHERE tenant_id = ? AND id = ?", (tenant, user_id))
        if row is None:
            raise NotFound(f"user {user_id!r} does not exist")
        return _user(row)

    async def list(self, tenant: str, limit: int, cursor: str | None) -> Page[User]:
        after = decode_cursor(cursor, str) if cursor else ""
        rows = await self.db.fetchall(
            "SELECT * FROM users WHERE tenant_id = ? AND id > ? ORDER BY id LIMIT ?",
            (tenant, after, limit + 1),
        )
        items = [_user(r) for r in rows[:limit]]
        return Page(items=items, next_cursor=encode_cursor(items[-1].id) if len(rows) > limit else None)


def _user(row: Row) -> User:
    return User(
        id=row["id"],
        email=row["email"],
        name=row["name"],
        verified=row["verified_at"] is not None,
        created_at=row["created_at"],
        verified_at=row["verified_at"],
    )


def install_service(ctx: Context) -> UserService:
    ctx.migrations.extend(MIGRATIONS)
    service = UserService(ctx.db, ctx.outbox)
    ctx.provide("users", service)
    return service
