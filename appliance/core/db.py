"""The metadata database: SQLite through aiosqlite, in WAL mode, with numbered migrations.

One writer connection serialises transactions (SQLite allows one writer at a time anyway); a small
pool of reader connections serves reads concurrently and, thanks to WAL, only ever sees committed
data. A read issued after a transaction commits sees that transaction (read-your-writes).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec

__all__ = ["Database", "Migration", "Row", "Tx"]

log = logging.getLogger(__name__)

Row = sqlite3.Row
Params = Sequence[Any] | dict[str, Any]

_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=10000",
)


class Migration(msgspec.Struct, frozen=True):
    """One schema change of one component, applied once, in ``version`` order, in a transaction.

    ``sql`` is a script of one or more statements. Components are independent: ``core``,
    ``storage``, a plugin's name... so a plugin can never collide with the appliance's own versions.
    """

    component: str
    version: int
    name: str
    sql: str


class Tx:
    """A write transaction. Statements run on the writer connection; nothing is visible until commit."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._after_commit: list[Callable[[], Awaitable[None] | None]] = []

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; return the number of rows it changed."""
        cursor = await self._conn.execute(sql, params)
        count = cursor.rowcount
        await cursor.close()
        return count

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        await self._conn.executemany(sql, rows)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self._conn.execute_fetchall(sql, params)
        return next(iter(rows), None)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return list(await self._conn.execute_fetchall(sql, params))

    def after_commit(self, callback: Callable[[], Awaitable[None] | None]) -> None:
        """Run ``callback`` once the transaction has committed (e.g. wake a dispatcher)."""
        self._after_commit.append(callback)


class Database:
    """The appliance's SQLite metadata store."""

    def __init__(self, path: Path | str, readers: int = 2) -> None:
        self.path = str(path)
        self._reader_count = readers
        self._writer: aiosqlite.Connection | None = None
        self._readers: list[aiosqlite.Connection] = []
        self._next_reader: itertools.cycle[int] = itertools.cycle([0])
        self._write_lock = asyncio.Lock()
        self._inline: sqlite3.Connection | None = None

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        conn.row_factory = sqlite3.Row
        for pragma in _PRAGMAS:
            await conn.execute(pragma)
        return conn

    async def open(self) -> None:
        """Open the writer and the reader pool; creates the file if it does not exist."""
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._writer = await self._connect()
        self._readers = [await self._connect() for _ in range(self._reader_count)]
        self._next_reader = itertools.cycle(range(len(self._readers)))
        self._inline = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._inline.row_factory = sqlite3.Row
        self._inline.execute("PRAGMA query_only=ON")
        self._inline.execute("PRAGMA busy_timeout=250")

    async def close(self) -> None:
        if self._inline is not None:
            self._inline.close()
            self._inline = None
        for conn in [*self._readers, *([self._writer] if self._writer else [])]:
            await conn.close()
        self._readers, self._writer = [], None

    @property
    def writer(self) -> aiosqlite.Connection:
        if self._writer is None:
            raise RuntimeError("database is not open")
        return self._writer

    def _reader(self) -> aiosqlite.Connection:
        if not self._readers:
            raise RuntimeError("database is not open")
        return self._readers[next(self._next_reader)]

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """A write transaction: commits when the block exits, rolls back if it raises."""
        async with self._write_lock:
            conn = self.writer
            await conn.execute("BEGIN IMMEDIATE")
            tx = Tx(conn)
            try:
                yield tx
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
            await conn.execute("COMMIT")
        for callback in tx._after_commit:
            result = callback()
            if result is not None:
                await result

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        """Read one row from committed data (or ``None``)."""
        rows = await self._reader().execute_fetchall(sql, params)
        return next(iter(rows), None)

    def fetchone_inline(self, sql: str, params: Params = ()) -> Row | None:
        """Read one row on the calling (event-loop) thread: for indexed point lookups on hot paths only.

        A primary-key read from a WAL database takes microseconds, less than handing it to a worker
        thread and back (which more than halved the throughput of authenticated requests). WAL readers
        never wait for writers, so this does not block on a busy writer.
        """
        if self._inline is None:
            raise RuntimeError("database is not open")
        row: Row | None = self._inline.execute(sql, params).fetchone()
        return row

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        """Read all rows from committed data."""
        return list(await self._reader().execute_fetchall(sql, params))

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one write statement in its own transaction; return the rows it changed."""
        async with self.transaction() as tx:
            return await tx.execute(sql, params)

    async def migrate(self, migrations: Iterable[Migration]) -> list[Migration]:
        """Apply the migrations not yet applied; return those applied.

        Components apply in the order first listed, each component's versions in ascending order.
        """
        conn = self.writer
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (component TEXT NOT NULL, version INTEGER NOT NULL,"
            " name TEXT NOT NULL, applied_at REAL NOT NULL, PRIMARY KEY (component, version))"
        )
        done = {
            (r[0], r[1])
            for r in await conn.execute_fetchall("SELECT component, version FROM schema_migrations")
        }
        # Components apply in the order they are first listed (core first), versions in order within each.
        listed = list(migrations)
        rank = {c: i for i, c in reversed(list(enumerate(m.component for m in listed)))}
        pending = sorted(
            (m for m in listed if (m.component, m.version) not in done),
            key=lambda m: (rank[m.component], m.version),
        )
        _check_unique(pending)
        for migration in pending:
            await self._apply(migration)
        return pending

    async def _apply(self, migration: Migration) -> None:
        async with self._write_lock:
            conn = self.writer
            record = (
                "INSERT INTO schema_migrations (component, version, name, applied_at) VALUES "
                f"('{_quote(migration.component)}', {int(migration.version)}, '{_quote(migration.name)}', {time.time()})"
            )
            try:
                # executescript runs several statements; BEGIN/COMMIT inside it keeps them atomic.
                await conn.executescript(f"BEGIN IMMEDIATE;\n{migration.sql}\n;{record};\nCOMMIT;")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    await conn.execute("ROLLBACK")
                raise RuntimeError(
                    f"migration {migration.component}#{migration.version} ({migration.name}) failed: {exc}"
                ) from exc
        log.info("applied migration %s#%s %s", migration.component, migration.version, migration.name)


def _quote(text: str) -> str:
    return text.replace("'", "''")


def _check_unique(migrations: Sequence[Migration]) -> None:
    seen: set[tuple[str, int]] = set()
    for m in migrations:
        if (m.component, m.version) in seen:
            raise RuntimeError(f"two migrations claim {m.component}#{m.version}")
        seen.add((m.component, m.version))
