"""The jobs service: validation, handler lookup and the workers, on top of whichever queue adapter runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

from appliance.config import ConfigError
from appliance.core.db import Tx
from appliance.core.errors import NotFound
from appliance.core.pagination import DEFAULT_LIMIT, Page
from appliance.core.shards import on_shard
from appliance.jobs import JobHandler, JobQueue, JobRecord, NewJob

if TYPE_CHECKING:
    from appliance.core.context import Context

__all__ = ["JobService", "install_service", "make_queue"]

log = logging.getLogger("appliance.jobs")

STOP_GRACE_S = 10.0


class JobService:
    """What other capabilities (``ctx.services["jobs"]``) and the API use."""

    def __init__(self, ctx: Context, queue: JobQueue) -> None:
        self.ctx = ctx
        self.queue = queue
        self.concurrency = ctx.settings.job_concurrency
        self._workers: list[asyncio.Task[None]] = []
        self._stopping = False

    @property
    def backend(self) -> str:
        return self.queue.name

    def handlers(self) -> dict[str, JobHandler]:
        """Every job handler by type (the capabilities' own and the plugins'), as registered now."""
        handlers: dict[str, JobHandler] = dict(self.ctx.job_handlers())
        return handlers

    async def enqueue(self, tenant: str, queue: str, job: NewJob, *, tx: Tx | None = None) -> JobRecord:
        """Enqueue one job; with ``tx`` it commits with the caller's writes. A known ``job_id`` returns that job."""
        return (await self.enqueue_bulk(tenant, queue, [job], tx=tx))[0]

    async def enqueue_bulk(
        self, tenant: str, queue: str, jobs: list[NewJob], *, tx: Tx | None = None
    ) -> list[JobRecord]:
        """Enqueue several jobs at once (one transaction), in order."""
        if not jobs:
            return []
        return await self.queue.enqueue(tenant, queue, jobs, tx)

    async def get(self, tenant: str, queue: str, job_id: str) -> JobRecord:
        record = await self.queue.get(tenant, queue, job_id)
        if record is None:
            raise NotFound(f"no job {job_id!r} in queue {queue!r}")
        return record

    async def dead(
        self, tenant: str, queue: str, limit: int = DEFAULT_LIMIT, cursor: str | None = None
    ) -> Page[JobRecord]:
        """The queue's dead letters: jobs ``dead`` after their last attempt or ``failed`` permanently."""
        return await self.queue.dead(tenant, queue, limit, cursor)

    async def retry_dead(self, tenant: str, queue: str, job_id: str) -> JobRecord:
        """Queue a dead-lettered job again, with a fresh set of attempts."""
        record = await self.queue.retry_dead(tenant, queue, job_id)
        if record is None:
            raise NotFound(f"no dead or failed job {job_id!r} in queue {queue!r}")
        return record

    async def drain(self) -> int:
        """Run every job that is due until none is left (tests and ``burst`` runs); returns how many ran."""
        ran = 0
        for shard in self.ctx.db.shard_names():
            with on_shard(shard):
                ran += await self.queue.drain(self.handlers(), self.concurrency)
        return ran

    async def webhook_secret(self, tenant: str) -> str:
        """The tenant's default webhook signing secret, created on first use."""
        row = await self.ctx.db.fetchone("SELECT secret FROM webhook_secrets WHERE tenant_id = ?", (tenant,))
        if row is not None:
            return str(row["secret"])
        async with self.ctx.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO webhook_secrets (tenant_id, secret, created_at) VALUES (?, ?, ?)"
                " ON CONFLICT (tenant_id) DO NOTHING",
                (tenant, "whsec_" + secrets.token_hex(24), time.time()),
            )
            row = await tx.fetchone("SELECT secret FROM webhook_secrets WHERE tenant_id = ?", (tenant,))
        if row is None:
            raise NotFound(f"tenant {tenant!r} does not exist")
        return str(row["secret"])

    # ------------------------------------------------------------- lifecycle ---

    async def start(self) -> None:
        self._stopping = False
        await self.queue.start()
        if self.ctx.runs_workers:
            # One worker loop per shard (just one without shards): each claims from its own jobs table.
            for shard in self.ctx.db.shard_names():
                with on_shard(shard):
                    name = f"appliance-jobs-worker{'-' + shard if shard else ''}"
                    self._workers.append(asyncio.create_task(self._supervise(), name=name))

    async def stop(self) -> None:
        self._stopping = True
        await self.queue.close()
        for worker in self._workers:
            try:
                await asyncio.wait_for(asyncio.shield(worker), STOP_GRACE_S)
            except TimeoutError:
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker
        self._workers = []

    async def _supervise(self) -> None:
        # A worker that crashes (a database error, a Redis outage) is restarted, not left dead.
        while not self._stopping:
            try:
                await self.queue.run(self.handlers, self.concurrency)
                return
            except Exception as exc:
                log.error(
                    "the %s job worker failed (%s: %s); restarting it in 2 s",
                    self.queue.name,
                    type(exc).__name__,
                    exc,
                )
                await asyncio.sleep(2.0)


def make_queue(ctx: Context) -> JobQueue:
    """The adapter the settings pick: a plugin's (``APPLIANCE_BACKENDS=jobs=...``), arq, or sqlite."""
    plugin: Any = ctx.plugin_backend("jobs")
    if plugin is not None and ctx.sharded is not None:
        raise ConfigError(
            "APPLIANCE_DATABASE_SHARDS works with the built-in job queue only (one per shard);"
            " unset APPLIANCE_JOBS_BACKEND / the jobs entry of APPLIANCE_BACKENDS"
        )
    if plugin is not None:
        queue: JobQueue = plugin
        return queue
    retention_s = ctx.settings.job_retention_days * 86400
    # With shards, each shard's jobs table is its own queue (Redis still serves realtime and rate limits).
    if ctx.settings.redis_url and ctx.sharded is None:
        from appliance.jobs.arq import ArqQueue

        return ArqQueue(ctx.db, ctx.settings.redis_url, retention_s=retention_s)
    from appliance.jobs.sqlite import SqliteQueue

    return SqliteQueue(ctx.db, retention_s=retention_s)


def install_service(ctx: Context) -> JobService:
    from appliance.jobs.http import HttpJobs
    from appliance.jobs.sqlite import MIGRATIONS

    ctx.migrations.extend(MIGRATIONS)
    service = JobService(ctx, make_queue(ctx))
    ctx.provide("jobs", service)
    http = HttpJobs(service, redis_url=ctx.settings.redis_url)
    ctx.register_job_handler("http", http.run)
    ctx.health.append(service.queue.health)
    ctx.tenants.purgers.append(service.queue.purge)
    ctx.on_startup(http.start)
    ctx.on_startup(service.start)
    ctx.on_shutdown(http.close)
    ctx.on_shutdown(service.stop)
    return service
