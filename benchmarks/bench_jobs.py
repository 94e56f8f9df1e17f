"""No-op jobs per second, end to end (enqueue -> handler ran), for each job queue adapter and bare arq.

Runs, in one process on uvloop, against a throwaway redis-server on a free loopback port:
- the appliance's ``sqlite`` adapter (durable: every batch is a committed WAL transaction);
- the appliance's ``arq`` adapter (record in SQLite, dispatch and run by arq on Redis);
- bare arq, tuned the same way as the adapter (poll_delay 0.05 s, same max_jobs);
- a bare SQLite baseline: insert the jobs, then select and mark them done in batches.
Prints each rate and the ratios appliance/bare. Usage: ``.venv/bin/python benchmarks/bench_jobs.py [N]``.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop
from arq.connections import RedisSettings, create_pool
from arq.worker import Worker, func

from appliance.app import assemble
from appliance.config import load_settings
from appliance.jobs import Job, JobService, NewJob

N = int(sys.argv[1]) if __name__ == "__main__" and len(sys.argv) > 1 else 5000
CONCURRENCY = 32
BATCH = 500


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen([*argv, "--dir", str(workdir)], stdout=subprocess.DEVNULL)
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            time.sleep(0.05)
    return proc, f"redis://127.0.0.1:{port}/0"


async def appliance_rate(data_dir: Path, redis_url: str = "", count: int = 0, **overrides: Any) -> float:
    """No-op jobs per second through the adapter the settings pick (``overrides``, e.g. a plugin's)."""
    count = count or N
    settings = load_settings(
        env={},
        data_dir=str(data_dir),
        root_key="bench-root-key-0123456789",
        redis_url=redis_url,
        job_concurrency=CONCURRENCY,
        **overrides,
    )
    ctx, _ = assemble(settings, role="cli")
    done = 0

    async def noop(job: Job) -> None:
        nonlocal done
        done += 1

    ctx.register_job_handler("bench.noop", noop)
    async with ctx.running():
        jobs = ctx.service("jobs", JobService)
        await jobs.enqueue("default", "warmup", NewJob(type="bench.noop"))
        await jobs.drain()
        done = 0
        start = time.perf_counter()
        for i in range(0, count, BATCH):
            await jobs.enqueue_bulk(
                "default", "bench", [NewJob(type="bench.noop") for _ in range(min(BATCH, count - i))]
            )
        await jobs.drain()
        elapsed = time.perf_counter() - start
        assert done == count, f"{done} of {count} ran"
        await jobs.queue.purge("default")
    return count / elapsed


async def bare_arq_rate(redis_url: str) -> float:
    pool = await create_pool(RedisSettings.from_dsn(redis_url), default_queue_name="bare")
    done = 0

    async def noop(ctx: dict[Any, Any]) -> None:
        nonlocal done
        done += 1

    start = time.perf_counter()
    for _ in range(N):
        await pool.enqueue_job("noop", _queue_name="bare")
    worker = Worker(
        functions=[func(noop, name="noop", keep_result=0)],
        queue_name="bare",
        redis_pool=pool,
        burst=True,
        max_jobs=CONCURRENCY,
        poll_delay=0.05,
        keep_result=0,
        handle_signals=False,
    )
    await worker.async_run()
    elapsed = time.perf_counter() - start
    assert done == N, f"{done} of {N} ran"
    await pool.aclose()
    return N / elapsed


def bare_sqlite_rate(path: Path) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE q (id INTEGER PRIMARY KEY, payload TEXT, status TEXT)")
    conn.execute("CREATE INDEX q_status ON q (status, id)")
    start = time.perf_counter()
    for i in range(0, N, BATCH):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO q (payload, status) VALUES ('{}', 'queued')", [()] * min(BATCH, N - i))
        conn.execute("COMMIT")
    while True:
        conn.execute("BEGIN IMMEDIATE")
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM q WHERE status = 'queued' ORDER BY id LIMIT ?", (CONCURRENCY,)
            )
        ]
        conn.executemany("UPDATE q SET status = 'running' WHERE id = ?", [(i,) for i in ids])
        conn.execute("COMMIT")
        if not ids:
            break
        conn.execute("BEGIN")
        conn.executemany("UPDATE q SET status = 'done' WHERE id = ?", [(i,) for i in ids])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return N / elapsed


async def timed(name: str, run: Callable[[], Awaitable[float]]) -> float:
    rate = await run()
    print(f"{name:<34} {rate:>9,.0f} jobs/s")
    return rate


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        redis, url = start_redis(root)
        try:
            print(f"{N} no-op jobs, enqueue -> handler ran, {CONCURRENCY} concurrent, uvloop\n")
            sqlite_rate = await timed("appliance sqlite adapter", lambda: appliance_rate(root / "a"))
            base_sqlite = await timed(
                "bare SQLite insert/claim/done", lambda: asyncio.to_thread(bare_sqlite_rate, root / "bare.db")
            )
            arq_rate = await timed("appliance arq adapter", lambda: appliance_rate(root / "b", url))
            bare_arq = await timed("bare arq (poll_delay 0.05)", lambda: bare_arq_rate(url))
            print()
            print(f"sqlite adapter / bare SQLite loop:  {sqlite_rate / base_sqlite:.2f}x")
            print(f"arq adapter / bare arq:             {arq_rate / bare_arq:.2f}x")
            print(f"sqlite adapter / bare arq:          {sqlite_rate / bare_arq:.2f}x")
        finally:
            redis.terminate()
            redis.wait()


if __name__ == "__main__":
    uvloop.run(main())
