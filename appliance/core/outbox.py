"""The transactional outbox: state changes and the events they cause commit together.

A service calls :func:`emit` inside the same :meth:`Database.transaction` that writes its state. The
event lands in the tenant's event log and in the ``outbox`` table; a dispatcher (the events capability)
drains the outbox and delivers each event at least once. Nothing is lost if the process dies between
the commit and the delivery: the outbox row is still there on restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import msgspec

from appliance.core.db import Tx
from appliance.core.ids import new_id
from appliance.core.shards import current_shard

__all__ = ["Event", "OutboxSignal", "emit"]


class Event(msgspec.Struct):
    """An event as stored in the log and delivered to rules and handlers."""

    id: str
    tenant: str
    source: str
    type: str
    payload: dict[str, Any]
    created_at: float


class OutboxSignal:
    """Wakes the dispatcher when a transaction that emitted events commits (it also polls, as a backstop)."""

    def __init__(self) -> None:
        # One per shard's dispatcher loop (one in all without shards): a wake-up reaches every loop.
        self._events: dict[str, asyncio.Event] = {}

    def notify(self) -> None:
        for event in self._events.values():
            event.set()

    async def wait(self, timeout: float) -> None:
        event = self._events.setdefault(current_shard(), asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
        event.clear()


async def emit(
    tx: Tx, tenant: str, source: str, type: str, payload: dict[str, Any], signal: OutboxSignal | None = None
) -> Event:
    """Record an event in the log and the outbox as part of ``tx``; returns it."""
    event = Event(
        id=new_id("evt"), tenant=tenant, source=source, type=type, payload=payload, created_at=time.time()
    )
    await tx.execute(
        "INSERT INTO events (id, tenant_id, source, type, payload, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        (event.id, tenant, source, type, msgspec.json.encode(payload).decode(), event.created_at),
    )
    await tx.execute(
        "INSERT INTO outbox (event_id, tenant_id, created_at) VALUES (?, ?, ?)",
        (event.id, tenant, event.created_at),
    )
    if signal is not None:
        tx.after_commit(signal.notify)
    return event
