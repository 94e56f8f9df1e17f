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

    .venv/bin/python benchmarks/bench_scale.py [--seconds 4]
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


async def writes(db: Database, total: int, concurrency: int) -> float:
    counter = iter(range(total))

    async def writer() -> None:
        for i in counter:
            async with db.transaction() as tx:
                event_id = f"ev{concurrency}-{i:08d}"
                await tx.execute(
                    "INSERT INTO events (id, tenant_id, source, type, payload, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (event_id, "default", "bench", "bench.write", '{"n": 1}', time.time()),
                )
                await tx.execute(
                    "INSERT INTO outbox (event_id, tenant_id, created_at) VALUES (?, ?, ?)",
                    (event_id, "default", time.time()),
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


def main(seconds: float, total: int) -> None:
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        peer = stack.enter_context(postgres_cluster(stack.enter_context(postgres_workdir())))
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="load duration per node count")
    parser.add_argument("--writes", type=int, default=2000, help="transactions per write run")
    args = parser.parse_args()
    main(args.seconds, args.writes)
