"""The core component's schema. Capabilities and plugins add their own components."""

from __future__ import annotations

from appliance.core.db import Migration, postgres_ddl
from appliance.core.shards import MIGRATIONS as SHARD_MIGRATIONS

__all__ = ["MIGRATIONS"]

_NOW_SQLITE = "(julianday('now') - 2440587.5) * 86400.0"

_V1 = f"""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE tenants (
            id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at REAL NOT NULL
        );
        CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            scopes TEXT NOT NULL,
            secret_hash TEXT NOT NULL,
            created_at REAL NOT NULL,
            revoked_at REAL
        );
        CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id, id);
        CREATE TABLE idempotency (
            tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            scope TEXT NOT NULL,
            key TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            status INTEGER NOT NULL,
            body BLOB NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (tenant_id, scope, key)
        );
        CREATE TABLE events (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            source TEXT NOT NULL,
            type TEXT NOT NULL,
            payload TEXT NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE INDEX events_by_tenant ON events (tenant_id, id);
        CREATE INDEX events_by_type ON events (tenant_id, type, id);
        CREATE TABLE outbox (
            event_id TEXT PRIMARY KEY REFERENCES events(id) ON DELETE CASCADE,
            tenant_id TEXT NOT NULL,
            created_at REAL NOT NULL
        );
        INSERT INTO tenants (id, name, created_at) VALUES ('default', 'Default tenant', {_NOW_SQLITE});
        """

# PostgreSQL only: what lets the capabilities' SQL run unchanged there. ``COLLATE NOCASE`` (an ICU
# collation, ASCII-and-more case-insensitive) and ``json_each(text)`` over a JSON array, like SQLite's.
_PG_COMPAT = """
CREATE COLLATION IF NOT EXISTS nocase (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
CREATE OR REPLACE FUNCTION json_each(doc text) RETURNS TABLE (key text, value text)
LANGUAGE sql IMMUTABLE AS $$
    SELECT (e.ord - 1)::text, e.elem FROM json_array_elements_text(doc::json) WITH ORDINALITY AS e(elem, ord)
$$;
"""

MIGRATIONS = [
    Migration(
        "core",
        1,
        "tenants, keys, idempotency, event log",
        _V1,
        postgres=postgres_ddl(_V1).replace(_NOW_SQLITE, "EXTRACT(EPOCH FROM now())"),
    ),
    Migration(
        "core", 2, "PostgreSQL compatibility: NOCASE collation, json_each(text)", "", postgres=_PG_COMPAT
    ),
    *SHARD_MIGRATIONS,
]
