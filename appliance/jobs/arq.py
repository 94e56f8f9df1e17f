"""The ``arq`` adapter: arq on Redis dispatches and runs the jobs; the metadata DB keeps their records.

Each job is recorded in the ``jobs`` table first (in the caller's transaction when there is one), then
pushed to arq once that commits, so a job is never in Redis without its record and never lost when a
push fails: a sweep re-pushes overdue records (a no-op for those arq still holds, since the arq job id
is derived from the job's). That record keeping is shared with other transports
(:mod:`appliance.jobs.transport`). arq's worker runs them with its own semantics (an in-progress lock per job,
``Retry`` to defer, rerun when a worker vanishes); around it the adapter adds what arq lacks:

- status, attempts history, results and the dead-letter list, in the record;
- ``max_attempts`` with exponential backoff and jitter (a failed attempt raises arq's ``Retry``);
- priority, as an earlier score in arq's queue (a due job of priority ``p`` sorts as if enqueued
  ``p + 100`` hours earlier), so higher priorities run first among the jobs enqueued due;
- a short, heartbeat-refreshed in-progress lock, so a killed worker's job runs again within seconds
  rather than after arq's default (the longest function timeout plus 10 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.jobs import serialize_job
from arq.worker import Retry, Worker, func
from redis.asyncio import ConnectionPool
from redis.exceptions import RedisError

from appliance.core.context import BackendStatus
from appliance.core.db import Database
from appliance.jobs import JobHandler
from appliance.jobs.sqlite import outcome_of, run_handler
from appliance.jobs.transport import PushKey, TransportQueue

__all__ = ["ArqQueue"]

log = logging.getLogger("appliance.jobs")

ARQ_QUEUE = "appliance:jobs"
FUNCTION = "appliance_job"
LOCK_S = 6.0  # the in-progress lock of a running job; refreshed every LOCK_S / 3 while it runs
PRIORITY_STEP_S = 3600.0
SWEEP_EVERY_S = 5.0
OVERDUE_S = 5.0
POLL_DELAY_S = 0.05


def _arq_id(tenant: str, queue: str, job_id: str) -> str:
    return f"{tenant}:{queue}:{job_id}"


class ArqQueue(TransportQueue):
    """The ``arq`` adapter of :class:`appliance.jobs.JobQueue` (records in SQLite, dispatch in Redis)."""

    name = "arq"
    transport = "Redis"
    transport_errors = (RedisError, OSError)

    def __init__(self, db: Database, redis_url: str, retention_s: float = 7 * 86400.0) -> None:
        super().__init__(db, retention_s=retention_s)
        self.redis_url = redis_url
        self._pool: ArqRedis | None = None
        self._worker: Worker | None = None
        self._handlers: dict[str, JobHandler] = {}
        self._last_push_sweep = 0.0

    @property
    def pool(self) -> ArqRedis:
        if self._pool is None:
            raise RuntimeError("the arq queue is not started")
        return self._pool

    async def start(self) -> None:
        await super().start()
        # No ping here (unlike arq's create_pool): with Redis down the appliance still starts, /readyz
        # names Redis, enqueues are recorded and pushed later, and the worker retries its connection.
        pool = ConnectionPool.from_url(self.redis_url, socket_connect_timeout=2, health_check_interval=30)
        self._pool = ArqRedis(pool, default_queue_name=ARQ_QUEUE)

    async def close(self) -> None:
        await super().close()
        await self._stop_worker()
        if self._pool is not None:
            await self._pool.aclose(close_connection_pool=True)
            self._pool = None

    # ---------------------------------------------------------------- push ---

    async def push_keys(self, jobs: list[PushKey]) -> None:
        """Create the arq jobs (what ``enqueue_job`` writes) in one round trip; those arq holds stay as they are.

        ``SET NX`` on the job key and ``ZADD NX`` on the queue mirror ``enqueue_job``'s "exists -> no-op"
        without its per-job WATCH/MULTI: the record in SQLite, not Redis, is what dedupes jobs.
        """
        if not jobs:
            return
        now = time.time()
        async with self.pool.pipeline(transaction=False) as pipe:
            for tenant, queue, job_id, due_at, priority in jobs:
                arq_id = _arq_id(tenant, queue, job_id)
                data = serialize_job(FUNCTION, (tenant, queue, job_id), {}, None, int(now * 1000))
                expires_ms = int((max(0.0, due_at - now) + 30 * 86400) * 1000)
                pipe.set(job_key_prefix + arq_id, data, px=expires_ms, nx=True)
                pipe.zadd(ARQ_QUEUE, {arq_id: _score_ms(due_at, priority, now)}, nx=True)
            await pipe.execute()

    async def _sweep_pushes(self, force: bool = False) -> None:
        """Push records that are overdue (a failed push, or Redis lost them); no-op for those arq holds."""
        now = time.time()
        if not force and now - self._last_push_sweep < SWEEP_EVERY_S:
            return
        self._last_push_sweep = now
        await self.prune()
        await self.push_keys(await self.overdue(now if force else now - OVERDUE_S))

    # ------------------------------------------------------------- workers ---

    def _make_worker(self, handlers: dict[str, JobHandler], concurrency: int, burst: bool) -> Worker:
        self._handlers = handlers
        worker = Worker(
            functions=[
                func(self._run_one, name=FUNCTION, timeout=3600 + 60, max_tries=1_000_000, keep_result=0)
            ],
            queue_name=ARQ_QUEUE,
            redis_pool=self.pool,
            burst=burst,
            max_jobs=concurrency,
            poll_delay=POLL_DELAY_S,
            keep_result=0,
            handle_signals=False,
            health_check_interval=60,
        )
        # arq locks a started job for its longest function timeout + 10 s, so a killed worker's job would
        # wait an hour; a short lock that running jobs refresh (_hold_lock) brings it back in seconds.
        worker.in_progress_timeout_s = LOCK_S
        return worker

    async def run(self, handlers: Callable[[], dict[str, JobHandler]], concurrency: int) -> None:
        self._worker = self._make_worker(handlers(), concurrency, burst=False)
        sweeper = asyncio.create_task(self._sweep_forever())
        try:
            await self._worker.async_run()
        except asyncio.CancelledError:
            if not self._closing:
                raise  # close() cancels arq's main task: that is a normal stop, anything else is not
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper

    async def _sweep_forever(self) -> None:
        while not self._closing:
            try:
                await self._sweep_pushes()
            except (RedisError, OSError) as exc:
                log.warning("job push sweep failed (Redis unavailable?): %s", exc)
            await asyncio.sleep(SWEEP_EVERY_S)

    async def drain(self, handlers: dict[str, JobHandler], concurrency: int) -> int:
        """Poll arq (its worker's own poll step) until nothing is due in Redis or in the records."""
        worker = self._make_worker(handlers, concurrency, burst=True)
        started = 0
        try:
            while True:
                before = worker.jobs_complete + worker.jobs_failed + worker.jobs_retried
                await worker._poll_iteration()  # arq's worker loop body: start due jobs, reap done ones
                if worker.tasks:
                    await asyncio.wait(
                        list(worker.tasks.values()), timeout=POLL_DELAY_S, return_when="FIRST_COMPLETED"
                    )
                else:
                    due = await self.pool.zcount(ARQ_QUEUE, float("-inf"), time.time() * 1000)
                    if not due:
                        if await self._idle():
                            return started
                        await self._sweep_pushes(force=True)  # due records arq does not hold
                    await asyncio.sleep(POLL_DELAY_S)
                started += worker.jobs_complete + worker.jobs_failed + worker.jobs_retried - before
        finally:
            for task in worker.tasks.values():
                task.cancel()
            await asyncio.gather(*worker.tasks.values(), return_exceptions=True)

    async def _stop_worker(self) -> None:
        worker, self._worker = self._worker, None
        if worker is None:
            return
        worker.allow_pick_jobs = False
        if worker.main_task is not None:
            worker.main_task.cancel()
        for task in worker.tasks.values():
            task.cancel()
        await asyncio.gather(
            *worker.tasks.values(), *([worker.main_task] if worker.main_task else []), return_exceptions=True
        )

    async def _run_one(self, ctx: dict[Any, Any], *args: Any, **kwargs: Any) -> None:
        """The arq function ``(tenant, queue, job_id)``: claim the record, run one attempt, record the outcome."""
        tenant, queue, job_id = args
        claim = await self._writes.claim((tenant, queue, job_id))
        if isinstance(claim, float):
            # Not due yet, or another attempt holds the lease (a vanished worker's runs out first).
            raise Retry(defer=claim)
        item = claim
        if item is None:
            return
        heartbeat = asyncio.create_task(self._hold_lock(_arq_id(tenant, queue, job_id)))
        try:
            outcome = outcome_of(item, *await run_handler(self._handlers.get(item.job.type), item.job))
        except asyncio.CancelledError:
            await self.release(item)
            raise
        finally:
            heartbeat.cancel()
        await self._writes.finish(outcome)
        if outcome.status == "queued":
            raise Retry(defer=max(0.0, outcome.due_at - time.time()))

    async def _hold_lock(self, arq_id: str) -> None:
        key = in_progress_key_prefix + arq_id
        with contextlib.suppress(RedisError, OSError):
            while True:
                # arq set the lock to LOCK_S when it started the job; most jobs end before a refresh.
                await asyncio.sleep(LOCK_S / 3)
                await self.pool.pexpire(key, int(LOCK_S * 1000))

    # --------------------------------------------------------------- admin ---

    async def health(self) -> BackendStatus:
        try:
            info = await self.pool.info("server")
            queued = await self.pool.zcard(ARQ_QUEUE)
        except (RedisError, OSError) as exc:
            return BackendStatus(
                name="jobs",
                backend="arq",
                mode="server",
                ok=False,
                detail=f"Redis at APPLIANCE_REDIS_URL does not answer ({exc}); start it or unset the URL",
            )
        return BackendStatus(
            name="jobs",
            backend="arq",
            mode="server",
            ok=True,
            detail=f"{queued} job(s) in the arq queue",
            version=str(info.get("redis_version", "")),
        )

    async def purge(self, tenant: str) -> None:
        """Remove the tenant's arq jobs from Redis (its records cascade from ``tenants``)."""
        prefix = f"{tenant}:"
        async for key in self.pool.scan_iter(match=f"{job_key_prefix}{prefix}*", count=500):
            arq_id = key.decode()[len(job_key_prefix) :]
            await self.pool.zrem(ARQ_QUEUE, arq_id)
            await self.pool.delete(key, retry_key_prefix + arq_id, in_progress_key_prefix + arq_id)


def _score_ms(due_at: float, priority: int, now: float) -> int:
    """arq's queue score: the due time, moved earlier by the priority for a job that is due now."""
    at = max(due_at, now)
    if due_at <= now:
        at -= (priority + 100) * PRIORITY_STEP_S  # priorities run from -100 to 100: never in the future
    return int(at * 1000)
