"""The connection registry in Redis: every node sees every node's connections.

Per tenant, a hash ``appliance:rt:conns:<tenant>`` maps connection id -> JSON record, and a set
``appliance:rt:chan:<tenant>:<channel>`` holds the ids subscribed to a channel. Each record carries
an ``expires`` time that its node's heartbeat pushes forward; a node that dies without cleaning up
leaves records that expire and are dropped lazily by the next read.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import msgspec
from litestar.channels.backends.redis import RedisChannelsPubSubBackend
from redis.asyncio import Redis
from redis.exceptions import RedisError

from appliance.core.pagination import Page, decode_cursor, encode_cursor
from appliance.realtime import BroadcastFilter, Connection, ConnectionRecord

__all__ = ["RedisRegistry", "ResilientPubSubBackend"]

log = logging.getLogger("appliance.realtime")

PREFIX = "appliance:rt"
RECONNECT_DELAYS = (0.1, 0.25, 0.5, 1.0)


class ResilientPubSubBackend(RedisChannelsPubSubBackend):
    """Litestar's Redis pub/sub channels backend, surviving a Redis restart.

    The stock backend's event stream ends at the first connection error, and with it every delivery
    on this node. Here the stream retries with a growing delay; redis-py re-subscribes the
    connection's channels when it reconnects. Messages published while Redis was down are lost, as
    pub/sub never stores them.
    """

    async def stream_events(self) -> AsyncGenerator[tuple[str, Any], None]:
        failures = 0
        while True:
            try:
                async for event in super().stream_events():
                    failures = 0
                    yield event
            except (RedisError, OSError) as exc:
                delay = RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)]
                failures += 1
                log.warning("realtime fan-out lost redis (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(ConnectionRecord).decode


def _conns_key(tenant: str) -> str:
    return f"{PREFIX}:conns:{tenant}"


def _chan_key(tenant: str, channel: str) -> str:
    return f"{PREFIX}:chan:{tenant}:{channel}"


class RedisRegistry:
    """Live connections of every node, in Redis."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def add(self, record: ConnectionRecord) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(_conns_key(record.tenant), record.id, _encode(record).decode())
            for channel in record.channels:
                pipe.sadd(_chan_key(record.tenant, channel), record.id)
            await pipe.execute()

    async def subscribe(self, record: ConnectionRecord, channel: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(_conns_key(record.tenant), record.id, _encode(record).decode())
            pipe.sadd(_chan_key(record.tenant, channel), record.id)
            await pipe.execute()

    async def unsubscribe(self, record: ConnectionRecord, channel: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(_conns_key(record.tenant), record.id, _encode(record).decode())
            pipe.srem(_chan_key(record.tenant, channel), record.id)
            await pipe.execute()

    async def remove(self, record: ConnectionRecord) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(_conns_key(record.tenant), record.id)
            for channel in record.channels:
                pipe.srem(_chan_key(record.tenant, channel), record.id)
            await pipe.execute()

    async def touch(self, records: Sequence[ConnectionRecord], expires: float) -> None:
        # An upsert, so that a Redis that restarted empty learns the live connections again; a
        # record re-created by a heartbeat racing a disconnect simply expires.
        for start in range(0, len(records), 500):
            async with self._redis.pipeline(transaction=False) as pipe:
                for record in records[start : start + 500]:
                    record.expires = expires
                    pipe.hset(_conns_key(record.tenant), record.id, _encode(record).decode())
                    for channel in record.channels:
                        pipe.sadd(_chan_key(record.tenant, channel), record.id)
                await pipe.execute()

    async def list(self, tenant: str, limit: int, cursor: str | None) -> Page[Connection]:
        after = decode_cursor(cursor, str) if cursor else ""
        raw: dict[bytes, bytes] = await self._redis.hgetall(_conns_key(tenant))  # type: ignore[misc]
        live = await self._live(tenant, list(raw.values()))
        page = sorted((r for r in live if r.id > after), key=lambda r: r.id)
        items = [r.public() for r in page[:limit]]
        return Page(items=items, next_cursor=encode_cursor(items[-1].id) if len(page) > limit else None)

    async def count(self, tenant: str, channel: str, filter: BroadcastFilter | None) -> int:
        members: set[bytes] = await self._redis.smembers(_chan_key(tenant, channel))  # type: ignore[misc]
        if not members:
            return 0
        ids = sorted(members)
        values: list[bytes | None] = await self._redis.hmget(_conns_key(tenant), ids)  # type: ignore[misc]
        gone = [conn_id for conn_id, value in zip(ids, values, strict=True) if value is None]
        if gone:
            await self._redis.srem(_chan_key(tenant, channel), *gone)  # type: ignore[misc]
        live = await self._live(tenant, [v for v in values if v is not None])
        return sum(filter is None or filter.matches(r.user_id, r.tags) for r in live)

    async def purge(self, tenant: str) -> None:
        keys = [key async for key in self._redis.scan_iter(match=f"{PREFIX}:chan:{tenant}:*", count=500)]
        await self._redis.delete(_conns_key(tenant), *keys)

    async def ping(self) -> str:
        info: dict[str, Any] = await self._redis.info("server")
        return str(info.get("redis_version", ""))

    async def close(self) -> None:
        await self._redis.aclose()

    async def _live(self, tenant: str, values: Sequence[bytes]) -> builtins.list[ConnectionRecord]:
        """Decode records, dropping (and deleting) those whose node stopped refreshing them."""
        now = time.time()
        records = [_decode(value) for value in values]
        expired = [r for r in records if r.expires <= now]
        for record in expired:
            await self.remove(record)
        return [r for r in records if r.expires > now and r.tenant == tenant]
