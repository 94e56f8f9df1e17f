"""Events: a tenant's event log, EventBridge-style rules, and at-least-once delivery through the job queue.

Publishing (``POST /v1/events``, or :func:`appliance.core.outbox.emit` inside a capability's own
transaction) writes the event to the log and the outbox. The dispatcher drains the outbox: for each
event it enqueues, in the same transaction that removes the outbox row, one job per target of every
matching rule and one per matching in-process handler. The job queue then delivers at least once,
with retries, backoff and dead letters. Target kinds are a registry (:mod:`appliance.events.targets`)
that other capabilities extend, e.g. ``email`` from the notify capability.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Protocol

import msgspec
from litestar.types import ControllerRouterHandler

from appliance.core.outbox import Event

if TYPE_CHECKING:
    from appliance.core.context import BackendStatus, Context

__all__ = [
    "DELIVERY_QUEUE",
    "FORWARD_PATTERN",
    "Event",
    "EventForwarder",
    "EventService",
    "NewEvent",
    "NewRule",
    "Rule",
    "install",
]

DELIVERY_QUEUE = "events"
"""The queue rule deliveries and in-process handlers run in: ``GET /v1/queues/events/dead`` shows failures."""

FORWARD_PATTERN: dict[str, Any] = {"type": [{"exists": True}]}
"""Matches every event: what a forwarder (``APPLIANCE_EVENTS_BACKEND``) receives."""


class EventForwarder(Protocol):
    """A plugin's copy of every dispatched event to an external bus (``APPLIANCE_EVENTS_BACKEND``).

    Local dispatch is unchanged; :meth:`forward` runs as one more in-process handler named
    ``forward:<name>``, so it is at least once, retried with backoff and dead-lettered in ``events``.
    """

    name: str

    async def start(self) -> None:
        """Prepare (called once at startup); must not fail when the bus is unreachable."""

    async def close(self) -> None:
        """Release connections."""

    async def forward(self, event: Event) -> None:
        """Put ``event`` on the bus; raise to have the delivery retried."""

    async def health(self) -> BackendStatus:
        """Whether the bus answers, for ``/readyz`` and ``appliance doctor``."""


Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$")]


class NewEvent(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /v1/events``."""

    source: Name
    type: Name
    payload: dict[str, Any] = msgspec.field(default_factory=dict)


class NewRule(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /v1/rules``: targets are objects with a ``kind`` (webhook, job, channel, email)."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    pattern: dict[str, Any]
    targets: Annotated[list[dict[str, Any]], msgspec.Meta(min_length=1, max_length=20)]


class Rule(msgspec.Struct, kw_only=True):
    id: str
    tenant: str
    name: str
    pattern: dict[str, Any]
    targets: list[dict[str, Any]]
    created_at: float


def install(ctx: Context) -> list[ControllerRouterHandler]:
    from appliance.events.api import routes
    from appliance.events.service import install_service

    install_service(ctx)
    return routes()


from appliance.events.service import EventService  # noqa: E402  (service.py imports the records above)
