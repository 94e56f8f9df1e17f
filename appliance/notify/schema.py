"""The notify component's tables. Every row carries its tenant and cascades from ``tenants``."""

from __future__ import annotations

from appliance.core.db import Migration, postgres_ddl

__all__ = ["MIGRATIONS"]

_V1 = """
        CREATE TABLE email_templates (
            tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            subject TEXT NOT NULL,
            html TEXT NOT NULL,
            text TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (tenant_id, name)
        );
        CREATE TABLE emails (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            sender TEXT NOT NULL,
            recipients TEXT NOT NULL,
            subject TEXT NOT NULL,
            html TEXT NOT NULL,
            text TEXT NOT NULL,
            template TEXT,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL,
            error TEXT,
            message_id TEXT,
            dedupe_key TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            sent_at REAL
        );
        CREATE INDEX emails_by_tenant ON emails (tenant_id, id);
        CREATE UNIQUE INDEX emails_dedupe ON emails (tenant_id, dedupe_key) WHERE dedupe_key IS NOT NULL;
        CREATE TABLE email_captures (
            email_id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            sender TEXT NOT NULL,
            recipients TEXT NOT NULL,
            subject TEXT NOT NULL,
            mime BLOB NOT NULL,
            captured_at REAL NOT NULL
        );
        CREATE INDEX email_captures_by_tenant ON email_captures (tenant_id);
        CREATE TABLE email_bulk_pace (
            tenant_id TEXT PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
            next_at REAL NOT NULL
        );
        CREATE TABLE push_subscriptions (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            user_id TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            p256dh TEXT NOT NULL,
            auth TEXT NOT NULL,
            topics TEXT NOT NULL,
            created_at REAL NOT NULL,
            UNIQUE (tenant_id, endpoint)
        );
        CREATE INDEX push_subscriptions_by_user ON push_subscriptions (tenant_id, user_id, id);
        CREATE TABLE pushes (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            user_id TEXT,
            topic TEXT,
            title TEXT NOT NULL,
            payload BLOB NOT NULL,
            ttl_s INTEGER NOT NULL,
            status TEXT NOT NULL,
            subscriptions INTEGER NOT NULL,
            delivered INTEGER NOT NULL DEFAULT 0,
            removed INTEGER NOT NULL DEFAULT 0,
            rejected INTEGER NOT NULL DEFAULT 0,
            attempts INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE INDEX pushes_by_tenant ON pushes (tenant_id, id);
        CREATE TABLE push_deliveries (
            push_id TEXT NOT NULL REFERENCES pushes(id) ON DELETE CASCADE,
            subscription_id TEXT NOT NULL,
            outcome TEXT NOT NULL,
            PRIMARY KEY (push_id, subscription_id)
        );
        """

MIGRATIONS = [
    Migration(
        "notify",
        1,
        "templates, emails, captures, push subscriptions and pushes",
        _V1,
        # SQLite orders captures by rowid; PostgreSQL has none, so it gets an identity column of that name.
        postgres=postgres_ddl(_V1).replace(
            "email_id TEXT PRIMARY KEY,",
            "rowid BIGINT GENERATED ALWAYS AS IDENTITY, email_id TEXT PRIMARY KEY,",
        ),
    ),
]
