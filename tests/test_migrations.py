"""Migrations are forward-only and run on start: an older data dir upgrades in place."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from appliance.core.db import Database, Migration
from appliance.core.migrations import MIGRATIONS
from tests.conftest import ROOT, make_settings


async def test_a_data_dir_from_an_older_schema_upgrades_on_start(tmp_path: Path) -> None:
    from litestar.testing import AsyncTestClient

    from appliance.app import create_app

    settings = make_settings(tmp_path / "data")
    old = Database(settings.db_path)
    await old.open()
    await old.migrate(MIGRATIONS)  # what an older release left behind: core only, no plugin tables
    await old.execute("INSERT INTO tenants (id, name, created_at) VALUES ('legacy', 'Legacy', 0)")
    await old.close()
    async with AsyncTestClient(create_app(settings)) as client:
        assert (await client.get("/v1/tenants/legacy", headers=ROOT)).status_code == 200
        assert (
            await client.get("/v1/hello", headers=ROOT)
        ).status_code == 200  # the plugin's table exists now
    rows = (
        sqlite3.connect(settings.db_path)
        .execute("SELECT component, version FROM schema_migrations")
        .fetchall()
    )
    assert ("core", 1) in rows and ("hello", 1) in rows


async def test_a_failing_migration_rolls_back_and_names_itself(tmp_path: Path) -> None:
    db = Database(tmp_path / "x.db")
    await db.open()
    good = Migration("demo", 1, "table", "CREATE TABLE demo (id INTEGER)")
    bad = Migration("demo", 2, "broken", "CREATE TABLE half (id INTEGER); THIS IS NOT SQL")
    with pytest.raises(RuntimeError, match=r"demo#2 \(broken\)"):
        await db.migrate([good, bad])
    tables = {r[0] for r in await db.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "demo" in tables and "half" not in tables
    assert await db.migrate([good]) == []
    await db.close()


async def test_migrations_apply_once_in_listed_component_order(tmp_path: Path) -> None:
    db = Database(tmp_path / "y.db")
    await db.open()
    first = Migration("zeta", 1, "first", "CREATE TABLE zeta (id INTEGER)")
    second = Migration("alpha", 1, "second", "CREATE TABLE alpha (z INTEGER)")
    applied = await db.migrate([first, second])
    assert [m.component for m in applied] == ["zeta", "alpha"]
    assert await db.migrate([first, second]) == []
    await db.close()
