"""Payments: a provider port (Stripe) and a local ledger the appliance owns. API.md "Payments".

The provider moves the money; the ledger (SQLite, component ``payments``) records every payment and
refund with the provider's ids, statuses and amounts in minor units, and every ledger change emits its
event through the outbox in the same transaction. Payments are disabled until ``APPLIANCE_STRIPE_KEY``
is set: every endpoint then answers 503 saying so, and the rest of the appliance is unaffected.
"""

from __future__ import annotations

from typing import Protocol

import msgspec
from litestar.types import ControllerRouterHandler

from appliance.config import Settings
from appliance.core.context import BackendStatus, Context

__all__ = [
    "ChargeRequest",
    "InvalidSignature",
    "PaymentDeclined",
    "PaymentProvider",
    "ProviderBusy",
    "ProviderError",
    "ProviderEvent",
    "ProviderPayment",
    "ProviderRefund",
    "ProviderRejected",
    "ProviderUnavailable",
    "RefundRequest",
    "build_provider",
    "install",
]

# Metadata keys the appliance adds to every payment at the provider, so a webhook (which carries no
# API key) can be traced back to its tenant and ledger row even before the ledger knows the provider id.
TENANT_META = "appliance_tenant"
PAYMENT_META = "appliance_payment_id"
REFUND_META = "appliance_refund_id"


class ChargeRequest(msgspec.Struct, frozen=True):
    """What the ledger asks the provider to charge; amounts are in the currency's minor unit."""

    amount: int
    currency: str
    customer: str | None = None
    payment_method: str | None = None
    metadata: dict[str, str] = {}


class RefundRequest(msgspec.Struct, frozen=True):
    """What the ledger asks the provider to refund, of the payment ``payment_provider_id``."""

    payment_provider_id: str
    amount: int
    reason: str | None = None
    metadata: dict[str, str] = {}


class ProviderPayment(msgspec.Struct, frozen=True):
    """A provider's view of one payment (a Stripe PaymentIntent)."""

    provider_id: str
    status: str
    amount: int
    currency: str
    amount_captured: int = 0
    metadata: dict[str, str] = {}
    failure: str | None = None
    client_secret: str | None = None


class ProviderRefund(msgspec.Struct, frozen=True):
    """A provider's view of one refund; ``payment_provider_id`` is the payment it refunds."""

    provider_id: str
    payment_provider_id: str
    status: str
    amount: int
    reason: str | None = None
    metadata: dict[str, str] = {}


class ProviderEvent(msgspec.Struct, frozen=True):
    """A verified webhook, translated: the payment and refund snapshots it carries."""

    id: str
    type: str
    payment: ProviderPayment | None = None
    refunds: list[ProviderRefund] = []


class ProviderError(Exception):
    """Base of the errors a provider raises; ``str(exc)`` is meant for the API client."""


class ProviderUnavailable(ProviderError):
    """The provider could not be reached, answered 5xx, refused our key, or its circuit is open."""


class ProviderRejected(ProviderError):
    """The provider refused the request as invalid (nothing was charged)."""


class PaymentDeclined(ProviderError):
    """The payment method was declined; the provider may still have created the payment (``payment``)."""

    def __init__(self, message: str, payment: ProviderPayment | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.payment = payment
        self.code = code


class ProviderBusy(ProviderError):
    """The provider is still processing an earlier request with the same idempotency key."""


class InvalidSignature(ProviderError):
    """A webhook's signature is missing, wrong or outside the tolerance window."""


class PaymentProvider(Protocol):
    """The port: a payment service that charges, refunds and reports back through signed webhooks."""

    name: str

    async def create_payment(self, request: ChargeRequest, idempotency_key: str) -> ProviderPayment:
        """Create (and, with a payment method, confirm) a payment.

        The same ``idempotency_key`` always yields the same payment: a retry after a timeout can
        never charge twice. Raises :class:`PaymentDeclined`, :class:`ProviderRejected` or
        :class:`ProviderUnavailable`.
        """
        ...

    async def refund(self, request: RefundRequest, idempotency_key: str) -> ProviderRefund:
        """Refund part or all of a payment; idempotent per ``idempotency_key`` like :meth:`create_payment`.

        The provider enforces its own limits too, but the ledger checks the refundable amount first.
        """
        ...

    async def ping(self) -> str:
        """A cheap authenticated call; returns a short description or raises :class:`ProviderUnavailable`."""
        ...

    def parse_webhook(self, payload: bytes, signature: str | None) -> ProviderEvent:
        """Verify ``signature`` over the raw ``payload`` and translate the event; raises :class:`InvalidSignature`."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


def build_provider(settings: Settings) -> PaymentProvider | None:
    """The configured provider, or ``None`` while no Stripe key is set (payments disabled)."""
    if not settings.stripe_key:
        return None
    from appliance.payments.stripe_provider import StripeProvider

    return StripeProvider(
        api_key=settings.stripe_key,
        webhook_secret=settings.stripe_webhook_secret,
        api_base=settings.stripe_api_base,
        timeout_s=settings.stripe_timeout_s,
        redis_url=settings.redis_url,
    )


def install(ctx: Context) -> list[ControllerRouterHandler]:
    """Register the ledger's migrations, the service, the health check and the routes."""
    from appliance.core.metrics import gauges_from_query
    from appliance.payments.api import ROUTES
    from appliance.payments.ledger import MIGRATIONS
    from appliance.payments.service import PaymentService

    ctx.migrations.extend(MIGRATIONS)
    service = PaymentService(ctx)
    ctx.provide("payments", service)
    ctx.on_startup(service.start)
    ctx.on_shutdown(service.stop)

    async def payments_health() -> BackendStatus:
        return await service.health()

    ctx.health.append(payments_health)
    ctx.metrics.append(
        gauges_from_query(
            ctx.db,
            "SELECT status, count(*) FROM payments GROUP BY status",
            "appliance_payments",
            "Payments by status.",
            "status",
        )
    )
    return list(ROUTES)
