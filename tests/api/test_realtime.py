"""API.md "Realtime" on one node: tokens, the WebSocket frames, filtered broadcast, connections,
handshake refusals, idle timeout and the tenant-isolation table. Every test runs twice: with the
embedded backends (memory) and with a real Redis (pub/sub fan-out + Redis registry).

Cross-node fan-out and slow consumers need real servers: see tests/e2e/test_realtime_nodes.py.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import uvicorn
from litestar import Litestar
from litestar.exceptions import WebSocketDisconnect
from litestar.testing import AsyncTestClient, WebSocketTestSession
from websockets.asyncio.client import connect as ws_connect
from websockets.frames import Frame as WsFrame
from websockets.frames import Opcode
from websockets.streams import StreamReader

from appliance.app import create_app
from appliance.config import Settings
from appliance.realtime import Broadcaster, BroadcastFilter
from appliance.realtime.service import Hub
from appliance.realtime.tokens import TokenClaims, TokenSigner
from appliance.realtime.transport import DirectWebSocketsProtocol, text_frame
from tests.api.test_core import assert_problem
from tests.conftest import ROOT, MakeTenant, make_settings
from tests.peers import free_port

Client = AsyncTestClient[Litestar]
Frame = dict[str, Any]
WAIT = 5.0  # seconds a frame may take to arrive before the test fails


@pytest.fixture(params=["memory", "redis"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "memory":
        return make_settings(tmp_path / "data")
    peer = request.getfixturevalue("redis_peer")
    url = f"redis://{peer.host}:{peer.port}/5"
    with redis.Redis.from_url(url) as sync_client:
        sync_client.flushdb()
    return make_settings(tmp_path / "data", redis_url=url)


@contextmanager
def connect(
    client: Client, headers: dict[str, str] | None = None, query: str = ""
) -> Iterator[WebSocketTestSession]:
    """An open WebSocket (its welcome frame already read; see ``session.welcome``)."""
    session = client.blocking_portal.call(
        functools.partial(client.websocket_connect, "/v1/ws" + query, headers=headers)
    )
    with session:
        session.welcome = receive(session)  # type: ignore[attr-defined]
        assert session.welcome["event"] == "welcome"  # type: ignore[attr-defined]
        yield session


def receive(ws: WebSocketTestSession) -> Frame:
    frame: Frame = ws.receive_json(timeout=WAIT)
    return frame


def request(ws: WebSocketTestSession, frame: Frame) -> Frame:
    """Send a client frame and return the server's answer (ack, pong or error)."""
    ws.send_json(frame)
    return receive(ws)


def subscribe(ws: WebSocketTestSession, *channels: str) -> None:
    for channel in channels:
        ack = request(ws, {"op": "subscribe", "channel": channel})
        assert ack["event"] == "subscribed" and ack["channel"] == channel, ack


def messages_until_marker(ws: WebSocketTestSession, marker: str) -> list[Frame]:
    """Frames received before the broadcast whose data is ``marker`` (which is consumed)."""
    seen: list[Frame] = []
    while True:
        frame = receive(ws)
        if frame["data"] == marker:
            return seen
        seen.append(frame)


async def broadcast(
    client: Client, headers: dict[str, str], channel: str, body: dict[str, Any]
) -> dict[str, Any]:
    response = await client.post(f"/v1/channels/{channel}/broadcast", json=body, headers=headers)
    assert response.status_code == 202, response.text
    result: dict[str, Any] = response.json()
    return result


async def listed_users_become(client: Client, headers: dict[str, str], users: list[str | None]) -> None:
    """Poll the listing until it shows exactly ``users``: a closed socket is cleaned up asynchronously."""
    deadline = time.monotonic() + WAIT
    while True:
        listing = (await client.get("/v1/connections", headers=headers)).json()["items"]
        if sorted(c["user_id"] or "" for c in listing) == sorted(u or "" for u in users):
            return
        assert time.monotonic() < deadline, listing
        await asyncio.sleep(0.01)


def refused(client: Client, query: str = "", headers: dict[str, str] | None = None) -> int:
    """The close code of a refused handshake (fails if the handshake is accepted)."""
    with pytest.raises(WebSocketDisconnect) as refusal, connect(client, headers, query):
        pytest.fail("the handshake should have been refused")
    code: int = refusal.value.code
    return code


# ------------------------------------------------------------------ HTTP errors ---


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/v1/realtime/tokens", {}, 422),
        ("POST", "/v1/realtime/tokens", {"user_id": ""}, 422),
        ("POST", "/v1/realtime/tokens", {"user_id": "u", "ttl_s": 0}, 422),
        ("POST", "/v1/realtime/tokens", {"user_id": "u", "ttl_s": 86401}, 422),
        ("POST", "/v1/realtime/tokens", {"user_id": "u", "tags": ["x"] * 33}, 422),
        ("POST", "/v1/realtime/tokens", {"user_id": "u", "tenant": "other"}, 422),
        ("POST", "/v1/channels/news/broadcast", {}, 422),
        ("POST", "/v1/channels/news/broadcast", {"data": 1, "filter": {"user_ids": []}}, 422),
        ("POST", "/v1/channels/news/broadcast", {"data": 1, "filter": {"users": ["a"]}}, 422),
        ("POST", "/v1/channels/news/broadcast", {"data": 1, "event": "bad event"}, 422),
        ("POST", "/v1/channels/news/broadcast", {"data": 1, "extra": True}, 422),
        ("POST", "/v1/channels/bad%20name/broadcast", {"data": 1}, 422),
        ("POST", "/v1/channels/-lead/broadcast", {"data": 1}, 422),
        ("POST", "/v1/channels/" + "c" * 129 + "/broadcast", {"data": 1}, 422),
        ("GET", "/v1/connections?limit=0", None, 422),
        ("GET", "/v1/connections?cursor=%%%", None, 400),
        ("GET", "/v1/sse", None, 422),
        ("GET", "/v1/sse?channel=bad%20name", None, 422),
        ("GET", "/v1/sse?channel=ok&channel=-bad", None, 422),
        ("GET", "/v1/sse?channel=ok&tags=" + "x" * 65, None, 422),
    ],
)
async def test_bad_input_is_a_problem(client: Client, method: str, path: str, body: Any, status: int) -> None:
    assert_problem(await client.request(method, path, json=body, headers=ROOT), status)


async def test_keys_need_the_realtime_scope(client: Client, make_tenant: MakeTenant) -> None:
    storage_only = await make_tenant("acme", ("storage",))
    for method, path, body in [
        ("POST", "/v1/realtime/tokens", {"user_id": "u"}),
        ("POST", "/v1/channels/news/broadcast", {"data": 1}),
        ("GET", "/v1/connections", None),
        ("GET", "/v1/sse?channel=news", None),
    ]:
        assert_problem(await client.request(method, path, json=body, headers={}), 401)
        assert_problem(await client.request(method, path, json=body, headers=storage_only), 403)
    assert refused(client, headers=storage_only) == 4403


# ------------------------------------------------------------------- handshake ---


async def test_handshakes_refused_with_4401(client: Client, make_tenant: MakeTenant, app: Litestar) -> None:
    admin = await make_tenant("acme", ("admin",))
    key = (await client.post("/v1/keys", json={"name": "rt", "scopes": ["realtime"]}, headers=admin)).json()
    rt_key = {"Authorization": f"Bearer {key['secret']}"}
    token = (await client.post("/v1/realtime/tokens", json={"user_id": "u1"}, headers=rt_key)).json()["token"]
    version, claims, signature = token.split(".")
    forger = TokenSigner(app.state.ctx.db)
    forger._secret = b"not-the-appliance-secret"
    hub = app.state.ctx.service("realtime", Hub)
    expired = hub.tokens.mint(TokenClaims("acme", key["id"], "u1", [], expires_at=time.time() - 1))
    other_claims = TokenSigner(app.state.ctx.db)
    other_claims._secret = hub.tokens._secret
    cases = {
        "no key": ("", None),
        "wrong key": ("", {"Authorization": "Bearer apl_nope_nope"}),
        "garbage token": ("?token=nope", None),
        "forged signature": (
            f"?token={forger.mint(TokenClaims('acme', key['id'], 'u1', [], time.time() + 60))}",
            None,
        ),
        "tampered claims": (f"?token={version}.{claims}x.{signature}", None),
        "expired": (f"?token={expired}", None),
    }
    for name, (query, headers) in cases.items():
        assert refused(client, query, headers) == 4401, name
    with connect(client, query=f"?token={token}") as ws:
        assert ws.welcome["data"]["user_id"] == "u1"  # type: ignore[attr-defined]
    # Tokens open the WebSocket and the SSE stream, nothing else.
    assert_problem(await client.get(f"/v1/connections?token={token}"), 401)
    assert_problem(await client.get(f"/v1/whoami?token={token}"), 401)
    assert_problem(await client.get(f"/v1/sse?channel=x&token={expired}"), 401)
    assert (await client.delete(f"/v1/keys/{key['id']}", headers=admin)).status_code == 204
    assert refused(client, f"?token={token}") == 4401, "a revoked key's tokens die with it"


@pytest.mark.parametrize(
    "query", ["?tags=" + ",".join(["t"] * 33), "?user_id=" + "u" * 257, "?tags=" + "x" * 65]
)
async def test_bad_identity_query_is_refused_with_4422(client: Client, query: str) -> None:
    assert refused(client, query, ROOT) == 4422


async def test_token_carries_identity_and_expiry(client: Client, make_tenant: MakeTenant) -> None:
    key = await make_tenant("acme", ("realtime",))
    before = time.time()
    issued = await client.post(
        "/v1/realtime/tokens", json={"user_id": "alice", "tags": ["admin"], "ttl_s": 60}, headers=key
    )
    assert issued.status_code == 201
    body = issued.json()
    assert before + 59 <= body["expires_at"] <= time.time() + 61
    # The token's identity wins over query parameters: a browser cannot claim another user.
    with connect(client, query=f"?token={body['token']}&user_id=mallory&tags=root") as ws:
        welcome = ws.welcome["data"]  # type: ignore[attr-defined]
        assert welcome == {**welcome, "tenant": "acme", "user_id": "alice", "tags": ["admin"]}


# ---------------------------------------------------------------------- frames ---


async def test_every_client_frame(client: Client) -> None:
    with connect(client, ROOT, "?user_id=u1&tags=a,b") as ws:
        welcome = ws.welcome  # type: ignore[attr-defined]
        assert welcome["channel"] is None and welcome["data"]["tags"] == ["a", "b"]
        ack = request(ws, {"op": "subscribe", "channel": "news", "ref": 7})
        assert ack["event"] == "subscribed" and ack["data"] == {"ref": 7}
        assert request(ws, {"op": "subscribe", "channel": "news"})["event"] == "subscribed"  # idempotent
        pong = request(ws, {"op": "ping", "ref": "p1"})
        assert pong["event"] == "pong" and pong["data"] == {"ref": "p1"} and pong["channel"] is None
        ws.send_json({"op": "publish", "channel": "news", "event": "chat", "data": {"text": "hi"}, "ref": 8})
        first, second = receive(ws), receive(ws)
        published, message = (first, second) if first["event"] == "published" else (second, first)
        assert published["data"]["ref"] == 8 and published["data"]["delivered"] == 1
        assert message == {
            "channel": "news",
            "event": "chat",
            "data": {"text": "hi"},
            "id": published["data"]["id"],
        }
        ws.send_json({"op": "pong"})  # answers a server ping; no reply
        assert request(ws, {"op": "unsubscribe", "channel": "news"})["event"] == "unsubscribed"
        assert (await broadcast(client, ROOT, "news", {"data": "lost"}))["delivered"] == 0
        assert request(ws, {"op": "ping"})["event"] == "pong"  # and "lost" never arrived before it


@pytest.mark.parametrize(
    ("frame", "fragment"),
    [
        ("not json", "invalid frame"),
        ('{"op": "dance"}', "invalid frame"),
        ('{"op": "subscribe"}', "needs a 'channel'"),
        ('{"op": "subscribe", "channel": "no spaces"}', "is invalid"),
        ('{"op": "subscribe", "channel": "' + "c" * 129 + '"}', "is invalid"),
        ('{"op": "publish", "channel": "news", "event": "bad event", "data": 1}', "event"),
        ('{"op": "ping", "sneaky": true}', "invalid frame"),
        ('{"op": "publish", "channel": "news", "data": "' + "x" * 70_000 + '"}', "larger than"),
    ],
)
async def test_bad_frames_get_an_error_frame_and_the_connection_stays(
    client: Client, frame: str, fragment: str
) -> None:
    with connect(client, ROOT) as ws:
        ws.send_text(frame)
        error = receive(ws)
        assert error["event"] == "error" and fragment in error["data"]["detail"], error
        assert request(ws, {"op": "ping"})["event"] == "pong"


async def test_subscriptions_are_bounded(client: Client) -> None:
    with connect(client, ROOT) as ws:
        subscribe(ws, *(f"c{i}" for i in range(100)))
        error = request(ws, {"op": "subscribe", "channel": "one-too-many"})
        assert error["event"] == "error" and "at most 100" in error["data"]["detail"]


async def test_filters_pick_recipients(client: Client) -> None:
    people = {"alice": "?user_id=alice&tags=admin,eu", "bob": "?user_id=bob&tags=eu", "anon": ""}
    cases: list[tuple[dict[str, Any] | None, set[str]]] = [
        (None, {"alice", "bob", "anon"}),
        ({"user_ids": ["alice"]}, {"alice"}),
        ({"user_ids": ["alice", "bob", "zed"]}, {"alice", "bob"}),
        ({"tags": ["eu"]}, {"alice", "bob"}),
        ({"tags": ["admin", "nope"]}, {"alice"}),
        ({"user_ids": ["bob"], "tags": ["admin"]}, set()),
    ]
    with (
        connect(client, ROOT, people["alice"]) as alice,
        connect(client, ROOT, people["bob"]) as bob,
        connect(client, ROOT, people["anon"]) as anon,
    ):
        sockets = {"alice": alice, "bob": bob, "anon": anon}
        for ws in sockets.values():
            subscribe(ws, "news")
        for index, (filter, expected) in enumerate(cases):
            sent = await broadcast(client, ROOT, "news", {"data": index, "filter": filter})
            assert sent["delivered"] == len(expected), (filter, sent)
            await broadcast(client, ROOT, "news", {"data": f"marker-{index}"})
            for name, ws in sockets.items():
                got = [f["data"] for f in messages_until_marker(ws, f"marker-{index}")]
                assert got == ([index] if name in expected else []), (filter, name, got)


async def test_message_ids_are_unique_and_match_the_broadcast(client: Client) -> None:
    with connect(client, ROOT) as ws:
        subscribe(ws, "news")
        sent = [(await broadcast(client, ROOT, "news", {"data": i}))["id"] for i in range(20)]
        received = [receive(ws) for _ in range(20)]
    assert [f["id"] for f in received] == sent and len(set(sent)) == 20
    assert [f["data"] for f in received] == list(range(20))


async def test_connections_are_listed_paginated_and_removed(client: Client) -> None:
    with connect(client, ROOT, "?user_id=a") as a, connect(client, ROOT, "?user_id=b&tags=x") as b:
        with connect(client, ROOT, "?user_id=c"):
            subscribe(a, "news", "chat")
            subscribe(b, "news")
            seen: list[dict[str, Any]] = []
            cursor: str | None = None
            while True:
                params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
                page = (await client.get("/v1/connections", params=params, headers=ROOT)).json()
                assert len(page["items"]) <= 2
                seen += page["items"]
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert [c["id"] for c in seen] == sorted(c["id"] for c in seen)
            assert sorted((c["user_id"], c["channels"], c["tags"]) for c in seen) == [
                ("a", ["news", "chat"], []),
                ("b", ["news"], ["x"]),
                ("c", [], []),
            ]
            assert a.welcome["data"]["connection_id"] in {c["id"] for c in seen}  # type: ignore[attr-defined]
            assert all(c["since"] <= time.time() and c["node"] for c in seen)
        await listed_users_become(client, ROOT, ["a", "b"])
    await listed_users_become(client, ROOT, [])


async def test_other_capabilities_broadcast_through_the_service(client: Client, app: Litestar) -> None:
    hub = app.state.ctx.service("realtime", Broadcaster)
    with connect(client, ROOT, "?user_id=alice") as ws:
        subscribe(ws, "orders")
        send = functools.partial(
            hub.broadcast,
            "default",
            "orders",
            {"n": 1},
            event="order.paid",
            filter=BroadcastFilter(user_ids=["alice"]),
        )
        assert client.blocking_portal.call(send) == 1
        frame = receive(ws)
        assert (frame["channel"], frame["event"], frame["data"]) == ("orders", "order.paid", {"n": 1})


async def test_readiness_names_the_realtime_backend(client: Client, settings: Settings) -> None:
    ready = (await client.get("/readyz")).json()
    realtime = next(b for b in ready["backends"] if b["name"] == "realtime")
    assert realtime["ok"] and realtime["backend"] == ("redis" if settings.redis_url else "memory")


# --------------------------------------------------------- heartbeat and idling ---


@asynccontextmanager
async def app_client(settings: Settings) -> AsyncIterator[Client]:
    async with AsyncTestClient(create_app(settings), base_url="http://appliance.test") as test_client:
        yield test_client


async def test_quiet_clients_are_pinged_then_closed_when_idle(settings: Settings, tmp_path: Path) -> None:
    fast = make_settings(
        tmp_path / "fast",
        redis_url=settings.redis_url,
        realtime_heartbeat_s=0.05,
        realtime_idle_timeout_s=0.5,
    )
    async with app_client(fast) as client:
        with connect(client, ROOT) as ws:
            assert receive(ws)["event"] == "ping"
            with pytest.raises(WebSocketDisconnect) as closed:
                while True:
                    frame = receive(ws)
                    assert frame["event"] == "ping", frame
            assert closed.value.code == 4408
        await listed_users_become(client, ROOT, [])


# ------------------------------------------------------------ tenant isolation ---


async def test_tenant_isolation(client: Client, make_tenant: MakeTenant) -> None:
    acme = await make_tenant("acme", ("realtime",))
    globex = await make_tenant("globex", ("realtime",))
    with (
        connect(client, acme, "?user_id=alice") as acme_ws,
        connect(client, globex, "?user_id=alice") as globex_ws,
    ):
        subscribe(acme_ws, "news", "globex:news")
        subscribe(globex_ws, "news")
        # Same channel name, other tenant: nothing crosses over.
        assert (await broadcast(client, acme, "news", {"data": "acme-only"}))["delivered"] == 1
        assert (await broadcast(client, acme, "globex:news", {"data": "still-acme"}))["delivered"] == 1
        acme_ws.send_json({"op": "publish", "channel": "news", "data": "acme-frame"})
        assert (await broadcast(client, globex, "news", {"data": "marker"}))["delivered"] == 1
        assert messages_until_marker(globex_ws, "marker") == []
        acme_frames = [receive(acme_ws) for _ in range(4)]  # three messages and the publish ack
        acme_seen = sorted(f["data"] for f in acme_frames if f["event"] == "message")
        assert acme_seen == ["acme-frame", "acme-only", "still-acme"]
        # Listings: each tenant sees only its own connections.
        for headers, own in ((acme, acme_ws), (globex, globex_ws)):
            listing = (await client.get("/v1/connections", headers=headers)).json()["items"]
            assert [c["id"] for c in listing] == [own.welcome["data"]["connection_id"]]  # type: ignore[attr-defined]
        # Another tenant's key cannot act in acme, on any endpoint.
        as_acme = {**globex, "X-Tenant-ID": "acme"}
        for method, path, body in [
            ("POST", "/v1/realtime/tokens", {"user_id": "x"}),
            ("POST", "/v1/channels/news/broadcast", {"data": "intruder"}),
            ("GET", "/v1/connections", None),
            ("GET", "/v1/sse?channel=news", None),
        ]:
            response = await client.request(method, path, json=body, headers=as_acme)
            assert response.status_code == 403 and "acme-only" not in response.text
        assert refused(client, headers=as_acme) >= 4000
        # A globex token is bound to globex, whatever header comes with it.
        token = (await client.post("/v1/realtime/tokens", json={"user_id": "g"}, headers=globex)).json()[
            "token"
        ]
        assert refused(client, f"?token={token}", {"X-Tenant-ID": "acme"}) >= 4000
        with connect(client, query=f"?token={token}") as via_token:
            assert via_token.welcome["data"]["tenant"] == "globex"  # type: ignore[attr-defined]
        assert request(acme_ws, {"op": "ping"})["event"] == "pong"  # "intruder" never reached acme


async def test_deleting_a_tenant_closes_its_connections(client: Client, make_tenant: MakeTenant) -> None:
    doomed = await make_tenant("doomed", ("realtime",))
    with connect(client, doomed) as ws:
        subscribe(ws, "news")
        assert (await client.delete("/v1/tenants/doomed", headers=ROOT)).status_code == 204
        with pytest.raises(WebSocketDisconnect) as closed:
            receive(ws)
        assert closed.value.code == 4404
    listing = await client.get("/v1/connections", headers={**ROOT, "X-Tenant-ID": "doomed"})
    assert listing.status_code == 404


async def test_redis_down_is_a_503_naming_it(tmp_path: Path) -> None:
    down = make_settings(tmp_path / "down", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    async with app_client(down) as client:
        sent = await client.post("/v1/channels/news/broadcast", json={"data": 1}, headers=ROOT)
        assert "redis" in assert_problem(sent, 503)["detail"]
        ready = assert_problem(await client.get("/readyz"), 503)
        realtime = next(b for b in ready["backends"] if b["name"] == "realtime")
        assert not realtime["ok"] and "redis" in realtime["detail"]
        with pytest.raises(WebSocketDisconnect) as closed, connect(client, ROOT):
            pass
        assert closed.value.code == 1011


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70000])
def test_a_pre_encoded_frame_is_a_valid_websocket_text_frame(size: int) -> None:
    """Every length encoding of RFC 6455 (7-bit, 16-bit, 64-bit), as a WebSocket client reads it."""
    payload = ("x" * size).encode()
    reader = StreamReader()
    reader.feed_data(text_frame(payload))
    parser = WsFrame.parse(reader.read_exact, mask=False)
    with pytest.raises(StopIteration) as parsed:
        next(parser)
    frame = parsed.value.value
    assert (frame.opcode, frame.fin, bytes(frame.data)) == (Opcode.TEXT, True, payload)
    assert not reader.buffer  # nothing after the frame


async def test_broadcasts_sent_together_reach_each_client_in_order_over_a_real_server(
    settings: Settings,
) -> None:
    """Under uvicorn with the direct-write protocol (as ``appliance run`` serves), broadcasts queued
    together go to each connection in one write: each client still gets exactly its own frames, in
    order, each its own WebSocket message."""
    app = create_app(settings)
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        ws=DirectWebSocketsProtocol,
        ws_per_message_deflate=False,
        log_config=None,
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        deadline = time.monotonic() + WAIT
        while not server.started:
            assert time.monotonic() < deadline and not serving.done(), "uvicorn did not start"
            await asyncio.sleep(0.01)
        hub = app.state.ctx.service("realtime", Hub)
        url = f"ws://127.0.0.1:{port}/v1/ws"
        people = {"alice": "?user_id=alice&tags=eu", "bob": "?user_id=bob", "anon": ""}
        filters = [None, BroadcastFilter(user_ids=["alice"]), BroadcastFilter(tags=["eu"]), None]
        plan = [(index, filters[index % len(filters)]) for index in range(40)]
        async with (
            ws_connect(url + people["alice"], additional_headers=ROOT) as alice,
            ws_connect(url + people["bob"], additional_headers=ROOT) as bob,
            ws_connect(url + people["anon"], additional_headers=ROOT) as anon,
        ):
            sockets = {"alice": alice, "bob": bob, "anon": anon}
            for ws in sockets.values():
                assert json.loads(await ws.recv())["event"] == "welcome"
                await ws.send(json.dumps({"op": "subscribe", "channel": "news"}))
                assert json.loads(await ws.recv())["event"] == "subscribed"
            for index, filter in plan:  # no await yields to the hub in between (memory backend)
                await hub.broadcast("default", "news", index, filter=filter)
            for name, ws in sockets.items():
                user_id, tags = (name, ["eu"] if name == "alice" else []) if name != "anon" else (None, [])
                expected = [i for i, f in plan if f is None or f.matches(user_id, tags)]
                got = [json.loads(await asyncio.wait_for(ws.recv(), WAIT))["data"] for _ in expected]
                assert got == expected, name
    finally:
        server.should_exit = True
        await serving
