"""``Idempotency-Key`` support for writes that create something.

The first response to a (tenant, scope, key) is stored with a fingerprint of the request body, in the
same transaction as the write it describes. A repeat with the same body gets the stored response and
does nothing twice; a repeat with a different body is a 422, because the client reused a key by mistake.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import msgspec
from litestar import Request, Response
from litestar.params import HeaderParameter

from appliance.core.db import Database, Tx
from appliance.core.errors import Unprocessable
from appliance.core.shards import on_shard

__all__ = [
    "IdempotencyKey",
    "IdempotencyStore",
    "StoredResponse",
    "fingerprint",
    "idempotent",
    "idempotent_response",
]

MAX_KEY_LENGTH = 255

IdempotencyKey = Annotated[str | None, HeaderParameter(name="Idempotency-Key", max_length=MAX_KEY_LENGTH)]
"""A handler parameter: ``idempotency_key: IdempotencyKey = None``."""


_LOOKUP = "SELECT fingerprint, status, body FROM idempotency WHERE tenant_id = ? AND scope = ? AND key = ?"


class StoredResponse(msgspec.Struct, frozen=True):
    status: int
    body: bytes


def fingerprint(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def check_key(key: str) -> str:
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise Unprocessable(f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} printable characters")
    return key


class IdempotencyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def lookup(self, tenant: str, scope: str, key: str, print_: str) -> StoredResponse | None:
        """The stored response for this key, ``None`` if it is new; 422 if it was used with another body."""
        row = await self.db.fetchone(
            _LOOKUP,
            (tenant, scope, check_key(key)),
        )
        return _match(row["fingerprint"], row["status"], row["body"], print_) if row else None

    async def lookup_in(
        self, tx: Tx, tenant: str, scope: str, key: str, print_: str
    ) -> StoredResponse | None:
        """As :meth:`lookup`, inside a write transaction (so a concurrent repeat cannot slip between)."""
        row = await tx.fetchone(
            _LOOKUP,
            (tenant, scope, check_key(key)),
        )
        return _match(row["fingerprint"], row["status"], row["body"], print_) if row else None

    async def store(
        self, tx: Tx, tenant: str, scope: str, key: str, print_: str, response: StoredResponse
    ) -> None:
        await tx.execute(
            "INSERT INTO idempotency (tenant_id, scope, key, fingerprint, status, body, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (tenant, scope, key, print_, response.status, response.body, time.time()),
        )

    async def expire(self, older_than_s: float) -> int:
        """Forget keys older than ``older_than_s`` seconds, on every shard; returns how many."""
        forgotten = 0
        for shard in self.db.shard_names():
            with on_shard(shard):
                forgotten += await self.db.execute(
                    "DELETE FROM idempotency WHERE created_at < ?", (time.time() - older_than_s,)
                )
        return forgotten


def _match(stored: str, status: int, body: bytes, print_: str) -> StoredResponse:
    if stored != print_:
        raise Unprocessable("this Idempotency-Key was already used with a different request body")
    return StoredResponse(status=status, body=bytes(body))


async def idempotent(
    store: IdempotencyStore,
    tenant: str,
    scope: str,
    key: str | None,
    body: bytes,
    create: Callable[[Tx], Awaitable[tuple[int, Any]]],
) -> tuple[int, bytes]:
    """Run ``create`` in a transaction, at most once per ``Idempotency-Key``; return (status, JSON body).

    ``create`` does the write inside the transaction it is given and returns the status and the
    response content; with a key, that response is stored in the same transaction and replayed for a
    repeat. A repeat that races the first one waits on the writer lock and then sees its stored row.
    """
    print_ = fingerprint(body)
    if key is not None:
        stored = await store.lookup(tenant, scope, key, print_)
        if stored is not None:
            return stored.status, stored.body
    async with store.db.transaction() as tx:
        if key is not None:
            stored = await store.lookup_in(tx, tenant, scope, key, print_)
            if stored is not None:
                return stored.status, stored.body
        status, content = await create(tx)
        encoded = msgspec.json.encode(content)
        if key is not None:
            await store.store(tx, tenant, scope, key, print_, StoredResponse(status=status, body=encoded))
    return status, encoded


async def idempotent_response(
    store: IdempotencyStore,
    tenant: str,
    scope: str,
    key: str | None,
    request: Request[Any, Any, Any],
    create: Callable[[Tx], Awaitable[tuple[int, Any]]],
) -> Response[bytes]:
    """:func:`idempotent` for a route handler: fingerprints the request body, answers with JSON."""
    status, body = await idempotent(store, tenant, scope, key, await request.body(), create)
    return Response(content=body, status_code=status, media_type="application/json")
