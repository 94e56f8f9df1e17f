"""The embedded job queue: rows in the metadata DB, claimed under a lease.

A worker claims due jobs in one transaction (status ``running``, ``attempts + 1``, a fresh lease token,
``due_at`` = now + timeout + grace). If the worker dies, the lease runs out, ``due_at`` passes and the
next claim picks the job up again: nothing is lost by ``kill -9``. A finishing worker writes its outcome
only if it still holds the lease, so a late answer never overwrites a newer attempt. Outcomes and the
next claim share one transaction, which keeps commits (and fsyncs) few under load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from appliance.core.context import BackendStatus
from appliance.core.db import Database, Migration, Row, Tx
from appliance.core.ids import new_id
from appliance.core.pagination import Page, decode_cursor, encode_cursor
from appliance.core.shards import bind_tenant, current_shard
from appliance.jobs import (
    Attempt,
    Backoff,
    Job,
    JobHandler,
    JobRecord,
    NewJob,
    PermanentJobError,
)

__all__ = ["MIGRATIONS", "SqliteQueue", "run_handler"]

log = logging.getLogger("appliance.jobs")

# A live worker always answers within timeout_s (the handler is cancelled then); the grace covers the
# time to write the outcome, so only a dead worker's lease ever runs out.
LEASE_GRACE_S = 2.0
IDLE_POLL_S = 0.2
STOP_WAIT_S = 5.0  # how long a stopping worker lets running attempts finish before handing them back

MIGRATIONS = [
    Migration(
        "jobs",
        1,
        "job queue and tenant webhook secrets",
        """
        CREATE TABLE jobs (
            tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            queue TEXT NOT NULL,
            id TEXT NOT NULL,
            type TEXT NOT NULL,
            payload TEXT NOT NULL,
            status TEXT NOT NULL,
            priority INTEGER NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL,
            backoff TEXT NOT NULL,
            timeout_s REAL NOT NULL,
            due_at REAL NOT NULL,
            run_at REAL NOT NULL,
            lease TEXT,
            result TEXT,
            error TEXT,
            history TEXT NOT NULL DEFAULT '[]',
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            PRIMARY KEY (tenant_id, queue, id)
        );
        CREATE INDEX jobs_due ON jobs (priority DESC, due_at) WHERE status IN ('queued', 'running');
        CREATE INDEX jobs_next ON jobs (due_at) WHERE status IN ('queued', 'running');
        CREATE INDEX jobs_dead ON jobs (tenant_id, queue, id) WHERE status IN ('failed', 'dead');
        CREATE INDEX jobs_done ON jobs (finished_at) WHERE status = 'succeeded';
        CREATE TABLE webhook_secrets (
            tenant_id TEXT PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
            secret TEXT NOT NULL,
            created_at REAL NOT NULL
        );
        """,
    )
]

_COLUMNS = (
    "tenant_id, queue, id, type, payload, status, priority, attempts, max_attempts, backoff, timeout_s,"
    " run_at, result, error, history, created_at, started_at, finished_at"
)
_ACTIVE = "status IN ('queued', 'running')"
_NOT_FENCED = " AND tenant_id NOT IN (SELECT tenant_id FROM tenant_fence)"
PRUNE_SQL = "DELETE FROM jobs WHERE status = 'succeeded' AND finished_at < ?"
# The attempt history (a JSON array in a TEXT column), edited in place: SQLite's JSON functions, or jsonb.
_HISTORY = {
    "sqlite": {
        "drop_last": "json_remove(history, '$[#-1]')",
        "finish_last": "json_set(history, '$[#-1].finished_at', ?, '$[#-1].error', ?)",
        "lease_expired": "json_set(history, '$[#-1].finished_at', ?, '$[#-1].error', 'lease expired')",
        "append": "json_insert(history, '$[#]', json(?))",
    },
    "postgres": {
        "drop_last": "(history::jsonb - -1)::text",
        "finish_last": "jsonb_set(jsonb_set(history::jsonb, '{-1,finished_at}', to_jsonb(?::double precision)),"
        " '{-1,error}', COALESCE(to_jsonb(?::text), 'null'::jsonb))::text",
        "lease_expired": "jsonb_set(jsonb_set(history::jsonb, '{-1,finished_at}', to_jsonb(?::double precision)),"
        " '{-1,error}', '\"lease expired\"'::jsonb)::text",
        "append": "(history::jsonb || jsonb_build_array(?::jsonb))::text",
    },
}


def release_sql(dialect: str) -> str:
    """Hands a claimed job back (params: now, tenant, queue, id, lease): the interrupted attempt does not count."""
    return (
        "UPDATE jobs SET status = 'queued', attempts = attempts - 1, due_at = ?, lease = NULL,"
        f" history = {_HISTORY[dialect]['drop_last']}"
        " WHERE tenant_id = ? AND queue = ? AND id = ? AND lease = ?"
    )


_CLAIM_COLUMNS = (
    "tenant_id, queue, id, type, payload, status, priority, attempts, max_attempts, backoff, timeout_s,"
    " created_at, due_at"
)


@dataclass
class _Claimed:
    job: Job
    lease: str
    backoff: Backoff


@dataclass
class _Outcome:
    claimed: _Claimed
    status: str  # succeeded | queued (retry) | failed | dead
    result: str | None = None
    error: str | None = None
    due_at: float = 0.0


def _encode(value: Any) -> str:
    try:
        return msgspec.json.encode(value).decode()
    except (TypeError, msgspec.EncodeError):
        return msgspec.json.encode(repr(value)).decode()


def record_from_row(row: Row) -> JobRecord:
    return JobRecord(
        id=row["id"],
        tenant=row["tenant_id"],
        queue=row["queue"],
        type=row["type"],
        status=row["status"],
        payload=msgspec.json.decode(row["payload"]),
        priority=row["priority"],
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        result=msgspec.json.decode(row["result"]) if row["result"] is not None else None,
        error=row["error"],
        created_at=row["created_at"],
        run_at=row["run_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        history=msgspec.json.decode(row["history"], type=list[Attempt]),
    )


async def run_handler(handler: JobHandler | None, job: Job) -> tuple[bool, bool, Any]:
    """Run one attempt: ``(ok, retryable, result or error text)``; the handler is cancelled at its timeout."""
    if handler is None:
        return False, False, f"no handler is registered for job type {job.type!r}"
    try:
        result = await asyncio.wait_for(handler(job), job.timeout_s)
    except PermanentJobError as exc:
        return False, False, str(exc) or type(exc).__name__
    except TimeoutError:
        return False, True, f"timed out after {job.timeout_s:g}s"
    except Exception as exc:
        return False, True, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return True, False, result


class SqliteQueue:
    """The ``sqlite`` adapter of :class:`appliance.jobs.JobQueue`."""

    name = "sqlite"

    def __init__(self, db: Database, retention_s: float = 7 * 86400.0) -> None:
        self.db = db
        self.retention_s = retention_s
        self.stop_wait_s = STOP_WAIT_S
        self._signals: dict[str, asyncio.Event] = {}
        self._closing = False
        self._last_sweeps: dict[str, float] = {}
        # With shards, one worker loop per shard; a tenant being moved is left alone until it lands.
        self._active = _ACTIVE + (_NOT_FENCED if db.directory is not db else "")

    @property
    def _signal(self) -> asyncio.Event:
        # One per shard's worker loop, so one loop's wake-up is never consumed by another's.
        return self._signals.setdefault(current_shard(), asyncio.Event())

    @property
    def _last_sweep(self) -> float:
        return self._last_sweeps.get(current_shard(), 0.0)

    @_last_sweep.setter
    def _last_sweep(self, value: float) -> None:
        self._last_sweeps[current_shard()] = value

    def wake(self) -> None:
        self._signal.set()
        for signal in self._signals.values():
            signal.set()

    async def start(self) -> None:
        self._closing = False

    async def close(self) -> None:
        self._closing = True
        self.wake()

    # ----------------------------------------------------------------- writes ---

    async def enqueue(self, tenant: str, queue: str, jobs: list[NewJob], tx: Tx | None) -> list[JobRecord]:
        if tx is not None:
            records = await self._insert(tx, tenant, queue, jobs)
            tx.after_commit(self.wake)
            return records
        async with self.db.transaction() as own:
            records = await self._insert(own, tenant, queue, jobs)
        self.wake()
        return records

    async def _insert(self, tx: Tx, tenant: str, queue: str, jobs: Sequence[NewJob]) -> list[JobRecord]:
        now = time.time()
        records = [_new_record(tenant, queue, job, now) for job in jobs]
        rows = [_insert_params(r, j) for r, j in zip(records, jobs, strict=True)]
        sql = (
            "INSERT INTO jobs (tenant_id, queue, id, type, payload, status, priority, max_attempts, backoff,"
            " timeout_s, due_at, run_at, created_at) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?)"
        )
        if all(job.job_id is None for job in jobs):
            await tx.executemany(sql, rows)
            return records
        out: list[JobRecord] = []
        for record, params in zip(records, rows, strict=True):
            if await tx.execute(sql + " ON CONFLICT (tenant_id, queue, id) DO NOTHING", params):
                out.append(record)
            else:  # a job with this job_id exists: that one is the job
                row = await tx.fetchone(
                    f"SELECT {_COLUMNS} FROM jobs WHERE tenant_id = ? AND queue = ? AND id = ?",
                    (tenant, queue, record.id),
                )
                assert row is not None
                out.append(record_from_row(row))
        return out

    async def retry_dead(self, tenant: str, queue: str, job_id: str) -> JobRecord | None:
        now = time.time()
        async with self.db.transaction() as tx:
            changed = await tx.execute(
                "UPDATE jobs SET status = 'queued', attempts = 0, due_at = ?, run_at = ?, finished_at = NULL,"
                " lease = NULL WHERE tenant_id = ? AND queue = ? AND id = ? AND status IN ('failed', 'dead')",
                (now, now, tenant, queue, job_id),
            )
            row = await tx.fetchone(
                f"SELECT {_COLUMNS} FROM jobs WHERE tenant_id = ? AND queue = ? AND id = ?",
                (tenant, queue, job_id),
            )
        if changed:
            self.wake()
        return record_from_row(row) if row is not None and changed else None

    # ------------------------------------------------------------------ reads ---

    async def get(self, tenant: str, queue: str, job_id: str) -> JobRecord | None:
        row = await self.db.fetchone(
            f"SELECT {_COLUMNS} FROM jobs WHERE tenant_id = ? AND queue = ? AND id = ?",
            (tenant, queue, job_id),
        )
        return record_from_row(row) if row is not None else None

    async def dead(self, tenant: str, queue: str, limit: int, cursor: str | None) -> Page[JobRecord]:
        after = decode_cursor(cursor, str) if cursor else ""
        rows = await self.db.fetchall(
            f"SELECT {_COLUMNS} FROM jobs WHERE tenant_id = ? AND queue = ? AND status IN ('failed', 'dead')"
            " AND id > ? ORDER BY id LIMIT ?",
            (tenant, queue, after, limit + 1),
        )
        items = [record_from_row(r) for r in rows[:limit]]
        return Page(items=items, next_cursor=encode_cursor(items[-1].id) if len(rows) > limit else None)

    async def health(self) -> BackendStatus:
        row = await self.db.fetchone(
            "SELECT COUNT(*) AS n FROM (SELECT 1 FROM jobs WHERE status = 'queued' AND due_at <= ? LIMIT 100000) AS due_jobs",
            (time.time(),),
        )
        due = row["n"] if row else 0
        return BackendStatus(
            name="jobs", backend="sqlite", mode="embedded", ok=True, detail=f"{due} job(s) due"
        )

    async def purge(self, tenant: str) -> None:
        """Nothing to do: the jobs table cascades from ``tenants``."""

    # ---------------------------------------------------------------- workers ---

    async def run(self, handlers: Callable[[], dict[str, JobHandler]], concurrency: int) -> None:
        await self._work(handlers(), concurrency, until_idle=False)

    async def drain(self, handlers: dict[str, JobHandler], concurrency: int) -> int:
        return await self._work(handlers, concurrency, until_idle=True)

    async def _work(self, handlers: dict[str, JobHandler], concurrency: int, until_idle: bool) -> int:
        """The worker loop: flush finished outcomes and claim new jobs in one transaction, run them."""
        outcomes: list[_Outcome] = []
        inflight: dict[asyncio.Task[None], _Claimed] = {}
        started = 0
        try:
            while not self._closing:
                batch = outcomes[:]
                outcomes.clear()
                claimed = await self._flush_and_claim(batch, concurrency - len(inflight))
                for item in claimed:
                    task = asyncio.create_task(self._attempt(handlers, item, outcomes))
                    inflight[task] = item
                    task.add_done_callback(lambda t: inflight.pop(t, None))
                started += len(claimed)
                if claimed and len(inflight) < concurrency:
                    continue  # there may be more due right now
                if until_idle and not inflight and not outcomes and not claimed and await self._idle():
                    return started
                await self._wait(bool(inflight) or until_idle)
                await asyncio.sleep(0)  # let the other finished attempts report, to batch their outcomes
        finally:
            await self._stop(inflight, outcomes)
        return started

    async def _attempt(self, handlers: dict[str, JobHandler], item: _Claimed, out: list[_Outcome]) -> None:
        signal = self._signal  # this loop's, looked up before the tenant binding below
        # The handler acts for the job's tenant: its writes are routed (and fenced) like a request's.
        bind_tenant(item.job.tenant)
        out.append(outcome_of(item, *await run_handler(handlers.get(item.job.type), item.job)))
        signal.set()

    async def _wait(self, busy: bool) -> None:
        timeout = IDLE_POLL_S
        if not busy:
            row = await self.db.fetchone(f"SELECT MIN(due_at) AS due FROM jobs WHERE {self._active}")
            if row is not None and row["due"] is not None:
                timeout = max(0.0, min(timeout, row["due"] - time.time()))
        else:
            timeout = 0.05
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._signal.wait(), timeout)
        self._signal.clear()

    async def _idle(self) -> bool:
        row = await self.db.fetchone(
            f"SELECT 1 FROM jobs WHERE {self._active} AND (status = 'running' OR due_at <= ?) LIMIT 1",
            (time.time(),),
        )
        return row is None

    async def _flush_and_claim(self, outcomes: list[_Outcome], free: int) -> list[_Claimed]:
        now = time.time()
        async with self.db.transaction() as tx:
            await _write_outcomes(tx, outcomes, now)
            claimed = await self._claim(tx, free, now) if free > 0 else []
            if now - self._last_sweep > 60:
                self._last_sweep = now
                await tx.execute(PRUNE_SQL, (now - self.retention_s,))
        return claimed

    async def _claim(self, tx: Tx, limit: int, now: float) -> list[_Claimed]:
        rows = await tx.fetchall(
            f"SELECT {_CLAIM_COLUMNS} FROM jobs WHERE {self._active} AND due_at <= ?"
            " ORDER BY priority DESC, due_at LIMIT ?"
            # PostgreSQL: workers on several nodes claim concurrently; each skips the rows another holds.
            + (" FOR UPDATE SKIP LOCKED" if tx.dialect == "postgres" else ""),
            (now, limit),
        )
        return await claim_rows(tx, rows, now)

    async def _stop(self, inflight: dict[asyncio.Task[None], _Claimed], outcomes: list[_Outcome]) -> None:
        """Let running attempts finish for a moment, then cancel the rest and hand those jobs back (their
        attempt does not count); save every outcome."""
        pending = dict(inflight)
        if pending and self._closing:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait(list(pending), timeout=self.stop_wait_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        done = {id(o.claimed) for o in outcomes}
        released = [c for c in pending.values() if id(c) not in done]
        with contextlib.suppress(Exception):
            async with self.db.transaction() as tx:
                await _write_outcomes(tx, outcomes, time.time())
                await tx.executemany(
                    release_sql(tx.dialect),
                    [(time.time(), c.job.tenant, c.job.queue, c.job.id, c.lease) for c in released],
                )


def _new_record(tenant: str, queue: str, job: NewJob, now: float) -> JobRecord:
    return JobRecord(
        id=job.job_id or new_id("job"),
        tenant=tenant,
        queue=queue,
        type=job.type,
        status="queued",
        payload=job.payload,
        priority=job.priority,
        attempts=0,
        max_attempts=job.max_attempts,
        created_at=now,
        run_at=now + job.delay_s,
    )


def _insert_params(record: JobRecord, job: NewJob) -> tuple[Any, ...]:
    return (
        record.tenant,
        record.queue,
        record.id,
        record.type,
        _encode(job.payload),
        job.priority,
        job.max_attempts,
        msgspec.json.encode(job.backoff).decode(),
        job.timeout_s,
        record.run_at,
        record.run_at,
        record.created_at,
    )


async def _write_outcomes(tx: Tx, outcomes: list[_Outcome], now: float) -> None:
    if not outcomes:
        return
    await tx.executemany(
        "UPDATE jobs SET status = ?, result = ?, error = ?, lease = NULL,"
        " due_at = CASE WHEN ? = 'queued' THEN ? ELSE due_at END,"
        " finished_at = CASE WHEN ? = 'queued' THEN NULL ELSE CAST(? AS DOUBLE PRECISION) END,"
        f" history = {_HISTORY[tx.dialect]['finish_last']}"
        " WHERE tenant_id = ? AND queue = ? AND id = ? AND lease = ?",
        [
            (
                o.status,
                o.result,
                o.error,
                o.status,
                o.due_at,
                o.status,
                now,
                now,
                o.error,
                o.claimed.job.tenant,
                o.claimed.job.queue,
                o.claimed.job.id,
                o.claimed.lease,
            )
            for o in outcomes
        ],
    )


async def claim_rows(tx: Tx, rows: list[Row], now: float) -> list[_Claimed]:
    """Lease the given due rows for one attempt each (a row whose last attempt's worker died goes dead)."""
    claimed: list[_Claimed] = []
    updates: list[tuple[Any, ...]] = []
    lost: list[tuple[Any, ...]] = []
    for row in rows:
        key = (row["tenant_id"], row["queue"], row["id"])
        if row["status"] == "running" and row["attempts"] >= row["max_attempts"]:
            # Its worker died during the last allowed attempt: that attempt counts as failed.
            lost.append((now, now, *key))
            continue
        lease = secrets.token_hex(8)
        attempt = row["attempts"] + 1
        entry = msgspec.json.encode(Attempt(attempt=attempt, started_at=now)).decode()
        updates.append((attempt, lease, now + row["timeout_s"] + LEASE_GRACE_S, now, entry, *key))
        job = Job(
            id=row["id"],
            tenant=row["tenant_id"],
            queue=row["queue"],
            type=row["type"],
            payload=msgspec.json.decode(row["payload"]),
            attempt=attempt,
            max_attempts=row["max_attempts"],
            priority=row["priority"],
            timeout_s=row["timeout_s"],
            created_at=row["created_at"],
        )
        claimed.append(_Claimed(job, lease, msgspec.json.decode(row["backoff"], type=Backoff)))
    if lost:
        await tx.executemany(
            "UPDATE jobs SET status = 'dead', lease = NULL, finished_at = ?,"
            " error = 'the worker running the last attempt stopped (lease expired)',"
            f" history = {_HISTORY[tx.dialect]['lease_expired']}"
            " WHERE tenant_id = ? AND queue = ? AND id = ?",
            lost,
        )
    if updates:
        await tx.executemany(
            "UPDATE jobs SET status = 'running', attempts = ?, lease = ?, due_at = ?, started_at = ?,"
            f" history = {_HISTORY[tx.dialect]['append']}"
            " WHERE tenant_id = ? AND queue = ? AND id = ?",
            updates,
        )
    return claimed


def outcome_of(item: _Claimed, ok: bool, retryable: bool, value: Any) -> _Outcome:
    """What an attempt's result means: success, a retry after backoff, dead (no attempts left) or failed."""
    job = item.job
    if ok:
        return _Outcome(item, "succeeded", result=_encode(value))
    if retryable and job.attempt < job.max_attempts:
        return _Outcome(
            item, "queued", error=str(value), due_at=time.time() + item.backoff.delay(job.attempt)
        )
    return _Outcome(item, "dead" if retryable else "failed", error=str(value))
