"""Realtime: WebSocket connections, tenant-scoped channels, filtered broadcast (API.md "Realtime").

Replaces API Gateway WebSockets and its DynamoDB connection table. Fan-out goes through Litestar's
channels plugin: the in-memory backend on one process, Redis pub/sub when ``APPLIANCE_REDIS_URL`` is
set, so a broadcast on any node reaches the clients of every node. The live connections (who, which
channels, since when, on which node) are kept by a :class:`ConnectionRegistry`: in memory on one
process, in Redis across nodes.

Other capabilities use the hub through ``ctx.service("realtime", Broadcaster)``; the events
capability delivers rule targets of kind ``channel`` with it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Protocol, runtime_checkable

import msgspec

from appliance.core.pagination import Page

if TYPE_CHECKING:
    from litestar.types import ControllerRouterHandler

    from appliance.core.context import Context

__all__ = [
    "CHANNEL_PATTERN",
    "BroadcastFilter",
    "Broadcaster",
    "Connection",
    "ConnectionRecord",
    "ConnectionRegistry",
    "install",
    "valid_channel",
]

CHANNEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
_CHANNEL_RE = re.compile(CHANNEL_PATTERN)
ChannelName = Annotated[
    str,
    msgspec.Meta(
        pattern=CHANNEL_PATTERN,
        description="1 to 128 letters, digits, '_', '.', ':' or '-', starting with a letter or digit",
    ),
]
UserId = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Tags = Annotated[list[Tag], msgspec.Meta(max_length=32)]


def valid_channel(name: str) -> bool:
    """Whether ``name`` is an acceptable logical channel name (see :data:`CHANNEL_PATTERN`)."""
    return bool(_CHANNEL_RE.match(name))


class BroadcastFilter(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Which subscribers of a channel get a message: ``None`` fields do not restrict.

    A connection matches when its user id is one of ``user_ids`` (if given) AND it carries at least
    one of ``tags`` (if given).
    """

    user_ids: Annotated[list[UserId], msgspec.Meta(min_length=1, max_length=1000)] | None = None
    tags: Annotated[list[Tag], msgspec.Meta(min_length=1, max_length=100)] | None = None

    def matches(self, user_id: str | None, tags: Sequence[str]) -> bool:
        if self.user_ids is not None and user_id not in self.user_ids:
            return False
        return self.tags is None or any(tag in self.tags for tag in tags)


class Connection(msgspec.Struct):
    """A live connection as ``GET /v1/connections`` lists it (``transport``: ``websocket`` or ``sse``)."""

    id: str
    user_id: str | None
    tags: list[str]
    channels: list[str]
    since: float
    node: str
    transport: str = "websocket"


class ConnectionRecord(msgspec.Struct):
    """What the registry stores about one connection; ``expires`` is pushed forward by heartbeats."""

    id: str
    tenant: str
    user_id: str | None
    tags: list[str]
    channels: list[str]
    since: float
    node: str
    expires: float
    transport: str = "websocket"

    def public(self) -> Connection:
        return Connection(
            id=self.id,
            user_id=self.user_id,
            tags=list(self.tags),
            channels=list(self.channels),
            since=self.since,
            node=self.node,
            transport=self.transport,
        )


class ConnectionRegistry(Protocol):
    """The port: where live connections are recorded so any node can list and count them.

    Records belong to one tenant; no method ever reads or writes another tenant's records. A record
    whose ``expires`` has passed (its node died without cleaning up) is treated as gone.
    """

    async def add(self, record: ConnectionRecord) -> None:
        """Record a new connection (with its current channels)."""

    async def subscribe(self, record: ConnectionRecord, channel: str) -> None:
        """Store ``record`` (which already lists ``channel``) and index it under ``channel``."""

    async def unsubscribe(self, record: ConnectionRecord, channel: str) -> None:
        """Store ``record`` (which no longer lists ``channel``) and drop it from ``channel``'s index."""

    async def remove(self, record: ConnectionRecord) -> None:
        """Forget a connection and its channel memberships. Idempotent."""

    async def touch(self, records: Sequence[ConnectionRecord], expires: float) -> None:
        """Push ``expires`` of these live connections forward, re-creating any the backend lost."""

    async def list(self, tenant: str, limit: int, cursor: str | None) -> Page[Connection]:
        """The tenant's live connections, oldest first (ids are time-ordered), paginated by id."""

    async def count(self, tenant: str, channel: str, filter: BroadcastFilter | None) -> int:
        """How many live connections of the tenant are subscribed to ``channel`` and match ``filter``."""

    async def purge(self, tenant: str) -> None:
        """Forget every connection of the tenant (the tenant is being deleted)."""

    async def ping(self) -> str:
        """Check the backend answers; returns its version (or ``""``). Raises when it is down."""

    async def close(self) -> None:
        """Release the backend's connections."""


@runtime_checkable
class Broadcaster(Protocol):
    """What other capabilities may call: ``ctx.service("realtime", Broadcaster)``."""

    async def broadcast(
        self,
        tenant: str,
        channel: str,
        data: Any,
        *,
        event: str = "message",
        filter: BroadcastFilter | None = None,
    ) -> int:
        """Send ``data`` to the tenant's subscribers of ``channel`` on every node, optionally filtered.

        Returns the number of live connections (on all nodes) that were subscribed and matched the
        filter when the message was published: the recipients it is on its way to. Delivery itself is
        asynchronous and at most once per connection (a slow consumer is dropped, not waited for).

        Raises:
            Unprocessable: the channel name is invalid.
            ServiceUnavailable: the fan-out backend (Redis) is down.
        """
        ...


def install(ctx: Context) -> list[ControllerRouterHandler]:
    """Build the hub (channels backend + registry), its token signer and verifier, and the routes."""
    from appliance.realtime.api import routes
    from appliance.realtime.service import build_hub

    hub = build_hub(ctx)
    ctx.provide("realtime", hub)
    ctx.metrics.append(hub.metrics)
    return routes()
