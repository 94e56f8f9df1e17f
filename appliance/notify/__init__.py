"""Notifications: templated email (SMTP, or capture mode), and Web Push.

Two ports. :class:`Mailer` sends one composed message; its adapters are ``smtp`` (when
``APPLIANCE_SMTP_URL`` is set) and ``capture`` (the embedded default: messages kept in the DB and
listed by ``GET /v1/email``). :class:`Pusher` delivers one encrypted push to one subscription; the
built-in adapter is ``webpush`` (VAPID). A plugin may provide either (``APPLIANCE_MAIL_BACKEND``,
``APPLIANCE_PUSH_BACKEND``), e.g. SES or SNS.

:class:`~appliance.notify.service.NotifyService` (``ctx.service("notify", NotifyService)``) renders
templates, records every email and push, and hands delivery to the job queue: an email is accepted
(202) once its record and its job are committed together, and the job retries with backoff while the
server is down, then dead-letters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

import msgspec
from litestar.types import ControllerRouterHandler

from appliance.notify.messages import (
    MailerUnavailable,
    MailRejected,
    OutgoingEmail,
    PushTarget,
    PushUnavailable,
)

if TYPE_CHECKING:
    from appliance.core.context import BackendStatus, Context

__all__ = [
    "EmailRecord",
    "EmailRequest",
    "EmailStatus",
    "MailRejected",
    "Mailer",
    "MailerUnavailable",
    "OutgoingEmail",
    "PushOutcome",
    "PushRecord",
    "PushRequest",
    "PushTarget",
    "PushUnavailable",
    "Pusher",
    "Template",
    "TemplateIn",
    "install",
]

EmailStatus = Literal["queued", "sending", "sent", "captured", "failed", "dead"]
PushStatus = Literal["queued", "sending", "sent", "failed", "dead"]
PushOutcome = Literal["delivered", "gone", "rejected"]
TemplateName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")]
Address = Annotated[str, msgspec.Meta(min_length=3, max_length=320)]
UserId = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Topic = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")]


class Mailer(Protocol):
    """Sends composed email. Adapters: ``smtp``, ``capture``; plugins may add more (``ses``...)."""

    name: str
    mode: Literal["embedded", "server"]
    delivered_status: Literal["sent", "captured"]
    """The status an email takes once this mailer has it: ``sent`` (left the box) or ``captured``."""

    async def start(self) -> None:
        """Prepare (called once at startup); must not fail when the server is down."""

    async def close(self) -> None:
        """Release connections."""

    async def send(self, message: OutgoingEmail) -> str:
        """Deliver ``message`` to every recipient in ``message.to``; return its ``Message-ID``.

        At least once: a retry after a lost reply may send a second copy (the ``Message-ID`` and the
        ``X-Appliance-Email-Id`` header are the same on both, so receivers can tell).

        Raises:
            MailerUnavailable: the server is down, timed out or answered 4xx: worth retrying later.
            MailRejected: the server refused the message for good (5xx).
        """

    async def health(self) -> BackendStatus:
        """Whether mail can be handed over now, with a detail for ``/readyz``."""


class Pusher(Protocol):
    """Delivers one push message to one subscription. Built-in adapter: ``webpush``."""

    name: str

    async def start(self) -> None:
        """Load or create keys (called once at startup)."""

    async def close(self) -> None:
        """Release connections."""

    def public_key(self) -> str:
        """The key clients subscribe with (for Web Push: the VAPID public key, base64url)."""

    async def send(self, target: PushTarget, payload: bytes, ttl: int) -> PushOutcome:
        """Encrypt ``payload`` for ``target`` and hand it to its push service.

        Returns ``delivered``; ``gone`` when the subscription no longer exists (404/410: the caller
        deletes it); ``rejected`` when the push service refused this message for good.

        Raises:
            PushUnavailable: the push service is unreachable, rate-limits or fails (5xx): retry later.
        """

    async def health(self) -> BackendStatus:
        """Whether pushes can be sent, with a detail for ``/readyz``."""


class TemplateIn(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``PUT /v1/templates/{name}``: Jinja2 sources; ``html`` is autoescaped."""

    subject: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    html: str = ""
    text: str = ""


class Template(msgspec.Struct, kw_only=True):
    name: str
    subject: str
    html: str
    text: str
    created_at: float
    updated_at: float


class EmailRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One email: ``{to, template, data}`` or ``{to, subject, html, text}``. ``to`` is one address or a list."""

    to: Address | Annotated[list[Address], msgspec.Meta(min_length=1, max_length=50)]
    template: TemplateName | None = None
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    subject: Annotated[str, msgspec.Meta(max_length=998)] | None = None
    html: str | None = None
    text: str | None = None


class EmailAccepted(msgspec.Struct):
    id: str
    status: EmailStatus


class BulkAccepted(msgspec.Struct):
    ids: list[str]
    rate_per_s: float


class EmailRecord(msgspec.Struct, kw_only=True):
    """An email's state (``GET /v1/email/{id}``)."""

    id: str
    status: EmailStatus
    attempts: int
    max_attempts: int
    error: str | None
    sender: str
    to: list[str]
    subject: str
    template: str | None
    message_id: str | None
    created_at: float
    updated_at: float
    sent_at: float | None


class PushKeys(msgspec.Struct, forbid_unknown_fields=True):
    p256dh: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{80,100}={0,2}$")]
    auth: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{16,32}={0,2}$")]


class BrowserSubscription(msgspec.Struct, forbid_unknown_fields=False):
    """What the browser's ``PushSubscription.toJSON()`` gives (``expirationTime`` is ignored)."""

    endpoint: Annotated[str, msgspec.Meta(min_length=8, max_length=2048)]
    keys: PushKeys


class SubscriptionIn(msgspec.Struct, forbid_unknown_fields=True):
    user_id: UserId
    subscription: BrowserSubscription
    topics: Annotated[list[Topic], msgspec.Meta(max_length=50)] = msgspec.field(default_factory=list)


class Subscription(msgspec.Struct, kw_only=True):
    id: str
    user_id: str
    endpoint: str
    topics: list[str]
    created_at: float


class PushRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``POST /v1/push``: to one user's subscriptions (``user_id``) or to a topic's."""

    user_id: UserId | None = None
    topic: Topic | None = None
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    body: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    ttl_s: Annotated[int, msgspec.Meta(ge=0, le=28 * 86400)] = 86400


class PushAccepted(msgspec.Struct):
    id: str
    status: PushStatus
    subscriptions: int


class PushRecord(msgspec.Struct, kw_only=True):
    """A push's state (``GET /v1/push/{id}``): how many subscriptions got it, were removed, refused it."""

    id: str
    status: PushStatus
    user_id: str | None
    topic: str | None
    title: str
    subscriptions: int
    delivered: int
    removed: int
    rejected: int
    attempts: int
    error: str | None
    created_at: float
    updated_at: float


def install(ctx: Context) -> list[ControllerRouterHandler]:
    """Register the notify tables, adapters, job handlers and the ``notify`` service; return the routes."""
    from appliance.core.metrics import gauges_from_query
    from appliance.notify.api import ROUTES
    from appliance.notify.service import install_service

    install_service(ctx)
    ctx.metrics.append(
        gauges_from_query(
            ctx.db,
            "SELECT status, count(*) FROM emails GROUP BY status",
            "appliance_emails",
            "Emails by status.",
            "status",
        )
    )
    return list(ROUTES)
