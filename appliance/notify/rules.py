"""The ``email`` rule target: an event that matches a rule becomes an email from a tenant template.

A target is ``{"kind": "email", "template": "order-shipped", "to": "$.payload.customer.email"}``. ``to`` is
a literal address or a JSON path into the event document (``$.payload.email``, ``$.payload.to[0]``); the
path may lead to one address or a list. The template's data is the event document: ``{{ payload.x }}``,
``{{ type }}``, ``{{ source }}``, ``{{ id }}``. The events dispatcher enqueues one ``email.rule`` job per
match; that job records the email and schedules its delivery like ``POST /v1/email`` does.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec

from appliance.core.errors import NotFound, Problem, Unprocessable
from appliance.core.outbox import Event
from appliance.events.targets import event_document
from appliance.jobs import Job, NewJob, PermanentJobError
from appliance.notify import EmailRequest
from appliance.notify.messages import check_address
from appliance.notify.service import NotifyService

__all__ = ["EMAIL_RULE_JOB", "EmailTarget", "resolve_path"]

EMAIL_RULE_JOB = "email.rule"
_PATH = re.compile(r"^\$(?:\.[A-Za-z_][A-Za-z0-9_-]*|\[\d{1,4}\])+$")
_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]")


class _EmailSpec(msgspec.Struct, forbid_unknown_fields=True):
    template: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")]
    to: Annotated[str, msgspec.Meta(min_length=2, max_length=320)]


def resolve_path(path: str, document: Any) -> Any:
    """The value at ``path`` (``$.a.b[0]``) in ``document``; ``None`` if any step is missing."""
    value = document
    for name, index in _STEP.findall(path):
        if name and isinstance(value, dict):
            value = value.get(name)
        elif index and isinstance(value, list) and int(index) < len(value):
            value = value[int(index)]
        else:
            return None
    return value


class EmailTarget:
    """Rule target kind ``email``: ``{template, to}``."""

    kind = "email"

    def __init__(self, notify: NotifyService) -> None:
        self._notify = notify

    def validate(self, spec: dict[str, Any]) -> dict[str, Any]:
        try:
            parsed = msgspec.convert(spec, _EmailSpec)
        except msgspec.ValidationError as exc:
            raise Unprocessable(f"email target: {exc}") from None
        if parsed.to.startswith("$"):
            if not _PATH.match(parsed.to):
                raise Unprocessable(
                    f"email target: 'to' {parsed.to!r} is not a JSON path like $.payload.email or $.payload.to[0]"
                )
        else:
            check_address(parsed.to, "email target 'to'")
        result: dict[str, Any] = msgspec.to_builtins(parsed)
        return result

    def delivery(self, spec: dict[str, Any], event: Event) -> tuple[str, NewJob]:
        payload = {"template": spec["template"], "to": spec["to"], "event": event_document(event)}
        return "email", NewJob(type=EMAIL_RULE_JOB, payload=payload)

    async def handle(self, job: Job) -> dict[str, Any]:
        """The ``email.rule`` job: address and render the email for one matched event, and queue it."""
        document = job.payload["event"]
        spec_to = str(job.payload["to"])
        to = resolve_path(spec_to, document) if spec_to.startswith("$") else spec_to
        if not (isinstance(to, str) or (isinstance(to, list) and to and all(isinstance(t, str) for t in to))):
            raise PermanentJobError(
                f"{spec_to} does not name an address (or a list of them) in event {document['id']}"
            )
        request = EmailRequest(to=to, template=str(job.payload["template"]), data=document)
        try:
            accepted = await self._notify.send_email(job.tenant, request, dedupe_key=f"rule:{job.id}")
        except (NotFound, Unprocessable) as exc:
            raise PermanentJobError(exc.detail) from None
        except Problem as exc:  # e.g. a 503: worth another attempt
            raise RuntimeError(exc.detail) from None
        return {"email_id": accepted.id}
