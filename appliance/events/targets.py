"""Rule target kinds: each validates its spec at rule creation and turns a matched event into a job.

Built in: ``webhook`` {url, secret?, headers?} (a signed ``http`` job), ``job`` {queue, type} (a job of
that type whose payload is the event) and ``channel`` {name} (a realtime broadcast). Other capabilities
add kinds with ``ctx.service("events", EventService).targets.register(kind)``; the notify capability
registers ``email``. Every target may also carry ``max_attempts`` and ``backoff`` for its deliveries.
"""

from __future__ import annotations

from typing import Annotated, Any, Protocol

import msgspec

from appliance.core.errors import Unprocessable
from appliance.core.outbox import Event
from appliance.jobs import Backoff, NewJob, QueueName

__all__ = [
    "CHANNEL_JOB",
    "ChannelTarget",
    "JobTarget",
    "TargetKind",
    "TargetRegistry",
    "WebhookTarget",
    "event_document",
]

CHANNEL_JOB = "appliance.channel"
DEFAULT_MAX_ATTEMPTS = 8
DEFAULT_BACKOFF = Backoff(initial_s=2.0, factor=3.0, max_s=3600.0)

# Which capability provides a kind that is not registered (for a helpful 422).
_PROVIDERS = {"email": "the notify capability"}


class TargetKind(Protocol):
    """A kind of rule target."""

    kind: str

    def validate(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Check a target spec (without ``kind``, ``max_attempts``, ``backoff``); return it normalised.

        Raise :class:`appliance.core.errors.Unprocessable` saying what is wrong.
        """

    def delivery(self, spec: dict[str, Any], event: Event) -> tuple[str, NewJob]:
        """The (queue, job) that delivers ``event`` to this target; the dispatcher sets job_id and retries."""


class _Retry(msgspec.Struct, forbid_unknown_fields=True):
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] = DEFAULT_MAX_ATTEMPTS
    backoff: Backoff = DEFAULT_BACKOFF


def event_document(event: Event) -> dict[str, Any]:
    """The event as targets receive it (webhook bodies, job payloads, channel messages)."""
    return {
        "id": event.id,
        "source": event.source,
        "type": event.type,
        "payload": event.payload,
        "created_at": event.created_at,
    }


def _convert(spec: dict[str, Any], kind: type[msgspec.Struct], name: str) -> dict[str, Any]:
    try:
        converted = msgspec.convert(spec, kind)
    except msgspec.ValidationError as exc:
        raise Unprocessable(f"{name} target: {exc}") from None
    result: dict[str, Any] = msgspec.to_builtins(converted)
    return result


class _WebhookSpec(msgspec.Struct, forbid_unknown_fields=True):
    url: Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s/]+", max_length=2048)]
    secret: Annotated[str, msgspec.Meta(min_length=8, max_length=512)] | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)


class WebhookTarget:
    """POST the event, signed with the target's secret (or the tenant's webhook secret)."""

    kind = "webhook"

    def validate(self, spec: dict[str, Any]) -> dict[str, Any]:
        return _convert(spec, _WebhookSpec, self.kind)

    def delivery(self, spec: dict[str, Any], event: Event) -> tuple[str, NewJob]:
        payload = {"url": spec["url"], "body": event_document(event), "headers": spec.get("headers") or {}}
        if spec.get("secret"):
            payload["secret"] = spec["secret"]
        return "events", NewJob(type="http", payload=payload)


class _JobSpec(msgspec.Struct, forbid_unknown_fields=True):
    queue: QueueName
    type: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")]


class JobTarget:
    """Enqueue a job of ``type`` on ``queue`` whose payload is the event."""

    kind = "job"

    def __init__(self, known_types: Any) -> None:
        self._known = known_types  # () -> the job types with a handler

    def validate(self, spec: dict[str, Any]) -> dict[str, Any]:
        result = _convert(spec, _JobSpec, self.kind)
        if result["type"].startswith("appliance."):
            raise Unprocessable("job target: types starting with 'appliance.' are internal")
        known = self._known()
        if result["type"] not in known:
            raise Unprocessable(
                f"job target: no handler for job type {result['type']!r}; known: {sorted(known)}"
            )
        return result

    def delivery(self, spec: dict[str, Any], event: Event) -> tuple[str, NewJob]:
        return spec["queue"], NewJob(type=spec["type"], payload=event_document(event))


class _ChannelSpec(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class ChannelTarget:
    """Broadcast the event on a realtime channel of the tenant (``event`` is the event's type)."""

    kind = "channel"

    def validate(self, spec: dict[str, Any]) -> dict[str, Any]:
        return _convert(spec, _ChannelSpec, self.kind)

    def delivery(self, spec: dict[str, Any], event: Event) -> tuple[str, NewJob]:
        payload = {"channel": spec["name"], "event": event_document(event)}
        return "events", NewJob(type=CHANNEL_JOB, payload=payload)


class TargetRegistry:
    """The target kinds rules may use."""

    def __init__(self) -> None:
        self._kinds: dict[str, TargetKind] = {}

    def register(self, kind: TargetKind) -> None:
        self._kinds[kind.kind] = kind

    def get(self, kind: str) -> TargetKind | None:
        return self._kinds.get(kind)

    def kinds(self) -> list[str]:
        return sorted(self._kinds)

    def validate(self, targets: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Validate every target of a rule; the 422 names the target (``targets[1]``) and the problem."""
        return [self._validate_one(target, i) for i, target in enumerate(targets)]

    def _validate_one(self, target: dict[str, Any], index: int) -> dict[str, Any]:
        where = f"targets[{index}]"
        name = target.get("kind")
        if not isinstance(name, str):
            raise Unprocessable(f"{where}: needs a 'kind', one of {self.kinds()}")
        kind = self._kinds.get(name)
        if kind is None:
            if name in _PROVIDERS:
                raise Unprocessable(
                    f"{where}: {name} targets need {_PROVIDERS[name]}, which is not installed"
                )
            raise Unprocessable(f"{where}: unknown kind {name!r}; use one of {self.kinds()}")
        spec = {k: v for k, v in target.items() if k not in ("kind", "max_attempts", "backoff")}
        retry_spec = {k: v for k, v in target.items() if k in ("max_attempts", "backoff")}
        try:
            retry = msgspec.convert(retry_spec, _Retry)
            normalised = kind.validate(spec)
        except Unprocessable as exc:
            raise Unprocessable(f"{where}: {exc.detail}") from None
        except msgspec.ValidationError as exc:
            raise Unprocessable(f"{where}: {exc}") from None
        return {"kind": name, **normalised, **msgspec.to_builtins(retry)}

    def delivery(self, target: dict[str, Any], event: Event) -> tuple[str, NewJob]:
        """The job delivering ``event`` to ``target``; a kind no longer installed gives a job that fails visibly."""
        spec = {k: v for k, v in target.items() if k not in ("kind", "max_attempts", "backoff")}
        kind = self._kinds.get(target["kind"])
        if kind is None:
            queue, job = "events", NewJob(type=f"appliance.target.{target['kind']}", payload={"target": spec})
        else:
            queue, job = kind.delivery(spec, event)
        retry = msgspec.convert({k: target[k] for k in ("max_attempts", "backoff") if k in target}, _Retry)
        job.max_attempts, job.backoff = retry.max_attempts, retry.backoff
        return queue, job
