"""Scaling out: requests/s with one appliance node vs two sharing PostgreSQL, and the metadata write
path on PostgreSQL vs SQLite.

1. Nodes: `appliance run` processes on a throwaway PostgreSQL (started here, loopback only), all
   reading the same metadata. The load (authenticated ``GET /v1/whoami``: key lookup, tenant, JSON)
   comes from this process with a fixed number of concurrent connections, first all to one node, then
   spread over two. On one machine the nodes share its cores with each other, PostgreSQL and the load
   generator, so the ratio shows how much a second process adds here, not what a second machine would.
2. Writes: transactions of two INSERTs (an event and its outbox row, what every state change does)
   through the metadata interface itself, sequentially and 16 at a time, on SQLite (one writer, WAL)
   and on PostgreSQL (a pool; fsync off in this throwaway cluster, as SQLite's synchronous=NORMAL).
3. Tenant shards: the same write transactions and a point read, through the shard router (tenant
   bound, placement cached, the move fence checked in every write) vs. on the shard's database
   directly, on SQLite and PostgreSQL; then `tenants move` throughput (rows/s) for a tenant of
   ``--move-rows`` events.

    .venv/bin/python benchmarks/bench_scale.py [--seconds 4] [--only-shards]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.core.db import Database, PostgresDatabase
from appliance.core.migrations import MIGRATIONS
from appliance.core.shard_move import move_tenant
from appliance.core.shards import ShardedDatabase, acting_for
from appliance.core.tenants import TenantService
from tests.peers import PostgresPeer, free_port, postgres_cluster, postgres_workdir

ROOT_KEY = "bench-root-key-0123456789abcdef"
CONCURRENCY = 32


@contextmanager
def node(data_dir: Path, database_url: str) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env.update(
        APPLIANCE_DATA_DIR=str(data_dir),
        APPLIANCE_PORT=str(port),
        APPLIANCE_ROOT_KEY=ROOT_KEY,
        APPLIANCE_DATABASE_URL=database_url,
        APPLIANCE_DATABASE_POOL_SIZE="8",
        APPLIANCE_WORKER="false",
        APPLIANCE_LOG_LEVEL="WARNING",
        APPLIANCE_RATE_LIMIT_PER_KEY="",
        APPLIANCE_RATE_LIMIT_PER_IP="",
    )
    data_dir.mkdir(parents=True)
    log = (data_dir.parent / f"node-{port}.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "run"], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"node exited: {(data_dir.parent / f'node-{port}.log').read_text()[-2000:]}"
                )
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("node did not start")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()


async def load(urls: list[str], headers: dict[str, str], seconds: float) -> float:
    """Requests/s of CONCURRENCY looping clients, spread round-robin over ``urls``."""
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(limits=limits, timeout=10) as http:
        for url in urls:  # warm-up: pools, caches, connections
            await asyncio.gather(*(http.get(url + "/v1/whoami", headers=headers) for _ in range(CONCURRENCY)))
        done = 0
        stop = time.perf_counter() + seconds

        async def client(url: str) -> None:
            nonlocal done
            while time.perf_counter() < stop:
                response = await http.get(url + "/v1/whoami", headers=headers)
                assert response.status_code == 200, response.text
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(client(urls[i % len(urls)]) for i in range(CONCURRENCY)))
        return done / (time.perf_counter() - start)


async def writes(
    db: Database, total: int, concurrency: int, tenant: str = "default", label: str = ""
) -> float:
    counter = iter(range(total))

    async def writer() -> None:
        for i in counter:
            async with db.transaction() as tx:
                event_id = f"ev{label}{concurrency}-{i:08d}"
                await tx.execute(
                    "INSERT INTO events (id, tenant_id, source, type, payload, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (event_id, tenant, "bench", "bench.write", '{"n": 1}', time.time()),
                )
                await tx.execute(
                    "INSERT INTO outbox (event_id, tenant_id, created_at) VALUES (?, ?, ?)",
                    (event_id, tenant, time.time()),
                )

    start = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(concurrency)))
    return total / (time.perf_counter() - start)


async def write_path(peer: PostgresPeer, tmp: Path, total: int) -> None:
    print(f"\nmetadata writes (transactions of 2 INSERTs, {total} per run): tx/s")
    print(f"{'concurrency':>12} {'SQLite':>10} {'PostgreSQL':>11} {'PG/SQLite':>10}")
    for concurrency in (1, 16):
        sqlite_db = Database(tmp / f"w{concurrency}.db")
        pg_db = PostgresDatabase(peer.create_database(f"w{concurrency}"), pool_size=16)
        rates = []
        for db in (sqlite_db, pg_db):
            await db.open()
            await db.migrate(MIGRATIONS)
            rates.append(await writes(db, total, concurrency))
            await db.close()
        print(f"{concurrency:>12} {rates[0]:>10.0f} {rates[1]:>11.0f} {rates[1] / rates[0]:>10.2f}")


async def point_reads(db: Database, total: int) -> float:
    start = time.perf_counter()
    for _ in range(total):
        await db.point_read("SELECT id FROM tenants WHERE id = ?", ("bench",))
    return total / (time.perf_counter() - start)


async def sharded(directory: Database, shard: Database, name: str) -> ShardedDatabase:
    router = ShardedDatabase(directory, {"s1": shard}, ["s1"], wait_s=5.0)
    await router.open()
    await router.migrate(MIGRATIONS)
    await TenantService(directory, router).create("bench", "bench")
    return router


async def shard_path(peer: PostgresPeer, tmp: Path, total: int, move_rows: int) -> None:
    print(f"\ntenant shards: through the router vs. the shard directly ({total} per run)")
    print(f"{'engine':>10} {'what':>16} {'direct':>10} {'routed':>10} {'routed/direct':>14}")
    for engine in ("sqlite", "postgres"):
        if engine == "sqlite":
            directory, shard = Database(tmp / "dir.db"), Database(tmp / "s1.db")
        else:
            directory = PostgresDatabase(peer.create_database("shard_dir"), pool_size=16)
            shard = PostgresDatabase(peer.create_database("shard_s1"), pool_size=16)
        router = await sharded(directory, shard, engine)
        for what, concurrency in (("write tx, 1", 1), ("write tx, 16", 16), ("point read", 0)):
            if concurrency:
                direct = await writes(shard, total, concurrency, "bench", "d")
                with acting_for("bench"):
                    routed = await writes(router, total, concurrency, "bench", "r")
            else:
                direct = await point_reads(shard, total * 5)
                with acting_for("bench"):
                    routed = await point_reads(router, total * 5)
            print(f"{engine:>10} {what:>16} {direct:>10.0f} {routed:>10.0f} {routed / direct:>14.2f}")
        await router.close()
    # Move throughput: a tenant with move_rows events (and their outbox rows) from one SQLite shard to another.
    for engine in ("sqlite", "postgres"):
        if engine == "sqlite":
            directory = Database(tmp / "mdir.db")
            shards: dict[str, Database] = {"s1": Database(tmp / "m1.db"), "s2": Database(tmp / "m2.db")}
        else:
            directory = PostgresDatabase(peer.create_database("move_dir"), pool_size=8)
            shards = {
                n: PostgresDatabase(peer.create_database(f"move_{n}"), pool_size=8) for n in ("s1", "s2")
            }
        router = ShardedDatabase(directory, shards, ["s1"], wait_s=5.0)
        await router.open()
        await router.migrate(MIGRATIONS)
        await TenantService(directory, router).create("bench", "bench")
        with acting_for("bench"):
            await writes(router, move_rows, 16, "bench")
        report = await move_tenant(router, "bench", "s2", grace_s=0)
        rate = report.total_rows / report.seconds
        print(
            f"move {engine:>8}: {report.total_rows} rows (events + outbox) in {report.seconds:.2f}s"
            f" = {rate:,.0f} rows/s (freeze, copy, verify, switch, delete)"
        )
        await router.close()


def main(seconds: float, total: int, only_shards: bool, move_rows: int) -> None:
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        peer = stack.enter_context(postgres_cluster(stack.enter_context(postgres_workdir())))
        if only_shards:
            asyncio.run(shard_path(peer, tmp, total, move_rows))
            return
        database_url = peer.create_database("nodes")
        first = stack.enter_context(node(tmp / "a" / "data", database_url))
        key = httpx.post(
            first + "/v1/keys",
            json={"name": "bench", "scopes": ["storage"]},
            headers={"Authorization": f"Bearer {ROOT_KEY}"},
        ).json()["secret"]
        headers = {"Authorization": f"Bearer {key}"}
        one = asyncio.run(load([first], headers, seconds))
        second = stack.enter_context(node(tmp / "b" / "data", database_url))
        two = asyncio.run(load([first, second], headers, seconds))
        print(
            f"authenticated GET /v1/whoami, {CONCURRENCY} concurrent clients, PostgreSQL metadata, {os.cpu_count()} cores"
        )
        print(f"  one node:  {one:8.0f} req/s")
        print(f"  two nodes: {two:8.0f} req/s   (two/one = {two / one:.2f})")
        asyncio.run(write_path(peer, tmp, total))
        asyncio.run(shard_path(peer, tmp, total, move_rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="load duration per node count")
    parser.add_argument("--writes", type=int, default=2000, help="transactions per write run")
    parser.add_argument("--only-shards", action="store_true", help="run only the tenant-shard part")
    parser.add_argument("--move-rows", type=int, default=20000, help="events of the tenant that is moved")
    args = parser.parse_args()
    main(args.seconds, args.writes, args.only_shards, args.move_rows)
