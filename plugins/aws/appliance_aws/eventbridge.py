"""``aws-eventbridge``: every event the appliance dispatches is also put on an EventBridge bus.

Local dispatch (rules, targets, in-process handlers) is unchanged; forwarding runs as one more
in-process handler, so it is at least once, retried with backoff and dead-lettered in the ``events``
queue like any delivery. Each event becomes one ``PutEvents`` entry on ``APPLIANCE_AWS_EVENTBRIDGE_BUS``
(default ``default``): ``Source`` is the event's source, ``DetailType`` its type, and ``Detail`` carries
``{id, tenant, payload}``, so EventBridge rules can match ``detail.tenant``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from appliance.core.context import BackendStatus
from appliance.events import Event
from appliance_aws._aws import AWS_ERRORS, AwsClients, reason
from appliance_aws.health import aws_status

__all__ = ["EventBridgeForwarder", "EventBridgeUnavailable"]


class EventBridgeUnavailable(Exception):
    """EventBridge did not take the event: the delivery job retries it."""


class EventBridgeForwarder:
    """Puts events on an EventBridge bus; see the module docstring."""

    name = "aws-eventbridge"

    def __init__(self, clients: AwsClients, bus: str = "default") -> None:
        self.clients = clients
        self.bus = bus

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        await self.clients.close()

    async def forward(self, event: Event) -> None:
        entry = {
            "Source": event.source,
            "DetailType": event.type,
            "Detail": json.dumps({"id": event.id, "tenant": event.tenant, "payload": event.payload}),
            "EventBusName": self.bus,
            "Time": datetime.fromtimestamp(event.created_at, UTC),
        }
        try:
            events = await self.clients.client("events")
            answer = await events.put_events(Entries=[entry])
        except AWS_ERRORS as exc:
            raise EventBridgeUnavailable(
                f"EventBridge ({self.bus!r} in {self.clients.region}): {reason(exc)}"
            ) from exc
        if answer.get("FailedEntryCount"):
            failed = answer["Entries"][0]
            raise EventBridgeUnavailable(
                f"EventBridge refused event {event.id}: {failed.get('ErrorCode')} {failed.get('ErrorMessage')}"
            )

    async def health(self) -> BackendStatus:
        async def probe() -> str:
            events = await self.clients.client("events")
            answer = await events.describe_event_bus(Name=self.bus)
            return f"EventBridge bus {answer.get('Arn', self.bus)}"

        return await aws_status(
            "events",
            self.name,
            self.clients,
            probe,
            "check the AWS credentials, region and APPLIANCE_AWS_EVENTBRIDGE_BUS",
        )
