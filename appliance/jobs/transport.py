"""What the adapters that keep job records in the metadata DB and dispatch them elsewhere share.

``arq`` (Redis) and plugins such as ``aws-sqs`` keep each job's durable record (status, attempts
history, result, dead letters, ``job_id`` dedupe) in the ``jobs`` table exactly as the ``sqlite``
adapter does, and use another system only as the transport that tells a worker which job to run:

- a job is recorded first (in the caller's transaction when there is one) and pushed to the transport
  once that commits, so it is never in the transport without its record; a push that fails is logged
  and repeated later by the adapter's sweep (:meth:`TransportQueue.overdue` finds what to push), so
  nothing accepted is lost while the transport is down;
- a worker handed ``(tenant, queue, id)`` by the transport claims the record (:class:`ClaimBatcher`,
  which batches the claims and outcomes of concurrent jobs into one transaction), runs one attempt and
  writes its outcome; a push seen twice finds the record claimed or finished and does nothing.

A subclass implements :meth:`TransportQueue.push_keys` and its own workers, health and purge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from appliance.core.db import Database, Tx
from appliance.jobs import JobRecord, NewJob
from appliance.jobs.sqlite import (
    _CLAIM_COLUMNS,
    PRUNE_SQL,
    SqliteQueue,
    _Claimed,
    _Outcome,
    _write_outcomes,
    claim_rows,
    release_sql,
)

__all__ = ["ClaimBatcher", "Key", "PushKey", "TransportQueue"]

log = logging.getLogger("appliance.jobs")

Key = tuple[str, str, str]
"""A job's identity: ``(tenant, queue, id)``."""

PushKey = tuple[str, str, str, float, int]
"""What a transport needs to dispatch a job: ``(tenant, queue, id, due_at, priority)``."""


class TransportQueue(SqliteQueue):
    """A :class:`appliance.jobs.JobQueue` whose records are in SQLite and whose dispatch is elsewhere."""

    transport = "the transport"  # named in log lines
    transport_errors: tuple[type[BaseException], ...] = (OSError,)

    def __init__(self, db: Database, retention_s: float = 7 * 86400.0) -> None:
        super().__init__(db, retention_s=retention_s)
        self._writes = ClaimBatcher(db)

    async def push_keys(self, jobs: list[PushKey]) -> None:
        """Hand ``jobs`` (committed, ``queued`` or ``running``) to the transport."""
        raise NotImplementedError

    def push_failed(self, jobs: list[PushKey], exc: BaseException) -> None:
        """Called when a push after commit failed; the sweep repeats it."""
        log.warning(
            "could not push %d job(s) to %s (the sweep will retry): %s", len(jobs), self.transport, exc
        )

    # ------------------------------------------------------------- enqueue ---

    async def enqueue(self, tenant: str, queue: str, jobs: list[NewJob], tx: Tx | None) -> list[JobRecord]:
        if tx is not None:
            records = await self._insert(tx, tenant, queue, jobs)
            tx.after_commit(lambda: self.push_quietly(records))
            return records
        async with self.db.transaction() as own:
            records = await self._insert(own, tenant, queue, jobs)
        await self.push_quietly(records)
        return records

    async def retry_dead(self, tenant: str, queue: str, job_id: str) -> JobRecord | None:
        record = await super().retry_dead(tenant, queue, job_id)
        if record is not None:
            await self.push_quietly([record])
        return record

    async def push_quietly(self, records: list[JobRecord]) -> None:
        """Push committed records; a failure now is repeated by the sweep, never lost."""
        jobs = [(r.tenant, r.queue, r.id, r.run_at, r.priority) for r in records if r.status == "queued"]
        if not jobs:
            return
        try:
            await self.push_keys(jobs)
        except self.transport_errors as exc:
            self.push_failed(jobs, exc)

    async def overdue(
        self, cutoff: float, queue: str | None = None, priority: int | None = None
    ) -> list[PushKey]:
        """Records that should have run by ``cutoff`` (optionally of one queue and priority), oldest first."""
        where, params = "", list[Any]([cutoff])
        if queue is not None:
            where = " AND queue = ? AND priority = ?"
            params += [queue, priority]
        rows = await self.db.fetchall(
            "SELECT tenant_id, queue, id, priority, due_at FROM jobs"
            f" WHERE status IN ('queued', 'running') AND due_at <= ?{where} ORDER BY due_at LIMIT 1000",
            params,
        )
        return [(r["tenant_id"], r["queue"], r["id"], r["due_at"], r["priority"]) for r in rows]

    async def prune(self) -> None:
        """Delete succeeded jobs older than the retention (at most once a minute)."""
        now = time.time()
        if now - self._last_sweep > 60:
            self._last_sweep = now
            async with self.db.transaction() as tx:
                await tx.execute(PRUNE_SQL, (now - self.retention_s,))

    async def release(self, item: _Claimed) -> None:
        """Hand a job back when its worker stops mid-attempt (the attempt does not count)."""
        with contextlib.suppress(Exception):
            async with self.db.transaction() as tx:
                await tx.execute(
                    release_sql(tx.dialect),
                    (time.time(), item.job.tenant, item.job.queue, item.job.id, item.lease),
                )


class ClaimBatcher:
    """Claims and outcomes of concurrent jobs, written together: one transaction, a few statements."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._claims: list[tuple[Key, asyncio.Future[_Claimed | float | None]]] = []
        self._outcomes: list[tuple[_Outcome, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def claim(self, key: Key) -> _Claimed | float | None:
        """The claimed attempt; seconds to wait if the job is not due; ``None`` if there is nothing to run."""
        future: asyncio.Future[_Claimed | float | None] = asyncio.get_running_loop().create_future()
        self._claims.append((key, future))
        self._schedule()
        return await future

    async def finish(self, outcome: _Outcome) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outcomes.append((outcome, future))
        self._schedule()
        await future

    def _schedule(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let the other jobs of this poll add theirs
        while self._claims or self._outcomes:
            claims, self._claims = self._claims, []
            outcomes, self._outcomes = self._outcomes, []
            futures: list[asyncio.Future[Any]] = [f for _, f in claims] + [f for _, f in outcomes]
            try:
                async with self.db.transaction() as tx:
                    now = time.time()
                    await _write_outcomes(tx, [o for o, _ in outcomes], now)
                    results = await _claim_many(tx, [k for k, _ in claims], now)
            except Exception as exc:
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(claims, results, strict=True):
                if not future.done():
                    future.set_result(result)
            for _, done in outcomes:
                if not done.done():
                    done.set_result(None)


async def _claim_many(tx: Tx, keys: list[Key], now: float) -> list[_Claimed | float | None]:
    if not keys:
        return []
    values = ",".join("(?, ?, ?)" for _ in keys)
    rows = await tx.fetchall(
        f"SELECT {_CLAIM_COLUMNS} FROM jobs WHERE (tenant_id, queue, id) IN (VALUES {values})",
        [part for key in keys for part in key],
    )
    by_key = {(r["tenant_id"], r["queue"], r["id"]): r for r in rows}
    due = []
    for key in dict.fromkeys(keys):
        row = by_key.get(key)
        if row is not None and row["status"] in ("queued", "running") and row["due_at"] <= now:
            due.append(row)
    claimed = {(c.job.tenant, c.job.queue, c.job.id): c for c in await claim_rows(tx, due, now)}
    results: list[_Claimed | float | None] = []
    for key in keys:
        row = by_key.get(key)
        if row is None or row["status"] not in ("queued", "running"):
            results.append(None)  # gone (tenant deleted) or already finished: a duplicate push
        elif row["due_at"] > now:
            results.append(float(row["due_at"] - now + 0.05))
        else:
            results.append(claimed.pop(key, None))  # a key twice in one batch (a duplicate push) runs once
    return results
