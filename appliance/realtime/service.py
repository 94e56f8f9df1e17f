"""The hub: live WebSocket connections of this node, their channels, and fan-out through Litestar channels.

Every logical channel of a tenant maps to one physical channel ``appliance:rt:t:<tenant>:<channel>``
of the channels backend, so no name a client picks can reach another tenant. The node subscribes to
a physical channel once, while at least one of its connections listens; each published message is
encoded once (JSON and WebSocket frame) and handed to every matching local connection without
waiting (see :class:`LiveConnection`): written straight to its socket under ``appliance run``, or
queued while the client reads too slowly. A connection whose bounded queue is full is closed (code
4008) instead of slowing anyone else down.

A published payload is ``<filter JSON or null>\\n<frame JSON>``: nodes read the filter, and pass the
frame bytes through untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket as _socket
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal, cast

import anyio
import msgspec
from litestar.channels import ChannelsPlugin
from litestar.channels.backends.base import ChannelsBackend
from litestar.channels.backends.memory import MemoryChannelsBackend
from litestar.channels.subscriber import Subscriber
from litestar.connection import WebSocket
from litestar.exceptions import WebSocketDisconnect
from litestar.types import WebSocketReceiveMessage, WebSocketSendEvent
from redis.exceptions import RedisError

from appliance.core.context import BackendStatus, Context
from appliance.core.errors import ServiceUnavailable, Unprocessable
from appliance.core.ids import new_id
from appliance.core.metrics import MetricFamily
from appliance.realtime import (
    BroadcastFilter,
    ConnectionRecord,
    ConnectionRegistry,
    valid_channel,
)
from appliance.realtime.tokens import TokenSigner
from appliance.realtime.transport import CLOSED, DIRECT_EXTENSION, PAUSED, WRITTEN, FrameSink, text_frame

__all__ = ["CloseCode", "Frame", "Hub", "LiveConnection", "Outgoing", "build_hub", "physical_channel"]

log = logging.getLogger("appliance.realtime")

PHYSICAL_PREFIX = "appliance:rt:t:"
CONTROL_CHANNEL = "appliance:rt:control"  # never a tenant channel: those all start with PHYSICAL_PREFIX
MAX_FRAME_BYTES = 64 * 1024
MAX_CHANNELS_PER_CONNECTION = 100
BATCH_FRAMES = 256  # broadcasts already waiting that a connection gets in one write
BATCH_BYTES = 1024 * 1024
EVENT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"


class CloseCode:
    """WebSocket close codes the appliance uses (4000-4999 are the application's own)."""

    GOING_AWAY = 1001  # the node is shutting down: reconnect (to any node)
    INTERNAL = 1011  # the connection registry (Redis) is down
    SLOW_CONSUMER = 4008  # the send queue filled up: the client did not read fast enough
    UNAUTHORIZED = 4401  # handshake refused: missing, invalid, forged or expired key or token
    FORBIDDEN = 4403  # handshake refused: the key lacks the realtime scope
    TENANT_GONE = 4404  # the tenant was deleted
    IDLE = 4408  # nothing received for the idle timeout
    INVALID = 4422  # handshake refused: bad user_id or tags query parameters


def physical_channel(tenant: str, channel: str) -> str:
    """The backend channel for a tenant's logical channel; the tenant is always part of it."""
    return f"{PHYSICAL_PREFIX}{tenant}:{channel}"


class Frame(msgspec.Struct):
    """A server frame: ``channel`` is null for frames about the connection itself."""

    channel: str | None
    event: str
    data: Any
    id: str


class ClientFrame(msgspec.Struct, forbid_unknown_fields=True):
    op: Literal["subscribe", "unsubscribe", "publish", "ping", "pong"]
    channel: str | None = None
    data: msgspec.Raw = msgspec.Raw(b"null")
    event: str = "message"
    ref: str | int | None = None


class _Command(msgspec.Struct):
    """A message on the control channel, for every node."""

    kick_tenant: str


class FrameError(Exception):
    """A client frame the hub refuses; answered with an ``error`` frame, the connection stays open."""


_encode = msgspec.json.Encoder().encode
_decode_frame = msgspec.json.Decoder(ClientFrame).decode
_decode_filter = msgspec.json.Decoder(BroadcastFilter | None).decode
_decode_command = msgspec.json.Decoder(_Command).decode


class Outgoing:
    """One server frame, encoded once however many connections it goes to.

    ``payload`` is the frame's JSON, ``wire`` the complete WebSocket frame for direct writes, and
    ``text`` the string for ASGI sends and SSE (made on first use).
    """

    __slots__ = ("_text", "payload", "wire")

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.wire = text_frame(payload)
        self._text: str | None = None

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = self.payload.decode()
        return self._text


def _frame(channel: str | None, event: str, data: Any) -> Outgoing:
    return Outgoing(_encode(Frame(channel=channel, event=event, data=data, id=new_id("msg"))))


class LiveConnection:
    """One connection on this node (a WebSocket, or an SSE stream when ``socket`` is None).

    Frames go out through :meth:`offer`, which never waits. On a WebSocket served by
    :class:`~appliance.realtime.transport.DirectWebSocketsProtocol` (a *sink*) a frame is written to
    the transport at once, as the same pre-encoded bytes for every recipient; only while the
    transport is paused (the peer reads too slowly) do frames wait in a bounded queue, flushed when
    it resumes. Elsewhere (other ASGI servers, SSE) every frame waits in the queue for one sender.
    Either way a frame that finds the queue full closes the connection (slow consumer), so one slow
    client never holds up a broadcast.

    Kept small (slots, the queue made on first use, no task of its own on a sink) because a node
    holds tens of thousands of these.
    """

    __slots__ = (
        "_limit",
        "_pending",
        "_reader",
        "_ready",
        "_sink",
        "closing",
        "last_seen",
        "record",
        "socket",
    )

    def __init__(
        self, socket: WebSocket[Any, Any, Any] | None, record: ConnectionRecord, queue_size: int
    ) -> None:
        self.socket = socket
        self.record = record
        self.last_seen = time.monotonic()
        self.closing: tuple[int, str] | None = None  # set once: the close code and reason
        self._limit = queue_size
        self._pending: deque[Outgoing] | None = None
        self._sink: FrameSink | None = None
        self._ready: asyncio.Event | None = None  # wakes the sender (no sink) when frames or a kick arrive
        self._reader: asyncio.Task[Any] | None = None  # the handler, while it waits for a client frame

    def attach(self, sink: FrameSink | None) -> None:
        """Write frames to ``sink`` directly; without one, frames wait for :meth:`next_frame`."""
        if sink is None:
            self._ready = asyncio.Event()
        else:
            self._sink = sink
            sink.on_resume = self._flush

    def offer(self, frame: Outgoing) -> bool:
        """Send or queue a frame without ever waiting; a full queue closes the connection."""
        if self.closing is not None:
            return False
        sink = self._sink
        if sink is not None and not self._pending:
            outcome = sink.write_frame(frame.wire)
            if outcome != PAUSED:
                return outcome == WRITTEN
        pending = self._pending
        if pending is None:
            pending = self._pending = deque()
        elif len(pending) >= self._limit:
            self.kick(CloseCode.SLOW_CONSUMER, "slow consumer: send queue full")
            return False
        pending.append(frame)
        if self._ready is not None:
            self._ready.set()
        return True

    def offer_all(self, frames: list[Outgoing], wire: bytes | None) -> int:
        """:meth:`offer` for several frames, in one write when possible (``wire``: them all, joined)."""
        if len(frames) == 1:
            return int(self.offer(frames[0]))
        if self.closing is not None:
            return 0
        sink = self._sink
        if sink is not None and not self._pending:
            outcome = sink.write_frame(wire if wire is not None else b"".join(f.wire for f in frames))
            if outcome != PAUSED:
                return len(frames) if outcome == WRITTEN else 0
        return sum(self.offer(frame) for frame in frames)

    def _flush(self) -> None:
        """The sink's transport drained: write what waited, until it pauses again."""
        pending, sink = self._pending, self._sink
        if sink is None or not pending or self.closing is not None:
            return
        while pending:
            outcome = sink.write_frame(pending[0].wire)
            if outcome == PAUSED:
                return
            pending.popleft()
            if outcome == CLOSED:
                pending.clear()

    def kick(self, code: int, reason: str) -> None:
        """Close the connection with ``code``: its handler (or SSE stream) wakes up and leaves."""
        if self.closing is not None:
            return
        self.closing = (code, reason)
        if self._pending:
            self._pending.clear()
        if self._ready is not None:
            self._ready.set()
        if self._reader is not None:
            self._reader.cancel()

    async def receive(self) -> WebSocketReceiveMessage | None:
        """The next client message, or None once the connection was kicked."""
        assert self.socket is not None
        if self.closing is not None:
            return None
        task = self._reader = asyncio.current_task()
        try:
            return cast("WebSocketReceiveMessage", await self.socket.receive())
        except asyncio.CancelledError:
            # kick() cancelled the wait; any other cancellation goes on.
            assert task is not None
            if self.closing is not None and task.uncancel() == 0:
                return None
            raise
        finally:
            self._reader = None

    async def next_frame(self) -> Outgoing | None:
        """Without a sink: wait for the next queued frame; None once kicked."""
        assert self._ready is not None
        while self.closing is None:
            if self._pending:
                return self._pending.popleft()
            self._ready.clear()
            await self._ready.wait()
        return None

    async def send_loop(self) -> None:
        """Without a sink: hand queued frames to the ASGI server one by one."""
        assert self.socket is not None
        send = self.socket.send  # the ASGI send (wrapped by Litestar only to track disconnects)
        while (frame := await self.next_frame()) is not None:
            event: WebSocketSendEvent = {"type": "websocket.send", "bytes": None, "text": frame.text}
            await send(event)


class Hub:
    """Connections, channels and broadcast for one node. Implements ``Broadcaster``."""

    def __init__(
        self,
        plugin: ChannelsPlugin,
        registry: ConnectionRegistry,
        tokens: TokenSigner,
        *,
        backend: str,
        send_queue: int,
        heartbeat_s: float,
        idle_timeout_s: float,
    ) -> None:
        self.plugin = plugin
        self.registry = registry
        self.tokens = tokens
        self.backend = backend
        self.node = f"{_socket.gethostname()}-{os.getpid()}-{new_id()[-4:]}"
        self.send_queue = send_queue
        self.heartbeat_s = heartbeat_s
        self.idle_timeout_s = idle_timeout_s
        self.record_ttl_s = max(3 * heartbeat_s, 5.0)
        self._local: dict[str, LiveConnection] = {}
        self._members: dict[str, set[LiveConnection]] = {}
        self._pumps: dict[str, tuple[Subscriber, asyncio.Task[None]]] = {}
        self._lock = asyncio.Lock()
        self._heartbeat: asyncio.Task[None] | None = None
        self._emptied = asyncio.Event()

    # ---------------------------------------------------------------- lifecycle ---

    async def start(self) -> None:
        await self.plugin.__aenter__()
        try:
            await self._listen_for_commands()
        except (RedisError, OSError) as exc:
            log.warning("realtime: redis is unavailable (%s); will retry at every heartbeat", exc)
        self._heartbeat = asyncio.create_task(self._beat_forever())

    async def _listen_for_commands(self) -> None:
        # Node-to-node commands (close a deleted tenant's connections everywhere) share the backend.
        if CONTROL_CHANNEL not in self._pumps:
            control = await self._backend_subscribe(CONTROL_CHANNEL)
            self._pumps[CONTROL_CHANNEL] = (control, asyncio.create_task(self._obey(control)))

    async def _backend_subscribe(self, physical: str) -> Subscriber:
        try:
            return await self.plugin.subscribe(physical)
        except (RedisError, OSError):
            # The plugin records the subscriber before asking the backend; forget it, or the next
            # attempt would believe the node already listens and never subscribe again.
            for orphan in list(self.plugin._channels.get(physical, ())):
                with contextlib.suppress(RedisError, OSError):
                    await self.plugin.unsubscribe(orphan, physical)
            raise

    async def stop(self) -> None:
        self._emptied.clear()
        for conn in list(self._local.values()):
            conn.kick(CloseCode.GOING_AWAY, "server shutting down")
        if self._local:
            # Give the handlers a moment to close their sockets and leave their channels.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._emptied.wait(), 3)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        for subscriber, task in list(self._pumps.values()):
            task.cancel()
            with contextlib.suppress(RedisError, OSError):  # shutting down anyway
                await self.plugin.unsubscribe(subscriber)
        self._pumps.clear()
        await self.plugin.__aexit__(None, None, None)
        await self.registry.close()

    async def metrics(self) -> list[MetricFamily]:
        """Live WebSocket/SSE connections held by this node (Prometheus scrapes each node)."""
        return [
            MetricFamily(
                "appliance_realtime_connections",
                "Live connections on this node.",
                "gauge",
                [({}, len(self._local))],
            )
        ]

    async def health(self) -> BackendStatus:
        mode: Literal["embedded", "server"] = "server" if self.backend == "redis" else "embedded"
        try:
            version = await self.registry.ping()
        except (RedisError, OSError) as exc:
            detail = f"redis unreachable: {exc}; check APPLIANCE_REDIS_URL"
            return BackendStatus(name="realtime", backend=self.backend, mode=mode, ok=False, detail=detail)
        detail = f"{len(self._local)} connections on node {self.node}"
        return BackendStatus(
            name="realtime", backend=self.backend, mode=mode, ok=True, detail=detail, version=version
        )

    # ---------------------------------------------------------------- broadcast ---

    async def broadcast(
        self,
        tenant: str,
        channel: str,
        data: Any,
        *,
        event: str = "message",
        filter: BroadcastFilter | None = None,
    ) -> int:
        """See :meth:`appliance.realtime.Broadcaster.broadcast`."""
        _, delivered = await self.publish(tenant, channel, data, event=event, filter=filter)
        return delivered

    async def publish(
        self,
        tenant: str,
        channel: str,
        data: Any,
        *,
        event: str = "message",
        filter: BroadcastFilter | None = None,
    ) -> tuple[str, int]:
        """:meth:`broadcast`, also returning the message id."""
        _check_channel(channel)
        if not _valid_event(event):
            raise Unprocessable(f"event {event!r} must be 1-64 letters, digits, '_', '.', ':' or '-'")
        message_id = new_id("msg")
        frame = _encode(Frame(channel=channel, event=event, data=data, id=message_id))
        payload = _encode(filter) + b"\n" + frame
        try:
            delivered = await self.registry.count(tenant, channel, filter)
            await self.plugin.wait_published(payload, physical_channel(tenant, channel))
        except (RedisError, OSError) as exc:
            raise ServiceUnavailable(f"realtime fan-out backend (redis) is unavailable: {exc}") from None
        return message_id, delivered

    def _deliver(self, physical: str, payloads: list[bytes]) -> int:
        """Send published payloads to the matching local subscribers; returns the frames sent.

        When several broadcasts wait at once, a connection gets all of its frames in one write:
        each one stays its own WebSocket frame, with one socket call for the lot.
        """
        members = self._members.get(physical)
        if not members:
            return 0
        messages: list[tuple[BroadcastFilter | None, Outgoing]] = []
        for payload in payloads:
            header, _, body = payload.partition(b"\n")
            try:
                messages.append((_decode_filter(header), Outgoing(body)))
            except msgspec.DecodeError:
                log.warning("dropped a malformed realtime payload on %s", physical)
        delivered = 0
        if all(filter is None for filter, _ in messages):
            frames = [frame for _, frame in messages]
            if len(frames) == 1:
                for conn in members:
                    delivered += conn.offer(frames[0])
            elif frames:
                wire = b"".join(frame.wire for frame in frames)
                for conn in members:
                    delivered += conn.offer_all(frames, wire)
            return delivered
        for conn in members:
            user_id, tags = conn.record.user_id, conn.record.tags
            mine = [frame for filter, frame in messages if filter is None or filter.matches(user_id, tags)]
            if mine:
                delivered += conn.offer_all(mine, None)
        return delivered

    async def _pump(self, physical: str, subscriber: Subscriber) -> None:
        events = subscriber.iter_events()
        async for payload in events:
            batch, size = [payload], len(payload)
            # Take what else is already waiting (never wait for more): one write per connection.
            while subscriber.qsize and len(batch) < BATCH_FRAMES and size < BATCH_BYTES:
                try:
                    payload = await anext(events)
                except StopAsyncIteration:
                    break
                batch.append(payload)
                size += len(payload)
            self._deliver(physical, batch)

    # ------------------------------------------------------------- subscriptions ---

    async def subscribe(self, conn: LiveConnection, channel: str) -> None:
        """Subscribe ``conn`` to its tenant's ``channel``; returns once messages will be delivered."""
        _check_channel(channel, FrameError)
        if channel in conn.record.channels:
            return
        if len(conn.record.channels) >= MAX_CHANNELS_PER_CONNECTION:
            raise FrameError(f"a connection may subscribe to at most {MAX_CHANNELS_PER_CONNECTION} channels")
        physical = physical_channel(conn.record.tenant, channel)
        async with self._lock:
            members = self._members.get(physical)
            if members is None:
                subscriber = await self._backend_subscribe(physical)
                self._pumps[physical] = (subscriber, asyncio.create_task(self._pump(physical, subscriber)))
                members = self._members[physical] = set()
            members.add(conn)
        conn.record.channels.append(channel)
        await self.registry.subscribe(conn.record, channel)

    async def unsubscribe(self, conn: LiveConnection, channel: str) -> None:
        _check_channel(channel, FrameError)
        if channel not in conn.record.channels:
            return
        conn.record.channels.remove(channel)
        await self._leave(conn, physical_channel(conn.record.tenant, channel))
        await self.registry.unsubscribe(conn.record, channel)

    async def _leave(self, conn: LiveConnection, physical: str) -> None:
        async with self._lock:
            members = self._members.get(physical)
            if members is None:
                return
            members.discard(conn)
            if members:
                return
            del self._members[physical]
            pump = self._pumps.pop(physical, None)
            if pump is None:
                return
            subscriber, task = pump
            # With Redis down the node stays subscribed there; stray messages find no members.
            with contextlib.suppress(RedisError, OSError):
                await self.plugin.unsubscribe(subscriber, physical)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    # ---------------------------------------------------------------- connections ---

    def local_connections(self, tenant: str | None = None) -> list[LiveConnection]:
        return [c for c in self._local.values() if tenant is None or c.record.tenant == tenant]

    async def serve(
        self, socket: WebSocket[Any, Any, Any], tenant: str, user_id: str | None, tags: list[str]
    ) -> None:
        """Run one accepted connection until the client leaves or the hub closes it.

        On ``appliance run`` the connection costs no task besides this handler: frames are written
        straight to the transport (see :class:`LiveConnection`). Other servers get one sender task.
        """
        conn = self._open(socket, tenant, user_id, tags, "websocket")
        extensions = cast("dict[str, Any]", socket.scope.get("extensions") or {})
        sink: FrameSink | None = extensions.get(DIRECT_EXTENSION)
        conn.attach(sink)
        sender = None if sink is not None else asyncio.create_task(conn.send_loop())
        if sender is not None:
            sender.add_done_callback(lambda _: conn.kick(CloseCode.GOING_AWAY, "connection closed"))
        try:
            try:
                await self.registry.add(conn.record)
            except (RedisError, OSError) as exc:
                conn.kick(CloseCode.INTERNAL, f"connection registry unavailable: {exc}"[:120])
            self._welcome(conn)
            await self._read_loop(conn)
        finally:
            kicked = conn.closing
            if sender is not None:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
            await self._drop(conn)
        if kicked is not None:
            code, reason = kicked
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await socket.close(code=code, reason=reason)

    def _open(
        self,
        socket: WebSocket[Any, Any, Any] | None,
        tenant: str,
        user_id: str | None,
        tags: list[str],
        transport: str,
    ) -> LiveConnection:
        now = time.time()
        record = ConnectionRecord(
            id=new_id("ws" if socket is not None else "sse"),
            tenant=tenant,
            user_id=user_id,
            tags=tags,
            channels=[],
            since=now,
            node=self.node,
            expires=now + self.record_ttl_s,
            transport=transport,
        )
        conn = LiveConnection(socket, record, self.send_queue)
        self._local[record.id] = conn
        return conn

    def _welcome(self, conn: LiveConnection) -> None:
        record = conn.record
        data = {
            "connection_id": record.id,
            "tenant": record.tenant,
            "user_id": record.user_id,
            "tags": record.tags,
        }
        conn.offer(_frame(None, "welcome", data))

    async def open_stream(
        self, tenant: str, user_id: str | None, tags: list[str], channels: list[str]
    ) -> LiveConnection:
        """An SSE connection subscribed to ``channels``; read it with :meth:`stream`.

        Raises:
            Unprocessable: a channel name is invalid or there are too many.
            ServiceUnavailable: the registry or fan-out backend (Redis) is down.
        """
        for channel in channels:
            _check_channel(channel)
        if not channels or len(set(channels)) > MAX_CHANNELS_PER_CONNECTION:
            raise Unprocessable(f"give 1 to {MAX_CHANNELS_PER_CONNECTION} 'channel' query parameters")
        conn = self._open(None, tenant, user_id, tags, "sse")
        conn.attach(None)
        try:
            await self.registry.add(conn.record)
            for channel in dict.fromkeys(channels):
                await self.subscribe(conn, channel)
        except (RedisError, OSError) as exc:
            await self._drop(conn)
            raise ServiceUnavailable(f"realtime fan-out backend (redis) is unavailable: {exc}") from None
        self._welcome(conn)
        return conn

    async def stream(self, conn: LiveConnection) -> AsyncIterator[str]:
        """The frames of an SSE connection until the client leaves or the hub closes it."""
        try:
            while (frame := await conn.next_frame()) is not None:
                yield frame.text
            assert conn.closing is not None
            code, reason = conn.closing
            yield _frame(None, "close", {"code": code, "reason": reason}).text
        finally:
            # The stream is cancelled when the client goes away; leave the channels regardless.
            with anyio.CancelScope(shield=True):
                await self._drop(conn)

    async def _drop(self, conn: LiveConnection) -> None:
        if self._local.pop(conn.record.id, None) is None:
            return
        if not self._local:
            self._emptied.set()
        conn.kick(CloseCode.GOING_AWAY, "connection closed")
        for channel in conn.record.channels:
            await self._leave(conn, physical_channel(conn.record.tenant, channel))
        try:
            await self.registry.remove(conn.record)
        except (RedisError, OSError):
            log.warning("could not remove connection %s from the registry; it will expire", conn.record.id)

    async def _read_loop(self, conn: LiveConnection) -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while (message := await conn.receive()) is not None:
                if message["type"] == "websocket.disconnect":
                    return
                conn.last_seen = time.monotonic()
                raw = cast("str | bytes", message.get("text") or message.get("bytes") or b"")
                await self._handle(conn, raw.encode() if isinstance(raw, str) else raw)

    async def _handle(self, conn: LiveConnection, raw: bytes) -> None:
        ref: str | int | None = None
        channel: str | None = None
        try:
            if len(raw) > MAX_FRAME_BYTES:
                raise FrameError(f"frame larger than {MAX_FRAME_BYTES} bytes")
            try:
                frame = _decode_frame(raw)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise FrameError(f"invalid frame: {exc}") from None
            ref, channel = frame.ref, frame.channel
            await self._dispatch(conn, frame)
        except FrameError as exc:
            conn.offer(_frame(channel, "error", {"detail": str(exc), "ref": ref}))
        except Unprocessable as exc:
            conn.offer(_frame(channel, "error", {"detail": exc.detail, "ref": ref}))
        except (ServiceUnavailable, RedisError, OSError) as exc:
            detail = exc.detail if isinstance(exc, ServiceUnavailable) else f"redis is unavailable: {exc}"
            conn.offer(_frame(channel, "error", {"detail": detail, "ref": ref}))

    async def _dispatch(self, conn: LiveConnection, frame: ClientFrame) -> None:
        if frame.op == "ping":
            conn.offer(_frame(None, "pong", {"ref": frame.ref}))
            return
        if frame.op == "pong":
            return
        if frame.channel is None:
            raise FrameError(f"op {frame.op!r} needs a 'channel'")
        if frame.op == "subscribe":
            await self.subscribe(conn, frame.channel)
            conn.offer(_frame(frame.channel, "subscribed", {"ref": frame.ref}))
        elif frame.op == "unsubscribe":
            await self.unsubscribe(conn, frame.channel)
            conn.offer(_frame(frame.channel, "unsubscribed", {"ref": frame.ref}))
        else:
            message_id, delivered = await self.publish(
                conn.record.tenant, frame.channel, frame.data, event=frame.event
            )
            conn.offer(
                _frame(
                    frame.channel, "published", {"ref": frame.ref, "id": message_id, "delivered": delivered}
                )
            )

    # ---------------------------------------------------------------- heartbeats ---

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self.beat()
            except (RedisError, OSError) as exc:
                log.warning("realtime heartbeat could not refresh the registry: %s", exc)

    async def beat(self) -> None:
        """Close idle connections, ping quiet ones, and refresh this node's registry records."""
        await self._listen_for_commands()
        now = time.monotonic()
        ping = _frame(None, "ping", None)  # one frame (and id) for every connection pinged this beat
        for conn in list(self._local.values()):
            quiet = now - conn.last_seen
            if conn.socket is None:  # SSE: the client cannot speak, so it cannot idle; keep proxies awake
                conn.offer(ping)
            elif quiet >= self.idle_timeout_s:
                conn.kick(CloseCode.IDLE, f'idle for {self.idle_timeout_s:g}s: send {{"op":"ping"}} frames')
            elif quiet >= self.heartbeat_s:
                conn.offer(ping)
        live = [c.record for c in self._local.values() if c.closing is None]
        if live:
            await self.registry.touch(live, time.time() + self.record_ttl_s)

    async def purge_tenant(self, tenant: str) -> None:
        """The tenant is being deleted: close its connections on every node and forget them all."""
        try:
            await self.plugin.wait_published(_encode(_Command(kick_tenant=tenant)), CONTROL_CHANNEL)
            await self.registry.purge(tenant)
        except (RedisError, OSError) as exc:
            raise ServiceUnavailable(
                f"realtime backend (redis) is unavailable, so the tenant was not deleted: {exc}"
            ) from None

    async def _obey(self, control: Subscriber) -> None:
        async for payload in control.iter_events():
            try:
                command = _decode_command(payload)
            except msgspec.DecodeError:
                log.warning("ignored a malformed realtime control message")
                continue
            for conn in self.local_connections(command.kick_tenant):
                conn.kick(CloseCode.TENANT_GONE, "tenant deleted")


def _valid_event(event: str) -> bool:
    return valid_channel(event) and len(event) <= 64


def _check_channel(channel: str, error: Callable[[str], Exception] = Unprocessable) -> None:
    if not valid_channel(channel):
        raise error(
            f"channel {channel[:140]!r} is invalid: use 1-128 letters, digits, '_', '.', ':' or '-',"
            " starting with a letter or digit"
        )


def build_hub(ctx: Context) -> Hub:
    """Pick the channels backend and registry from settings and wire the hub into the context."""
    settings = ctx.settings
    backend: ChannelsBackend
    registry: ConnectionRegistry
    if settings.redis_url:
        from redis.asyncio import Redis

        from appliance.realtime.redis import RedisRegistry, ResilientPubSubBackend

        client = Redis.from_url(settings.redis_url, socket_connect_timeout=3)
        backend, registry, name = ResilientPubSubBackend(redis=client), RedisRegistry(client), "redis"
    else:
        from appliance.realtime.memory import MemoryRegistry

        backend, registry, name = MemoryChannelsBackend(), MemoryRegistry(), "memory"
    tokens = TokenSigner(ctx.db.directory)
    hub = Hub(
        ChannelsPlugin(backend=backend, arbitrary_channels_allowed=True),
        registry,
        tokens,
        backend=name,
        send_queue=settings.realtime_send_queue,
        heartbeat_s=settings.realtime_heartbeat_s,
        idle_timeout_s=settings.realtime_idle_timeout_s,
    )
    steps: list[Callable[[], Awaitable[None]]] = [tokens.load, hub.start]
    for step in steps:
        ctx.on_startup(step)
    ctx.on_shutdown(hub.stop)
    ctx.token_verifiers.append(tokens.verify)
    ctx.health.append(hub.health)
    ctx.tenants.purgers.append(hub.purge_tenant)
    return hub
