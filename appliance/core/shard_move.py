"""Moving a tenant between shards: freeze, copy, verify, switch, clean up.

``appliance tenants move TENANT --to SHARD`` runs :func:`move_tenant`. The steps, each recorded so
that running the command again after an interruption picks up where it stopped:

1. **Intent**: the directory's placement row gets ``moving_to``.
2. **Freeze**: a ``tenant_fence`` row on the source shard. Routed writes check it inside their
   transaction (see :mod:`appliance.core.shards`), so from the moment it commits no write of the
   tenant lands on the source: writes wait for the switch, then go to the destination. Job workers and
   the event dispatcher leave a fenced tenant's jobs and outbox alone; the move waits (bounded) for the
   tenant's running jobs to finish.
3. **Copy**: the destination's rows of the tenant are cleared (a half-finished earlier copy), then
   every table with a ``tenant_id`` column (and tables hanging off those by a foreign key) is copied
   in foreign-key order, in batches.
4. **Verify**: row count and an order-independent checksum per table, source against destination; a
   table that differs is copied again (a background loop may have touched it), up to three times.
5. **Switch**: the placement names the destination (``epoch`` + 1) and remembers ``moved_from``.
6. **Clean up**: after a grace period (longer than nodes cache a placement for reads), the source's
   rows are deleted. The fence row stays there, so a node that still routes to the old shard is
   turned away rather than served.

What the tables are is read from the schema, so a plugin's tables move with the rest.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from appliance.core.db import Database, Row
from appliance.core.errors import Conflict, NotFound, Unprocessable
from appliance.core.shards import DIRECTORY, ShardedDatabase, fence_key

__all__ = ["MoveReport", "TableSpec", "move_tenant", "tenant_tables"]

log = logging.getLogger("appliance.shards")

BATCH_ROWS = 1000
VERIFY_ROUNDS = 3
# Tables of the directory or of the shard machinery itself: never copied with a tenant.
_NOT_TENANT_DATA = {
    "tenants",
    "api_keys",
    "admin_sessions",
    "meta",
    "schema_migrations",
    "tenant_placements",
    "tenant_fence",
}

Progress = Callable[[str], None]


@dataclass
class TableSpec:
    """A table holding tenant rows: which columns to copy and how to select the tenant's rows."""

    name: str
    columns: list[str]
    order: list[str]
    where: str  # with one ``?``: the tenant id
    parents: set[str] = field(default_factory=set)

    def select(self) -> str:
        cols = ", ".join(_quoted(c) for c in self.columns)
        order = ", ".join(_quoted(c) for c in self.order)
        return f"SELECT {cols} FROM {_quoted(self.name)} WHERE {self.where} ORDER BY {order} LIMIT ? OFFSET ?"

    def insert(self) -> str:
        cols = ", ".join(_quoted(c) for c in self.columns)
        return f"INSERT INTO {_quoted(self.name)} ({cols}) VALUES ({', '.join('?' * len(self.columns))})"


@dataclass
class MoveReport:
    tenant: str
    source: str
    target: str
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    resumed: bool = False

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _schema(
    db: Database,
) -> tuple[dict[str, list[str]], dict[str, list[str]], list[tuple[str, str, str, str]]]:
    """({table: copyable columns}, {table: primary key columns}, [(child, column, parent, parent column)])."""
    columns: dict[str, list[str]] = {}
    keys: dict[str, list[str]] = {}
    fks: list[tuple[str, str, str, str]] = []
    if db.dialect == "postgres":
        for r in await db.fetchall(
            "SELECT table_name, column_name, is_identity FROM information_schema.columns"
            " WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
        ):
            # Identity columns (an ordering counter) are numbered afresh by the destination.
            if r["is_identity"] != "YES":
                columns.setdefault(r["table_name"], []).append(r["column_name"])
        for r in await db.fetchall(
            "SELECT cl.relname AS tbl, a.attname AS col FROM pg_index i JOIN pg_class cl ON cl.oid = i.indrelid"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
            " WHERE i.indisprimary AND cl.relnamespace = current_schema()::regnamespace"
        ):
            keys.setdefault(r["tbl"], []).append(r["col"])
        for r in await db.fetchall(
            "SELECT cl.relname AS child, a.attname AS col, p.relname AS parent, pa.attname AS pcol"
            " FROM pg_constraint c JOIN pg_class cl ON cl.oid = c.conrelid JOIN pg_class p ON p.oid = c.confrelid"
            " JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]"
            " JOIN pg_attribute pa ON pa.attrelid = c.confrelid AND pa.attnum = c.confkey[1]"
            " WHERE c.contype = 'f' AND cl.relnamespace = current_schema()::regnamespace"
        ):
            fks.append((r["child"], r["col"], r["parent"], r["pcol"]))
        return columns, keys, fks
    tables = await db.fetchall(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
    )
    for t in tables:
        name = str(t["name"])
        info = await db.fetchall(f"PRAGMA table_info({_quoted(name)})")
        columns[name] = [str(r["name"]) for r in info]
        keys[name] = [str(r["name"]) for r in sorted(info, key=lambda r: r["pk"]) if r["pk"]]
        for r in await db.fetchall(f"PRAGMA foreign_key_list({_quoted(name)})"):
            fks.append((name, str(r["from"]), str(r["table"]), str(r["to"])))
    return columns, keys, fks


async def tenant_tables(db: Database) -> list[TableSpec]:
    """Every table holding tenant rows, parents before children (copy order; delete in reverse)."""
    columns, keys, fks = await _schema(db)
    specs: dict[str, TableSpec] = {}
    for name, cols in columns.items():
        if name in _NOT_TENANT_DATA or not cols:
            continue
        if "tenant_id" in cols:
            specs[name] = TableSpec(name, cols, keys.get(name) or cols, "tenant_id = ?")
    # Tables without a tenant_id that hang off a tenant table by a foreign key (push deliveries...).
    for child, col, parent, pcol in fks:
        if child in specs or child in _NOT_TENANT_DATA or parent not in specs:
            continue
        where = f"{_quoted(col)} IN (SELECT {_quoted(pcol)} FROM {_quoted(parent)} WHERE tenant_id = ?)"
        specs[child] = TableSpec(child, columns[child], keys.get(child) or columns[child], where)
    for child, _, parent, _ in fks:
        if child in specs and parent in specs and parent != child:
            specs[child].parents.add(parent)
    ordered: list[TableSpec] = []
    placed: set[str] = set()
    while len(ordered) < len(specs):
        ready = sorted(n for n, s in specs.items() if n not in placed and s.parents <= placed)
        if not ready:
            raise RuntimeError(f"foreign keys form a cycle among {sorted(set(specs) - placed)}")
        for name in ready:
            ordered.append(specs[name])
            placed.add(name)
    return ordered


def _checksum(rows: list[Row]) -> int:
    total = 0
    for row in rows:
        total += int.from_bytes(hashlib.sha256(msgspec.msgpack.encode(list(row))).digest()[:16], "big")
    return total % (1 << 128)


async def _fingerprint(db: Database, spec: TableSpec, tenant: str) -> tuple[int, int]:
    count, total, offset = 0, 0, 0
    while True:
        rows = await db.fetchall(spec.select(), (tenant, BATCH_ROWS, offset))
        count += len(rows)
        total = (total + _checksum(rows)) % (1 << 128)
        if len(rows) < BATCH_ROWS:
            return count, total
        offset += BATCH_ROWS


async def _copy_table(source: Database, target: Database, spec: TableSpec, tenant: str) -> int:
    copied, offset = 0, 0
    while True:
        rows = await source.fetchall(spec.select(), (tenant, BATCH_ROWS, offset))
        if rows:
            async with target.transaction() as tx:
                await tx.executemany(spec.insert(), [tuple(r) for r in rows])
        copied += len(rows)
        if len(rows) < BATCH_ROWS:
            return copied
        offset += BATCH_ROWS


async def _delete_rows(db: Database, tables: list[TableSpec], tenant: str, *, with_tenant_row: bool) -> None:
    async with db.transaction() as tx:
        for spec in reversed(tables):
            await tx.execute(f"DELETE FROM {_quoted(spec.name)} WHERE {spec.where}", (tenant,))
        if with_tenant_row:
            await tx.execute("DELETE FROM tenants WHERE id = ?", (tenant,))


async def _set_fence(db: Database, tenant: str, state: str, target: str) -> None:
    async with db.transaction() as tx:
        if tx.dialect == "postgres":
            # Exclusive: waits for the tenant's in-flight writes (they hold it shared) to commit.
            await tx.fetchone("SELECT pg_advisory_xact_lock(?)", (fence_key(tenant),))
        await tx.execute(
            "INSERT INTO tenant_fence (tenant_id, state, target, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (tenant_id) DO UPDATE SET state = excluded.state, target = excluded.target,"
            " updated_at = excluded.updated_at",
            (tenant, state, target, time.time()),
        )


async def _wait_for_running_jobs(db: Database, tenant: str, wait_s: float, progress: Progress) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        row = await db.fetchone(
            "SELECT COUNT(*) AS n FROM jobs WHERE tenant_id = ? AND status = 'running'", (tenant,)
        )
        running = int(row["n"]) if row is not None else 0
        if not running:
            return
        if time.monotonic() >= deadline:
            progress(
                f"{running} job(s) still running after {wait_s:g}s: they may run once more after the move"
            )
            return
        await asyncio.sleep(0.1)


async def move_tenant(
    db: ShardedDatabase,
    tenant: str,
    target: str,
    *,
    grace_s: float = 5.0,
    jobs_wait_s: float = 30.0,
    progress: Progress = lambda _: None,
) -> MoveReport:
    """Move ``tenant`` to shard ``target``; safe to run again after an interruption (it resumes)."""
    started = time.monotonic()
    directory = db.directory
    if target not in db.shards:
        raise Unprocessable(f"no shard named {target!r}; APPLIANCE_DATABASE_SHARDS lists {sorted(db.shards)}")
    if await directory.fetchone("SELECT 1 FROM tenants WHERE id = ?", (tenant,)) is None:
        raise NotFound(f"tenant {tenant!r} does not exist")
    placement = await _placement(directory, tenant)
    source, moving_to, moved_from = placement
    report = MoveReport(tenant=tenant, source=source, target=target)
    if moved_from is not None:
        # Switched already: only the old shard's clean-up was left.
        report.resumed, report.source = True, moved_from
        progress(f"resuming: {tenant} is on {source}; cleaning up {moved_from}")
        await _clean_up(db, tenant, moved_from, grace_s, progress)
        if source == target:
            report.seconds = time.monotonic() - started
            return report
        placement = await _placement(directory, tenant)
        source, moving_to, _ = placement
        report.source = source
    if moving_to is not None and moving_to != target:
        raise Conflict(
            f"tenant {tenant!r} is being moved to {moving_to!r}; finish that first (--to {moving_to})"
        )
    if source == target:
        progress(f"{tenant} is already on {target}")
        report.seconds = time.monotonic() - started
        return report
    report.resumed = report.resumed or moving_to is not None
    src, dst = db.shards[source], db.shards[target]
    await directory.execute(
        "UPDATE tenant_placements SET moving_to = ?, updated_at = ? WHERE tenant_id = ?",
        (target, time.time(), tenant),
    )
    progress(f"freezing {tenant} on {source}")
    await _set_fence(src, tenant, "frozen", target)
    db.forget(tenant)
    try:
        tables = await tenant_tables(src)
        if any(spec.name == "jobs" for spec in tables):
            await _wait_for_running_jobs(src, tenant, jobs_wait_s, progress)
        await _clear_destination(db, tenant, target, tables)
        report.rows = await _copy_and_verify(src, dst, tables, tenant, progress)
    except BaseException:
        # Leave nothing half-done behind: the tenant goes on serving from the source.
        progress(f"move failed: {tenant} stays on {source}")
        await _abort(db, tenant, source, target)
        raise
    async with directory.transaction() as tx:
        await tx.execute(
            "UPDATE tenant_placements SET shard = ?, epoch = epoch + 1, moving_to = NULL, moved_from = ?,"
            " updated_at = ? WHERE tenant_id = ?",
            (target, source, time.time(), tenant),
        )
    await _set_fence(src, tenant, "moved", target)
    db.forget(tenant)
    progress(f"switched: {tenant} is served from {target}")
    await _clean_up(db, tenant, source, grace_s, progress)
    report.seconds = time.monotonic() - started
    return report


async def _placement(directory: Database, tenant: str) -> tuple[str, str | None, str | None]:
    row = await directory.fetchone(
        "SELECT shard, moving_to, moved_from FROM tenant_placements WHERE tenant_id = ?", (tenant,)
    )
    if row is None:
        # Placed before shards were configured: it lives in the directory. Record that first.
        await directory.execute(
            "INSERT INTO tenant_placements (tenant_id, shard, epoch, updated_at) VALUES (?, ?, 1, ?)"
            " ON CONFLICT (tenant_id) DO NOTHING",
            (tenant, DIRECTORY, time.time()),
        )
        return DIRECTORY, None, None
    return str(row["shard"]), row["moving_to"], row["moved_from"]


async def _clear_destination(db: ShardedDatabase, tenant: str, target: str, tables: list[TableSpec]) -> None:
    dst = db.shards[target]
    await _delete_rows(dst, tables, tenant, with_tenant_row=False)
    async with dst.transaction() as tx:
        # A fence left from an earlier move away from this shard, and the tenant's own row.
        await tx.execute("DELETE FROM tenant_fence WHERE tenant_id = ?", (tenant,))
        row = await db.directory.fetchone("SELECT id, name, created_at FROM tenants WHERE id = ?", (tenant,))
        assert row is not None
        await tx.execute(
            "INSERT INTO tenants (id, name, created_at) VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING",
            (row["id"], row["name"], row["created_at"]),
        )


async def _copy_and_verify(
    src: Database, dst: Database, tables: list[TableSpec], tenant: str, progress: Progress
) -> dict[str, int]:
    rows: dict[str, int] = {}
    for spec in tables:
        rows[spec.name] = await _copy_table(src, dst, spec, tenant)
        if rows[spec.name]:
            progress(f"copied {spec.name}: {rows[spec.name]} row(s)")
    for attempt in range(1, VERIFY_ROUNDS + 1):
        differing = []
        for spec in tables:
            if await _fingerprint(src, spec, tenant) != await _fingerprint(dst, spec, tenant):
                differing.append(spec)
        if not differing:
            progress(f"verified {len(tables)} tables, {sum(rows.values())} rows: counts and checksums match")
            return rows
        names = [s.name for s in differing]
        progress(f"verify round {attempt}: {names} changed on the source during the copy; copying them again")
        # Children first out, parents first in.
        await _delete_rows(dst, differing, tenant, with_tenant_row=False)
        for spec in differing:
            rows[spec.name] = await _copy_table(src, dst, spec, tenant)
    raise RuntimeError(f"tables {names} of {tenant!r} kept changing on the source; the move was undone")


async def _abort(db: ShardedDatabase, tenant: str, source: str, target: str) -> None:
    try:
        tables = await tenant_tables(db.shards[source])
        await _delete_rows(db.shards[target], tables, tenant, with_tenant_row=target != DIRECTORY)
        await db.shards[source].execute("DELETE FROM tenant_fence WHERE tenant_id = ?", (tenant,))
        await db.directory.execute(
            "UPDATE tenant_placements SET moving_to = NULL, updated_at = ? WHERE tenant_id = ?",
            (time.time(), tenant),
        )
    except Exception:
        log.exception("could not undo the move of %s; run the move again to finish it", tenant)
    db.forget(tenant)


async def _clean_up(
    db: ShardedDatabase, tenant: str, source: str, grace_s: float, progress: Progress
) -> None:
    if grace_s > 0:
        progress(
            f"waiting {grace_s:g}s before deleting {tenant}'s rows on {source} (nodes' cached placements)"
        )
        await asyncio.sleep(grace_s)
    src = db.shards[source]
    await _delete_rows(src, await tenant_tables(src), tenant, with_tenant_row=source != DIRECTORY)
    await db.directory.execute(
        "UPDATE tenant_placements SET moved_from = NULL, updated_at = ? WHERE tenant_id = ?",
        (time.time(), tenant),
    )
    progress(f"deleted {tenant}'s rows on {source}")
