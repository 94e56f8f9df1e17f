"""Tenant shards (APPLIANCE_DATABASE_SHARDS): placement, routing, isolation across shards, and moves.

The shards here are SQLite files beside the directory; tests/api run whole suites sharded with
``APPLIANCE_TEST_DATABASE=shards`` (and .ci/run does for a few).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from appliance.app import assemble, create_app
from appliance.config import ConfigError, Settings
from appliance.core import shard_move
from appliance.core.api import shard_checks
from appliance.core.db import open_database
from appliance.core.shard_move import move_tenant, tenant_tables
from appliance.core.shards import DIRECTORY, PLACEMENT_TTL_S, ShardedDatabase, parse_shards, place
from tests.conftest import ROOT, ROOT_KEY, make_settings
from tests.process import run_appliance
from tests.receiver import serve_receiver

Client = AsyncTestClient[Litestar]
SHARDS = "s1=shard-1.db,s2=shard-2.db"


# ------------------------------------------------------------------ units ---


def test_placement_is_stable_and_spreads() -> None:
    names = ["s1", "s2", "s3"]
    tenants = [f"tenant-{i}" for i in range(300)]
    first = {t: place(t, names) for t in tenants}
    assert first == {t: place(t, list(reversed(names))) for t in tenants}, "order of the list must not matter"
    counts = {n: list(first.values()).count(n) for n in names}
    assert all(60 < c < 140 for c in counts.values()), counts
    # Adding a shard moves only the tenants the new shard wins (rendezvous hashing), never between old ones.
    after = {t: place(t, [*names, "s4"]) for t in tenants}
    assert all(after[t] in (first[t], "s4") for t in tenants)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "lists no shard"),
        ("s1", "needs a url"),
        ("s1=a.db,s1=b.db", "twice"),
        ("main=x.db", "directory database itself"),
        ("bad name=x.db", "must be letters"),
    ],
)
def test_bad_shard_settings_name_the_variable(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match="APPLIANCE_DATABASE_SHARDS") as caught:
        parse_shards(value, Path("/data"))
    assert message in str(caught.value)


def test_shard_urls(tmp_path: Path) -> None:
    parsed = parse_shards("main, a=a.db, b=/abs/b.db, c=sqlite:c.db, d=postgresql://u@h/db", tmp_path)
    assert parsed == {
        "main": "",
        "a": str(tmp_path / "a.db"),
        "b": "/abs/b.db",
        "c": str(tmp_path / "c.db"),
        "d": "postgresql://u@h/db",
    }


def test_mixed_engines_are_refused(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, database_shards="s1=postgresql://u@localhost/x", database_url="")
    with pytest.raises(ConfigError, match="one engine for all"):
        assemble(settings)


# -------------------------------------------------------------- the app ---


def shard_settings(tmp_path: Path, **overrides: Any) -> Settings:
    return make_settings(tmp_path / "data", database_shards=SHARDS, database_url="", **overrides)


@pytest.fixture
async def sharded(tmp_path: Path) -> AsyncIterator[tuple[Client, Settings]]:
    settings = shard_settings(tmp_path)
    async with AsyncTestClient(create_app(settings), base_url="http://appliance.test") as client:
        yield client, settings


def rows(settings: Settings, shard: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read a shard's file directly (``main``: the directory), bypassing the appliance."""
    path = settings.db_path if shard == DIRECTORY else settings.data_path / f"shard-{shard[1:]}.db"
    with sqlite3.connect(path) as conn:
        return list(conn.execute(sql, params))


async def tenant_on(
    client: Client | httpx.AsyncClient, shard: str, prefix: str
) -> tuple[str, dict[str, str]]:
    """A tenant that the hash places on ``shard``, with an all-scopes key."""
    tenant = next(f"{prefix}-{i}" for i in range(1000) if place(f"{prefix}-{i}", ["s1", "s2"]) == shard)
    assert (
        await client.post("/v1/tenants", json={"id": tenant, "name": tenant}, headers=ROOT)
    ).status_code == 201
    key = await client.post(
        "/v1/keys", json={"name": "k", "scopes": ["admin"]}, headers={**ROOT, "X-Tenant-ID": tenant}
    )
    assert key.status_code == 201, key.text
    return tenant, {"Authorization": f"Bearer {key.json()['secret']}"}


async def publish(client: Client | httpx.AsyncClient, headers: dict[str, str], n: int = 1) -> list[str]:
    ids = []
    for i in range(n):
        r = await client.post(
            "/v1/events", json={"source": "test", "type": "t.made", "payload": {"i": i}}, headers=headers
        )
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    return ids


async def event_ids(client: Client | httpx.AsyncClient, headers: dict[str, str]) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/events", params=params, headers=headers)).json()
        ids += [e["id"] for e in page["items"]]
        if not (cursor := page["next_cursor"]):
            return ids


async def test_tenants_are_placed_and_their_rows_live_on_their_shard(
    sharded: tuple[Client, Settings],
) -> None:
    client, settings = sharded
    a, ha = await tenant_on(client, "s1", "a")
    b, hb = await tenant_on(client, "s2", "b")
    await publish(client, ha, 3)
    await publish(client, hb, 2)
    job = await client.post(
        "/v1/queues/q/jobs", json={"type": "hello.echo", "payload": {}, "delay_s": 3600}, headers=hb
    )
    assert job.status_code == 201, job.text
    placements = dict(rows(settings, DIRECTORY, "SELECT tenant_id, shard FROM tenant_placements"))
    assert placements == {a: "s1", b: "s2"}
    # Keys stay in the directory; events and jobs on the tenant's shard only.
    assert rows(settings, DIRECTORY, "SELECT COUNT(*) FROM api_keys WHERE tenant_id IN (?, ?)", (a, b)) == [
        (2,)
    ]
    assert rows(settings, "s1", "SELECT tenant_id, COUNT(*) FROM events GROUP BY tenant_id") == [(a, 3)]
    assert rows(settings, "s2", "SELECT tenant_id, COUNT(*) FROM events GROUP BY tenant_id") == [(b, 2)]
    assert rows(settings, "s2", "SELECT COUNT(*) FROM jobs WHERE tenant_id = ?", (b,)) == [(1,)]
    assert rows(settings, DIRECTORY, "SELECT COUNT(*) FROM events") == [(0,)]
    # The default tenant (no placement row) stays in the directory.
    await publish(client, ROOT, 1)
    assert rows(settings, DIRECTORY, "SELECT tenant_id FROM events") == [("default",)]
    # /readyz (and `appliance doctor`) check each shard.
    ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    checks = {b["name"]: b["ok"] for b in ready.json()["backends"]}
    assert checks["shard:s1"] and checks["shard:s2"]


async def test_a_shard_that_does_not_answer_is_reported(tmp_path: Path) -> None:
    unopened = open_database("", tmp_path / "shard-9.db")  # never opened: every query fails
    [check] = shard_checks(
        cast(ShardedDatabase, SimpleNamespace(shards={DIRECTORY: unopened, "s9": unopened}))
    )
    status = await check()
    assert (status.name, status.backend, status.mode, status.ok) == ("shard:s9", "sqlite", "embedded", False)
    assert (
        status.detail.startswith(str(tmp_path / "shard-9.db"))
        and "APPLIANCE_DATABASE_SHARDS" in status.detail
    )


async def test_no_tenant_reads_another_across_shards(sharded: tuple[Client, Settings]) -> None:
    client, _ = sharded
    _, ha = await tenant_on(client, "s1", "iso-a")
    b, hb = await tenant_on(client, "s2", "iso-b")
    mine = await publish(client, hb, 2)
    put = await client.put("/v1/buckets/bkt/objects/secret.txt", content=b"b's bytes", headers=hb)
    assert put.status_code == 201, put.text
    assert await event_ids(client, ha) == []
    assert (await client.get("/v1/buckets/bkt/objects/secret.txt", headers=ha)).status_code == 404
    assert (await client.get("/v1/buckets/bkt/objects/secret.txt", headers=hb)).content == b"b's bytes"
    # A's key naming B's tenant is refused; the root key naming B reads B's shard.
    assert (await client.get("/v1/events", headers={**ha, "X-Tenant-ID": b})).status_code == 403
    assert set(mine) < set(await event_ids(client, {**ROOT, "X-Tenant-ID": b}))  # + storage.object.created


async def test_deleting_a_tenant_deletes_its_shard_rows(sharded: tuple[Client, Settings]) -> None:
    client, settings = sharded
    a, ha = await tenant_on(client, "s2", "gone")
    await publish(client, ha, 2)
    assert (await client.delete(f"/v1/tenants/{a}", headers=ROOT)).status_code == 204
    assert rows(settings, "s2", "SELECT COUNT(*) FROM events WHERE tenant_id = ?", (a,)) == [(0,)]
    assert rows(settings, "s2", "SELECT COUNT(*) FROM tenants WHERE id = ?", (a,)) == [(0,)]
    assert rows(settings, DIRECTORY, "SELECT COUNT(*) FROM tenant_placements WHERE tenant_id = ?", (a,)) == [
        (0,)
    ]


async def test_jobs_and_events_are_delivered_on_every_shard(sharded: tuple[Client, Settings]) -> None:
    client, _ = sharded

    with serve_receiver() as receiver:
        for shard in ("s1", "s2"):
            _, headers = await tenant_on(client, shard, f"d{shard}")
            rule = {
                "name": "hook",
                "pattern": {"type": ["t.made"]},
                "targets": [{"kind": "webhook", "url": receiver.url}],
            }
            assert (await client.post("/v1/rules", json=rule, headers=headers)).status_code == 201
            await publish(client, headers, 1)
        deadline = time.monotonic() + 20
        while len(receiver.deliveries) < 2:
            assert time.monotonic() < deadline, "the workers of each shard should deliver both events"
            await asyncio.sleep(0.05)


# ------------------------------------------------------------------ moves ---


async def until(done: Callable[[], bool], tasks: list[asyncio.Task[None]], timeout: float = 20.0) -> None:
    """Poll ``done`` with a deadline; a failed task's error surfaces at once."""
    deadline = time.monotonic() + timeout
    while not done():
        for task in tasks:
            if task.done():
                task.result()
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.fixture(params=["sqlite", "postgres"])
def engine(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Settings, Callable[[str, str], int]]]:
    """Sharded settings on one engine, and ``count(shard, sql)`` reading a shard directly."""
    if request.param == "sqlite":
        settings = shard_settings(tmp_path)
        yield settings, lambda shard, sql: int(rows(settings, shard, sql)[0][0])
        return
    peer = request.getfixturevalue("postgres_peer")
    template = request.getfixturevalue("postgres_template")
    names = {shard: f"sh_{shard}_{uuid.uuid4().hex[:12]}" for shard in (DIRECTORY, "s1", "s2")}
    urls = {shard: peer.create_database(name, template) for shard, name in names.items()}
    shards = f"s1={urls['s1']},s2={urls['s2']}"
    settings = make_settings(tmp_path / "data", database_url=urls[DIRECTORY], database_shards=shards)
    try:
        yield settings, lambda shard, sql: int(peer.psql(sql, names[shard]).strip())
    finally:
        for name in names.values():
            peer.drop_database(name)


async def test_move_under_concurrent_writes_loses_nothing(
    engine: tuple[Settings, Callable[[str, str], int]],
) -> None:
    # A real server process takes the writes while the move runs here, as `appliance tenants move` would.
    settings, count = engine
    env = {
        "APPLIANCE_ROOT_KEY": ROOT_KEY,
        "APPLIANCE_DATABASE_URL": settings.database_url,
        "APPLIANCE_DATABASE_SHARDS": settings.database_shards,
        "APPLIANCE_SHARD_WRITE_WAIT_S": "20",
    }
    with run_appliance(settings.data_path, env) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            tenant, headers = await tenant_on(client, "s1", "mover")
            before = await publish(client, headers, 300)
            acknowledged: list[str] = list(before)
            stop = asyncio.Event()

            async def writer(n: int) -> None:
                i = 0
                while not stop.is_set():
                    body = {"source": "w", "type": "w", "payload": {"w": n, "i": i}}
                    r = await client.post("/v1/events", json=body, headers=headers)
                    i += 1
                    assert r.status_code == 202, r.text  # a 20 s wait covers the move: none refused
                    acknowledged.append(r.json()["id"])

            ctx, _ = assemble(settings, role="cli")
            writers = [asyncio.create_task(writer(n)) for n in range(4)]
            try:
                await until(lambda: len(acknowledged) >= len(before) + 20, writers)  # the writers are going
                async with ctx.prepared():
                    assert ctx.sharded is not None
                    report = await move_tenant(ctx.sharded, tenant, "s2", grace_s=PLACEMENT_TTL_S + 0.1)
                written_after = len(acknowledged)
                await until(lambda: len(acknowledged) >= written_after + 20, writers)  # and go on, on s2
            finally:
                stop.set()
                await asyncio.gather(*writers, return_exceptions=True)
            for task in writers:
                task.result()
            listed = await event_ids(client, headers)
    assert report.source == "s1" and report.target == "s2" and report.rows["events"] >= 300
    assert set(acknowledged) <= set(listed), "an acknowledged write is missing after the move"
    assert len(listed) == len(set(listed))
    where = f"FROM events WHERE tenant_id = '{tenant}'"
    assert count("s2", f"SELECT COUNT(*) {where}") == len(listed) >= len(acknowledged)
    assert count("s1", f"SELECT COUNT(*) {where}") == 0
    assert count("s1", f"SELECT COUNT(*) FROM tenants WHERE id = '{tenant}'") == 0
    assert (
        count(DIRECTORY, f"SELECT epoch FROM tenant_placements WHERE tenant_id = '{tenant}' AND shard = 's2'")
        == 2
    )
    # A second run finds nothing to do.
    async with ctx.prepared():
        assert ctx.sharded is not None
        again = await move_tenant(ctx.sharded, tenant, "s2", grace_s=0)
    assert again.rows == {}


class Killed(BaseException):
    """Stands for the process being killed: no except clause of the move catches it."""


async def test_interrupted_move_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = shard_settings(tmp_path)
    async with AsyncTestClient(create_app(settings), base_url="http://appliance.test") as client:
        tenant, headers = await tenant_on(client, "s2", "halfway")
        await publish(client, headers, 50)
        put = await client.put("/v1/buckets/bkt/objects/x", content=b"x", headers=headers)
        assert put.status_code == 201
        ids = await event_ids(client, headers)  # 50 and storage.object.created

        ctx, _ = assemble(settings, role="cli")
        copy_table = shard_move._copy_table
        copied: list[str] = []

        async def dies_halfway(src: Any, dst: Any, spec: Any, t: str) -> int:
            if len(copied) == 2:
                raise Killed  # the process dies mid-copy: nothing gets to undo anything
            copied.append(spec.name)
            return await copy_table(src, dst, spec, t)

        async def no_undo(*_: Any) -> None:
            return None

        monkeypatch.setattr(shard_move, "_copy_table", dies_halfway)
        monkeypatch.setattr(shard_move, "_abort", no_undo)
        async with ctx.prepared():
            assert ctx.sharded is not None
            with pytest.raises(Killed):
                await move_tenant(ctx.sharded, tenant, DIRECTORY, grace_s=0)
        # Frozen on s2, half copied to main: reads still work, writes wait and are then refused.
        assert await event_ids(client, headers) == ids
        assert rows(settings, "s2", "SELECT state FROM tenant_fence WHERE tenant_id = ?", (tenant,)) == [
            ("frozen",)
        ]
        monkeypatch.setattr(shard_move, "_copy_table", copy_table)
        async with ctx.prepared():
            assert ctx.sharded is not None
            # The grace outlasts the app's cached placement: its reads never find the old shard emptied.
            report = await move_tenant(ctx.sharded, tenant, DIRECTORY, grace_s=PLACEMENT_TTL_S + 0.1)
        assert report.resumed and report.rows["events"] == 51
        assert await event_ids(client, headers) == ids
        assert (await client.get("/v1/buckets/bkt/objects/x", headers=headers)).content == b"x"
        assert len(await publish(client, headers, 1)) == 1
        assert rows(settings, DIRECTORY, "SELECT COUNT(*) FROM events WHERE tenant_id = ?", (tenant,)) == [
            (52,)
        ]
        assert rows(settings, "s2", "SELECT COUNT(*) FROM events WHERE tenant_id = ?", (tenant,)) == [(0,)]


async def test_frozen_writes_get_503_with_retry_after(tmp_path: Path) -> None:
    settings = shard_settings(tmp_path, shard_write_wait_s=0.2)
    async with AsyncTestClient(create_app(settings), base_url="http://appliance.test") as client:
        tenant, headers = await tenant_on(client, "s1", "frozen")
        await publish(client, headers, 1)
        with sqlite3.connect(settings.data_path / "shard-1.db") as conn:
            conn.execute("INSERT INTO tenant_fence VALUES (?, 'frozen', 's2', 0)", (tenant,))
        r = await client.post("/v1/events", json={"source": "s", "type": "t", "payload": {}}, headers=headers)
        assert r.status_code == 503 and r.headers["retry-after"] == "2"
        assert r.headers["content-type"].startswith("application/problem+json")
        assert "being moved" in r.json()["detail"]
        assert len(await event_ids(client, headers)) == 1  # reads go on


async def test_tenant_tables_cover_every_tenant_table(tmp_path: Path) -> None:
    ctx, _ = assemble(shard_settings(tmp_path), role="cli")
    async with ctx.prepared():
        tables = {t.name: t for t in await tenant_tables(ctx.db.directory)}
    assert {
        "events",
        "outbox",
        "jobs",
        "storage_objects",
        "idempotency",
        "payments",
        "push_deliveries",
    } <= set(tables)
    assert not {"tenants", "api_keys", "admin_sessions", "meta", "tenant_placements"} & set(tables)
    order = list(tables)
    assert order.index("pushes") < order.index("push_deliveries")
    assert order.index("payments") < order.index("payment_refunds")


def test_cli_moves_lists_and_checks_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from appliance.cli import cli

    monkeypatch.setenv("APPLIANCE_DATABASE_SHARDS", SHARDS)
    monkeypatch.setenv("APPLIANCE_ROOT_KEY", ROOT_KEY)
    data = ["--data-dir", str(tmp_path / "data")]
    runner = CliRunner()
    tenant = next(f"cli-{i}" for i in range(100) if place(f"cli-{i}", ["s1", "s2"]) == "s1")
    assert runner.invoke(cli, ["tenants", "create", tenant, *data]).exit_code == 0
    listed = runner.invoke(cli, ["shards", *data])
    assert listed.exit_code == 0, listed.output
    assert f"s1: {tmp_path / 'data' / 'shard-1.db'} (1 tenant(s), new tenants)" in listed.output
    assert "main:" in listed.output and "no new tenants" in listed.output
    moved = runner.invoke(cli, ["tenants", "move", tenant, "--to", "s2", "--grace", "0", *data])
    assert moved.exit_code == 0, moved.output
    assert f"freezing {tenant} on s1" in moved.output and f"{tenant}: s1 -> s2" in moved.output
    assert f"  {tenant} epoch 2" in runner.invoke(cli, ["shards", *data]).output
    unknown = runner.invoke(cli, ["tenants", "move", tenant, "--to", "s9", *data])
    assert unknown.exit_code != 0 and "no shard named 's9'" in unknown.output
    doctor = runner.invoke(cli, ["doctor", *data])
    assert "shard:s1" in doctor.output and "shard:s2" in doctor.output
    backup = runner.invoke(cli, ["backup", str(tmp_path / "b.tar.gz"), *data])
    assert backup.exit_code != 0 and "APPLIANCE_DATABASE_SHARDS" in backup.output
