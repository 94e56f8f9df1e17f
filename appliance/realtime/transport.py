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

import struct
from collections.abc import Callable
from typing import Any, Protocol, cast

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request
from websockets.protocol import State

__all__ = ["DIRECT_EXTENSION", "DirectWebSocketsProtocol", "FrameSink", "text_frame"]

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


class FrameSink(Protocol):
    """What the hub needs from a connection that accepts pre-encoded frames."""

    on_resume: Callable[[], None] | None

    def write_frame(self, frame: bytes) -> bool:
        """Write a complete frame now; ``False`` (nothing written) once the WebSocket is closing."""

    def paused(self) -> bool:
        """Whether the transport's buffer is above its high-water mark (the peer reads too slowly)."""


class DirectWebSocketsProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol, also a :class:`FrameSink` (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_resume: Callable[[], None] | None = None

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        # The ASGI task was created but has not run yet: the scope can still gain the extension.
        if not self.close_sent:
            extensions = cast("dict[str, object]", self.scope["extensions"])
            extensions[DIRECT_EXTENSION] = self

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # The handshake's request and response (their headers are most of what a connection
            # weighs) are never read again; the ASGI scope keeps the request headers.
            self.request = self.response = None  # type: ignore[assignment]

    def write_frame(self, frame: bytes) -> bool:
        if (
            not self.handshake_complete
            or self.close_sent
            or self.disconnected
            or self.conn.state is not State.OPEN
        ):
            return False
        self.transport.write(frame)
        return True

    def paused(self) -> bool:
        return not self.writable.is_set()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.on_resume is not None:
            self.on_resume()

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_resume = None
        super().connection_lost(exc)
