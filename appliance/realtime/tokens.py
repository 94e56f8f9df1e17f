"""Short-lived realtime tokens: ``?token=`` on ``GET /v1/ws`` for browsers, which cannot send headers.

A token is ``rt1.<claims>.<signature>``: URL-safe base64 of the JSON claims (tenant, minting key,
user id, tags, expiry) and of their HMAC-SHA256 under a secret generated on first run and kept in
the metadata DB's ``meta`` table, so nodes sharing the DB accept each other's tokens. A token is
refused once expired, when its signature does not match, or when the key that minted it has been
revoked (or its tenant deleted).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time

import msgspec

from appliance.core.db import Database
from appliance.core.ids import new_secret
from appliance.core.tenants import Principal

__all__ = ["TOKEN_KEY_PREFIX", "TokenClaims", "TokenSigner"]

_VERSION = "rt1"
_META_KEY = "realtime_token_secret"
# Principals built from a token carry ``key_id = "token:<minting key id>"``: API key ids never contain ':'.
TOKEN_KEY_PREFIX = "token:"  # noqa: S105 (a prefix, not a secret)


class TokenClaims(msgspec.Struct, frozen=True):
    tenant: str
    key_id: str
    user_id: str | None
    tags: list[str]
    expires_at: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    """Mints and verifies realtime tokens; :meth:`load` must run once the DB is open."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._secret = b""

    async def load(self) -> None:
        """Adopt the stored signing secret, generating it on first run (the first node to start wins)."""
        await self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
            (_META_KEY, new_secret(32)),
        )
        row = await self._db.fetchone("SELECT value FROM meta WHERE key = ?", (_META_KEY,))
        assert row is not None
        self._secret = row["value"].encode()

    def mint(self, claims: TokenClaims) -> str:
        body = _b64(msgspec.json.encode(claims))
        return f"{_VERSION}.{body}.{self._sign(body)}"

    def decode(self, token: str, now: float | None = None) -> TokenClaims | None:
        """The claims of a well-formed, correctly signed, unexpired token; ``None`` otherwise."""
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != _VERSION or len(token) > 4096 or not self._secret:
            return None
        if not hmac.compare_digest(parts[2], self._sign(parts[1])):
            return None
        try:
            claims = msgspec.json.decode(_unb64(parts[1]), type=TokenClaims)
        except (binascii.Error, ValueError, msgspec.DecodeError):
            return None
        return claims if claims.expires_at > (time.time() if now is None else now) else None

    async def verify(self, token: str) -> Principal | None:
        """The token verifier the auth middleware calls for ``?token=`` on WebSockets."""
        claims = self.decode(token)
        if claims is None or not await self._minter_alive(claims):
            return None
        return Principal(
            tenant=claims.tenant, key_id=TOKEN_KEY_PREFIX + claims.key_id, scopes=frozenset({"realtime"})
        )

    async def _minter_alive(self, claims: TokenClaims) -> bool:
        if claims.key_id == "root":
            row = await self._db.fetchone("SELECT 1 FROM tenants WHERE id = ?", (claims.tenant,))
        else:
            row = await self._db.fetchone(
                "SELECT 1 FROM api_keys WHERE id = ? AND tenant_id = ? AND revoked_at IS NULL",
                (claims.key_id, claims.tenant),
            )
        return row is not None

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._secret, f"{_VERSION}.{body}".encode(), hashlib.sha256).digest())
