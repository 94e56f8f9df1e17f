"""Contract suite of the realtime ConnectionRegistry port, run against every adapter (memory, Redis)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from appliance.realtime import BroadcastFilter, ConnectionRecord, ConnectionRegistry
from appliance.realtime.memory import MemoryRegistry
from appliance.realtime.redis import RedisRegistry
from tests.peers import RedisPeer


@pytest.fixture(params=["memory", "redis"])
async def registry(request: pytest.FixtureRequest) -> AsyncIterator[ConnectionRegistry]:
    if request.param == "memory":
        adapter: ConnectionRegistry = MemoryRegistry()
    else:
        peer: RedisPeer = request.getfixturevalue("redis_peer")
        adapter = RedisRegistry(Redis.from_url(peer.url))
    yield adapter
    await adapter.close()


@pytest.fixture
def tenant() -> str:
    # The Redis peer is shared by the session: a fresh tenant per test keeps tests independent.
    return f"t{uuid.uuid4().hex[:12]}"


def record(
    tenant: str,
    conn_id: str,
    user_id: str | None = None,
    tags: tuple[str, ...] = (),
    channels: tuple[str, ...] = (),
    expires_in: float = 60.0,
) -> ConnectionRecord:
    now = time.time()
    return ConnectionRecord(
        id=conn_id,
        tenant=tenant,
        user_id=user_id,
        tags=list(tags),
        channels=list(channels),
        since=now,
        node="node-a",
        expires=now + expires_in,
    )


async def test_add_list_remove(registry: ConnectionRegistry, tenant: str) -> None:
    await registry.add(record(tenant, "ws_1", "alice", ("admin",), ("news",)))
    await registry.add(record(tenant, "ws_2", "bob"))
    page = await registry.list(tenant, 50, None)
    assert [c.id for c in page.items] == ["ws_1", "ws_2"] and page.next_cursor is None
    first = page.items[0]
    assert (first.user_id, first.tags, first.channels, first.node) == ("alice", ["admin"], ["news"], "node-a")
    await registry.remove(record(tenant, "ws_1", channels=("news",)))
    await registry.remove(record(tenant, "ws_1", channels=("news",)))  # idempotent
    assert [c.id for c in (await registry.list(tenant, 50, None)).items] == ["ws_2"]
    assert await registry.count(tenant, "news", None) == 0


async def test_pagination_is_ordered_by_id(registry: ConnectionRegistry, tenant: str) -> None:
    for index in range(7):
        await registry.add(record(tenant, f"ws_{index}"))
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = await registry.list(tenant, 3, cursor)
        assert len(page.items) <= 3
        seen += [c.id for c in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [f"ws_{i}" for i in range(7)]


async def test_subscribe_unsubscribe_and_count_with_filters(
    registry: ConnectionRegistry, tenant: str
) -> None:
    alice = record(tenant, "ws_a", "alice", ("admin", "eu"))
    bob = record(tenant, "ws_b", "bob", ("eu",))
    carol = record(tenant, "ws_c", None, ())
    for conn in (alice, bob, carol):
        await registry.add(conn)
        conn.channels.append("news")
        await registry.subscribe(conn, "news")
    cases = [
        (None, 3),
        (BroadcastFilter(user_ids=["alice"]), 1),
        (BroadcastFilter(user_ids=["alice", "bob", "zed"]), 2),
        (BroadcastFilter(tags=["eu"]), 2),
        (BroadcastFilter(tags=["admin", "nope"]), 1),
        (BroadcastFilter(user_ids=["bob"], tags=["admin"]), 0),
        (BroadcastFilter(tags=["nope"]), 0),
    ]
    for filter, expected in cases:
        assert await registry.count(tenant, "news", filter) == expected, filter
    assert await registry.count(tenant, "other", None) == 0
    bob.channels.remove("news")
    await registry.unsubscribe(bob, "news")
    assert await registry.count(tenant, "news", None) == 2
    listed = {c.id: c.channels for c in (await registry.list(tenant, 50, None)).items}
    assert listed == {"ws_a": ["news"], "ws_b": [], "ws_c": ["news"]}


async def test_tenants_never_see_each_other(registry: ConnectionRegistry, tenant: str) -> None:
    other = tenant + "-other"
    await registry.add(record(tenant, "ws_mine", "alice", channels=("news",)))
    await registry.add(record(other, "ws_theirs", "alice", channels=("news",)))
    assert [c.id for c in (await registry.list(tenant, 50, None)).items] == ["ws_mine"]
    assert [c.id for c in (await registry.list(other, 50, None)).items] == ["ws_theirs"]
    assert await registry.count(tenant, "news", None) == 1
    await registry.purge(other)
    assert (await registry.list(other, 50, None)).items == []
    assert await registry.count(other, "news", None) == 0
    assert [c.id for c in (await registry.list(tenant, 50, None)).items] == ["ws_mine"]


async def test_expired_records_are_gone_and_touch_keeps_live_ones(
    registry: ConnectionRegistry, tenant: str
) -> None:
    stale = record(tenant, "ws_stale", channels=("news",), expires_in=-1)
    live = record(tenant, "ws_live", channels=("news",), expires_in=0.5)
    await registry.add(stale)
    await registry.add(live)
    assert [c.id for c in (await registry.list(tenant, 50, None)).items] == ["ws_live"]
    assert await registry.count(tenant, "news", None) == 1
    await registry.touch([live], time.time() + 60)
    assert live.expires > time.time() + 50
    assert [c.id for c in (await registry.list(tenant, 50, None)).items] == ["ws_live"]


async def test_touch_restores_what_the_backend_lost(registry: ConnectionRegistry, tenant: str) -> None:
    live = record(tenant, "ws_live", "alice", channels=("news",))
    await registry.add(live)
    await registry.purge(tenant)  # as if Redis restarted empty
    assert await registry.count(tenant, "news", None) == 0
    await registry.touch([live], time.time() + 60)
    assert [c.id for c in (await registry.list(tenant, 50, None)).items] == ["ws_live"]
    assert await registry.count(tenant, "news", BroadcastFilter(user_ids=["alice"])) == 1


async def test_ping_answers(registry: ConnectionRegistry) -> None:
    assert isinstance(await registry.ping(), str)
