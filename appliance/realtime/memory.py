"""The in-process connection registry: right for one process (the embedded default)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from appliance.core.pagination import Page, decode_cursor, encode_cursor
from appliance.realtime import BroadcastFilter, Connection, ConnectionRecord

__all__ = ["MemoryRegistry"]


class MemoryRegistry:
    """Connections per tenant and a (tenant, channel) index, in dictionaries."""

    def __init__(self) -> None:
        self._records: dict[str, dict[str, ConnectionRecord]] = {}
        self._channels: dict[tuple[str, str], set[str]] = {}

    async def add(self, record: ConnectionRecord) -> None:
        self._records.setdefault(record.tenant, {})[record.id] = record
        for channel in record.channels:
            self._channels.setdefault((record.tenant, channel), set()).add(record.id)

    async def subscribe(self, record: ConnectionRecord, channel: str) -> None:
        await self.add(record)

    async def unsubscribe(self, record: ConnectionRecord, channel: str) -> None:
        self._records.setdefault(record.tenant, {})[record.id] = record
        self._discard(record.tenant, channel, record.id)

    async def remove(self, record: ConnectionRecord) -> None:
        tenant = self._records.get(record.tenant, {})
        stored = tenant.pop(record.id, None)
        if not tenant:
            self._records.pop(record.tenant, None)
        for channel in {*record.channels, *(stored.channels if stored else ())}:
            self._discard(record.tenant, channel, record.id)

    async def touch(self, records: Sequence[ConnectionRecord], expires: float) -> None:
        for record in records:
            record.expires = expires
            await self.add(record)

    async def list(self, tenant: str, limit: int, cursor: str | None) -> Page[Connection]:
        after = decode_cursor(cursor, str) if cursor else ""
        now = time.time()
        live = sorted(
            (r for r in self._records.get(tenant, {}).values() if r.id > after and r.expires > now),
            key=lambda r: r.id,
        )
        items = [r.public() for r in live[:limit]]
        return Page(items=items, next_cursor=encode_cursor(items[-1].id) if len(live) > limit else None)

    async def count(self, tenant: str, channel: str, filter: BroadcastFilter | None) -> int:
        records = self._records.get(tenant, {})
        now = time.time()
        matched = 0
        for conn_id in self._channels.get((tenant, channel), ()):
            record = records.get(conn_id)
            if record is not None and record.expires > now:
                matched += filter is None or filter.matches(record.user_id, record.tags)
        return matched

    async def purge(self, tenant: str) -> None:
        self._records.pop(tenant, None)
        for key in [k for k in self._channels if k[0] == tenant]:
            del self._channels[key]

    async def ping(self) -> str:
        return ""

    async def close(self) -> None:
        self._records.clear()
        self._channels.clear()

    def _discard(self, tenant: str, channel: str, conn_id: str) -> None:
        members = self._channels.get((tenant, channel))
        if members is not None:
            members.discard(conn_id)
            if not members:
                del self._channels[(tenant, channel)]
