"""Realtime with real servers: two appliance processes sharing one Redis, and a slow consumer.

Clients are the ``websockets`` library over real TCP, so close codes, back-pressure and the
cross-node fan-out are the ones a production client sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from redis.asyncio import Redis
from redis.exceptions import RedisError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from appliance.realtime.redis import ResilientPubSubBackend
from tests.conftest import ROOT, ROOT_KEY
from tests.peers import RedisPeer, find_tool, free_port, redis_pong, running
from tests.process import ApplianceProcess, run_appliance

WAIT = 10.0
BASE_ENV = {
    "APPLIANCE_ROOT_KEY": ROOT_KEY,
    "APPLIANCE_RATE_LIMIT_PER_KEY": "",
    "APPLIANCE_RATE_LIMIT_PER_IP": "",
    "APPLIANCE_WORKER": "false",
}


@pytest.fixture
def two_nodes(tmp_path: Path, redis_peer: RedisPeer) -> Iterator[tuple[ApplianceProcess, ApplianceProcess]]:
    """Nodes A and B: the same data dir (so the same DB and token secret) and the same Redis."""
    url = f"redis://{redis_peer.host}:{redis_peer.port}/6"
    with redis.Redis.from_url(url) as sync_client:
        sync_client.flushdb()
    env = {**BASE_ENV, "APPLIANCE_REDIS_URL": url, "APPLIANCE_REALTIME_HEARTBEAT_S": "1"}
    with run_appliance(tmp_path / "data", env) as node_a, run_appliance(tmp_path / "data", env) as node_b:
        yield node_a, node_b


@asynccontextmanager
async def socket(
    node: ApplianceProcess, headers: dict[str, str] | None = None, query: str = "", **options: Any
) -> AsyncIterator[tuple[ClientConnection, dict[str, Any]]]:
    """A WebSocket to ``node`` and its welcome frame."""
    url = node.url.replace("http://", "ws://") + "/v1/ws" + query
    async with connect(url, additional_headers=headers or {}, open_timeout=WAIT, **options) as ws:
        welcome = await receive(ws)
        assert welcome["event"] == "welcome"
        yield ws, welcome


async def receive(ws: ClientConnection) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
    return frame


async def subscribe(ws: ClientConnection, channel: str) -> None:
    await ws.send(json.dumps({"op": "subscribe", "channel": channel}))
    ack = await receive(ws)
    assert ack["event"] == "subscribed", ack


async def make_tenant(http: httpx.AsyncClient, node: ApplianceProcess, tenant: str) -> dict[str, str]:
    await http.post(f"{node.url}/v1/tenants", json={"id": tenant, "name": tenant}, headers=ROOT)
    key = await http.post(
        f"{node.url}/v1/keys",
        json={"name": "rt", "scopes": ["realtime"]},
        headers={**ROOT, "X-Tenant-ID": tenant},
    )
    assert key.status_code == 201, key.text
    return {"Authorization": f"Bearer {key.json()['secret']}"}


async def test_a_broadcast_on_one_node_reaches_every_node(
    two_nodes: tuple[ApplianceProcess, ApplianceProcess],
) -> None:
    node_a, node_b = two_nodes
    async with httpx.AsyncClient(timeout=WAIT) as http:
        acme = await make_tenant(http, node_a, "acme")
        globex = await make_tenant(http, node_b, "globex")
        # A token minted on A is accepted by B: the signing secret lives in the shared DB.
        minted = await http.post(f"{node_a.url}/v1/realtime/tokens", json={"user_id": "bob"}, headers=acme)
        token = minted.json()["token"]
        async with (
            socket(node_a, acme, "?user_id=alice") as (on_a, welcome_a),
            socket(node_b, query=f"?token={token}") as (on_b, welcome_b),
            socket(node_b, globex, "?user_id=alice") as (other_tenant, _),
        ):
            assert welcome_b["data"]["tenant"] == "acme" and welcome_b["data"]["user_id"] == "bob"
            for ws in (on_a, on_b, other_tenant):
                await subscribe(ws, "news")
            sent = await http.post(
                f"{node_a.url}/v1/channels/news/broadcast", json={"data": {"n": 1}}, headers=acme
            )
            assert sent.status_code == 202 and sent.json()["delivered"] == 2
            for ws in (on_a, on_b):
                frame = await receive(ws)
                assert (frame["channel"], frame["data"], frame["id"]) == ("news", {"n": 1}, sent.json()["id"])
            # Published by a client on B, filtered to alice: reaches alice on A only.
            await on_b.send(json.dumps({"op": "publish", "channel": "news", "data": "from-b"}))
            frames_b = [await receive(on_b), await receive(on_b)]
            assert {f["event"] for f in frames_b} == {"published", "message"}
            assert (await receive(on_a))["data"] == "from-b"
            filtered = await http.post(
                f"{node_b.url}/v1/channels/news/broadcast",
                json={"data": "alice-only", "filter": {"user_ids": ["alice"]}},
                headers=acme,
            )
            assert filtered.json()["delivered"] == 1
            assert (await receive(on_a))["data"] == "alice-only"
            # The other tenant, subscribed to the same name on B, got none of it.
            await http.post(f"{node_a.url}/v1/channels/news/broadcast", json={"data": "mark"}, headers=globex)
            assert (await receive(other_tenant))["data"] == "mark"
            # Either node lists both nodes' connections of the tenant, and only those.
            for node in (node_a, node_b):
                listing = (await http.get(f"{node.url}/v1/connections", headers=acme)).json()["items"]
                assert {c["id"] for c in listing} == {
                    welcome_a["data"]["connection_id"],
                    welcome_b["data"]["connection_id"],
                }
                assert len({c["node"] for c in listing}) == 2
            # Deleting a tenant on A closes its connections on B too.
            assert (await http.delete(f"{node_a.url}/v1/tenants/globex", headers=ROOT)).status_code == 204
            with pytest.raises(ConnectionClosed) as closed:
                await receive(other_tenant)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4404
        # Disconnects are cleaned up everywhere (asynchronously: poll with a deadline).
        deadline = time.monotonic() + WAIT
        for node in (node_a, node_b):
            while (await http.get(f"{node.url}/v1/connections", headers=acme)).json()["items"]:
                assert time.monotonic() < deadline, "connections outlived their sockets"
                await asyncio.sleep(0.02)


async def test_a_slow_consumer_is_dropped_and_never_stalls_a_broadcast(tmp_path: Path) -> None:
    env = {**BASE_ENV, "APPLIANCE_REALTIME_SEND_QUEUE": "4"}
    payload = secrets.token_urlsafe(192 * 1024)  # 256 KiB that compression cannot shrink
    count = 120  # 30 MiB: more than the kernel's socket buffers and the send queue can hold
    with run_appliance(tmp_path / "data", env) as node:
        async with (
            httpx.AsyncClient(timeout=WAIT) as http,
            socket(node, ROOT, "?user_id=fast", max_size=2**20) as (fast, _),
            socket(node, ROOT, "?user_id=slow", max_size=2**20, max_queue=1, compression=None) as (slow, _),
        ):
            await subscribe(fast, "firehose")
            await subscribe(slow, "firehose")

            async def read_all() -> list[int]:
                return [json.loads(await fast.recv())["data"]["n"] for _ in range(count)]

            reader = asyncio.create_task(read_all())
            for index in range(count):
                sent = await http.post(
                    f"{node.url}/v1/channels/firehose/broadcast",
                    json={"data": {"n": index, "pad": payload}},
                    headers=ROOT,
                )
                assert sent.status_code == 202
            assert await asyncio.wait_for(reader, WAIT) == list(range(count))
            # The slow client now reads what was buffered, then finds itself dropped with 4008.
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(slow.recv(), WAIT)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4008
            listing = (await http.get(f"{node.url}/v1/connections", headers=ROOT)).json()["items"]
            assert [c["user_id"] for c in listing] == ["fast"]


async def test_a_client_that_falls_behind_then_catches_up_gets_every_frame_in_order(tmp_path: Path) -> None:
    """More than the sockets can buffer, fewer frames than the send queue holds: none lost, none reordered."""
    env = {**BASE_ENV, "APPLIANCE_REALTIME_SEND_QUEUE": "128"}
    payload = secrets.token_urlsafe(192 * 1024)
    count = 60  # 15 MiB: the kernel's buffers fill, the socket pauses, the rest waits in the queue
    with run_appliance(tmp_path / "data", env) as node:
        async with (
            httpx.AsyncClient(timeout=WAIT) as http,
            socket(node, ROOT, "?user_id=late", max_size=2**20, max_queue=1) as (late, _),
        ):
            await subscribe(late, "backlog")
            for index in range(count):
                sent = await http.post(
                    f"{node.url}/v1/channels/backlog/broadcast",
                    json={"data": {"n": index, "pad": payload}},
                    headers=ROOT,
                )
                assert sent.status_code == 202
            assert [(await receive(late))["data"]["n"] for _ in range(count)] == list(range(count))
            await late.send(json.dumps({"op": "ping", "ref": "still-there"}))
            assert (await receive(late))["data"] == {"ref": "still-there"}


async def test_refused_handshakes_over_real_http(
    two_nodes: tuple[ApplianceProcess, ApplianceProcess],
) -> None:
    node_a, _ = two_nodes
    for query, headers in [("?token=rt1.forged.sig", None), ("", {"Authorization": "Bearer nope"})]:
        with pytest.raises(Exception) as refused:
            async with socket(node_a, headers, query):
                pass
        assert "403" in str(refused.value)  # uvicorn answers a refused handshake with HTTP 403


async def sse_frames(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            yield json.loads(line[5:].strip())


async def next_frame(frames: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    return await asyncio.wait_for(anext(frames), WAIT)


async def test_sse_fallback_streams_the_same_frames(tmp_path: Path) -> None:
    with run_appliance(tmp_path / "data", {**BASE_ENV, "APPLIANCE_REALTIME_HEARTBEAT_S": "0.2"}) as node:
        async with httpx.AsyncClient(base_url=node.url, timeout=WAIT) as http:
            acme = await make_tenant(http, node, "acme")
            globex = await make_tenant(http, node, "globex")
            token = (await http.post("/v1/realtime/tokens", json={"user_id": "alice"}, headers=acme)).json()[
                "token"
            ]
            url = f"/v1/sse?channel=news&channel=chat&token={token}"
            async with (
                http.stream("GET", url) as response,
                http.stream("GET", "/v1/sse?channel=news&user_id=eve", headers=globex) as other,
            ):
                assert response.status_code == 200 and other.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                frames, other_frames = sse_frames(response), sse_frames(other)
                welcome = await next_frame(frames)
                assert welcome["event"] == "welcome" and welcome["data"]["user_id"] == "alice"
                assert (await next_frame(other_frames))["data"]["tenant"] == "globex"
                listing = (await http.get("/v1/connections", headers=acme)).json()["items"]
                assert [(c["transport"], c["channels"]) for c in listing] == [("sse", ["news", "chat"])]
                sent = await http.post(
                    "/v1/channels/chat/broadcast",
                    json={"data": "hi", "filter": {"user_ids": ["alice"]}},
                    headers=acme,
                )
                assert sent.json()["delivered"] == 1
                frame = await next_frame(frames)
                while frame["event"] == "ping":  # heartbeats keep proxies from closing the stream
                    frame = await next_frame(frames)
                assert (frame["channel"], frame["data"], frame["id"]) == ("chat", "hi", sent.json()["id"])
                await http.post("/v1/channels/news/broadcast", json={"data": "acme-news"}, headers=acme)
                await http.post("/v1/channels/news/broadcast", json={"data": "marker"}, headers=globex)
                seen = []
                while (frame := await next_frame(other_frames))["data"] != "marker":
                    seen.append(frame["data"])
                assert "acme-news" not in seen
        async with httpx.AsyncClient(base_url=node.url, timeout=WAIT) as http:
            # Closing the stream removes the connection; bad requests are problems, not streams.
            deadline = time.monotonic() + WAIT
            while (await http.get("/v1/connections", headers=acme)).json()["items"]:
                assert time.monotonic() < deadline, "the stream's connection outlived it"
                await asyncio.sleep(0.02)
            assert (await http.get("/v1/sse?channel=bad%20name", headers=acme)).status_code == 422
            assert (await http.get("/v1/sse?channel=news&token=rt1.forged.x")).status_code == 401


async def test_fan_out_survives_a_redis_restart(tmp_path: Path) -> None:
    """The stock Litestar backend stops delivering after a connection error; ours reconnects."""
    port = free_port()
    argv = [find_tool("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    client = Redis.from_url(f"redis://127.0.0.1:{port}/0")
    backend = ResilientPubSubBackend(redis=client)
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def pump() -> None:
        async for _, data in backend.stream_events():
            received.put_nowait(data)

    async def delivered_after_publishing() -> bytes:
        # Pub/sub keeps nothing for a subscriber that is reconnecting: publish until one arrives.
        while True:
            with contextlib.suppress(RedisError):  # the pool's old connection died with the server
                await backend.publish(b"again", ["news"])
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(received.get(), 0.2)

    with running("redis-restart", argv, tmp_path, lambda: redis_pong(port)):
        await backend.subscribe(["news"])
        task = asyncio.create_task(pump())
        assert await asyncio.wait_for(delivered_after_publishing(), WAIT) == b"again"
    try:
        with running("redis-restart", argv, tmp_path, lambda: redis_pong(port)):
            assert await asyncio.wait_for(delivered_after_publishing(), WAIT) == b"again"
    finally:
        task.cancel()
        await backend.on_shutdown()
        await client.aclose()
