"""The JobQueue contract, run against every adapter (sqlite; arq on a real Redis; the AWS plugin's aws-sqs on moto).

Each backend is configured by its own settings only (:class:`BackendConfig`), in-process and for the
worker subprocesses alike.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from appliance.app import assemble
from appliance.core.context import Context
from appliance.core.errors import NotFound
from appliance.jobs import Backoff, Job, JobService, NewJob, PermanentJobError
from tests.aws_peers import MotoPeer
from tests.conftest import make_settings
from tests.peers import RedisPeer

FAST = Backoff(initial_s=0, factor=1, max_s=0)


class Handlers:
    """Test handlers whose behaviour the payload picks; every call is recorded."""

    def __init__(self) -> None:
        self.calls: list[Job] = []
        self.failures: dict[str, int] = {}

    async def work(self, job: Job) -> Any:
        self.calls.append(job)
        payload = job.payload
        if payload.get("permanent"):
            raise PermanentJobError("this cannot work")
        if payload.get("sleep"):
            await asyncio.sleep(payload["sleep"])
        if self.failures.get(job.id, 0) < payload.get("fail_times", 0):
            self.failures[job.id] = self.failures.get(job.id, 0) + 1
            raise RuntimeError(f"failure {self.failures[job.id]}")
        return {"echo": payload.get("value"), "attempt": job.attempt}


@pytest.fixture(params=["sqlite", "arq", "aws-sqs"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@dataclass
class BackendConfig:
    """How a backend is picked: settings overrides, and the environment its plugin reads."""

    overrides: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


@pytest.fixture
def config(backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> BackendConfig:
    """The backend's own settings, applied to this process (the plugin's environment) and returned for others."""
    if backend == "arq":
        redis: RedisPeer = request.getfixturevalue("redis_peer")
        return BackendConfig(overrides={"redis_url": redis.url})
    if backend == "aws-sqs":
        moto: MotoPeer = request.getfixturevalue("moto_peer")
        env = {**moto.env(), "APPLIANCE_AWS_SQS_QUEUE_PREFIX": f"t{secrets.token_hex(4)}-"}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return BackendConfig(overrides={"jobs_backend": "aws-sqs"}, env=env)
    return BackendConfig()


@pytest.fixture
async def world(
    backend: str, config: BackendConfig, tmp_path: Path
) -> AsyncIterator[tuple[Context, JobService, Handlers]]:
    ctx, _ = assemble(make_settings(tmp_path / "data", **config.overrides), role="cli")
    handlers = Handlers()
    ctx.register_job_handler("test.work", handlers.work)
    async with ctx.running():
        await ctx.tenants.create("acme", "Acme")
        await ctx.tenants.create("other", "Other")
        service = ctx.service("jobs", JobService)
        assert service.backend == backend
        yield ctx, service, handlers
        for tenant in ("acme", "other"):
            await service.queue.purge(tenant)


World = tuple[Context, JobService, Handlers]


async def test_enqueue_runs_and_records_the_result(world: World) -> None:
    _, jobs, handlers = world
    record = await jobs.enqueue("acme", "q", NewJob(type="test.work", payload={"value": 7}))
    assert record.status == "queued" and record.attempts == 0
    assert await jobs.drain() == 1
    done = await jobs.get("acme", "q", record.id)
    assert done.status == "succeeded"
    assert done.result == {"echo": 7, "attempt": 1}
    assert done.attempts == 1 and len(done.history) == 1 and done.history[0].finished_at
    assert done.finished_at is not None and done.started_at is not None
    assert handlers.calls[0].tenant == "acme" and handlers.calls[0].queue == "q"


async def test_failures_are_retried_until_success(world: World) -> None:
    _, jobs, handlers = world
    job = NewJob(type="test.work", payload={"fail_times": 2}, backoff=FAST, max_attempts=5)
    record = await jobs.enqueue("acme", "q", job)
    await jobs.drain()
    done = await jobs.get("acme", "q", record.id)
    assert done.status == "succeeded" and done.attempts == 3
    assert [a.error for a in done.history][:2] == ["RuntimeError: failure 1", "RuntimeError: failure 2"]
    assert [c.attempt for c in handlers.calls] == [1, 2, 3]


async def test_dead_letter_after_max_attempts_then_retry(world: World) -> None:
    _, jobs, _ = world
    job = NewJob(type="test.work", payload={"fail_times": 3}, backoff=FAST, max_attempts=3)
    record = await jobs.enqueue("acme", "q", job)
    await jobs.drain()
    dead = await jobs.get("acme", "q", record.id)
    assert dead.status == "dead" and dead.attempts == 3 and "failure 3" in (dead.error or "")
    assert [r.id for r in (await jobs.dead("acme", "q")).items] == [record.id]
    assert (await jobs.dead("other", "q")).items == []
    with pytest.raises(NotFound):
        await jobs.retry_dead("other", "q", record.id)
    again = await jobs.retry_dead("acme", "q", record.id)
    assert again.status == "queued"
    await jobs.drain()
    done = await jobs.get("acme", "q", record.id)
    assert done.status == "succeeded" and done.result == {"echo": None, "attempt": 1}
    assert (await jobs.dead("acme", "q")).items == []


async def test_permanent_errors_fail_without_retry(world: World) -> None:
    _, jobs, handlers = world
    record = await jobs.enqueue("acme", "q", NewJob(type="test.work", payload={"permanent": True}))
    await jobs.drain()
    failed = await jobs.get("acme", "q", record.id)
    assert failed.status == "failed" and failed.attempts == 1 and failed.error == "this cannot work"
    assert len(handlers.calls) == 1
    assert [r.id for r in (await jobs.dead("acme", "q")).items] == [record.id]


async def test_unknown_type_fails(world: World) -> None:
    _, jobs, _ = world
    record = await jobs.enqueue("acme", "q", NewJob(type="nobody.handles.this"))
    await jobs.drain()
    failed = await jobs.get("acme", "q", record.id)
    assert failed.status == "failed" and "no handler" in (failed.error or "")


async def test_timeout_counts_as_a_failed_attempt(world: World) -> None:
    _, jobs, _ = world
    job = NewJob(type="test.work", payload={"sleep": 5}, timeout_s=0.2, max_attempts=2, backoff=FAST)
    record = await jobs.enqueue("acme", "q", job)
    await jobs.drain()
    dead = await jobs.get("acme", "q", record.id)
    assert dead.status == "dead" and dead.attempts == 2 and "timed out" in (dead.error or "")


async def test_job_id_dedupes(world: World) -> None:
    _, jobs, handlers = world
    first = await jobs.enqueue("acme", "q", NewJob(type="test.work", payload={"value": 1}, job_id="order-1"))
    second = await jobs.enqueue("acme", "q", NewJob(type="test.work", payload={"value": 2}, job_id="order-1"))
    other = await jobs.enqueue("other", "q", NewJob(type="test.work", payload={"value": 3}, job_id="order-1"))
    assert first.id == second.id == other.id == "order-1"
    await jobs.drain()
    assert sorted(c.payload["value"] for c in handlers.calls) == [1, 3]
    assert (await jobs.get("acme", "q", "order-1")).result == {"echo": 1, "attempt": 1}
    assert (await jobs.get("other", "q", "order-1")).result == {"echo": 3, "attempt": 1}


async def test_priority_orders_due_jobs(world: World) -> None:
    _, jobs, handlers = world
    jobs.concurrency = 1
    batch = [NewJob(type="test.work", payload={"value": p}, priority=p) for p in (0, 5, -3, 10)]
    await jobs.enqueue_bulk("acme", "q", batch)
    await jobs.drain()
    assert [c.payload["value"] for c in handlers.calls] == [10, 5, 0, -3]


async def test_delay_holds_a_job_back(world: World) -> None:
    _, jobs, handlers = world
    record = await jobs.enqueue("acme", "q", NewJob(type="test.work", delay_s=3600))
    assert record.run_at > time.time() + 3500
    assert await jobs.drain() == 0
    assert (await jobs.get("acme", "q", record.id)).status == "queued"
    assert handlers.calls == []


async def test_bulk_enqueue_runs_everything(world: World) -> None:
    _, jobs, handlers = world
    records = await jobs.enqueue_bulk(
        "acme", "bulk", [NewJob(type="test.work", payload={"value": i}) for i in range(200)]
    )
    assert len({r.id for r in records}) == 200
    await jobs.drain()
    assert sorted(c.payload["value"] for c in handlers.calls) == list(range(200))
    statuses = [(await jobs.get("acme", "bulk", r.id)).status for r in records[:5]]
    assert statuses == ["succeeded"] * 5


async def test_enqueue_in_a_transaction_commits_with_it(world: World) -> None:
    ctx, jobs, handlers = world
    with pytest.raises(RuntimeError):
        async with ctx.db.transaction() as tx:
            await jobs.enqueue("acme", "q", NewJob(type="test.work", job_id="rolled-back"), tx=tx)
            raise RuntimeError("the caller's write failed")
    async with ctx.db.transaction() as tx:
        await jobs.enqueue("acme", "q", NewJob(type="test.work", job_id="committed"), tx=tx)
    await jobs.drain()
    assert [c.id for c in handlers.calls] == ["committed"]
    with pytest.raises(NotFound):
        await jobs.get("acme", "q", "rolled-back")


async def test_jobs_are_tenant_scoped(world: World) -> None:
    _, jobs, _ = world
    record = await jobs.enqueue("acme", "q", NewJob(type="test.work"))
    with pytest.raises(NotFound):
        await jobs.get("other", "q", record.id)
    with pytest.raises(NotFound):
        await jobs.get("acme", "another-queue", record.id)


async def test_purge_removes_what_the_tenant_left_in_the_backend(world: World, backend: str) -> None:
    ctx, jobs, _ = world
    await jobs.enqueue("other", "q", NewJob(type="test.work", delay_s=3600))
    kept = await jobs.enqueue("acme", "q", NewJob(type="test.work", delay_s=3600))
    await jobs.queue.purge("other")
    await ctx.tenants.delete("other")
    if backend == "arq":
        from appliance.jobs.arq import ArqQueue

        assert isinstance(jobs.queue, ArqQueue)
        assert [k async for k in jobs.queue.pool.scan_iter(match="*other:*")] == []
        assert [k async for k in jobs.queue.pool.scan_iter(match=f"*acme:q:{kept.id}")] != []
    rows = await ctx.db.fetchall("SELECT tenant_id FROM jobs")
    assert [r["tenant_id"] for r in rows] == ["acme"]
    await ctx.tenants.create("other", "Other")  # the fixture's teardown purges it again


async def test_health_reports_the_backend(world: World, backend: str) -> None:
    ctx, _, _ = world
    statuses = {s.name: s for s in await ctx.check_health()}
    assert statuses["jobs"].ok and statuses["jobs"].backend == backend


WORKER_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    from appliance.app import assemble
    from tests.conftest import make_settings

    async def main(data_dir, marker, overrides):
        ctx, _ = assemble(make_settings(Path(data_dir), **json.loads(overrides)), role="worker")

        async def block(job):
            Path(marker).write_text(str(job.attempt))
            await asyncio.sleep(3600)

        ctx.register_job_handler("test.work", block)
        async with ctx.running():
            await asyncio.Event().wait()

    asyncio.run(main(*sys.argv[1:4]))
    """
)


async def test_a_job_held_by_a_killed_worker_runs_again(
    world: World, tmp_path: Path, config: BackendConfig
) -> None:
    ctx, jobs, handlers = world
    record = await jobs.enqueue("acme", "q", NewJob(type="test.work", payload={"value": 1}, timeout_s=1))
    marker = tmp_path / "started"
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    env = {**os.environ, **config.env, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    log = tmp_path / "worker.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, str(script), ctx.settings.data_dir, str(marker), json.dumps(config.overrides)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while not marker.exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the worker never started the job"
            await asyncio.sleep(0.02)
        assert (await jobs.get("acme", "q", record.id)).status == "running"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    await jobs.drain()  # waits for the dead worker's lease to run out, then runs the job here
    done = await jobs.get("acme", "q", record.id)
    assert done.status == "succeeded" and done.attempts == 2
    assert [c.attempt for c in handlers.calls] == [2]


def _redis_argv(port: int, workdir: Path) -> list[str]:
    from tests.peers import HOST, find_tool

    return [
        find_tool("redis-server"),
        "--port",
        str(port),
        "--bind",
        HOST,
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
    ]


async def test_arq_enqueues_survive_a_redis_outage(tmp_path: Path) -> None:
    """Redis stops: enqueues are still accepted (recorded) and /readyz says so; once it is back, all run."""
    from tests.peers import free_port, redis_pong, running

    port = free_port()
    workdir = tmp_path / "redis"
    workdir.mkdir()
    ctx, _ = assemble(make_settings(tmp_path / "data", redis_url=f"redis://127.0.0.1:{port}/0"), role="cli")
    handlers = Handlers()
    ctx.register_job_handler("test.work", handlers.work)
    with running("redis-outage", _redis_argv(port, workdir), workdir, lambda: redis_pong(port)) as redis:
        async with ctx.running():
            jobs = ctx.service("jobs", JobService)
            first = await jobs.enqueue("default", "q", NewJob(type="test.work", payload={"value": 1}))
            redis.stop()
            second = await jobs.enqueue("default", "q", NewJob(type="test.work", payload={"value": 2}))
            assert (await jobs.get("default", "q", second.id)).status == "queued"
            [status] = [s for s in await ctx.check_health() if s.name == "jobs"]
            assert not status.ok and "APPLIANCE_REDIS_URL" in status.detail
            with running("redis-outage-2", _redis_argv(port, workdir), workdir, lambda: redis_pong(port)):
                await jobs.drain()
                for record in (first, second):
                    assert (await jobs.get("default", "q", record.id)).status == "succeeded"
                assert sorted(c.payload["value"] for c in handlers.calls) == [1, 2]


async def test_stopping_a_worker_hands_running_jobs_back(config: BackendConfig, tmp_path: Path) -> None:
    overrides = config.overrides
    ctx, _ = assemble(make_settings(tmp_path / "data", **overrides), role="worker")
    handlers = Handlers()
    ctx.register_job_handler("test.work", handlers.work)
    async with ctx.running():
        jobs = ctx.service("jobs", JobService)
        jobs.queue.stop_wait_s = 0.05
        quick = await jobs.enqueue("default", "q", NewJob(type="test.work", payload={"value": 1}))
        slow = await jobs.enqueue("default", "q", NewJob(type="test.work", payload={"sleep": 60}))
        deadline = time.monotonic() + 15
        while len(handlers.calls) < 2 or (await jobs.get("default", "q", quick.id)).status != "succeeded":
            assert time.monotonic() < deadline, "the background worker did not start both jobs"
            await asyncio.sleep(0.02)
    reader, _ = assemble(make_settings(tmp_path / "data", **overrides), role="cli")  # no workers
    async with reader.running():
        record = await reader.service("jobs", JobService).queue.get("default", "q", slow.id)
        await reader.service("jobs", JobService).queue.purge("default")
    assert record is not None and record.status == "queued" and record.attempts == 0 and record.history == []


async def test_arq_starts_without_redis_and_says_so(tmp_path: Path) -> None:
    from tests.peers import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    ctx, _ = assemble(make_settings(tmp_path / "data", redis_url=url), role="worker")
    async with ctx.running():
        jobs = ctx.service("jobs", JobService)
        record = await jobs.enqueue("default", "q", NewJob(type="test.work"))
        assert (await jobs.get("default", "q", record.id)).status == "queued"
        [status] = [s for s in await ctx.check_health() if s.name == "jobs"]
        assert not status.ok and status.backend == "arq"
