"""The core component's schema. Capabilities and plugins add their own components."""

from __future__ import annotations

from appliance.core.db import Migration

__all__ = ["MIGRATIONS"]

MIGRATIONS = [
    Migration(
        "core",
        1,
        "tenants, keys, idempotency, event log",
        """
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
        INSERT INTO tenants (id, name, created_at) VALUES ('default', 'Default tenant', (julianday('now') - 2440587.5) * 86400.0);
        """,
    ),
]
