"""Direct frame writes: uvicorn's WebSocket protocol, able to take a frame encoded once per broadcast.

ASGI has one way to send on a WebSocket: ``await send({"type": "websocket.send", "text": ...})``,
which frames (and UTF-8 encodes) the message again for every recipient and costs a task switch per
recipient. A broadcast to 10,000 connections carries the same bytes to all of them: server frames
are never masked, so the complete frame (header + payload) is built once and written as is to every
transport, the way ``websockets.broadcast()`` does.

:class:`DirectWebSocketsProtocol` is uvicorn's default WebSocket protocol (``websockets-sansio``)
plus that capability, announced to the application as the ASGI scope extension
``appliance.websocket.direct``. ``appliance run`` serves with it. Under any other server (or the
test client) the extension is absent and the hub falls back to plain ASGI sends, with the same
guarantees.

A directly written frame is never compressed: permessage-deflate allows uncompressed messages (RSV1
unset), and a client's decompressor only ever sees the compressed ones, so this holds even on a
connection that negotiated compression.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any, Protocol, cast

from uvicorn._types import ASGIReceiveEvent, ASGISendEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request
from websockets.protocol import State

__all__ = [
    "CLOSED",
    "DIRECT_EXTENSION",
    "PAUSED",
    "WRITTEN",
    "DirectWebSocketsProtocol",
    "FrameSink",
    "text_frame",
]

DIRECT_EXTENSION = "appliance.websocket.direct"


def text_frame(payload: bytes) -> bytes:
    """A complete, unmasked, unfragmented WebSocket text frame (RFC 6455 5.2) carrying ``payload``.

    ``payload`` must be valid UTF-8 (it is JSON encoded by msgspec).
    """
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + payload


WRITTEN, PAUSED, CLOSED = 1, 0, -1  # what FrameSink.write_frame did


class FrameSink(Protocol):
    """What the hub needs from a connection that accepts pre-encoded frames."""

    on_resume: Callable[[], None] | None

    def write_frame(self, frame: bytes) -> int:
        """Write a complete frame now: :data:`WRITTEN`; or nothing, because the transport's buffer is
        above its high-water mark (the peer reads too slowly: :data:`PAUSED`, ``on_resume`` is called
        once it drained) or the WebSocket is closing (:data:`CLOSED`)."""


class _Inbox:
    """The client messages waiting for the application: one reader, rarely more than one item.

    Stands in for uvicorn's ``asyncio.Queue`` (three deques, about 2 KiB) with the three methods the
    protocol uses.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[ASGIReceiveEvent] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: ASGIReceiveEvent) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    async def get(self) -> ASGIReceiveEvent:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


class _Gate:
    """uvicorn's ``writable`` flag without ``asyncio.Event``'s eager waiter deque."""

    __slots__ = ("_open", "_waiters")

    def __init__(self) -> None:
        self._open = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._open

    def set(self) -> None:
        self._open = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._open = False

    async def wait(self) -> None:
        if self._open:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        await waiter


class DirectWebSocketsProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol, also a :class:`FrameSink` (see the module docstring).

    It also weighs less per connection: lighter receive queue and write flag, and the handshake's
    headers dropped once it is done.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = _Inbox()  # type: ignore[assignment]
        self.writable = _Gate()  # type: ignore[assignment]
        self.on_resume: Callable[[], None] | None = None

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        # The ASGI task was created but has not run yet: the scope can still gain the extension.
        if not self.close_sent:
            extensions = cast("dict[str, object]", self.scope["extensions"])
            extensions[DIRECT_EXTENSION] = self

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete and self.request is not None:
            # The handshake's request and response are never read again (the ASGI scope has its
            # own copy of the headers). The request object lives on in the protocol's parser, so
            # empty its headers, most of what it weighs.
            self.request.headers.clear()
            self.request = self.response = None  # type: ignore[assignment]

    def write_frame(self, frame: bytes) -> int:
        if not self.writable.is_set():
            return PAUSED
        if (
            not self.handshake_complete
            or self.close_sent
            or self.disconnected
            or self.conn.state is not State.OPEN
        ):
            return CLOSED
        self.transport.write(frame)
        return WRITTEN

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.on_resume is not None:
            self.on_resume()

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_resume = None
        super().connection_lost(exc)
