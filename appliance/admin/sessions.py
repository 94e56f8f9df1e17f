"""Admin UI sessions: a random cookie, stored hashed, with idle and absolute expiry, plus CSRF.

The browser never holds the API key: signing in trades it for a session id in an HttpOnly,
SameSite=Strict cookie. The server keeps only the id's SHA-256 digest. The CSRF token is an HMAC of
the raw session id, so it needs no storage, dies with the session and cannot be derived from the
database; every state-changing request made with the cookie must echo it in ``X-CSRF-Token``.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any

import msgspec
from litestar.connection import ASGIConnection

from appliance.core.db import Database, Migration
from appliance.core.errors import Forbidden
from appliance.core.ids import new_secret
from appliance.core.tenants import SCOPES, Principal, hash_secret

__all__ = [
    "COOKIE",
    "CSRF_HEADER",
    "MIGRATIONS",
    "SessionRecord",
    "SessionStore",
    "csrf_token",
]

COOKIE = "appliance_admin"
CSRF_HEADER = "x-csrf-token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# last_seen is refreshed at most this often, so browsing does not turn every read into a write.
_TOUCH_EVERY_S = 15.0

MIGRATIONS = [
    Migration(
        "admin",
        1,
        "admin UI sessions",
        """
        CREATE TABLE admin_sessions (
            id_hash TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            key_id TEXT NOT NULL,
            is_root INTEGER NOT NULL,
            created_at REAL NOT NULL,
            last_seen_at REAL NOT NULL,
            expires_at REAL NOT NULL
        );
        CREATE INDEX admin_sessions_by_expiry ON admin_sessions (expires_at);
        """,
    )
]


class SessionRecord(msgspec.Struct):
    """A live session: who signed in, and when it ends (the earlier of idle and absolute expiry)."""

    principal: Principal
    expires_at: float


def csrf_token(session_id: str) -> str:
    """The CSRF token bound to one session id."""
    return hmac.new(session_id.encode(), b"appliance-admin-csrf", hashlib.sha256).hexdigest()


class SessionStore:
    """Create, resolve and end admin sessions in the metadata database."""

    def __init__(
        self, db: Database, idle_s: float, max_s: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.db = db
        self.idle_s = idle_s
        self.max_s = max_s
        self.clock = clock

    async def create(self, principal: Principal) -> str:
        """Start a session for ``principal`` (root or an admin-scoped key); returns the raw session id."""
        session_id = new_secret()
        now = self.clock()
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM admin_sessions WHERE expires_at < ?", (now,))
            await tx.execute(
                "INSERT INTO admin_sessions (id_hash, tenant_id, key_id, is_root, created_at, last_seen_at,"
                " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    hash_secret(session_id),
                    principal.tenant,
                    principal.key_id,
                    int(principal.is_root),
                    now,
                    now,
                    now + self.max_s,
                ),
            )
        return session_id

    async def resolve(self, session_id: str) -> SessionRecord | None:
        """The session's principal, or ``None`` if unknown, expired or its key was revoked."""
        row = await self.db.fetchone(
            "SELECT s.*, k.scopes AS key_scopes FROM admin_sessions s"
            " LEFT JOIN api_keys k ON k.id = s.key_id AND k.revoked_at IS NULL"
            " WHERE s.id_hash = ?",
            (hash_secret(session_id),),
        )
        if row is None:
            return None
        now = self.clock()
        expires_at = min(row["expires_at"], row["last_seen_at"] + self.idle_s)
        principal = _principal(row)
        if now >= expires_at or principal is None:
            await self.delete(session_id)
            return None
        if now - row["last_seen_at"] >= _TOUCH_EVERY_S:
            await self.db.execute(
                "UPDATE admin_sessions SET last_seen_at = ? WHERE id_hash = ?", (now, row["id_hash"])
            )
            expires_at = min(row["expires_at"], now + self.idle_s)
        return SessionRecord(principal=principal, expires_at=expires_at)

    async def delete(self, session_id: str) -> None:
        await self.db.execute("DELETE FROM admin_sessions WHERE id_hash = ?", (hash_secret(session_id),))

    async def resolve_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> Principal | None:
        """A credential resolver for the auth middleware: the session cookie, CSRF-checked on writes."""
        session_id = connection.cookies.get(COOKIE)
        if not session_id:
            return None
        record = await self.resolve(session_id)
        if record is None:
            return None
        if connection.scope.get("method", "GET") not in _SAFE_METHODS:
            sent = connection.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(sent.encode(), csrf_token(session_id).encode()):
                raise Forbidden(
                    "missing or wrong X-CSRF-Token: requests signed in with the admin session cookie"
                    " must send the token from GET /admin/api/session",
                    slug="csrf",
                )
        return record.principal


def _principal(row: Any) -> Principal | None:
    if row["is_root"]:
        return Principal(tenant="default", key_id="root", scopes=frozenset(SCOPES), is_root=True)
    if row["key_scopes"] is None:  # the key was revoked (or its tenant deleted) since sign-in
        return None
    scopes = frozenset(row["key_scopes"].split(","))
    if "admin" not in scopes:
        return None
    return Principal(tenant=row["tenant_id"], key_id=row["key_id"], scopes=scopes)
