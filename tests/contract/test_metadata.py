"""The metadata store's contract, on SQLite and on a real PostgreSQL: one behaviour for both engines."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from appliance.core.db import (
    Database,
    IntegrityError,
    Migration,
    PostgresDatabase,
    open_database,
    placeholders,
    postgres_ddl,
)
from appliance.core.migrations import MIGRATIONS
from tests.peers import PostgresPeer

SCHEMA = Migration(
    "contract",
    1,
    "things",
    """
    CREATE TABLE things (
        id TEXT PRIMARY KEY,
        n INTEGER NOT NULL,
        score REAL,
        data BLOB,
        note TEXT
    );
    CREATE TABLE seq (id INTEGER PRIMARY KEY AUTOINCREMENT, label TEXT NOT NULL);
    CREATE UNIQUE INDEX things_by_note ON things (note COLLATE NOCASE);
    """,
)


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        database = Database(tmp_path / "meta.db")
    else:
        peer: PostgresPeer = request.getfixturevalue("postgres_peer")
        name = f"c_{uuid.uuid4().hex[:12]}"
        database = PostgresDatabase(peer.create_database(name), pool_size=4)
    await database.open()
    await database.migrate([*MIGRATIONS, SCHEMA])
    try:
        yield database
    finally:
        await database.close()
        if request.param == "postgres":
            peer.drop_database(name)


async def test_migrations_apply_once(db: Database) -> None:
    assert await db.migrate([*MIGRATIONS, SCHEMA]) == []
    later = Migration("contract", 2, "column", "ALTER TABLE things ADD COLUMN extra TEXT")
    assert await db.migrate([*MIGRATIONS, SCHEMA, later]) == [later]
    assert await db.migrate([*MIGRATIONS, SCHEMA, later]) == []
    row = await db.fetchone("SELECT count(*) AS n FROM schema_migrations WHERE component = ?", ("contract",))
    assert row is not None and row["n"] == 2


async def test_a_failing_migration_rolls_back_and_names_itself(db: Database) -> None:
    bad = Migration("contract", 2, "broken", "CREATE TABLE half (id INTEGER); THIS IS NOT SQL")
    with pytest.raises(RuntimeError, match=r"contract#2 \(broken\)"):
        await db.migrate([*MIGRATIONS, SCHEMA, bad])
    # The table must not exist, whichever engine raises what.
    with pytest.raises(Exception):
        await db.fetchall("SELECT * FROM half")


async def test_commit_and_rollback(db: Database) -> None:
    async with db.transaction() as tx:
        assert await tx.execute("INSERT INTO things (id, n) VALUES (?, ?)", ("a", 1)) == 1
        # Read-your-writes inside the transaction.
        row = await tx.fetchone("SELECT n FROM things WHERE id = ?", ("a",))
        assert row is not None and row["n"] == 1
    with pytest.raises(RuntimeError, match="boom"):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO things (id, n) VALUES (?, ?)", ("b", 2))
            raise RuntimeError("boom")
    rows = await db.fetchall("SELECT id FROM things ORDER BY id")
    assert [r["id"] for r in rows] == ["a"]
    # Read-your-writes after commit, on every read path.
    assert await db.fetchone("SELECT 1 FROM things WHERE id = ?", ("a",)) is not None
    assert await db.point_read("SELECT 1 FROM things WHERE id = ?", ("a",)) is not None


async def test_after_commit_runs_only_after_a_commit(db: Database) -> None:
    calls: list[str] = []

    async def hook() -> None:
        calls.append("async")

    async with db.transaction() as tx:
        tx.after_commit(lambda: calls.append("sync"))
        tx.after_commit(hook)
        assert calls == []
    assert calls == ["sync", "async"]
    with pytest.raises(ValueError):
        async with db.transaction() as tx:
            tx.after_commit(lambda: calls.append("never"))
            raise ValueError
    assert calls == ["sync", "async"]


async def test_rowcounts_and_upserts(db: Database) -> None:
    await db.execute("INSERT INTO things (id, n) VALUES ('a', 1), ('b', 2), ('c', 3)")
    assert await db.execute("UPDATE things SET n = n + 10 WHERE n >= ?", (2,)) == 2
    ignored = "INSERT INTO things (id, n) VALUES (?, ?) ON CONFLICT (id) DO NOTHING"
    assert await db.execute(ignored, ("a", 99)) == 0
    upsert = "INSERT INTO things (id, n) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET n = excluded.n"
    assert await db.execute(upsert, ("a", 7)) == 1
    async with db.transaction() as tx:
        row = await tx.fetchone("UPDATE things SET n = n + 1 WHERE id = ? RETURNING n", ("a",))
        await tx.executemany("INSERT INTO seq (label) VALUES (?)", [("x",), ("y",)])
    assert row is not None and row["n"] == 8
    labels = await db.fetchall("SELECT id, label FROM seq ORDER BY id")
    assert [r["label"] for r in labels] == ["x", "y"] and labels[0]["id"] < labels[1]["id"]
    assert await db.execute("DELETE FROM things WHERE id IN (?, ?)", ("b", "c")) == 2


async def test_placeholders_skip_literals(db: Database) -> None:
    await db.execute("INSERT INTO things (id, n, note) VALUES (?, ?, 'what? yes?')", ("q", 1))
    row = await db.fetchone(
        "SELECT id, note, '?' AS mark FROM things WHERE note = 'what? yes?' AND n = ?", (1,)
    )
    assert row is not None and (row["id"], row["note"], row["mark"]) == ("q", "what? yes?", "?")
    assert placeholders("SELECT '?', \"a?\", ? -- ?\n, ?") == "SELECT '?', \"a?\", $1 -- ?\n, $2"
    assert placeholders("SELECT 'it''s ?', ?") == "SELECT 'it''s ?', $1"


async def test_unique_violation_is_the_portable_error(db: Database) -> None:
    await db.execute("INSERT INTO things (id, n) VALUES (?, ?)", ("a", 1))
    with pytest.raises(IntegrityError):
        await db.execute("INSERT INTO things (id, n) VALUES (?, ?)", ("a", 2))
    with pytest.raises(IntegrityError):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO things (id, n) VALUES (?, ?)", ("z", 1))
            await tx.execute("INSERT INTO things (id, n) VALUES (?, ?)", ("z", 2))
    assert await db.fetchone("SELECT 1 FROM things WHERE id = 'z'") is None
    # COLLATE NOCASE is case-insensitive on both engines (an ICU collation on PostgreSQL).
    await db.execute("INSERT INTO things (id, n, note) VALUES ('u1', 1, 'Ada@Example.com')")
    with pytest.raises(IntegrityError):
        await db.execute("INSERT INTO things (id, n, note) VALUES ('u2', 1, 'ada@example.COM')")
    found = await db.fetchone("SELECT id FROM things WHERE note = ? COLLATE NOCASE", ("ADA@example.com",))
    assert found is not None and found["id"] == "u1"


async def test_rows_by_index_and_name_and_types_round_trip(db: Database) -> None:
    blob = bytes(range(256))
    await db.execute(
        "INSERT INTO things (id, n, score, data, note) VALUES (?, ?, ?, ?, ?)",
        ("t", 2**62, 0.1 + 0.2, blob, None),
    )
    row = await db.fetchone("SELECT id, n, score, data, note FROM things WHERE id = ?", ("t",))
    assert row is not None
    assert row[0] == row["id"] == "t"
    assert row[1] == row["n"] == 2**62 and isinstance(row["n"], int)
    assert row["score"] == 0.1 + 0.2 and isinstance(row["score"], float)
    assert bytes(row["data"]) == blob
    assert row["note"] is None
    assert dict(row) == {"id": "t", "n": 2**62, "score": 0.1 + 0.2, "data": blob, "note": None}
    assert list(row.keys()) == ["id", "n", "score", "data", "note"]
    total = await db.fetchone("SELECT SUM(n) AS s, COUNT(*) AS c, MAX(score) AS m FROM things")
    assert total is not None and (total["s"], total["c"]) == (2**62, 1) and isinstance(total["s"], int)
    # json_each over a JSON array, as SQLite has it.
    tags = await db.fetchall("SELECT value FROM json_each(?) ORDER BY key", ('["b", "a"]',))
    assert [r["value"] for r in tags] == ["b", "a"]


async def test_concurrent_transactions_all_land(db: Database) -> None:
    await db.execute("INSERT INTO things (id, n) VALUES ('counter', 0)")

    async def bump(i: int) -> None:
        async with db.transaction() as tx:
            await tx.execute("UPDATE things SET n = n + 1 WHERE id = 'counter'")
            await tx.execute("INSERT INTO things (id, n) VALUES (?, ?)", (f"t{i}", i))

    await asyncio.gather(*(bump(i) for i in range(20)))
    row = await db.fetchone("SELECT n FROM things WHERE id = 'counter'")
    count = await db.fetchone("SELECT count(*) AS c FROM things WHERE id LIKE 't%'")
    assert row is not None and row["n"] == 20 and count is not None and count["c"] == 20


def test_ddl_translation_keeps_names_and_literals() -> None:
    sql = "CREATE TABLE t (blob BLOB, real REAL DEFAULT 'REAL', n INTEGER PRIMARY KEY AUTOINCREMENT) WITHOUT ROWID"
    assert postgres_ddl(sql) == (
        "CREATE TABLE t (blob BYTEA, real DOUBLE PRECISION DEFAULT 'REAL',"
        " n BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY)"
    )
    override = Migration("x", 1, "x", "SELECT 1", postgres="SELECT 2")
    assert (override.script("sqlite"), override.script("postgres")) == ("SELECT 1", "SELECT 2")


def test_the_url_picks_the_engine(tmp_path: Path) -> None:
    assert type(open_database("", tmp_path / "a.db")) is Database
    pg = open_database("postgresql://u:secret@db:5432/app", tmp_path / "a.db")
    assert isinstance(pg, PostgresDatabase) and "secret" not in pg.location
    with pytest.raises(ValueError, match="postgresql://"):
        open_database("mysql://x", tmp_path / "a.db")


async def test_lag_tolerant_reads_go_to_a_replica_until_the_task_writes(postgres_peer: PostgresPeer) -> None:
    from tests.peers import postgres_replica, postgres_workdir

    name = f"r_{uuid.uuid4().hex[:12]}"
    primary_url = postgres_peer.create_database(name)
    postgres_peer.psql("CREATE TABLE marks (n BIGINT)", name)
    try:
        with postgres_workdir() as workdir, postgres_replica(postgres_peer, workdir) as replica:
            db = PostgresDatabase(primary_url, pool_size=2, replica_urls=[replica.url(name)])
            await db.open()
            try:

                async def request(write: bool) -> tuple[bool, bool, bool]:
                    """One request's task: where its reads went, as (lag_ok, lag_ok after a write, strict)."""
                    recovery = "SELECT pg_is_in_recovery() AS r"
                    before = await db.fetchone(recovery, lag_ok=True)
                    if write:
                        await db.execute("INSERT INTO marks (n) VALUES (1)")
                    after = await db.fetchone(recovery, lag_ok=True)
                    strict = await db.fetchone(recovery)
                    assert before is not None and after is not None and strict is not None
                    return before["r"], after["r"], strict["r"]

                # A request that only reads uses the replica for lag-tolerant reads, the primary otherwise.
                assert await asyncio.create_task(request(write=False)) == (True, True, False)
                # A request that wrote reads its own writes: every later read goes to the primary.
                assert await asyncio.create_task(request(write=True)) == (True, False, False)
                # ...and that does not stick to the next request.
                assert await asyncio.create_task(request(write=False)) == (True, True, False)
                # The replica really streams from the primary.
                await asyncio.create_task(db.execute("INSERT INTO marks (n) VALUES (7)"))
                deadline = asyncio.get_running_loop().time() + 10
                while not await db.fetchone("SELECT 1 FROM marks WHERE n = 7", lag_ok=True):
                    assert asyncio.get_running_loop().time() < deadline, "the replica never caught up"
                    await asyncio.sleep(0.02)
            finally:
                await db.close()
    finally:
        postgres_peer.drop_database(name)
